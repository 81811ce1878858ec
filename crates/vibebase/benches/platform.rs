//! Platform-core benchmark (not a test): env create latency, 10,000 envs on one node (total time,
//! server resident memory, idle CPU), and the cost of authorization per request.
//!
//! Run: `cargo bench -p vibebase --bench platform` (optionally `-- ENVS` to change the 10,000).
//! It starts the real `vibebase serve` binary on SQLite in a temp dir and drives it over loopback HTTP
//! from this process, one request at a time, so latencies are end to end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::ADMIN;

fn proc_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let envs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = common::serve::<&str>(dir.path(), ADMIN, &[]).await;
    let pid = child.id();
    let client = reqwest::Client::new();
    let rss_start = proc_field(pid, "VmRSS:");

    let mut create = Vec::with_capacity(envs);
    let started = Instant::now();
    let mut first = None;
    for i in 0..envs {
        let t = Instant::now();
        let r = client
            .post(format!("{base}/v1/envs"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"id": format!("bench-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        if first.is_none() {
            first = Some(r.json::<serde_json::Value>().await.unwrap());
        } else {
            r.bytes().await.unwrap();
        }
        create.push(t.elapsed());
    }
    let total = started.elapsed();
    create.sort();

    // Let buffered work settle, then measure memory and idle CPU.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = proc_field(pid, "VmRSS:");
    let hz = 100.0; // USER_HZ on Linux
    let cpu0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu_pct = (cpu_ticks(pid) - cpu0) as f64 / hz / 10.0 * 100.0;

    // Authorization cost: an authenticated, authorized, metered data-plane request vs. a public one.
    let pk = first.unwrap()["keys"]["publishable"].as_str().unwrap().to_owned();
    let n = 5000;
    let timed = |url: String, key: Option<String>| {
        let client = client.clone();
        async move {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let mut req = client.get(&url);
                if let Some(k) = &key {
                    req = req.header("apikey", k);
                }
                let t = Instant::now();
                req.send().await.unwrap().bytes().await.unwrap();
                v.push(t.elapsed());
            }
            v.sort();
            v
        }
    };
    let public = timed(format!("{base}/healthz"), None).await;
    // A data-plane surface that does no work of its own yet, so this measures the gate alone.
    let guarded = timed(format!("{base}/env/bench-0/storage/v1/bucket"), Some(pk)).await;

    println!("vibebase platform-core benchmark ({envs} environments, SQLite, loopback HTTP, sequential)");
    println!(
        "env create: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(common::pct(&create, 0.5)),
        ms(common::pct(&create, 0.99)),
        ms(*create.last().unwrap())
    );
    println!("{envs} envs created in {:.1} s ({:.0} envs/s)", total.as_secs_f64(), envs as f64 / total.as_secs_f64());
    println!(
        "server RSS: {:.1} MiB at start, {:.1} MiB with {envs} envs: {:.2} KiB per env",
        rss_start as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_start)) as f64 / envs as f64
    );
    println!("idle CPU with {envs} envs over 10 s: {idle_cpu_pct:.2} % of one core");
    println!(
        "request latency p50: public /healthz {:.3} ms, guarded data-plane {:.3} ms: authorization + metering ≈ {:.3} ms per request",
        ms(common::pct(&public, 0.5)),
        ms(common::pct(&guarded, 0.5)),
        ms(common::pct(&guarded, 0.5)) - ms(common::pct(&public, 0.5))
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
