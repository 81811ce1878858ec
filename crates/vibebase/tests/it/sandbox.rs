//! Sandboxes on the real binary: the lifecycle and API, and the attack suite. Each attack test has a
//! positive control (the same primitive works where it is allowed) and asserts the specific signal
//! (`pids.events`, exit 137, ENOSPC, ECONNREFUSED, EPERM); each ends by checking that the host and a
//! neighbouring sandbox are unaffected.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Server, tempdir};

const ADMIN: &str = "vb_admin_sandbox_tests_0123456789abcdef0123";

/// A running server with one env, driven over HTTP.
struct Lab {
    server: Server,
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    http: reqwest::blocking::Client,
    env: String,
}

impl Lab {
    fn new() -> Self {
        let dir = tempdir();
        let data_dir = dir.path().canonicalize().unwrap();
        let server = Server::start(&data_dir, &[], Some(ADMIN));
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let lab = Self { server, _dir: dir, data_dir, http, env: "lab".to_owned() };
        let (status, body) = lab.call("POST", "/v1/envs", Some(json!({"id": "lab"})));
        assert_eq!(status, 201, "{body}");
        lab
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.server.url);
        let mut req = self.http.request(method.parse().unwrap(), url).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn sandbox(&self, spec: Value) -> String {
        let (status, body) = self.call("POST", &format!("/v1/envs/{}/sandboxes", self.env), Some(spec));
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    fn exec(&self, sb: &str, command: &str) -> Value {
        let (status, body) = self.call(
            "POST",
            &format!("/v1/envs/{}/sandboxes/{sb}/exec", self.env),
            Some(json!({"command": command, "timeout_ms": 60_000})),
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    fn exec_ok(&self, sb: &str, command: &str) -> String {
        let r = self.exec(sb, command);
        assert_eq!(r["exit_code"], 0, "{command}: {r}");
        r["stdout"].as_str().unwrap().to_owned()
    }

    /// A file of this sandbox's cgroup, read on the host.
    fn cgroup_file(&self, sb: &str, controller: &str, file: &str) -> String {
        let pattern = format!("/sys/fs/cgroup/{controller}/vibebase/*/env-{}/sb-{sb}/{file}", self.env);
        let unified = format!("/sys/fs/cgroup/vibebase/*/env-{}/sb-{sb}/{file}", self.env);
        for p in [pattern, unified] {
            if let Some(path) = glob(&p) {
                return std::fs::read_to_string(path).unwrap();
            }
        }
        panic!("no cgroup file {file} for {sb}");
    }

    /// The host and a fresh neighbour sandbox still work.
    fn assert_unaffected(&self) {
        let (status, _) = self.call("GET", "/healthz", None);
        assert_eq!(status, 200);
        let other = self.sandbox(json!({}));
        assert_eq!(self.exec_ok(&other, "echo alive"), "alive\n");
    }
}

/// The one path matching a pattern with `*` segments.
fn glob(pattern: &str) -> Option<std::path::PathBuf> {
    let mut candidates = vec![std::path::PathBuf::from("/")];
    for part in pattern.trim_start_matches('/').split('/') {
        let mut next = Vec::new();
        for c in candidates {
            if part == "*" {
                if let Ok(rd) = std::fs::read_dir(&c) {
                    next.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
            } else if c.join(part).exists() {
                next.push(c.join(part));
            }
        }
        candidates = next;
    }
    candidates.into_iter().next()
}

#[test]
fn sandbox_lifecycle_exec_files_and_usage() {
    let lab = Lab::new();
    let started = Instant::now();
    let sb = lab.sandbox(json!({"session": "s1", "metadata": {"purpose": "test"}}));
    let create_ms = started.elapsed().as_millis();
    assert!(create_ms < 10_000, "create took {create_ms} ms");
    let (status, rec) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{sb}"), None);
    assert_eq!(status, 200);
    assert_eq!(rec["state"], "running");
    assert_eq!(rec["metadata"]["purpose"], "test");
    assert!(rec["backend"].as_str().unwrap().starts_with("bubblewrap/cgroup-v"));
    let (_, list) = lab.call("GET", "/v1/envs/lab/sandboxes", None);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Exec: argv, shell, env, cwd, stdin, exit codes, timeouts, background.
    let (_, r) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/exec"),
        Some(json!({"argv": ["sh", "-c", "echo $GREETING from $(pwd) as $(id -un); cat; echo err >&2; exit 3"],
                    "env": {"GREETING": "hello"}, "cwd": "/tmp", "stdin": "piped-in"})),
    );
    assert_eq!(r["stdout"], "hello from /tmp as user\npiped-in");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["exit_code"], 3);
    let (_, r) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/exec"),
        Some(json!({"command": "sleep 30", "timeout_ms": 300})),
    );
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["exit_code"], 137);
    let (_, r) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/exec"),
        Some(json!({"command": "sleep 0.3; echo done > bg.txt", "background": true})),
    );
    assert!(r["pid"].as_u64().unwrap() > 0);
    assert_eq!(r["exit_code"], Value::Null);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lab.exec_ok(&sb, "cat bg.txt"), "done\n");
    let (status, r) =
        lab.call("POST", &format!("/v1/envs/lab/sandboxes/{sb}/exec"), Some(json!({"argv": ["no-such-program"]})));
    assert_eq!((status, r["code"].as_str()), (400, Some("spawn_failed")), "{r}");
    // The minted token and the env's URL are there; no platform secret is.
    let env_out = lab.exec_ok(&sb, "env");
    assert!(env_out.contains("VIBEBASE_TOKEN=vb_tok_"), "{env_out}");
    assert!(env_out.contains("VIBEBASE_API_URL=http://vibebase.internal/env/lab"), "{env_out}");
    assert!(!env_out.contains(ADMIN) && !env_out.contains("vb_sk_"), "{env_out}");

    // Files: write, read, stat, list, mkdir, move, remove.
    let url = format!("{}/v1/envs/lab/sandboxes/{sb}/files", lab.server.url);
    let put =
        lab.http.put(format!("{url}?path=src/app.js")).bearer_auth(ADMIN).body(vec![b'x'; 300_000]).send().unwrap();
    assert_eq!(put.status(), 200);
    let entry: Value = put.json().unwrap();
    assert_eq!((entry["path"].as_str(), entry["size"].as_u64()), (Some("/home/user/src/app.js"), Some(300_000)));
    let got = lab.http.get(format!("{url}?path=/home/user/src/app.js")).bearer_auth(ADMIN).send().unwrap();
    assert_eq!(got.bytes().unwrap().len(), 300_000);
    let (_, st) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{sb}/files/stat?path=src"), None);
    assert_eq!(st["kind"], "dir");
    let (_, mk) = lab.call("POST", &format!("/v1/envs/lab/sandboxes/{sb}/files/mkdir"), Some(json!({"path": "a/b"})));
    assert_eq!(mk["path"], "/home/user/a/b");
    let (_, mv) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/files/move"),
        Some(json!({"from": "src/app.js", "to": "a/b/app.js"})),
    );
    assert_eq!(mv["path"], "/home/user/a/b/app.js");
    let (_, ls) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{sb}/files/list?path=a&depth=3"), None);
    let paths: Vec<&str> = ls["items"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/home/user/a/b", "/home/user/a/b/app.js"]);
    let del = lab.http.delete(format!("{url}?path=a")).bearer_auth(ADMIN).send().unwrap();
    assert_eq!(del.status(), 204);
    let (status, r) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{sb}/files/stat?path=a"), None);
    assert_eq!((status, r["code"].as_str()), (404, Some("file_not_found")));

    // Pause freezes, resume thaws; a paused sandbox refuses work.
    let (_, p) = lab.call("POST", &format!("/v1/envs/lab/sandboxes/{sb}/pause"), None);
    assert_eq!(p["state"], "paused");
    assert!(lab.cgroup_file(&sb, "freezer", "freezer.state").contains("FROZEN") || p["state"] == "paused");
    let (status, r) = lab.call("POST", &format!("/v1/envs/lab/sandboxes/{sb}/exec"), Some(json!({"command": "true"})));
    assert_eq!((status, r["code"].as_str()), (409, Some("sandbox_paused")));
    let (_, p) = lab.call("POST", &format!("/v1/envs/lab/sandboxes/{sb}/resume"), None);
    assert_eq!(p["state"], "running");
    assert_eq!(lab.exec_ok(&sb, "echo back"), "back\n");

    // Timeout extension, then kill: the token dies with the sandbox and usage reaches the ledger.
    let (_, t) =
        lab.call("POST", &format!("/v1/envs/lab/sandboxes/{sb}/timeout"), Some(json!({"timeout_seconds": 600})));
    assert!(t["expires_at"].as_str().unwrap() > rec["expires_at"].as_str().unwrap());
    lab.exec_ok(&sb, "python3 -c 'sum(range(3_000_000))'");
    let own_token = lab.exec_ok(&sb, "printenv VIBEBASE_TOKEN").trim().to_owned();
    let probe = |token: &str| {
        let url = format!("{}/env/lab/llm/v1/models", lab.server.url);
        lab.http.get(url).header("x-api-key", token).send().unwrap().status().as_u16()
    };
    assert_ne!(probe(&own_token), 401, "positive control: the token works while the sandbox lives");
    let (status, _) = lab.call("DELETE", &format!("/v1/envs/lab/sandboxes/{sb}"), None);
    assert_eq!(status, 204);
    let (status, _) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{sb}"), None);
    assert_eq!(status, 404);
    assert_eq!(probe(&own_token), 401, "the sandbox's token outlived it");
    let (_, usage) = lab.call("GET", "/v1/envs/lab/usage", None);
    let cpu = usage["totals"].as_array().unwrap().iter().find(|t| t["meter"] == "sandbox_cpu_ms");
    assert!(cpu.is_some_and(|t| t["quantity"].as_i64().unwrap() > 0), "{usage}");
    // Bad input: out-of-range limits, unknown fields, reserved variables.
    for bad in [
        json!({"memory_mb": 1}),
        json!({"timeout_seconds": 0}),
        json!({"workspace": "../x"}),
        json!({"env_vars": {"VIBEBASE_TOKEN": "x"}}),
        json!({"bogus": 1}),
    ] {
        let (status, r) = lab.call("POST", "/v1/envs/lab/sandboxes", Some(bad.clone()));
        assert_eq!(status, 400, "{bad}: {r}");
    }
    lab.server.stop();
}

