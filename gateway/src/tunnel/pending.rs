//! The agent handshakes in progress on both tunnel transports, bounded in
//! total and per source network, so silent or slow handshakes cannot take the
//! gateway's memory or keep real agents out. The QUIC listener and the TCP
//! tunnel port ([`super::quic`], [`super::tcp`]) draw from one budget.
//!
//! When every place is taken, an agent's handshake takes the place of the
//! oldest handshake of the source network holding the most places, if that
//! network holds more than the newcomer's does ([`PendingHandshakes::admit`]):
//! strangers holding idle connections from a few dozen addresses (16 each)
//! then give way to an agent from anywhere else, which holds one, and cannot
//! take it back without holding fewer than it. Without that, places were
//! first come first served, and connections re-opened as they closed kept
//! agents out for as long as the flood lasted.

use crate::abuse::source_network;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
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
    per_address: usize,
    places: Arc<Mutex<Places>>,
    /// Refusals since the last warning, and when that was.
    refusals: Mutex<(u64, std::time::Instant)>,
}

/// Who holds the places.
#[derive(Debug, Default)]
struct Places {
    next: u64,
    /// Every place, oldest first: its source network and its eviction signal.
    by_age: BTreeMap<u64, (IpAddr, CancellationToken)>,
    /// The places each source network holds, oldest first.
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl Places {
    fn held_by(&self, network: &IpAddr) -> usize {
        self.by_source.get(network).map_or(0, BTreeSet::len)
    }

    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (network, evicted) = self.by_age.remove(&id)?;
        if let Some(held) = self.by_source.get_mut(&network) {
            held.remove(&id);
            if held.is_empty() {
                self.by_source.remove(&network);
            }
        }
        Some(evicted)
    }

    /// The oldest place of the network holding the most (of equals, the one
    /// whose oldest place is oldest), if it holds more than `than`.
    fn heaviest_above(&self, than: usize) -> Option<u64> {
        self.by_source
            .values()
            .filter(|held| held.len() > than)
            .filter_map(|held| Some((held.len(), std::cmp::Reverse(*held.first()?))))
            .max()
            .map(|(_, std::cmp::Reverse(oldest))| oldest)
    }
}

/// A handshake's place in [`PendingHandshakes`], given back on drop.
#[derive(Debug)]
pub struct PendingSlot {
    places: Arc<Mutex<Places>>,
    id: u64,
    /// Cancelled when another handshake took this place
    /// ([`PendingHandshakes::admit`]): the handshake should end.
    pub evicted: CancellationToken,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        lock(&self.places).remove(self.id);
    }
}

fn lock(places: &Mutex<Places>) -> std::sync::MutexGuard<'_, Places> {
    places
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
            per_address,
            places: Arc::default(),
            refusals: Mutex::new((0, std::time::Instant::now() - REFUSAL_WARNING_INTERVAL)),
        }
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        lock(&self.places).by_age.len()
    }

    /// A place for one more handshake from `ip`, or `None` (refuse it): first
    /// come, first served.
    pub fn try_admit(&self, ip: IpAddr) -> Option<PendingSlot> {
        self.place(ip, false)
    }

    /// A place for one more handshake from `ip`, taken from the network
    /// holding the most places when all are taken and it holds more than
    /// `ip`'s (that handshake's [`PendingSlot::evicted`] fires); `None`
    /// otherwise. The holder must end its handshake when evicted.
    pub fn admit(&self, ip: IpAddr) -> Option<PendingSlot> {
        self.place(ip, true)
    }

    fn place(&self, ip: IpAddr, evicting: bool) -> Option<PendingSlot> {
        let network = source_network(ip);
        let mut places = lock(&self.places);
        let held = places.held_by(&network);
        // One address cannot take the whole budget with silent handshakes.
        if held >= self.per_address {
            debug!(remote = %ip, "too many pending handshakes from this address; refusing");
            return None;
        }
        if places.by_age.len() >= self.total {
            let victim = evicting.then(|| places.heaviest_above(held + 1)).flatten();
            let Some(victim) = victim else {
                drop(places);
                self.count_refusal();
                return None;
            };
            if let Some(evicted) = places.remove(victim) {
                evicted.cancel();
            }
        }
        let id = places.next;
        places.next += 1;
        let evicted = CancellationToken::new();
        places.by_age.insert(id, (network, evicted.clone()));
        places.by_source.entry(network).or_default().insert(id);
        Some(PendingSlot {
            places: self.places.clone(),
            id,
            evicted,
        })
    }

    /// Under a stampede refusals come thousands a second: warn once per
    /// interval with a count, not once per refusal.
    fn count_refusal(&self) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals.0 += 1;
        if refusals.1.elapsed() >= REFUSAL_WARNING_INTERVAL {
            warn!(
                refused = refusals.0,
                "too many pending {} handshakes; refusing new ones", self.what
            );
            *refusals = (0, std::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_full_table_gives_a_newcomer_the_oldest_place_of_the_heaviest_network() {
        let pending = PendingHandshakes::new("test", 8, 4);
        let flood: Vec<PendingSlot> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .flat_map(|source| (0..4).map(|_| pending.admit(ip(source)).unwrap()))
            .collect();
        assert!(
            pending.try_admit(ip("198.51.100.7")).is_none(),
            "first come, first served"
        );
        let agent = pending.admit(ip("198.51.100.7")).expect("a place is made");
        assert!(
            flood[0].evicted.is_cancelled(),
            "the oldest of the heaviest gives way"
        );
        assert_eq!(flood.iter().filter(|s| s.evicted.is_cancelled()).count(), 1);
        assert_eq!(pending.in_progress(), 8);
        // The flood's networks cannot take the agent's place back: each now
        // holds as many or fewer than the heaviest, never fewer than the agent.
        drop(flood);
        assert_eq!(pending.in_progress(), 1);
        let refill: Vec<PendingSlot> = (0..7)
            .map(|i| pending.admit(ip(&format!("203.0.113.{i}"))).unwrap())
            .collect();
        assert!(
            pending.admit(ip("203.0.113.200")).is_none(),
            "everyone holds one"
        );
        assert!(!agent.evicted.is_cancelled());
        drop(refill);
    }

    #[test]
    fn a_network_holds_its_share_and_no_more() {
        let pending = PendingHandshakes::new("test", 100, 2);
        let _held: Vec<PendingSlot> = (0..2)
            .map(|i| pending.admit(ip(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert!(pending.admit(ip("2001:db8::99")).is_none(), "one /64");
        assert!(pending.admit(ip("2001:db8:0:1::1")).is_some());
    }
}
