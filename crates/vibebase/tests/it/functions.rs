//! Cloud functions on the real binary: deploy (directories through the CLI, archives over HTTP),
//! both handler styles, the caller's identity, env vars and secrets, rollback, logs, meters, npm
//! dependencies, and misbehaving functions (each gets a clear error and the next call works).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Server, json as cli_json, tempdir};

const ADMIN: &str = "vb_admin_function_tests_0123456789abcdef0";

struct Lab {
    server: Server,
    dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    http: reqwest::blocking::Client,
    env: String,
    publishable: String,
    secret: String,
}

struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Lab {
    fn new(env: &str) -> Self {
        let dir = tempdir();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let data_dir = data_dir.canonicalize().unwrap();
        let server = Server::start(&data_dir, &crate::scale_out_args(&format!("fn{env}")), Some(ADMIN));
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
        let created = cli_json(&server.cli(ADMIN, &["env", "create", "--id", env, "--json"]));
        Self {
            publishable: created["keys"]["publishable"].as_str().unwrap().to_owned(),
            secret: created["keys"]["secret"].as_str().unwrap().to_owned(),
            server,
            dir,
            data_dir,
            http,
            env: env.to_owned(),
        }
    }

    /// Writes the files into a fresh directory and returns it.
    fn source(&self, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let src = self.dir.path().join(format!("src-{name}-{}", rand_suffix()));
        for (path, text) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        src
    }

    /// Deploys through the CLI; returns the version.
    fn deploy(&self, name: &str, files: &[(&str, &str)], flags: &[&str]) -> u64 {
        let src = self.source(name, files);
        let mut args = vec!["functions", "deploy", "--env", &self.env, name, src.to_str().unwrap(), "--json"];
        args.extend_from_slice(flags);
        let out = cli_json(&self.server.cli(&self.secret, &args));
        out["version"].as_u64().unwrap()
    }

    fn deploy_archive(&self, name: &str, archive: Vec<u8>) -> (u16, Value) {
        let url = format!("{}/v1/envs/{}/functions/{name}/deploy", self.server.url, self.env);
        let r = self.http.post(url).bearer_auth(&self.secret).body(archive).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.server.url);
        let mut req = self.http.request(method.parse().unwrap(), url).bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Invokes as supabase-js does: `apikey` (publishable) and `Authorization` (a user's JWT or the key).
    fn invoke_as(&self, name: &str, body: Value, bearer: Option<&str>) -> Answer {
        let url = format!("{}/env/{}/functions/v1/{name}", self.server.url, self.env);
        let r = self
            .http
            .post(url)
            .header("apikey", &self.publishable)
            .bearer_auth(bearer.unwrap_or(&self.publishable))
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().unwrap();
        Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)), headers }
    }

    fn invoke(&self, name: &str, body: Value) -> Answer {
        self.invoke_as(name, body, None)
    }
}

fn rand_suffix() -> String {
    format!("{:x}", Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()) ^ rand_nanos())
}

