//! What the benchmarks share: the real `vibebase serve`, started on a free loopback port.
// Each bench compiles this module and uses part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_vibebase");
/// The admin key every bench's server runs with.
pub const ADMIN: &str = "bench-admin-key-0123456789abcdef";

/// A latency for the report, in milliseconds.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Starts `vibebase serve` on `data_dir` with the admin key `admin` and `extra` flags, and returns it
/// with its base URL once `/healthz` answers.
pub async fn serve<S: AsRef<OsStr>>(data_dir: &Path, admin: &str, extra: &[S]) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("VIBEBASE_ADMIN_KEY", admin)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, base)
}

/// The `p` quantile (0..=1) of sorted latencies.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Creates env `id` as `admin` and returns its record (with the secret key).
pub async fn create_env(client: &reqwest::Client, base: &str, admin: &str, id: &str) -> serde_json::Value {
    client
        .post(format!("{base}/v1/envs"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"id": id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
