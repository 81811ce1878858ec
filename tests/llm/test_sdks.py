"""The model gateway against the official `openai` and `anthropic` Python SDKs (pinned in
scripts/requirements-test.txt). Starts the scripted mock upstream (mock_upstream.py) and a
`vibebase serve --models FILE` that points at it, then drives the gateway with unmodified SDK clients.

Usage: python3 test_sdks.py PATH_TO_VIBEBASE_BINARY WORK_DIR"""

import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request

import anthropic
import httpx2 as httpx
import openai

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mock_upstream  # noqa: E402  (for the expected tool arguments)

ADMIN = "sdk-test-admin-key-0123456789"
BIG = 200_000  # bytes of tool-call arguments


def http(method, url, body=None, key=ADMIN):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_http(url, proc, secs=60):
    for _ in range(secs * 10):
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class World:
    def __init__(self, binary, work):
        os.makedirs(work, exist_ok=True)
        self.procs = []
        mock = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_upstream.py"), "0"],
                                stdout=subprocess.PIPE, stderr=open(os.path.join(work, "mock.log"), "w"), text=True)
        self.procs.append(mock)
        self.mock = f"http://127.0.0.1:{mock.stdout.readline().strip()}"
        recordings = [{
            "request": {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is vibebase?"}]}]},
            "response": {"text": "A backend for vibe-coding platforms.", "tool_calls": [], "finish": "stop",
                         "usage": {"input_tokens": 5, "output_tokens": 7}},
        }]
        with open(os.path.join(work, "recordings.json"), "w") as f:
            json.dump(recordings, f)
        models = {
            "providers": {
                "mock-openai": {"kind": "openai", "base_url": self.mock + "/openai/v1", "read_timeout_ms": 5000,
                                "breaker_failures": 1000},
                "mock-anthropic": {"kind": "anthropic", "base_url": self.mock + "/anthropic/v1", "read_timeout_ms": 5000,
                                   "breaker_failures": 1000},
                "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "connect_timeout_ms": 1000},
                "tape": {"kind": "replay", "recordings": "recordings.json"},
            },
            "models": [
                {"name": "gpt-mock", "aliases": ["gpt-alias"], "routes": [{"provider": "mock-openai", "model": "gpt-4o-mini"}],
                 "input_price": 0.5, "output_price": 2, "default_max_tokens": 1000},
                {"name": "claude-mock", "routes": [{"provider": "mock-anthropic", "model": "claude-sonnet"}],
                 "input_price": 3, "output_price": 15, "default_max_tokens": 1000},
                {"name": "fallback-mock", "routes": [{"provider": "dead"}, {"provider": "mock-openai"}]},
                {"name": "tiny-context", "routes": [{"provider": "mock-openai"}], "context_window": 50},
                {"name": "replayed", "routes": [{"provider": "tape"}]},
            ],
            "budgets": {"session_tokens": 60},
            "backoff_ms": 10,
        }
        path = os.path.join(work, "models.json")
        with open(path, "w") as f:
            json.dump(models, f)
        port = mock_upstream_free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIBEBASE_")}
        env["VIBEBASE_ADMIN_KEY"] = ADMIN
        server = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "data"),
                                   "--models", path], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, "server.log"), "w"))
        self.procs.append(server)
        self.base = f"http://127.0.0.1:{port}"
        wait_http(self.base + "/healthz", server)
        self.keys = {}
        for env_id in ("sdk", "broke", "meter", "cut", "sess"):
            status, rec = http("POST", self.base + "/v1/envs", {"id": env_id})
            assert status == 201, rec
            self.keys[env_id] = rec["keys"]["secret"]
        status, rec = http("POST", self.base + "/v1/envs/sess/tokens", {"ttl_seconds": 600, "session": "sandbox-1"})
        assert status == 201, rec
        self.session_token = rec["token"]
        status, rec = http("PUT", self.base + "/v1/envs/broke/limits",
                           {"quotas": [{"meter": "llm_cost", "period": "day", "hard_limit": 1}]})
        assert status == 200, rec

    def llm(self, env):
        return f"{self.base}/env/{env}/llm/v1"

    def openai(self, env="sdk", key=None, **kw):
        return openai.OpenAI(base_url=self.llm(env), api_key=key or self.keys[env], **kw)

    def anthropic(self, env="sdk", key=None, **kw):
        return anthropic.Anthropic(base_url=self.llm(env), api_key=key or self.keys[env], **kw)

    def usage(self, env):
        status, rep = http("GET", f"{self.base}/v1/envs/{env}/usage")
        assert status == 200, rep
        return {t["meter"]: t["quantity"] for t in rep["totals"]}

    def usage_when(self, env, ok, secs=10):
        """The env's usage once `ok(usage)` holds (calls settle just after their last byte)."""
        for _ in range(secs * 20):
            u = self.usage(env)
            if ok(u):
                return u
            time.sleep(0.05)
        return u

    def stats(self):
        return json.load(urllib.request.urlopen(self.mock + "/stats", timeout=5))

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def mock_upstream_free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


