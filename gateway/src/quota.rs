//! Byte leases against a customer's quota, so a transfer never runs more than
//! a bounded amount past it, whatever the link's speed.
//!
//! Usage is folded into the customer's total once a second, which alone would
//! let a connection run a second of line rate past its quota (50 MB of a 1 MB
//! quota on loopback). Instead, a transfer of a customer with a quota moves
//! bytes only out of a [`Lease`]: before each chunk it takes what the chunk
//! needs from the lease, and an empty lease is refilled from what the quota has
//! left ([`QuotaLedger`]: the quota, less the bytes already counted, less every
//! lease outstanding). When nothing is left the lease is *cut*: the chunk does
//! not move, and the transfer ends at once.
//!
//! The overshoot is therefore at most one chunk per connection (the relay's
//! 64 KiB, or one read of a plain-HTTP exchange): with N connections at once,
//! N chunks. In a fleet each gateway leases against the fleet's count as of the
//! last heartbeat, so other gateways' bytes of the last second can add to that
//! (see docs/customers.md).
//!
//! With the control plane's store, the quota is the least any of the
//! account's daily, monthly and lifetime periods (and its customer's, for a
//! sub-user) has left ([`quota_of`], [`used_by`]); the control link recounts
//! it from the store every second while the account moves bytes.

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Most bytes one refill takes from the quota: large enough that a fast
/// transfer refills a few thousand times a second at most, small enough that
/// bytes leased and left unused by a connection that ends are few.
pub const LEASE_BYTES: u64 = 256 * 1024;

/// What every customer's open leases hold, not yet counted in usage.
#[derive(Debug, Default)]
pub struct QuotaLedger {
    /// Per customer: bytes leased out and not yet folded into usage or given
    /// back. An entry lives while the customer has a transfer open.
    outstanding: DashMap<String, Arc<AtomicU64>>,
}

impl QuotaLedger {
    /// A lease for one transfer of `customer`, whose quota is `quota` bytes.
    pub fn open(self: &Arc<Self>, customer: &str, quota: u64) -> Lease {
        let outstanding = self
            .outstanding
            .entry(customer.to_owned())
            .or_default()
            .clone();
        Lease {
            ledger: self.clone(),
            customer: customer.to_owned(),
            quota,
            outstanding,
            held: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            cut: CancellationToken::new(),
        }
    }

    /// Bytes `customer`'s open leases hold beyond its counted usage.
    pub fn outstanding(&self, customer: &str) -> u64 {
        self.outstanding
            .get(customer)
            .map_or(0, |held| held.load(Ordering::Relaxed))
    }
}

/// One transfer's lease (see the module doc). Taken from by both directions
/// of the transfer at once, hence the atomics.
#[derive(Debug)]
pub struct Lease {
    ledger: Arc<QuotaLedger>,
    customer: String,
    quota: u64,
    /// The customer's outstanding leases, shared with its other transfers.
    outstanding: Arc<AtomicU64>,
    /// Bytes leased to this transfer and not yet used.
    held: AtomicU64,
    /// Bytes leased to this transfer in all.
    granted: AtomicU64,
    /// Of those, bytes already folded into usage.
    settled: AtomicU64,
    /// Fires when the quota has nothing left for this transfer.
    cut: CancellationToken,
}

impl Lease {
    /// Takes `bytes` for one chunk that cannot be split (the relay's),
    /// refilling from the quota when the lease runs short; `used` reads the
    /// customer's counted usage. `false` when the quota has nothing left: the
    /// chunk must not move, and [`Lease::cut`] has fired. The last chunk that
    /// moves may pass the quota by less than its own size; the cut waits for
    /// the next take, so that chunk is moved and counted, not dropped.
    pub fn take(&self, bytes: u64, used: impl Fn() -> u64) -> bool {
        self.take_up_to(bytes, used) > 0 || bytes == 0
    }

