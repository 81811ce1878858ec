//! Custom domains over HTTPS on the real binary, with certificates ordered on demand from a real ACME
//! CA: Debian's `pebble`, resolving names through `pebble-challtestsrv` (the DNS double, which also
//! holds the ownership TXT record), validating HTTP-01 against the plain listener for real.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Server, free_port, json, scale_out_args, tempdir};

/// A child process killed when dropped.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child =
        cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!("{name} (install Debian's pebble package; scripts/lib.sh vb_install does): {e}")
        });
    Proc(child, name)
}

fn wait_port(p: &mut Proc, port: u16, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!("{} exited with {status}: {}", p.1, std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{} did not listen on {port}", p.1);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The plain listener is up first; the HTTPS one a moment later.
fn wait_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client trusting only `root_pem`, reaching `host` at 127.0.0.1 (the port comes from the URL).
fn https_client(root_pem: &[u8], host: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], 0)))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn issued(pebble_log: &Path) -> usize {
    std::fs::read_to_string(pebble_log).unwrap().matches("Issued certificate serial").count()
}

fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The stored expiry of `domain`'s certificate, first set to `set` (the server must be stopped for
/// SQLite), read from the server's platform database.
fn set_expiry(data: &Path, args: &[String], domain: &str, set: Option<i64>) -> i64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = match args.iter().find_map(|a| a.strip_prefix("--database-url=")) {
            Some(url) => store::Db::connect_postgres(url).await.unwrap(),
            None => store::Db::open_sqlite(&data.join("platform.db")).unwrap(),
        };
        let domain = domain.to_owned();
        db.tx(move |c| {
            if let Some(at) = set {
                c.execute(
                    "UPDATE tls_certificates SET not_after = $1 WHERE domain = $2",
                    &[at.into(), domain.as_str().into()],
                )?;
            }
            c.query_opt("SELECT not_after FROM tls_certificates WHERE domain = $1", &[domain.as_str().into()])?
                .unwrap()
                .int(0)
        })
        .await
        .unwrap()
    })
}

