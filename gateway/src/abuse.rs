//! Per-address defence on the customer port: failed authentications are rate
//! limited per source address, so a flood of guessed credentials from one place
//! is refused cheaply (before any password hash runs) instead of burning CPU.
//! Good credentials never count against the limit.

use crate::error::ProxyError;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Failed authentications allowed per address per second, sustained.
pub const FAILURES_PER_SECOND: u32 = 5;
/// Failed authentications an address may make in a burst.
pub const FAILURE_BURST: u32 = 20;

/// Tracks failed authentications per source address.
pub struct AuthFailures {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over the limit, and until when they are refused.
    blocked: DashMap<IpAddr, Instant>,
}

impl std::fmt::Debug for AuthFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthFailures({} blocked)", self.blocked.len())
    }
}

impl Default for AuthFailures {
    fn default() -> Self {
        let quota = Quota::per_second(NonZeroU32::new(FAILURES_PER_SECOND).expect("non-zero"))
            .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("non-zero"));
        AuthFailures {
            limiter: RateLimiter::keyed(quota),
            blocked: DashMap::new(),
        }
    }
}

impl AuthFailures {
    /// Refuses `ip` while it is over its failure budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), ProxyError> {
        let Some(until) = self.blocked.get(&ip).map(|until| *until) else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            self.blocked.remove_if(&ip, |_, until| *until <= now);
            return Ok(());
        }
        Err(ProxyError::AuthRateLimited {
            retry_after: (until - now).as_secs().max(1),
        })
    }

    /// Counts one failed authentication from `ip`; past the budget the address
    /// is refused until the bucket has room again.
    pub fn record_failure(&self, ip: IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.blocked
                .insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
        }
    }

    /// Forgets addresses that have been quiet, so memory stays bounded.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_blocks_the_address_only() {
        let failures = AuthFailures::default();
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FAILURE_BURST {
            assert!(failures.check(guesser).is_ok());
            failures.record_failure(guesser);
        }
        failures.record_failure(guesser);
        assert!(matches!(
            failures.check(guesser),
            Err(ProxyError::AuthRateLimited { retry_after }) if retry_after >= 1
        ));
        assert!(failures.check(other).is_ok());
        failures.sweep();
        assert!(
            failures.check(guesser).is_err(),
            "still blocked after a sweep"
        );
    }
}
