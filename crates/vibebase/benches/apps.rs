//! Container apps benchmark (not a test), on the real `vibebase serve` binary over loopback HTTP:
//! - cold wake: the first request to an app that idled out (scaled to zero): a sandbox is started, the
//!   source unpacked, `node server.js` started and health-checked, then the request relayed; p50 / p95;
//! - warm request to the running app, and the server's own floor (`GET /healthz`), in the same run.
//!
//! Run as root: `cargo bench -p vibebase --bench apps [-- WAKES WARM]` (defaults 10 and 300).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{ADMIN, ms};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let wakes = args.first().copied().unwrap_or(10);
    let warm_rounds = args.get(1).copied().unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = common::serve::<&str>(dir.path(), ADMIN, &[]).await;
    let http = reqwest::Client::new();
    let r = http.post(format!("{base}/v1/envs")).bearer_auth(ADMIN).json(&json!({"id": "bench"})).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let src = dir.path().join("app");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("server.js"),
        "require('http').createServer((q, s) => s.end('ok')).listen(process.env.PORT, '127.0.0.1');\n",
    )
    .unwrap();
    let archive = Command::new("tar").arg("-C").arg(&src).args(["-czf", "-", "."]).output().unwrap().stdout;
    let app = format!("{base}/v1/envs/bench/apps/web");
    let spec = json!({"command": "node server.js", "port": 3000, "idle_timeout_seconds": 1,
        "health_check": {"path": "/", "interval_ms": 1000}});
    let r = http.put(&app).bearer_auth(ADMIN).json(&spec).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = http.put(format!("{app}/archive")).bearer_auth(ADMIN).body(archive).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let get = || async {
        let started = Instant::now();
        let r = http.get(format!("{base}/env/bench/apps/web/")).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        r.bytes().await.unwrap();
        started.elapsed()
    };
    let status = || async {
        let v: Value = http.get(&app).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        v["status"].as_str().unwrap_or("").to_owned()
    };

    let mut cold = Vec::new();
    for _ in 0..wakes {
        // Wait until it has idled out (scaled to zero).
        while status().await != "stopped" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cold.push(get().await);
    }
    cold.sort();
    let mut warm = Vec::new();
    for _ in 0..warm_rounds {
        warm.push(get().await);
    }
    warm.sort();
    let mut floor = Vec::new();
    for _ in 0..warm_rounds {
        let started = Instant::now();
        http.get(format!("{base}/healthz")).send().await.unwrap().bytes().await.unwrap();
        floor.push(started.elapsed());
    }
    floor.sort();
    println!(
        "cold wake (first request after an idle stop), {} rounds: p50 {} p95 {}",
        cold.len(),
        ms(common::pct(&cold, 0.5)),
        ms(common::pct(&cold, 0.95))
    );
    println!(
        "warm request, {} requests: p50 {} p99 {}",
        warm.len(),
        ms(common::pct(&warm, 0.5)),
        ms(common::pct(&warm, 0.99))
    );
    println!("server floor (GET /healthz): p50 {} p99 {}", ms(common::pct(&floor, 0.5)), ms(common::pct(&floor, 0.99)));
    let _ = child.kill();
    let _ = child.wait();
}