    /// Takes up to `bytes` for bytes that can be cut short (a plain-HTTP read
    /// or write): how many may move, never past the quota; 0 once it is spent
    /// (and [`Lease::cut`] has fired: only then, never with bytes granted).
    pub fn take_up_to(&self, bytes: u64, used: impl Fn() -> u64) -> u64 {
        if self.cut.is_cancelled() {
            return 0;
        }
        // What the lease still holds goes first, all of it if need be, so
        // no leased byte is left unused when the quota runs out.
        let from_held = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            })
            .map_or(0, |held| held.min(bytes));
        let need = bytes - from_held;
        if need == 0 {
            return bytes;
        }
        let wanted = need.max(LEASE_BYTES);
        let mut outstanding = self.outstanding.load(Ordering::Relaxed);
        loop {
            let left = self
                .quota
                .saturating_sub(used().saturating_add(outstanding));
            if left == 0 {
                // The cut fires only on a take that lets nothing through:
                // it ends the transfer at once, so bytes let through here
                // would be leased, perhaps half sent, and never counted,
                // leaving the store's count short of the quota the cut
                // enforced. Their direction's next take (after they are
                // counted) fires it.
                if from_held == 0 {
                    self.cut.cancel();
                }
                return from_held;
            }
            // Whatever is left, even short of what is needed: a chunk that
            // cannot be split then moves past the quota by less than its own
            // size, one that can moves only this much, and the next is cut.
            let grant = wanted.min(left);
            match self.outstanding.compare_exchange_weak(
                outstanding,
                outstanding + grant,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.granted.fetch_add(grant, Ordering::Relaxed);
                    self.held
                        .fetch_add(grant.saturating_sub(need), Ordering::Relaxed);
                    return from_held + grant.min(need);
                }
                Err(now) => outstanding = now,
            }
        }
    }

    /// Gives back `bytes` that [`Lease::take_up_to`] granted and that did
    /// not move after all (a write that took fewer, or none yet: it is tried
    /// again and takes again), so the lease holds them for the next take
    /// instead of losing them to the quota uncounted.
    pub fn give_back(&self, bytes: u64) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records that `folded` more bytes of this transfer are now in the
    /// customer's counted usage, so the ledger stops holding them twice.
    pub fn settle(&self, folded: u64) {
        let granted = self.granted.load(Ordering::Relaxed);
        let settled = self.settled.load(Ordering::Relaxed);
        // Bytes that moved past an empty lease (a cut chunk's overshoot)
        // were never leased: only leased bytes leave the ledger.
        let settle = folded.min(granted.saturating_sub(settled));
        self.settled.fetch_add(settle, Ordering::Relaxed);
        self.outstanding.fetch_sub(settle, Ordering::Relaxed);
    }

    /// Resolves when the quota has nothing left for this transfer.
    pub async fn cut(&self) {
        self.cut.cancelled().await
    }

    /// Whether the lease has been cut.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }
}

