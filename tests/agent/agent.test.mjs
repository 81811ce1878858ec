// Real clients of vibebase's agent sessions against a running server whose model is the scripted
// mock-model.mjs (scripts/test, stage agent-clients, starts both): @ag-ui/client's HttpAgent on the
// AG-UI entry point, a plain SSE client that reconnects to a running session with Last-Event-ID, and
// the `vibebase session` CLI.
//
// Environment: VB_URL, VB_ADMIN_KEY, VB_BIN (the vibebase binary), VB_BACKEND (sqlite|postgres).

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { before, test } from "node:test";

import { HttpAgent } from "@ag-ui/client";

const URL_ = process.env.VB_URL;
const ADMIN = process.env.VB_ADMIN_KEY;
const BIN = process.env.VB_BIN;
assert.ok(URL_ && ADMIN && BIN, "VB_URL, VB_ADMIN_KEY and VB_BIN must be set");

const ENV = `agent-${process.env.VB_BACKEND ?? "x"}-${process.pid}`;
let secret;

async function api(method, path, body, key = secret) {
  const r = await fetch(`${URL_}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: r.status, json, text };
}

/** Parses complete SSE frames out of `buf`; returns [frames, rest]. Frames without an id are comments. */
function parseFrames(buf) {
  const frames = [];
  const blocks = buf.split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("id:")) id = Number(line.slice(3).trim());
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (id !== null) frames.push({ id, event: JSON.parse(data.join("\n")) });
  }
  return [frames, rest];
}

/**
 * Reads a session's event stream, no library: fetch and a frame parser. Calls `onFrame` for each
 * event; stops (aborting the request) when it returns true, or at the end of the body.
 */
async function readEvents(session, { lastEventId, follow = true }, onFrame) {
  const abort = new AbortController();
  const headers = { authorization: `Bearer ${secret}`, accept: "text/event-stream" };
  if (lastEventId !== undefined) headers["last-event-id"] = String(lastEventId);
  const q = follow ? "" : "?follow=false";
  const r = await fetch(`${URL_}/v1/envs/${ENV}/sessions/${session}/events${q}`, { headers, signal: abort.signal });
  assert.equal(r.status, 200, await (r.status === 200 ? "" : r.text()));
  assert.equal(r.headers.get("content-type"), "text/event-stream");
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for await (const bytes of r.body) {
      buf += decoder.decode(bytes, { stream: true });
      let frames;
      [frames, buf] = parseFrames(buf);
      for (const f of frames) {
        if (onFrame(f)) {
          abort.abort();
          return;
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  }
}

async function allEvents(session) {
  const out = [];
  await readEvents(session, { follow: false }, (f) => void out.push(f));
  return out;
}

async function waitIdle(session) {
  for (let i = 0; i < 600; i++) {
    const r = await api("GET", `/v1/envs/${ENV}/sessions/${session}`);
    assert.equal(r.status, 200, r.text);
    if (r.json.status === "idle") return r.json;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`session ${session} did not finish its run`);
}

function cli(args, key = secret) {
  return spawnSync(BIN, ["session", ...args], {
    env: { ...process.env, VIBEBASE_URL: URL_, VIBEBASE_KEY: key },
    encoding: "utf8",
    timeout: 120_000,
  });
}

/** Collects what @ag-ui/client warns about (events or fields it had to drop or fix up). */
function captureAgUiWarnings() {
  const seen = [];
  const original = console.warn;
  console.warn = (...args) => {
    const line = args.map(String).join(" ");
    if (line.includes("[ag-ui]") || line.includes("AG-UI")) seen.push(line);
    else original(...args);
  };
  return { seen, restore: () => (console.warn = original) };
}

before(async () => {
  const r = await api("POST", "/v1/envs", { id: ENV }, ADMIN);
  assert.equal(r.status, 201, r.text);
  secret = r.json.keys.secret;
});

test("HttpAgent runs a session and continues it on the same threadId", async () => {
  const threadId = `thread-${process.pid}`;
  const agent = new HttpAgent({
    url: `${URL_}/v1/envs/${ENV}/agent`,
    headers: { Authorization: `Bearer ${secret}` },
    threadId,
  });
  const warnings = captureAgUiWarnings();
  try {
    const events = [];
    agent.addMessage({ id: "u1", role: "user", content: "hello there" });
    const first = await agent.runAgent({ runId: "run-1" }, { onEvent: ({ event }) => void events.push(event) });
    const types = events.map((e) => e.type);
    assert.equal(types[0], "RUN_STARTED");
    assert.equal(types.at(-1), "RUN_FINISHED");
    assert.equal(events[0].threadId, threadId);
    assert.equal(events[0].runId, "run-1");
    assert.deepEqual(
      types.filter((t) => t.startsWith("TEXT_MESSAGE")),
      ["TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"],
    );
    assert.equal(first.newMessages.length, 1, JSON.stringify(first.newMessages));
    assert.equal(first.newMessages[0].role, "assistant");
    assert.equal(first.newMessages[0].content, "echo: hello there | users: hello there");

    // The same threadId continues the session: the model gets the earlier exchange too.
    events.length = 0;
    agent.addMessage({ id: "u2", role: "user", content: "and again" });
    const second = await agent.runAgent({ runId: "run-2" }, { onEvent: ({ event }) => void events.push(event) });
    assert.equal(events[0].type, "RUN_STARTED");
    assert.equal(events[0].runId, "run-2");
    assert.equal(second.newMessages.at(-1).content, "echo: and again | users: hello there / and again");
    assert.deepEqual(
      agent.messages.map((m) => m.role),
      ["user", "assistant", "user", "assistant"],
    );

    // A run with a tool call: bash in the session's sandbox, then the model's answer to its result.
    events.length = 0;
    agent.addMessage({ id: "u3", role: "user", content: "use a tool please" });
    const third = await agent.runAgent({ runId: "run-3" }, { onEvent: ({ event }) => void events.push(event) });
    const types3 = events.map((e) => e.type);
    for (const t of ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]) {
      assert.ok(types3.includes(t), `${t} in ${types3}`);
    }
    assert.equal(types3.at(-1), "RUN_FINISHED");
    const call = events.find((e) => e.type === "TOOL_CALL_START");
    assert.equal(call.toolCallName, "bash");
    const result = events.find((e) => e.type === "TOOL_CALL_RESULT");
    assert.equal(result.toolCallId, call.toolCallId);
    assert.match(result.content, /agent-tool-ok/);
    const withCall = third.newMessages.find((m) => m.role === "assistant" && m.toolCalls?.length);
    assert.ok(withCall, JSON.stringify(third.newMessages));
    assert.equal(withCall.toolCalls[0].function.name, "bash");
    assert.match(JSON.parse(withCall.toolCalls[0].function.arguments).command, /proof\.txt/);
    const toolMessage = third.newMessages.find((m) => m.role === "tool");
    assert.equal(toolMessage.toolCallId, call.toolCallId);
    assert.match(third.newMessages.at(-1).content, /^saw: exit code: 0/);
    assert.equal(toolMessage.metadata, undefined);

    // A tool that fails: the result says so in AG-UI's metadata, which the client keeps.
    agent.addMessage({ id: "u4", role: "user", content: "a failing tool" });
    const fourth = await agent.runAgent({ runId: "run-4" });
    const failed = fourth.newMessages.find((m) => m.role === "tool");
    assert.match(failed.content, /^exit code: 1/);
    assert.deepEqual(failed.metadata, { isError: true });
    assert.match(fourth.newMessages.at(-1).content, /^saw: exit code: 1/);

    // The client took every event as it came: nothing dropped, stripped or fixed up.
    assert.deepEqual(warnings.seen, []);
  } finally {
    warnings.restore();
  }

  // The thread is one session holding the three runs.
  const s = await waitIdle(threadId);
  const log = await allEvents(threadId);
  assert.equal(log.length, s.last_seq);
  assert.deepEqual(
    log.filter((f) => f.event.type === "RUN_STARTED").map((f) => f.event.runId),
    ["run-1", "run-2", "run-3", "run-4"],
  );

  // Another env's key cannot drive this env's thread.
  const other = await api("POST", "/v1/envs", { id: `${ENV}-b` }, ADMIN);
  assert.equal(other.status, 201, other.text);
  const intruder = new HttpAgent({
    url: `${URL_}/v1/envs/${ENV}/agent`,
    headers: { Authorization: `Bearer ${other.json.keys.secret}` },
    threadId,
  });
  intruder.addMessage({ id: "x1", role: "user", content: "let me in" });
  const logged = [];
  const original = console.error;
  console.error = (...args) => void logged.push(args.map(String).join(" "));
  try {
    await assert.rejects(intruder.runAgent({ runId: "run-x" }), (e) => e.status === 403);
  } finally {
    console.error = original;
  }
  assert.ok(logged.some((l) => l.includes("env_mismatch")), logged.join("\n"));
  assert.equal((await api("GET", `/v1/envs/${ENV}/sessions/${threadId}`)).json.last_seq, s.last_seq);
});

test("a plain SSE client reconnects with Last-Event-ID and gets exactly what it missed", async () => {
  const created = await api("POST", `/v1/envs/${ENV}/sessions`, { id: `sse-${process.pid}` });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id;
  const sent = await api("POST", `/v1/envs/${ENV}/sessions/${id}/messages`, { content: "be slow" });
  assert.equal(sent.status, 202, sent.text);
  const after = sent.json.after_seq;

  // Read until a few text deltas arrived, then hang up mid-run.
  const before = [];
  await readEvents(id, { lastEventId: after }, (f) => {
    before.push(f);
    return before.filter((x) => x.event.type === "TEXT_MESSAGE_CONTENT").length >= 3;
  });
  const lastSeen = before.at(-1).id;
  assert.equal(before[0].id, after + 1);
  assert.equal(before[0].event.type, "RUN_STARTED");

  // With no client connected, the run goes on server-side.
  await new Promise((r) => setTimeout(r, 1000));
  const meanwhile = (await api("GET", `/v1/envs/${ENV}/sessions/${id}`)).json;
  assert.equal(meanwhile.status, "running");
  assert.ok(meanwhile.last_seq > lastSeen + 3, `the log grew while disconnected: ${meanwhile.last_seq} vs ${lastSeen}`);

  // Reconnect where we left off and follow to the end of the run.
  const rest = [];
  await readEvents(id, { lastEventId: lastSeen }, (f) => {
    rest.push(f);
    return f.event.type === "RUN_FINISHED" || f.event.type === "RUN_ERROR";
  });
  assert.equal(rest[0].id, lastSeen + 1, "nothing seen twice, nothing skipped");
  assert.equal(rest.at(-1).event.type, "RUN_FINISHED");

  // The two halves are exactly the run's log, as the server keeps it.
  await waitIdle(id);
  const log = (await allEvents(id)).filter((f) => f.id > after);
  assert.deepEqual([...before, ...rest], log);
  const ids = log.map((f) => f.id);
  assert.deepEqual(ids, ids.map((_, i) => after + 1 + i), "dense sequence numbers");
  const text = log
    .filter((f) => f.event.type === "TEXT_MESSAGE_CONTENT")
    .map((f) => f.event.delta)
    .join("");
  assert.equal(text, Array.from({ length: 60 }, (_, i) => `part${i} `).join(""));
});

test("vibebase session send prints the answer; events and list show the session", async () => {
  const made = cli(["create", "--env", ENV, "--title", "from the CLI"]);
  assert.equal(made.status, 0, made.stderr);
  const id = made.stdout.trim();
  assert.ok(id.length > 0);

  const send = cli(["send", "--env", ENV, id, "hello cli"]);
  assert.equal(send.status, 0, send.stderr);
  assert.equal(send.stdout, "echo: hello cli | users: hello cli\n");

  const tool = cli(["send", "--env", ENV, id, "a tool now"]);
  assert.equal(tool.status, 0, tool.stderr);
  assert.match(tool.stderr, /\[tool bash\]/);
  assert.match(tool.stderr, /\[bash done\] exit code: 0/);
  assert.match(tool.stdout, /^saw: exit code: 0/);

  const json = cli(["send", "--env", ENV, id, "in json", "--json"]);
  assert.equal(json.status, 0, json.stderr);
  const events = json.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(events[0].type, "RUN_STARTED");
  assert.equal(events.at(-1).type, "RUN_FINISHED");
  assert.equal(
    events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").map((e) => e.delta).join(""),
    "echo: in json | users: hello cli / a tool now / in json",
  );

  const s = await waitIdle(id);
  const all = cli(["events", "--env", ENV, id, "--no-follow", "--json"]);
  assert.equal(all.status, 0, all.stderr);
  assert.equal(all.stdout.trim().split("\n").length, s.last_seq);
  const tail = cli(["events", "--env", ENV, id, "--no-follow", "--after", String(s.last_seq - 1)]);
  assert.match(tail.stdout, new RegExp(`^\\s*${s.last_seq}  RUN_FINISHED `));

  const list = cli(["list", "--env", ENV]);
  assert.equal(list.status, 0, list.stderr);
  assert.ok(list.stdout.split("\n").some((l) => l.startsWith(`${id} `) && l.includes("from the CLI")), list.stdout);
  assert.equal(cli(["send", "--env", ENV, "no-such-session", "hi"]).status, 4);
  const empty = cli(["send", "--env", ENV, id, ""]);
  assert.equal(empty.status, 2, empty.stderr);
  assert.match(empty.stderr, /invalid_message/);
  assert.equal(cli(["events", "--env", ENV, id, "--after=-1", "--no-follow"]).status, 2);
  assert.equal((await api("GET", `/v1/envs/${ENV}/sessions/${id}`)).json.last_seq, s.last_seq, "nothing written");
  assert.equal(cli(["get", "--env", ENV, id], "vb_secret_wrong").status, 3);
});
