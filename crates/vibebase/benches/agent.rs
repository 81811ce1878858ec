//! Agent runtime benchmark (not a test), on the real `vibebase serve` binary over loopback HTTP, with a
//! mock model on loopback that answers at once (so what is measured is the loop, not a model):
//! - loop overhead per turn: a run of one model call and no tool, from the message's POST to the run's
//!   end in the log, minus the mock's own time; p50 / p95;
//! - time to the first model request: lazy (a turn needs no tool, so no sandbox is started: the
//!   platform's behaviour) against eager (a sandbox started for the session first, as a loop that
//!   provisions before inference would); p50 each;
//! - resume after `kill -9`: from the restarted server's start to the resumed run's end, with the lease
//!   (`--agent-lease-seconds 1`) as part of it.
//!
//! Run as root: `cargo bench -p vibebase --bench agent [-- TURNS]` (default 30).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use common::{ADMIN, ms, pct};
use serde_json::{Value, json};

/// When the mock received each request, and how long it spent on it.
type Log = Arc<Mutex<Vec<(Instant, Duration)>>>;

async fn completions(State(log): State<Log>, body: String) -> axum::response::Response {
    let got = Instant::now();
    let body: Value = serde_json::from_str(&body).unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    let frames = if last["content"].as_str().unwrap_or_default().contains("slow tool") {
        let args = json!({"command": "sleep 30"}).to_string();
        let call = json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "c", "type": "function",
            "function": {"name": "bash", "arguments": args}}]});
        vec![chunk(call, None), chunk(json!({}), Some("tool_calls"))]
    } else {
        vec![chunk(json!({"role": "assistant", "content": "ok"}), None), chunk(json!({}), Some("stop"))]
    };
    let mut text = frames.concat();
    text.push_str("data: [DONE]\n\n");
    log.lock().unwrap().push((got, got.elapsed()));
    axum::response::Response::builder().header("content-type", "text/event-stream").body(text.into()).unwrap()
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

struct Bench {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Bench {
    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Polls the session until its run ended; the moment it saw the end.
    async fn until_idle(&self, session: &str) -> Instant {
        loop {
            let url = format!("{}/v1/envs/bench/sessions/{session}", self.base);
            let s: Value = self.http.get(url).bearer_auth(&self.key).send().await.unwrap().json().await.unwrap();
            if s["status"] == "idle" && s["last_seq"].as_i64().unwrap_or(0) > 0 {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let turns = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30usize);
    let log: Log = Arc::default();
    let app =
        axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models.json");
    let file = json!({"providers": {"mock": {"kind": "openai", "base_url": format!("http://{mock}/v1")}},
        "models": [{"name": "m", "routes": [{"provider": "mock"}]}]});
    std::fs::write(&models, file.to_string()).unwrap();
    let data = dir.path().join("data");
    let flags = ["--models", models.to_str().unwrap(), "--agent-model", "m", "--agent-lease-seconds", "1"];
    let (mut child, base) = common::serve(&data, ADMIN, &flags).await;
    let http = reqwest::Client::new();
    let env = common::create_env(&http, &base, ADMIN, "bench").await;
    let b = Bench { http, base, key: env["keys"]["secret"].as_str().unwrap().to_owned() };

    // Loop overhead: one model call per run, no tool.
    let mut overhead = Vec::new();
    let mut first_lazy = Vec::new();
    for i in 0..turns {
        let s = format!("o{i}");
        b.post("/v1/envs/bench/sessions", json!({"id": s})).await;
        let before = log.lock().unwrap().len();
        let start = Instant::now();
        b.post(&format!("/v1/envs/bench/sessions/{s}/messages"), json!({"content": "hi"})).await;
        let end = b.until_idle(&s).await;
        let (got, spent) = log.lock().unwrap()[before];
        first_lazy.push(got - start);
        overhead.push((end - start).saturating_sub(spent));
    }
    // Eager: a sandbox started for the session before its first model request.
    let mut first_eager = Vec::new();
    for i in 0..turns.min(10) {
        let s = format!("e{i}");
        b.post("/v1/envs/bench/sessions", json!({"id": s})).await;
        let before = log.lock().unwrap().len();
        let start = Instant::now();
        let sb = b.post("/v1/envs/bench/sandboxes", json!({"session": s, "timeout_seconds": 60})).await;
        b.post(&format!("/v1/envs/bench/sessions/{s}/messages"), json!({"content": "hi"})).await;
        b.until_idle(&s).await;
        let (got, _) = log.lock().unwrap()[before];
        first_eager.push(got - start);
        let url = format!("{}/v1/envs/bench/sandboxes/{}", b.base, sb["id"].as_str().unwrap());
        b.http.delete(url).bearer_auth(&b.key).send().await.unwrap();
    }
    // Resume after kill -9: a run whose tool sleeps; the server is killed and started again.
    b.post("/v1/envs/bench/sessions", json!({"id": "crash"})).await;
    b.post("/v1/envs/bench/sessions/crash/messages", json!({"content": "run the slow tool"})).await;
    loop {
        let url = format!("{}/v1/envs/bench/sessions/crash/events?follow=false", b.base);
        let text = b.http.get(url).bearer_auth(&b.key).send().await.unwrap().text().await.unwrap();
        if text.contains("vibebase.sandbox_attach") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let restart = Instant::now();
    let port = b.base.rsplit(':').next().unwrap().to_owned();
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(flags)
        .env("VIBEBASE_ADMIN_KEY", ADMIN)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while b.http.get(format!("{}/healthz", b.base)).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let up = restart.elapsed();
    b.until_idle("crash").await;
    let resumed = restart.elapsed();
    let _ = child.kill();
    let _ = child.wait();

    overhead.sort();
    first_lazy.sort();
    first_eager.sort();
    println!("agent loop, {turns} runs of one model call (mock model on loopback)");
    println!("  loop overhead per turn: p50 {} / p95 {}", ms(pct(&overhead, 0.5)), ms(pct(&overhead, 0.95)));
    println!(
        "  first model request: lazy sandbox p50 {} / eager sandbox p50 {} ({} runs)",
        ms(pct(&first_lazy, 0.5)),
        ms(pct(&first_eager, 0.5)),
        first_eager.len()
    );
    println!("  resume after kill -9: server up {} / run finished {} (lease 1 s)", ms(up), ms(resumed));
}