#[test]
fn persistent_workspaces_outlive_sandboxes_and_are_lent_one_at_a_time() {
    let lab = Lab::new();
    let a = lab.sandbox(json!({"workspace": "main", "disk_mb": 16}));
    lab.exec_ok(&a, "echo kept > notes.txt");
    let (status, r) = lab.call("POST", "/v1/envs/lab/sandboxes", Some(json!({"workspace": "main"})));
    assert_eq!((status, r["code"].as_str()), (409, Some("workspace_busy")));
    // The image's own filesystem enforces the quota (ENOSPC), and the host path never shows inside.
    let r = lab.exec(&a, "dd if=/dev/zero of=big bs=1M count=64");
    assert_ne!(r["exit_code"], 0);
    assert!(r["stderr"].as_str().unwrap().contains("No space left on device"), "{r}");
    let mounts = lab.exec_ok(&a, "cat /proc/self/mountinfo");
    assert!(!mounts.contains(lab.data_dir.to_str().unwrap()), "{mounts}");
    lab.exec_ok(&a, "rm big");
    let (status, _) = lab.call("DELETE", &format!("/v1/envs/lab/sandboxes/{a}"), None);
    assert_eq!(status, 204);
    let b = lab.sandbox(json!({"workspace": "main"}));
    assert_eq!(lab.exec_ok(&b, "cat notes.txt"), "kept\n");
    // A disposable sandbox sees none of it.
    let c = lab.sandbox(json!({}));
    assert_eq!(lab.exec(&c, "cat notes.txt")["exit_code"], 1);
    lab.server.stop();
}

