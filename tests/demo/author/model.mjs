// The demo's author: an OpenAI-compatible model, scripted by hand, that builds the demo app through the
// real agent loop. It is not part of any test: it is what the demo transcript was recorded from
// (`record.sh` runs the loop against it with the gateway's `record` setting; `vibebase demo` then plays
// the recordings back with the built-in replay model).
//
// It answers from the conversation so far: the n-th answer of the plan below, except when the last tool
// result says the build was cut off (the sandbox died, or the platform restarted mid-tool), where it
// runs the build again.
//
// Usage: node model.mjs PORT

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const port = Number(process.argv[2] ?? 0);
// The demo app's own files are in app/; what it shares with the browser suite's todo app (the schema,
// the sign-in form, the styles) is read from there.
const app = path.join(import.meta.dirname, 'app');
const shared = path.join(import.meta.dirname, '../../browser/app');
const read = (p) => fs.readFileSync(fs.existsSync(path.join(app, p)) ? path.join(app, p) : path.join(shared, p), 'utf8');

// One command, quiet on success: a build's timing line would make each run's output different.
const BUILD =
  'npm install --no-audit --no-fund --loglevel=error > /tmp/install.log 2>&1 || { tail -n 20 /tmp/install.log; exit 1; }; ' +
  'npm run build > /tmp/build.log 2>&1 || { tail -n 40 /tmp/build.log; exit 1; }; ' +
  'echo "build ok: $(find dist -type f | wc -l) files in dist"';

const call = (name, args) => ({ name, args });
const write = (p, from = p) => call('write_file', { path: p, content: read(from) });

const PLAN = [
  {
    text:
      "I'll build it on the app template: a todos table that only its owner can reach (row-level security), " +
      'sign-up and sign-in with email and password, and a cloud function that counts your open todos. First the database.',
    calls: [call('apply_migration', { sql: read('schema.sql') })],
  },
  {
    text: 'Now the app (sign-in form, todo list, open count) and the function.',
    calls: [
      write('src/App.jsx'),
      write('src/Auth.jsx'),
      write('src/Todos.jsx'),
      write('src/index.css'),
      write('functions/open-count/index.js'),
    ],
  },
  { text: 'Building the site.', calls: [call('bash', { command: BUILD })] },
  {
    text: 'The build is clean. Deploying the function and the site.',
    calls: [
      call('deploy_function', { name: 'open-count', dir: 'functions/open-count' }),
      call('deploy_site', { dir: 'dist' }),
    ],
  },
  {
    text:
      'Your todo app is live at the environment URL. Sign up with an email and a password; each person sees ' +
      'and manages only their own todos (row-level security on the todos table), and the count of open todos ' +
      'comes from the open-count function.',
    calls: [],
  },
];

const RETRY = {
  died: 'The sandbox died during the build, so its outcome is unknown. The files are in the last checkpoint; building again.',
  interrupted: 'The platform restarted during the build, so its outcome is unknown. Building again.',
};

const text = (c) => (typeof c === 'string' ? c : Array.isArray(c) ? c.map((p) => p.text ?? '').join('') : '');

function answer(messages) {
  const last = messages[messages.length - 1] ?? {};
  if (last.role === 'tool') {
    const said = text(last.content);
    if (said.startsWith('the sandbox died')) return { text: RETRY.died, calls: [call('bash', { command: BUILD })] };
    if (said.startsWith('interrupted:')) return { text: RETRY.interrupted, calls: [call('bash', { command: BUILD })] };
  }
  const retries = new Set(Object.values(RETRY));
  const done = messages.filter((m) => m.role === 'assistant' && !retries.has(text(m.content))).length;
  const step = PLAN[done];
  if (!step) return { text: 'The app is built and deployed.', calls: [] };
  return step;
}

const chunk = (delta, finish = null) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-author', object: 'chat.completion.chunk', created: 0, model: 'author', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;

let ids = 0;
http
  .createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const { messages } = JSON.parse(body);
      const a = answer(messages);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunk({ role: 'assistant', content: a.text }));
      a.calls.forEach((c, index) =>
        res.write(
          chunk({
            tool_calls: [{ index, id: `call_author_${++ids}`, type: 'function', function: { name: c.name, arguments: JSON.stringify(c.args) } }],
          }),
        ),
      );
      res.write(chunk({}, a.calls.length ? 'tool_calls' : 'stop'));
      const words = (a.text.length + JSON.stringify(a.calls).length) / 4;
      const usage = { prompt_tokens: Math.ceil(body.length / 4), completion_tokens: Math.ceil(words), total_tokens: 0 };
      res.write(`data: ${JSON.stringify({ id: 'chatcmpl-author', object: 'chat.completion.chunk', created: 0, model: 'author', choices: [], usage })}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  })
  .listen(port, '127.0.0.1', function () {
    console.log(`author model on ${this.address().port}`);
  });
