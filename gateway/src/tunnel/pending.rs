//! The agent handshakes in progress on both tunnel transports, bounded in
//! total and per source network, so silent or slow handshakes cannot take the
//! gateway's memory or keep real agents out. The QUIC endpoint and the TCP
//! tunnel port ([`super::endpoint`], [`super::tcp`]) draw from one budget.

use crate::abuse::{AddressSlot, AddressSlots};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// Most QUIC handshakes + `Hello`s in progress at once; beyond this new agents are
/// refused at once (they retry with backoff) instead of queueing without bound.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Least time between two "too many pending handshakes" warnings.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Most handshakes in progress from one address.
pub const MAX_PENDING_PER_ADDRESS: usize = 16;

/// The handshakes in progress on both transports, bounded in total and per
/// source network: one budget, so an agent cannot double it by using both.
/// (The fleet's peer port keeps one of its own, [`PendingHandshakes::new`].)
#[derive(Debug)]
pub struct PendingHandshakes {
    /// Whose handshakes, for the refusal warning.
    what: &'static str,
    total: usize,
    permits: Arc<Semaphore>,
    per_address: Arc<AddressSlots>,
    /// Refusals since the last warning, and when that was.
    refusals: Mutex<(u64, std::time::Instant)>,
}

/// A handshake's place in [`PendingHandshakes`], given back on drop.
pub type PendingSlot = (OwnedSemaphorePermit, AddressSlot);

impl Default for PendingHandshakes {
    fn default() -> Self {
        PendingHandshakes::new("agent", MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_ADDRESS)
    }
}

impl PendingHandshakes {
    /// At most `total` of `what`'s handshakes at once, `per_address` from one
    /// source network.
    pub fn new(what: &'static str, total: usize, per_address: usize) -> PendingHandshakes {
        PendingHandshakes {
            what,
            total,
            permits: Arc::new(Semaphore::new(total)),
            per_address: AddressSlots::new(per_address),
            refusals: Mutex::new((0, std::time::Instant::now() - REFUSAL_WARNING_INTERVAL)),
        }
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// A place for one more handshake from `ip`, or `None` (refuse it).
    pub fn try_admit(&self, ip: IpAddr) -> Option<PendingSlot> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Under a stampede this fires thousands of times a second: warn once
            // per interval with a count, not once per refusal.
            let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            refusals.0 += 1;
            if refusals.1.elapsed() >= REFUSAL_WARNING_INTERVAL {
                warn!(
                    refused = refusals.0,
                    "too many pending {} handshakes; refusing new ones", self.what
                );
                *refusals = (0, std::time::Instant::now());
            }
            return None;
        };
        // One address cannot take the whole budget with silent handshakes.
        let Some(slot) = self.per_address.try_acquire(ip) else {
            debug!(remote = %ip, "too many pending handshakes from this address; refusing");
            return None;
        };
        Some((permit, slot))
    }
}
