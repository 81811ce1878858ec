// A scripted OpenAI-compatible model for the agent suite: POST /v1/chat/completions, streamed as
// Chat Completions chunks (`data: {...}`, a usage chunk, `data: [DONE]`). The gateway reaches it through
// the models file scripts/test writes; the agent loop sends it the session's whole conversation.
//
// What it answers, from the last message:
//   a tool result           "saw: <the result's first 60 characters>"
//   user text with "tool"   a `bash` call (arguments split over two chunks) that succeeds, or with
//                           "failing tool", one that fails (exit code 1)
//   user text with "slow"   60 deltas "part<i> " 100 ms apart (a run that outlives a disconnect)
//   anything else           "echo: <text> | users: <every user text it was sent, joined by ' / '>"
//
// Usage: node mock-model.mjs PORT

import http from "node:http";

const port = Number(process.argv[2] ?? 0);

const chunk = (delta, finish = null) =>
  `data: ${JSON.stringify({
    id: "chatcmpl-mock",
    object: "chat.completion.chunk",
    created: 0,
    model: "mock",
    choices: [{ index: 0, delta, finish_reason: finish }],
  })}\n\n`;

const usage = `data: ${JSON.stringify({
  id: "chatcmpl-mock",
  object: "chat.completion.chunk",
  created: 0,
  model: "mock",
  choices: [],
  usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 },
})}\n\n`;

// Tool call ids are unique per answer, as OpenAI's are.
let calls = 0;

const text = (c) => (typeof c === "string" ? c : Array.isArray(c) ? c.map((p) => p.text ?? "").join("") : "");

/** The frames of the answer, each with the delay before it (ms). */
function script(messages) {
  const last = messages[messages.length - 1] ?? {};
  if (last.role === "tool") {
    return [
      [chunk({ role: "assistant", content: `saw: ${text(last.content).slice(0, 60)}` }), 0],
      [chunk({}, "stop"), 0],
    ];
  }
  const said = text(last.content);
  if (said.includes("tool")) {
    const command = said.includes("failing")
      ? "cat no-such-file.txt"
      : "echo agent-tool-ok > proof.txt && cat proof.txt";
    const args = JSON.stringify({ command });
    return [
      [
        chunk({
          role: "assistant",
          tool_calls: [{ index: 0, id: `call_mock_${++calls}`, type: "function", function: { name: "bash", arguments: args.slice(0, 12) } }],
        }),
        0,
      ],
      [chunk({ tool_calls: [{ index: 0, function: { arguments: args.slice(12) } }] }), 0],
      [chunk({}, "tool_calls"), 0],
    ];
  }
  if (said.includes("slow")) {
    const frames = [[chunk({ role: "assistant", content: "" }), 0]];
    for (let i = 0; i < 60; i++) frames.push([chunk({ content: `part${i} ` }), 100]);
    frames.push([chunk({}, "stop"), 0]);
    return frames;
  }
  const users = messages.filter((m) => m.role === "user").map((m) => text(m.content));
  return [
    [chunk({ role: "assistant", content: `echo: ${said}` }), 0],
    [chunk({ content: ` | users: ${users.join(" / ")}` }), 0],
    [chunk({}, "stop"), 0],
  ];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const server = http.createServer(async (req, res) => {
  if (req.method === "GET" && req.url === "/health") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
    return;
  }
  if (req.method !== "POST" || !req.url.endsWith("/chat/completions")) {
    res.writeHead(404, { "content-type": "application/json" }).end('{"error":{"message":"not found"}}');
    return;
  }
  let body = "";
  for await (const part of req) body += part;
  let request;
  try {
    request = JSON.parse(body);
  } catch {
    res.writeHead(400, { "content-type": "application/json" }).end('{"error":{"message":"bad JSON"}}');
    return;
  }
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  res.socket?.setNoDelay(true);
  let gone = false;
  res.on("close", () => (gone = true));
  for (const [frame, delay] of script(request.messages ?? [])) {
    if (delay) await sleep(delay);
    if (gone) return;
    res.write(frame);
  }
  res.write(usage);
  res.end("data: [DONE]\n\n");
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`mock model on 127.0.0.1:${server.address().port}\n`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)));
