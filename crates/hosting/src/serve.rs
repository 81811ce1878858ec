//! The serving rules. A request path is resolved against the deployment's manifest only:
//! redirects from `vibebase.json`, then the file, `<path>.html`, `<path>/index.html` (clean URLs), then
//! `404.html` with status 404, else `index.html` for extension-less paths (single-page apps), else 404.
//! Dotfiles and unsafe paths are 404 before anything else. Responses carry a strong ETag (the content
//! hash, per encoding), answer `If-None-Match` with 304, single byte ranges with 206, and pick the
//! precompressed brotli or gzip variant by `Accept-Encoding`.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use protocol::{EnvId, Meter};

use crate::compress::{self, Encoding};
use crate::deploy::{Deployment, StoredFile, Target};
use crate::path;
use crate::{Hosting, HostingError, Result};

/// A request to a site, as the HTTP edge hands it over.
pub struct SiteRequest<'a> {
    pub method: &'a Method,
    /// The percent-decoded path below the site root, without its leading `/` (`""`, `about`,
    /// `assets/app.js`, `docs/`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Set by [`Hosting::serve`]: a deployment preview rather than the published site (a meter
    /// dimension).
    pub preview: bool,
}

/// `Cache-Control` of assets whose name carries their content hash.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of everything else: cache, but revalidate (cheap with the ETag).
pub const REVALIDATE: &str = "no-cache";

fn site_not_found() -> HostingError {
    HostingError::NotFound { what: "site" }
}

/// Whether a file name carries a content hash (`app.3f9a1c2b.js`, `index-BXkqJzPa.css`): the segment
/// of the name after its first `.` or `-` is 8–32 word characters with a digit or mixed case.
pub fn is_hashed_asset(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((stem, _ext)) = name.rsplit_once('.') else { return false };
    stem.split(['.', '-']).skip(1).any(|hash| {
        (8..=32).contains(&hash.len())
            && hash.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && (hash.bytes().any(|b| b.is_ascii_digit())
                || (hash.bytes().any(|b| b.is_ascii_uppercase()) && hash.bytes().any(|b| b.is_ascii_lowercase())))
    })
}

/// The best encoding the client accepts among those the file has.
pub fn choose_encoding(accept: Option<&str>, file: &StoredFile) -> Encoding {
    let Some(accept) = accept else { return Encoding::Identity };
    let mut br = false;
    let mut gz = false;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q =
            parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        match token.as_str() {
            "br" => br = true,
            "gzip" | "x-gzip" => gz = true,
            "*" => {
                br = true;
                gz = true;
            }
            _ => {}
        }
    }
    if br && file.br {
        Encoding::Brotli
    } else if gz && file.gz {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

/// A `Range` header against a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No range, or one this server answers with the whole body (several ranges, other units).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Outside the body: 416.
    Unsatisfiable,
}

pub fn parse_range(value: &str, len: u64) -> RangeAsk {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeAsk::Whole };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // The last `b` bytes.
        match b.parse::<u64>() {
            Ok(0) => return RangeAsk::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            Err(_) => return RangeAsk::Whole,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else { return RangeAsk::Whole };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return RangeAsk::Whole,
            }
        };
        (start, end)
    };
    if len == 0 || range.0 >= len { RangeAsk::Unsatisfiable } else { RangeAsk::Part(range.0, range.1) }
}

fn etag(sha: &str, enc: Encoding) -> String {
    match enc {
        Encoding::Identity => format!("\"{sha}\""),
        other => format!("\"{sha}-{}\"", other.suffix().trim_start_matches('.')),
    }
}

/// `If-None-Match` against our strong tag (weak comparison, as RFC 9110 asks for this header).
fn none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag))
}

