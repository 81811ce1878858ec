//! Extractors whose rejections answer with the platform's stable error codes instead of axum's text.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: a JSON object of the target shape. Malformed JSON, a non-object, wrong types, unknown
/// fields, NUL characters (no database stores them) and oversized bodies each get their own code.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || m.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
            } else {
                ApiError::bad_request("invalid_body", "could not read the request body")
            }
        })?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("invalid_body", "the body must be a JSON object"));
        }
        if has_nul(&value) {
            return Err(ApiError::bad_request("invalid_body", "strings may not contain NUL characters"));
        }
        let mut value = value;
        integral_floats_to_integers(&mut value);
        serde_json::from_value(value).map(Self).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
    }
}

/// JSON does not distinguish `5` from `5.0`, and JSON Schema calls both integers; serde does. Numbers
/// with no fractional part become integers, so integer fields accept both spellings.
fn integral_floats_to_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                // 2^63: the first value past i64; every integral f64 below it converts exactly.
                if f.fract() == 0.0 && f.abs() < 9.223_372_036_854_776e18 {
                    *v = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// axum's messages name the target type ("Failed to deserialize the JSON body into the target type: …");
/// keep only the part after the first colon, which says what was wrong.
fn body_text(text: &str) -> String {
    text.split_once(": ").map_or(text, |(_, rest)| rest).to_owned()
}

/// Query parameters. Unknown or wrongly typed parameters are a 400 `invalid_query`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request("invalid_query", body_text(&e.body_text())))
            }
            Err(other) => Err(ApiError::bad_request("invalid_query", body_text(&other.body_text()))),
        }
    }
}
