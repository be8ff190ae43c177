//! The agent directory: which agents are connected, where they are (location),
//! and how much more they can take (load and capacity). Routing reads it on every
//! customer connection; the tunnel endpoint writes it as agents join, report load
//! and leave.
//!
//! [`AgentDirectory`] is the interface; [`LocalDirectory`] is the one-process
//! implementation (per-filter pools, O(1) picks). The directory holds no tunnel
//! handles: how to reach an agent is the tunnel endpoint's business
//! ([`crate::tunnel::Tunnels`]), so a directory shared by several gateways can list
//! agents this process has no tunnel to.

pub mod health;
mod local;
pub mod places;

pub use health::{Health, HealthPolicy, HealthView, Outcome, WaitingOpen};
pub use local::LocalDirectory;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{watch, Notify};

/// Who is connected and where: everything routing, sessions and stats ask about
/// agents. Implementations never block and never hold a lock across an `.await`.
pub trait AgentDirectory: Send + Sync {
    /// Adds an agent that joined under connection `key`. An older entry with the
    /// same agent id (a reconnect not noticed yet) is removed and returned so the
    /// caller can close its tunnel.
    fn insert(&self, key: u64, joining: Joining) -> (Arc<Agent>, Option<Arc<Agent>>);
    /// Removes the agent with connection `key`, if still present.
    fn remove(&self, key: u64) -> Option<Arc<Agent>>;
    /// Starts or stops routing new streams to an agent (pause, drain, quota).
    fn set_accepting(&self, key: u64, accepting: bool);
    /// Rotation: a lightly loaded, healthy exit matching `filter`, none that
    /// `avoid` covers.
    fn pick(&self, filter: &Filter, avoid: &Avoid) -> Result<Arc<Agent>, PickError>;
    /// A sticky choice for the session at `session_point` on the hash ring,
    /// none that `avoid` covers.
    fn pick_sticky(
        &self,
        filter: &Filter,
        session_point: u64,
        avoid: &Avoid,
    ) -> Result<Arc<Agent>, PickError>;
    /// Records how an open or relay through `agent` went; enough failures in a
    /// row take it out of routing for a while ([`health`]): the period, when
    /// this outcome started one.
    fn report(&self, agent: &Arc<Agent>, outcome: Outcome) -> Option<std::time::Duration>;
    /// The connected agent with device id `agent_id`, if any.
    fn by_agent_id(&self, agent_id: &str) -> Option<Arc<Agent>>;
    /// The exit id customers see for `agent_id`.
    fn exit_id(&self, agent_id: &str) -> String;
    /// A point on the session ring for `text`, keyed like exit ids.
    fn ring_point(&self, text: &str) -> u64;
    /// A snapshot of every connected agent, for stats.
    fn agents(&self) -> Vec<Arc<Agent>>;
    /// Connected agents per country (`"??"` for unknown), for stats.
    fn countries(&self) -> BTreeMap<String, usize>;
    /// Follows the [`Census`] as agents join, leave, pause and drain.
    fn census(&self) -> watch::Receiver<Census>;
    /// Agents connected with enrolment token `token`.
    fn agents_with_token(&self, token: &str) -> usize;
    /// Agents connected from source network `network` (see
    /// [`crate::abuse::source_network`]).
    fn agents_from(&self, network: IpAddr) -> usize;
    /// Notified whenever a stream ends on any agent, for a pick that found every
    /// matching exit busy and waits a moment for a slot.
    fn slot_freed(&self) -> &Notify;
    /// Whether a change to this gateway's agents was dropped from the fleet's
    /// change feed since the last call (the feed was full): the fleet then
    /// publishes the whole list again.
    fn take_feed_lost(&self) -> bool;
}

impl dyn AgentDirectory + '_ {
    /// Number of connected agents (accepting or not).
    pub fn len(&self) -> usize {
        self.census().borrow().agents
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `predicate` holds for the number of connected agents.
    pub async fn wait_for_count(&self, mut predicate: impl FnMut(&usize) -> bool) -> usize {
        self.wait_for_census(|census| predicate(&census.agents))
            .await
            .agents
    }

    /// Waits until `predicate` holds for the directory's [`Census`].
    pub async fn wait_for_census(&self, mut predicate: impl FnMut(&Census) -> bool) -> Census {
        let mut census = self.census();
        let value = *census
            .wait_for(|census| predicate(census))
            .await
            .expect("the sender lives in the directory");
        value
    }
}

/// Where an exit is, as far as the gateway's GeoIP databases know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Location {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// City name (lower case, for matching).
    pub city: Option<String>,
    /// ISO 3166-2 subdivision, upper case (`US-CA`); always within `country`.
    pub region: Option<String>,
}

/// Exits one request's pick passes over: those it has already tried, and
/// every exit held by a fleet gateway its peer link could not reach (they
/// would fail the same way, at once).
#[derive(Debug, Default)]
pub struct Avoid {
    /// Connection keys of exits tried.
    pub exits: Vec<u64>,
    /// Fleet gateways found unreachable.
    pub homes: Vec<Arc<str>>,
}

