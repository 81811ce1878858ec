//! What clients see: white-label mode, the OpenAPI document, metrics, health.

use http::StatusCode;
use serde_json::Value;
use server::routes::route_table;

use crate::harness::{EnvKeysExt, Harness};

/// Every request an end user's browser can make to an env: its site, previews and APIs, with and
/// without credentials, valid and not.
async fn browser_visible_text(h: &Harness, publishable: &str) -> String {
    let mut seen = String::new();
    let requests: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("/", vec![("host", "shop.localhost".into())]),
        ("/missing.js", vec![("host", "dpl0000000000--shop.localhost".into())]),
        ("/rest/v1/todos", vec![("host", "shop.localhost".into())]),
        ("/rest/v1/todos", vec![("host", "shop.localhost".into()), ("apikey", publishable.into())]),
        ("/auth/v1/token", vec![("host", "shop.localhost".into()), ("apikey", "garbage".into())]),
        ("/storage/v1/object/x", vec![("host", "shop.localhost".into()), ("apikey", "acme_pk_000".into())]),
        ("/functions/v1/f", vec![("host", "nope.localhost".into()), ("apikey", publishable.into())]),
        ("/env/shop/llm/v1/chat/completions", vec![("authorization", format!("Bearer {publishable}"))]),
        ("/env/shop/rest/v1/t", vec![("origin", "http://shop.localhost".into()), ("apikey", publishable.into())]),
    ];
    for (path, headers) in requests {
        let r = h.send("GET", path, &headers, None).await;
        for (name, value) in &r.headers {
            seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("")));
        }
        seen.push_str(&r.text);
    }
    seen.to_lowercase()
}

#[tokio::test]
async fn white_label_mode_never_names_the_product_to_end_users() {
    let h = Harness::with_config(|c| {
        c.white_label = true;
        c.key_prefix = "acme".to_owned();
    })
    .await;
    let a = h.create_env("shop").await;
    assert!(a.publishable().starts_with("acme_pk_"));
    let seen = browser_visible_text(&h, a.publishable()).await;
    assert!(!seen.contains("vibebase"), "white-label leak:\n{seen}");
    // The same requests without white-label do name it (the test can tell the two apart).
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    assert!(browser_visible_text(&h, a.publishable()).await.contains("vibebase"));
}

#[tokio::test]
async fn openapi_documents_every_v1_route_of_the_table() {
    let h = Harness::new().await;
    let r = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let mut count = 0;
    for spec in route_table().iter().filter(|s| server::openapi::documented(s)) {
        let op = &doc["paths"][spec.path][spec.method.to_lowercase()];
        assert!(op.is_object(), "{} {} missing from /openapi.json", spec.method, spec.path);
        assert!(op["responses"][spec.response.0.to_string()].is_object(), "{} {}", spec.method, spec.path);
        if spec.path.starts_with("/v1") {
            assert!(op["security"].is_array(), "{} {}", spec.method, spec.path);
            for code in ["400", "401", "403", "404", "429"] {
                assert!(op["responses"][code].is_object(), "{} {} lacks {code}", spec.method, spec.path);
            }
            count += 1;
        }
    }
    assert!(count >= 28, "{count}");
    // Every referenced schema exists.
    let text = doc.to_string();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "missing schema {name}");
    }
}

#[tokio::test]
async fn health_and_metrics_answer_without_credentials() {
    let h = Harness::new().await;
    h.create_env("shop").await;
    let r = h.call("GET", "/healthz", None, None).await;
    assert_eq!((r.status, r.json["status"].clone()), (StatusCode::OK, Value::from("ok")));
    h.call("GET", "/env/shop/rest/v1/t", None, None).await;
    let m = h.call("GET", "/metrics", None, None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert!(m.text.contains("environments 1\n"), "{}", m.text);
    assert!(m.text.contains("http_requests_total{surface=\"rest\",status=\"401\"} 1"), "{}", m.text);
    assert!(!m.text.contains("shop"), "metrics carry no tenant ids");
}
