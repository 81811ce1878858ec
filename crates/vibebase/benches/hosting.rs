//! Static hosting benchmark (not a test): deploy time of a 1,000-file site (first and unchanged
//! redeploy) and rollback time through the CLI, then small-file requests/s and p99 latency of the
//! published site against nginx serving the same directory, in the same run.
//!
//! Run: `cargo bench -p vibebase --bench hosting` (needs `nginx` and `wrk` on PATH; Debian packages).
//! Optional arguments: `-- SECONDS CONNECTIONS` for each wrk run (default 10 s, 64 connections).
//! nginx runs with `worker_processes auto`, `sendfile on` and no access log; vibebase with `RUST_LOG=warn`
//! (no access log either).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ADMIN;
const FILES: usize = 1000;
/// The file both servers are asked for (about 2 KiB of HTML).
const SMALL: &str = "/f/0001.html";

fn cli(base: &str, key: &str, args: &[&str]) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    let out = Command::new(common::BIN).args(args).env("VIBEBASE_URL", base).env("VIBEBASE_KEY", key).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (took, serde_json::from_slice(&out.stdout).unwrap())
}

fn write_site(dir: &Path) {
    std::fs::create_dir_all(dir.join("f")).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>bench</h1>").unwrap();
    for i in 1..FILES {
        let body = format!("<p>page {i}</p>\n").repeat(120);
        std::fs::write(dir.join(format!("f/{i:04}.html")), body).unwrap();
    }
}

/// (requests/s, p99 in ms) from wrk's `--latency` report.
fn wrk(url: &str, host: Option<&str>, seconds: u64, connections: u64) -> (f64, f64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "{text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n / 1000.0,
                "s" => n * 1000.0,
                _ => n,
            }
        })
        .unwrap_or(f64::NAN);
    (rps, p99)
}

fn start_nginx(dir: &Path, root: &Path) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  default_type text/html;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, url)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let nums: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let seconds = nums.first().copied().unwrap_or(10);
    let connections = nums.get(1).copied().unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    write_site(&site);
    let (mut child, base) = common::serve::<&str>(&dir.path().join("data"), ADMIN, &[]).await;
    let (_, env) = cli(&base, ADMIN, &["env", "create", "--id", "bench", "--json"]);
    let secret = env["keys"]["secret"].as_str().unwrap().to_owned();
    let site_arg = site.to_str().unwrap();

    let (first, v1) = cli(&base, &secret, &["deploy", "--env", "bench", site_arg, "--publish", "--json"]);
    let (again, _) = cli(&base, &secret, &["deploy", "--env", "bench", site_arg, "--publish", "--json"]);
    let v1_id = v1["id"].as_str().unwrap();
    let (rollback, _) = cli(&base, &secret, &["rollback", "--env", "bench", v1_id, "--json"]);

    let client = reqwest::Client::new();
    let r = client.get(format!("{base}{SMALL}")).header("host", "bench.localhost").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let size = r.bytes().await.unwrap().len();

    let (mut nginx, nginx_url) = start_nginx(dir.path(), &site);
    // Warm both (hot-file cache, nginx's open files), then measure each in turn.
    wrk(&format!("{base}{SMALL}"), Some("bench.localhost"), 2, connections);
    wrk(&format!("{nginx_url}{SMALL}"), None, 2, connections);
    let (vb_rps, vb_p99) = wrk(&format!("{base}{SMALL}"), Some("bench.localhost"), seconds, connections);
    let (ng_rps, ng_p99) = wrk(&format!("{nginx_url}{SMALL}"), None, seconds, connections);
    let _ = nginx.kill();
    let _ = nginx.wait();
    let _ = child.kill();
    let _ = child.wait();

    println!("| measure | value |");
    println!("|---|---|");
    println!("| deploy {FILES} files, first (CLI, end to end) | {:.0} ms |", first.as_secs_f64() * 1000.0);
    println!("| deploy {FILES} files, unchanged redeploy | {:.0} ms |", again.as_secs_f64() * 1000.0);
    println!("| rollback (CLI, end to end) | {:.0} ms |", rollback.as_secs_f64() * 1000.0);
    println!(
        "| small file ({size} B), {connections} connections, {seconds} s | vibebase {vb_rps:.0} req/s, p99 {vb_p99:.2} ms |"
    );
    println!("| same file, nginx | {ng_rps:.0} req/s, p99 {ng_p99:.2} ms |");
    println!("| vibebase / nginx throughput | {:.2}× |", vb_rps / ng_rps);
}
