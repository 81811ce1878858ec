// What a visitor does in the todo apps of the browser suites (tests/browser/app and the app the demo's
// agent builds): open a page in a fresh browser context, sign up or in, add todos, read the list.
// Waits are for a browser on a busy 2-core CI machine, not for the server to become consistent.
import { chromium } from 'playwright-core';

export const timeout = 20_000;
export const password = 'correct-horse-battery';

/** Debian's Chromium (CI runs as root, where Chromium's own sandbox cannot start). */
export const launch = () => chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });

/** A page at `url` in a fresh browser context (its own storage: a different visitor); uncaught
 * exceptions and console errors go to `errors`. */
export async function visitor(browser, url, errors) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(`${m.text()} (${m.location().url})`));
  await page.goto(url);
  return page;
}

/** Signs up (`Sign up`) or in (`Sign in`) through the app's form. */
export async function signUp(page, email, button = 'Sign up') {
  await page.getByPlaceholder('Email').fill(email);
  await page.getByPlaceholder('Password').fill(password);
  await page.getByRole('button', { name: button }).click();
  await page.getByTestId('user').filter({ hasText: email }).waitFor();
}

export async function addTodo(page, title) {
  await page.getByPlaceholder('What needs doing?').fill(title);
  await page.getByRole('button', { name: 'Add' }).click();
  await page.getByRole('listitem').filter({ hasText: title }).waitFor();
}

/** The titles shown once the signed-in user's list has loaded. */
export async function shownTodos(page) {
  await page.getByRole('listitem').or(page.getByText('Nothing to do yet.')).first().waitFor();
  return (await page.getByRole('listitem').allTextContents()).map((t) => t.trim());
}
