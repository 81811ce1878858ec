//! The real binary: `vibebase serve` as a process, and the CLI against it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod agent;
mod apps;
mod functions;
mod hosting;
mod sandbox;
mod tls;

const BIN: &str = env!("CARGO_BIN_EXE_vibebase");

struct Server {
    child: Child,
    url: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Scale-out flags when the suite runs against PostgreSQL and S3.
fn scale_out_args(tag: &str) -> Vec<String> {
    let mut args = vec![];
    if let Ok(url) = std::env::var("VIBEBASE_TEST_DATABASE_URL") {
        let schema = format!("bin_{tag}_{}", std::process::id());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = store::Db::connect_postgres(&url).await.unwrap();
            let s = schema.clone();
            db.tx(move |c| {
                c.batch(&format!("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}"))?;
                Ok::<_, store::StoreError>(())
            })
            .await
            .unwrap();
        });
        let sep = if url.contains('?') { '&' } else { '?' };
        args.push(format!("--database-url={url}{sep}options=-csearch_path%3D{schema}"));
    }
    if let Ok(url) = std::env::var("VIBEBASE_TEST_OBJECT_STORE_URL") {
        args.push(format!("--object-store-url={}/bin-{tag}-{}", url.trim_end_matches('/'), std::process::id()));
    }
    args
}

impl Server {
    fn start(data_dir: &Path, extra: &[String], admin_key: Option<&str>) -> Self {
        Self::start_on(free_port(), data_dir, extra, admin_key)
    }

