//! Rate limits on auth endpoints: sliding windows per (env, client address) and per (env, email).
//! Counters live in this process (like the platform's request limiter); a restart forgets them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Windows of recent hits by key.
#[derive(Default)]
pub struct Windows {
    hits: Mutex<HashMap<String, VecDeque<i64>>>,
}

/// Keys beyond this many are pruned of stale entries before a new one is added.
const PRUNE_ABOVE: usize = 10_000;

impl Windows {
    /// Records a hit for `key` at `now_ms` if fewer than `max` hits fell in the last `window`;
    /// otherwise returns how long until one expires.
    pub fn hit(&self, key: &str, max: u32, window: Duration, now_ms: i64) -> Result<(), Duration> {
        let window_ms = window.as_millis() as i64;
        let mut hits = self.hits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if hits.len() > PRUNE_ABOVE && !hits.contains_key(key) {
            hits.retain(|_, q| q.back().is_some_and(|t| *t > now_ms - window_ms));
        }
        let q = hits.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| *t <= now_ms - window_ms) {
            q.pop_front();
        }
        if q.len() >= max as usize {
            let oldest = q.front().copied().unwrap_or(now_ms);
            return Err(Duration::from_millis((oldest + window_ms - now_ms).max(1) as u64));
        }
        q.push_back(now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_refuses_over_max_and_recovers() {
        let w = Windows::default();
        let minute = Duration::from_secs(60);
        assert!(w.hit("k", 2, minute, 0).is_ok());
        assert!(w.hit("k", 2, minute, 1_000).is_ok());
        assert_eq!(w.hit("k", 2, minute, 2_000), Err(Duration::from_millis(58_000)));
        assert!(w.hit("other", 2, minute, 2_000).is_ok());
        assert!(w.hit("k", 2, minute, 60_001).is_ok());
    }
}
