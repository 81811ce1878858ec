//! Bucket ids and object names: what Supabase Storage accepts, checked before anything is stored.
//! Names are metadata only (bytes live under random keys), but a name that could read as a path
//! elsewhere (`..`, an absolute path, NUL, control characters, percent signs of a second encoding)
//! is refused outright, as Supabase does.

use crate::StorageError;

/// Longest object name in bytes (Supabase's limit).
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest bucket id.
pub const MAX_BUCKET_CHARS: usize = 100;

/// Characters Supabase Storage allows in keys besides ASCII letters, digits and `_`.
const SAFE: &str = "!-.*'() &$@=;:+,?";

fn safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || SAFE.contains(c)
}

/// Checks a bucket id: 1..=100 safe characters, no slash, no leading/trailing space, not `.`/`..`.
pub fn bucket_id(id: &str) -> Result<(), StorageError> {
    let bad = |why: &str| Err(StorageError::InvalidBucketName(format!("bucket name {id:?} is invalid: {why}")));
    if id.is_empty() || id.chars().count() > MAX_BUCKET_CHARS {
        return bad("it must have 1 to 100 characters");
    }
    if id.trim() != id {
        return bad("leading or trailing whitespace");
    }
    if id == "." || id == ".." {
        return bad("it is a path segment");
    }
    if !id.chars().all(safe_char) {
        return bad("only letters, digits and _!-.*'() &$@=;:+,? are allowed");
    }
    Ok(())
}

/// Checks an object name (`folder/sub/file.png`): safe characters, no empty, `.` or `..` segment
/// (so no leading `/`), at most [`MAX_NAME_BYTES`] bytes.
pub fn object_name(name: &str) -> Result<(), StorageError> {
    let bad = |why: &str| Err(StorageError::InvalidKey(format!("Invalid key: {why}")));
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("the name is longer than 1024 bytes");
    }
    if !name.chars().all(|c| c == '/' || safe_char(c)) {
        return bad("only letters, digits, / and _!-.*'() &$@=;:+,? are allowed");
    }
    if name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("empty, . and .. path segments are not allowed");
    }
    Ok(())
}

/// A name prefix for listing: a name, or a name followed by `/`, or empty.
pub fn prefix(p: &str) -> Result<(), StorageError> {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        if p.is_empty() || p == "/" { Ok(()) } else { object_name(p) }
    } else {
        object_name(trimmed)
    }
}

/// Decodes a percent-encoded URL path (no `+` → space, unlike a query).
pub fn percent_decode_path(s: &str) -> Result<String, StorageError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| StorageError::InvalidKey("Invalid key: bad percent-encoding".to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| StorageError::InvalidKey("Invalid key: not UTF-8".to_owned()))
}

/// Whether `mime` is allowed by a bucket's list (`image/*` and `*/*` are wildcards). An empty or
/// absent list allows everything.
pub fn mime_allowed(allowed: &[String], mime: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let mime = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (ty, _) = mime.split_once('/').unwrap_or((mime.as_str(), ""));
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        a == mime || a == "*/*" || a.strip_suffix("/*").is_some_and(|t| t == ty)
    })
}

/// Checks a MIME type (or pattern) of an allow-list: `type/subtype` of token characters, `*` allowed.
pub fn mime_pattern(m: &str) -> Result<(), StorageError> {
    let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-*".contains(c));
    match m.split_once('/') {
        Some((a, b)) if token(a) && token(b) && m.len() <= 255 => Ok(()),
        _ => Err(StorageError::InvalidRequest(format!("invalid mime type {m:?}"))),
    }
}

/// A size such as `1048576`, `"50MB"`, `"1.5 GB"`, `"100kb"` in bytes (units are powers of 1024, as
/// Supabase reads them).
pub fn parse_size(v: &serde_json::Value) -> Result<Option<i64>, StorageError> {
    let bad = || StorageError::InvalidRequest(format!("invalid file size limit {v}"));
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n.as_i64().filter(|n| *n >= 0).map(Some).ok_or_else(bad),
        serde_json::Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let num: f64 = num.parse().map_err(|_| bad())?;
            let mult: f64 = match unit.trim() {
                "" | "b" => 1.0,
                "kb" | "k" => 1024.0,
                "mb" | "m" => 1024.0 * 1024.0,
                "gb" | "g" => 1024.0 * 1024.0 * 1024.0,
                "tb" | "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => return Err(bad()),
            };
            let bytes = num * mult;
            if !bytes.is_finite() || !(0.0..=9.0e15).contains(&bytes) {
                return Err(bad());
            }
            Ok(Some(bytes as i64))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_odd_names_are_refused() {
        for bad in [
            "../a",
            "a/../b",
            "a/..",
            "/abs",
            "a//b",
            "./a",
            "a/",
            "a\0b",
            "a%2e%2e%2fb",
            "a\\b",
            "a\nb",
            "a#b",
            "é",
            "",
        ] {
            assert!(object_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(object_name(&"a".repeat(1025)).is_err());
        for good in ["a", "folder/sub/file.png", "a b (1).txt", "x..y", "..a"] {
            assert!(object_name(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn decoding_then_checking_refuses_encoded_traversal() {
        let once = percent_decode_path("%2e%2e%2fetc%2fpasswd").unwrap_or_default();
        assert_eq!(once, "../etc/passwd");
        assert!(object_name(&once).is_err());
        let twice = percent_decode_path("%252e%252e%252f").unwrap_or_default();
        assert_eq!(twice, "%2e%2e%2f");
        assert!(object_name(&twice).is_err());
        assert!(percent_decode_path("%zz").is_err());
        assert!(object_name(&percent_decode_path("a%00b").unwrap_or_default()).is_err());
        assert_eq!(percent_decode_path("a+b").unwrap_or_default(), "a+b");
    }

    #[test]
    fn buckets_and_mime_types() {
        assert!(bucket_id("avatars").is_ok());
        for bad in ["", "a/b", " a", "..", "a\\b", &"x".repeat(101)] {
            assert!(bucket_id(bad).is_err(), "{bad:?}");
        }
        let allow = vec!["image/*".to_owned(), "text/plain".to_owned()];
        assert!(mime_allowed(&allow, "image/png"));
        assert!(mime_allowed(&allow, "text/plain;charset=UTF-8"));
        assert!(!mime_allowed(&allow, "text/html"));
        assert!(!mime_allowed(&allow, "imagex/png"));
        assert!(mime_allowed(&[], "anything/at-all"));
        assert!(mime_pattern("image/*").is_ok());
        assert!(mime_pattern("image").is_err());
        assert!(mime_pattern("a/b,c").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&serde_json::json!(10)).ok(), Some(Some(10)));
        assert_eq!(parse_size(&serde_json::json!("1MB")).ok(), Some(Some(1024 * 1024)));
        assert_eq!(parse_size(&serde_json::json!("1.5 kb")).ok(), Some(Some(1536)));
        assert!(parse_size(&serde_json::json!("1XB")).is_err());
        assert!(parse_size(&serde_json::json!(-1)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn accepted_names_never_escape(name in "[a-z./%\\\\]{0,12}") {
            if object_name(&name).is_ok() {
                proptest::prop_assert!(!name.starts_with('/'));
                proptest::prop_assert!(name.split('/').all(|s| s != ".." && s != "." && !s.is_empty()));
                proptest::prop_assert!(!name.contains('%') && !name.contains('\\'));
            }
        }
    }
}
