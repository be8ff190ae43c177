//! The fleet's shared agent directory, and this gateway's replica of it.
//!
//! **Publishing.** Each gateway keeps its own agents in a Redis hash
//! (`exitpool:agents:<id>`: agent id -> [`AgentRecord`], plus a sequence
//! number) and appends every change to one stream (`exitpool:directory`), both
//! in one transaction, so the hash and the stream never disagree. Its record
//! (`exitpool:gateway:<id>`, renewed every heartbeat, expiring after the
//! gateway timeout) says it is alive and carries its peer address, its pin and
//! the sequence number of its last change.
//!
//! **Signatures.** Every value a gateway publishes here (its record, each
//! agent entry, the list's sequence number, each change on the stream) is
//! signed with the fleet's record key ([`super::signed`]); a follower drops
//! and counts whatever does not verify, so writing to Redis alone announces no
//! gateway and no exit.
//!
//! **Following.** Every other gateway reads the stream (blocking reads on a
//! connection of their own) and applies each change to its directory as an
//! agent with a `home`. Once a heartbeat it reads every gateway's record: a
//! gateway whose record expired is gone and its agents leave; one whose
//! sequence number stays ahead of what the stream delivered for longer than
//! the resync interval (a change lost, a stream trimmed, Redis restarted) has
//! its hash read whole.
//!
//! **Load.** Each heartbeat a gateway reports the agents whose load moved to
//! another quarter of their capacity (streams open on them now), so the
//! others' picks see roughly how busy an exit is elsewhere without an entry
//! per stream.
//!
//! **Staleness.** A join or leave reaches the other gateways within one
//! stream read (milliseconds); if that is lost, within the resync interval
//! plus a heartbeat; a gateway that dies silently takes its agents out of
//! every replica within the gateway timeout plus a heartbeat. Picks never wait:
//! at worst a pick meets an exit that has just left, its open fails over the
//! peer link, and the request moves to another exit (transparent retry).

use super::Fleet;
use crate::directory::Change;
use crate::shared::Shared;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

mod follower;
mod publisher;

use follower::Follower;
use publisher::Publisher;

/// Most changes published or read in one round trip.
const BATCH: usize = 512;

/// Most entries the change stream keeps (approximately): enough for any
/// gateway to catch up after a blip; one that falls further behind reads the
/// agent lists whole.
const STREAM_LENGTH: usize = 100_000;

/// Capacity of the channel from the directory to the publisher; a change that
/// does not fit makes the publisher republish the whole list.
pub const FEED_CAPACITY: usize = 65_536;

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
enum Event {
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

fn record_of(agent: &crate::directory::Agent) -> AgentRecord {
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

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("fleet records serialise")
}

/// The signature scope of `gateway`'s entry for agent `agent_id`.
fn agent_scope<'a>(gateway: &'a str, agent_id: &'a str) -> [&'a str; 3] {
    ["agent", gateway, agent_id]
}

/// The signature scope of `gateway`'s list's sequence number.
fn seq_scope(gateway: &str) -> [&str; 2] {
    ["seq", gateway]
}

/// The tag of a change on the stream: its gateway, sequence number and event.
fn change_parts<'a>(gateway: &'a str, seq: &'a str, event: &'a str) -> [&'a [u8]; 4] {
    [
        b"change",
        gateway.as_bytes(),
        seq.as_bytes(),
        event.as_bytes(),
    ]
}

/// Publishes this gateway's agents and follows everyone else's, until the
/// gateway stops (when it takes its agents out of the fleet at once).
pub async fn run(shared: Arc<Shared>, fleet: Arc<Fleet>, changes: mpsc::Receiver<Change>) {
    let publisher = Publisher::new(shared.clone(), fleet.clone());
    let follower = Follower::new(shared, fleet);
    tokio::join!(publisher.run(changes), follower.run());
}

#[cfg(test)]
mod tests {
    use super::publisher::load_quarter;
    use super::*;

    #[test]
    fn load_is_reported_by_quarters_of_capacity() {
        assert_eq!(load_quarter(0, 64), 0);
        assert_eq!(load_quarter(15, 64), 0);
        assert_eq!(load_quarter(16, 64), 1);
        assert_eq!(load_quarter(64, 64), 4);
        assert_eq!(load_quarter(100, 64), 4);
        assert_eq!(load_quarter(3, 0), 4);
    }

    #[test]
    fn stream_entries_round_trip() {
        let event = Event::Load {
            id: "abc".into(),
            streams: 7,
        };
        let text = json(&event);
        assert_eq!(text, r#"{"op":"load","id":"abc","streams":7}"#);
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
    }
}
