//! Per-customer limits at the moment a connection (or plain-HTTP request) asks
//! for an exit: byte quota, requests per second, concurrent connections. Called
//! from [`crate::customer::session::open`], so every protocol gets the same answers.
//!
//! The state here (live connection counts, rate-limiter buckets) is keyed by
//! customer name and outlives reloads of the accounts file; the limits themselves
//! are read from the account on every check, so a reload takes effect at once.
//! Locking: one `DashMap` lookup per check, and a per-customer mutex held only to
//! swap a rate limiter whose rate changed.
//!
//! In a fleet ([`crate::fleet`]) each gateway is told, once a heartbeat, what the
//! rest of the fleet used ([`Elsewhere`]): its connections count against
//! `max_connections`, and this gateway's rate is what the account's rate leaves
//! after the others' last heartbeat. So the fleet-wide figures can overshoot by
//! what changed within one heartbeat, and no check waits for Redis.

use crate::auth::Customer;
use crate::error::ProxyError;
use crate::quota::QuotaLedger;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the rest of the fleet used of one customer's limits, as of its last
/// heartbeat; zero for a gateway on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// Connections open on the other gateways.
    pub connections: u32,
    /// Requests the other gateways admitted per second, lately.
    pub requests_per_second: u32,
}

/// The other gateways of a fleet, as the limits see them: what they used of
/// each customer's limits as of their last heartbeat. The fleet registers one
/// ([`Limiter::count_others`]); a lone gateway has none.
pub trait OtherGateways: Send + Sync {
    /// What the others used of `customer`'s connections and rate.
    fn elsewhere(&self, customer: &str) -> Elsewhere;
    /// `customer`'s bytes over the whole fleet, given this gateway's own
    /// count `here`.
    fn customer_bytes(&self, customer: &str, here: u64) -> u64;
}

/// One customer's runtime state.
#[derive(Default)]
struct Gate {
    /// Customer connections open now.
    live: AtomicU32,
    /// Requests admitted since the fleet last asked ([`Limiter::drain_admitted`]).
    admitted: AtomicU64,
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
    /// The byte leases of customers with a quota ([`crate::quota`]).
    leases: Arc<QuotaLedger>,
    /// The rest of the fleet, once registered.
    others: std::sync::OnceLock<Arc<dyn OtherGateways>>,
}

impl Limiter {
    /// The byte leases transfers of customers with a quota move their bytes
    /// out of.
    pub fn quota_leases(&self) -> &Arc<QuotaLedger> {
        &self.leases
    }

    /// Counts what `others` used against every limit from now on (set once,
    /// at start-up, by the fleet).
    pub fn count_others(&self, others: Arc<dyn OtherGateways>) {
        let _ = self.others.set(others);
    }

    /// What the rest of the fleet used of `customer`'s limits (zero on a
    /// lone gateway).
    pub fn elsewhere(&self, customer: &str) -> Elsewhere {
        self.others
            .get()
            .map(|others| others.elsewhere(customer))
            .unwrap_or_default()
    }

    /// `customer`'s bytes for its quota: this gateway's count `here`, or in a
    /// fleet the fleet's as of its last heartbeat plus what this gateway
    /// counted since.
    pub fn customer_bytes(&self, customer: &str, here: u64) -> u64 {
        match self.others.get() {
            Some(others) => others.customer_bytes(customer, here),
            None => here,
        }
    }

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
    /// What the rest of the fleet used counts too ([`Limiter::elsewhere`]).
    pub fn admit(&self, customer: &Customer, used_bytes: u64) -> Result<Slot, ProxyError> {
        self.admit_given(customer, used_bytes, self.elsewhere(&customer.name))
    }

    /// [`Limiter::admit`], given what the rest of the fleet used.
    fn admit_given(
        &self,
        customer: &Customer,
        used_bytes: u64,
        elsewhere: Elsewhere,
    ) -> Result<Slot, ProxyError> {
        let limits = &customer.limits;
        if let Some(quota) = limits.quota_bytes {
            if used_bytes >= quota {
                return Err(ProxyError::QuotaExhausted(quota));
            }
        }
        let gate = self.gate(&customer.name);
        if let Some(rate) = limits.requests_per_second {
            // This gateway's share: what the others left, at least one a second.
            let share = NonZeroU32::new(rate.get().saturating_sub(elsewhere.requests_per_second))
                .unwrap_or(NonZeroU32::MIN);
            if let Err(not_until) = gate.limiter(share).check() {
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
            if before.saturating_add(elsewhere.connections) >= max {
                drop(slot);
                return Err(ProxyError::TooManyConnections(max));
            }
        }
        slot.0.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(slot)
    }

    /// Each customer with connections open or requests admitted since the last
    /// call: (name, connections open, requests admitted since then), for the
    /// fleet's heartbeat. Resets the admitted counts.
    pub fn drain_admitted(&self) -> Vec<(String, u32, u64)> {
        let mut busy = Vec::new();
        for gate in self.gates.iter() {
            let live = gate.live.load(Ordering::Relaxed);
            let admitted = gate.admitted.swap(0, Ordering::Relaxed);
            if live > 0 || admitted > 0 {
                busy.push((gate.key().clone(), live, admitted));
            }
        }
        busy
    }

    /// Customer connections open now, all customers together.
    pub fn live_total(&self) -> u32 {
        self.gates
            .iter()
            .map(|gate| gate.live.load(Ordering::Relaxed))
            .fold(0, u32::saturating_add)
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

    #[test]
    fn the_rest_of_the_fleet_counts_against_the_account() {
        let limiter = Limiter::default();
        let alice = customer(Limits {
            max_connections: Some(3),
            requests_per_second: NonZeroU32::new(10),
            ..Limits::default()
        });
        let elsewhere = Elsewhere {
            connections: 2,
            requests_per_second: 9,
        };
        // Two open elsewhere leave one here; nine a second elsewhere leave one.
        let _held = limiter.admit_given(&alice, 0, elsewhere).unwrap();
        assert!(matches!(
            limiter.admit_given(
                &alice,
                0,
                Elsewhere {
                    connections: 0,
                    ..elsewhere
                }
            ),
            Err(ProxyError::RateLimited { .. })
        ));
        assert_eq!(
            limiter
                .admit_given(
                    &alice,
                    0,
                    Elsewhere {
                        requests_per_second: 0,
                        ..elsewhere
                    }
                )
                .unwrap_err(),
            ProxyError::TooManyConnections(3)
        );
        assert_eq!(limiter.drain_admitted(), vec![("alice".to_owned(), 1, 1)]);
        assert_eq!(limiter.drain_admitted(), vec![("alice".to_owned(), 1, 0)]);
    }
}
