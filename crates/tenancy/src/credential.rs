//! Credential strings: `<prefix>_<tag>_<random><checksum>`.
//!
//! The prefix (default `vb`, configurable for white-label deployments) and the tag make a leaked key
//! recognisable to secret scanners; the CRC32 checksum lets the platform reject garbage without a
//! database lookup. Only the SHA-256 of a key is stored, except publishable keys, which are not secret.

use protocol::api::KeyKind;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters per key: 32 base62 characters are about 190 bits.
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// The shortest admin key accepted from `VIBEBASE_ADMIN_KEY`.
pub const MIN_ADMIN_KEY_LEN: usize = 16;

/// Why a string is not a usable credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The string does not have the `<prefix>_<tag>_<body>` shape, or has an unknown tag.
    #[error("not a key of this platform")]
    Malformed,
    /// The shape is right but the checksum does not match: a typo or a forged key.
    #[error("key checksum does not match")]
    BadChecksum,
    /// The configured prefix is not 1..=16 lowercase letters or digits starting with a letter.
    #[error("key prefix must be 1-16 lowercase letters or digits, starting with a letter")]
    BadPrefix,
}

/// Checks a configured key prefix.
pub fn validate_prefix(prefix: &str) -> Result<(), CredentialError> {
    let ok = (1..=16).contains(&prefix.len())
        && prefix.as_bytes()[0].is_ascii_lowercase()
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(CredentialError::BadPrefix) }
}

/// A freshly generated credential: the full string (shown once) and what is stored of it.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: String,
    pub hash: String,
    pub hint: String,
}

/// Generates a key of `kind` with `prefix`.
pub fn generate(prefix: &str, kind: KeyKind, rng: &mut dyn RngCore) -> NewKey {
    let mut random = String::with_capacity(RANDOM_LEN);
    for _ in 0..RANDOM_LEN {
        random.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    let head = format!("{prefix}_{}_{random}", kind.tag());
    let key = format!("{head}{}", checksum(&head));
    NewKey { hash: hash_key(&key), hint: hint(&key), key }
}

/// A key string that has the right shape and checksum. It may still be unknown, revoked or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    pub kind: KeyKind,
}

/// Checks shape and checksum of `key`. Keys of any prefix parse, so a key issued before a prefix change
/// still resolves.
pub fn parse(key: &str) -> Result<ParsedKey<'_>, CredentialError> {
    let (rest, body) = key.rsplit_once('_').ok_or(CredentialError::Malformed)?;
    let (prefix, tag) = rest.rsplit_once('_').ok_or(CredentialError::Malformed)?;
    let kind = KeyKind::from_tag(tag).ok_or(CredentialError::Malformed)?;
    if validate_prefix(prefix).is_err()
        || body.len() != RANDOM_LEN + CHECKSUM_LEN
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(CredentialError::Malformed);
    }
    let (head, sum) = key.split_at(key.len() - CHECKSUM_LEN);
    if checksum(head) != sum {
        return Err(CredentialError::BadChecksum);
    }
    Ok(ParsedKey { prefix, kind })
}

/// The stored form of a key: hex SHA-256. Keys carry ~190 random bits, so a fast hash is the right tool
/// (a password hash would only slow every request).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The recognisable start of a key, safe to show and log.
pub fn hint(key: &str) -> String {
    let cut = key.rfind('_').map_or(0, |i| i + 5).min(key.len());
    format!("{}…", key.get(..cut).unwrap_or_default())
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn checksum(head: &str) -> String {
    let mut n = crc32fast::hash(head.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

/// A random identifier of `len` base62 characters, for row ids that are not secrets.
pub fn random_id(rng: &mut dyn RngCore, len: usize) -> String {
    (0..len).map(|_| ALPHABET[rng.random_range(10..ALPHABET.len())].to_ascii_lowercase() as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn generated_keys_parse_and_typos_do_not() {
        let mut rng = StdRng::seed_from_u64(7);
        for kind in KeyKind::ALL {
            let k = generate("acme", kind, &mut rng);
            assert_eq!(parse(&k.key), Ok(ParsedKey { prefix: "acme", kind }));
            assert!(k.key.starts_with(&format!("acme_{}_", kind.tag())));
            assert!(k.hint.ends_with('…') && k.key.starts_with(k.hint.trim_end_matches('…')));
            let mut typo = k.key.clone().into_bytes();
            let i = typo.len() - 10;
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap_or_default();
            assert_eq!(parse(&typo), Err(CredentialError::BadChecksum));
        }
        for garbage in ["", "Bearer", "vb_sk_", "vb_xx_abc", "vb__0000", "a_b_c_d", "ü_sk_ü"] {
            assert!(parse(garbage).is_err(), "{garbage}");
        }
    }

    proptest::proptest! {
        /// The key parser sees untrusted input on every request: it never panics, and accepts only
        /// strings whose checksum matches.
        #[test]
        fn parse_never_panics_and_accepts_only_checksummed_keys(s in "\\PC{0,80}") {
            if let Ok(parsed) = parse(&s) {
                let body = s.rsplit_once('_').map(|(_, b)| b).unwrap_or_default();
                proptest::prop_assert_eq!(body.len(), RANDOM_LEN + CHECKSUM_LEN);
                proptest::prop_assert!(s.starts_with(parsed.prefix));
            }
        }

        #[test]
        fn every_generated_key_parses(seed in proptest::prelude::any::<u64>(), prefix in "[a-z][a-z0-9]{0,15}") {
            let mut rng = StdRng::seed_from_u64(seed);
            for kind in KeyKind::ALL {
                let k = generate(&prefix, kind, &mut rng);
                proptest::prop_assert_eq!(parse(&k.key), Ok(ParsedKey { prefix: &prefix, kind }));
            }
        }
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("vb").is_ok());
        for bad in ["", "Vb", "v_b", "1vb", "abcdefghijklmnopq"] {
            assert_eq!(validate_prefix(bad), Err(CredentialError::BadPrefix), "{bad}");
        }
    }
}
