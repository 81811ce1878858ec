//! Supabase Storage's HTTP API (`/env/{env}/storage/v1/…`) over the `storage` crate, as
//! `@supabase/storage-js` calls it: buckets, objects (multipart or raw uploads, streamed both ways,
//! Range, ETag), list, move, copy, remove, signed download and upload URLs, public objects. The gate
//! has authenticated the key; the request role and end-user claims come from [`crate::data::request_auth`],
//! so RLS on `storage.objects` sees the same `auth.uid()` as the data API. Errors are Storage's shape.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use protocol::{EnvId, Meter};
use serde_json::{Value, json};
use storage::names::percent_decode_path;
use storage::sign::Grant;
use storage::{Access, BucketChange, ListOptions, NewBucket, StorageError, UploadOptions};

use crate::AppState;
use crate::error::ApiError;
use crate::gate::Caller;

/// Largest JSON body of a storage API call (bucket settings, list options, names to remove).
const MAX_JSON: usize = 1024 * 1024;
/// Largest multipart header block or text field before the file part.
const MAX_FIELD: usize = 64 * 1024;

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if matches!(e, StorageError::Internal(_)) {
            tracing::error!(error = %e, "storage failed");
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.code(), "internal error");
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code(), e.to_string())
    }
}

pub(crate) fn err(e: StorageError) -> Response {
    ApiError::from(e).into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    err(StorageError::InvalidRequest(message.into()))
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn json_body(body: Body) -> Result<Value, Response> {
    let bytes = axum::body::to_bytes(body, MAX_JSON).await.map_err(|_| err(StorageError::EntityTooLarge))?;
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("body is not valid JSON: {e}")))
}

/// `bucket/the/name` (raw, percent-encoded) → (bucket, name), both decoded.
fn bucket_and_name(raw: &str) -> Result<(String, String), StorageError> {
    let (b, n) = raw.split_once('/').ok_or_else(|| StorageError::InvalidKey("Invalid key: no object name".into()))?;
    let bucket = percent_decode_path(b)?;
    let name = percent_decode_path(n)?;
    storage::names::object_name(&name)?;
    Ok((bucket, name))
}

/// The storage API behind a key (everything but public objects and signed URLs' downloads/uploads).
pub async fn dispatch(State(state): State<AppState>, Extension(caller): Extension<Caller>, req: Request) -> Response {
    let Some(env) = caller.env.clone() else {
        return err(StorageError::NoSuchBucket);
    };
    let (parts, body) = req.into_parts();
    let auth = match crate::data::request_auth(&state, &caller, &parts.headers).await {
        Ok(a) => a,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, "InvalidJWT", e.message).into_response(),
    };
    let access = Access::Request(auth);
    let path = parts.uri.path();
    let rest = path.split_once("/storage/v1/").map_or("", |(_, r)| r).to_owned();
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    let s = &state.storage;
    let method = parts.method.clone();
    if let Some(object_path) = rest.strip_prefix("object/") {
        return object_route(&state, &env, &access, &method, object_path, &parts.headers, body).await;
    }
    let segs: Vec<&str> = rest.splitn(3, '/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["bucket"] | ["bucket", ""]) => match s.list_buckets(&env, &access).await {
            Ok(b) => ok(Value::Array(b.iter().map(storage::Bucket::to_json).collect())),
            Err(e) => err(e),
        },
        (&Method::POST, ["bucket"] | ["bucket", ""]) => {
            let v = match json_body(body).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(id) = v.get("id").or_else(|| v.get("name")).and_then(Value::as_str).map(str::to_owned) else {
                return invalid("body must have an id");
            };
            let b = match bucket_settings(&v) {
                Ok(c) => NewBucket {
                    id: id.clone(),
                    public: c.public.unwrap_or(false),
                    file_size_limit: c.file_size_limit.flatten(),
                    allowed_mime_types: c.allowed_mime_types.flatten(),
                },
                Err(e) => return err(e),
            };
            match s.create_bucket(&env, &access, b).await {
                Ok(()) => ok(json!({"name": id})),
                Err(e) => err(e),
            }
        }
        (&Method::GET, ["bucket", id]) => match s.get_bucket(&env, &access, &decode(id)).await {
            Ok(b) => ok(b.to_json()),
            Err(e) => err(e),
        },
        (&Method::PUT, ["bucket", id]) => {
            let v = match json_body(body).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let change = match bucket_settings(&v) {
                Ok(c) => c,
                Err(e) => return err(e),
            };
            match s.update_bucket(&env, &access, &decode(id), change).await {
                Ok(()) => ok(json!({"message": "Successfully updated"})),
                Err(e) => err(e),
            }
        }
        (&Method::DELETE, ["bucket", id]) => match s.delete_bucket(&env, &access, &decode(id)).await {
            Ok(()) => ok(json!({"message": "Successfully deleted"})),
            Err(e) => err(e),
        },
        (&Method::POST, ["bucket", id, "empty"]) => match s.empty_bucket(&env, &access, &decode(id)).await {
            Ok(_) => ok(json!({"message": "Successfully emptied"})),
            Err(e) => err(e),
        },
        _ => err(StorageError::InvalidRequest(format!("no such storage route: {method} /{rest}"))),
    }
}

