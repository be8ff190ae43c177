//! The fleet's shared agent directory, and this gateway's replica of it.
//!
//! **Publishing.** Each gateway keeps its own agents in a Redis hash
//! (`exitpool:agents:<id>`: agent id -> [`AgentRecord`], plus a sequence
//! number) and appends every change to one stream (`exitpool:directory`), both
//! in one transaction, so the hash and the stream never disagree. Its record
//! (`exitpool:gateway:<id>`, renewed every heartbeat, expiring after the
//! gateway timeout) says it is alive and carries its peer address, its pin and
//! the sequence number of its last change. The heartbeat also reads the
//! hash's sequence number back: when it is gone or not the one last written
//! (Redis restarted empty or from an older snapshot, was flushed), the list is
//! published whole again, whether or not a command of this gateway failed.
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
use std::sync::Arc;
use tokio::sync::mpsc;

mod follower;
mod publisher;
mod records;

use follower::Follower;
use publisher::Publisher;
pub use records::AgentRecord;

/// Capacity of the channel from the directory to the publisher; a change that
/// does not fit makes the publisher republish the whole list.
pub const FEED_CAPACITY: usize = 65_536;

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
    use super::records::{json, Event};

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
