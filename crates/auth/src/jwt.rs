//! Access tokens: ES256 JWTs signed with a per-env P-256 key. The key pair is generated on an env's
//! first use and kept in the platform store (never in the env's database, never returned by any API);
//! the public half is published as a JWKS.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{AuthError, Result};

/// One env signing key.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    /// PKCS#8 DER of the private key.
    pkcs8: Vec<u8>,
    /// Base64url coordinates of the public point.
    pub x: String,
    pub y: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh P-256 key pair.
    pub fn generate(kid: String) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| AuthError::Key("could not generate a P-256 key".into()))?;
        Self::from_pkcs8(kid, doc.as_ref().to_vec())
    }

    /// A key from its stored PKCS#8 form.
    pub fn from_pkcs8(kid: String, pkcs8: Vec<u8>) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| AuthError::Key("stored signing key is not a P-256 PKCS#8 key".into()))?;
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(AuthError::Key("unexpected public key length".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        Ok(Self { kid, pkcs8, x, y })
    }

    /// The private key material, as secret input for keyed hashes.
    pub(crate) fn secret_bytes(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn pkcs8_base64(&self) -> String {
        STANDARD.encode(&self.pkcs8)
    }

    pub fn pkcs8_from_base64(s: &str) -> Result<Vec<u8>> {
        STANDARD.decode(s).map_err(|_| AuthError::Key("stored signing key is not base64".into()))
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Json {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"],
        })
    }

    /// Signs `claims` as an ES256 JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .map_err(|e| AuthError::Key(format!("could not sign: {e}")))
    }
}

/// The claims of an access token, as GoTrue issues them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub app_metadata: Json,
    #[serde(default)]
    pub user_metadata: Json,
    /// `authenticated` for signed-in users (anonymous ones too).
    pub role: String,
    #[serde(default)]
    pub aal: String,
    #[serde(default)]
    pub amr: Json,
    pub session_id: String,
    #[serde(default)]
    pub is_anonymous: bool,
}

/// The public half of a signing key: what verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub x: String,
    pub y: String,
}

impl From<&SigningKey> for PublicKey {
    fn from(k: &SigningKey) -> Self {
        Self { kid: k.kid.clone(), x: k.x.clone(), y: k.y.clone() }
    }
}

/// Verified claims of an access token, with the whole payload for `auth.jwt()`.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub claims: Claims,
    pub payload: Json,
}

/// The issuer of an env's tokens: its GoTrue URL.
pub fn issuer(public_url: &str, env: &str) -> String {
    format!("{}/env/{env}/auth/v1", public_url.trim_end_matches('/'))
}

/// Verifies `token` against the env's keys at time `now` (Unix seconds). Rejects anything but ES256
/// (including `alg: none`), unknown key ids (another env's tokens), bad signatures, a missing or past
/// `exp`, another audience, and an issuer of another env.
pub fn verify(token: &str, keys: &[PublicKey], env: &str, now: i64) -> Result<VerifiedClaims> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::BadJwt("malformed token"))?;
    if header.alg != Algorithm::ES256 {
        return Err(AuthError::BadJwt("unexpected signing method"));
    }
    let kid = header.kid.ok_or(AuthError::BadJwt("no key id"))?;
    let key = keys.iter().find(|k| k.kid == kid).ok_or(AuthError::BadJwt("unknown key id"))?;
    let decoding =
        DecodingKey::from_ec_components(&key.x, &key.y).map_err(|_| AuthError::Key("bad public key".into()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    // Expiry is checked below against the injected clock.
    validation.validate_exp = false;
    validation.required_spec_claims = ["exp", "sub", "aud"].iter().map(|s| (*s).to_owned()).collect();
    validation.set_audience(&["authenticated"]);
    let data = jsonwebtoken::decode::<Json>(token, &decoding, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadJwt("signature is invalid"),
        jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::BadJwt("invalid audience"),
        _ => AuthError::BadJwt("malformed claims"),
    })?;
    let claims: Claims =
        serde_json::from_value(data.claims.clone()).map_err(|_| AuthError::BadJwt("malformed claims"))?;
    if claims.exp <= now {
        return Err(AuthError::JwtExpired);
    }
    if !claims.iss.ends_with(&format!("/env/{env}/auth/v1")) {
        return Err(AuthError::BadJwt("token of another environment"));
    }
    Ok(VerifiedClaims { claims, payload: data.claims })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(exp: i64, env: &str) -> Claims {
        Claims {
            iss: issuer("http://x", env),
            sub: "u1".into(),
            aud: "authenticated".into(),
            exp,
            iat: 0,
            email: "a@b.c".into(),
            phone: String::new(),
            app_metadata: serde_json::json!({}),
            user_metadata: serde_json::json!({}),
            role: "authenticated".into(),
            aal: "aal1".into(),
            amr: serde_json::json!([]),
            session_id: "s1".into(),
            is_anonymous: false,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let key = SigningKey::generate("k1".into()).unwrap();
        let stored =
            SigningKey::from_pkcs8("k1".into(), SigningKey::pkcs8_from_base64(&key.pkcs8_base64()).unwrap()).unwrap();
        let token = key.sign(&claims(100, "a")).unwrap();
        let stored = PublicKey::from(&stored);
        assert_eq!(verify(&token, std::slice::from_ref(&stored), "a", 50).unwrap().claims.sub, "u1");
        assert!(matches!(verify(&token, std::slice::from_ref(&stored), "a", 100), Err(AuthError::JwtExpired)));
        assert!(matches!(verify(&token, std::slice::from_ref(&stored), "b", 50), Err(AuthError::BadJwt(_))));
        let other = SigningKey::generate("k1".into()).unwrap();
        assert!(matches!(verify(&token, &[PublicKey::from(&other)], "a", 50), Err(AuthError::BadJwt(_))));
        // alg=none: same payload, no signature.
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#), parts[1]);
        assert!(matches!(verify(&none, &[stored], "a", 50), Err(AuthError::BadJwt(_))));
    }

    proptest::proptest! {
        /// Untrusted tokens: no input panics, and nothing but the key's own signature verifies.
        #[test]
        fn arbitrary_tokens_never_verify(token in "(?s).{0,300}", payload in "[A-Za-z0-9_-]{0,200}") {
            let key = SigningKey::generate("k1".into()).unwrap();
            let public = [PublicKey::from(&key)];
            proptest::prop_assert!(verify(&token, &public, "a", 0).is_err());
            let real = key.sign(&claims(i64::MAX / 2, "a")).unwrap();
            let parts: Vec<&str> = real.split('.').collect();
            let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
            proptest::prop_assert!(forged == real || verify(&forged, &public, "a", 0).is_err());
        }
    }
}