fn decode(s: &str) -> String {
    percent_decode_path(s).unwrap_or_default()
}

/// Bucket settings of a create or update body.
/// A bucket's settings as `POST`/`PUT /bucket` take them (fields left out: `None`).
pub(crate) fn bucket_settings(v: &Value) -> Result<BucketChange, StorageError> {
    let public = match v.get("public") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(StorageError::InvalidRequest("public must be a boolean".into())),
    };
    let file_size_limit = match v.get("file_size_limit") {
        None => None,
        Some(x) => Some(storage::names::parse_size(x)?),
    };
    let allowed_mime_types = match v.get("allowed_mime_types") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for m in a {
                match m.as_str() {
                    Some(m) => out.push(m.to_owned()),
                    None => return Err(StorageError::InvalidRequest("allowed_mime_types must be strings".into())),
                }
            }
            Some(Some(out))
        }
        Some(_) => return Err(StorageError::InvalidRequest("allowed_mime_types must be a list".into())),
    };
    Ok(BucketChange { public, file_size_limit, allowed_mime_types })
}

#[allow(clippy::too_many_arguments)]
async fn object_route(
    state: &AppState,
    env: &EnvId,
    access: &Access,
    method: &Method,
    rest: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let s = &state.storage;
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    match (method, head) {
        (&Method::POST, "list") => {
            let v = match json_body(body).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let num = |k: &str, d: u64| v.get(k).and_then(Value::as_u64).unwrap_or(d);
            let sort = v.get("sortBy").cloned().unwrap_or(Value::Null);
            let o = ListOptions {
                prefix: v.get("prefix").and_then(Value::as_str).unwrap_or("").to_owned(),
                limit: num("limit", 100).min(1000) as usize,
                offset: num("offset", 0) as usize,
                search: v.get("search").and_then(Value::as_str).unwrap_or("").to_owned(),
                sort_column: sort.get("column").and_then(Value::as_str).unwrap_or("name").to_owned(),
                sort_desc: sort.get("order").and_then(Value::as_str).is_some_and(|o| o.eq_ignore_ascii_case("desc")),
            };
            match s.list(env, access, &decode(tail), o).await {
                Ok(items) => ok(Value::Array(items)),
                Err(e) => err(e),
            }
        }
        (&Method::POST, "move" | "copy") if tail.is_empty() => {
            let v = match json_body(body).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(bucket), Some(from), Some(to)) = (field("bucketId"), field("sourceKey"), field("destinationKey"))
            else {
                return invalid("bucketId, sourceKey and destinationKey are required");
            };
            let to_bucket = field("destinationBucket").unwrap_or_else(|| bucket.clone());
            if head == "move" {
                match s.move_object(env, access, (&bucket, &from), (&to_bucket, &to)).await {
                    Ok(()) => ok(json!({"message": "Successfully moved"})),
                    Err(e) => err(e),
                }
            } else {
                let upsert = header_str(headers, "x-upsert") == Some("true");
                match s.copy_object(env, access, (&bucket, &from), (&to_bucket, &to), upsert).await {
                    Ok(o) => ok(json!({"Id": o.id, "Key": format!("{to_bucket}/{to}"), "name": to})),
                    Err(e) => err(e),
                }
            }
        }
        (&Method::GET, "info") => {
            let raw = tail.strip_prefix("authenticated/").unwrap_or(tail);
            let (bucket, name) = match bucket_and_name(raw) {
                Ok(x) => x,
                Err(e) => return err(e),
            };
            match s.object(env, access, &bucket, &name).await {
                Ok(o) => ok(o.info_json()),
                Err(e) => err(e),
            }
        }
        (&Method::POST, "sign") => sign_download(state, env, access, tail, body).await,
        (&Method::POST, "upload") if tail.starts_with("sign/") => {
            let (bucket, name) = match bucket_and_name(&tail["sign/".len()..]) {
                Ok(x) => x,
                Err(e) => return err(e),
            };
            let upsert = header_str(headers, "x-upsert") == Some("true");
            match s.sign_upload(env, access, &bucket, &name, upsert).await {
                Ok((url, token)) => ok(json!({"url": url, "token": token})),
                Err(e) => err(e),
            }
        }
        (&Method::DELETE, _) if tail.is_empty() => {
            let v = match json_body(body).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(prefixes) = v.get("prefixes").and_then(Value::as_array) else {
                return invalid("prefixes must be a list of names");
            };
            let mut list = Vec::new();
            for p in prefixes {
                match p.as_str().or_else(|| p.get("path").and_then(Value::as_str)) {
                    Some(n) => list.push(n.to_owned()),
                    None => return invalid("prefixes must be names"),
                }
            }
            match s.remove(env, access, &decode(head), list).await {
                Ok(removed) => ok(Value::Array(removed.iter().map(storage::Object::to_json).collect())),
                Err(e) => err(e),
            }
        }
        (&Method::DELETE, _) => {
            let (bucket, name) = match bucket_and_name(rest) {
                Ok(x) => x,
                Err(e) => return err(e),
            };
            match s.remove(env, access, &bucket, vec![name]).await {
                Ok(removed) if removed.is_empty() => err(StorageError::NoSuchKey),
                Ok(_) => ok(json!({"message": "Successfully deleted"})),
                Err(e) => err(e),
            }
        }
        (&Method::GET | &Method::HEAD, _) => {
            let raw = rest.strip_prefix("authenticated/").unwrap_or(rest);
            let (bucket, name) = match bucket_and_name(raw) {
                Ok(x) => x,
                Err(e) => return err(e),
            };
            serve_object(state, env, access, &bucket, &name, method, headers).await
        }
        (&Method::POST | &Method::PUT, _) => {
            let (bucket, name) = match bucket_and_name(rest) {
                Ok(x) => x,
                Err(e) => return err(e),
            };
            // PUT replaces (storage-js `update`); POST creates unless `x-upsert: true`.
            let upsert = *method == Method::PUT || header_str(headers, "x-upsert") == Some("true");
            upload(state, env, access, &bucket, &name, upsert, access.owner(), headers, body).await
        }
        _ => invalid(format!("no such storage route: {method} /object/{rest}")),
    }
}

