//! Webhook deliveries to a real HTTP receiver on loopback: signatures, retries with backoff, the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::harness::Harness;

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    failures_left: Arc<Mutex<u32>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    r.got.lock().unwrap().push((headers, body));
    let mut left = r.failures_left.lock().unwrap();
    if *left > 0 {
        *left -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn start_receiver(fail_first: u32) -> (Receiver, String) {
    let receiver = Receiver { failures_left: Arc::new(Mutex::new(fail_first)), ..Default::default() };
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, url)
}

#[tokio::test]
async fn deliveries_are_signed_and_carry_the_event() {
    let h = Harness::new().await;
    let (receiver, url) = start_receiver(0).await;
    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&h.admin),
            Some(json!({"url": url, "events": ["env.created", "env.deleted"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.json["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // The secret is shown once.
    let list = h.call("GET", "/v1/webhooks", Some(&h.admin), None).await;
    assert!(!list.text.contains(&secret));
    h.create_env("shop").await;
    h.call("POST", "/v1/envs/shop/suspend", Some(&h.admin), None).await; // not subscribed
    let client = reqwest::Client::new();
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 1);
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["type"], "env.created");
    assert_eq!(event["env"], "shop");
    let id = headers["webhook-id"].to_str().unwrap();
    let ts: i64 = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    let expected = platform::webhooks::sign(&secret, id, ts, body);
    assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected);
    assert_ne!(platform::webhooks::sign("whsec_b3RoZXI=", id, ts, body), expected, "another secret signs differently");
    // Delivered once: nothing is due any more.
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 0);
    let log = h
        .call("GET", &format!("/v1/webhooks/{}/deliveries", r.json["id"].as_str().unwrap()), Some(&h.admin), None)
        .await;
    assert_eq!(log.json["items"][0]["status"], "delivered");
    assert_eq!(log.json["items"][0]["attempts"], 1);
}

#[tokio::test]
async fn failed_deliveries_retry_with_backoff_until_they_succeed() {
    let h = Harness::new().await;
    let (receiver, url) = start_receiver(2).await;
    let r = h.call("POST", "/v1/webhooks", Some(&h.admin), Some(json!({"url": url, "events": ["*"]}))).await;
    let hook = r.json["id"].as_str().unwrap().to_owned();
    h.create_env("shop").await;
    let client = reqwest::Client::new();
    let log_path = format!("/v1/webhooks/{hook}/deliveries");
    let log = || h.call("GET", &log_path, Some(&h.admin), None);
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 1);
    let l = log().await;
    assert_eq!(
        (l.json["items"][0]["status"].as_str(), l.json["items"][0]["attempts"].as_i64()),
        (Some("pending"), Some(1))
    );
    assert_eq!(l.json["items"][0]["last_status_code"], 500);
    // Not due again before its backoff.
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 0);
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 1);
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 0, "second backoff is longer");
    h.clock.advance(Duration::from_secs(3));
    assert_eq!(h.platform.deliver_due_webhooks(&client).await.unwrap(), 1);
    let l = log().await;
    assert_eq!(
        (l.json["items"][0]["status"].as_str(), l.json["items"][0]["attempts"].as_i64()),
        (Some("delivered"), Some(3))
    );
    assert_eq!(receiver.got.lock().unwrap().len(), 3);
    // The same message id on every attempt, so receivers can de-duplicate.
    let ids: Vec<String> =
        receiver.got.lock().unwrap().iter().map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn unreachable_receivers_are_marked_failed_after_the_last_attempt() {
    let h = Harness::new().await;
    // Port 9 (discard) is closed on loopback: every attempt fails to connect.
    let r = h
        .call("POST", "/v1/webhooks", Some(&h.admin), Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})))
        .await;
    let hook = r.json["id"].as_str().unwrap().to_owned();
    h.create_env("shop").await;
    let client = reqwest::Client::new();
    for _ in 0..platform::webhooks::MAX_ATTEMPTS {
        h.platform.deliver_due_webhooks(&client).await.unwrap();
        h.clock.advance(Duration::from_secs(3600));
    }
    let l = h.call("GET", &format!("/v1/webhooks/{hook}/deliveries"), Some(&h.admin), None).await;
    assert_eq!(l.json["items"][0]["status"], "failed", "{}", l.text);
    assert_eq!(l.json["items"][0]["attempts"], platform::webhooks::MAX_ATTEMPTS);
    assert_eq!(l.json["items"][0]["last_error"], "connection failed");
}
