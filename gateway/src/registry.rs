//! The agent registry: every connected agent, and per-filter pools for routing.
//!
//! An agent is added when its `Hello` is accepted and removed the moment its QUIC
//! connection ends. Besides the map by connection key, each agent sits in one pool
//! per combination of its location fields (any / country / ASN / city and their
//! combinations: 8 pools), so that choosing an exit for any filter is a random
//! index into a vector: O(1) in the pool size, never a scan.
//!
//! Locking: `agents` is a `DashMap` read on every pick; the pools share one
//! `Mutex`, held only for O(1) vector operations and never across an `.await`.

use dashmap::DashMap;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where an exit is, as far as the gateway's GeoIP databases know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Location {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// City name (lower case, for matching).
    pub city: Option<String>,
}

/// What a customer asked for; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Required country (upper case).
    pub country: Option<String>,
    /// Required ASN.
    pub asn: Option<u32>,
    /// Required city (lower case).
    pub city: Option<String>,
}

impl Filter {
    /// Whether an exit at `location` satisfies this filter.
    pub fn matches(&self, location: &Location) -> bool {
        (self.country.is_none() || self.country == location.country)
            && (self.asn.is_none() || self.asn == location.asn)
            && (self.city.is_none() || self.city == location.city)
    }

    /// The 8 pool keys an exit at `location` belongs to (fields it lacks are only
    /// ever wildcards).
    fn pool_keys(location: &Location) -> Vec<Filter> {
        let mut keys = Vec::with_capacity(8);
        for mask in 0u8..8 {
            let pick = |bit: u8| mask & bit != 0;
            if (pick(1) && location.country.is_none())
                || (pick(2) && location.asn.is_none())
                || (pick(4) && location.city.is_none())
            {
                continue;
            }
            keys.push(Filter {
                country: location.country.clone().filter(|_| pick(1)),
                asn: location.asn.filter(|_| pick(2)),
                city: location.city.clone().filter(|_| pick(4)),
            });
        }
        keys
    }

    /// Human description for error messages, e.g. `in country US`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(country) = &self.country {
            parts.push(format!("country {country}"));
        }
        if let Some(asn) = self.asn {
            parts.push(format!("ASN {asn}"));
        }
        if let Some(city) = &self.city {
            parts.push(format!("city {city}"));
        }
        if parts.is_empty() {
            "in the pool".to_owned()
        } else {
            format!("in {}", parts.join(", "))
        }
    }
}

/// One connected agent.
#[derive(Debug)]
pub struct Agent {
    /// Unique per connection; a reconnecting agent gets a new key.
    pub key: u64,
    /// The id the agent keeps on its device.
    pub agent_id: String,
    /// Opaque, stable id customers see (a keyed hash of the agent id).
    pub exit_id: String,
    /// Position on the session hash ring, derived from the exit id.
    ring_point: u64,
    /// The token it enrolled with, so revoking that token (on reload) can
    /// disconnect it. Never shown: `Secret` hides it from `Debug`.
    pub token: exitpool_protocol::Secret,
    /// Where the exit is.
    pub location: Location,
    /// The agent's address as seen by the gateway.
    pub observed: SocketAddr,
    /// Software string from `Hello`.
    pub software: String,
    /// The agent's tunnel.
    pub connection: quinn::Connection,
    /// Most concurrent relay streams the agent accepts.
    pub max_streams: AtomicU32,
    /// Relay streams open now (counted by the gateway).
    pub active_streams: AtomicU32,
    /// False while the agent is paused, draining or over quota.
    accepting: AtomicBool,
    /// Relay streams opened over the connection's life.
    pub streams_total: AtomicU64,
    /// Bytes sent towards the target through this agent.
    pub bytes_up: AtomicU64,
    /// Bytes received from the target through this agent.
    pub bytes_down: AtomicU64,
    /// When the agent joined.
    pub connected_at: SystemTime,
}

