//! argon2id password hashes in PHC string form (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{AuthError, Result};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
}

impl HashCost {
    /// OWASP's first recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: Self = Self { memory_kib: 19 * 1024, iterations: 2 };
}

/// Hashes `password` with a fresh 16-byte salt.
pub fn hash(password: &str, cost: HashCost, salt: [u8; 16]) -> Result<String> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| AuthError::Key(format!("argon2 parameters: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Key(format!("salt: {e}")))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Key(format!("argon2: {e}")))
}

/// Whether `password` matches the stored PHC string (whatever cost it was hashed with).
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash("correct horse", HashCost { memory_kib: 64, iterations: 1 }, [7; 16]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", "not a hash"));
    }
}
