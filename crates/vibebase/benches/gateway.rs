//! Model-gateway overhead benchmark (not a test): the same chat call sent straight to a mock upstream
//! and through `vibebase serve`'s gateway (authentication, budget reservation, routing, SSE decoding
//! and re-encoding, settlement in the ledger), one request at a time, streamed and not.
//! Overhead = gateway latency − direct latency, per percentile.
//!
//! Then an open-loop run: requests started at a fixed rate (default 2,000/s for 5 s) whatever the answers
//! do, direct and through the gateway, streamed; with `taskset` available the server is pinned to CPU 1
//! and this process (load generator and mock) to CPU 0.
//!
//! Run: `cargo bench -p vibebase --bench gateway` (optionally `-- N RATE`: N calls per sequential series,
//! default 2,000; RATE requests/s in the open-loop run, default 2,000).
//! The mock upstream runs in this process on its own thread; the server is the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use common::ADMIN;

/// A documented-shape OpenAI stream: role chunk, five content chunks, finish, usage, [DONE].
fn mock_stream() -> String {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut s = chunk(json!({"role": "assistant", "content": ""}), serde_json::Value::Null);
    for w in ["The", " quick", " brown", " fox", " jumps."] {
        s.push_str(&chunk(json!({"content": w}), serde_json::Value::Null));
    }
    s.push_str(&chunk(json!({}), json!("stop")));
    s.push_str(&format!(
        "data: {}\n\n",
        json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
    ));
    s.push_str("data: [DONE]\n\n");
    s
}

fn start_mock() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let body = mock_stream();
            let app = axum::Router::new().route(
                "/v1/chat/completions",
                axum::routing::post(move || {
                    let body = body.clone();
                    async move { ([("content-type", "text/event-stream")], body) }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    port
}

async fn series(client: &reqwest::Client, url: &str, key: &str, body: &serde_json::Value, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.post(url).bearer_auth(key).json(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap();
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// Starts one request every 1/rate s for `secs` s; returns the sorted latencies.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
    rate: u32,
    secs: u32,
) -> Vec<Duration> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for _ in 0..rate * secs {
        tick.tick().await;
        let (c, url, key, body) = (client.clone(), url.to_owned(), key.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.bytes().await.unwrap();
            t.elapsed()
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    out
}

fn pin(pid: u32, cpu: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut nums = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let n = nums.next().unwrap_or(2000);
    let rate = u32::try_from(nums.next().unwrap_or(2000)).unwrap();
    let mock = start_mock();
    let dir = tempfile::tempdir().unwrap();
    let models = json!({
        "providers": {"mock": {"kind": "openai", "base_url": format!("http://127.0.0.1:{mock}/v1")}},
        "models": [{"name": "bench", "routes": [{"provider": "mock"}], "input_price": 1, "output_price": 2}],
    });
    std::fs::write(dir.path().join("models.json"), models.to_string()).unwrap();
    let models_file = dir.path().join("models.json");
    let extra = [OsStr::new("--rate-limit"), OsStr::new("1000000"), OsStr::new("--models"), models_file.as_os_str()];
    let (mut child, base) = common::serve(&dir.path().join("data"), ADMIN, &extra).await;
    let pinned = pin(child.id(), "1") && pin(std::process::id(), "0");
    let client = reqwest::Client::new();
    let env = common::create_env(&client, &base, ADMIN, "bench").await;
    let key = env["keys"]["secret"].as_str().unwrap().to_owned();
    let msgs = json!([{"role": "user", "content": "Say something short."}]);
    let direct_url = format!("http://127.0.0.1:{mock}/v1/chat/completions");
    let gw_url = format!("{base}/env/bench/llm/v1/chat/completions");
    let plain = json!({"model": "bench", "messages": msgs});
    let streamed =
        json!({"model": "bench", "messages": msgs, "stream": true, "stream_options": {"include_usage": true}});
    // Warm up connections, caches and the SQLite file.
    series(&client, &direct_url, "x", &streamed, 200).await;
    series(&client, &gw_url, &key, &plain, 200).await;
    // Interleave the series so drift on the shared machine hits all of them alike.
    let (mut d, mut g, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        d.extend(series(&client, &direct_url, "x", &streamed, n / 10).await);
        g.extend(series(&client, &gw_url, &key, &plain, n / 10).await);
        s.extend(series(&client, &gw_url, &key, &streamed, n / 10).await);
    }
    for v in [&mut d, &mut g, &mut s] {
        v.sort();
    }
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!("calls per series: {}", d.len());
    println!(
        "direct to mock (streamed)      p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&d, 0.5)),
        ms(common::pct(&d, 0.99))
    );
    println!(
        "gateway, not streamed          p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&g, 0.5)),
        ms(common::pct(&g, 0.99))
    );
    println!(
        "gateway, streamed              p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&s, 0.5)),
        ms(common::pct(&s, 0.99))
    );
    println!(
        "overhead, not streamed         p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&g, 0.5)) - ms(common::pct(&d, 0.5)),
        ms(common::pct(&g, 0.99)) - ms(common::pct(&d, 0.99))
    );
    println!(
        "overhead, streamed             p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&s, 0.5)) - ms(common::pct(&d, 0.5)),
        ms(common::pct(&s, 0.99)) - ms(common::pct(&d, 0.99))
    );
    let od = open_loop(&client, &direct_url, "x", &streamed, rate, 5).await;
    let og = open_loop(&client, &gw_url, &key, &streamed, rate, 5).await;
    println!("open loop at {rate}/s for 5 s, streamed ({} calls each; pinned: {pinned})", od.len());
    println!(
        "direct to mock                 p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&od, 0.5)),
        ms(common::pct(&od, 0.99))
    );
    println!(
        "gateway                        p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&og, 0.5)),
        ms(common::pct(&og, 0.99))
    );
    println!(
        "overhead                       p50 {:.3} ms  p99 {:.3} ms",
        ms(common::pct(&og, 0.5)) - ms(common::pct(&od, 0.5)),
        ms(common::pct(&og, 0.99)) - ms(common::pct(&od, 0.99))
    );
    let usage: serde_json::Value = client
        .get(format!("{base}/v1/envs/bench/usage"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("ledger after the run: {}", usage["totals"]);
    child.kill().unwrap();
    child.wait().unwrap();
}
