//! Custom domains through the router: attach, prove ownership through the TXT double, serve by Host
//! exactly like `<env>.<apps-domain>`, one verified owner per name, detaching stops serving at once,
//! and bad input with stable codes.

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Harness, Resp};

/// A published one-page site (`index.html` = `html`) of `env`, as an archive.
async fn publish_site(h: &Harness, env: &str, key: &str, html: &str) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(html.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "index.html", html.as_bytes()).unwrap();
    let data = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &data).unwrap();
    let body = gz.finish().unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("/v1/envs/{env}/deployments/archive?publish=true"))
        .header("authorization", format!("Bearer {key}"));
    req = req.header("content-type", "application/gzip");
    let r = server::handle(h.router.clone(), "localhost", req.body(axum::body::Body::from(body)).unwrap()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn on_host(h: &Harness, host: &str, path: &str) -> Resp {
    h.send("GET", path, &[("host", host.to_owned())], None).await
}

async fn add(h: &Harness, env: &str, key: &str, domain: &str) -> Resp {
    h.call("POST", &format!("/v1/envs/{env}/domains"), Some(key), Some(json!({"domain": domain}))).await
}

fn token(r: &Resp) -> String {
    r.json["verification"]["value"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_verified_domain_serves_its_env_like_the_apps_domain_and_stops_when_detached() {
    let h = Harness::new().await;
    let shop = h.create_env("shop").await;
    let other = h.create_env("other").await;
    publish_site(&h, "shop", shop.secret(), "<h1>shop</h1>").await;
    publish_site(&h, "other", other.secret(), "<h1>other</h1>").await;

    let r = add(&h, "shop", shop.secret(), "WWW.Shop.Example.").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["domain"], "www.shop.example");
    assert_eq!(r.json["status"], "pending");
    assert_eq!(r.json["verification"]["kind"], "dns_txt");
    assert_eq!(r.json["verification"]["name"], "_vibebase-challenge.www.shop.example");
    let shop_token = token(&r);

    // Pending: not served; the answer is the platform's plain 404, as for any unknown Host.
    let unknown = on_host(&h, "nobody.example", "/").await;
    let pending = on_host(&h, "www.shop.example", "/").await;
    assert_eq!(pending.status, StatusCode::NOT_FOUND);
    assert_eq!((pending.status, pending.json["code"].clone()), (unknown.status, unknown.json["code"].clone()));
    assert!(!pending.text.contains("shop"), "{}", pending.text);

    // No TXT record yet, then a wrong one: verification fails and nothing changes.
    let path = "/v1/envs/shop/domains/www.shop.example/verify";
    let r = h.call("POST", path, Some(shop.secret()), None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("domain_verification_failed")));
    h.dns.set_txt("_vibebase-challenge.www.shop.example", &["someone-else"]);
    let r = h.call("POST", path, Some(shop.secret()), None).await;
    assert_eq!(r.json["code"], "domain_verification_failed", "{}", r.text);
    assert_eq!(on_host(&h, "www.shop.example", "/").await.status, StatusCode::NOT_FOUND);

    // Another env may claim the name (a claim alone proves nothing), but not verify it with its token.
    let claim = add(&h, "other", other.secret(), "www.shop.example").await;
    assert_eq!(claim.status, StatusCode::CREATED, "{}", claim.text);
    assert_ne!(token(&claim), shop_token);

    h.dns.set_txt("_vibebase-challenge.www.shop.example", &["unrelated", &shop_token]);
    let r = h.call("POST", path, Some(shop.secret()), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "verified");
    assert!(r.json["verified_at"].is_string());
    let r = h.call("POST", "/v1/envs/other/domains/www.shop.example/verify", Some(other.secret()), None).await;
    assert_eq!(r.json["code"], "domain_verification_failed", "{}", r.text);

    // Served exactly like shop.localhost: the site, and the env's APIs under their prefixes.
    let site = on_host(&h, "www.shop.example", "/").await;
    assert_eq!(site.status, StatusCode::OK, "{}", site.text);
    assert_eq!(site.text, "<h1>shop</h1>");
    let with_port = on_host(&h, "WWW.SHOP.EXAMPLE:8080", "/index.html").await;
    assert_eq!(with_port.text, "<h1>shop</h1>");
    let health = on_host(&h, "www.shop.example", "/auth/v1/health").await;
    let apps_health = on_host(&h, "shop.localhost", "/auth/v1/health").await;
    assert_eq!((health.status, health.json.clone()), (apps_health.status, apps_health.json.clone()));
    let (h_ref, pk) = (&h, shop.publishable().to_owned());
    let rest_on = |host: &'static str| {
        let headers = [("host", host.to_owned()), ("apikey", pk.clone())];
        async move { h_ref.send("GET", "/rest/v1/nothing", &headers, None).await }
    };
    let (rest, apps_rest) = (rest_on("www.shop.example").await, rest_on("shop.localhost").await);
    assert_eq!(rest.status, StatusCode::NOT_FOUND, "{}", rest.text);
    assert_eq!(rest.json["code"], apps_rest.json["code"], "PostgREST's own answer: {}", rest.text);
    // Other envs' path forms stay inside shop's site; the platform API is not reachable on the domain.
    let escape = on_host(&h, "www.shop.example", "/env/other/site/").await;
    assert!(!escape.text.contains("other"), "{}", escape.text);
    let api = h.call("GET", "/v1/envs", Some(&h.admin), None).await;
    assert_eq!(api.status, StatusCode::OK);
    let on_domain = h
        .send(
            "GET",
            "/v1/envs",
            &[("host", "www.shop.example".to_owned()), ("authorization", format!("Bearer {}", h.admin))],
            None,
        )
        .await;
    assert_ne!(on_domain.json, api.json);

    // One verified owner: a new claim is refused without naming the owner; the list shows each env
    // only its own rows.
    let third = h.create_env("third").await;
    let r = add(&h, "third", third.secret(), "www.shop.example").await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::CONFLICT, Some("domain_taken")));
    assert!(!r.text.contains("shop\"") && !r.text.contains("/shop"), "{}", r.text);
    let r = add(&h, "shop", shop.secret(), "www.shop.example").await;
    assert_eq!(r.json["code"], "domain_exists", "{}", r.text);
    let list = h.call("GET", "/v1/envs/other/domains", Some(other.secret()), None).await;
    let items = list.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0]["env"].as_str(), items[0]["status"].as_str()), (Some("other"), Some("pending")));
    // Another env's key sees nothing of shop's domains.
    let r = h.call("GET", "/v1/envs/shop/domains/www.shop.example", Some(other.secret()), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Detached: not served from the next request on, and the name is free for a verified owner again.
    let r = h.call("DELETE", "/v1/envs/shop/domains/www.shop.example", Some(shop.secret()), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let gone = on_host(&h, "www.shop.example", "/").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(!gone.text.contains("shop"));
    let r = h.call("DELETE", "/v1/envs/shop/domains/www.shop.example", Some(shop.secret()), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    h.dns.set_txt("_vibebase-challenge.www.shop.example", &[&token(&claim)]);
    let r = h.call("POST", "/v1/envs/other/domains/www.shop.example/verify", Some(other.secret()), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(on_host(&h, "www.shop.example", "/").await.text, "<h1>other</h1>");

    // Deleting the env removes its domains: the name is served no more.
    let r = h.call("DELETE", "/v1/envs/other", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(on_host(&h, "www.shop.example", "/").await.status, StatusCode::NOT_FOUND);

    // Each mutation left its audit row.
    let audit = h.call("GET", "/v1/envs/shop/audit", Some(shop.secret()), None).await;
    let actions: Vec<&str> =
        audit.json["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["domains:Add", "domains:Verify", "domains:Delete"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn bad_domains_are_refused_with_stable_codes_and_nothing_is_written() {
    let h = Harness::new().await;
    let env = h.create_env("shop").await;
    let long_label = format!("{}.example.com", "a".repeat(64));
    let long_name = format!("{}com", "abcdefghi.".repeat(26));
    let cases: [(Value, &str); 14] = [
        (json!({"domain": ""}), "invalid_domain"),
        (json!({"domain": "example"}), "invalid_domain"),
        (json!({"domain": "exa mple.com"}), "invalid_domain"),
        (json!({"domain": "-bad.example.com"}), "invalid_domain"),
        (json!({"domain": "a..b.example.com"}), "invalid_domain"),
        (json!({"domain": "evil.com/x"}), "invalid_domain"),
        (json!({"domain": long_label}), "invalid_domain"),
        (json!({"domain": long_name}), "invalid_domain"),
        (json!({"domain": "127.0.0.1"}), "domain_is_ip_address"),
        (json!({"domain": "[::1]"}), "domain_is_ip_address"),
        (json!({"domain": "localhost"}), "invalid_domain"),
        (json!({"domain": "shop.localhost"}), "domain_reserved"),
        (json!({"domain": "x.y.localhost"}), "domain_reserved"),
        (json!({"domain": "a.example.com", "env": "other"}), "invalid_body"),
    ];
    for (body, code) in cases {
        let r = h.call("POST", "/v1/envs/shop/domains", Some(env.secret()), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.json["code"], code, "{body}: {}", r.text);
    }
    let list = h.call("GET", "/v1/envs/shop/domains", Some(env.secret()), None).await;
    assert_eq!(list.json["items"], json!([]));
    // Under a configured apps domain, the apps domain itself and its subdomains are the platform's.
    let h2 = Harness::with_config(|c| c.apps_domain = "apps.example.com".to_owned()).await;
    let env2 = h2.create_env("shop").await;
    for domain in ["apps.example.com", "shop.apps.example.com", "a.b.apps.example.com"] {
        let r = add(&h2, "shop", env2.secret(), domain).await;
        assert_eq!(r.json["code"], "domain_reserved", "{domain}: {}", r.text);
    }
    let r = add(&h2, "shop", env2.secret(), "myapps.example.com").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Unknown, forged and malformed Hosts get the same 404 and nothing about envs.
    for host in ["myapps.example.com", "unknown.example", "127.0.0.1", "a..b", "x".repeat(300).as_str()] {
        let r = on_host(&h2, host, "/").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{host}");
        assert_eq!(r.json["code"], "route_not_found", "{host}");
    }
    // A name that cannot be a domain is simply not found under the env.
    let r = h.call("GET", "/v1/envs/shop/domains/not_a_domain", Some(env.secret()), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["code"], "domain_not_found");
}