fn text_response(status: StatusCode) -> Response<Bytes> {
    let mut r =
        Response::new(Bytes::from(format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

impl Hosting {
    /// Answers one request to the env's published site or to a deployment preview. `NotFound` means
    /// nothing here (unknown env, nothing published, no such path without a fallback): the edge answers
    /// a plain 404 that says nothing more.
    pub async fn serve(&self, env: &EnvId, target: &Target, mut req: SiteRequest<'_>) -> Result<Response<Bytes>> {
        req.preview = matches!(target, Target::Deployment(_));
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(r);
        }
        let deployment = self.resolve(env, target).await?.ok_or_else(site_not_found)?;
        let trimmed = req.path.trim_end_matches('/');
        if !trimmed.is_empty() && path::check(trimmed).is_err() {
            return Err(site_not_found());
        }
        let url_path = format!("/{}", req.path);
        if let Some((status, mut location)) = deployment.config.redirect(&url_path) {
            if let Some(q) = req.query.filter(|_| !location.contains('?')) {
                location = format!("{location}?{q}");
            }
            let mut r = text_response(StatusCode::from_u16(status).unwrap_or(StatusCode::PERMANENT_REDIRECT));
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
        if let Some((file_path, file)) = lookup(&deployment, req.path) {
            return self.respond(env, &deployment, &req, &url_path, file_path, file, StatusCode::OK).await;
        }
        if let Some((p, f)) = deployment.files.get_key_value("404.html") {
            return self.respond(env, &deployment, &req, &url_path, p, f, StatusCode::NOT_FOUND).await;
        }
        let last = trimmed.rsplit('/').next().unwrap_or("");
        if !last.contains('.')
            && let Some((p, f)) = deployment.files.get_key_value("index.html")
        {
            return self.respond(env, &deployment, &req, &url_path, p, f, StatusCode::OK).await;
        }
        Err(site_not_found())
    }

    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        env: &EnvId,
        deployment: &Deployment,
        req: &SiteRequest<'_>,
        url_path: &str,
        file_path: &str,
        file: &StoredFile,
        status: StatusCode,
    ) -> Result<Response<Bytes>> {
        let range_header = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let accept = req.headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok());
        // Ranges are of the identity representation.
        let mut enc = if range_header.is_some() { Encoding::Identity } else { choose_encoding(accept, file) };
        let mut headers = HeaderMap::new();
        let content_type = compress::content_type(file_path);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let cache = if status == StatusCode::OK && is_hashed_asset(file_path) { IMMUTABLE } else { REVALIDATE };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if file.br || file.gz {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        for (name, value) in deployment.config.headers_for(url_path) {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(n, v);
            }
        }
        let tag = etag(&file.sha, enc);
        if status == StatusCode::OK && none_match(req.headers, &tag) {
            if let Ok(v) = HeaderValue::from_str(&tag) {
                headers.insert(header::ETAG, v);
            }
            headers.remove(header::CONTENT_TYPE);
            let mut r = Response::new(Bytes::new());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            *r.headers_mut() = headers;
            return Ok(r);
        }
        let body = match self.file_bytes(env, &file.sha, enc).await? {
            Some(b) => b,
            None if enc != Encoding::Identity => {
                enc = Encoding::Identity;
                self.file_bytes(env, &file.sha, enc).await?.ok_or_else(site_not_found)?
            }
            None => return Err(site_not_found()),
        };
        if let Ok(v) = HeaderValue::from_str(&etag(&file.sha, enc)) {
            headers.insert(header::ETAG, v);
        }
        if enc != Encoding::Identity {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc.token()));
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let len = body.len() as u64;
        let mut status = status;
        let mut body = body;
        let if_range_ok = req
            .headers
            .get(header::IF_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() == etag(&file.sha, Encoding::Identity));
        if let Some(range) = range_header.filter(|_| status == StatusCode::OK && if_range_ok) {
            match parse_range(range, len) {
                RangeAsk::Whole => {}
                RangeAsk::Part(start, end) => {
                    status = StatusCode::PARTIAL_CONTENT;
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    body = body.slice(usize::try_from(start).unwrap_or(0)..usize::try_from(end + 1).unwrap_or(0));
                }
                RangeAsk::Unsatisfiable => {
                    let mut r = text_response(StatusCode::RANGE_NOT_SATISFIABLE);
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return Ok(r);
                }
            }
        }
        if req.method == Method::GET {
            let kind = if req.preview { "preview" } else { "site" };
            self.platform.meter(env, Meter::HostingBytesServed, ("kind", kind), body.len() as i64);
        }
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        Ok(r)
    }
}

/// The file a path names, with clean URLs: `about` → `about`, `about.html`, `about/index.html`;
/// `` and `docs/` → `index.html`, `docs/index.html`.
fn lookup<'d>(d: &'d Deployment, path: &str) -> Option<(&'d str, &'d StoredFile)> {
    let get = |p: &str| d.files.get_key_value(p).map(|(k, v)| (k.as_str(), v));
    if path.is_empty() || path.ends_with('/') {
        return get(&format!("{path}index.html"));
    }
    get(path).or_else(|| get(&format!("{path}.html"))).or_else(|| get(&format!("{path}/index.html")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_asset_names() {
        for yes in
            ["assets/index-BXkqJzPa.js", "app.3f9a1c2b.js", "static/js/main.8e2f1a7c.chunk.js", "x-a1b2c3d4e5.css"]
        {
            assert!(is_hashed_asset(yes), "{yes}");
        }
        for no in ["index.html", "jquery-standalone.js", "app.js", "assets/logo.png", "favicon.ico", "abcdefgh"] {
            assert!(!is_hashed_asset(no), "{no}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeAsk::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeAsk::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeAsk::Part(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeAsk::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAsk::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=9-1", 100), RangeAsk::Whole);
    }

    #[test]
    fn encodings() {
        let f = StoredFile { sha: String::new(), size: 1, br: true, gz: true };
        assert_eq!(choose_encoding(Some("gzip, deflate, br"), &f), Encoding::Brotli);
        assert_eq!(choose_encoding(Some("gzip, br;q=0"), &f), Encoding::Gzip);
        assert_eq!(choose_encoding(Some("identity"), &f), Encoding::Identity);
        assert_eq!(choose_encoding(None, &f), Encoding::Identity);
        let gz_only = StoredFile { br: false, ..f };
        assert_eq!(choose_encoding(Some("br, gzip"), &gz_only), Encoding::Gzip);
    }
}