#[test]
fn attack_fork_bomb_is_stopped_by_the_pids_limit() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({"max_processes": 32}));
    // Positive control: a handful of processes is fine.
    assert_eq!(lab.exec_ok(&sb, "for i in 1 2 3 4 5; do sleep 0.2 & done; wait; echo ok"), "ok\n");
    assert_eq!(lab.cgroup_file(&sb, "pids", "pids.events").trim(), "max 0");
    let r = lab.exec(&sb, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived");
    let err = r["stderr"].as_str().unwrap();
    assert!(err.contains("Cannot fork") || err.contains("Resource temporarily unavailable"), "{r}");
    let refused: u64 = lab.cgroup_file(&sb, "pids", "pids.events").trim().trim_start_matches("max ").parse().unwrap();
    assert!(refused > 0);
    let current: u64 = lab.cgroup_file(&sb, "pids", "pids.current").trim().parse().unwrap();
    assert!(current <= 32);
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_memory_bomb_is_oom_killed_with_exit_137() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({"memory_mb": 64}));
    assert_eq!(lab.exec_ok(&sb, "python3 -c 'x = bytearray(16 << 20); print(len(x))'"), "16777216\n");
    let (_, r) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/exec"),
        Some(json!({"argv": ["python3", "-c", "x = bytearray(512 << 20); print(len(x))"]})),
    );
    assert_eq!((r["exit_code"].as_i64(), r["signal"].as_i64()), (Some(137), Some(9)), "{r}");
    // The agent survived its child's OOM kill.
    assert_eq!(lab.exec_ok(&sb, "echo still-here"), "still-here\n");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_filling_the_disk_hits_enospc() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({"disk_mb": 8}));
    lab.exec_ok(&sb, "dd if=/dev/zero of=small bs=1M count=2 2>/dev/null");
    let r = lab.exec(&sb, "dd if=/dev/zero of=big bs=1M count=100");
    assert_ne!(r["exit_code"], 0);
    assert!(r["stderr"].as_str().unwrap().contains("No space left on device"), "{r}");
    // The file API reports it with a stable code.
    let url = format!("{}/v1/envs/lab/sandboxes/{sb}/files?path=more.bin", lab.server.url);
    let resp = lab.http.put(url).bearer_auth(ADMIN).body(vec![0u8; 20 << 20]).send().unwrap();
    assert_eq!(resp.status(), 507);
    assert_eq!(resp.json::<Value>().unwrap()["code"], "no_space");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_cpu_spin_is_held_to_its_quota() {
    let lab = Lab::new();
    let spin = "python3 -c 'import time\nw=time.time(); c=time.process_time()\nwhile time.time()-w < 1.5: pass\nprint(time.process_time()-c)'";
    let limited = lab.sandbox(json!({"cpu_percent": 10}));
    let free = lab.sandbox(json!({"cpu_percent": 100}));
    let used_limited: f64 = lab.exec_ok(&limited, spin).trim().parse().unwrap();
    let used_free: f64 = lab.exec_ok(&free, spin).trim().parse().unwrap();
    // 10 % of one core over 1.5 s is 0.15 s of CPU time (plus a period of slack).
    assert!(used_limited < 0.3, "limited sandbox used {used_limited} s");
    assert!(used_free > used_limited * 2.0, "free {used_free} s vs limited {used_limited} s");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_a_process_outliving_the_lifetime_is_killed() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({"timeout_seconds": 2}));
    let marker = format!("sleep 4242.{}", std::process::id());
    let (_, r) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/exec"),
        Some(json!({"command": format!("nohup {marker} >/dev/null 2>&1 &"), "background": false})),
    );
    assert_eq!(r["exit_code"], 0);
    let running = || std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap().status.success();
    assert!(running(), "positive control: the orphan runs while the sandbox lives");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!running(), "the process outlived its sandbox");
    let (status, _) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{sb}"), None);
    assert_eq!(status, 404);
    // An idle timeout ends a sandbox nobody uses, well before its lifetime; use keeps it alive.
    let idle = lab.sandbox(json!({"idle_timeout_seconds": 2, "timeout_seconds": 600}));
    let busy = lab.sandbox(json!({"idle_timeout_seconds": 2, "timeout_seconds": 600}));
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        lab.exec_ok(&busy, "true");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, _) = lab.call("GET", &format!("/v1/envs/lab/sandboxes/{idle}"), None);
    assert_eq!(status, 404, "the idle sandbox outlived its idle timeout");
    assert_eq!(lab.exec_ok(&busy, "echo busy"), "busy\n");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_reading_secrets_of_the_host_finds_nothing() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    // Positive controls: the sandbox's own files and environment are readable.
    assert!(lab.exec_ok(&sb, "cat /etc/passwd").contains("user:x:1000"));
    assert!(lab.exec_ok(&sb, "tr '\\0' '\\n' < /proc/self/environ").contains("VIBEBASE_SANDBOX_ID="));
    let r = lab.exec(&sb, "cat /etc/shadow");
    assert!(r["stderr"].as_str().unwrap().contains("No such file"), "{r}");
    let environ = lab.exec(&sb, "tr '\\0' '\\n' < /proc/1/environ; cat /proc/1/cmdline | tr '\\0' ' '");
    let out = environ["stdout"].as_str().unwrap();
    assert!(!out.contains(ADMIN) && !out.contains("VIBEBASE_ADMIN_KEY"), "{out}");
    assert!(!out.contains(lab.data_dir.to_str().unwrap()), "{out}");
    let data = lab.data_dir.to_str().unwrap();
    let r = lab.exec(&sb, &format!("ls {data}"));
    assert_ne!(r["exit_code"], 0, "{r}");
    let everything = lab.exec_ok(&sb, "cat /proc/self/mountinfo; env; ls -R / 2>/dev/null | head -5000");
    assert!(!everything.contains(data), "the data dir's path is visible inside");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_file_api_escapes_through_symlinks_and_dotdot_stay_inside() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    let url = |p: &str| format!("{}/v1/envs/lab/sandboxes/{sb}/files?path={p}", lab.server.url);
    // Positive control: a normal write and read.
    let ok = lab.http.put(url("ok.txt")).bearer_auth(ADMIN).body("fine").send().unwrap();
    assert_eq!(ok.status(), 200);
    lab.exec_ok(&sb, "ln -s /etc/passwd pw; ln -s /usr/bin/env envlink; ln -s /run/vb sock");
    // Paths outside the writable tree, however spelled, are refused by the kernel (Landlock, read-only
    // mounts): the file API runs inside the sandbox, with the sandbox's own rights.
    for target in ["../../etc/hosts", "/usr/bin/sh", "sock/agent.sock", "/run/vb/x", "/etc/passwd"] {
        let resp = lab.http.put(url(target)).bearer_auth(ADMIN).body("pwned").send().unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().unwrap();
        assert_eq!((status, body["code"].as_str()), (403, Some("permission_denied")), "{target}: {body}");
    }
    // A symlink in the workspace is replaced by the upload (the write is a rename), never written
    // through: its target outside stays as it was.
    for link in ["pw", "envlink"] {
        let resp = lab.http.put(url(link)).bearer_auth(ADMIN).body("pwned").send().unwrap();
        let body: Value = resp.json().unwrap();
        assert_eq!(
            (body["kind"].as_str(), body["path"].as_str()),
            (Some("file"), Some(format!("/home/user/{link}").as_str()))
        );
    }
    assert!(lab.exec_ok(&sb, "cat /etc/passwd").contains("user:x:1000"));
    assert!(!lab.exec_ok(&sb, "cat /etc/hosts").contains("pwned"));
    assert!(lab.exec_ok(&sb, "head -c 2 /usr/bin/env | od -c").contains("177   E"));
    // `..` past the root resolves inside the sandbox's own tree.
    let up = lab.http.put(url("../../../../tmp/up.txt")).bearer_auth(ADMIN).body("x").send().unwrap();
    assert_eq!(up.json::<Value>().unwrap()["path"], "/tmp/up.txt");
    assert!(!std::path::Path::new("/tmp/up.txt").exists() || std::fs::read_to_string("/tmp/up.txt").unwrap() != "x");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_network_reaches_nothing_outside_the_sandbox() {
    let lab = Lab::new();
    let a = lab.sandbox(json!({}));
    let b = lab.sandbox(json!({}));
    // Positive control: loopback inside one sandbox works.
    lab.exec_ok(&b, "python3 -m http.server 9000 --bind 127.0.0.1 >/dev/null 2>&1 & sleep 1");
    assert!(lab.exec_ok(&b, "curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:9000/").contains("200"));
    let port = lab.server.url.rsplit(':').next().unwrap().to_owned();
    for target in [
        format!("http://127.0.0.1:{port}/v1/envs"),
        format!("http://127.0.0.1:{port}/env/other/rest/v1/"),
        "http://127.0.0.1:5432/".to_owned(),
        "http://127.0.0.1:9000/".to_owned(),
    ] {
        let r = lab.exec(&a, &format!("curl -sS --max-time 5 {target}"));
        assert_eq!(r["exit_code"], 7, "{target}: {r}");
        assert!(
            r["stderr"].as_str().unwrap().contains("Connection refused")
                || r["stderr"].as_str().unwrap().contains("Couldn't connect"),
            "{r}"
        );
    }
    let r = lab.exec(&a, "python3 -c \"import socket; socket.create_connection(('10.0.2.2', 80), 2)\"");
    assert!(r["stderr"].as_str().unwrap().contains("Network is unreachable"), "{r}");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_ptrace_mount_and_nested_namespaces_are_refused_with_eperm() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    let syscall = |name: &str, call: &str| {
        format!(
            "python3 -c \"import ctypes, os\nl = ctypes.CDLL(None, use_errno=True)\nr = l.{call}\nprint('{name}', r, os.strerror(ctypes.get_errno()) if r < 0 else 'ok')\""
        )
    };
    // Positive control: the same way of calling the kernel works for an allowed call.
    assert_eq!(lab.exec_ok(&sb, &syscall("getppid", "getppid()")).split_whitespace().last(), Some("ok"));
    lab.exec_ok(&sb, "sleep 60 >/dev/null 2>&1 & echo $! > victim.pid");
    let victim = lab.exec_ok(&sb, "cat victim.pid").trim().to_owned();
    for (name, call) in [
        ("ptrace", format!("ptrace(16, {victim}, 0, 0)")),
        ("mount", "mount(b'none', b'/tmp', b'tmpfs', 0, None)".to_owned()),
        ("unshare", "unshare(0x10000000)".to_owned()),
    ] {
        let out = lab.exec_ok(&sb, &syscall(name, &call));
        assert!(out.contains("Operation not permitted"), "{name}: {out}");
    }
    let r = lab.exec(&sb, "unshare -U true");
    assert!(r["stderr"].as_str().unwrap().contains("Operation not permitted"), "{r}");
    let r = lab.exec(&sb, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m");
    assert_ne!(r["exit_code"], 0);
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn attack_output_floods_and_bad_streams_are_bounded() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    // Positive controls: normal output is whole, UTF-8 intact.
    let r = lab.exec(&sb, "printf 'héllo'");
    assert_eq!((r["stdout"].as_str(), r["truncated"].as_bool()), (Some("héllo"), Some(false)));
    // Huge output: cut at the limit, marked.
    let r = lab.exec(&sb, "head -c 50000000 /dev/zero | tr '\\0' a");
    assert_eq!(r["truncated"], true);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 4 * 1024 * 1024);
    assert_eq!(r["exit_code"], 0);
    // Bytes that are not UTF-8 arrive replaced, not as an error.
    let r = lab.exec(&sb, "printf 'a\\377\\376b'");
    assert_eq!(r["stdout"], "a\u{fffd}\u{fffd}b");
    // A command that never reads its (large) stdin still finishes.
    let (_, r) = lab.call(
        "POST",
        &format!("/v1/envs/lab/sandboxes/{sb}/exec"),
        Some(json!({"command": "sleep 0.2; echo done", "stdin": "x".repeat(900_000)})),
    );
    assert_eq!((r["exit_code"].as_i64(), r["stdout"].as_str()), (Some(0), Some("done\n")), "{r}");
    // A flood of signals at everything the sandbox can see leaves its agent serving.
    let r = lab.exec(&sb, "for i in $(seq 1 300); do kill -USR1 -1 2>/dev/null; kill -TERM 1 2>/dev/null; kill -HUP 2 2>/dev/null; done; echo sent");
    assert!(r["stdout"].as_str().is_some_and(|s| s.contains("sent")) || r["exit_code"].as_i64().is_some(), "{r}");
    assert_eq!(lab.exec_ok(&sb, "echo serving"), "serving\n");
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn another_envs_credentials_cannot_touch_a_sandbox() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    let (_, other) = lab.call("POST", "/v1/envs", Some(json!({"id": "other"})));
    let other_secret = other["keys"]["secret"].as_str().unwrap().to_owned();
    let (_, mine) = lab.call("GET", "/v1/envs/lab", None);
    assert_eq!(mine["id"], "lab");
    for (method, path) in [
        ("GET", format!("/v1/envs/lab/sandboxes/{sb}")),
        ("POST", format!("/v1/envs/lab/sandboxes/{sb}/exec")),
        ("DELETE", format!("/v1/envs/lab/sandboxes/{sb}")),
        ("GET", format!("/v1/envs/lab/sandboxes/{sb}/files?path=x")),
    ] {
        let resp = lab
            .http
            .request(method.parse().unwrap(), format!("{}{path}", lab.server.url))
            .bearer_auth(&other_secret)
            .json(&json!({"command": "true"}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
    }
    // Through its own env's path, env B does not see env A's sandbox either.
    let resp = lab
        .http
        .get(format!("{}/v1/envs/other/sandboxes/{sb}", lab.server.url))
        .bearer_auth(&other_secret)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(lab.exec_ok(&sb, "echo mine"), "mine\n");
    lab.server.stop();
}

#[test]
fn cli_drives_sandboxes_and_exits_with_the_commands_code() {
    let lab = Lab::new();
    let cli = |args: &[&str]| lab.server.cli(ADMIN, args);
    let tpl = lab.data_dir.join("tpl");
    std::fs::create_dir_all(tpl.join("src")).unwrap();
    std::fs::write(tpl.join("src/main.js"), "console.log('from template')\n").unwrap();
    let put = cli(&["template", "put", "starter", tpl.to_str().unwrap()]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(String::from_utf8_lossy(&cli(&["template", "list"]).stdout), "starter\n");
    let created =
        cli(&["sandbox", "create", "--env", "lab", "--template", "starter", "--timeout", "120", "--var", "WHO=cli"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let run = cli(&["sandbox", "exec", "--env", "lab", &id, "echo hi $WHO; node src/main.js; exit 5"]);
    assert_eq!(run.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hi cli\nfrom template\n");
    let local = lab.data_dir.join("upload.txt");
    std::fs::write(&local, "from the host").unwrap();
    let put = cli(&["sandbox", "put", "--env", "lab", &id, local.to_str().unwrap(), "docs/a.txt"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let cat = cli(&["sandbox", "cat", "--env", "lab", &id, "docs/a.txt"]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "from the host");
    let ls = cli(&["sandbox", "ls", "--env", "lab", &id, "docs"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("/home/user/docs/a.txt"));
    let listed = crate::json(&cli(&["sandbox", "list", "--env", "lab", "--json"]));
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert!(cli(&["sandbox", "kill", "--env", "lab", &id]).status.success());
    let gone = cli(&["sandbox", "get", "--env", "lab", &id]);
    assert_eq!(gone.status.code(), Some(4));
    lab.server.stop();
}

#[test]
fn ports_are_previewed_over_the_agent_socket_with_websockets() {
    use std::io::{Read as _, Write as _};
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    lab.exec_ok(&sb, "mkdir -p site && echo '<h1>preview</h1>' > site/index.html");
    lab.exec_ok(&sb, "cd site && nohup python3 -m http.server 5173 --bind 127.0.0.1 >/dev/null 2>&1 &");
    let server = "require('http').createServer((q, s) => s.end('plain:' + q.url)).on('upgrade', (q, sock) => { \
        sock.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n'); \
        sock.pipe(sock); }).listen(5174, '127.0.0.1')";
    lab.exec_ok(&sb, &format!("nohup node -e \"{server}\" >/dev/null 2>&1 & sleep 1"));
    let get = |path: &str, host: Option<String>| {
        let mut req = lab.http.get(format!("{}{path}", lab.server.url));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    // Path form and host form reach the same server inside.
    let (status, body) = get(&format!("/env/lab/sandboxes/{sb}/ports/5173/index.html"), None);
    assert_eq!((status, body.as_str()), (200, "<h1>preview</h1>\n"));
    let port = lab.server.url.rsplit(':').next().unwrap().to_owned();
    let (status, body) = get("/index.html", Some(format!("5173-{sb}--lab.localhost:{port}")));
    assert_eq!((status, body.as_str()), (200, "<h1>preview</h1>\n"));
    let (status, body) = get(&format!("/env/lab/sandboxes/{sb}/ports/5174/some/path?x=1"), None);
    assert_eq!((status, body.as_str()), (200, "plain:/some/path?x=1"));
    // Nothing listens: 502; unknown sandbox or env: 404.
    assert_eq!(get(&format!("/env/lab/sandboxes/{sb}/ports/5999/"), None).0, 502);
    assert_eq!(get("/env/lab/sandboxes/sbnope/ports/5173/", None).0, 404);
    assert_eq!(get(&format!("/env/other/sandboxes/{sb}/ports/5173/"), None).0, 404);
    // A WebSocket upgrade becomes a byte pipe to the server inside.
    let mut tcp = std::net::TcpStream::connect(lab.server.url.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET /env/lab/sandboxes/{sb}/ports/5174/hmr HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp.write_all(b"hot-reload-frame").unwrap();
    let mut echo = [0u8; 16];
    tcp.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hot-reload-frame");
    lab.server.stop();
}

#[test]
fn snapshots_restore_a_workspace_into_new_and_running_sandboxes() {
    let lab = Lab::new();
    let a = lab.sandbox(json!({}));
    lab.exec_ok(&a, "mkdir -p app/node_modules/pkg && echo v1 > app/node_modules/pkg/index.js && ln -s pkg app/node_modules/link && chmod 700 app");
    let (status, snap) = lab.call("POST", &format!("/v1/envs/lab/sandboxes/{a}/snapshot"), None);
    assert_eq!(status, 201, "{snap}");
    let snap_id = snap["id"].as_str().unwrap().to_owned();
    assert!(snap["size_bytes"].as_u64().unwrap() > 0);
    let (_, list) = lab.call("GET", "/v1/envs/lab/snapshots", None);
    assert_eq!(list["items"], json!([snap_id]));
    // A new sandbox starts from it; the copy is independent of the original.
    let b = lab.sandbox(json!({"snapshot": snap_id}));
    assert_eq!(lab.exec_ok(&b, "cat app/node_modules/link/index.js; stat -c %a app"), "v1\n700\n");
    lab.exec_ok(&b, "echo v2 > app/node_modules/pkg/index.js");
    assert_eq!(lab.exec_ok(&a, "cat app/node_modules/pkg/index.js"), "v1\n");
    // Restore into a running sandbox.
    let c = lab.sandbox(json!({}));
    let (status, _) =
        lab.call("POST", &format!("/v1/envs/lab/sandboxes/{c}/restore"), Some(json!({"snapshot": snap_id})));
    assert_eq!(status, 200);
    assert_eq!(lab.exec_ok(&c, "cat app/node_modules/pkg/index.js"), "v1\n");
    // Unknown or malformed snapshots are refused, and a failed restore leaves no sandbox behind.
    let (status, r) = lab.call("POST", "/v1/envs/lab/sandboxes", Some(json!({"snapshot": "snap0000000000000000"})));
    assert_eq!((status, r["code"].as_str()), (404, Some("snapshot_not_found")));
    let (status, _) = lab.call("POST", "/v1/envs/lab/sandboxes", Some(json!({"snapshot": "../../x"})));
    assert_eq!(status, 400);
    let (_, all) = lab.call("GET", "/v1/envs/lab/sandboxes", None);
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    lab.server.stop();
}

#[test]
fn egress_reaches_only_the_own_env_and_allow_listed_registries() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({"allow_egress": ["registry.npmjs.org"], "session": "s-egress"}));
    // The env's own data plane, with the sandbox's token, through the proxy: the platform answers.
    let own = lab.exec_ok(&sb, "curl -sS -i $VIBEBASE_API_URL/llm/v1/models -H \"x-api-key: $VIBEBASE_TOKEN\"");
    assert!(own.contains("x-request-id:") && !own.contains("egress_denied"), "{own}");
    // Never /v1, another env, or the platform's address by another name.
    let port = lab.server.url.rsplit(':').next().unwrap().to_owned();
    for target in [
        "http://vibebase.internal/v1/envs".to_owned(),
        "http://vibebase.internal/env/other/rest/v1/x".to_owned(),
        format!("--noproxy '' --proxy http://127.0.0.1:3128 http://127.0.0.1:{port}/v1/envs"),
        format!("--noproxy '' --proxy http://127.0.0.1:3128 http://127.0.0.1:{port}/env/lab/../../v1/envs"),
    ] {
        let out = lab.exec(&sb, &format!("curl -sS --path-as-is {target}"));
        assert!(out["stdout"].as_str().unwrap().starts_with("egress_denied"), "{target}: {out}");
    }
    // Hosts off the allow-list cannot be tunnelled to.
    let r = lab.exec(&sb, "curl -sS https://example.com/");
    assert_eq!(r["exit_code"], 56, "{r}");
    assert!(r["stderr"].as_str().unwrap().contains("403"), "{r}");
    // Positive control: the allow-listed registry works, so npm installs inside the sandbox.
    let installed = lab.exec_ok(
        &sb,
        "mkdir app && cd app && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error is-number@7.0.0 >/dev/null && node -e 'console.log(require(\"is-number\")(5))'",
    );
    assert_eq!(installed, "true\n");
    // The tunnelled bytes are metered when the tunnel closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, usage) = lab.call("GET", "/v1/envs/lab/usage", None);
        let egress = usage["totals"].as_array().unwrap().iter().find(|t| t["meter"] == "sandbox_egress_bytes").cloned();
        if egress.is_some_and(|t| t["quantity"].as_i64().unwrap() > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "no sandbox_egress_bytes: {usage}");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.assert_unaffected();
    lab.server.stop();
}

#[test]
fn templates_give_copy_on_write_workspaces() {
    let lab = Lab::new();
    // A template with a node_modules tree (an executable, a symlink), uploaded as tar.gz.
    let src = lab.data_dir.join("tpl-src");
    std::fs::create_dir_all(src.join("node_modules/.bin")).unwrap();
    std::fs::create_dir_all(src.join("node_modules/pkg")).unwrap();
    std::fs::write(src.join("node_modules/pkg/index.js"), "module.exports = 'tpl';\n").unwrap();
    std::fs::write(src.join("package.json"), "{\"name\": \"app\"}\n").unwrap();
    std::os::unix::fs::symlink("../pkg/index.js", src.join("node_modules/.bin/pkg")).unwrap();
    let archive =
        std::process::Command::new("tar").arg("-C").arg(&src).args(["-czf", "-", "."]).output().unwrap().stdout;
    let put = |name: &str, body: Vec<u8>| {
        lab.http.put(format!("{}/v1/templates/{name}", lab.server.url)).bearer_auth(ADMIN).body(body).send().unwrap()
    };
    let resp = put("vite-react", archive);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().unwrap()["items"], json!(["vite-react"]));
    // Bad archives leave nothing behind.
    assert_eq!(put("broken", b"not a tarball".to_vec()).status(), 400);
    assert_eq!(put("../evil", Vec::new()).status(), 404);
    let (_, list) = lab.call("GET", "/v1/templates", None);
    assert_eq!(list["items"], json!(["vite-react"]));

    let a = lab.sandbox(json!({"template": "vite-react", "disk_mb": 64}));
    let b = lab.sandbox(json!({"template": "vite-react"}));
    assert_eq!(lab.exec_ok(&a, "node -e \"console.log(require('/home/user/node_modules/pkg'))\""), "tpl\n");
    assert_eq!(
        lab.exec_ok(&a, "readlink node_modules/.bin/pkg; id -un; stat -c %U package.json"),
        "../pkg/index.js\nuser\nuser\n"
    );
    // Writes stay in the sandbox's own layer: the template and the neighbour see none of them.
    lab.exec_ok(&a, "echo changed > node_modules/pkg/index.js && rm package.json && mkdir dist && echo x > dist/a");
    assert_eq!(
        lab.exec_ok(&b, "cat node_modules/pkg/index.js; ls"),
        "module.exports = 'tpl';\nnode_modules\npackage.json\n"
    );
    assert_eq!(
        std::fs::read_to_string(lab.data_dir.join("templates/vite-react/node_modules/pkg/index.js")).unwrap(),
        "module.exports = 'tpl';\n"
    );
    // The writable layer has the sandbox's disk quota.
    let r = lab.exec(&a, "dd if=/dev/zero of=big bs=1M count=100");
    assert!(r["stderr"].as_str().unwrap().contains("No space left on device"), "{r}");
    // The template's host path shows nowhere inside.
    let mounts = lab.exec_ok(&a, "cat /proc/self/mountinfo");
    assert!(!mounts.contains(lab.data_dir.to_str().unwrap()), "{mounts}");
    // Unknown templates are refused; templates are platform-wide and only platform keys manage them.
    let (status, r) = lab.call("POST", "/v1/envs/lab/sandboxes", Some(json!({"template": "nope"})));
    assert_eq!((status, r["code"].as_str()), (404, Some("template_not_found")));
    let (_, env) = lab.call("POST", "/v1/envs", Some(json!({"id": "tenant"})));
    let tenant = env["keys"]["secret"].as_str().unwrap();
    let denied =
        lab.http.put(format!("{}/v1/templates/x", lab.server.url)).bearer_auth(tenant).body(Vec::new()).send().unwrap();
    assert_eq!(denied.status(), 403);
    let (status, _) = lab.call("DELETE", "/v1/templates/vite-react", None);
    assert_eq!(status, 204);
    // Sandboxes already running from it keep their view.
    assert_eq!(lab.exec_ok(&b, "cat node_modules/pkg/index.js"), "module.exports = 'tpl';\n");
    lab.server.stop();
}

#[test]
fn a_site_built_in_a_sandbox_is_deployed_from_it() {
    let lab = Lab::new();
    let sb = lab.sandbox(json!({}));
    lab.exec_ok(&sb, "mkdir -p dist/assets && printf '<h1>built</h1>' > dist/index.html && printf 'x' > dist/assets/app.js && echo S=1 > dist/.env && ln -s /etc/passwd dist/leak");
    // A link in the directory refuses the whole deploy.
    let path = format!("/v1/envs/lab/sandboxes/{sb}/deploy");
    let (status, r) = lab.call("POST", &path, Some(json!({"path": "dist", "publish": true})));
    assert_eq!((status, r["code"].as_str()), (400, Some("unsafe_archive_entry")), "{r}");
    lab.exec_ok(&sb, "rm dist/leak");
    let (status, r) = lab.call("POST", &path, Some(json!({"path": "dist", "publish": true})));
    assert_eq!(status, 201, "{r}");
    assert_eq!((r["file_count"].as_u64(), r["published"].as_bool()), (Some(2), Some(true)));
    let site = |p: &str| {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}{p}", lab.server.url))
            .header("host", "lab.localhost")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(site("/"), (200, "<h1>built</h1>".to_owned()));
    assert_eq!(site("/.env").0, 404);
    // A missing directory is the sandbox's own error, not a deployment.
    let (status, r) = lab.call("POST", &path, Some(json!({"path": "nope"})));
    assert_eq!((status, r["code"].as_str()), (400, Some("archive_failed")), "{r}");
    lab.server.stop();
}
