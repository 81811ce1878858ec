//! Usage ledger, quotas (402), soft-limit alerts and rate limits (429).

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::harness::{EnvKeysExt, Harness};

#[tokio::test]
async fn every_surface_request_is_metered_once_per_env() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let b = h.create_env("other").await;
    for _ in 0..5 {
        h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await;
    }
    for _ in 0..2 {
        h.call("GET", "/env/shop/storage/v1/b", Some(a.secret()), None).await;
    }
    h.call("GET", "/v1/envs/shop", Some(a.secret()), None).await;
    // Refused requests are not billed to the env they targeted.
    h.call("GET", "/env/shop/rest/v1/t", Some(b.publishable()), None).await;
    h.call("GET", "/env/shop/rest/v1/t", None, None).await;
    h.platform.flush_meters().await.unwrap();
    let r = h.call("GET", "/v1/envs/shop/usage?granularity=minute", Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let total =
        r.json["totals"].as_array().unwrap().iter().find(|t| t["meter"] == "api_requests").unwrap()["quantity"].clone();
    // 5 + 2 + 1 by the env's own keys; the operator's report itself is not billed to the tenant.
    assert_eq!(total, json!(8), "{}", r.text);
    assert!(!r.json["buckets"].as_array().unwrap().is_empty());
    let csv = h.call("GET", "/v1/envs/shop/usage?format=csv", Some(&h.admin), None).await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert!(csv.text.starts_with("env,meter,from,to,quantity\n"), "{}", csv.text);
    assert!(csv.text.lines().any(|l| l.starts_with("shop,api_requests,")), "{}", csv.text);
    // The platform-wide report holds both envs; B's request total is 0 (its only request was refused).
    let all = h.call("GET", "/v1/usage", Some(&h.admin), None).await;
    let envs: Vec<&str> = all.json["totals"].as_array().unwrap().iter().map(|t| t["env"].as_str().unwrap()).collect();
    assert!(envs.contains(&"shop") && !envs.contains(&"other"), "{envs:?}");
}

#[tokio::test]
async fn usage_events_are_idempotent() {
    let h = Harness::new().await;
    h.create_env("shop").await;
    let ev = json!({"meter": "llm_tokens_in", "quantity": 120, "source": "gateway", "event_id": "call-1", "dimensions": {"model": "m"}});
    let r = h.call("POST", "/v1/envs/shop/usage/events", Some(&h.admin), Some(ev.clone())).await;
    assert_eq!(r.json["recorded"], true, "{}", r.text);
    let r = h.call("POST", "/v1/envs/shop/usage/events", Some(&h.admin), Some(ev)).await;
    assert_eq!(r.json["recorded"], false);
    let other = json!({"meter": "llm_tokens_in", "quantity": 30, "source": "gateway", "event_id": "call-2"});
    h.call("POST", "/v1/envs/shop/usage/events", Some(&h.admin), Some(other)).await;
    let r = h.call("GET", "/v1/envs/shop/usage", Some(&h.admin), None).await;
    let tokens =
        r.json["totals"].as_array().unwrap().iter().find(|t| t["meter"] == "llm_tokens_in").unwrap()["quantity"]
            .clone();
    assert_eq!(tokens, json!(150));
    // A flush of buffered meters empties the buffer, so a second flush writes nothing again.
    let a = h.call("GET", "/v1/envs/shop/keys/rotate", Some(&h.admin), None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let secret = h.call("POST", "/v1/envs/shop/keys/rotate", Some(&h.admin), Some(json!({"kind": "secret"}))).await;
    h.call("GET", "/v1/envs/shop", Some(secret.json["key"].as_str().unwrap()), None).await;
    assert_eq!(h.platform.flush_meters().await.unwrap(), 1);
    assert_eq!(h.platform.flush_meters().await.unwrap(), 0);
}

#[tokio::test]
async fn hard_quota_answers_402_naming_the_quota_and_spares_the_operator() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let limits = json!({"quotas": [{"meter": "api_requests", "period": "day", "hard_limit": 3}]});
    assert_eq!(h.call("PUT", "/v1/envs/shop/limits", Some(&h.admin), Some(limits)).await.status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let r = h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.text);
    assert_eq!(r.json["code"], "quota_exceeded_api_requests");
    // On /v1 the shape is the platform's, with the same code.
    let r = h.call("GET", "/v1/envs/shop", Some(a.secret()), None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("quota_exceeded_api_requests"))
    );
    // The operator can still read and raise the limit.
    let raise = json!({"quotas": [{"meter": "api_requests", "period": "day", "hard_limit": 1000}]});
    assert_eq!(h.call("PUT", "/v1/envs/shop/limits", Some(&h.admin), Some(raise)).await.status, StatusCode::OK);
    assert_eq!(h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await.status, StatusCode::NOT_FOUND);
    // Quotas reset with their period.
    let again = json!({"quotas": [{"meter": "api_requests", "period": "minute", "hard_limit": 1}]});
    h.call("PUT", "/v1/envs/shop/limits", Some(&h.admin), Some(again)).await;
    h.clock.advance(Duration::from_secs(61));
    assert_eq!(h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await.status,
        StatusCode::PAYMENT_REQUIRED
    );
}

#[tokio::test]
async fn soft_limit_records_one_alert_per_period_and_queues_a_webhook() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let hook = json!({"url": "http://127.0.0.1:9/hook", "events": ["quota.alert"], "env": "shop"});
    let hook = h.call("POST", "/v1/webhooks", Some(&h.admin), Some(hook)).await;
    let limits = json!({"quotas": [{"meter": "api_requests", "period": "month", "soft_limit": 2}]});
    h.call("PUT", "/v1/envs/shop/limits", Some(&h.admin), Some(limits)).await;
    for _ in 0..4 {
        h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None).await;
        h.platform.flush_meters().await.unwrap();
    }
    let r = h.call("GET", "/v1/envs/shop/alerts", Some(a.secret()), None).await;
    let alerts = r.json["items"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{}", r.text);
    assert_eq!(alerts[0]["meter"], "api_requests");
    assert_eq!(alerts[0]["soft_limit"], 2);
    let d = h
        .call("GET", &format!("/v1/webhooks/{}/deliveries", hook.json["id"].as_str().unwrap()), Some(&h.admin), None)
        .await;
    let deliveries = d.json["items"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{}", d.text);
    assert_eq!(deliveries[0]["event_type"], "quota.alert");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let h = Harness::new().await;
    let a = h.create_env("shop").await;
    let limits = json!({"rate_limit_per_second": 1, "rate_limit_burst": 2});
    h.call("PUT", "/v1/envs/shop/limits", Some(&h.admin), Some(limits)).await;
    let hit = || h.call("GET", "/env/shop/rest/v1/t", Some(a.publishable()), None);
    assert_eq!(hit().await.status, StatusCode::NOT_FOUND);
    assert_eq!(hit().await.status, StatusCode::NOT_FOUND);
    let r = hit().await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json["code"], "rate_limited");
    assert_eq!(r.headers["retry-after"], "1");
    h.clock.advance(Duration::from_millis(1100));
    assert_eq!(hit().await.status, StatusCode::NOT_FOUND);
    // Another env is not affected by this env's limit.
    let b = h.create_env("other").await;
    assert_eq!(h.call("GET", "/env/other/rest/v1/t", Some(b.publishable()), None).await.status, StatusCode::NOT_FOUND);
}
