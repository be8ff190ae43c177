//! Sticky sessions: which exit a (customer, session id) is pinned to, until when.
//!
//! Kept behind the [`SessionStore`] trait so that several gateways can later share
//! pins through Redis/Valkey; [`MemorySessions`] is the in-process store. Pins name
//! the agent's device id, not its connection, so a session survives an agent's
//! brief reconnect. Expired pins are swept, and the store has two hard bounds: in
//! total and per customer, so one customer cannot fill the table for everyone.
//! A full store refuses new pins at once (no scan); the periodic sweep frees room.

use crate::counts;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// Most pins held at once; beyond it new sessions are refused (429) until some
/// expire.
pub const MAX_SESSIONS: usize = 1_000_000;

/// Most pins one customer may hold, unless the account sets `max_sessions`.
pub const DEFAULT_MAX_SESSIONS_PER_CUSTOMER: usize = 10_000;

/// How often expired pins are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Identifies one customer's session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Base user name.
    pub customer: String,
    /// The customer's session id.
    pub session: String,
}

/// Where a session is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The exit's device id.
    pub agent_id: String,
    /// When the pin lapses (fixed at first use: `sesstime` counts from there).
    pub expires_at: Instant,
}

/// Why a pin could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionsFull {
    /// The store holds its total maximum.
    #[error("the gateway holds its maximum of {0} sessions")]
    Gateway(usize),
    /// The customer holds their maximum.
    #[error("the account holds its maximum of {0} sessions")]
    Customer(usize),
}

/// Storage for session pins.
pub trait SessionStore: Send + Sync {
    /// The live pin for `key`, if any (an expired pin is absent).
    fn get(&self, key: &SessionKey, now: Instant) -> Option<Pinned>;
    /// Whether `customer` may pin one more session (at most `per_customer`).
    fn has_room(&self, customer: &str, per_customer: usize) -> Result<(), SessionsFull>;
    /// Pins `key`, replacing any earlier pin; a new pin counts against the total
    /// and the customer's `per_customer`.
    fn put(&self, key: SessionKey, pinned: Pinned, per_customer: usize)
        -> Result<(), SessionsFull>;
    /// Drops expired pins; returns how many were dropped.
    fn sweep(&self, now: Instant) -> usize;
    /// Pins held (live or not yet swept).
    fn len(&self) -> usize;
    /// Whether no pin is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Agrees a new or moved pin with whoever else pins sessions (the other
    /// gateways of a fleet) before its exit is opened; may change `pinned`'s
    /// expiry or, answering [`Settle::Elsewhere`], store another pin. Pins kept
    /// in this process alone settle at once.
    fn settle<'a>(&'a self, _key: &'a SessionKey, _pinned: &'a mut Pinned) -> Settling<'a> {
        Box::pin(std::future::ready(Settle::Ours))
    }
}

/// A pin being settled ([`SessionStore::settle`]).
pub type Settling<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Settle> + Send + 'a>>;

/// What settling a pin this gateway chose came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// It is the pin now (or nobody else could be asked: the local choice
    /// stands).
    Ours,
    /// The session was already pinned to the same exit.
    Found,
    /// The session is pinned to another exit, now stored here: route again.
    Elsewhere,
}

/// Session pins in this process's memory.
#[derive(Debug)]
pub struct MemorySessions {
    pins: DashMap<SessionKey, Pinned>,
    /// Pins held per customer (entries at zero are dropped).
    per_customer: DashMap<String, usize>,
    capacity: usize,
}

impl MemorySessions {
    /// A store holding at most `capacity` pins.
    pub fn new(capacity: usize) -> Self {
        MemorySessions {
            pins: DashMap::new(),
            per_customer: DashMap::new(),
            capacity,
        }
    }

    fn held_by(&self, customer: &str) -> usize {
        self.per_customer.get(customer).map_or(0, |count| *count)
    }
}

impl Default for MemorySessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS)
    }
}

impl SessionStore for MemorySessions {
    fn get(&self, key: &SessionKey, now: Instant) -> Option<Pinned> {
        self.pins
            .get(key)
            .filter(|pin| pin.expires_at > now)
            .map(|pin| pin.clone())
    }

    fn has_room(&self, customer: &str, per_customer: usize) -> Result<(), SessionsFull> {
        if self.pins.len() >= self.capacity {
            return Err(SessionsFull::Gateway(self.capacity));
        }
        if self.held_by(customer) >= per_customer {
            return Err(SessionsFull::Customer(per_customer));
        }
        Ok(())
    }

    fn put(
        &self,
        key: SessionKey,
        pinned: Pinned,
        per_customer: usize,
    ) -> Result<(), SessionsFull> {
        if let Some(mut existing) = self.pins.get_mut(&key) {
            *existing = pinned;
            return Ok(());
        }
        self.has_room(&key.customer, per_customer)?;
        counts::up(&self.per_customer, key.customer.clone());
        self.pins.insert(key, pinned);
        Ok(())
    }

    fn sweep(&self, now: Instant) -> usize {
        let before = self.pins.len();
        self.pins.retain(|key, pin| {
            let live = pin.expires_at > now;
            if !live {
                counts::down(&self.per_customer, key.customer.as_str());
            }
            live
        });
        before.saturating_sub(self.pins.len())
    }

    fn len(&self) -> usize {
        self.pins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: &str) -> SessionKey {
        SessionKey {
            customer: "alice".into(),
            session: session.into(),
        }
    }

    #[test]
    fn pins_expire_and_are_swept() {
        let store = MemorySessions::new(10);
        let now = Instant::now();
        let pin = Pinned {
            agent_id: "a".into(),
            expires_at: now + Duration::from_secs(60),
        };
        store.put(key("s"), pin.clone(), 100).unwrap();
        assert_eq!(store.get(&key("s"), now), Some(pin));
        let later = now + Duration::from_secs(61);
        assert_eq!(store.get(&key("s"), later), None);
        assert_eq!(store.sweep(later), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn the_store_is_bounded() {
        let store = MemorySessions::new(2);
        let expires_at = Instant::now() + Duration::from_secs(60);
        for name in ["a", "b"] {
            store
                .put(
                    key(name),
                    Pinned {
                        agent_id: name.into(),
                        expires_at,
                    },
                    100,
                )
                .unwrap();
        }
        assert_eq!(
            store.put(
                key("c"),
                Pinned {
                    agent_id: "c".into(),
                    expires_at
                },
                100
            ),
            Err(SessionsFull::Gateway(2))
        );
        // Re-pinning an existing session is always possible.
        store
            .put(
                key("a"),
                Pinned {
                    agent_id: "z".into(),
                    expires_at,
                },
                100,
            )
            .unwrap();
    }

    #[test]
    fn each_customer_has_a_bound_of_its_own() {
        let store = MemorySessions::new(100);
        let expires_at = Instant::now() + Duration::from_secs(60);
        let pin = |agent: &str| Pinned {
            agent_id: agent.into(),
            expires_at,
        };
        for name in ["a", "b"] {
            store.put(key(name), pin(name), 2).unwrap();
        }
        assert_eq!(
            store.put(key("c"), pin("c"), 2),
            Err(SessionsFull::Customer(2))
        );
        assert_eq!(store.has_room("alice", 2), Err(SessionsFull::Customer(2)));
        let bob = SessionKey {
            customer: "bob".into(),
            session: "c".into(),
        };
        store.put(bob, pin("c"), 2).unwrap();
        // Expired pins free the customer's room at the sweep.
        assert_eq!(store.sweep(expires_at + Duration::from_secs(1)), 3);
        assert_eq!(store.has_room("alice", 2), Ok(()));
    }
}
