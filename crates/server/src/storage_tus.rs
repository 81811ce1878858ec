//! TUS 1.0.0 resumable uploads at `/env/{env}/storage/v1/upload/resumable`, as Supabase Storage
//! serves them to `tus-js-client`: `OPTIONS` (capabilities), `POST` (create: `Upload-Length`,
//! `Upload-Metadata` with `bucketName`, `objectName`, `contentType`, `cacheControl`, `metadata`;
//! `x-upsert`), `HEAD` (offset), `PATCH` (`application/offset+octet-stream` at `Upload-Offset`),
//! `DELETE` (termination). Every answer carries `Tus-Resumable`; errors are Storage's shape. The
//! state machine is `storage::tus`.

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use protocol::{EnvId, Meter};
use serde_json::Value;
use storage::tus::{NewUpload, Patched, TUS_EXTENSIONS, TUS_VERSION, UploadState};
use storage::{Access, StorageError};

use crate::AppState;
use crate::error::ApiError;
use crate::gate::Caller;
use crate::storage_api::{BodyStream, drain, err};

const OFFSET_CONTENT_TYPE: &str = "application/offset+octet-stream";

fn with_tus(mut r: Response) -> Response {
    r.headers_mut().insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    r
}

fn fail(e: StorageError) -> Response {
    with_tus(err(e))
}

