"""A scripted LLM provider for the gateway's SDK tests: an OpenAI-compatible Chat Completions endpoint
(/openai/v1/chat/completions) and an Anthropic Messages endpoint (/anthropic/v1/messages), both streamed
the way the providers document it (OpenAI: `data:` chunks, usage in a final chunk with empty `choices`
when `stream_options.include_usage` is set, `data: [DONE]`; Anthropic: `event:` + `data:` pairs,
message_start with input usage, `ping`, content blocks, message_delta with cumulative usage,
message_stop). Keep-alive comments are interleaved as proxies send them.

The last user text picks the scenario:
  tool:<n>       one tool call whose JSON arguments are about n bytes, in small deltas
  error-mid      a few text deltas, then a provider error event, then the connection closes
  garbage        a line that is not JSON
  half           a few deltas, then the connection closes mid-answer
  flaky:<key>    503 on the first request with this key, a normal answer afterwards
  slow           one delta every 100 ms for 30 s (client-disconnect test)
  anything else  a short text answer that echoes the last user text
GET /stats returns counters (requests per scenario, streams cut by the client)."""

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"requests": {}, "client_gone": 0, "flaky_seen": []}
LOCK = threading.Lock()


def count(key):
    with LOCK:
        STATS["requests"][key] = STATS["requests"].get(key, 0) + 1


def last_user_text(messages):
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, str):
            return c
        texts = [b.get("text", "") for b in c if b.get("type") == "text"]
        if texts:
            return "".join(texts)
    return ""


def prompt_tokens(body):
    return 7 + len(last_user_text(body.get("messages", []))) // 4


def big_arguments(n):
    # Valid JSON with a long string and some structure; deterministic.
    filler = "".join(chr(ord("a") + (i % 26)) for i in range(max(n - 60, 1)))
    return json.dumps({"path": "src/app.tsx", "content": filler, "lines": [1, 2, 3], "unicode": "héllo ✓"})


def text_answer(body):
    said = last_user_text(body["messages"])
    return ["Hello", " from", " the mock", f" upstream: you said {said!r}."]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Small SSE writes must not wait for delayed ACKs (Nagle), as no real provider's do.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                data = json.dumps(STATS).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length))
        scenario = last_user_text(body.get("messages", []))
        kind = "openai" if self.path == "/openai/v1/chat/completions" else "anthropic" if self.path == "/anthropic/v1/messages" else None
        if kind is None:
            self.send_error(404)
            return
        count(f"{kind}:{scenario.split(':')[0]}")
        if scenario.startswith("flaky:"):
            with LOCK:
                first = scenario not in STATS["flaky_seen"]
                STATS["flaky_seen"].append(scenario)
            if first:
                data = json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode()
                self.send_response(503)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
        if kind == "openai" and not body.get("stream"):
            # Non-streamed callers (other gateways in the side-by-side benchmark) get the same answer whole.
            text = "".join(text_answer(body))
            data = json.dumps({"id": "chatcmpl-mock1", "object": "chat.completion", "created": 1700000000,
                               "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                                                    "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": prompt_tokens(body), "completion_tokens": 4,
                                         "total_tokens": prompt_tokens(body) + 4}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            if kind == "openai":
                self.openai(body, scenario)
            else:
                self.anthropic(body, scenario)
        except (BrokenPipeError, ConnectionResetError):
            with LOCK:
                STATS["client_gone"] += 1
        self.close_connection = True

    def send_raw(self, text):
        self.wfile.write(text.encode())
        self.wfile.flush()

    # -- OpenAI -------------------------------------------------------------------------------
    def openai(self, body, scenario):
        base = {"id": "chatcmpl-mock1", "object": "chat.completion.chunk", "created": 1700000000,
                "model": body["model"], "system_fingerprint": "fp_mock"}

        def chunk(delta, finish=None):
            c = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
            self.send_raw(f"data: {json.dumps(c)}\n\n")

        chunk({"role": "assistant", "content": ""})
        self.send_raw(": keep-alive\n\n")
        out_tokens = 0
        if scenario == "garbage":
            self.send_raw("data: {this is not json\n\n")
            return
        if scenario == "slow":
            for i in range(300):
                chunk({"content": f"tick {i} "})
                time.sleep(0.1)
            return
        if scenario.startswith("tool:"):
            args = big_arguments(int(scenario.split(":")[1]))
            chunk({"tool_calls": [{"index": 0, "id": "call_mock1", "type": "function",
                                   "function": {"name": "write_file", "arguments": ""}}]})
            for i in range(0, len(args), 97):
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 97]}}]})
                out_tokens += 1
            finish = "tool_calls"
        else:
            for piece in text_answer(body):
                chunk({"content": piece})
                out_tokens += 1
                if scenario in ("error-mid", "half"):
                    break
            if scenario == "error-mid":
                self.send_raw('data: {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}\n\n')
                return
            if scenario == "half":
                self.send_raw('data: {"id": "chatcmpl-mock1", "choices": [{"index": 0, "del')
                return
            finish = "stop"
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {"prompt_tokens": prompt_tokens(body), "completion_tokens": out_tokens,
                 "total_tokens": prompt_tokens(body) + out_tokens}
            self.send_raw(f"data: {json.dumps(dict(base, choices=[], usage=u))}\n\n")
        self.send_raw("data: [DONE]\n\n")

    # -- Anthropic ----------------------------------------------------------------------------
    def anthropic(self, body, scenario):
        def event(kind, data):
            data = dict(data, type=kind)
            self.send_raw(f"event: {kind}\ndata: {json.dumps(data)}\n\n")

        inp = prompt_tokens(body)
        event("message_start", {"message": {"id": "msg_mock1", "type": "message", "role": "assistant", "content": [],
                                            "model": body["model"], "stop_reason": None, "stop_sequence": None,
                                            "usage": {"input_tokens": inp, "output_tokens": 1}}})
        out_tokens = 0
        if scenario == "garbage":
            self.send_raw("event: content_block_start\ndata: <html>bad gateway</html>\n\n")
            return
        if scenario == "slow":
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            for i in range(300):
                event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"tick {i} "}})
                time.sleep(0.1)
            return
        if scenario.startswith("tool:"):
            args = big_arguments(int(scenario.split(":")[1]))
            event("content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "call_mock1",
                                                                         "name": "write_file", "input": {}}})
            event("ping", {})
            for i in range(0, len(args), 97):
                event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": args[i:i + 97]}})
                out_tokens += 1
            event("content_block_stop", {"index": 0})
            stop = "tool_use"
        else:
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            event("ping", {})
            for piece in text_answer(body):
                event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
                out_tokens += 1
                if scenario in ("error-mid", "half"):
                    break
            if scenario == "error-mid":
                event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                return
            if scenario == "half":
                self.send_raw('event: content_block_delta\ndata: {"type": "content_block_delta", "ind')
                return
            event("content_block_stop", {"index": 0})
            stop = "end_turn"
        event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                "usage": {"output_tokens": out_tokens}})
        event("message_stop", {})


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