TOOLS_OPENAI = [{"type": "function", "function": {"name": "write_file", "description": "Write a file",
                                                  "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
TOOLS_ANTHROPIC = [{"name": "write_file", "description": "Write a file",
                    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]
TOOLS_RESPONSES = [{"type": "function", "name": "write_file", "description": "Write a file",
                    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]
EXPECTED_ARGS = json.loads(mock_upstream.big_arguments(BIG))


def user(text):
    return [{"role": "user", "content": text}]


# -- tests ------------------------------------------------------------------------------------------

def test_openai_chat_streamed_and_not_agree(w):
    for model in ("gpt-mock", "claude-mock"):
        c = w.openai()
        full = c.chat.completions.create(model=model, messages=user("hi there"))
        with c.chat.completions.stream(model=model, messages=user("hi there"),
                                       stream_options={"include_usage": True}) as s:
            for _ in s:
                pass
            final = s.get_final_completion()
        assert full.choices[0].message.content == final.choices[0].message.content, (full, final)
        assert "you said 'hi there'" in full.choices[0].message.content
        assert full.choices[0].finish_reason == final.choices[0].finish_reason == "stop"
        assert full.usage.prompt_tokens == final.usage.prompt_tokens and full.usage.completion_tokens == final.usage.completion_tokens
        assert full.usage.completion_tokens == 4, full.usage


def test_openai_large_tool_call_arguments_arrive_intact(w):
    for model in ("gpt-mock", "claude-mock"):
        c = w.openai()
        full = c.chat.completions.create(model=model, messages=user(f"tool:{BIG}"), tools=TOOLS_OPENAI)
        call = full.choices[0].message.tool_calls[0]
        assert call.function.name == "write_file" and call.id == "call_mock1"
        assert json.loads(call.function.arguments) == EXPECTED_ARGS
        assert full.choices[0].finish_reason == "tool_calls"
        with c.chat.completions.stream(model=model, messages=user(f"tool:{BIG}"), tools=TOOLS_OPENAI) as s:
            final = s.get_final_completion()
        assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == EXPECTED_ARGS


def test_anthropic_streamed_and_not_agree(w):
    for model in ("claude-mock", "gpt-mock"):
        c = w.anthropic()
        full = c.messages.create(model=model, max_tokens=500, messages=user("hello claude"))
        with c.messages.stream(model=model, max_tokens=500, messages=user("hello claude")) as s:
            final = s.get_final_message()
        assert full.content[0].text == final.content[0].text and "you said 'hello claude'" in full.content[0].text
        assert full.stop_reason == final.stop_reason == "end_turn"
        assert (full.usage.input_tokens, full.usage.output_tokens) == (final.usage.input_tokens, final.usage.output_tokens), (full.usage, final.usage)
        assert full.usage.output_tokens == 4


def test_anthropic_large_tool_input_arrives_intact(w):
    for model in ("claude-mock", "gpt-mock"):
        c = w.anthropic()
        full = c.messages.create(model=model, max_tokens=500, messages=user(f"tool:{BIG}"), tools=TOOLS_ANTHROPIC)
        block = [b for b in full.content if b.type == "tool_use"][0]
        assert block.name == "write_file" and block.input == EXPECTED_ARGS and full.stop_reason == "tool_use"
        with c.messages.stream(model=model, max_tokens=500, messages=user(f"tool:{BIG}"), tools=TOOLS_ANTHROPIC) as s:
            final = s.get_final_message()
        block = [b for b in final.content if b.type == "tool_use"][0]
        assert block.input == EXPECTED_ARGS and final.stop_reason == "tool_use"


def test_translated_paths_agree_with_direct_ones(w):
    oa, an = w.openai(), w.anthropic()
    direct = oa.chat.completions.create(model="gpt-mock", messages=user("same words"))
    translated = an.messages.create(model="gpt-mock", max_tokens=100, messages=user("same words"))
    assert direct.choices[0].message.content == translated.content[0].text
    assert (direct.usage.prompt_tokens, direct.usage.completion_tokens) == (translated.usage.input_tokens, translated.usage.output_tokens)
    direct = an.messages.create(model="claude-mock", max_tokens=100, messages=user("same words"))
    translated = oa.chat.completions.create(model="claude-mock", messages=user("same words"))
    assert direct.content[0].text == translated.choices[0].message.content
    assert (direct.usage.input_tokens, direct.usage.output_tokens) == (translated.usage.prompt_tokens, translated.usage.completion_tokens)
    # A tool round trip in Anthropic form through the OpenAI upstream: the follow-up request carries the
    # tool call and its result, translated, and is answered.
    first = an.messages.create(model="gpt-mock", max_tokens=100, messages=user("tool:300"), tools=TOOLS_ANTHROPIC)
    tool = [b for b in first.content if b.type == "tool_use"][0]
    follow = an.messages.create(model="gpt-mock", max_tokens=100, tools=TOOLS_ANTHROPIC, messages=[
        {"role": "user", "content": "tool:300"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "written"},
                                     {"type": "text", "text": "thanks"}]},
    ])
    assert "you said 'thanks'" in follow.content[0].text


def test_responses_api_streamed_and_not_agree(w):
    for model in ("gpt-mock", "claude-mock"):
        c = w.openai()
        full = c.responses.create(model=model, input="hi responses")
        with c.responses.stream(model=model, input="hi responses") as s:
            for _ in s:
                pass
            final = s.get_final_response()
        assert full.output_text == final.output_text and "you said 'hi responses'" in full.output_text
        assert (full.usage.input_tokens, full.usage.output_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
        full = c.responses.create(model=model, input=f"tool:{BIG}", tools=TOOLS_RESPONSES)
        call = [o for o in full.output if o.type == "function_call"][0]
        assert json.loads(call.arguments) == EXPECTED_ARGS and call.name == "write_file"
        with c.responses.stream(model=model, input=f"tool:{BIG}", tools=TOOLS_RESPONSES) as s:
            final = s.get_final_response()
        call = [o for o in final.output if o.type == "function_call"][0]
        assert json.loads(call.arguments) == EXPECTED_ARGS
        # The call and its output go back as input items, translated for either upstream.
        follow = c.responses.create(model=model, tools=TOOLS_RESPONSES, input=[
            {"role": "user", "content": "tool:300"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "written"},
            {"role": "user", "content": "done"},
        ])
        assert "you said 'done'" in follow.output_text, follow.output_text


def test_upstream_error_mid_stream_raises(w):
    for model in ("gpt-mock", "claude-mock"):
        got = None
        try:
            with w.openai().chat.completions.stream(model=model, messages=user("error-mid")) as s:
                for _ in s:
                    pass
        except openai.APIError as e:
            got = e
        assert got is not None, f"{model}: no error raised (openai)"
        got = None
        try:
            with w.anthropic().messages.stream(model=model, max_tokens=100, messages=user("error-mid")) as s:
                for _ in s:
                    pass
        except anthropic.APIError as e:
            got = e
        assert got is not None, f"{model}: no error raised (anthropic)"
        # Half-written stream: also an error, never a silently short answer.
        got = None
        try:
            with w.openai().chat.completions.stream(model=model, messages=user("half")) as s:
                for _ in s:
                    pass
        except openai.APIError as e:
            got = e
        assert got is not None, f"{model}: half stream accepted"


def test_garbage_upstream_is_a_clean_502(w):
    for model in ("gpt-mock", "claude-mock"):
        try:
            w.openai(max_retries=0).chat.completions.create(model=model, messages=user("garbage"))
            raise AssertionError("garbage accepted")
        except openai.InternalServerError as e:
            assert e.status_code == 502, e


def test_wrong_key_raises_authentication_error(w):
    try:
        w.openai(key="vb_sk_wrong").chat.completions.create(model="gpt-mock", messages=user("hi"))
        raise AssertionError("accepted")
    except openai.AuthenticationError:
        pass
    try:
        w.anthropic(key="vb_sk_wrong").messages.create(model="gpt-mock", max_tokens=10, messages=user("hi"))
        raise AssertionError("accepted")
    except anthropic.AuthenticationError:
        pass


def counting_client():
    seen = []
    return seen, httpx.Client(event_hooks={"request": [lambda r: seen.append(r.url)]})


def test_exhausted_budget_raises_without_retries(w):
    # The first call fits the tiny money budget only if it costs nothing; it does not: 402 at once.
    seen, hc = counting_client()
    try:
        w.openai("broke", http_client=hc).chat.completions.create(model="gpt-mock", messages=user("hi"))
        raise AssertionError("accepted")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and e.body["code"] == "budget_exceeded_env_cost", e.body
    assert len(seen) == 1, seen
    seen, hc = counting_client()
    try:
        w.anthropic("broke", http_client=hc).messages.create(model="claude-mock", max_tokens=10, messages=user("hi"))
        raise AssertionError("accepted")
    except anthropic.APIStatusError as e:
        assert e.status_code == 402 and e.body["error"]["type"] == "billing_error", e.body
    assert len(seen) == 1, seen


def test_session_budget_of_a_minted_token(w):
    c = w.openai("sess", key=w.session_token, max_retries=0)
    calls = 0
    try:
        for _ in range(20):
            c.chat.completions.create(model="gpt-mock", messages=user("hi"), max_tokens=5)
            calls += 1
        raise AssertionError("session budget never ran out")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and e.body["code"] == "budget_exceeded_session_tokens", e.body
    assert calls >= 1
    # The last admitted call may overshoot by what its prompt estimate missed: at most one call's usage.
    total = lambda u: u.get("llm_tokens_in", 0) + u.get("llm_tokens_out", 0)
    u = w.usage_when("sess", lambda u: total(u) > 60 - 11)
    assert 60 - 11 < total(u) <= 60 + 11, u
    # The env's secret key has no session: not limited by the session budget.
    w.openai("sess").chat.completions.create(model="gpt-mock", messages=user("hi"))


def test_usage_is_metered_exactly(w):
    c = w.openai("meter")
    a = c.chat.completions.create(model="gpt-mock", messages=user("count me"))
    b = w.anthropic("meter").messages.create(model="claude-mock", max_tokens=50, messages=user("and me"))
    u = w.usage_when("meter", lambda u: u.get("llm_cost", 0) > 0 and u.get("llm_tokens_in", 0) == a.usage.prompt_tokens + b.usage.input_tokens)
    assert u["llm_tokens_in"] == a.usage.prompt_tokens + b.usage.input_tokens, u
    assert u["llm_tokens_out"] == a.usage.completion_tokens + b.usage.output_tokens, u
    expect_cost = -(-(a.usage.prompt_tokens * 0.5 + a.usage.completion_tokens * 2) // 1) + \
        -(-(b.usage.input_tokens * 3 + b.usage.output_tokens * 15) // 1)
    assert u["llm_cost"] == expect_cost, (u, expect_cost)


def test_client_disconnect_cancels_upstream_and_is_charged(w):
    before = w.stats()["client_gone"]
    with w.openai("cut").chat.completions.create(model="gpt-mock", messages=user("slow"), stream=True) as s:
        for i, _ in enumerate(s):
            if i >= 3:
                break
    for _ in range(50):
        if w.stats()["client_gone"] > before and w.usage("cut").get("llm_tokens_out", 0) > 0:
            break
        time.sleep(0.1)
    assert w.stats()["client_gone"] > before, "upstream not cancelled"
    u = w.usage("cut")
    assert u.get("llm_tokens_in", 0) > 0 and u.get("llm_tokens_out", 0) > 0, u


def test_bad_input(w):
    c = w.openai(max_retries=0)
    try:
        c.chat.completions.create(model="no-such-model", messages=user("hi"))
        raise AssertionError("accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    try:
        w.anthropic(max_retries=0).messages.create(model="no-such-model", max_tokens=5, messages=user("hi"))
        raise AssertionError("accepted")
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error", e.body
    try:
        c.chat.completions.create(model="tiny-context", messages=user("x" * 1000))
        raise AssertionError("accepted")
    except openai.APIStatusError as e:
        assert e.status_code == 413 and e.body["code"] == "context_length_exceeded", e.body
    r = httpx.post(w.llm("sdk") + "/chat/completions", content=b"{not json", headers={"authorization": "Bearer " + w.keys["sdk"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    r = httpx.post(w.llm("sdk") + "/messages", json={"model": "gpt-mock", "messages": "nope"}, headers={"x-api-key": w.keys["sdk"]})
    assert r.status_code == 400 and r.json()["type"] == "error", r.text
    r = httpx.post(w.llm("sdk") + "/chat/completions", content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                   headers={"authorization": "Bearer " + w.keys["sdk"]})
    assert r.status_code == 413, r.status_code


def test_models_count_tokens_aliases_fallback_and_replay(w):
    ids = [m.id for m in w.openai().models.list()]
    assert {"gpt-mock", "gpt-alias", "claude-mock"} <= set(ids), ids
    ids = [m.id for m in w.anthropic().models.list()]
    assert "claude-mock" in ids, ids
    n = w.anthropic().messages.count_tokens(model="claude-mock", messages=user("count these tokens please"))
    assert n.input_tokens > 0
    r = w.openai().chat.completions.create(model="gpt-alias", messages=user("via alias"))
    assert r.model == "gpt-alias" and "via alias" in r.choices[0].message.content
    # The first route refuses connections; the second answers.
    r = w.openai().chat.completions.create(model="fallback-mock", messages=user("fell back"))
    assert "fell back" in r.choices[0].message.content
    # A 503 before the first byte is retried inside the gateway; the SDK sees one success.
    seen, hc = counting_client()
    r = w.openai(http_client=hc).chat.completions.create(model="gpt-mock", messages=user("flaky:sdk-1"))
    assert "flaky:sdk-1" in r.choices[0].message.content and len(seen) == 1
    raw = w.openai().chat.completions.with_raw_response.create(model="replayed", messages=user("What is vibebase?"))
    assert raw.headers.get("x-vibebase-replayed") == "true"
    r = raw.parse()
    assert r.id.startswith("chatcmpl-replay_") and r.choices[0].message.content == "A backend for vibe-coding platforms."
    try:
        w.openai(max_retries=0).chat.completions.create(model="replayed", messages=user("never recorded"))
        raise AssertionError("accepted")
    except openai.UnprocessableEntityError as e:
        assert e.body["code"] == "replay_no_recording", e.body


def main():
    binary, work = sys.argv[1], sys.argv[2]
    w = World(binary, work)
    failed = 0
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_")]
    try:
        for name, fn in tests:
            start = time.time()
            try:
                fn(w)
                print(f"PASS {name} ({time.time() - start:.2f}s)", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    finally:
        w.close()
    print(f"{len(tests) - failed} passed, {failed} failed (openai {openai.__version__}, anthropic {anthropic.__version__})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