async fn sign_download(state: &AppState, env: &EnvId, access: &Access, tail: &str, body: Body) -> Response {
    let v = match json_body(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(expires_in) = v.get("expiresIn").and_then(Value::as_i64) else {
        return invalid("expiresIn (seconds) is required");
    };
    let s = &state.storage;
    if !tail.contains('/') {
        // Several objects of one bucket: one answer each, errors inline.
        let Some(paths) = v.get("paths").and_then(Value::as_array) else {
            return invalid("paths must be a list of names");
        };
        if paths.len() > storage::MAX_BATCH {
            return invalid(format!("at most {} paths", storage::MAX_BATCH));
        }
        let bucket = decode(tail);
        let mut out = Vec::new();
        for p in paths {
            let name = p.as_str().unwrap_or("").to_owned();
            out.push(match s.sign_download(env, access, &bucket, &name, expires_in).await {
                Ok(url) => json!({"error": null, "path": name, "signedURL": url}),
                Err(_) => json!({
                    "error": "Either the object does not exist or you do not have access to it",
                    "path": name,
                    "signedURL": null,
                }),
            });
        }
        return ok(Value::Array(out));
    }
    let (bucket, name) = match bucket_and_name(tail) {
        Ok(x) => x,
        Err(e) => return err(e),
    };
    match s.sign_download(env, access, &bucket, &name, expires_in).await {
        Ok(url) => ok(json!({"signedURL": url})),
        Err(e) => err(e),
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    state: &AppState,
    env: &EnvId,
    access: &Access,
    bucket: &str,
    name: &str,
    upsert: bool,
    owner: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or("application/octet-stream").to_owned();
    let user_metadata = match header_str(headers, "x-metadata") {
        None => None,
        Some(b64) => {
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                Some(v) => Some(v),
                None => return invalid("x-metadata must be base64 of a JSON object"),
            }
        }
    };
    let mut stream: BodyStream = Box::pin(body.into_data_stream().map_err(|e| e.to_string()));
    let result = if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        let Some(boundary) = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 200)
        else {
            drain(&mut stream).await;
            return invalid("multipart body without a boundary");
        };
        let mut file = match multipart_file(stream, &boundary).await {
            Ok(f) => f,
            Err(m) => return invalid(m),
        };
        let cache = file.fields.iter().find(|(k, _)| k == "cacheControl").map(|(_, v)| v.clone());
        let metadata = file
            .fields
            .iter()
            .find(|(k, _)| k == "metadata")
            .and_then(|(_, v)| serde_json::from_str::<Value>(v).ok())
            .or(user_metadata);
        let opts = UploadOptions {
            content_type: file.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned()),
            cache_control: cache_control(cache.as_deref().unwrap_or("3600")),
            upsert,
            user_metadata: metadata,
            content_length: None,
            owner,
        };
        let r = state.storage.upload(env, access, bucket, name, opts, &mut file.body).await;
        if r.is_err() {
            drain(&mut file.body).await;
        }
        r
    } else {
        let opts = UploadOptions {
            content_type,
            cache_control: cache_control(header_str(headers, header::CACHE_CONTROL).unwrap_or("max-age=3600")),
            upsert,
            user_metadata,
            content_length: header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse().ok()),
            owner,
        };
        let r = state.storage.upload(env, access, bucket, name, opts, &mut stream).await;
        if r.is_err() {
            drain(&mut stream).await;
        }
        r
    };
    match result {
        Ok(o) => ok(json!({"Id": o.id, "Key": format!("{bucket}/{name}")})),
        Err(e) => err(e),
    }
}

