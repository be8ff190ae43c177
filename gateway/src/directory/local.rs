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
//!
//! Cooling ([`super::health`]): a cooled agent leaves its pools' member lists
//! (so picks never meet it) and is counted in each pool's `cooled` instead (so
//! an empty pool can say its exits are cooling rather than absent). A heap of
//! cooling ends, looked at on every pick (O(1) when nothing is due), puts agents
//! back when their period is over.

use super::health::{Health, HealthPolicy, Outcome, TypicalLatency};
use super::{Agent, AgentDirectory, Avoid, Census, Change, Filter, Joining, PickError};
use crate::abuse::source_network;
use crate::counts;
use dashmap::DashMap;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Notify};

#[derive(Default)]
struct Pool {
    members: Vec<Arc<Agent>>,
    /// Position of each member (by key) in `members`, for O(1) removal.
    positions: HashMap<u64, usize>,
    /// The same members ordered by ring point, for sticky sessions.
    ring: BTreeMap<(u64, u64), Arc<Agent>>,
    /// Matching agents that are cooled now (not in `members`).
    cooled: usize,
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
/// Pools up to this size are looked through whole when sampling found no
/// usable exit (all sampled ones busy or already tried by the request).
const SCAN_BELOW: usize = 32;

/// The pools and what is cooling, under one lock.
#[derive(Default)]
struct Pools {
    by_filter: HashMap<Filter, Pool>,
    /// Keys of agents counted as cooled in their pools.
    cooled: HashSet<u64>,
    /// When each cooled agent may come back, soonest first.
    cooling_ends: BinaryHeap<Reverse<(Instant, u64)>>,
}

/// Most departed devices whose health is remembered.
const DEPARTED_CAP: usize = 100_000;
/// How long a departed device's health is remembered.
const DEPARTED_MEMORY: Duration = Duration::from_secs(600);

/// Health records of devices that left, by agent id: bounded in number and age.
#[derive(Default)]
struct Departed {
    inner: Mutex<DepartedInner>,
}

#[derive(Default)]
struct DepartedInner {
    by_id: HashMap<String, (Instant, Arc<Health>)>,
    /// Departures, oldest first (an id may appear again after a later leave;
    /// only the entry whose time matches is removed).
    order: std::collections::VecDeque<(Instant, String)>,
}

impl Departed {
    fn keep(&self, agent_id: &str, health: Arc<Health>) {
        let mut inner = self.inner.lock().expect("departed lock poisoned");
        let now = Instant::now();
        inner.by_id.insert(agent_id.to_owned(), (now, health));
        inner.order.push_back((now, agent_id.to_owned()));
        while let Some((left, id)) = inner.order.front().cloned() {
            let expired = now.saturating_duration_since(left) > DEPARTED_MEMORY;
            if !expired && inner.order.len() <= DEPARTED_CAP {
                break;
            }
            inner.order.pop_front();
            if inner.by_id.get(&id).is_some_and(|(at, _)| *at == left) {
                inner.by_id.remove(&id);
            }
        }
    }

    fn take(&self, agent_id: &str) -> Option<Arc<Health>> {
        let mut inner = self.inner.lock().expect("departed lock poisoned");
        let (left, health) = inner.by_id.remove(agent_id)?;
        (left.elapsed() <= DEPARTED_MEMORY).then_some(health)
    }
}

/// Where an agent belongs in the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Not routable: gone, paused, draining or over quota.
    Out,
    /// Connected and accepting, but cooled after failures.
    Cooled,
    /// In the pools' member lists.
    In,
}