impl Agent {
    /// Whether the agent can take one more stream now.
    pub fn has_capacity(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
            && self.active_streams.load(Ordering::Relaxed)
                < self.max_streams.load(Ordering::Relaxed)
    }

    /// Whether the agent accepts new streams at all (not paused or draining).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }
}

/// Counts one live relay stream on an agent for as long as it is held, and
/// holds the customer's concurrent-connection slot for the same time.
#[derive(Debug)]
pub struct StreamGuard(Arc<Agent>, Option<crate::limits::Slot>);

impl StreamGuard {
    /// Marks one more stream open on `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        agent.active_streams.fetch_add(1, Ordering::Relaxed);
        agent.streams_total.fetch_add(1, Ordering::Relaxed);
        StreamGuard(agent, None)
    }

    /// Keeps `slot` until this guard is dropped.
    pub fn hold(&mut self, slot: crate::limits::Slot) {
        self.1 = Some(slot);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no exit could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// No agent matches the filter.
    #[error("no exit {0}")]
    NoExit(String),
    /// Matching agents exist but all are at capacity.
    #[error("every exit {0} is busy")]
    AllBusy(String),
}

/// How many agents are connected, and how many of them take new streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Connected agents.
    pub agents: usize,
    /// Agents that take new streams (not paused, draining or over quota).
    pub accepting: usize,
}

/// Details an agent joins with.
#[derive(Debug)]
pub struct Joining {
    /// Id from `Hello`.
    pub agent_id: String,
    /// The token from `Hello`.
    pub token: exitpool_protocol::Secret,
    /// Where the exit is.
    pub location: Location,
    /// Software string from `Hello`.
    pub software: String,
    /// Stream capacity from `Hello`.
    pub max_streams: u32,
    /// Whether it takes streams from the start.
    pub accepting: bool,
    /// The agent's tunnel.
    pub connection: quinn::Connection,
}

#[derive(Default)]
struct Pool {
    members: Vec<Arc<Agent>>,
    /// Position of each member (by key) in `members`, for O(1) removal.
    positions: HashMap<u64, usize>,
    /// The same members ordered by ring point, for sticky sessions.
    ring: BTreeMap<(u64, u64), Arc<Agent>>,
}

impl Pool {
    fn insert(&mut self, agent: Arc<Agent>) {
        if self.positions.contains_key(&agent.key) {
            return;
        }
        self.positions.insert(agent.key, self.members.len());
        self.ring
            .insert((agent.ring_point, agent.key), agent.clone());
        self.members.push(agent);
    }

    fn remove(&mut self, agent: &Agent) {
        let Some(position) = self.positions.remove(&agent.key) else {
            return;
        };
        self.ring.remove(&(agent.ring_point, agent.key));
        self.members.swap_remove(position);
        if let Some(moved) = self.members.get(position) {
            self.positions.insert(moved.key, position);
        }
    }
}

/// How many ring neighbours a sticky pick weighs by rendezvous score.
const STICKY_CANDIDATES: usize = 8;

/// Mixes two 64-bit values into a well-spread score (splitmix64 finaliser).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many random candidates a pick looks at before deciding every exit is busy.
const PICK_ATTEMPTS: usize = 8;

/// All connected agents. See the module docs for the locking rules.
pub struct Registry {
    agents: DashMap<u64, Arc<Agent>>,
    by_agent_id: DashMap<String, u64>,
    pools: Mutex<HashMap<Filter, Pool>>,
    next_key: AtomicU64,
    exit_id_key: [u8; 32],
    /// Connected and accepting agents, for anyone waiting on joins, leaves,
    /// pauses and drains.
    census: tokio::sync::watch::Sender<Census>,
}

impl Registry {
    /// An empty registry; `exit_id_key` makes exit ids unguessable from agent ids
    /// and stable across gateway restarts.
    pub fn new(exit_id_key: [u8; 32]) -> Self {
        Registry {
            agents: DashMap::new(),
            by_agent_id: DashMap::new(),
            pools: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            exit_id_key,
            census: tokio::sync::watch::Sender::new(Census::default()),
        }
    }

