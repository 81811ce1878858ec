//! `Idempotency-Key` on the `/v1` API: a client (an agent loop, a deploy script) that sends a mutation
//! again after a lost answer gets the first answer back instead of a second effect.
//!
//! A mutating `/v1` request with the header is recorded under its caller (the env for env credentials,
//! the principal otherwise) and key, with a fingerprint of the request (method, path and query, content
//! type, body). Then:
//! - the first request runs; its answer (2xx or 4xx but 429, a text body of at most 1 MiB, or the
//!   error) is stored for 24 hours; a 5xx, a 429 or a streamed or larger answer releases the key, so the
//!   request may be retried;
//! - a repeat with the same fingerprint gets the stored answer, with `Idempotent-Replayed: true`;
//!   except where that answer held a secret (a new env's secret key, a minted token: shown once), which
//!   is never stored: the repeat is refused (409 `idempotency_answer_withheld`) without a second effect;
//! - the same key with another request is refused (422 `idempotency_key_reused`);
//! - a repeat while the first still runs is refused (409 `idempotency_key_in_progress`); a claim older
//!   than [`ABANDONED_AFTER_MS`] (its instance died) is taken over.
//!
//! Bodies of requests with the header are read whole, up to [`MAX_BODY`] (413
//! `idempotency_body_too_large` above it; send such a request without the header).

use axum::body::{Body, HttpBody as _};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use sha2::Digest as _;
use store::{Conn, Db, StoreError};

use crate::error::ApiError;
use crate::gate::Caller;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long an answer is kept.
const KEEP_MS: i64 = 24 * 3600 * 1000;
/// A claim whose request has run this long is taken to be abandoned by a dead instance.
const ABANDONED_AFTER_MS: i64 = 10 * 60 * 1000;
/// Largest request body read for a fingerprint.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// Largest answer stored.
const MAX_ANSWER: usize = 1024 * 1024;

/// What a claim found.
enum Claim {
    /// The key is this request's now: run it.
    Run,
    /// The stored answer of an earlier run of the same request.
    Replay {
        status: u16,
        content_type: String,
        body: String,
    },
    /// An earlier run of the same request answered with a secret, which is not kept.
    Withheld {
        status: i64,
    },
    Reused,
    InProgress,
}

/// What is kept of an answer.
enum Stored {
    Answer(String),
    SecretWithheld,
}

/// Whether `text` holds a credential other than a publishable key (a string with a key's shape and
/// checksum).
fn holds_secret(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| tenancy::credential::parse(word).is_ok_and(|k| k.kind != protocol::api::KeyKind::Publishable))
}

/// Whether `method` on the `/v1` API may carry a key.
pub fn applies(method: &http::Method) -> bool {
    matches!(*method, http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE)
}

/// Registers the removal of an env's keys with the env.
pub fn register_delete_hook(platform: &platform::Platform) {
    let db = platform.db().clone();
    platform.on_env_delete(std::sync::Arc::new(move |env| {
        let db = db.clone();
        Box::pin(
            async move { db.delete_env_rows(env.as_str(), &["idempotency_keys"]).await.map_err(|e| e.to_string()) },
        )
    }));
}

