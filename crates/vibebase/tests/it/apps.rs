//! Container apps on the real binary (real bubblewrap sandboxes, a real Node server): deploy from a
//! directory with the CLI, both address forms, a WebSocket echo, crash → restart, idle → stopped → the
//! next request wakes it, the env boundary, a platform restart, and bad input with clear errors.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Server, json as cli_json, tempdir};

const ADMIN: &str = "vb_admin_app_tests_0123456789abcdefghijk0";

const SERVER_JS: &str = r#"
const http = require('http');
const crypto = require('crypto');
const server = http.createServer((req, res) => {
  if (req.url === '/crash') { res.end('bye'); setTimeout(() => process.exit(3), 10); return; }
  res.setHeader('content-type', 'text/plain');
  res.end('hello ' + req.url + ' ' + (process.env.GREETING || '-'));
});
// A minimal WebSocket echo (single unfragmented masked frames of up to 125 bytes).
server.on('upgrade', (req, sock) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  sock.on('data', (buf) => {
    const len = buf[1] & 0x7f, mask = buf.subarray(2, 6), data = Buffer.alloc(len);
    for (let i = 0; i < len; i++) data[i] = buf[6 + i] ^ mask[i % 4];
    sock.write(Buffer.concat([Buffer.from([0x81, len]), data]));
  });
});
server.listen(process.env.PORT, '127.0.0.1', () => console.log('listening on ' + process.env.PORT));
"#;

struct Lab {
    server: Server,
    dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    args: Vec<String>,
    http: reqwest::blocking::Client,
}

impl Lab {
    fn new(tag: &str, wake_timeout: u64) -> Self {
        let dir = tempdir();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let data_dir = data_dir.canonicalize().unwrap();
        let mut args = crate::scale_out_args(&format!("app{tag}"));
        args.extend(["--app-wake-timeout".to_owned(), wake_timeout.to_string()]);
        args.extend(["--app-backoff-ms".to_owned(), "200".to_owned()]);
        let server = Server::start(&data_dir, &args, Some(ADMIN));
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        Self { server, dir, data_dir, args, http }
    }

    fn env(&self, id: &str) {
        cli_json(&self.server.cli(ADMIN, &["env", "create", "--id", id, "--json"]));
    }

    fn source(&self, files: &[(&str, &str)]) -> std::path::PathBuf {
        let src = self.dir.path().join(format!("src-{}", std::process::id() ^ rand_u32()));
        for (path, text) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        src
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.server.cli(ADMIN, args)
    }

