//! `vibebase deploy` and `vibebase rollback` against the real binary, and the listener's answers to
//! hostile clients of a site.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::{Server, json, scale_out_args, tempdir};

/// GET `path` of the env's site through its host form (`<env>.localhost`), on the real listener.
fn site_get(server: &Server, host: &str, path: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let r = client.get(format!("{}{path}", server.url)).header("host", host).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn deploy_redeploy_and_rollback_from_the_cli() {
    let tmp = tempdir();
    let admin = "hosting-cli-admin-key-0123456789";
    let server = Server::start(&tmp.path().join("data"), &scale_out_args("hosting"), Some(admin));
    let created = json(&server.cli(admin, &["env", "create", "--id", "shop", "--json"]));
    let secret = created["keys"]["secret"].as_str().unwrap().to_owned();
    let site = tmp.path().join("dist");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::create_dir_all(site.join(".git")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>v1</h1>").unwrap();
    std::fs::write(site.join("assets/app-BXkqJzPa.js"), "console.log('app')").unwrap();
    std::fs::write(site.join(".env"), "SECRET=hunter2").unwrap();
    std::fs::write(site.join(".git/config"), "[core]").unwrap();
    let dir = site.to_str().unwrap();

    let v1 = server.cli(&secret, &["deploy", "--env", "shop", dir, "--publish"]);
    assert!(v1.status.success(), "{}", String::from_utf8_lossy(&v1.stderr));
    let text = String::from_utf8_lossy(&v1.stdout).into_owned();
    let v1_id = text.lines().next().unwrap().to_owned();
    assert!(v1_id.starts_with("dpl") && v1_id.len() == 13, "{text}");
    assert!(text.contains(&format!("preview:      http://{v1_id}--shop.localhost")), "{text}");
    assert!(text.contains("site:         http://shop.localhost") && text.contains("(published)"), "{text}");
    assert!(String::from_utf8_lossy(&v1.stderr).contains("2 files, 2 to upload"));
    assert_eq!(site_get(&server, "shop.localhost", "/"), (200, "<h1>v1</h1>".to_owned()));
    assert_eq!(site_get(&server, "shop.localhost", "/.env").0, 404);
    assert_eq!(site_get(&server, "shop.localhost", "/.git/config").0, 404);

    // A redeploy uploads only the changed file; publishing it switches the site.
    std::fs::write(site.join("index.html"), "<h1>v2</h1>").unwrap();
    let v2 = json(&server.cli(&secret, &["deploy", "--env", "shop", dir, "--publish", "--json"]));
    assert_eq!(v2["published"], true);
    assert_eq!(site_get(&server, "shop.localhost", "/"), (200, "<h1>v2</h1>".to_owned()));
    let v2_id = v2["id"].as_str().unwrap();
    let preview_path = v2["urls"]["preview_path"].as_str().unwrap().replace(&server.url, "");
    assert_eq!(site_get(&server, "127.0.0.1", &preview_path), (200, "<h1>v2</h1>".to_owned()));

    let back = server.cli(&secret, &["rollback", "--env", "shop", &v1_id]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    assert_eq!(site_get(&server, "shop.localhost", "/"), (200, "<h1>v1</h1>".to_owned()));
    let list = json(&server.cli(&secret, &["deployments", "--env", "shop", "--json"]));
    let ids: Vec<&str> = list["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [v2_id, v1_id.as_str()]);
    // Exit codes: unknown deployment 4, missing directory 2.
    assert_eq!(server.cli(&secret, &["rollback", "--env", "shop", "dplaaaaaaaaaa"]).status.code(), Some(4));
    assert_eq!(server.cli(&secret, &["deploy", "--env", "shop", "/nonexistent/dir"]).status.code(), Some(2));

    // Huge request headers are refused by the listener before any handler runs.
    let mut tcp = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = "a".repeat(1024 * 1024);
    let _ = write!(tcp, "GET / HTTP/1.1\r\nHost: shop.localhost\r\nX-Huge: {huge}\r\n\r\n");
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(200)]);
    // The server is still serving.
    assert_eq!(site_get(&server, "shop.localhost", "/").0, 200);
}