/// Reads (and drops) what is left of a refused upload's body, a bounded amount for a bounded time, so
/// the client reads the error instead of a reset connection.
pub(crate) async fn drain(body: &mut BodyStream) {
    const MAX_DRAIN: usize = 8 * 1024 * 1024;
    let mut drained = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while drained < MAX_DRAIN {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len(),
            _ => break,
        }
    }
}

/// `3600` or `max-age=3600` → `max-age=3600`; anything else as given.
fn cache_control(v: &str) -> String {
    let v = v.trim();
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) { format!("max-age={v}") } else { v.to_owned() }
}

/// A `Range: bytes=…` header against an object of `size` bytes: `Ok(None)` for no (or an ignored
/// multi-part) range, `Err(())` when it cannot be satisfied.
fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() { size } else { b.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(size) };
        (start, end)
    };
    if start >= size || end <= start {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Streams an object (or a range of it) with its content type, length, ETag and cache control.
async fn serve_object(
    state: &AppState,
    env: &EnvId,
    access: &Access,
    bucket: &str,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let s = &state.storage;
    let object = match s.object(env, access, bucket, name).await {
        Ok(o) => o,
        Err(e) => return err(e),
    };
    let size = u64::try_from(object.size()).unwrap_or(0);
    let etag = object.etag().to_owned();
    let mut common = HeaderMap::new();
    let mut set = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            common.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, object.mimetype());
    set(header::CACHE_CONTROL, object.cache_control());
    set(header::ETAG, &etag);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::LAST_MODIFIED, &http_date(&object.updated_at));
    if !etag.is_empty()
        && header_str(headers, header::IF_NONE_MATCH)
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().extend(common);
        return r;
    }
    let range = match parse_range(header_str(headers, header::RANGE), size) {
        Ok(r) => r,
        Err(()) => {
            let mut r = err(StorageError::InvalidRequest("range not satisfiable".to_owned()));
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let (status, len) = match range {
        Some((a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{}/{size}", b - 1)) {
                common.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, b - a)
        }
        None => (StatusCode::OK, size),
    };
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if *method == Method::HEAD {
        let mut r = status.into_response();
        r.headers_mut().extend(common);
        return r;
    }
    let read = if size == 0 {
        None
    } else {
        match s.read(env, &object, range.map(|(a, b)| (a, Some(b)))).await {
            Ok(r) => Some(r),
            Err(e) => return err(e),
        }
    };
    let body = match read {
        None => Body::empty(),
        Some(read) => {
            let (platform, env) = (state.platform.clone(), env.clone());
            Body::from_stream(read.stream.inspect_ok(move |chunk| {
                platform.meter(&env, Meter::EgressBytes, ("surface", "storage"), chunk.len() as i64);
            }))
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().extend(common);
    r
}

/// An RFC 3339 time as an HTTP date (`Last-Modified`); empty if it does not parse.
fn http_date(rfc3339: &str) -> String {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| imf_fixdate(t.to_offset(time::UtcOffset::UTC)))
        .unwrap_or_default()
}

/// A UTC time in HTTP's date format (RFC 9110 IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn imf_fixdate(t: time::OffsetDateTime) -> String {
    let (wd, mo) = (t.weekday().to_string(), t.month().to_string());
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        &wd[..3.min(wd.len())],
        t.day(),
        &mo[..3.min(mo.len())],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `GET|HEAD /env/{env}/storage/v1/object/public/{bucket}/{name}`: an object of a public bucket,
/// no credentials.
pub async fn public_object(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let Some((env, rest)) = env_and_rest(&parts.uri, "/storage/v1/object/public/") else {
        return err(StorageError::NoSuchBucket);
    };
    let env = match crate::auth_api::active_env(&state, &env).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let (bucket, name) = match bucket_and_name(&rest) {
        Ok(x) => x,
        Err(e) => return err(e),
    };
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    match state.storage.public_bucket(&env, &bucket).await {
        Ok(()) => serve_object(&state, &env, &Access::Trusted, &bucket, &name, &parts.method, &parts.headers).await,
        Err(e) => err(e),
    }
}

fn env_and_rest(uri: &http::Uri, marker: &str) -> Option<(String, String)> {
    let path = uri.path().strip_prefix("/env/")?;
    let (env, rest) = path.split_once('/')?;
    let rest = format!("/{rest}");
    Some((env.to_owned(), rest.strip_prefix(marker)?.to_owned()))
}

fn token_of(uri: &http::Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|p| p.strip_prefix("token=")).map(|t| percent_decode_path(t).unwrap_or_default())
}

/// The env, bucket, name and verified token claims of a signed-URL request under `marker`.
async fn signed_target(
    state: &AppState,
    uri: &http::Uri,
    marker: &str,
    grant: Grant,
) -> Result<(EnvId, String, String, storage::sign::Claims), Response> {
    let Some((env, rest)) = env_and_rest(uri, marker) else {
        return Err(err(StorageError::NoSuchKey));
    };
    let env = crate::auth_api::active_env(state, &env).await?;
    let (bucket, name) = bucket_and_name(&rest).map_err(err)?;
    let Some(token) = token_of(uri) else {
        return Err(err(StorageError::InvalidSignature("token query parameter is required".to_owned())));
    };
    let claims = state.storage.verify_token(&env, &token, grant, &bucket, &name).map_err(err)?;
    Ok((env, bucket, name, claims))
}

/// `GET /env/{env}/storage/v1/object/sign/{bucket}/{name}?token=…`: download with a signed URL.
pub async fn signed_download(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let (env, bucket, name, _) =
        match signed_target(&state, &parts.uri, "/storage/v1/object/sign/", Grant::Download).await {
            Ok(t) => t,
            Err(r) => return r,
        };
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    serve_object(&state, &env, &Access::Trusted, &bucket, &name, &parts.method, &parts.headers).await
}

/// `PUT /env/{env}/storage/v1/object/upload/sign/{bucket}/{name}?token=…`: upload with a signed
/// upload URL (its policies were checked when it was signed).
pub async fn signed_upload(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (env, bucket, name, claims) =
        match signed_target(&state, &parts.uri, "/storage/v1/object/upload/sign/", Grant::Upload).await {
            Ok(t) => t,
            Err(r) => return r,
        };
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    upload(&state, &env, &Access::Trusted, &bucket, &name, claims.upsert, claims.owner, &parts.headers, body).await
}

/// The file part of a `multipart/form-data` upload: the text fields before it, its content type, and
/// its bytes as a stream (read from the request as they are consumed).
struct FilePart {
    fields: Vec<(String, String)>,
    content_type: Option<String>,
    body: BodyStream,
}

pub(crate) type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Reads from `body` into `buf` until `needle` appears (its position) or `limit` bytes are buffered.
async fn fill_until(body: &mut BodyStream, buf: &mut BytesMut, needle: &[u8], limit: usize) -> Result<usize, String> {
    loop {
        if let Some(p) = memchr::memmem::find(buf, needle) {
            return Ok(p);
        }
        if buf.len() > limit {
            return Err("malformed multipart body (part header or field too large)".to_owned());
        }
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(e),
            None => return Err("malformed multipart body (unexpected end)".to_owned()),
        }
    }
}

