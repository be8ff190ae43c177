//! What the fleet's directory holds in Redis and how it is named: an
//! agent's [`AgentRecord`], a change on the stream ([`Event`]), and the
//! signature scopes both ends of the replica agree on.

use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Most changes published or read in one round trip.
pub(super) const BATCH: usize = 512;

/// Most entries the change stream keeps (approximately): enough for any
/// gateway to catch up after a blip; one that falls further behind reads the
/// agent lists whole.
pub(super) const STREAM_LENGTH: usize = 100_000;

/// What the fleet knows of one agent: where it is and what it takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Country code, as its gateway's GeoIP database placed it.
    pub country: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// City (lower case).
    pub city: Option<String>,
    /// ISO 3166-2 region (`US-CA`); absent from records of gateways without
    /// regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Stream capacity.
    pub max_streams: u32,
    /// Whether it takes new streams.
    pub accepting: bool,
    /// Its software string.
    pub software: String,
}

/// One entry of the change stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Event {
    /// An agent joined (or changed: the record replaces the old one).
    Join { id: String, agent: AgentRecord },
    /// An agent left.
    Leave { id: String },
    /// An agent's load moved to another quarter of its capacity: the streams
    /// open on it now.
    Load { id: String, streams: u32 },
    /// The gateway published its whole list again: read it whole.
    Reset,
    /// The gateway stopped: its agents are gone.
    Gone,
}

pub(super) fn record_of(agent: &crate::directory::Agent) -> AgentRecord {
    AgentRecord {
        country: agent.location.country.clone(),
        asn: agent.location.asn,
        city: agent.location.city.clone(),
        region: agent.location.region.clone(),
        max_streams: agent.max_streams.load(Ordering::Relaxed),
        accepting: agent.is_accepting(),
        software: agent.software.clone(),
    }
}

pub(super) fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("fleet records serialise")
}

/// The signature scope of `gateway`'s entry for agent `agent_id`.
pub(super) fn agent_scope<'a>(gateway: &'a str, agent_id: &'a str) -> [&'a str; 3] {
    ["agent", gateway, agent_id]
}

/// The signature scope of `gateway`'s list's sequence number.
pub(super) fn seq_scope(gateway: &str) -> [&str; 2] {
    ["seq", gateway]
}

/// The tag of a change on the stream: its gateway, sequence number and event.
pub(super) fn change_parts<'a>(gateway: &'a str, seq: &'a str, event: &'a str) -> [&'a [u8]; 4] {
    [
        b"change",
        gateway.as_bytes(),
        seq.as_bytes(),
        event.as_bytes(),
    ]
}
