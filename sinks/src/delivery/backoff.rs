//! The wait between delivery attempts: exponential backoff with full jitter, never sooner
//! than a `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RetryConfig;

/// A small xorshift generator: jitter needs spread, not cryptographic quality.
pub(super) struct Jitter(u64);

impl Jitter {
    pub(super) fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Full jitter: uniform in [0, cap].
    pub(super) fn upto(&mut self, cap: Duration) -> Duration {
        let ms = cap.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { self.next() % (ms + 1) })
    }
}

/// Exponential backoff with full jitter, never sooner than the server asked.
pub fn backoff(
    retry: &RetryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: &mut impl FnMut(Duration) -> Duration,
) -> Duration {
    let exp = retry
        .initial()
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let cap = exp.min(retry.max());
    let d = jitter(cap).max(Duration::from_millis(1));
    match retry_after {
        Some(ra) => d.max(ra),
        None => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honors_retry_after() {
        let r = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            max_elapsed_secs: 10,
        };
        let mut top = |cap: Duration| cap;
        assert_eq!(backoff(&r, 0, None, &mut top), Duration::from_millis(100));
        assert_eq!(backoff(&r, 2, None, &mut top), Duration::from_millis(400));
        assert_eq!(backoff(&r, 10, None, &mut top), Duration::from_millis(1000));
        assert_eq!(backoff(&r, 40, None, &mut top), Duration::from_millis(1000));
        assert_eq!(
            backoff(&r, 0, Some(Duration::from_secs(3)), &mut top),
            Duration::from_secs(3)
        );
        let mut j = Jitter::new();
        for _ in 0..100 {
            assert!(j.upto(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
    }
}