fn disposition_param(head: &str, param: &str) -> Option<String> {
    let line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    line.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(param)).then(|| v.trim().trim_matches('"').to_owned())
    })
}

async fn multipart_file(mut body: BodyStream, boundary: &str) -> Result<FilePart, String> {
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let mut buf = BytesMut::new();
    let start = fill_until(&mut body, &mut buf, dash.as_bytes(), MAX_FIELD).await?;
    let _ = buf.split_to(start + dash.len());
    let mut fields = Vec::new();
    loop {
        // After a delimiter: `--` ends the body, CRLF starts a part.
        while buf.len() < 2 {
            match body.next().await {
                Some(Ok(c)) => buf.extend_from_slice(&c),
                Some(Err(e)) => return Err(e),
                None => return Err("malformed multipart body (unexpected end)".to_owned()),
            }
        }
        if buf.starts_with(b"--") {
            return Err("the multipart body has no file".to_owned());
        }
        let _ = buf.split_to(2);
        let head_end = fill_until(&mut body, &mut buf, b"\r\n\r\n", MAX_FIELD).await?;
        let head = String::from_utf8_lossy(&buf.split_to(head_end + 4)).into_owned();
        let name = disposition_param(&head, "name").unwrap_or_default();
        let is_file = disposition_param(&head, "filename").is_some() || name.is_empty();
        if is_file {
            let content_type = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-type").then(|| v.trim().to_owned())
            });
            let stream = futures_util::stream::try_unfold(
                (body, buf, delimiter, false),
                |(mut body, mut buf, delim, done)| async move {
                    if done {
                        return Ok(None);
                    }
                    loop {
                        if let Some(p) = memchr::memmem::find(&buf, &delim) {
                            let chunk = buf.split_to(p).freeze();
                            return Ok(Some((chunk, (body, buf, delim, true))));
                        }
                        // Everything but a possible partial delimiter at the end can go.
                        if buf.len() > delim.len() + 64 * 1024 {
                            let chunk = buf.split_to(buf.len() - delim.len()).freeze();
                            return Ok(Some((chunk, (body, buf, delim, false))));
                        }
                        match body.next().await {
                            Some(Ok(c)) => buf.extend_from_slice(&c),
                            Some(Err(e)) => return Err(e),
                            None => return Err("malformed multipart body (unterminated file part)".to_owned()),
                        }
                    }
                },
            );
            return Ok(FilePart { fields, content_type, body: Box::pin(stream) });
        }
        let end = fill_until(&mut body, &mut buf, &delimiter, MAX_FIELD).await?;
        let value = String::from_utf8_lossy(&buf.split_to(end)).into_owned();
        let _ = buf.split_to(delimiter.len());
        fields.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: Vec<&'static [u8]>) -> BodyStream {
        Box::pin(futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))))
    }

    #[tokio::test]
    async fn multipart_file_streams_the_file_part() {
        let body = stream_of(vec![
            b"--xy\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n36",
            b"00\r\n--xy\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: image/png\r\n\r\nhel",
            b"lo\r\n--x",
            b"y--\r\n",
        ]);
        let Ok(f) = multipart_file(body, "xy").await else { panic!("parse failed") };
        assert_eq!(f.fields, vec![("cacheControl".to_owned(), "3600".to_owned())]);
        assert_eq!(f.content_type.as_deref(), Some("image/png"));
        let bytes: Vec<Bytes> = f.body.try_collect().await.unwrap_or_default();
        assert_eq!(bytes.concat(), b"hello");
        let unterminated =
            stream_of(vec![b"--xy\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nabc"]);
        let Ok(f) = multipart_file(unterminated, "xy").await else { panic!("parse failed") };
        assert!(f.body.try_collect::<Vec<Bytes>>().await.is_err());
        assert!(multipart_file(stream_of(vec![b"--xy--\r\n"]), "xy").await.is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Ok(Some((0, 5))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 10))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 10))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse_range(None, 10), Ok(None));
    }
}
