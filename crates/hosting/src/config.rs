//! `vibebase.json`: a deployment's own response headers and redirects, read once at finalize.
//!
//! ```json
//! {
//!   "headers":   [{"source": "/assets/*", "headers": {"X-Frame-Options": "DENY"}}],
//!   "redirects": [{"source": "/old/*", "destination": "/new/:splat", "status": 301}]
//! }
//! ```
//!
//! A `source` is an exact path (`/about`) or a prefix ending in `/*`; `:splat` in a destination is what
//! `*` matched. The first matching redirect wins; every matching header rule applies, later ones
//! overriding earlier ones.

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::{HostingError, Result};

/// Most rules of each kind.
pub const MAX_RULES: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    #[serde(default)]
    pub headers: Vec<HeaderRule>,
    #[serde(default)]
    pub redirects: Vec<Redirect>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    pub source: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub source: String,
    pub destination: String,
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    308
}

/// Headers a deployment may not set: the server owns framing, caching validators and encodings.
const RESERVED: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "etag",
    "accept-ranges",
    "vary",
    "server",
    "x-request-id",
    "date",
];

fn bad(message: String) -> HostingError {
    HostingError::invalid("invalid_site_config", message)
}

fn check_source(source: &str) -> Result<()> {
    let body = source.strip_suffix("/*").unwrap_or(source);
    if !source.starts_with('/') || body.contains('*') || source.len() > 1024 || source.chars().any(char::is_control) {
        return Err(bad(format!("source {source:?} must be a path starting with / (optionally ending in /*)")));
    }
    Ok(())
}

impl SiteConfig {
    /// Parses and checks `vibebase.json`; every problem is a 400 naming the rule.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let config: SiteConfig =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{}: {e}", protocol::hosting::CONFIG_FILE)))?;
        if config.headers.len() > MAX_RULES || config.redirects.len() > MAX_RULES {
            return Err(bad(format!("at most {MAX_RULES} header rules and {MAX_RULES} redirects")));
        }
        for rule in &config.headers {
            check_source(&rule.source)?;
            for (name, value) in &rule.headers {
                let parsed =
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(format!("bad header name {name:?}")))?;
                if RESERVED.contains(&parsed.as_str()) {
                    return Err(bad(format!("header {name:?} is set by the server")));
                }
                HeaderValue::from_str(value).map_err(|_| bad(format!("bad value for header {name:?}")))?;
            }
        }
        for r in &config.redirects {
            check_source(&r.source)?;
            if ![301, 302, 303, 307, 308].contains(&r.status) {
                return Err(bad(format!("redirect status {} is not one of 301, 302, 303, 307, 308", r.status)));
            }
            let external = r.destination.starts_with("https://") || r.destination.starts_with("http://");
            let local = r.destination.starts_with('/') && !r.destination.starts_with("//");
            if !(external || local) || r.destination.chars().any(char::is_control) {
                return Err(bad(format!("redirect destination {:?} must be /path or an http(s) URL", r.destination)));
            }
        }
        Ok(config)
    }

    /// The redirect for `path` (`/about`), with `:splat` filled in.
    pub fn redirect(&self, path: &str) -> Option<(u16, String)> {
        self.redirects.iter().find_map(|r| {
            let splat = matches(&r.source, path)?;
            Some((r.status, r.destination.replace(":splat", splat)))
        })
    }

    /// The configured headers for `path`, in rule order.
    pub fn headers_for<'a>(&'a self, path: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.headers
            .iter()
            .filter(move |rule| matches(&rule.source, path).is_some())
            .flat_map(|rule| rule.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// `Some(splat)` when `source` matches `path`.
fn matches<'a>(source: &str, path: &'a str) -> Option<&'a str> {
    match source.strip_suffix('*') {
        Some(prefix) => path.strip_prefix(prefix).or_else(|| (path == &prefix[..prefix.len() - 1]).then_some("")),
        None => (source == path).then_some(""),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_and_bad_configs_are_refused() {
        let c = SiteConfig::parse(
            br#"{"headers":[{"source":"/assets/*","headers":{"X-Frame-Options":"DENY"}}],
                "redirects":[{"source":"/old/*","destination":"/new/:splat","status":301},{"source":"/x","destination":"https://example.com/"}]}"#,
        )
        .unwrap();
        assert_eq!(c.redirect("/old/a/b"), Some((301, "/new/a/b".to_owned())));
        assert_eq!(c.redirect("/old"), Some((301, "/new/".to_owned())));
        assert_eq!(c.redirect("/x"), Some((308, "https://example.com/".to_owned())));
        assert_eq!(c.redirect("/y"), None);
        assert_eq!(c.headers_for("/assets/a.js").collect::<Vec<_>>(), [("X-Frame-Options", "DENY")]);
        assert_eq!(c.headers_for("/index.html").count(), 0);
        for bad in [
            &br#"{"headers":[{"source":"/","headers":{"Content-Length":"1"}}]}"#[..],
            br#"{"headers":[{"source":"/","headers":{"bad name":"1"}}]}"#,
            br#"{"redirects":[{"source":"nope","destination":"/"}]}"#,
            br#"{"redirects":[{"source":"/a","destination":"//evil.example"}]}"#,
            br#"{"redirects":[{"source":"/a","destination":"/b","status":200}]}"#,
            br#"{"unknown":1}"#,
            b"not json",
        ] {
            let e = SiteConfig::parse(bad).unwrap_err();
            assert!(matches!(e, HostingError::Invalid { code: "invalid_site_config", .. }), "{e}");
        }
    }
}
