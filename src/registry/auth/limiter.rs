//! Failed-login budget per key (a user name, a client address): a token bucket
//! that holds `per_minute` failures and refills at that rate. A key with an
//! empty bucket is refused before any bcrypt runs, so guessing costs the
//! attacker time and the registry nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys tracked at most; beyond it, full buckets (keys with no recent failure)
/// are dropped first, then the oldest entries.
const MAX_KEYS: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct FailureLimiter<K> {
    per_minute: u32,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// `per_minute == 0` disables the limit.
    pub fn new(per_minute: u32) -> Self {
        FailureLimiter {
            per_minute,
            buckets: HashMap::new(),
        }
    }

    fn rate_per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.rate_per_second()).min(f64::from(self.per_minute))
    }

    /// `Some(wait)` when `key` has no failures left: how long until it has one.
    pub fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let tokens = self.refilled(*self.buckets.get(key)?, now);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.rate_per_second()))
    }

    /// Spends one failure of `key`.
    pub fn record_failure(&mut self, key: &K, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_KEYS {
            self.make_room(now);
        }
        let full = f64::from(self.per_minute);
        let tokens = match self.buckets.get(key) {
            Some(b) => self.refilled(*b, now),
            None => full,
        };
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    /// Gives back a failure spent in advance for an attempt that succeeded.
    pub fn refund(&mut self, key: &K, now: Instant) {
        let full = f64::from(self.per_minute);
        if let Some(b) = self.buckets.get(key).copied() {
            let tokens = (self.refilled(b, now) + 1.0).min(full);
            self.buckets.insert(key.clone(), Bucket { tokens, at: now });
        }
    }

    fn make_room(&mut self, now: Instant) {
        let full = f64::from(self.per_minute);
        let rate = self.rate_per_second();
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * rate < full
        });
        if self.buckets.len() >= MAX_KEYS {
            // Still full of keys that are failing right now: forget the half
            // that failed longest ago rather than grow without bound.
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.buckets.retain(|_, b| b.at > cut);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out_and_refills() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(l.blocked(&"k", t0), None);
            l.record_failure(&"k", t0);
        }
        let wait = l
            .blocked(&"k", t0)
            .expect("three failures spend the budget");
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        assert_eq!(l.blocked(&"other", t0), None, "keys are separate");
        assert_eq!(l.blocked(&"k", t0 + Duration::from_secs(20)), None);
        l.refund(&"k", t0);
        assert_eq!(l.blocked(&"k", t0), None, "a refund gives one back");
    }

    #[test]
    fn zero_disables() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(0);
        for _ in 0..100 {
            l.record_failure(&"k", t0);
        }
        assert_eq!(l.blocked(&"k", t0), None);
    }

    #[test]
    fn key_count_is_bounded() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(1);
        for i in 0..(MAX_KEYS * 2) {
            l.record_failure(&i, t0 + Duration::from_millis(i as u64));
        }
        assert!(l.len() <= MAX_KEYS);
        let last = MAX_KEYS * 2 - 1;
        assert!(
            l.blocked(&last, t0 + Duration::from_millis(last as u64))
                .is_some(),
            "the newest failures are kept"
        );
    }
}
