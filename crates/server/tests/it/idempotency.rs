//! `Idempotency-Key` on the `/v1` API: a repeated mutation gets the first answer back and has no second
//! effect; the key cannot be reused for another request; a secret is never kept or shown twice.

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Harness, Resp};

async fn post(h: &Harness, path: &str, key: &str, idem: &str, body: Value) -> Resp {
    h.send(
        "POST",
        path,
        &[("authorization", format!("Bearer {key}")), ("idempotency-key", idem.to_owned())],
        Some(body.to_string()),
    )
    .await
}

async fn session_count(h: &Harness, key: &str) -> usize {
    let r = h.call("GET", "/v1/envs/shop/sessions", Some(key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_repeated_mutation_gets_the_first_answer_and_has_no_second_effect() {
    let h = Harness::new().await;
    let key = h.create_env("shop").await.secret().to_owned();
    let first = post(&h, "/v1/envs/shop/sessions", &key, "create-1", json!({"title": "one"})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = post(&h, "/v1/envs/shop/sessions", &key, "create-1", json!({"title": "one"})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json, first.json, "the same session, not a second one");
    assert_eq!(session_count(&h, &key).await, 1);

    // The same key for another request is refused, and changes nothing.
    let other = post(&h, "/v1/envs/shop/sessions", &key, "create-1", json!({"title": "two"})).await;
    assert_eq!(
        (other.status, other.json["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused"))
    );
    assert_eq!(session_count(&h, &key).await, 1);

    // Another key is another request; a request without a key is never deduplicated.
    assert_eq!(
        post(&h, "/v1/envs/shop/sessions", &key, "create-2", json!({"title": "one"})).await.status,
        StatusCode::CREATED
    );
    let plain = h.call("POST", "/v1/envs/shop/sessions", Some(&key), Some(json!({"title": "one"}))).await;
    assert_eq!(plain.status, StatusCode::CREATED);
    assert_eq!(session_count(&h, &key).await, 3);

    // Keys are per caller: the operator's "create-1" is not the env key's.
    let admin = post(&h, "/v1/envs/shop/sessions", &h.admin, "create-1", json!({"title": "one"})).await;
    assert_eq!(admin.status, StatusCode::CREATED, "{}", admin.text);
    assert!(admin.headers.get("idempotent-replayed").is_none());
    assert_ne!(admin.json["id"], first.json["id"]);
}

#[tokio::test]
async fn a_refusal_is_replayed_too_and_bad_keys_are_refused() {
    let h = Harness::new().await;
    let key = h.create_env("shop").await.secret().to_owned();
    let bad = post(&h, "/v1/envs/shop/sessions", &key, "bad-id", json!({"id": "not valid!"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let again = post(&h, "/v1/envs/shop/sessions", &key, "bad-id", json!({"id": "not valid!"})).await;
    assert_eq!(
        (again.status, again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap())),
        (StatusCode::BAD_REQUEST, Some("true"))
    );
    // The same error (the request id is the new request's own).
    assert_eq!((&again.json["code"], &again.json["message"]), (&bad.json["code"], &bad.json["message"]));

    for idem in ["x".repeat(256), "with space".to_owned(), "tab\tkey".to_owned()] {
        let r = h
            .send(
                "POST",
                "/v1/envs/shop/sessions",
                &[("authorization", format!("Bearer {key}")), ("idempotency-key", idem.clone())],
                Some(json!({}).to_string()),
            )
            .await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_idempotency_key")),
            "{idem:?}"
        );
    }
    assert_eq!(session_count(&h, &key).await, 0, "refused requests wrote nothing");
}

#[tokio::test]
async fn an_answer_with_a_secret_is_not_kept_and_not_shown_twice() {
    let h = Harness::new().await;
    let first = post(&h, "/v1/envs", &h.admin, "env-1", json!({"id": "idem-env"})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let secret = first.json["keys"]["secret"].as_str().unwrap().to_owned();
    let again = post(&h, "/v1/envs", &h.admin, "env-1", json!({"id": "idem-env"})).await;
    assert_eq!(
        (again.status, again.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_answer_withheld")),
        "{}",
        again.text
    );
    assert!(!again.text.contains(&secret));
    // Nothing of the secret is in the platform store's record of the key.
    let stored: Vec<Option<String>> = h
        .platform
        .db()
        .tx(|c: &mut dyn store::Conn| {
            c.query("SELECT body FROM idempotency_keys", &[])?
                .iter()
                .map(|r| r.opt_text(0))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    assert!(stored.iter().flatten().all(|b| !b.contains(&secret)), "{stored:?}");
    let envs = h.call("GET", "/v1/envs", Some(&h.admin), None).await;
    assert_eq!(envs.json["items"].as_array().unwrap().iter().filter(|e| e["id"] == "idem-env").count(), 1);
}
