//! Time and randomness behind small traits, so tests can fix them.

use rand::{RngCore, SeedableRng, rngs::StdRng};
use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;

    /// Milliseconds since the Unix epoch, the platform's stored time format.
    fn now_ms(&self) -> i64 {
        (self.now().unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A source of random seeds for keys and ids.
pub trait Entropy: Send + Sync {
    /// 32 fresh random bytes.
    fn seed(&self) -> [u8; 32];

    /// A generator seeded from [`Entropy::seed`].
    fn rng(&self) -> StdRng {
        StdRng::from_seed(self.seed())
    }
}

/// Operating-system randomness.
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn seed(&self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        StdRng::from_os_rng().fill_bytes(&mut seed);
        seed
    }
}

/// RFC 3339 text of a stored millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses RFC 3339 into stored milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}