/// All agents connected to this gateway. See the module docs for the locking rules.
pub struct LocalDirectory {
    agents: DashMap<u64, Arc<Agent>>,
    by_agent_id: DashMap<String, u64>,
    pools: Mutex<Pools>,
    /// How outcomes are scored and failing exits cooled.
    health: HealthPolicy,
    /// Every exit's opens together: what a slow exit is slow against.
    typical: TypicalLatency,
    /// The health records of devices that left lately, for when they return.
    departed: Departed,
    /// Agents per enrolment token and per source network, for the caps on both.
    per_token: DashMap<String, usize>,
    per_network: DashMap<IpAddr, usize>,
    exit_id_key: [u8; 32],
    /// Connected and accepting agents, for anyone waiting on joins, leaves,
    /// pauses and drains.
    census: watch::Sender<Census>,
    slot_freed: Arc<Notify>,
    /// In fleet mode: this gateway's own joins, leaves and pauses, for the
    /// shared directory. Bounded; a change that does not fit sets `feed_lost`
    /// and the fleet republishes everything instead.
    feed: Option<tokio::sync::mpsc::Sender<Change>>,
    feed_lost: AtomicBool,
}

impl LocalDirectory {
    /// An empty directory; `exit_id_key` makes exit ids unguessable from agent ids
    /// and stable across gateway restarts.
    pub fn new(exit_id_key: [u8; 32]) -> Self {
        LocalDirectory {
            agents: DashMap::new(),
            by_agent_id: DashMap::new(),
            pools: Mutex::new(Pools::default()),
            health: HealthPolicy::default(),
            typical: TypicalLatency::default(),
            departed: Departed::default(),
            per_token: DashMap::new(),
            per_network: DashMap::new(),
            exit_id_key,
            census: watch::Sender::new(Census::default()),
            slot_freed: Arc::default(),
            feed: None,
            feed_lost: AtomicBool::new(false),
        }
    }

    /// Sends every change to this gateway's own agents to `feed` (fleet mode).
    pub fn with_change_feed(mut self, feed: tokio::sync::mpsc::Sender<Change>) -> Self {
        self.feed = Some(feed);
        self
    }

    fn announce(&self, agent: &Arc<Agent>, change: impl FnOnce(Arc<Agent>) -> Change) {
        let Some(feed) = &self.feed else { return };
        if agent.is_local() && feed.try_send(change(agent.clone())).is_err() {
            self.feed_lost.store(true, Ordering::Relaxed);
        }
    }