/// Runs `req` under its `Idempotency-Key` (see the module).
pub async fn run(db: &Db, now_ms: i64, caller: &Caller, key: &HeaderValue, req: Request, next: Next) -> Response {
    let Some(key) =
        key.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
    else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key is 1..=255 visible ASCII characters",
        )
        .into_response();
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "idempotency_body_too_large",
            format!("a request with Idempotency-Key carries at most {MAX_BODY} bytes; send larger ones without it"),
        )
        .into_response();
    };
    let mut h = sha2::Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update([0]);
    h.update(parts.uri.path_and_query().map_or("", |p| p.as_str()).as_bytes());
    h.update([0]);
    h.update(parts.headers.get(http::header::CONTENT_TYPE).map_or(&b""[..], HeaderValue::as_bytes));
    h.update([0]);
    h.update(&bytes);
    let fingerprint = hex::encode(h.finalize());
    let env = caller.env.as_ref().map(ToString::to_string).unwrap_or_default();
    let scope = match caller.principal.bound_env() {
        Some(own) => format!("env:{own}"),
        None => caller.principal.actor(),
    };
    let row = Row { scope, key: key.to_owned(), env };
    let claim = {
        let (row, fingerprint) = (row.clone(), fingerprint.clone());
        db.tx(move |c: &mut dyn Conn| claim(c, &row, &fingerprint, now_ms)).await
    };
    match claim {
        Err(e) => return ApiError::from(platform::PlatformError::from(e)).into_response(),
        Ok(Claim::Reused) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request",
            )
            .into_response();
        }
        Ok(Claim::InProgress) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still running; retry later",
            )
            .into_response();
        }
        Ok(Claim::Withheld { status }) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_answer_withheld",
                format!(
                    "a request with this Idempotency-Key was answered already (HTTP {status}); its answer held a \
                     secret, which is shown only once"
                ),
            )
            .into_response();
        }
        Ok(Claim::Replay { status, content_type, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut r = if content_type == ERROR_TYPE {
                let e: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let (code, message) = (e["code"].as_str().unwrap_or("error"), e["message"].as_str().unwrap_or(""));
                ApiError::new(status, code, message).into_response()
            } else {
                let mut r = Response::new(Body::from(body));
                if let Ok(v) = HeaderValue::from_str(&content_type) {
                    r.headers_mut().insert(http::header::CONTENT_TYPE, v);
                }
                r
            };
            *r.status_mut() = status;
            r.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
            return r;
        }
        Ok(Claim::Run) => {}
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status();
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let storable = !status.is_server_error()
        && status != StatusCode::TOO_MANY_REQUESTS
        && !content_type.starts_with("text/event-stream");
    // An error's body is rendered later, in its surface's shape, from the error itself: keep the error.
    if let Some(e) = response.extensions().get::<ApiError>().filter(|_| storable) {
        let kept = serde_json::json!({"code": e.code, "message": e.message}).to_string();
        save(db, row, status, ERROR_TYPE.to_owned(), Some(Stored::Answer(kept))).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    // Only an answer known to be small is read whole to be kept; any other passes through and releases
    // the key.
    let small = body.size_hint().upper().is_some_and(|n| n <= MAX_ANSWER as u64);
    let (response, stored) = if storable && small {
        match axum::body::to_bytes(body, MAX_ANSWER).await {
            Ok(b) => {
                let text = String::from_utf8(b.to_vec()).ok().map(|t| {
                    // A secret is shown once: what is kept of its answer is only that it succeeded.
                    if holds_secret(&t) { Stored::SecretWithheld } else { Stored::Answer(t) }
                });
                (Response::from_parts(parts, Body::from(b)), text)
            }
            Err(e) => {
                tracing::error!(error = %e, key, "could not read an answer to keep it");
                (
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the answer was lost").into_response(),
                    None,
                )
            }
        }
    } else {
        (Response::from_parts(parts, body), None)
    };
    save(db, row, status, content_type, stored).await;
    response
}

/// Records the answer of the run that holds the key, or releases the key (`None`).
async fn save(db: &Db, row: Row, status: StatusCode, content_type: String, stored: Option<Stored>) {
    let done: Result<(), StoreError> = db
        .tx(move |c: &mut dyn Conn| match stored {
            Some(Stored::SecretWithheld) => c
                .execute(
                    "UPDATE idempotency_keys SET state = 'withheld', status = $3 WHERE scope = $1 AND idem_key = $2",
                    &[row.scope.as_str().into(), row.key.as_str().into(), i64::from(status.as_u16()).into()],
                )
                .map(drop),
            Some(Stored::Answer(text)) => c
                .execute(
                    "UPDATE idempotency_keys SET state = 'done', status = $3, content_type = $4, body = $5 \
                     WHERE scope = $1 AND idem_key = $2",
                    &[
                        row.scope.as_str().into(),
                        row.key.as_str().into(),
                        i64::from(status.as_u16()).into(),
                        content_type.as_str().into(),
                        text.as_str().into(),
                    ],
                )
                .map(drop),
            None => c
                .execute(
                    "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
                    &[row.scope.as_str().into(), row.key.as_str().into()],
                )
                .map(drop),
        })
        .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "could not record the answer to a request with Idempotency-Key");
    }
}

/// The content type under which an error (its code and message) is kept.
const ERROR_TYPE: &str = "application/vnd.vibebase.error+json";

#[derive(Clone)]
struct Row {
    scope: String,
    key: String,
    env: String,
}

fn claim(c: &mut dyn Conn, row: &Row, fingerprint: &str, now: i64) -> Result<Claim, StoreError> {
    c.execute("DELETE FROM idempotency_keys WHERE expires_at < $1", &[now.into()])?;
    let found = c.query_opt(
        "SELECT fingerprint, state, status, content_type, body, created_at FROM idempotency_keys \
         WHERE scope = $1 AND idem_key = $2",
        &[row.scope.as_str().into(), row.key.as_str().into()],
    )?;
    if let Some(f) = found {
        if f.text(0)? != fingerprint {
            return Ok(Claim::Reused);
        }
        if f.text(1)? == "withheld" {
            return Ok(Claim::Withheld { status: f.opt_int(2)?.unwrap_or(200) });
        }
        if f.text(1)? == "done" {
            return Ok(Claim::Replay {
                status: u16::try_from(f.opt_int(2)?.unwrap_or(200)).unwrap_or(200),
                content_type: f.opt_text(3)?.unwrap_or_default(),
                body: f.opt_text(4)?.unwrap_or_default(),
            });
        }
        if now - f.int(5)? < ABANDONED_AFTER_MS {
            return Ok(Claim::InProgress);
        }
        c.execute(
            "UPDATE idempotency_keys SET created_at = $3 WHERE scope = $1 AND idem_key = $2",
            &[row.scope.as_str().into(), row.key.as_str().into(), now.into()],
        )?;
        return Ok(Claim::Run);
    }
    let inserted = c.execute(
        "INSERT INTO idempotency_keys (scope, idem_key, env_id, fingerprint, state, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, 'running', $5, $6) ON CONFLICT DO NOTHING",
        &[
            row.scope.as_str().into(),
            row.key.as_str().into(),
            row.env.as_str().into(),
            fingerprint.into(),
            now.into(),
            (now + KEEP_MS).into(),
        ],
    )?;
    // Lost a race with a concurrent first request.
    Ok(if inserted == 1 { Claim::Run } else { Claim::InProgress })
}
