//! Signed URLs: a token that lets whoever holds it download one object (`/object/sign/…`) or upload
//! to one name (`/object/upload/sign/…`) until it expires, without a key. The token is a JWT (HS256,
//! as Supabase's) keyed with a secret derived for the env, so it is worthless in any other env and
//! cannot be made without the platform's secret material.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::Mac as _;
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Download,
    Upload,
}

/// The claims of a signed URL's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `bucket/name`.
    pub url: String,
    pub grant: Grant,
    /// Unix seconds.
    pub iat: i64,
    pub exp: i64,
    /// Upload tokens: whether the upload may replace an object.
    #[serde(default)]
    pub upsert: bool,
    /// Upload tokens: the end user who asked for it (owner of the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn mac(secret: &str, data: &[u8]) -> Result<hmac::Hmac<sha2::Sha256>, StorageError> {
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret.as_bytes())
        .map_err(|_| StorageError::Internal("hmac key".to_owned()))?;
    m.update(data);
    Ok(m)
}

/// Signs claims with the env's signing secret.
pub fn sign(secret: &str, claims: &Claims) -> Result<String, StorageError> {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = serde_json::to_vec(claims).map_err(|e| StorageError::Internal(e.to_string()))?;
    let signing_input = format!("{header}.{}", B64.encode(body));
    let sig = mac(secret, signing_input.as_bytes())?.finalize().into_bytes();
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// Verifies a token for `grant` on `url` at `now` (Unix seconds).
pub fn verify(secret: &str, token: &str, grant: Grant, url: &str, now: i64) -> Result<Claims, StorageError> {
    let invalid = |why: &str| StorageError::InvalidSignature(why.to_owned());
    let mut parts = token.split('.');
    let (Some(h), Some(b), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("invalid signature: malformed token"));
    };
    let sig = B64.decode(s).map_err(|_| invalid("invalid signature: malformed token"))?;
    mac(secret, format!("{h}.{b}").as_bytes())?.verify_slice(&sig).map_err(|_| invalid("invalid signature"))?;
    let header: serde_json::Value = B64
        .decode(h)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| invalid("invalid signature: malformed token"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(invalid("invalid signature: algorithm"));
    }
    let claims: Claims = B64
        .decode(b)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("invalid signature: malformed token"))?;
    if claims.exp <= now {
        return Err(invalid("jwt expired"));
    }
    if claims.grant != grant || claims.url != url {
        return Err(invalid("url in token does not match the request"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims { url: "b/a.txt".into(), grant: Grant::Download, iat: 0, exp, upsert: false, owner: None }
    }

    #[test]
    fn tokens_verify_only_as_signed() {
        let t = sign("k1", &claims(100)).unwrap_or_default();
        assert!(verify("k1", &t, Grant::Download, "b/a.txt", 50).is_ok());
        // Expired, other key (another env), other object, other grant, tampered.
        assert!(verify("k1", &t, Grant::Download, "b/a.txt", 100).is_err());
        assert!(verify("k2", &t, Grant::Download, "b/a.txt", 50).is_err());
        assert!(verify("k1", &t, Grant::Download, "b/b.txt", 50).is_err());
        assert!(verify("k1", &t, Grant::Upload, "b/a.txt", 50).is_err());
        let forged = sign("k1", &claims(1_000_000)).unwrap_or_default();
        let (head, _) = t.rsplit_once('.').unwrap_or_default();
        let (_, forged_sig) = forged.rsplit_once('.').unwrap_or_default();
        assert!(verify("k1", &format!("{head}.{forged_sig}"), Grant::Download, "b/a.txt", 50).is_err());
        let (_, body_of_long) = forged.split_once('.').unwrap_or_default();
        let (body_of_long, _) = body_of_long.split_once('.').unwrap_or_default();
        let (h, rest) = t.split_once('.').unwrap_or_default();
        let (_, sig) = rest.split_once('.').unwrap_or_default();
        assert!(verify("k1", &format!("{h}.{body_of_long}.{sig}"), Grant::Download, "b/a.txt", 500).is_err());
        assert!(verify("k1", "a.b", Grant::Download, "b/a.txt", 0).is_err());
    }
}
