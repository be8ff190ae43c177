//! Per-customer limits at the moment a connection (or plain-HTTP request) asks
//! for an exit: byte quota, requests per second, concurrent connections. Called
//! from [`crate::customer::session::open`], so every protocol gets the same answers.
//!
//! The state here (live connection counts, rate-limiter buckets) is keyed by
//! customer name and outlives reloads of the accounts file; the limits themselves
//! are read from the account on every check, so a reload takes effect at once.
//! Locking: one `DashMap` lookup per check, and a per-customer mutex held only to
//! swap a rate limiter whose rate changed.

use crate::auth::Customer;
use crate::error::ProxyError;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// One customer's runtime state.
#[derive(Default)]
struct Gate {
    /// Customer connections open now.
    live: AtomicU32,
    /// The rate limiter and the rate it was built for.
    rate: Mutex<Option<(NonZeroU32, Arc<DefaultDirectRateLimiter>)>>,
}

impl Gate {
    fn limiter(&self, rate: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
        let mut current = self.rate.lock().expect("rate lock poisoned");
        match &*current {
            Some((built_for, limiter)) if *built_for == rate => limiter.clone(),
            _ => {
                let limiter = Arc::new(RateLimiter::direct(Quota::per_second(rate)));
                *current = Some((rate, limiter.clone()));
                limiter
            }
        }
    }
}

/// Holds one of a customer's concurrent connections; dropping it frees it.
pub struct Slot(Arc<Gate>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every customer's limit state.
#[derive(Default)]
pub struct Limiter {
    gates: DashMap<String, Arc<Gate>>,
}

impl Limiter {
    fn gate(&self, name: &str) -> Arc<Gate> {
        if let Some(gate) = self.gates.get(name) {
            return gate.clone();
        }
        self.gates.entry(name.to_owned()).or_default().clone()
    }

    /// Checks `customer`'s limits for one more connection, given the bytes the
    /// account has used so far, in the order quota -> rate -> concurrency (a
    /// refused request does not use up a rate token or a slot). The returned slot
    /// must be held for the life of the connection.
    pub fn admit(&self, customer: &Customer, used_bytes: u64) -> Result<Slot, ProxyError> {
        let limits = &customer.limits;
        if let Some(quota) = limits.quota_bytes {
            if used_bytes >= quota {
                return Err(ProxyError::QuotaExhausted(quota));
            }
        }
        let gate = self.gate(&customer.name);
        if let Some(rate) = limits.requests_per_second {
            if let Err(not_until) = gate.limiter(rate).check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(ProxyError::RateLimited {
                    per_second: rate.get(),
                    retry_after: secs.max(1),
                });
            }
        }
        let before = gate.live.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(gate);
        if let Some(max) = limits.max_connections {
            if before >= max {
                drop(slot);
                return Err(ProxyError::TooManyConnections(max));
            }
        }
        Ok(slot)
    }

    /// Connections `name` has open now.
    pub fn live(&self, name: &str) -> u32 {
        self.gates
            .get(name)
            .map_or(0, |gate| gate.live.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Limits;

    fn customer(limits: Limits) -> Customer {
        Customer::parse("alice:x").unwrap().with_limits(limits)
    }

    #[test]
    fn concurrency_is_counted_by_slots() {
        let limiter = Limiter::default();
        let alice = customer(Limits {
            max_connections: Some(2),
            ..Limits::default()
        });
        let a = limiter.admit(&alice, 0).unwrap();
        let _b = limiter.admit(&alice, 0).unwrap();
        assert_eq!(
            limiter.admit(&alice, 0).unwrap_err(),
            ProxyError::TooManyConnections(2)
        );
        assert_eq!(limiter.live("alice"), 2);
        drop(a);
        assert!(limiter.admit(&alice, 0).is_ok());
    }

    #[test]
    fn rate_and_quota() {
        let limiter = Limiter::default();
        let alice = customer(Limits {
            requests_per_second: NonZeroU32::new(2),
            quota_bytes: Some(100),
            ..Limits::default()
        });
        assert!(limiter.admit(&alice, 0).is_ok());
        assert!(limiter.admit(&alice, 0).is_ok());
        match limiter.admit(&alice, 0).unwrap_err() {
            ProxyError::RateLimited { retry_after, .. } => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            limiter.admit(&alice, 100).unwrap_err(),
            ProxyError::QuotaExhausted(100)
        );
    }
}
