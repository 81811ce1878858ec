//! Sandbox benchmark (not a test), on the real `vibebase serve` binary over loopback HTTP:
//! - create to first exec ready, p50 / p99 (sequential);
//! - exec round-trip overhead: `POST …/exec {argv: ["true"]}` against spawning `/bin/true` here;
//! - idle density: N idle sandboxes, memory per sandbox (cgroup memory of all of them / N);
//! - a Vite + React template with `node_modules` (built here with npm when the registry is reachable):
//!   workspace creation from it, and snapshot / restore of a workspace holding it.
//!
//! Run as root: `cargo bench -p vibebase --bench sandbox [-- IDLE]` (IDLE defaults to 1000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{ADMIN, ms};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn create(&self, spec: Value) -> String {
        self.call(reqwest::Method::POST, "/v1/envs/bench/sandboxes", Some(spec)).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn exec(&self, id: &str, argv: &[&str]) -> Value {
        let path = format!("/v1/envs/bench/sandboxes/{id}/exec");
        self.call(reqwest::Method::POST, &path, Some(json!({"argv": argv, "timeout_ms": 600_000}))).await
    }

    async fn kill(&self, id: &str) {
        self.call(reqwest::Method::DELETE, &format!("/v1/envs/bench/sandboxes/{id}"), None).await;
    }
}

/// The memory of every sandbox cgroup of this run (bytes), from the host's cgroup files.
fn sandbox_memory(env: &str) -> u64 {
    let mut total = 0;
    for root in ["/sys/fs/cgroup/memory/vibebase", "/sys/fs/cgroup/vibebase"] {
        let Ok(runs) = std::fs::read_dir(root) else { continue };
        for run in runs.flatten() {
            let Ok(sbs) = std::fs::read_dir(run.path().join(format!("env-{env}"))) else { continue };
            for sb in sbs.flatten() {
                for file in ["memory.usage_in_bytes", "memory.current"] {
                    if let Ok(v) = std::fs::read_to_string(sb.path().join(file)) {
                        total += v.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    total
}

/// Builds a Vite + React app with its dependencies installed, or says why not.
fn vite_template(dir: &std::path::Path) -> Result<(), String> {
    let run = |args: &[&str], cwd: &std::path::Path| -> Result<(), String> {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    };
    run(&["npm", "create", "-y", "vite@6", "app", "--", "--template", "react"], dir)?;
    run(&["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], &dir.join("app"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let idle: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = common::serve::<&str>(dir.path(), ADMIN, &[]).await;
    let api = Api { base, http: reqwest::Client::new() };
    api.call(reqwest::Method::POST, "/v1/envs", Some(json!({"id": "bench"}))).await;

    // 1. Create to first exec ready.
    let runs = 100;
    let (mut create, mut ready) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let id = api.create(json!({})).await;
        create.push(t.elapsed());
        api.exec(&id, &["true"]).await;
        ready.push(t.elapsed());
        api.kill(&id).await;
    }
    create.sort();
    ready.sort();
    println!(
        "create (API, {runs} runs):             p50 {}  p99 {}",
        ms(common::pct(&create, 0.5)),
        ms(common::pct(&create, 0.99))
    );
    println!(
        "create to first exec done:         p50 {}  p99 {}",
        ms(common::pct(&ready, 0.5)),
        ms(common::pct(&ready, 0.99))
    );

    // 2. Exec round trip against a direct spawn.
    let id = api.create(json!({})).await;
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        api.exec(&id, &["true"]).await;
        via.push(t.elapsed());
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        direct.push(t.elapsed());
    }
    via.sort();
    direct.sort();
    println!(
        "exec `true` via API: p50 {} p99 {}; direct spawn p50 {} p99 {}; overhead p50 {}",
        ms(common::pct(&via, 0.5)),
        ms(common::pct(&via, 0.99)),
        ms(common::pct(&direct, 0.5)),
        ms(common::pct(&direct, 0.99)),
        ms(common::pct(&via, 0.5).saturating_sub(common::pct(&direct, 0.5)))
    );
    api.kill(&id).await;

    // 3. Idle density.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(idle);
    for _ in 0..idle {
        ids.push(api.create(json!({"timeout_seconds": 3600, "memory_mb": 64})).await);
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mem = sandbox_memory("bench");
    println!(
        "{idle} idle sandboxes started in {:.1} s; their memory {:.1} MiB = {:.2} MiB per sandbox",
        took.as_secs_f64(),
        mem as f64 / 1048576.0,
        mem as f64 / 1048576.0 / idle as f64
    );
    let alive = api.exec(ids.last().unwrap(), &["echo", "alive"]).await;
    assert_eq!(alive["stdout"], "alive\n");
    for id in &ids {
        api.kill(id).await;
    }

    // 4 and 5. The Vite + React template, snapshot and restore.
    let build = tempfile::tempdir().unwrap();
    match vite_template(build.path()) {
        Err(why) => println!("vite template: skipped ({})", why.lines().last().unwrap_or("npm failed")),
        Ok(()) => {
            let app = build.path().join("app");
            let files = Command::new("sh").arg("-c").arg("find . | wc -l").current_dir(&app).output().unwrap();
            let archive = Command::new("tar").arg("-C").arg(&app).args(["-czf", "-", "."]).output().unwrap().stdout;
            let t = Instant::now();
            let r = api
                .http
                .put(format!("{}/v1/templates/vite-react", api.base))
                .bearer_auth(ADMIN)
                .body(archive.clone())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            println!(
                "vite-react template: {} files, {:.1} MiB archive, stored in {}",
                String::from_utf8_lossy(&files.stdout).trim(),
                archive.len() as f64 / 1048576.0,
                ms(t.elapsed())
            );
            let mut from_template = Vec::new();
            for _ in 0..30 {
                let t = Instant::now();
                let id = api.create(json!({"template": "vite-react"})).await;
                let r = api.exec(&id, &["test", "-f", "node_modules/react/package.json"]).await;
                assert_eq!(r["exit_code"], 0);
                from_template.push(t.elapsed());
                api.kill(&id).await;
            }
            from_template.sort();
            println!(
                "workspace from the template to first exec: p50 {}  p99 {}",
                ms(common::pct(&from_template, 0.5)),
                ms(common::pct(&from_template, 0.99))
            );
            let id = api.create(json!({"template": "vite-react", "disk_mb": 2048})).await;
            let t = Instant::now();
            let snap = api.call(reqwest::Method::POST, &format!("/v1/envs/bench/sandboxes/{id}/snapshot"), None).await;
            let snap_time = t.elapsed();
            let t = Instant::now();
            let restored = api.create(json!({"snapshot": snap["id"], "disk_mb": 2048})).await;
            let restore_time = t.elapsed();
            let r = api.exec(&restored, &["test", "-f", "node_modules/react/package.json"]).await;
            assert_eq!(r["exit_code"], 0);
            println!(
                "snapshot of a workspace with node_modules: {} ({:.1} MiB); restore into a new sandbox: {}",
                ms(snap_time),
                snap["size_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                ms(restore_time)
            );
        }
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}
