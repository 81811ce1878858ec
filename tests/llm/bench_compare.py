"""Side-by-side overhead of vibebase's model gateway and LiteLLM's proxy on the same mock upstream
(mock_upstream.py), one request at a time from one client over persistent connections.

Usage: python3 bench_compare.py VIBEBASE_BINARY LITELLM_EXECUTABLE WORK_DIR [N]
(LiteLLM from PyPI, `pip install 'litellm[proxy]'`, run with LITELLM_LOCAL_MODEL_COST_MAP=True.)"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ADMIN = "bench-admin-key-0123456789abcdef"
LITELLM_KEY = "sk-" + "5e" * 32


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(port, path, secs=120):
    for _ in range(secs * 10):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            c.getresponse().read()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not answer")


def series(port, path, headers, body, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = json.dumps(body).encode()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", path, body=data, headers=dict(headers, **{"content-type": "application/json"}))
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (port, path, r.status)
        out.append(time.perf_counter() - t)
    conn.close()
    return sorted(out)


def pct(v, p):
    return v[round((len(v) - 1) * p)] * 1000


def main():
    binary, litellm, work = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 500
    os.makedirs(work)  # fresh: the server data dir lives in it
    procs = []
    try:
        mock = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_upstream.py"), "0"], stdout=subprocess.PIPE, text=True)
        procs.append(mock)
        mport = int(mock.stdout.readline())
        upstream = f"http://127.0.0.1:{mport}/openai/v1"
        with open(os.path.join(work, "models.json"), "w") as f:
            json.dump({"providers": {"mock": {"kind": "openai", "base_url": upstream}},
                       "models": [{"name": "bench", "routes": [{"provider": "mock", "model": "gpt-4o-mini"}]}]}, f)
        vport = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIBEBASE_")}
        procs.append(subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{vport}", "--rate-limit", "1000000",
                                       "--data-dir", os.path.join(work, "data"), "--models", os.path.join(work, "models.json")],
                                      env=dict(env, VIBEBASE_ADMIN_KEY=ADMIN, RUST_LOG="warn"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(os.path.join(work, "litellm.yaml"), "w") as f:
            f.write("model_list:\n  - model_name: bench\n    litellm_params:\n"
                    f"      model: openai/gpt-4o-mini\n      api_base: {upstream}\n      api_key: sk-mock\n")
        lport = free_port()
        procs.append(subprocess.Popen([litellm, "--config", os.path.join(work, "litellm.yaml"), "--port", str(lport),
                                       "--num_workers", "1"], env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=LITELLM_KEY),
                                      stdout=open(os.path.join(work, "litellm.log"), "w"), stderr=subprocess.STDOUT))
        wait(vport, "/healthz")
        wait(lport, "/health/liveliness")
        c = http.client.HTTPConnection("127.0.0.1", vport)
        c.request("POST", "/v1/envs", body=json.dumps({"id": "bench"}),
                  headers={"authorization": "Bearer " + ADMIN, "content-type": "application/json"})
        key = json.loads(c.getresponse().read())["keys"]["secret"]
        msgs = [{"role": "user", "content": "Say something short."}]
        targets = {
            "direct": (mport, "/openai/v1/chat/completions", {}),
            "vibebase": (vport, "/env/bench/llm/v1/chat/completions", {"authorization": "Bearer " + key}),
            "litellm": (lport, "/v1/chat/completions", {"authorization": "Bearer " + LITELLM_KEY}),
        }
        for stream in (False, True):
            body = {"model": "bench", "messages": msgs, "stream": stream}
            direct_body = dict(body, model="gpt-4o-mini")
            if stream:
                body["stream_options"] = direct_body["stream_options"] = {"include_usage": True}
            results = {name: [] for name in targets}
            for name, (port, path, headers) in targets.items():
                series(port, path, headers, direct_body if name == "direct" else body, 50)
            for _ in range(5):
                for name, (port, path, headers) in targets.items():
                    results[name] += series(port, path, headers, direct_body if name == "direct" else body, n // 5)
            for v in results.values():
                v.sort()
            d = results["direct"]
            print(f"stream={stream} calls per series: {len(d)}")
            for name, v in results.items():
                extra = "" if name == "direct" else \
                    f"  overhead p50 {pct(v, .5) - pct(d, .5):.3f} ms  p99 {pct(v, .99) - pct(d, .99):.3f} ms"
                print(f"  {name:9s} p50 {pct(v, .5):.3f} ms  p99 {pct(v, .99):.3f} ms{extra}", flush=True)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
