//! Per-address defences. "Address" means the source's network as
//! [`source_network`] counts it: an IPv4 address, or an IPv6 /64 (one home or
//! one server's allocation, which its holder can spread over 2^64 addresses).
//!
//! - [`AuthFailures`]: failed authentications on the customer port are rate
//!   limited per source address, so a flood of guessed credentials from one place
//!   is refused cheaply (before any password hash runs) instead of burning CPU.
//!   Good credentials never count against the limit.
//! - [`AddressSlots`]: a cap per source address on things not yet trusted
//!   (unauthenticated customer connections, agent handshakes in progress), so one
//!   address cannot take a whole shared budget.
//! - [`TlsHandshakes`]: TLS handshakes on the HTTPS proxy port are rate limited
//!   per source address before any cryptography runs, since a handshake is the
//!   most expensive thing a stranger can ask of that port.
//! - [`PasswordChecks`]: Argon2 runs on blocking threads, a bounded number at a
//!   time, each waiting at most a deadline for its turn, so a password flood
//!   slows logins (answered `auth_busy`) and never the relays on the runtime.

use crate::auth::{Customer, HashCheck};
use crate::counts;
use crate::error::ProxyError;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The network a source address counts against: IPv6 by its /64, IPv4 (and
/// IPv4-mapped IPv6) by the address itself.
pub fn source_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
    }
}

/// Runs Argon2 checks off the async runtime, at most `parallel` at a time.
#[derive(Debug)]
pub struct PasswordChecks {
    permits: Arc<tokio::sync::Semaphore>,
    queue_timeout: Duration,
}

impl PasswordChecks {
    /// At most `parallel` checks at once (about the core count: each is pure CPU);
    /// a check waits at most `queue_timeout` for its turn.
    pub fn new(parallel: usize, queue_timeout: Duration) -> Self {
        PasswordChecks {
            permits: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            queue_timeout,
        }
    }

    /// Runs `check` on a blocking thread once a place is free; past the queue
    /// deadline, [`ProxyError::AuthBusy`].
    pub async fn run(&self, check: HashCheck) -> Result<Option<Arc<Customer>>, ProxyError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ProxyError::AuthBusy)?
            .expect("the semaphore is never closed");
        // The permit goes with the work: a customer who leaves mid-check does not
        // free a place while Argon2 still runs.
        tokio::task::spawn_blocking(move || {
            let verified = check.run();
            drop(permit);
            verified
        })
        .await
        .map_err(|_| ProxyError::AuthBusy)
    }
}

/// Counts, per source address and in all, what is held and not yet trusted,
/// up to a limit for each.
#[derive(Debug)]
pub struct AddressSlots {
    counts: DashMap<IpAddr, usize>,
    limit: usize,
    held: AtomicUsize,
    total_limit: usize,
}

/// Why [`AddressSlots::acquire`] found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The address's network holds its limit.
    Address,
    /// Every place is held.
    Total,
}

impl AddressSlots {
    /// At most `limit` held per address, with no bound in all.
    pub fn new(limit: usize) -> Arc<Self> {
        Self::with_total(limit, usize::MAX)
    }

    /// At most `limit` held per address and `total_limit` in all.
    pub fn with_total(limit: usize, total_limit: usize) -> Arc<Self> {
        Arc::new(AddressSlots {
            counts: DashMap::new(),
            limit,
            held: AtomicUsize::new(0),
            total_limit,
        })
    }

    /// A slot for one more from `ip`'s network, unless it is at the limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        self.acquire(ip).ok()
    }

    /// A slot for one more from `ip`'s network, or which limit refused it.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<AddressSlot, SlotRefusal> {
        let mut count = self.counts.entry(source_network(ip)).or_insert(0);
        if *count >= self.limit {
            return Err(SlotRefusal::Address);
        }
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.total_limit {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(SlotRefusal::Total);
        }
        *count += 1;
        Ok(AddressSlot {
            table: self.clone(),
            ip,
            released: AtomicBool::new(false),
        })
    }
}

/// One place in [`AddressSlots`]; freed by [`AddressSlot::release`] (a customer
/// connection that authenticated) or on drop.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<AddressSlots>,
    ip: IpAddr,
    released: AtomicBool,
}

impl AddressSlot {
    /// The address this slot counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Frees the place now (idempotent).
    pub fn release(&self) {
        if self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        // Decrement, and drop the entry at zero so the map only holds addresses
        // with something pending.
        counts::down(&self.table.counts, &source_network(self.ip));
        self.table.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.release();
    }
}

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
        let ip = source_network(ip);
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
        let ip = source_network(ip);
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

/// Most source addresses whose handshake buckets are kept between sweeps. A
/// flood from more networks than this in one sweep interval has its newcomers
/// refused until the sweep: the table, not the memory, is what gives way.
pub const MAX_HANDSHAKE_SOURCES: usize = 65_536;

/// A per-address budget of TLS handshakes on the customer ports.
pub struct TlsHandshakes {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for TlsHandshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsHandshakes({} sources)", self.limiter.len())
    }
}

impl TlsHandshakes {
    /// `per_second` handshakes per address, sustained, with bursts of twice that
    /// (a browser opening its connection pool at once).
    pub fn new(per_second: NonZeroU32) -> Self {
        let burst = per_second.saturating_mul(NonZeroU32::new(2).expect("non-zero"));
        TlsHandshakes {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// Takes one handshake from `ip`'s budget; false when it is spent (or the
    /// table of sources is full and `ip` is new to it).
    pub fn allow(&self, ip: IpAddr) -> bool {
        let ip = source_network(ip);
        if self.limiter.len() >= MAX_HANDSHAKE_SOURCES {
            self.limiter.retain_recent();
            if self.limiter.len() >= MAX_HANDSHAKE_SOURCES {
                return false;
            }
        }
        self.limiter.check_key(&ip).is_ok()
    }

    /// Forgets addresses whose budget is whole again, so memory stays bounded.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_burst_is_refused_for_its_network_only() {
        let handshakes = TlsHandshakes::new(NonZeroU32::new(3).unwrap());
        let busy: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2::8".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::7".parse().unwrap();
        // A burst of twice the rate, then refusals, for the whole /64.
        assert_eq!((0..6).filter(|_| handshakes.allow(busy)).count(), 6);
        assert!(!handshakes.allow(busy));
        assert!(!handshakes.allow(neighbour));
        assert!(handshakes.allow(other));
    }

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

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            source_network(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(source_network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_network(ip("192.0.2.7")), ip("192.0.2.7"));

        // One /64 shares one budget of unauthenticated slots, whatever the address.
        let slots = AddressSlots::new(2);
        let first = slots.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _second = slots.try_acquire(ip("2001:db8:1:2::ffff")).unwrap();
        assert!(slots.try_acquire(ip("2001:db8:1:2:dead::beef")).is_none());
        assert!(
            slots.try_acquire(ip("2001:db8:1:3::1")).is_some(),
            "another /64"
        );
        drop(first);
        assert!(slots.try_acquire(ip("2001:db8:1:2::2")).is_some(), "freed");

        // And one budget of failed logins.
        let failures = AuthFailures::default();
        for n in 0..=FAILURE_BURST {
            failures.record_failure(ip(&format!("2001:db8:9:9::{:x}", n + 1)));
        }
        assert!(failures.check(ip("2001:db8:9:9::abcd")).is_err());
        assert!(failures.check(ip("2001:db8:9:a::1")).is_ok());
    }
}