    /// The exit id customers see for `agent_id`.
    pub fn exit_id(&self, agent_id: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.exit_id_key);
        hasher.update(agent_id.as_bytes());
        hex::encode(&hasher.finalize()[..8])
    }

    /// Adds an agent. An older connection with the same agent id (a reconnect the
    /// gateway has not noticed yet) is removed and returned so the caller can close it.
    pub fn insert(&self, joining: Joining) -> (Arc<Agent>, Option<Arc<Agent>>) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let exit_id = self.exit_id(&joining.agent_id);
        let ring_point = u64::from_str_radix(&exit_id, 16).unwrap_or(key);
        let agent = Arc::new(Agent {
            key,
            ring_point,
            token: joining.token,
            exit_id,
            agent_id: joining.agent_id,
            location: joining.location,
            observed: joining.connection.remote_address(),
            software: joining.software,
            connection: joining.connection,
            max_streams: AtomicU32::new(joining.max_streams),
            active_streams: AtomicU32::new(0),
            accepting: AtomicBool::new(joining.accepting),
            streams_total: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connected_at: SystemTime::now(),
        });
        let replaced = self
            .by_agent_id
            .insert(agent.agent_id.clone(), key)
            .and_then(|old_key| self.remove_key(old_key));
        self.agents.insert(key, agent.clone());
        self.add_to_pools(&agent);
        self.publish_census();
        (agent, replaced)
    }

    /// Removes the agent with connection `key`, if still present.
    pub fn remove(&self, key: u64) -> Option<Arc<Agent>> {
        let agent = self.remove_key(key)?;
        self.by_agent_id
            .remove_if(&agent.agent_id, |_, current| *current == key);
        self.publish_census();
        Some(agent)
    }

    fn remove_key(&self, key: u64) -> Option<Arc<Agent>> {
        let (_, agent) = self.agents.remove(&key)?;
        self.remove_from_pools(&agent);
        Some(agent)
    }

    /// Starts or stops routing new streams to an agent (pause, drain, quota).
    pub fn set_accepting(&self, key: u64, accepting: bool) {
        let Some(agent) = self.get(key) else { return };
        if agent.accepting.swap(accepting, Ordering::Relaxed) == accepting {
            return;
        }
        if accepting {
            self.add_to_pools(&agent);
        } else {
            self.remove_from_pools(&agent);
        }
        self.publish_census();
    }

    fn add_to_pools(&self, agent: &Arc<Agent>) {
        let mut pools = self.pools.lock().expect("registry pools lock poisoned");
        // The agent may have left between the caller's check and this lock.
        if !self.agents.contains_key(&agent.key) || !agent.is_accepting() {
            return;
        }
        for key in Filter::pool_keys(&agent.location) {
            pools.entry(key).or_default().insert(agent.clone());
        }
    }

    fn remove_from_pools(&self, agent: &Agent) {
        let mut pools = self.pools.lock().expect("registry pools lock poisoned");
        for key in Filter::pool_keys(&agent.location) {
            if let Some(pool) = pools.get_mut(&key) {
                pool.remove(agent);
                if pool.members.is_empty() {
                    pools.remove(&key);
                }
            }
        }
    }

    /// The agent with connection `key`, if connected.
    pub fn get(&self, key: u64) -> Option<Arc<Agent>> {
        self.agents.get(&key).map(|entry| entry.value().clone())
    }

    /// Rotation: the less loaded of two random exits matching `filter` (the power
    /// of two choices), looking at a few more if both are full.
    pub fn pick(&self, filter: &Filter) -> Result<Arc<Agent>, PickError> {
        let pools = self.pools.lock().expect("registry pools lock poisoned");
        let Some(pool) = pools.get(filter).filter(|pool| !pool.members.is_empty()) else {
            return Err(PickError::NoExit(filter.describe()));
        };
        let members = &pool.members;
        let mut rng = rand::rng();
        let mut best: Option<&Arc<Agent>> = None;
        for attempt in 0..PICK_ATTEMPTS.min(members.len().max(2)) {
            let candidate = &members[rng.random_range(0..members.len())];
            if !candidate.has_capacity() {
                continue;
            }
            let load = candidate.active_streams.load(Ordering::Relaxed);
            if best.is_none_or(|b| load < b.active_streams.load(Ordering::Relaxed)) {
                best = Some(candidate);
            }
            if best.is_some() && attempt >= 1 {
                break;
            }
        }
        best.cloned()
            .ok_or_else(|| PickError::AllBusy(filter.describe()))
    }

    /// Sticky choice for a session: the exits following `session_point` on the
    /// pool's hash ring, weighed by rendezvous (highest random weight) score, so the
    /// same session maps to the same exit while the pool is stable, and few sessions
    /// move when exits come and go. O(log n) in the pool size.
    pub fn pick_sticky(
        &self,
        filter: &Filter,
        session_point: u64,
    ) -> Result<Arc<Agent>, PickError> {
        let pools = self.pools.lock().expect("registry pools lock poisoned");
        let Some(pool) = pools.get(filter).filter(|pool| !pool.members.is_empty()) else {
            return Err(PickError::NoExit(filter.describe()));
        };
        let after = pool.ring.range((session_point, 0)..);
        let wrapped = pool.ring.range(..(session_point, 0));
        after
            .chain(wrapped)
            .map(|(_, agent)| agent)
            .take(STICKY_CANDIDATES)
            .filter(|agent| agent.has_capacity())
            .max_by_key(|agent| mix(session_point, agent.ring_point))
            .cloned()
            .ok_or_else(|| PickError::AllBusy(filter.describe()))
    }

    /// The connected agent with device id `agent_id`, if any.
    pub fn by_agent_id(&self, agent_id: &str) -> Option<Arc<Agent>> {
        let key = *self.by_agent_id.get(agent_id)?;
        self.get(key)
    }

    /// A point on the session ring for `text`, keyed like exit ids.
    pub fn ring_point(&self, text: &str) -> u64 {
        let mut hasher = Sha256::new();
        hasher.update(self.exit_id_key);
        hasher.update(b"session\0");
        hasher.update(text.as_bytes());
        u64::from_be_bytes(hasher.finalize()[..8].try_into().expect("8 bytes"))
    }

    /// Number of connected agents (accepting or not).
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    fn publish_census(&self) {
        // Every pooled agent is in the unfiltered pool.
        let accepting = self
            .pools
            .lock()
            .expect("registry pools lock poisoned")
            .get(&Filter::default())
            .map_or(0, |pool| pool.members.len());
        self.census.send_replace(Census {
            agents: self.agents.len(),
            accepting,
        });
    }

    /// Waits until `predicate` holds for the number of connected agents.
    pub async fn wait_for_count(&self, mut predicate: impl FnMut(&usize) -> bool) -> usize {
        self.wait_for_census(|census| predicate(&census.agents))
            .await
            .agents
    }

    /// Waits until `predicate` holds for the registry's [`Census`].
    pub async fn wait_for_census(&self, mut predicate: impl FnMut(&Census) -> bool) -> Census {
        let mut census = self.census.subscribe();
        let value = *census
            .wait_for(|census| predicate(census))
            .await
            .expect("the sender lives in the registry");
        value
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Connected agents per country (`"??"` for unknown), for stats.
    pub fn countries(&self) -> BTreeMap<String, usize> {
        let mut countries = BTreeMap::new();
        for agent in self.agents.iter() {
            let country = agent
                .location
                .country
                .clone()
                .unwrap_or_else(|| "??".into());
            *countries.entry(country).or_default() += 1;
        }
        countries
    }

    /// A snapshot of every connected agent, for stats.
    pub fn agents(&self) -> Vec<Arc<Agent>> {
        self.agents
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }
}
