//! The one-process agent directory: every agent connected to this gateway, and
//! per-filter pools for routing.
//!
//! An agent is added when its `Hello` is accepted and removed the moment its
//! tunnel ends. Besides the map by connection key, each agent sits in one pool
//! per combination of its location fields (any / country / ASN / city and their
//! combinations: 8 pools), so that choosing an exit for any filter is a random
//! index into a vector: O(1) in the pool size, never a scan.
//!
//! Locking: `agents` is a `DashMap` read on every pick; the pools share one
//! `Mutex`, held only for O(1) vector operations and never across an `.await`.

use super::{Agent, AgentDirectory, Census, Filter, Joining, PickError};
use crate::abuse::source_network;
use crate::counts;
use dashmap::DashMap;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{watch, Notify};

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

/// All agents connected to this gateway. See the module docs for the locking rules.
pub struct LocalDirectory {
    agents: DashMap<u64, Arc<Agent>>,
    by_agent_id: DashMap<String, u64>,
    pools: Mutex<HashMap<Filter, Pool>>,
    /// Agents per enrolment token and per source network, for the caps on both.
    per_token: DashMap<String, usize>,
    per_network: DashMap<IpAddr, usize>,
    exit_id_key: [u8; 32],
    /// Connected and accepting agents, for anyone waiting on joins, leaves,
    /// pauses and drains.
    census: watch::Sender<Census>,
    slot_freed: Arc<Notify>,
}

impl LocalDirectory {
    /// An empty directory; `exit_id_key` makes exit ids unguessable from agent ids
    /// and stable across gateway restarts.
    pub fn new(exit_id_key: [u8; 32]) -> Self {
        LocalDirectory {
            agents: DashMap::new(),
            by_agent_id: DashMap::new(),
            pools: Mutex::new(HashMap::new()),
            per_token: DashMap::new(),
            per_network: DashMap::new(),
            exit_id_key,
            census: watch::Sender::new(Census::default()),
            slot_freed: Arc::default(),
        }
    }
}

impl AgentDirectory for LocalDirectory {
    fn exit_id(&self, agent_id: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.exit_id_key);
        hasher.update(agent_id.as_bytes());
        hex::encode(&hasher.finalize()[..8])
    }

    fn insert(&self, key: u64, joining: Joining) -> (Arc<Agent>, Option<Arc<Agent>>) {
        let exit_id = self.exit_id(&joining.agent_id);
        let ring_point = u64::from_str_radix(&exit_id, 16).unwrap_or(key);
        let agent = Arc::new(Agent {
            key,
            ring_point,
            token: joining.token,
            exit_id,
            agent_id: joining.agent_id,
            location: joining.location,
            observed: joining.observed,
            software: joining.software,
            max_streams: AtomicU32::new(joining.max_streams),
            active_streams: AtomicU32::new(0),
            accepting: AtomicBool::new(joining.accepting),
            streams_total: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connected_at: SystemTime::now(),
            slot_freed: self.slot_freed.clone(),
        });
        let replaced = self
            .by_agent_id
            .insert(agent.agent_id.clone(), key)
            .and_then(|old_key| self.remove_key(old_key));
        counts::up(&self.per_token, agent.token.expose().to_owned());
        counts::up(&self.per_network, source_network(agent.observed.ip()));
        self.agents.insert(key, agent.clone());
        self.add_to_pools(&agent);
        self.publish_census();
        (agent, replaced)
    }

    fn remove(&self, key: u64) -> Option<Arc<Agent>> {
        let agent = self.remove_key(key)?;
        self.by_agent_id
            .remove_if(&agent.agent_id, |_, current| *current == key);
        self.publish_census();
        Some(agent)
    }

    fn set_accepting(&self, key: u64, accepting: bool) {
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

    fn pick(&self, filter: &Filter) -> Result<Arc<Agent>, PickError> {
        let pools = self.pools.lock().expect("directory pools lock poisoned");
        let Some(pool) = pools.get(filter).filter(|pool| !pool.members.is_empty()) else {
            return Err(PickError::NoExit(filter.describe()));
        };
        let members = &pool.members;
        let mut rng = rand::rng();
        let mut best: Option<&Arc<Agent>> = None;
        // The power of two choices, looking at a few more if both are full.
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

    /// The exits following `session_point` on the pool's hash ring, weighed by
    /// rendezvous (highest random weight) score, so the same session maps to the
    /// same exit while the pool is stable, and few sessions move when exits come
    /// and go. O(log n) in the pool size.
    fn pick_sticky(&self, filter: &Filter, session_point: u64) -> Result<Arc<Agent>, PickError> {
        let pools = self.pools.lock().expect("directory pools lock poisoned");
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

    fn by_agent_id(&self, agent_id: &str) -> Option<Arc<Agent>> {
        let key = *self.by_agent_id.get(agent_id)?;
        self.get(key)
    }

    fn ring_point(&self, text: &str) -> u64 {
        let mut hasher = Sha256::new();
        hasher.update(self.exit_id_key);
        hasher.update(b"session\0");
        hasher.update(text.as_bytes());
        u64::from_be_bytes(hasher.finalize()[..8].try_into().expect("8 bytes"))
    }

    fn countries(&self) -> BTreeMap<String, usize> {
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

    fn agents(&self) -> Vec<Arc<Agent>> {
        self.agents
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }

    fn census(&self) -> watch::Receiver<Census> {
        self.census.subscribe()
    }

    fn agents_with_token(&self, token: &str) -> usize {
        self.per_token.get(token).map_or(0, |count| *count)
    }

    fn agents_from(&self, network: IpAddr) -> usize {
        self.per_network.get(&network).map_or(0, |count| *count)
    }

    fn slot_freed(&self) -> &Notify {
        &self.slot_freed
    }
}

impl LocalDirectory {
    fn get(&self, key: u64) -> Option<Arc<Agent>> {
        self.agents.get(&key).map(|entry| entry.value().clone())
    }

    fn remove_key(&self, key: u64) -> Option<Arc<Agent>> {
        let (_, agent) = self.agents.remove(&key)?;
        self.remove_from_pools(&agent);
        counts::down(&self.per_token, agent.token.expose());
        counts::down(&self.per_network, &source_network(agent.observed.ip()));
        Some(agent)
    }

    fn add_to_pools(&self, agent: &Arc<Agent>) {
        let mut pools = self.pools.lock().expect("directory pools lock poisoned");
        // The agent may have left between the caller's check and this lock.
        if !self.agents.contains_key(&agent.key) || !agent.is_accepting() {
            return;
        }
        for key in Filter::pool_keys(&agent.location) {
            pools.entry(key).or_default().insert(agent.clone());
        }
    }

    fn remove_from_pools(&self, agent: &Agent) {
        let mut pools = self.pools.lock().expect("directory pools lock poisoned");
        for key in Filter::pool_keys(&agent.location) {
            if let Some(pool) = pools.get_mut(&key) {
                pool.remove(agent);
                if pool.members.is_empty() {
                    pools.remove(&key);
                }
            }
        }
    }

    fn publish_census(&self) {
        // Every pooled agent is in the unfiltered pool.
        let accepting = self
            .pools
            .lock()
            .expect("directory pools lock poisoned")
            .get(&Filter::default())
            .map_or(0, |pool| pool.members.len());
        self.census.send_replace(Census {
            agents: self.agents.len(),
            accepting,
        });
    }
}