fn set(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The 412 refusal of a request that does not speak TUS 1.0.0 (`Tus-Resumable`).
fn version_refusal(h: &HeaderMap) -> Option<Response> {
    if header_str(h, "tus-resumable") == Some(TUS_VERSION) {
        return None;
    }
    let mut r = with_tus(
        ApiError::new(StatusCode::PRECONDITION_FAILED, "InvalidRequest", "Tus-Resumable: 1.0.0 is required")
            .into_response(),
    );
    set(&mut r, "tus-version", TUS_VERSION);
    Some(r)
}

/// An HTTP date for `Upload-Expires`.
fn http_date(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    crate::storage_api::imf_fixdate(t)
}

fn progress(status: StatusCode, s: &UploadState) -> Response {
    let mut r = with_tus(status.into_response());
    set(&mut r, "upload-offset", &s.offset.to_string());
    set(&mut r, "upload-expires", &http_date(s.expires_at_ms));
    r
}

async fn env_access(state: &AppState, caller: &Caller, headers: &HeaderMap) -> Result<(EnvId, Access), Response> {
    let Some(env) = caller.env.clone() else {
        return Err(fail(StorageError::NoSuchBucket));
    };
    let auth = match crate::data::request_auth(state, caller, headers).await {
        Ok(a) => a,
        Err(e) => {
            return Err(with_tus(ApiError::new(StatusCode::BAD_REQUEST, "InvalidJWT", e.message).into_response()));
        }
    };
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    Ok((env, Access::Request(auth)))
}

/// Whether `path` is the resumable-upload endpoint or an upload under it (path or host form).
pub fn is_tus_path(path: &str) -> bool {
    let rest = path.strip_prefix("/env/").and_then(|p| p.split_once('/')).map_or(path, |(_, r)| r);
    let rest = rest.trim_start_matches('/');
    rest == "storage/v1/upload/resumable" || rest.starts_with("storage/v1/upload/resumable/")
}

/// What this server speaks (`OPTIONS`, no credentials needed, as on Supabase).
pub fn capability_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-max-size", HeaderValue::from(storage::MAX_OBJECT_BYTES));
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (a value may be absent).
fn parse_metadata(h: &str) -> Result<Vec<(String, String)>, StorageError> {
    let bad = || StorageError::InvalidRequest("Upload-Metadata is malformed".to_owned());
    let mut out = Vec::new();
    for pair in h.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.split(' ');
        let key = it.next().filter(|k| !k.is_empty()).ok_or_else(bad)?;
        let value = match it.next() {
            None => String::new(),
            Some(v) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(v).map_err(|_| bad())?;
                String::from_utf8(bytes).map_err(|_| bad())?
            }
        };
        if it.next().is_some() || out.iter().any(|(k, _)| k == key) {
            return Err(bad());
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Where the client continues: absolute, in the address form the request used.
fn location(state: &AppState, headers: &HeaderMap, env: &EnvId, id: &str, signed: bool) -> String {
    let host = header_str(headers, "x-forwarded-host").or_else(|| header_str(headers, "host")).unwrap_or("localhost");
    let proto = header_str(headers, "x-forwarded-proto").filter(|p| *p == "https").unwrap_or("http");
    let apps_domain = &state.platform.config().apps_domain;
    let prefix =
        if crate::address::parse_host(host, apps_domain).is_some() { String::new() } else { format!("/env/{env}") };
    let sign = if signed { "/sign" } else { "" };
    format!("{proto}://{host}{prefix}/storage/v1/upload/resumable{sign}/{id}")
}

/// Who continues an upload: a key of the env (with the request role's policies), or a signed upload
/// URL's token in `x-signature` (its policies were checked when it was signed).
enum Who {
    Keyed(Access),
    Signed,
}

/// `POST …/upload/resumable`: creates an upload (201 with `Location`).
pub async fn create(State(state): State<AppState>, Extension(caller): Extension<Caller>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(r) = version_refusal(&parts.headers) {
        return r;
    }
    let (env, access) = match env_access(&state, &caller, &parts.headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    create_upload(&state, env, Who::Keyed(access), &parts.headers, body).await
}

/// `POST …/upload/resumable/sign`: creates an upload with a signed upload URL's token (`x-signature`).
pub async fn create_signed(State(state): State<AppState>, Path(env): Path<String>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(r) = version_refusal(&parts.headers) {
        return r;
    }
    let env = match crate::auth_api::active_env(&state, &env).await {
        Ok(e) => e,
        Err(r) => return with_tus(r),
    };
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    create_upload(&state, env, Who::Signed, &parts.headers, body).await
}

/// The claims of the `x-signature` token if it grants an upload of `bucket/name`.
fn signature(
    state: &AppState,
    env: &EnvId,
    h: &HeaderMap,
    bucket: &str,
    name: &str,
) -> Result<storage::sign::Claims, StorageError> {
    let Some(token) = header_str(h, "x-signature") else {
        return Err(StorageError::InvalidSignature("Missing x-signature header".to_owned()));
    };
    state.storage.verify_token(env, token, storage::sign::Grant::Upload, bucket, name)
}

async fn create_upload(state: &AppState, env: EnvId, who: Who, h: &HeaderMap, body: axum::body::Body) -> Response {
    if h.contains_key("upload-defer-length") {
        return fail(StorageError::InvalidRequest("Upload-Defer-Length is not supported: send Upload-Length".into()));
    }
    // Bytes may come with the creation request (creation-with-upload, which Supabase's docs turn
    // on), as the first chunk.
    let mut stream: BodyStream = Box::pin(body.into_data_stream().map_err(|e| e.to_string()));
    let content_length = header_str(h, "content-length").and_then(|l| l.parse::<u64>().ok());
    let with_data = header_str(h, "content-type").is_some_and(|c| c.eq_ignore_ascii_case(OFFSET_CONTENT_TYPE));
    if !with_data && content_length.is_some_and(|l| l > 0) {
        return refuse(
            &mut stream,
            fail(StorageError::InvalidRequest(format!(
                "a creation request carries data only as {OFFSET_CONTENT_TYPE}"
            ))),
        )
        .await;
    }
    let Some(length) = header_str(h, "upload-length").and_then(|l| l.parse::<u64>().ok()) else {
        return refuse(
            &mut stream,
            fail(StorageError::InvalidRequest("Upload-Length must be a non-negative integer".into())),
        )
        .await;
    };
    let meta = match header_str(h, "upload-metadata").map(parse_metadata).transpose() {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => return refuse(&mut stream, fail(e)).await,
    };
    let field = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let (Some(bucket_id), Some(name)) = (field("bucketName"), field("objectName")) else {
        let e = StorageError::InvalidRequest("Upload-Metadata must name bucketName and objectName".into());
        return refuse(&mut stream, fail(e)).await;
    };
    let user_metadata = match field("metadata") {
        None => None,
        Some(m) => match serde_json::from_str::<Value>(&m) {
            Ok(v) => Some(v),
            Err(_) => {
                return refuse(&mut stream, fail(StorageError::InvalidRequest("metadata must be JSON".into()))).await;
            }
        },
    };
    // As Supabase: a number of seconds becomes max-age, anything else no-cache.
    let cache_control = match field("cacheControl") {
        Some(c) if !c.is_empty() && c.chars().all(|d| d.is_ascii_digit()) => format!("max-age={c}"),
        _ => "no-cache".to_owned(),
    };
    let (access, owner, upsert, signed) = match who {
        Who::Keyed(access) => {
            let owner = access.owner();
            (access, owner, header_str(h, "x-upsert") == Some("true"), false)
        }
        Who::Signed => match signature(state, &env, h, &bucket_id, &name) {
            Ok(claims) => (Access::Trusted, claims.owner, claims.upsert, true),
            Err(e) => return refuse(&mut stream, fail(e)).await,
        },
    };
    let new = NewUpload {
        bucket_id,
        name,
        length,
        content_type: field("contentType")
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into()),
        cache_control,
        upsert,
        user_metadata,
        owner,
    };
    let mut created = match state.storage.tus_create(&env, &access, new).await {
        Ok(s) => s,
        Err(e) => return refuse(&mut stream, fail(e)).await,
    };
    if with_data && created.length > 0 {
        match state.storage.tus_patch(&env, &access, &created.id, 0, content_length, &mut stream).await {
            Ok(Patched::Progress(s) | Patched::Complete(s, _)) => created = s,
            Err(e) => {
                // The client starts over with a new upload; this one goes now rather than at expiry.
                if let Err(t) = state.storage.tus_terminate(&env, &access, &created.id).await {
                    tracing::debug!(error = %t, "could not drop an upload whose first chunk failed");
                }
                return refuse(&mut stream, fail(e)).await;
            }
        }
    }
    let mut r = progress(StatusCode::CREATED, &created);
    set(&mut r, "location", &location(state, h, &env, &created.id, signed));
    r
}

/// The env, access and upload id of a request on `…/upload/resumable/sign/{id}`: the env active, the
/// upload's bucket and name granted by the `x-signature` token.
async fn signed_upload(state: &AppState, env: &str, id: &str, h: &HeaderMap) -> Result<(EnvId, Access), Response> {
    let env = crate::auth_api::active_env(state, env).await.map_err(with_tus)?;
    state.platform.meter(&env, Meter::StorageOps, ("surface", "storage"), 1);
    let (bucket, name) = state.storage.tus_target(&env, id).await.map_err(fail)?;
    signature(state, &env, h, &bucket, &name).map_err(fail)?;
    Ok((env, Access::Trusted))
}

/// Who may touch an existing upload: the gate's caller (keyed routes) or a signed-upload token for it
/// (the `sign` routes, `env` from the path). The TUS version is checked first.
async fn upload_access(
    state: &AppState,
    caller: Option<&Caller>,
    env: &str,
    id: &str,
    h: &HeaderMap,
) -> Result<(EnvId, Access), Response> {
    if let Some(r) = version_refusal(h) {
        return Err(r);
    }
    match caller {
        Some(caller) => env_access(state, caller, h).await,
        None => signed_upload(state, env, id, h).await,
    }
}

/// `HEAD …/upload/resumable/{id}`: where the upload stands.
pub async fn head(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match upload_access(&state, Some(&caller), &env, &id, &headers).await {
        Ok((env, access)) => head_upload(&state, &env, &access, &id).await,
        Err(r) => r,
    }
}

/// `HEAD …/upload/resumable/sign/{id}`.
pub async fn head_signed(
    State(state): State<AppState>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match upload_access(&state, None, &env, &id, &headers).await {
        Ok((env, access)) => head_upload(&state, &env, &access, &id).await,
        Err(r) => r,
    }
}

async fn head_upload(state: &AppState, env: &EnvId, access: &Access, id: &str) -> Response {
    match state.storage.tus_state(env, access, id).await {
        Ok(s) => {
            let mut r = progress(StatusCode::OK, &s);
            set(&mut r, "upload-length", &s.length.to_string());
            set(&mut r, "cache-control", "no-store");
            r
        }
        Err(e) => fail(e),
    }
}

/// `PATCH …/upload/resumable/{id}`: a chunk at `Upload-Offset` (204 with the new offset).
pub async fn patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((env, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    patch_with(&state, Some(&caller), &env, &id, req).await
}

/// `PATCH …/upload/resumable/sign/{id}`.
pub async fn patch_signed(
    State(state): State<AppState>,
    Path((env, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    patch_with(&state, None, &env, &id, req).await
}

async fn patch_with(state: &AppState, caller: Option<&Caller>, env: &str, id: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut stream: BodyStream = Box::pin(body.into_data_stream().map_err(|e| e.to_string()));
    match upload_access(state, caller, env, id, &parts.headers).await {
        Ok((env, access)) => patch_upload(state, &env, &access, id, &parts.headers, stream).await,
        Err(r) => refuse(&mut stream, r).await,
    }
}

async fn patch_upload(
    state: &AppState,
    env: &EnvId,
    access: &Access,
    id: &str,
    h: &HeaderMap,
    mut stream: BodyStream,
) -> Response {
    let content_type = header_str(h, "content-type").unwrap_or("");
    if !content_type.eq_ignore_ascii_case(OFFSET_CONTENT_TYPE) {
        let r = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "InvalidRequest",
            format!("Content-Type must be {OFFSET_CONTENT_TYPE}"),
        );
        return refuse(&mut stream, with_tus(r.into_response())).await;
    }
    let Some(offset) = header_str(h, "upload-offset").and_then(|o| o.parse::<u64>().ok()) else {
        let e = StorageError::InvalidRequest("Upload-Offset must be a non-negative integer".into());
        return refuse(&mut stream, fail(e)).await;
    };
    let content_length = header_str(h, "content-length").and_then(|l| l.parse::<u64>().ok());
    match state.storage.tus_patch(env, access, id, offset, content_length, &mut stream).await {
        Ok(Patched::Progress(s)) => progress(StatusCode::NO_CONTENT, &s),
        Ok(Patched::Complete(s, _)) => {
            let mut r = progress(StatusCode::NO_CONTENT, &s);
            set(&mut r, "tus-complete", "1");
            r
        }
        Err(e) => refuse(&mut stream, fail(e)).await,
    }
}

/// Reads what is left of a refused PATCH's body (bounded), so the client reads the answer.
async fn refuse(stream: &mut BodyStream, r: Response) -> Response {
    drain(stream).await;
    r
}

/// `DELETE …/upload/resumable/{id}`: drops the upload and its parts (204).
pub async fn terminate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match upload_access(&state, Some(&caller), &env, &id, &headers).await {
        Ok((env, access)) => terminate_upload(&state, &env, &access, &id).await,
        Err(r) => r,
    }
}

/// `DELETE …/upload/resumable/sign/{id}`.
pub async fn terminate_signed(
    State(state): State<AppState>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match upload_access(&state, None, &env, &id, &headers).await {
        Ok((env, access)) => terminate_upload(&state, &env, &access, &id).await,
        Err(r) => r,
    }
}

async fn terminate_upload(state: &AppState, env: &EnvId, access: &Access, id: &str) -> Response {
    match state.storage.tus_terminate(env, access, id).await {
        Ok(()) => with_tus(StatusCode::NO_CONTENT.into_response()),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tus_paths() {
        assert!(is_tus_path("/env/a-b/storage/v1/upload/resumable"));
        assert!(is_tus_path("/env/a-b/storage/v1/upload/resumable/x"));
        assert!(is_tus_path("/storage/v1/upload/resumable"));
        assert!(!is_tus_path("/env/a-b/storage/v1/object/x"));
        assert!(!is_tus_path("/env/a-b/storage/v1/upload/resumables"));
    }

    #[test]
    fn upload_metadata() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let h = format!("bucketName {},objectName {}, empty", b("docs"), b("a/b.txt"));
        let Ok(m) = parse_metadata(&h) else { panic!("valid metadata refused") };
        assert_eq!(m[0], ("bucketName".to_owned(), "docs".to_owned()));
        assert_eq!(m[1], ("objectName".to_owned(), "a/b.txt".to_owned()));
        assert_eq!(m[2], ("empty".to_owned(), String::new()));
        assert!(parse_metadata("bucketName !!!").is_err());
        assert!(parse_metadata(&format!("k {},k {}", b("a"), b("b"))).is_err());
        assert!(parse_metadata("k a b").is_err());
        assert!(
            parse_metadata(&format!("k {}", base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe]))).is_err()
        );
    }
}
