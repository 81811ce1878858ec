//! Cloud functions benchmark (not a test), on the real `vibebase serve` binary over loopback HTTP:
//! - cold start: the first invocation after a deploy (no warm runner for the new version), p50 / p95;
//! - warm invocation: a no-op CloudBase-style function on a warm runner, end to end, p50 / p99, next to
//!   the server's own floor (`GET /healthz`) in the same run.
//!
//! Run as root: `cargo bench -p vibebase --bench functions [-- COLD WARM]` (defaults 20 and 300).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use common::{ADMIN, ms};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let cold_rounds = args.first().copied().unwrap_or(20);
    let warm_rounds = args.get(1).copied().unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = common::serve::<&str>(dir.path(), ADMIN, &[]).await;
    let http = reqwest::Client::new();
    let env: Value = http
        .post(format!("{base}/v1/envs"))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pk = env["keys"]["publishable"].as_str().unwrap().to_owned();
    let src = dir.path().join("noop");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.js"), "exports.main = async (event) => ({ ok: true, event });\n").unwrap();
    let archive = Command::new("tar").arg("-C").arg(&src).args(["-czf", "-", "."]).output().unwrap().stdout;
    let deploy = || async {
        let r = http
            .post(format!("{base}/v1/envs/bench/functions/noop/deploy"))
            .bearer_auth(ADMIN)
            .body(archive.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    };
    let invoke = || async {
        let started = Instant::now();
        let r = http
            .post(format!("{base}/env/bench/functions/v1/noop"))
            .header("apikey", &pk)
            .json(&json!({"n": 1}))
            .send()
            .await
            .unwrap();
        let cold = r.headers().get("x-vibebase-cold-start").is_some_and(|v| v == "1");
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        r.bytes().await.unwrap();
        (started.elapsed(), cold)
    };

    let mut cold = Vec::new();
    for _ in 0..cold_rounds {
        deploy().await;
        let (t, was_cold) = invoke().await;
        assert!(was_cold, "the first call after a deploy starts a runner");
        cold.push(t);
    }
    cold.sort();
    let mut warm = Vec::new();
    for _ in 0..warm_rounds {
        let (t, was_cold) = invoke().await;
        if !was_cold {
            warm.push(t);
        }
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
        "cold start (first call after a deploy), {} rounds: p50 {} p95 {}",
        cold.len(),
        ms(common::pct(&cold, 0.5)),
        ms(common::pct(&cold, 0.95))
    );
    println!(
        "warm invocation (no-op), {} calls: p50 {} p99 {}",
        warm.len(),
        ms(common::pct(&warm, 0.5)),
        ms(common::pct(&warm, 0.99))
    );
    println!("server floor (GET /healthz): p50 {} p99 {}", ms(common::pct(&floor, 0.5)), ms(common::pct(&floor, 0.99)));
    println!(
        "warm overhead over the floor: p50 {} p99 {}",
        ms(common::pct(&warm, 0.5).saturating_sub(common::pct(&floor, 0.5))),
        ms(common::pct(&warm, 0.99).saturating_sub(common::pct(&floor, 0.99)))
    );
    let _ = child.kill();
    let _ = child.wait();
}
