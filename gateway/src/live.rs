//! The live connections registry: every customer transfer this gateway is
//! carrying now (who, from where, to what, through which exit, how, bytes so
//! far, since when), so an operator can list them and close one or all of a
//! customer's (`/api/v1/connections`, [`crate::admin`]).
//!
//! The hot path pays one insert when a transfer starts
//! ([`crate::customer::transfer`]) and one remove when it ends (the
//! [`Registration`] dropped); the byte counts are the relay's own
//! [`LiveCounters`], read only when someone lists. Closing cancels the
//! transfer's token, which its supervisor watches beside the relay: the
//! customer's connection is reset at once.
//!
//! The table is bounded by [`MAX_LIVE`]; a transfer beyond it is carried as
//! usual but not listed (and so cannot be closed from here), counted in
//! [`LiveConnections::unlisted`].

use dashmap::DashMap;
use exitpool_transport::relay::LiveCounters;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Most transfers listed at once: far above what a gateway carries (each is
/// at least one socket and one tunnel stream), so it bounds only a runaway.
pub const MAX_LIVE: usize = 1 << 20;

/// What a transfer is, as registered when it starts.
#[derive(Debug, Clone)]
pub struct NewLive {
    /// The account: `alice`, or a sub-user's `ops.alice`.
    pub user: String,
    /// The customer's address.
    pub peer: SocketAddr,
    /// `host:port` as the customer named it.
    pub target: String,
    /// The exit's public id.
    pub exit_id: String,
    /// The exit's country, when known.
    pub country: Option<String>,
    /// `connect`, `socks5` or `http`.
    pub protocol: &'static str,
}

/// One listed transfer.
#[derive(Debug)]
pub struct Live {
    /// Unique on this gateway for its life.
    pub id: u64,
    /// What it is.
    pub what: NewLive,
    /// The relay's byte counts (up is towards the target).
    pub counters: Arc<LiveCounters>,
    /// When it started (wall clock, for the answer).
    pub since: SystemTime,
    /// When it started (for its age).
    pub started: Instant,
    close: CancellationToken,
}

impl Live {
    /// The customer an account belongs to: `alice` for `alice` and `ops.alice`.
    pub fn customer(&self) -> &str {
        customer_of(&self.what.user)
    }
}

/// The customer of a user name: the part after the first `.` (a sub-user's
/// `sub.customer`), else the name itself.
pub fn customer_of(user: &str) -> &str {
    user.split_once('.').map_or(user, |(_, customer)| customer)
}

#[derive(Debug, Default)]
struct Inner {
    entries: DashMap<u64, Arc<Live>>,
    len: AtomicUsize,
    next_id: AtomicU64,
    unlisted: AtomicU64,
}

/// The registry (cheap to clone: one shared table).
#[derive(Debug, Clone, Default)]
pub struct LiveConnections {
    inner: Arc<Inner>,
}

/// A transfer's place in the registry: removed when dropped; its
/// [`Registration::closed`] resolves when an operator closes it.
#[derive(Debug)]
pub struct Registration {
    inner: Arc<Inner>,
    id: u64,
    close: CancellationToken,
}

impl Registration {
    /// Cancelled once an operator closes this transfer.
    pub fn closing(&self) -> CancellationToken {
        self.close.clone()
    }

    /// Its id in the list.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.inner.entries.remove(&self.id).is_some() {
            self.inner.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl LiveConnections {
    /// Lists a starting transfer whose bytes `counters` counts; `None` (not
    /// listed, counted in [`Self::unlisted`]) when [`MAX_LIVE`] are listed.
    pub fn register(&self, what: NewLive, counters: Arc<LiveCounters>) -> Option<Registration> {
        if self.inner.len.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE {
            self.inner.len.fetch_sub(1, Ordering::Relaxed);
            self.inner.unlisted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let close = CancellationToken::new();
        let live = Arc::new(Live {
            id,
            what,
            counters,
            since: SystemTime::now(),
            started: Instant::now(),
            close: close.clone(),
        });
        self.inner.entries.insert(id, live);
        Some(Registration {
            inner: self.inner.clone(),
            id,
            close,
        })
    }

    /// The listed transfers, oldest first, of `customer` (its own and its
    /// sub-users', or one sub-user's when given `sub.customer`) or all; at
    /// most `limit`. Also answers how many matched in all.
    pub fn list(&self, customer: Option<&str>, limit: usize) -> (Vec<Arc<Live>>, usize) {
        let mut found: Vec<Arc<Live>> = self
            .inner
            .entries
            .iter()
            .filter(|entry| customer.is_none_or(|name| matches(entry.value(), name)))
            .map(|entry| entry.value().clone())
            .collect();
        let total = found.len();
        found.sort_unstable_by_key(|live| live.id);
        found.truncate(limit);
        (found, total)
    }

    /// Closes transfer `id`; whether it was listed.
    pub fn close(&self, id: u64) -> bool {
        let live = self
            .inner
            .entries
            .get(&id)
            .map(|entry| entry.value().clone());
        live.map(|live| live.close.cancel()).is_some()
    }

    /// Closes every transfer of `customer` (as [`Self::list`] matches it);
    /// how many.
    pub fn close_customer(&self, customer: &str) -> usize {
        let (found, _) = self.list(Some(customer), usize::MAX);
        for live in &found {
            live.close.cancel();
        }
        found.len()
    }

    /// How many are listed now.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Transfers carried without a place in the list since start.
    pub fn unlisted(&self) -> u64 {
        self.inner.unlisted.load(Ordering::Relaxed)
    }
}

/// Whether `live` belongs to `name`: a customer matches its own and its
/// sub-users' transfers, `sub.customer` only that sub-user's.
fn matches(live: &Live, name: &str) -> bool {
    if name.contains('.') {
        live.what.user == name
    } else {
        live.customer() == name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(user: &str) -> NewLive {
        NewLive {
            user: user.into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            target: "example.com:443".into(),
            exit_id: "e1".into(),
            country: Some("DE".into()),
            protocol: "connect",
        }
    }

    #[tokio::test]
    async fn register_list_close_and_drop() {
        let live = LiveConnections::default();
        let a = live.register(new("alice"), Arc::default()).unwrap();
        let b = live.register(new("ops.alice"), Arc::default()).unwrap();
        let c = live.register(new("bob"), Arc::default()).unwrap();
        assert_eq!(live.len(), 3);
        assert_eq!(live.list(Some("alice"), 100).1, 2);
        assert_eq!(live.list(Some("ops.alice"), 100).1, 1);
        assert_eq!(live.list(None, 1).0.len(), 1);
        assert_eq!(live.list(None, 1).0[0].id, a.id());
        assert!(live.close(c.id()));
        tokio::time::timeout(std::time::Duration::from_secs(1), c.closing().cancelled())
            .await
            .expect("closing resolves the registration's wait");
        assert_eq!(live.close_customer("alice"), 2);
        tokio::time::timeout(std::time::Duration::from_secs(1), b.closing().cancelled())
            .await
            .expect("closing a customer's closes its sub-users'");
        drop((a, b, c));
        assert!(live.is_empty());
        assert!(!live.close(1));
    }
}
