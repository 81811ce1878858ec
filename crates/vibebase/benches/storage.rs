//! Storage benchmark (not a test): upload and download throughput of 1 MB and 100 MB objects through
//! `/storage/v1` (raw body upload, streamed download), against a raw disk copy of the same bytes
//! (`std::fs::copy` in the same data dir) in the same run; then 100 MB through TUS resumable uploads
//! (6 MB chunks) against a plain upload of the same bytes.
//!
//! Run: `cargo bench -p vibebase --bench storage` (optionally `-- ROUNDS`, default 5). It starts the
//! real `vibebase serve` on SQLite + local files in a temp dir and drives it over loopback HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::ADMIN;

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = common::serve::<&str>(dir.path(), ADMIN, &[]).await;
    let client = reqwest::Client::new();
    let env = common::create_env(&client, &base, ADMIN, "bench").await;
    let secret = env["keys"]["secret"].as_str().unwrap().to_owned();
    let api = format!("{base}/env/bench/storage/v1");
    let r = client
        .post(format!("{api}/bucket"))
        .header("apikey", &secret)
        .json(&serde_json::json!({"id": "bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    println!("| size | upload p50 | download p50 | raw disk copy p50 |");
    println!("|---|---|---|---|");
    for (label, size) in [("1 MB", 1024 * 1024), ("100 MB", 100 * 1024 * 1024)] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let (mut up, mut down, mut copy) = (vec![], vec![], vec![]);
        let src = dir.path().join("raw-src.bin");
        std::fs::write(&src, &data).unwrap();
        for i in 0..rounds {
            let t = Instant::now();
            let r = client
                .post(format!("{api}/object/bench/obj-{label}-{i}"))
                .header("apikey", &secret)
                .header("content-type", "application/octet-stream")
                .body(data.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
            up.push(t.elapsed());

            let t = Instant::now();
            let mut r = client
                .get(format!("{api}/object/bench/obj-{label}-{i}"))
                .header("apikey", &secret)
                .send()
                .await
                .unwrap();
            let mut n = 0;
            while let Some(chunk) = r.chunk().await.unwrap() {
                n += chunk.len();
            }
            assert_eq!(n, size);
            down.push(t.elapsed());

            let dst = dir.path().join(format!("raw-dst-{i}.bin"));
            let t = Instant::now();
            // Without fsync, as the object store's local files are written.
            std::fs::copy(&src, &dst).unwrap();
            copy.push(t.elapsed());
            std::fs::remove_file(&dst).unwrap();
        }
        let (u, d, c) = (median(up), median(down), median(copy));
        println!(
            "| {label} | {:.1} ms ({:.0} MB/s) | {:.1} ms ({:.0} MB/s) | {:.1} ms ({:.0} MB/s) |",
            u.as_secs_f64() * 1e3,
            mb_per_s(size, u),
            d.as_secs_f64() * 1e3,
            mb_per_s(size, d),
            c.as_secs_f64() * 1e3,
            mb_per_s(size, c),
        );
    }

    // 100 MB through TUS (tus-js-client's requests: create, then 6 MB PATCHes) against a plain upload
    // of the same bytes, in the same run.
    let size = 100 * 1024 * 1024;
    let chunk = 6 * 1024 * 1024;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let (mut plain, mut resumable) = (vec![], vec![]);
    for i in 0..rounds {
        let t = Instant::now();
        let r = client
            .post(format!("{api}/object/bench/plain-{i}"))
            .header("apikey", &secret)
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        plain.push(t.elapsed());

        let t = Instant::now();
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let r = client
            .post(format!("{api}/upload/resumable"))
            .header("apikey", &secret)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", size.to_string())
            .header("upload-metadata", format!("bucketName {},objectName {}", b64("bench"), b64(&format!("tus-{i}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        for (n, part) in data.chunks(chunk).enumerate() {
            let r = client
                .patch(&location)
                .header("apikey", &secret)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", (n * chunk).to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(part.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap_or_default());
        }
        resumable.push(t.elapsed());
    }
    let (p, t) = (median(plain), median(resumable));
    println!();
    println!("| size | plain upload p50 | TUS upload (6 MB chunks) p50 |");
    println!("|---|---|---|");
    println!(
        "| 100 MB | {:.0} ms ({:.0} MB/s) | {:.0} ms ({:.0} MB/s) |",
        p.as_secs_f64() * 1e3,
        mb_per_s(size, p),
        t.as_secs_f64() * 1e3,
        mb_per_s(size, t),
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