    /// [`Server::start`] on a given port (a restart keeps its address).
    fn start_on(port: u16, data_dir: &Path, extra: &[String], admin_key: Option<&str>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(data_dir).args(extra);
        cmd.env_remove("VIBEBASE_ADMIN_KEY").env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(k) = admin_key {
            cmd.env("VIBEBASE_ADMIN_KEY", k);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited with {status}: {}", stderr.lock().unwrap());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "server did not start: {}", stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url, stderr }
    }

    fn cli(&self, key: &str, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("VIBEBASE_URL", &self.url).env("VIBEBASE_KEY", key).output().unwrap()
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) -> String {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}: {}", self.stderr.lock().unwrap());
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no graceful exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn first_start_generates_the_admin_key_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let args = scale_out_args("adminkey");
    let server = Server::start(&dir, &args, None);
    let key_file = dir.join("admin.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(key.starts_with("vb_admin_"));
    let out = server.cli(&key, &["env", "list", "--json"]);
    assert_eq!(json(&out)["items"], Value::Array(vec![]));
    let log = server.stop();
    assert_eq!(log.matches(&key).count(), 1, "printed exactly once at generation");
    // A restart reuses it and prints nothing.
    let server = Server::start(&dir, &args, None);
    assert!(server.cli(&key, &["env", "list"]).status.success());
    assert!(!server.stop().contains(&key));
    // VIBEBASE_ADMIN_KEY wins over the file; a short one is refused at start.
    let out =
        Command::new(BIN).args(["serve", "--data-dir"]).arg(&dir).env("VIBEBASE_ADMIN_KEY", "short").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
}

#[test]
fn cli_drives_the_platform_with_meaningful_exit_codes() {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let admin = "cli-test-admin-key-0123456789";
    let server = Server::start(&dir, &scale_out_args("cli"), Some(admin));
    let created = json(&server.cli(admin, &["env", "create", "--id", "shop", "--name", "Shop", "--json"]));
    assert_eq!(created["id"], "shop");
    let secret = created["keys"]["secret"].as_str().unwrap().to_owned();
    let human = server.cli(admin, &["env", "get", "shop"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("status:      active") && text.contains("api:         http://127.0.0.1:"), "{text}");
    let list = server.cli(admin, &["env", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).lines().any(|l| l.starts_with("shop ")));
    // The env's own secret key works for tenant self-service.
    let minted =
        json(&server.cli(&secret, &["keys", "mint", "--env", "shop", "--ttl", "60", "--action", "db:*", "--json"]));
    assert!(minted["token"].as_str().unwrap().starts_with("vb_tok_"));
    let keys = json(&server.cli(&secret, &["keys", "list", "--env", "shop", "--json"]));
    assert_eq!(keys["items"].as_array().unwrap().len(), 3);
    let rotated = json(&server.cli(&secret, &["keys", "rotate", "--env", "shop", "--overlap", "0", "--json"]));
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    // Exit codes: 3 not authorized (the rotated-out key), 4 not found, 5 conflict, 2 bad input, 7 unreachable.
    assert_eq!(server.cli(&secret, &["env", "get", "shop"]).status.code(), Some(3));
    assert_eq!(server.cli(&new_secret, &["env", "get", "shop"]).status.code(), Some(0));
    assert_eq!(server.cli(admin, &["env", "get", "nope"]).status.code(), Some(4));
    assert_eq!(server.cli(admin, &["env", "create", "--id", "shop"]).status.code(), Some(5));
    let bad = server.cli(admin, &["env", "create", "--id", "Not Valid"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_body"));
    let unreachable = Command::new(BIN)
        .args(["env", "list"])
        .env("VIBEBASE_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("VIBEBASE_KEY", admin)
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(7));
    let no_key = Command::new(BIN)
        .args(["env", "list"])
        .env("VIBEBASE_URL", &server.url)
        .env_remove("VIBEBASE_KEY")
        .output()
        .unwrap();
    assert_eq!(no_key.status.code(), Some(3));
    // Usage (CSV) and audit.
    let csv = server.cli(admin, &["usage", "--env", "shop", "--csv"]);
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("env,meter,from,to,quantity"));
    let audit = json(&server.cli(admin, &["audit", "--env", "shop", "--json"]));
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"env:Create") && actions.contains(&"tokens:Mint") && actions.contains(&"keys:Rotate"),
        "{actions:?}"
    );
    // Migrations from a file: applied in order; a bad one exits 2 and names the problem.
    let good = dir.join("001.sql");
    std::fs::write(&good, "create table notes (id bigserial primary key, body text not null);").unwrap();
    let applied = json(&server.cli(&new_secret, &["sql", "--env", "shop", good.to_str().unwrap(), "--json"]));
    assert_eq!((applied["version"].as_i64(), applied["statements"].as_i64()), (Some(1), Some(1)), "{applied}");
    let human = server.cli(&new_secret, &["sql", "--env", "shop", good.to_str().unwrap()]);
    assert_eq!(human.status.code(), Some(2), "the table exists now");
    assert!(String::from_utf8_lossy(&human.stderr).contains("sql_error"), "{}", String::from_utf8_lossy(&human.stderr));
    let forbidden = dir.join("002.sql");
    std::fs::write(&forbidden, "create table other.t (id int);").unwrap();
    let out = server.cli(&new_secret, &["sql", "--env", "shop", forbidden.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sql_forbidden"));
    // Limits, sub-accounts and webhooks.
    let limits = json(&server.cli(
        admin,
        &["limits", "set", "--env", "shop", "--quota", "api_requests:day:100:80", "--rate", "50", "--json"],
    ));
    assert_eq!(limits["quotas"][0]["hard_limit"], 100);
    assert_eq!(limits["quotas"][0]["soft_limit"], 80);
    assert_eq!(
        json(&server.cli(&new_secret, &["limits", "get", "--env", "shop", "--json"]))["rate_limit_per_second"],
        50
    );
    assert_eq!(
        server.cli(admin, &["limits", "set", "--env", "shop", "--quota", "api_requests"]).status.code(),
        Some(2)
    );
    let owner =
        json(&server.cli(admin, &["principals", "create", "--name", "shop-owner", "--owner-of", "shop", "--json"]));
    let owner_key = owner["key"].as_str().unwrap().to_owned();
    assert_eq!(server.cli(&owner_key, &["env", "get", "shop"]).status.code(), Some(0));
    assert_eq!(server.cli(&owner_key, &["principals", "list"]).status.code(), Some(3));
    let listed = server.cli(admin, &["principals", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("shop-owner"));
    let hook =
        json(&server.cli(
            admin,
            &["webhooks", "create", "--target", "http://127.0.0.1:9/h", "--event", "env.deleted", "--json"],
        ));
    assert!(hook["secret"].as_str().unwrap().starts_with("whsec_"));
    let hooks = json(&server.cli(admin, &["webhooks", "list", "--json"]));
    assert_eq!(hooks["items"].as_array().unwrap().len(), 1);
    let deleted = server.cli(admin, &["env", "delete", "shop"]);
    assert!(deleted.status.success());
    assert!(String::from_utf8_lossy(&deleted.stderr).contains("deleting environment shop"), "progress is shown");
    assert_eq!(server.cli(admin, &["env", "get", "shop"]).status.code(), Some(4));
    let log = json(&server.cli(admin, &["webhooks", "deliveries", hook["id"].as_str().unwrap(), "--json"]));
    assert_eq!(log["items"][0]["event_type"], "env.deleted");
    assert_eq!(server.cli(admin, &["principals", "delete", owner["id"].as_str().unwrap()]).status.code(), Some(0));
    assert_eq!(server.cli(&owner_key, &["env", "list"]).status.code(), Some(3));
    server.stop();
}

#[test]
fn graceful_shutdown_flushes_metered_requests() {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let admin = "flush-test-admin-key-0123456789";
    let args = scale_out_args("flush");
    let server = Server::start(&dir, &args, Some(admin));
    let created = json(&server.cli(admin, &["env", "create", "--id", "shop", "--json"]));
    let pk = created["keys"]["publishable"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..7 {
            let r =
                client.get(format!("{}/env/shop/rest/v1/t", server.url)).header("apikey", &pk).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 404, "no such table, after the gate");
        }
    });
    server.stop();
    let server = Server::start(&dir, &args, Some(admin));
    let usage = json(&server.cli(admin, &["usage", "--env", "shop", "--json"]));
    let total = usage["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["meter"] == "api_requests")
        .map(|t| t["quantity"].clone());
    assert_eq!(total, Some(Value::from(7)), "{usage}");
    server.stop();
}
