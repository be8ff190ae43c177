//! Sticky sessions that agree across the fleet: the pin lives in Redis with
//! its expiry, and each gateway caches it in its own session store.
//!
//! A session's first connection on a gateway settles the pin in one round trip
//! (a script, so two gateways pinning the same new session at the same moment
//! end up with one pin: whoever comes second is told the first one's exit).
//! Later connections on that gateway use the cached pin: no round trip. A move
//! (the pinned exit left) is settled the same way, so two gateways moving one
//! session agree on where it went.

use super::{keys, Fleet, FleetError};
use crate::sessions::{
    MemorySessions, Pinned, SessionKey, SessionStore, SessionsFull, Settle, Settling,
};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Sets the pin to `ARGV[2]` when it is still what the caller last saw
/// (`ARGV[1]`: an exit id, or empty for "no pin"), keeping a pin's expiry on a
/// move and giving a new pin `ARGV[3]` ms; otherwise leaves it. Answers the
/// pin in force, its milliseconds to live, and 1 if this call set it.
const SETTLE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {ARGV[2], tonumber(ARGV[3]), 1}
end
if current == ARGV[1] and current ~= ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return {ARGV[2], redis.call('PTTL', KEYS[1]), 1}
end
return {current, redis.call('PTTL', KEYS[1]), 0}
";

static SETTLE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));

/// The pin in force after settling, and how long it has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The exit's device id.
    pub agent_id: String,
    /// Time left before the pin lapses.
    pub expires_in: Duration,
    /// Whether this call set it (a new pin or a move), rather than finding it.
    pub set_here: bool,
}

impl Fleet {
    /// Pins `customer`'s `session` to `candidate` unless the fleet already
    /// pinned it elsewhere: `seen` is the pin this gateway last knew (`None`
    /// for a session it has not seen), `lifetime` a new pin's expiry. One
    /// round trip.
    pub async fn settle_session(
        &self,
        customer: &str,
        session: &str,
        seen: Option<&str>,
        candidate: &str,
        lifetime: Duration,
    ) -> Result<Settled, FleetError> {
        self.counters.session_round_trips.inc();
        let mut invocation = SETTLE_SCRIPT.key(keys::session(customer, session));
        invocation
            .arg(seen.unwrap_or(""))
            .arg(candidate)
            .arg(lifetime.as_millis().max(1) as u64);
        let mut connection = self.redis.clone();
        let (agent_id, millis, set_here): (String, i64, i64) = self
            .finish(
                "session pin",
                self.config.redis_timeout,
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Ok(Settled {
            agent_id,
            expires_in: Duration::from_millis(millis.max(0) as u64),
            set_here: set_here == 1,
        })
    }
}

/// The session store of a fleet gateway: pins cached in this process, each
/// new or moved pin settled with the fleet first ([`Fleet::settle_session`]).
pub struct FleetSessions {
    /// The pins this gateway has seen.
    pub local: MemorySessions,
    /// Where pins are agreed.
    pub fleet: Arc<Fleet>,
}

impl SessionStore for FleetSessions {
    fn get(&self, key: &SessionKey, now: Instant) -> Option<Pinned> {
        self.local.get(key, now)
    }

    fn has_room(&self, customer: &str, per_customer: usize) -> Result<(), SessionsFull> {
        self.local.has_room(customer, per_customer)
    }

    fn put(
        &self,
        key: SessionKey,
        pinned: Pinned,
        per_customer: usize,
    ) -> Result<(), SessionsFull> {
        self.local.put(key, pinned, per_customer)
    }

    fn sweep(&self, now: Instant) -> usize {
        self.local.sweep(now)
    }

    fn len(&self) -> usize {
        self.local.len()
    }

    /// One Redis round trip; the fleet out of reach leaves the local choice.
    fn settle<'a>(&'a self, key: &'a SessionKey, pinned: &'a mut Pinned) -> Settling<'a> {
        Box::pin(async move {
            let now = Instant::now();
            let seen = self.local.get(key, now).map(|pin| pin.agent_id);
            let lifetime = pinned.expires_at.saturating_duration_since(now);
            let settled = self
                .fleet
                .settle_session(
                    &key.customer,
                    &key.session,
                    seen.as_deref(),
                    &pinned.agent_id,
                    lifetime,
                )
                .await;
            match settled {
                Ok(settled) if settled.agent_id == pinned.agent_id => {
                    pinned.expires_at = now + settled.expires_in;
                    if settled.set_here {
                        Settle::Ours
                    } else {
                        Settle::Found
                    }
                }
                Ok(settled) => {
                    let adopted = Pinned {
                        agent_id: settled.agent_id,
                        expires_at: now + settled.expires_in,
                    };
                    // Room was checked when the pin was chosen; a full store
                    // leaves this request to the local choice.
                    match self.local.put(key.clone(), adopted, usize::MAX) {
                        Ok(()) => Settle::Elsewhere,
                        Err(_) => Settle::Ours,
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "session pinned here only: the fleet is out of reach");
                    Settle::Ours
                }
            }
        })
    }
}
