//! Places on the admin port, kept so that strangers holding idle connections
//! never lock the operator out: each source network (an IPv4 address, an IPv6
//! /64) holds at most [`PER_SOURCE`] connections, and when all [`MAX_ADMIN_CONNECTIONS`]
//! places are taken, a new connection takes the place of the oldest one that
//! has not yet made an authorized request. Only connections that proved the
//! admin token (or, on a port without one, made a request) keep their place.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Most admin connections served at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Most admin connections one source network holds at once.
pub const PER_SOURCE: usize = 8;

/// The admin port's places.
#[derive(Debug, Default)]
pub struct Slots {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Open connections, oldest first.
    open: BTreeMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    proven: Arc<AtomicBool>,
    evict: CancellationToken,
}

/// One connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Set once the connection has made an authorized request.
    pub proven: Arc<AtomicBool>,
    /// Cancelled when a newer connection took this place.
    pub evicted: CancellationToken,
}

/// The network a source is counted in: IPv6 by /64, which one subscriber
/// typically holds whole.
fn source_network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

impl Slots {
    /// A place for a connection from `source`, or `None` when its network
    /// holds its share or every place belongs to a proven connection.
    pub fn take(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let source = source_network(source);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.per_source.get(&source).copied().unwrap_or(0) >= PER_SOURCE {
            return None;
        }
        if inner.open.len() >= MAX_ADMIN_CONNECTIONS {
            let oldest_unproven = inner
                .open
                .iter()
                .find(|(_, entry)| !entry.proven.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            let evicted = inner.remove(oldest_unproven).expect("found above");
            evicted.evict.cancel();
        }
        let id = inner.next;
        inner.next += 1;
        let proven = Arc::new(AtomicBool::new(false));
        let evicted = CancellationToken::new();
        inner.open.insert(
            id,
            Entry {
                source,
                proven: proven.clone(),
                evict: evicted.clone(),
            },
        );
        *inner.per_source.entry(source).or_default() += 1;
        Some(Slot {
            slots: self.clone(),
            id,
            proven,
            evicted,
        })
    }

    /// Connections holding a place now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&entry.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_holds_its_share_and_no_more() {
        let slots = Arc::new(Slots::default());
        let held: Vec<Slot> = (0..PER_SOURCE)
            .map(|_| slots.take(ip("192.0.2.1")).unwrap())
            .collect();
        assert!(slots.take(ip("192.0.2.1")).is_none());
        // An IPv6 /64 is one source.
        let v6: Vec<Slot> = (0..PER_SOURCE)
            .map(|i| slots.take(ip(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert!(slots.take(ip("2001:db8::ffff")).is_none());
        assert!(slots.take(ip("2001:db8:0:1::1")).is_some());
        drop(held);
        assert!(slots.take(ip("192.0.2.1")).is_some());
        drop(v6);
    }

    #[test]
    fn when_full_the_oldest_unproven_gives_way_and_proven_ones_stay() {
        let slots = Arc::new(Slots::default());
        let held: Vec<Slot> = (0..MAX_ADMIN_CONNECTIONS)
            .map(|i| {
                slots
                    .take(ip(&format!("10.0.{}.{}", i / 8, i % 8)))
                    .unwrap()
            })
            .collect();
        held[0].proven.store(true, Ordering::Relaxed);
        let newcomer = slots.take(ip("192.0.2.9")).expect("a place is made");
        assert!(!held[0].evicted.is_cancelled(), "proven connections stay");
        assert!(
            held[1].evicted.is_cancelled(),
            "the oldest unproven one gives way"
        );
        assert_eq!(slots.len(), MAX_ADMIN_CONNECTIONS);
        for slot in &held {
            slot.proven.store(true, Ordering::Relaxed);
        }
        newcomer.proven.store(true, Ordering::Relaxed);
        assert!(slots.take(ip("192.0.2.10")).is_none(), "every place proven");
    }
}