fn rand_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// A `tar.gz` of a directory made with GNU tar and extra flags (for hostile archives).
fn tar_gz(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar").arg("-C").arg(dir).args(["-czf", "-"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

const WEB: &str = r#"
export default async (req) => {
  const auth = req.headers.get('authorization') ?? '';
  const jwt = auth.split(' ')[1] ?? '';
  const claims = jwt.split('.').length === 3 ? JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url')) : null;
  console.log('web invoked with', req.method);
  return Response.json({
    style: 'web',
    body: await req.json(),
    sub: claims?.sub ?? null,
    url: process.env.SUPABASE_URL,
    anon: process.env.SUPABASE_ANON_KEY,
    service: process.env.SUPABASE_SERVICE_ROLE_KEY,
    secret: process.env.MY_SECRET ?? null,
  }, { status: 201, headers: { 'x-made-by': 'web' } });
};
"#;

const CLOUDBASE: &str = r#"
exports.main = async (event, context) => {
  console.error('cloudbase event', JSON.stringify(event));
  // The env's own data plane, with the invocation's service token, through the egress proxy.
  const key = process.env.SUPABASE_SERVICE_ROLE_KEY;
  const r = await fetch(`${process.env.SUPABASE_URL}/rest/v1/notes?select=body`, { headers: { apikey: key, authorization: `Bearer ${key}` } });
  return { style: 'cloudbase', event, role: context.auth.role, sub: context.auth.claims?.sub ?? null, notes: await r.json(), version: 1 };
};
"#;

#[test]
fn functions_deploy_invoke_both_styles_with_identity_secrets_rollback_and_logs() {
    let lab = Lab::new("fns");
    let env = lab.env.clone();
    let sql = lab.dir.path().join("notes.sql");
    std::fs::write(
        &sql,
        "create table notes (id bigserial primary key, body text not null); insert into notes (body) values ('first');",
    )
    .unwrap();
    cli_json(&lab.server.cli(&lab.secret, &["sql", "--env", &env, sql.to_str().unwrap(), "--json"]));
    // An end user of the env.
    let (status, user) = lab.call(
        "POST",
        &format!("/env/{env}/auth/v1/admin/users"),
        Some(json!({"email": "ada@example.com", "password": "password-123", "email_confirm": true})),
    );
    assert_eq!(status, 200, "{user}");
    let session: Value = lab
        .http
        .post(format!("{}/env/{env}/auth/v1/token?grant_type=password", lab.server.url))
        .header("apikey", &lab.publishable)
        .json(&json!({"email": "ada@example.com", "password": "password-123"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let jwt = session["access_token"].as_str().unwrap().to_owned();

    // Web-standard style (ESM), with a secret.
    assert_eq!(lab.deploy("web", &[("index.mjs", WEB)], &[]), 1);
    let names =
        cli_json(&lab.server.cli(
            &lab.secret,
            &["functions", "secrets", "--env", &env, "web", "--set", "MY_SECRET=sesame-7f3a", "--json"],
        ));
    assert_eq!(names["items"], json!(["MY_SECRET"]));
    let a = lab.invoke_as("web", json!({"n": 1}), Some(&jwt));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.headers["x-made-by"], "web");
    assert_eq!(a.headers["x-vibebase-cold-start"], "1", "the first call after a deploy starts a runner");
    assert_eq!(a.body["body"], json!({"n": 1}));
    assert_eq!(a.body["sub"], user["id"], "the caller's JWT reaches the function");
    assert_eq!(a.body["url"], format!("http://127.0.0.1:3128/env/{env}"));
    assert_eq!(a.body["anon"], lab.publishable.as_str());
    assert_eq!(a.body["secret"], "sesame-7f3a");
    let service = a.body["service"].as_str().unwrap().to_owned();
    assert!(service.starts_with("vb_tok_"), "{service}");
    // The invocation's token died with it.
    let r =
        lab.http.get(format!("{}/env/{env}/rest/v1/notes", lab.server.url)).header("apikey", &service).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "a revoked invocation token");
    let warm = lab.invoke("web", json!({"n": 2}));
    assert_eq!((warm.status, &warm.headers["x-vibebase-cold-start"]), (201, &"0".parse().unwrap()));
    assert_eq!(warm.body["sub"], Value::Null, "the publishable key is no user");
    assert_ne!(warm.body["service"], a.body["service"], "a token per invocation");
    // Secrets are sealed at rest: the plaintext is nowhere in the platform store.
    for f in ["platform.db", "platform.db-wal"] {
        if let Ok(bytes) = std::fs::read(lab.data_dir.join(f)) {
            assert!(!String::from_utf8_lossy(&bytes).contains("sesame-7f3a"), "{f} holds the secret in clear");
        }
    }
    let key = std::fs::metadata(lab.data_dir.join("master.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);

    // CloudBase style (CJS), reading the env's database with its invocation token.
    assert_eq!(lab.deploy("cb", &[("index.js", CLOUDBASE)], &[]), 1);
    let b = lab.invoke_as("cb", json!({"hello": "world"}), Some(&jwt));
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.body["event"], json!({"hello": "world"}));
    assert_eq!((b.body["role"].as_str(), b.body["sub"].clone()), (Some("authenticated"), user["id"].clone()));
    assert_eq!(b.body["notes"], json!([{"body": "first"}]));
    let anon = lab.invoke("cb", json!({}));
    assert_eq!(anon.body["role"], "anon");

    // A second version, then a rollback to the first; the versions stay.
    let v2 = CLOUDBASE.replace("version: 1", "version: 2");
    assert_eq!(lab.deploy("cb", &[("index.js", &v2)], &["--timeout-ms", "5000"]), 2);
    assert_eq!(lab.invoke("cb", json!({})).body["version"], 2);
    let rolled = cli_json(&lab.server.cli(&lab.secret, &["functions", "rollback", "--env", &env, "cb", "1", "--json"]));
    assert_eq!(rolled["active_version"], 1);
    assert_eq!(lab.invoke("cb", json!({})).body["version"], 1);
    let versions = cli_json(&lab.server.cli(&lab.secret, &["functions", "versions", "--env", &env, "cb", "--json"]));
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);
    assert_eq!(versions["items"][0]["timeout_ms"], 5000);
    let missing = lab.server.cli(&lab.secret, &["functions", "rollback", "--env", &env, "cb", "9"]);
    assert_eq!(missing.status.code(), Some(4));
    let listed = cli_json(&lab.server.cli(&lab.secret, &["functions", "list", "--env", &env, "--json"]));
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);

    // Logs: what each invocation printed, filtered by time.
    std::thread::sleep(Duration::from_millis(300));
    let logs = cli_json(&lab.server.cli(&lab.secret, &["functions", "logs", "--env", &env, "web", "--json"]));
    let items = logs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{logs}");
    assert!(
        items.iter().all(|l| l["stdout"].as_str().unwrap().contains("web invoked with POST") && l["outcome"] == "ok")
    );
    let cb_logs = cli_json(&lab.server.cli(&lab.secret, &["functions", "logs", "--env", &env, "cb", "--json"]));
    assert!(cb_logs["items"][0]["stderr"].as_str().unwrap().contains("cloudbase event"), "{cb_logs}");
    let future =
        cli_json(&lab.server.cli(
            &lab.secret,
            &["functions", "logs", "--env", &env, "web", "--since", "2999-01-01T00:00:00Z", "--json"],
        ));
    assert_eq!(future["items"], json!([]));
    let human = lab.server.cli(&lab.secret, &["functions", "logs", "--env", &env, "web"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("stdout| web invoked with POST"));

    // Meters: one invocation each, and GB·ms.
    std::thread::sleep(Duration::from_millis(1500));
    let usage = cli_json(&lab.server.cli(ADMIN, &["usage", "--env", &env, "--json"]));
    let total = |m: &str| {
        usage["totals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["meter"] == m)
            .map(|t| t["quantity"].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(total("function_invocations"), 6, "{usage}");
    assert!(total("function_gb_ms") >= 6, "{usage}");

    // Another env's keys reach none of it.
    let other = cli_json(&lab.server.cli(ADMIN, &["env", "create", "--id", "other", "--json"]));
    let r = lab
        .http
        .post(format!("{}/env/{env}/functions/v1/web", lab.server.url))
        .header("apikey", other["keys"]["publishable"].as_str().unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = lab.server.cli(other["keys"]["secret"].as_str().unwrap(), &["functions", "list", "--env", &env]);
    assert_eq!(r.status.code(), Some(3));
    // Delete: gone, with its bundles.
    assert!(lab.server.cli(&lab.secret, &["functions", "delete", "--env", &env, "cb"]).status.success());
    assert_eq!(lab.invoke("cb", json!({})).status, 404);
    lab.server.stop();
}

const MISBEHAVING: &str = r#"
const fs = require('node:fs');
const cp = require('node:child_process');
exports.main = async (event) => {
  switch (event.mode) {
    case 'ok': return { ok: true };
    case 'throw': throw new Error('boom: the function failed on purpose');
    case 'hang': return new Promise(() => {});
    case 'spin': for (;;) {}
    case 'bigint': return { n: 10n };
    case 'flood': { const line = 'x'.repeat(1024 * 1024); for (let i = 0; i < 64; i++) console.log(line); return { flooded: true }; }
    case 'memory': { const keep = []; for (;;) keep.push(new Array(1024 * 1024).fill(Math.random())); }
    case 'exit': process.exit(3);
    case 'fork': {
      // Processes that stay, until the process limit refuses more.
      for (let i = 0; i < 500; i++) cp.spawn('sleep', ['60'], { stdio: 'ignore' }).on('error', () => {});
      await new Promise((r) => setTimeout(r, 300));
      return cp.execSync('echo still forking').toString();
    }
    case 'read': return fs.readFileSync(event.path, 'utf8');
    case 'net': { const r = await fetch('https://example.com/'); return { status: r.status }; }
    case 'other-env': {
      const r = await fetch(`http://127.0.0.1:3128/env/${event.env}/rest/v1/notes`, { headers: { apikey: process.env.SUPABASE_SERVICE_ROLE_KEY } });
      return { status: r.status, text: await r.text() };
    }
  }
};
"#;

const WEB_NOT_A_RESPONSE: &str = "export default async () => ({ not: 'a Response' });\n";

#[test]
fn misbehaving_functions_each_get_a_clear_error_and_the_next_call_works() {
    let lab = Lab::new("bad");
    lab.deploy("bad", &[("index.js", MISBEHAVING)], &["--timeout-ms", "3000", "--memory-mb", "128"]);
    lab.deploy("notresp", &[("index.mjs", WEB_NOT_A_RESPONSE)], &[]);
    let ok = |lab: &Lab| {
        let a = lab.invoke("bad", json!({"mode": "ok"}));
        assert_eq!((a.status, &a.body), (200, &json!({"ok": true})), "the next call works");
    };
    ok(&lab);
    let check = |mode: Value, status: u16, code: &str, message: &str| {
        let a = lab.invoke("bad", mode.clone());
        assert_eq!(a.status, status, "{mode}: {}", a.body);
        assert_eq!(a.body["error_code"], code, "{mode}: {}", a.body);
        assert!(a.body["message"].as_str().unwrap().contains(message), "{mode}: {}", a.body);
        ok(&lab);
    };
    check(json!({"mode": "throw"}), 500, "function_threw", "boom: the function failed on purpose");
    check(json!({"mode": "hang"}), 504, "function_timeout", "did not answer within 3000 ms");
    check(json!({"mode": "spin"}), 504, "function_timeout", "3000 ms");
    check(json!({"mode": "bigint"}), 502, "function_invalid_result", "not JSON");
    check(json!({"mode": "memory"}), 502, "function_out_of_memory", "ran out of memory");
    check(json!({"mode": "exit"}), 502, "function_crashed", "exited with status 3");
    // A fork bomb meets the process limit: the function fails (EAGAIN, or its runtime cannot start the
    // threads it needs and it times out), its sandbox is discarded, and the next call works.
    let a = lab.invoke("bad", json!({"mode": "fork"}));
    let code = a.body["error_code"].as_str().unwrap_or("");
    assert!(
        (a.status, code) == (500, "function_threw") && a.body["message"].as_str().unwrap().contains("EAGAIN")
            || (a.status, code) == (504, "function_timeout"),
        "{}",
        a.body
    );
    ok(&lab);
    // Host files, the data dir and another env's database are not there.
    let other_db = lab.data_dir.join("platform.db");
    check(json!({"mode": "read", "path": other_db}), 500, "function_threw", "ENOENT");
    check(json!({"mode": "read", "path": "/etc/shadow"}), 500, "function_threw", "ENOENT");
    check(json!({"mode": "net"}), 500, "function_threw", "fetch failed");
    let a = lab.invoke("notresp", json!({}));
    assert_eq!((a.status, a.body["error_code"].as_str()), (502, Some("function_invalid_result")), "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("not a Response"));
    // Another env's data plane through the proxy: refused by the proxy.
    cli_json(&lab.server.cli(ADMIN, &["env", "create", "--id", "victim", "--json"]));
    let a = lab.invoke("bad", json!({"mode": "other-env", "env": "victim"}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], 403, "{}", a.body);
    // A flood is cut to the log bound; the caller gets the answer.
    let a = lab.invoke("bad", json!({"mode": "flood"}));
    assert_eq!((a.status, &a.body), (200, &json!({"flooded": true})));
    std::thread::sleep(Duration::from_millis(300));
    let (_, logs) = lab.call("GET", "/v1/envs/bad/functions/bad/logs?limit=1000", None);
    let flood = logs["items"].as_array().unwrap().iter().find(|l| l["stdout"].as_str().unwrap().len() > 1000).unwrap();
    let stdout = flood["stdout"].as_str().unwrap();
    assert!(stdout.len() < 70 * 1024 && stdout.contains("more characters dropped"), "{}", stdout.len());
    let outcomes: Vec<&str> =
        logs["items"].as_array().unwrap().iter().map(|l| l["outcome"].as_str().unwrap()).collect();
    for o in ["threw", "timeout", "invalid_result", "out_of_memory", "crashed", "ok"] {
        assert!(outcomes.contains(&o), "{o} in {outcomes:?}");
    }
    lab.server.stop();
}

#[test]
fn deploys_refuse_unsafe_archives_and_install_npm_dependencies_in_a_sandbox() {
    let lab = Lab::new("pkg");
    // Hostile archives: refused with their code, nothing stored.
    let evil = lab.source("evil", &[("index.js", "exports.main = async () => 1;")]);
    std::os::unix::fs::symlink("/etc/passwd", evil.join("passwd")).unwrap();
    let (status, body) = lab.deploy_archive("evil", tar_gz(&evil, &["."]));
    assert_eq!((status, body["code"].as_str()), (400, Some("archive_escaping_link")), "{body}");
    let (status, body) = lab.deploy_archive("evil", tar_gz(&evil, &["-P", "/etc/hostname", "./index.js"]));
    assert_eq!((status, body["code"].as_str()), (400, Some("archive_unsafe_path")), "{body}");
    let (status, body) = lab.deploy_archive("evil", b"definitely not gzip".to_vec());
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_archive")), "{body}");
    let readme = lab.source("readme", &[("README.md", "# no code")]);
    let (status, body) = lab.deploy_archive("evil", tar_gz(&readme, &["."]));
    assert_eq!((status, body["code"].as_str()), (400, Some("function_entrypoint_missing")), "{body}");
    let (status, body) = lab.deploy_archive("Bad_Name", tar_gz(&readme, &["."]));
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_function_name")), "{body}");
    let (_, list) = lab.call("GET", "/v1/envs/pkg/functions", None);
    assert_eq!(list["items"], json!([]));

    // A dependency from npm, installed at deploy time in a sandbox that reaches only the registry.
    let pkg = r#"{"name": "odd", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}"#;
    let code = "const isNumber = require('is-number');\nexports.main = async (e) => ({ isNumber: isNumber(e.v) });\n";
    let src = lab.source("odd", &[("package.json", pkg), ("index.js", code)]);
    let out =
        lab.server.cli(&lab.secret, &["functions", "deploy", "--env", "pkg", "odd", src.to_str().unwrap(), "--json"]);
    let v = cli_json(&out);
    assert_eq!(v["dependencies_installed"], true);
    let a = lab.invoke("odd", json!({"v": 42}));
    assert_eq!((a.status, &a.body), (200, &json!({"isNumber": true})));
    // A dependency that does not exist fails the deploy, and the served version stays.
    let bad_pkg = r#"{"name": "odd", "version": "1.0.0", "dependencies": {"vibebase-no-such-package-8d1f": "1.0.0"}}"#;
    let src = lab.source("odd2", &[("package.json", bad_pkg), ("index.js", code)]);
    let out = lab.server.cli(&lab.secret, &["functions", "deploy", "--env", "pkg", "odd", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dependency_install_failed"));
    let (_, f) = lab.call("GET", "/v1/envs/pkg/functions/odd", None);
    assert_eq!(f["active_version"], 1);
    assert_eq!(lab.invoke("odd", json!({"v": "x"})).body, json!({"isNumber": false}));
    lab.server.stop();
}
