//! Secrets at rest: ChaCha20-Poly1305 (ring) under the platform's master key, each value bound to its
//! env, function and variable name (the associated data), so a sealed value copied to another slot
//! does not open.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Digest as _;

/// Why the master key could not be had, or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// `VIBEBASE_MASTER_KEY` is too short.
    #[error("the master key must be at least 32 characters")]
    WeakKey,
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A sealed value is corrupt, or was sealed under another key or for another slot.
    #[error("a sealed value does not open with this master key")]
    Open,
}

/// The master key.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

fn key_from(material: &[u8]) -> MasterKey {
    // 64 hex characters are the key itself; anything else is hashed to 32 bytes.
    let bytes: [u8; 32] = match hex::decode(material) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            k
        }
        _ => sha2::Sha256::digest(material).into(),
    };
    // CHACHA20_POLY1305 takes exactly 32 bytes, which `bytes` is.
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).unwrap_or_else(|_| unreachable!("32-byte key"));
    MasterKey(LessSafeKey::new(unbound))
}

impl MasterKey {
    /// The key from `VIBEBASE_MASTER_KEY` (given), else from `<data dir>/master.key`, generated with
    /// mode 0600 on first use.
    pub fn load(given: Option<&str>, data_dir: &Path) -> Result<Self, SealError> {
        if let Some(k) = given {
            if k.trim().len() < 32 {
                return Err(SealError::WeakKey);
            }
            return Ok(key_from(k.trim().as_bytes()));
        }
        let path = data_dir.join("master.key");
        let io = |source| SealError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(&path) {
            Ok(s) => return Ok(key_from(s.trim().as_bytes())),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(_) => {}
        }
        let mut raw = [0u8; 32];
        SystemRandom::new().fill(&mut raw).map_err(|_| io(std::io::Error::other("no randomness")))?;
        let text = hex::encode(raw);
        let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        match created {
            Ok(mut f) => {
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(key_from(text.as_bytes()))
            }
            // Another instance wrote it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let s = std::fs::read_to_string(&path).map_err(io)?;
                Ok(key_from(s.trim().as_bytes()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Seals `value` for `slot`; returns hex of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, slot: &str, value: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Open)?;
        let mut buf = value.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(slot.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(hex::encode(out))
    }

    /// Opens what [`Self::seal`] sealed for the same slot.
    pub fn open(&self, slot: &str, sealed: &str) -> Result<String, SealError> {
        let raw = hex::decode(sealed).map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut body = body.to_vec();
        let plain = self.0.open_in_place(nonce, Aad::from(slot.as_bytes()), &mut body).map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_open_only_in_their_slot_and_under_their_key() {
        let dir = std::env::temp_dir().join(format!("vb-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = MasterKey::load(None, &dir).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("master.key")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let sealed = k.seal("shop/hello/API_KEY", "s3cret").unwrap();
        assert!(!sealed.contains(&hex::encode("s3cret")));
        assert_eq!(k.open("shop/hello/API_KEY", &sealed).unwrap(), "s3cret");
        assert!(k.open("other/hello/API_KEY", &sealed).is_err());
        // The same file gives the same key; another key does not open it.
        assert_eq!(MasterKey::load(None, &dir).unwrap().open("shop/hello/API_KEY", &sealed).unwrap(), "s3cret");
        let other = MasterKey::load(Some("another-master-key-of-at-least-32-chars"), &dir).unwrap();
        assert!(other.open("shop/hello/API_KEY", &sealed).is_err());
        assert!(MasterKey::load(Some("short"), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