    /// Scores exits and cools failing ones by `policy` instead of the default.
    pub fn with_health_policy(mut self, policy: HealthPolicy) -> Self {
        self.health = policy;
        self
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
        // The device's record carries over a reconnect: failing and
        // reconnecting must not wipe it.
        let health = self
            .by_agent_id
            .get(&joining.agent_id)
            .and_then(|old_key| self.get(*old_key))
            .map(|old| old.health.clone())
            .or_else(|| self.departed.take(&joining.agent_id))
            .unwrap_or_default();
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
            home: joining.home,
            software: joining.software,
            max_streams: AtomicU32::new(joining.max_streams),
            active_streams: AtomicU32::new(0),
            reported_streams: AtomicU32::new(0),
            accepting: AtomicBool::new(joining.accepting),
            streams_total: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connected_at: SystemTime::now(),
            health,
            slot_freed: self.slot_freed.clone(),
        });
        let replaced = self
            .by_agent_id
            .insert(agent.agent_id.clone(), key)
            .and_then(|old_key| self.remove_key(old_key));
        if agent.is_local() {
            counts::up(&self.per_token, agent.token.expose().to_owned());
            counts::up(&self.per_network, source_network(agent.observed.ip()));
        }
        self.agents.insert(key, agent.clone());
        self.reconcile(&agent);
        self.publish_census();
        self.announce(&agent, Change::Joined);
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
        self.reconcile(&agent);
        self.publish_census();
        self.announce(&agent, Change::Accepting);
    }

    fn pick(&self, filter: &Filter, avoid: &Avoid) -> Result<Arc<Agent>, PickError> {
        let mut pools = self.lock_pools();
        self.readmit_due(&mut pools, Instant::now());
        let pool = pools.by_filter.get(filter);
        let Some(pool) = pool.filter(|pool| !pool.members.is_empty()) else {
            return Err(Self::empty(pool, filter));
        };
        let members = &pool.members;
        let now = Instant::now();
        let usable = |agent: &Arc<Agent>| agent.has_capacity() && !avoid.covers(agent);
        let cost = |agent: &Arc<Agent>| {
            let load = agent.load();
            agent.health.cost(load, &self.health, now)
        };
        // Suspect (sitting on opens) or slow (opens far slower than the pool's):
        // chosen only when the other candidates are as bad.
        let avoided = |agent: &Arc<Agent>| {
            self.health.enabled
                && (agent.health.is_suspect(now, &self.health) || agent.health.is_slow(now))
        };
        let mut rng = rand::rng();
        // The better of two exits neither avoided, looking at a few more if
        // one is full, already tried by this request, suspect or slow.
        let mut best: Option<(&Arc<Agent>, f64)> = None;
        let mut looked = 0;
        // The plain two-choice pick, for when every exit seen is avoided: the
        // best of all eight would send a whole slow pool's load to one exit.
        let mut fallback: Option<(&Arc<Agent>, f64)> = None;
        let mut seen = 0;
        let better = |best: Option<(&Arc<Agent>, f64)>, cost: f64| {
            best.is_none_or(|(_, best_cost)| cost < best_cost)
        };
        for _ in 0..PICK_ATTEMPTS {
            let candidate = &members[rng.random_range(0..members.len())];
            if !usable(candidate) {
                continue;
            }
            let cost = cost(candidate);
            if seen < 2 {
                seen += 1;
                if better(fallback, cost) {
                    fallback = Some((candidate, cost));
                }
            }
            if avoided(candidate) {
                continue;
            }
            if better(best, cost) {
                best = Some((candidate, cost));
            }
            looked += 1;
            if looked >= 2 {
                break;
            }
        }
        // Sampling can miss the one usable (or unavoided) exit of a small
        // pool; a small pool is cheap to look through whole.
        if best.is_none() && members.len() <= SCAN_BELOW {
            best = members
                .iter()
                .filter(|agent| usable(agent) && !avoided(agent))
                .map(|agent| (agent, cost(agent)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if best.is_none() && fallback.is_none() {
                fallback = members
                    .iter()
                    .find(|agent| usable(agent))
                    .map(|agent| (agent, cost(agent)));
            }
        }
        let best = best.or(fallback);
        best.map(|(agent, _)| agent.clone())
            .ok_or_else(|| PickError::AllBusy(filter.describe()))
    }

    /// The exits following `session_point` on the pool's hash ring, weighed by
    /// rendezvous (highest random weight) score, so the same session maps to the
    /// same exit while the pool is stable, and few sessions move when exits come
    /// and go. O(log n) in the pool size.
    fn pick_sticky(
        &self,
        filter: &Filter,
        session_point: u64,
        avoid: &Avoid,
    ) -> Result<Arc<Agent>, PickError> {
        let mut pools = self.lock_pools();
        self.readmit_due(&mut pools, Instant::now());
        let pool = pools.by_filter.get(filter);
        let Some(pool) = pool.filter(|pool| !pool.members.is_empty()) else {
            return Err(Self::empty(pool, filter));
        };
        let after = pool.ring.range((session_point, 0)..);
        let wrapped = pool.ring.range(..(session_point, 0));
        after
            .chain(wrapped)
            .map(|(_, agent)| agent)
            .filter(|agent| !avoid.covers(agent))
            .take(STICKY_CANDIDATES)
            .filter(|agent| agent.has_capacity())
            .max_by_key(|agent| mix(session_point, agent.ring_point))
            .cloned()
            .ok_or_else(|| PickError::AllBusy(filter.describe()))
    }

    fn report(&self, agent: &Arc<Agent>, outcome: Outcome) -> Option<Duration> {
        let typical = self.typical.get();
        if let Outcome::Opened(latency) = outcome {
            self.typical.record(latency);
        }
        let period = agent
            .health
            .record(outcome, &self.health, Instant::now(), typical)?;
        tracing::info!(
            exit = %agent.exit_id,
            cooling_ms = period.as_millis() as u64,
            "exit cooled after failures"
        );
        self.reconcile(agent);
        self.publish_census();
        Some(period)
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

    fn take_feed_lost(&self) -> bool {
        self.feed_lost.swap(false, Ordering::Relaxed)
    }
}

impl LocalDirectory {
    fn get(&self, key: u64) -> Option<Arc<Agent>> {
        self.agents.get(&key).map(|entry| entry.value().clone())
    }

    fn remove_key(&self, key: u64) -> Option<Arc<Agent>> {
        let (_, agent) = self.agents.remove(&key)?;
        self.reconcile(&agent);
        self.departed.keep(&agent.agent_id, agent.health.clone());
        if agent.is_local() {
            counts::down(&self.per_token, agent.token.expose());
            counts::down(&self.per_network, &source_network(agent.observed.ip()));
        }
        self.announce(&agent, Change::Left);
        Some(agent)
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().expect("directory pools lock poisoned")
    }

    /// What an empty (or absent) pool answers: its exits cooling, or none.
    fn empty(pool: Option<&Pool>, filter: &Filter) -> PickError {
        match pool {
            Some(pool) if pool.cooled > 0 => PickError::AllCooling(filter.describe()),
            _ => PickError::NoExit(filter.describe()),
        }
    }

    /// Puts back every agent whose cooling is over by `now`.
    fn readmit_due(&self, pools: &mut Pools, now: Instant) {
        let mut changed = false;
        while let Some(Reverse((until, key))) = pools.cooling_ends.peek().copied() {
            if until > now {
                break;
            }
            pools.cooling_ends.pop();
            if let Some(agent) = self.get(key) {
                Self::place(pools, &agent, self.desired_place(&agent, now));
                changed = true;
            }
        }
        if changed {
            // Outside the pools lock's critical path would be nicer, but the
            // census read takes the same lock: compute it from here.
            let accepting = Self::accepting_in(pools);
            self.census
                .send_modify(|census| census.accepting = accepting);
        }
    }

    fn desired_place(&self, agent: &Agent, now: Instant) -> Place {
        if !self.agents.contains_key(&agent.key) || !agent.is_accepting() {
            Place::Out
        } else if agent.health.is_cooled(now) {
            Place::Cooled
        } else {
            Place::In
        }
    }

    /// Moves `agent` to where it belongs now: in the pools, counted as cooled, or
    /// out. Called after every change to its presence, accepting or cooling.
    fn reconcile(&self, agent: &Arc<Agent>) {
        let now = Instant::now();
        let mut pools = self.lock_pools();
        // Decided under the lock, so a leave racing this call cannot leave the
        // agent pooled.
        let place = self.desired_place(agent, now);
        Self::place(&mut pools, agent, place);
        if place == Place::Cooled {
            if let Some(until) = agent.health.cooled_until() {
                pools.cooling_ends.push(Reverse((until, agent.key)));
            }
        }
    }

    fn place(pools: &mut Pools, agent: &Arc<Agent>, place: Place) {
        let keys = Filter::pool_keys(&agent.location);
        let was_cooled = pools.cooled.contains(&agent.key);
        let pooled = pools
            .by_filter
            .get(&Filter::default())
            .is_some_and(|pool| pool.positions.contains_key(&agent.key));
        let current = match (pooled, was_cooled) {
            (true, _) => Place::In,
            (false, true) => Place::Cooled,
            (false, false) => Place::Out,
        };
        if current == place {
            return;
        }
        for key in keys {
            let pool = pools.by_filter.entry(key.clone()).or_default();
            match current {
                Place::In => pool.remove(agent),
                Place::Cooled => pool.cooled -= 1,
                Place::Out => {}
            }
            match place {
                Place::In => pool.insert(agent.clone()),
                Place::Cooled => pool.cooled += 1,
                Place::Out => {}
            }
            if pool.members.is_empty() && pool.cooled == 0 {
                pools.by_filter.remove(&key);
            }
        }
        if place == Place::Cooled {
            pools.cooled.insert(agent.key);
        } else {
            pools.cooled.remove(&agent.key);
        }
    }

    /// Agents in the unfiltered pool: every routable agent is in it.
    fn accepting_in(pools: &Pools) -> usize {
        pools
            .by_filter
            .get(&Filter::default())
            .map_or(0, |pool| pool.members.len())
    }

    fn publish_census(&self) {
        let accepting = Self::accepting_in(&self.lock_pools());
        self.census.send_replace(Census {
            agents: self.agents.len(),
            accepting,
        });
    }
}