#[test]
fn verified_domains_get_acme_certificates_on_demand_and_unknown_names_get_none() {
    let tmp = tempdir();
    let dir = tmp.path();
    // pebble's own HTTPS listener needs a certificate; the test trusts it for the directory and the
    // management API (vibebase through --acme-ca-root).
    let listener_cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&cert_file, listener_cert.cert.pem()).unwrap();
    std::fs::write(&key_file, listener_cert.signing_key.serialize_pem()).unwrap();

    let (dns_port, dns_mgmt, acme_port, acme_mgmt, tls_port) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let admin = "tls-test-admin-key-0123456789";
    let mut args = scale_out_args("tls");
    args.extend([
        format!("--tls-listen=127.0.0.1:{tls_port}"),
        format!("--acme-directory=https://127.0.0.1:{acme_port}/dir"),
        format!("--acme-ca-root={}", cert_file.display()),
        "--acme-email=ops@example.com".to_owned(),
        format!("--dns-server=127.0.0.1:{dns_port}"),
    ]);
    let server = Server::start(&dir.join("data"), &args, Some(admin));
    let http_port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();

    // The DNS double: every name is 127.0.0.1 (A only), TXT records as the test sets them.
    let dns_log = dir.join("challtestsrv.log");
    let mut dns = spawn(
        "pebble-challtestsrv",
        Command::new("pebble-challtestsrv").args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-management",
            &format!("127.0.0.1:{dns_mgmt}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]),
        &dns_log,
    );
    wait_port(&mut dns, dns_mgmt, &dns_log);
    // The CA: HTTP-01 validations go to vibebase's plain listener, for real (no "always valid").
    let config = json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{acme_mgmt}"),
        "certificate": cert_file,
        "privateKey": key_file,
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    let config_file = dir.join("pebble.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let pebble_log = dir.join("pebble.log");
    let mut pebble = spawn(
        "pebble",
        Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID"),
        &pebble_log,
    );
    wait_port(&mut pebble, acme_port, &pebble_log);
    wait_port(&mut pebble, acme_mgmt, &pebble_log);

    // An env with a published site and a domain verified through the TXT record (real UDP DNS).
    let created = json(&server.cli(admin, &["env", "create", "--id", "shop", "--json"]));
    let secret = created["keys"]["secret"].as_str().unwrap().to_owned();
    let site = dir.join("dist");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>shop over tls</h1>").unwrap();
    let out = server.cli(&secret, &["deploy", "--env", "shop", site.to_str().unwrap(), "--publish"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let domain = "www.shop-domain.test";
    let added = json(&server.cli(&secret, &["domains", "add", "--env", "shop", domain, "--json"]));
    assert_eq!(added["status"], "pending");
    let pending_domain = "pending.shop-domain.test";
    json(&server.cli(&secret, &["domains", "add", "--env", "shop", pending_domain, "--json"]));
    let human = server.cli(&secret, &["domains", "verify", "--env", "shop", domain]);
    assert_eq!(human.status.code(), Some(2), "no TXT record yet: {}", String::from_utf8_lossy(&human.stderr));
    assert!(String::from_utf8_lossy(&human.stderr).contains("domain_verification_failed"));
    let mgmt = reqwest::blocking::Client::new();
    let r = mgmt
        .post(format!("http://127.0.0.1:{dns_mgmt}/set-txt"))
        .body(
            json!({"host": format!("_vibebase-challenge.{domain}."), "value": added["verification"]["value"]})
                .to_string(),
        )
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let verified = json(&server.cli(&secret, &["domains", "verify", "--env", "shop", domain, "--json"]));
    assert_eq!(verified["status"], "verified", "{verified}");
    let listed =
        String::from_utf8_lossy(&server.cli(&secret, &["domains", "list", "--env", "shop"]).stdout).into_owned();
    assert!(listed.contains(domain) && listed.contains("verified") && listed.contains("pending"), "{listed}");

    // The issuing root, from pebble's management API.
    let pebble_trust = https_client(&std::fs::read(&cert_file).unwrap(), "localhost");
    let root = pebble_trust.get(format!("https://127.0.0.1:{acme_mgmt}/roots/0")).send().unwrap();
    assert!(root.status().is_success());
    let root = root.bytes().unwrap().to_vec();

    // The first hello orders the certificate (the CA validates HTTP-01 on the plain listener); the
    // site is served over HTTPS with it.
    let client = https_client(&root, domain);
    let url = format!("https://{domain}:{tls_port}/");
    let r = client.get(&url).send().unwrap_or_else(|e| {
        panic!(
            "{e:?}\nserver: {}\npebble: {}",
            server.stderr.lock().unwrap(),
            std::fs::read_to_string(&pebble_log).unwrap_or_default()
        )
    });
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "<h1>shop over tls</h1>");
    // The env's APIs on the same origin.
    let publishable = created["keys"]["publishable"].as_str().unwrap();
    let health =
        client.get(format!("https://{domain}:{tls_port}/auth/v1/health")).header("apikey", publishable).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Reused, not ordered again: pebble saw one order.
    let again = https_client(&root, domain).get(&url).send().unwrap();
    assert_eq!(again.status().as_u16(), 200);
    assert_eq!(issued(&pebble_log), 1, "{}", std::fs::read_to_string(&pebble_log).unwrap());

    // A restart serves the stored certificate: no new order.
    let data = dir.join("data");
    server.stop();
    let server = Server::start_on(http_port, &data, &args, Some(admin));
    wait_listening(tls_port);
    assert_eq!(https_client(&root, domain).get(&url).send().unwrap().status().as_u16(), 200);
    assert_eq!(issued(&pebble_log), 1);
    // Near expiry (as the store says): still served, and renewed in the background.
    server.stop();
    let issued_expiry = set_expiry(&data, &args, domain, None);
    assert!(issued_expiry > now_ms() + 30 * 24 * 3600 * 1000, "pebble's certificates outlive the renewal window");
    set_expiry(&data, &args, domain, Some(now_ms() + 24 * 3600 * 1000));
    let server = Server::start_on(http_port, &data, &args, Some(admin));
    wait_listening(tls_port);
    assert_eq!(https_client(&root, domain).get(&url).send().unwrap().status().as_u16(), 200);
    let started = Instant::now();
    while issued(&pebble_log) < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "no renewal: {}", server.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    while set_expiry(&data, &args, domain, None) < now_ms() + 30 * 24 * 3600 * 1000 {
        assert!(started.elapsed() < Duration::from_secs(30), "the renewed certificate was not stored");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Unknown and unverified names get no certificate: the handshake fails.
    for name in ["unknown.shop-domain.test", pending_domain] {
        let r = https_client(&root, name).get(format!("https://{name}:{tls_port}/")).send();
        assert!(r.is_err(), "{name} got an answer: {:?}", r.map(|r| r.status()));
    }

    // Detached: no certificate from the next hello on.
    let out = server.cli(&secret, &["domains", "delete", "--env", "shop", domain]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = https_client(&root, domain).get(&url).send();
    assert!(r.is_err(), "a detached domain is still served: {:?}", r.map(|r| r.status()));
    drop((pebble, dns));
    server.stop();
}
