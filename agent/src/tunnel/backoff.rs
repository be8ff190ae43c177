//! Capped exponential backoff with full jitter, between one failed tunnel and
//! the next attempt ([`super::reconnect`] resets it once a tunnel stayed up).

use rand::Rng;
use std::time::Duration;

/// First reconnect delay cap; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest reconnect delay, so agents are back soon after a gateway restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    /// The next delay: uniform in [0, min(max, base * 2^failures)).
    pub fn next_delay(&mut self) -> Duration {
        let cap = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        cap.mul_f64(rand::rng().random::<f64>())
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