    fn get(&self, path: &str, host: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.server.url));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    }

    fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method.parse().unwrap(), format!("{}{path}", self.server.url)).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    fn record(&self, env: &str, app: &str) -> Value {
        cli_json(&self.cli(&["apps", "get", "--env", env, app, "--json"]))
    }

    fn wait_status(&self, env: &str, app: &str, status: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let r = self.record(env, app);
            if r["status"] == status {
                return r;
            }
            assert!(started.elapsed() < within, "{app} never became {status}: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn host(&self, label: &str) -> String {
        format!("{label}.localhost:{}", self.server.url.rsplit(':').next().unwrap())
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

/// Opens a WebSocket to `path` with `host` through the platform and returns the connection.
fn websocket(url: &str, host: &str, path: &str) -> std::net::TcpStream {
    let mut tcp = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455's example key has this accept value.
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    tcp
}

/// Sends one masked text frame and reads the echoed frame's payload.
fn ws_echo(tcp: &mut std::net::TcpStream, text: &str) -> String {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).unwrap();
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81);
    let mut payload = vec![0u8; usize::from(head[1])];
    tcp.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

#[test]
fn apps_serve_both_forms_with_websockets_restart_on_crash_and_wake_from_idle() {
    let lab = Lab::new("main", 60);
    lab.env("appa");
    lab.env("appb");
    let src = lab.source(&[("server.js", SERVER_JS)]);
    let deployed = cli_json(&lab.cli(&[
        "apps",
        "deploy",
        "--env",
        "appa",
        "web",
        src.to_str().unwrap(),
        "--command",
        "node server.js",
        "--port",
        "3000",
        "--var",
        "GREETING=hi",
        "--idle-timeout",
        "3",
        "--health-interval-ms",
        "500",
        "--json",
    ]));
    assert_eq!(deployed["status"], "stopped", "{deployed}");
    assert_eq!(deployed["env"], json!(["GREETING"]));
    assert_eq!(deployed["urls"]["path"], "/env/appa/apps/web/");

    // The first request wakes it and waits until it is healthy; both address forms reach it.
    assert_eq!(lab.get("/env/appa/apps/web/x?y=1", None), (200, "hello /x?y=1 hi".to_owned()));
    assert_eq!(lab.record("appa", "web")["status"], "running");
    assert_eq!(lab.get("/a/b", Some(&lab.host("web--appa"))), (200, "hello /a/b hi".to_owned()));

    // Another env's Host (or path) never reaches it, and names nothing.
    assert_eq!(lab.get("/", Some(&lab.host("web--appb"))), (404, "404 Not Found\n".to_owned()));
    assert_eq!(lab.get("/env/appb/apps/web/", None).0, 404);
    assert_eq!(lab.get("/env/appa/apps/nope/", None).0, 404);

    // A WebSocket through the host form; while it is open the app is not idle.
    let mut ws = websocket(&lab.server.url, &lab.host("web--appa"), "/socket");
    assert_eq!(ws_echo(&mut ws, "ping over the relay"), "ping over the relay");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lab.record("appa", "web")["status"], "running");
    assert_eq!(ws_echo(&mut ws, "still here"), "still here");
    drop(ws);

    // A crash: restarted after its backoff; a request in the meantime waits and gets its answer.
    assert_eq!(lab.get("/env/appa/apps/web/crash", None), (200, "bye".to_owned()));
    let started = Instant::now();
    while lab.record("appa", "web")["restarts"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "no restart after the crash");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.get("/env/appa/apps/web/after", None), (200, "hello /after hi".to_owned()));
    let r = lab.record("appa", "web");
    assert_eq!((r["status"].as_str(), r["restarts"].as_u64()), (Some("running"), Some(1)), "{r}");

    // Idle: stopped (scaled to zero), then the next request wakes it.
    lab.wait_status("appa", "web", "stopped", Duration::from_secs(20));
    assert_eq!(lab.get("/env/appa/apps/web/woken", None), (200, "hello /woken hi".to_owned()));
    let logs = String::from_utf8(lab.cli(&["apps", "logs", "--env", "appa", "web"]).stdout).unwrap();
    for want in ["stdout| listening on 3000", "exited with status 3", "stopped after 3 s without requests", "healthy"] {
        assert!(logs.contains(want), "{want}: {logs}");
    }
    let list = cli_json(&lab.cli(&["apps", "list", "--env", "appa", "--json"]));
    assert_eq!(list["items"][0]["name"], "web");
    assert_eq!(cli_json(&lab.cli(&["apps", "list", "--env", "appb", "--json"]))["items"], json!([]));

    // The app's CPU time and the bytes it served are metered for its env.
    lab.wait_status("appa", "web", "stopped", Duration::from_secs(20));
    for meter in ["container_cpu_ms", "hosting_bytes_served"] {
        let started = Instant::now();
        loop {
            let (_, usage) = lab.api("GET", "/v1/envs/appa/usage", None);
            let total = usage["totals"].as_array().unwrap().iter().find(|t| t["meter"] == meter);
            if total.is_some_and(|t| t["quantity"].as_i64().unwrap() > 0) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no {meter}: {usage}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // The definition survives a restart of the platform; the instance starts on demand.
    let Lab { server, dir, data_dir, args, http } = lab;
    server.stop();
    let lab = Lab { server: Server::start(&data_dir, &args, Some(ADMIN)), dir, data_dir, args, http };
    assert_eq!(lab.record("appa", "web")["status"], "stopped");
    assert_eq!(lab.get("/again", Some(&lab.host("web--appa"))), (200, "hello /again hi".to_owned()));

    // A suspended env serves nothing (the same 404), a resumed one again.
    assert_eq!(lab.api("POST", "/v1/envs/appa/suspend", None).0, 200);
    assert_eq!(lab.get("/env/appa/apps/web/", None), (404, "404 Not Found\n".to_owned()));
    assert_eq!(lab.api("POST", "/v1/envs/appa/resume", None).0, 200);
    assert_eq!(lab.get("/env/appa/apps/web/", None).0, 200);

    // Restart and delete.
    let restarted = cli_json(&lab.cli(&["apps", "restart", "--env", "appa", "web", "--json"]));
    assert_ne!(restarted["status"], "stopped", "{restarted}");
    assert_eq!(lab.get("/env/appa/apps/web/r", None).0, 200);
    assert!(lab.cli(&["apps", "delete", "--env", "appa", "web"]).status.success());
    assert_eq!(lab.get("/env/appa/apps/web/", None).0, 404);
    assert_eq!(lab.cli(&["apps", "get", "--env", "appa", "web"]).status.code(), Some(4));
    lab.server.stop();
}

#[test]
fn apps_refuse_bad_input_take_sources_from_sandboxes_and_a_bad_command_gets_a_clear_503() {
    let lab = Lab::new("bad", 3);
    lab.env("appc");
    let put = |name: &str, body: Value| lab.api("PUT", &format!("/v1/envs/appc/apps/{name}"), Some(body));
    let good = json!({"command": "node server.js", "port": 3000});
    for (name, body, code) in [
        ("web", json!({"command": "node server.js", "port": 0}), "invalid_port"),
        ("web", json!({"command": "node server.js", "port": 70000}), "invalid_port"),
        ("web", json!({"command": "   ", "port": 3000}), "invalid_command"),
        ("web", json!({"command": "x", "port": 3000, "env": {"PORT": "1"}}), "invalid_env"),
        ("web", json!({"command": "x", "port": 3000, "health_check": {"path": "nope"}}), "invalid_health_check"),
        ("web", json!({"command": "x", "port": 3000, "idle_timeout_seconds": 0}), "invalid_idle_timeout"),
        ("Bad_Name", good.clone(), "invalid_app_name"),
        ("8080-x", good.clone(), "invalid_app_name"),
    ] {
        let (status, v) = put(name, body.clone());
        assert_eq!((status, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
    }
    // Nothing was written by the refused requests.
    assert_eq!(lab.api("GET", "/v1/envs/appc/apps", None).1["items"], json!([]));

    // A defined app without a source: a clear 503.
    assert_eq!(put("empty", good.clone()).0, 200);
    let (status, v) = lab.api("POST", "/v1/envs/appc/apps/empty/restart", None);
    assert_eq!((status, v["code"].as_str()), (409, Some("app_has_no_source")), "{v}");
    let (status, body) = lab.get("/env/appc/apps/empty/", None);
    assert_eq!(status, 503);
    assert!(body.contains("app_has_no_source"), "{body}");

    // An unsafe archive is refused and leaves the app without a source.
    let evil_dir = lab.source(&[("server.js", SERVER_JS)]);
    std::os::unix::fs::symlink("/etc/passwd", evil_dir.join("passwd")).unwrap();
    let packed = std::process::Command::new("tar").arg("-C").arg(&evil_dir).args(["-czf", "-", "."]).output().unwrap();
    let evil = packed.stdout;
    let url = format!("{}/v1/envs/appc/apps/empty/archive", lab.server.url);
    let resp = lab.http.put(&url).bearer_auth(ADMIN).body(evil).send().unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().unwrap()["code"], "archive_escaping_link");
    assert_eq!(lab.api("GET", "/v1/envs/appc/apps/empty", None).1["source"], Value::Null);
    let resp = lab.http.put(url.replace("/empty/", "/ghost/")).bearer_auth(ADMIN).body(vec![1, 2, 3]).send().unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // The CLI leaves no half-made app when the source is refused.
    let not_gzip = lab.dir.path().join("not.tar.gz");
    std::fs::write(&not_gzip, b"not gzip").unwrap();
    let out = lab.cli(&[
        "apps",
        "deploy",
        "--env",
        "appc",
        "half",
        not_gzip.to_str().unwrap(),
        "--command",
        "node s.js",
        "--port",
        "3000",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lab.cli(&["apps", "get", "--env", "appc", "half"]).status.code(), Some(4));

    // The source of an app can be a directory of a running sandbox of the env.
    let (status, sb) = lab.api("POST", "/v1/envs/appc/sandboxes", Some(json!({"timeout_seconds": 120})));
    assert_eq!(status, 201, "{sb}");
    let sb = sb["id"].as_str().unwrap().to_owned();
    let write = format!("/v1/envs/appc/sandboxes/{sb}/files?path=made/server.js");
    let resp = lab.http.put(format!("{}{write}", lab.server.url)).bearer_auth(ADMIN).body(SERVER_JS).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let from = |app: &str, path: &str| {
        lab.api("POST", &format!("/v1/envs/appc/apps/{app}/from-sandbox"), Some(json!({"sandbox": sb, "path": path})))
    };
    assert_eq!(from("ghost", "made").0, 404);
    assert_eq!(put("made", json!({"command": "node server.js", "port": 3001})).0, 200);
    let (status, v) = from("made", "made");
    assert_eq!(status, 200, "{v}");
    assert!(v["source"]["sha256"].is_string(), "{v}");
    assert_eq!(lab.get("/env/appc/apps/made/hi", None), (200, "hello /hi -".to_owned()));

    // A command that does not exist: the request waits for the wake timeout, then a clear 503; the logs
    // say why, and the app keeps being restarted with backoff.
    let src = lab.source(&[("server.js", SERVER_JS)]);
    let out = lab.cli(&[
        "apps",
        "deploy",
        "--env",
        "appc",
        "broken",
        src.to_str().unwrap(),
        "--command",
        "no-such-program --serve",
        "--port",
        "3000",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    let (status, body) = lab.get("/env/appc/apps/broken/", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("app_unavailable") && body.contains("did not become healthy within 3 s"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let logs = String::from_utf8(lab.cli(&["apps", "logs", "--env", "appc", "broken"]).stdout).unwrap();
    assert!(logs.contains("not found") && logs.contains("exited with status 127"), "{logs}");
    let r = lab.record("appc", "broken");
    assert!(r["restarts"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["last_error"].as_str().unwrap().contains("status 127"), "{r}");
    lab.server.stop();
}