impl Avoid {
    /// Whether a pick must pass over `agent`.
    pub fn covers(&self, agent: &Agent) -> bool {
        self.exits.contains(&agent.key)
            || agent
                .home
                .as_ref()
                .is_some_and(|home| self.homes.contains(home))
    }
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
    /// Required region (ISO 3166-2, upper case). A filter with a region also
    /// names the region's country, so regions ride on the country's pool keys.
    pub region: Option<String>,
}

impl Filter {
    /// Whether an exit at `location` satisfies this filter.
    pub fn matches(&self, location: &Location) -> bool {
        (self.country.is_none() || self.country == location.country)
            && (self.asn.is_none() || self.asn == location.asn)
            && (self.city.is_none() || self.city == location.city)
            && (self.region.is_none() || self.region == location.region)
    }

    /// The pool keys an exit at `location` belongs to (fields it lacks are only
    /// ever wildcards): every combination of country, ASN and city (8), plus
    /// those with the country narrowed to its region (4 more). A region never
    /// appears without its country, since a region filter always names it; that
    /// keeps an exit in 12 pools rather than 16.
    fn pool_keys(location: &Location) -> Vec<Filter> {
        let mut keys = Vec::with_capacity(12);
        for mask in 0u8..16 {
            let pick = |bit: u8| mask & bit != 0;
            if (pick(1) && location.country.is_none())
                || (pick(2) && location.asn.is_none())
                || (pick(4) && location.city.is_none())
                || (pick(8) && (location.region.is_none() || !pick(1)))
            {
                continue;
            }
            keys.push(Filter {
                country: location.country.clone().filter(|_| pick(1)),
                asn: location.asn.filter(|_| pick(2)),
                city: location.city.clone().filter(|_| pick(4)),
                region: location.region.clone().filter(|_| pick(8)),
            });
        }
        keys
    }

    /// Human description for error messages, e.g. `in country US`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (&self.region, &self.country) {
            (Some(region), _) => parts.push(format!("region {region}")),
            (None, Some(country)) => parts.push(format!("country {country}")),
            (None, None) => {}
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
    /// The agent's address as seen by the gateway (unspecified for an agent
    /// held by another gateway of the fleet: addresses stay where they were seen).
    pub observed: SocketAddr,
    /// The fleet gateway that holds this agent's tunnel, when it is not this
    /// one: streams to it go over the peer link ([`crate::fleet`]).
    pub home: Option<Arc<str>>,
    /// Software string from `Hello`.
    pub software: String,
    /// Most concurrent relay streams the agent accepts.
    pub max_streams: AtomicU32,
    /// Relay streams open now (counted by the gateway).
    pub active_streams: AtomicU32,
    /// For an agent of another fleet gateway: the streams open on it there,
    /// as that gateway last reported (every stream, this gateway's included).
    pub reported_streams: AtomicU32,
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
    /// Its recent record of opens and relays, and whether it is cooled.
    pub health: Arc<Health>,
    /// The directory's [`AgentDirectory::slot_freed`], told when a stream ends.
    pub slot_freed: Arc<Notify>,
}

impl Agent {
    /// Streams open on the agent as far as this gateway knows: its own count,
    /// or for an agent of another fleet gateway the larger of that and what
    /// the agent's gateway last reported.
    pub fn load(&self) -> u32 {
        self.active_streams
            .load(Ordering::Relaxed)
            .max(self.reported_streams.load(Ordering::Relaxed))
    }

    /// Whether the agent can take one more stream now.
    pub fn has_capacity(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
            && self.load() < self.max_streams.load(Ordering::Relaxed)
    }

    /// Whether its tunnel is held by this gateway (not another of the fleet).
    pub fn is_local(&self) -> bool {
        self.home.is_none()
    }

    /// Whether the agent accepts new streams at all (not paused or draining).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// Whether routing may send it new streams: accepting and not cooled.
    pub fn is_routable(&self) -> bool {
        self.is_accepting() && !self.health.is_cooled(std::time::Instant::now())
    }
}

/// Counts one live relay stream on an agent for as long as it is held, so
/// routing sees the load the moment a stream opens and the moment it ends.
#[derive(Debug)]
pub struct StreamGuard(Arc<Agent>);

impl StreamGuard {
    /// Marks one more stream open on `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        agent.active_streams.fetch_add(1, Ordering::Relaxed);
        agent.streams_total.fetch_add(1, Ordering::Relaxed);
        StreamGuard(agent)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
        self.0.slot_freed.notify_waiters();
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
    /// Matching agents exist but all are cooled after failing.
    #[error("every exit {0} is cooling after failures")]
    AllCooling(String),
}

/// How many agents are connected, and how many of them take new streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Connected agents.
    pub agents: usize,
    /// Agents that take new streams (not paused, draining, over quota or
    /// cooled after failures).
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
    /// The agent's address as seen by the gateway.
    pub observed: SocketAddr,
    /// The fleet gateway holding its tunnel, for an agent of another gateway.
    pub home: Option<Arc<str>>,
}

/// A change to this gateway's own agents, for the fleet's shared directory.
#[derive(Debug, Clone)]
pub enum Change {
    /// An agent joined here.
    Joined(Arc<Agent>),
    /// An agent connected here left.
    Left(Arc<Agent>),
    /// An agent here started or stopped taking new streams.
    Accepting(Arc<Agent>),
}