impl Drop for Lease {
    /// Gives back what this transfer leased and did not settle.
    fn drop(&mut self) {
        let unsettled = self
            .granted
            .load(Ordering::Relaxed)
            .saturating_sub(self.settled.load(Ordering::Relaxed));
        let before = self.outstanding.fetch_sub(unsettled, Ordering::Relaxed);
        if before == unsettled {
            // The last bytes out: forget the customer unless a transfer of its
            // own opened in the meantime (it holds another clone).
            self.ledger
                .outstanding
                .remove_if(&self.customer, |_, held| Arc::strong_count(held) <= 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64 as Counter;

    const CHUNK: u64 = 64 * 1024;

    /// Moves chunks through `lease` until it is cut; returns the bytes moved.
    fn drain(lease: &Lease, used: &Counter) -> u64 {
        let mut moved = 0;
        while lease.take(CHUNK, || used.load(Ordering::Relaxed)) {
            moved += CHUNK;
            assert!(moved < 1 << 40, "never cut");
        }
        moved
    }

    #[test]
    fn one_transfer_stops_within_a_chunk_of_the_quota() {
        let ledger = Arc::new(QuotaLedger::default());
        let used = Counter::new(0);
        let quota = 1_000_000;
        let lease = ledger.open("alice", quota);
        let moved = drain(&lease, &used);
        assert!(moved <= quota + CHUNK, "{moved}");
        assert!(
            moved + CHUNK > quota,
            "{moved}: the quota's bytes may all move"
        );
        assert!(lease.is_cut());
        assert!(!lease.take(1, || 0), "stays cut");
    }

    /// The cut ends a transfer at once (`Transfer::supervise` drops its
    /// relay), so it must not fire on a take that let a chunk through: that
    /// chunk would be dropped uncounted, and the usage the store counts
    /// would stay short of the quota the cut enforced (issue 32's flaky
    /// `a_daily_quota_cuts_a_transfer`).
    #[test]
    fn the_cut_waits_for_the_chunk_it_let_through() {
        let ledger = Arc::new(QuotaLedger::default());
        let quota = 1_000;
        let lease = ledger.open("alice", quota);
        assert!(lease.take(600, || 0));
        // 400 bytes left in the lease: the chunk moves, 200 past the quota,
        // and the transfer goes on until it is counted.
        assert!(lease.take(600, || 0));
        assert!(!lease.is_cut(), "cut with a chunk let through in flight");
        // That direction's next chunk finds nothing left: now the cut.
        assert!(!lease.take(600, || 0));
        assert!(lease.is_cut());
        // Likewise for bytes that can be cut short.
        let lease = ledger.open("bob", quota);
        assert_eq!(lease.take_up_to(600, || 0), 600);
        assert_eq!(lease.take_up_to(600, || 0), 400);
        assert!(!lease.is_cut(), "cut with bytes let through in flight");
        assert_eq!(lease.take_up_to(600, || 0), 0);
        assert!(lease.is_cut());
    }

    /// A write that moved fewer bytes than it took (or none: it waits and
    /// is tried again) gives the rest back: the quota's bytes all move, and
    /// no retry spends it twice.
    #[test]
    fn bytes_given_back_are_taken_again_not_lost() {
        let ledger = Arc::new(QuotaLedger::default());
        let quota = 1_000;
        let lease = ledger.open("alice", quota);
        // A write that took 600 and wrote none, then its retry that wrote 250.
        assert_eq!(lease.take_up_to(600, || 0), 600);
        lease.give_back(600);
        assert_eq!(lease.take_up_to(600, || 0), 600);
        lease.give_back(350);
        let mut moved = 250;
        loop {
            let granted = lease.take_up_to(300, || 0);
            if granted == 0 {
                break;
            }
            moved += granted;
        }
        assert_eq!(moved, quota);
        assert_eq!(ledger.outstanding("alice"), quota);
    }

    #[test]
    fn many_transfers_at_once_overshoot_by_at_most_a_chunk_each() {
        let ledger = Arc::new(QuotaLedger::default());
        let used = Counter::new(0);
        let quota = 5_000_000;
        let leases: Vec<Lease> = (0..32).map(|_| ledger.open("alice", quota)).collect();
        let mut moved = 0;
        let mut open = leases.len();
        while open > 0 {
            open = 0;
            for lease in &leases {
                if lease.take(CHUNK, || used.load(Ordering::Relaxed)) {
                    moved += CHUNK;
                    open += 1;
                }
            }
        }
        assert!(moved <= quota + 32 * CHUNK, "{moved}");
        assert!(moved >= quota.saturating_sub(32 * CHUNK), "{moved}");
    }

    #[test]
    fn bytes_that_can_be_cut_short_stop_exactly_at_the_quota() {
        let ledger = Arc::new(QuotaLedger::default());
        let quota = 1_000_000;
        let lease = ledger.open("alice", quota);
        let mut moved = 0;
        loop {
            let granted = lease.take_up_to(100_000, || 0);
            if granted == 0 {
                break;
            }
            moved += granted;
        }
        assert_eq!(moved, quota);
        assert!(lease.is_cut());
    }

    #[test]
    fn folded_bytes_leave_the_ledger_and_unused_leases_come_back() {
        let ledger = Arc::new(QuotaLedger::default());
        let used = Counter::new(0);
        let lease = ledger.open("alice", 10 * LEASE_BYTES);
        assert!(lease.take(CHUNK, || used.load(Ordering::Relaxed)));
        assert_eq!(ledger.outstanding("alice"), LEASE_BYTES);
        // The fold counts the chunk in usage and settles it.
        used.fetch_add(CHUNK, Ordering::Relaxed);
        lease.settle(CHUNK);
        assert_eq!(ledger.outstanding("alice"), LEASE_BYTES - CHUNK);
        drop(lease);
        assert_eq!(ledger.outstanding("alice"), 0);
        assert!(ledger.outstanding.is_empty(), "forgotten once idle");
        // A customer with the quota spent in usage gets nothing.
        used.store(10 * LEASE_BYTES, Ordering::Relaxed);
        let late = ledger.open("alice", 10 * LEASE_BYTES);
        assert!(!late.take(1, || used.load(Ordering::Relaxed)));
    }
}
