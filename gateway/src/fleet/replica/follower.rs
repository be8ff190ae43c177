//! Following: the other gateways' changes from the stream, their records
//! every heartbeat, and their whole lists when a replica falls behind.

use super::records::{agent_scope, change_parts, seq_scope, AgentRecord, Event, BATCH};
use crate::directory::{Joining, Location};
use crate::fleet::peer::PeerAddress;
use crate::fleet::{keys, Fleet, FleetError, GatewayRecord, FEED_BLOCK};
use crate::shared::Shared;
use exitpool_protocol::Secret;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What this gateway knows of another one.
#[derive(Debug, Default)]
struct Known {
    /// The sequence number of the last change applied.
    seq: u64,
    /// A sequence number its record claimed while this replica was behind
    /// it, and when: still not reached after the resync interval, the list is
    /// read whole (changes merely in flight arrive well within it).
    behind: Option<(u64, Instant)>,
}

pub(super) struct Follower {
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    known: HashMap<String, Known>,
    /// One shared name per gateway, for its agents' `home`.
    homes: HashMap<String, Arc<str>>,
    /// The last stream entry read; `None` until the first successful read.
    stream_position: Option<String>,
}

impl Follower {
    /// A follower that knows no other gateway yet.
    pub(super) fn new(shared: Arc<Shared>, fleet: Arc<Fleet>) -> Follower {
        Follower {
            shared,
            fleet,
            known: HashMap::new(),
            homes: HashMap::new(),
            stream_position: None,
        }
    }

    pub(super) async fn run(mut self) {
        let heartbeat = self.fleet.config.heartbeat;
        let shutdown = self.shared.lifecycle.shutdown.clone();
        let mut reachable = false;
        let mut checked: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if checked.is_none_or(|at| at.elapsed() >= heartbeat) {
                // After Redis was out of reach, every list is read again.
                reachable = self.check_gateways(!reachable).await.is_ok();
                checked = Some(Instant::now());
            }
            if reachable {
                tokio::select! {
                    read = self.read_stream(heartbeat.min(FEED_BLOCK)) => reachable = read.is_ok(),
                    () = shutdown.cancelled() => break,
                }
            } else {
                tokio::select! {
                    () = tokio::time::sleep(heartbeat) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }

    /// Reads the next changes (blocking in Redis up to `block`) and applies
    /// them.
    async fn read_stream(&mut self, block: Duration) -> Result<(), FleetError> {
        let Some(position) = self.stream_position.clone() else {
            return Ok(());
        };
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(keys::DIRECTORY)
            .arg(&position);
        let reply: Option<redis::streams::StreamReadReply> = self
            .fleet
            .query_feed("read directory changes", &read)
            .await?;
        for entry in reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
        {
            self.stream_position = Some(entry.id.clone());
            let (Some(gateway), Some(seq_text), Some(event)) = (
                entry.get::<String>("g"),
                entry.get::<String>("s"),
                entry.get::<String>("e"),
            ) else {
                self.fleet.refuse_record("directory change", "?");
                continue;
            };
            if gateway == *self.fleet.id {
                continue;
            }
            let signed = entry.get::<String>("m").is_some_and(|tag| {
                self.fleet
                    .records
                    .verify(&change_parts(&gateway, &seq_text, &event), &tag)
            });
            let (true, Ok(seq)) = (signed, seq_text.parse::<u64>()) else {
                self.fleet.refuse_record("directory change", &gateway);
                continue;
            };
            match serde_json::from_str::<Event>(&event) {
                Ok(event) => self.apply(&gateway, seq, event).await?,
                Err(error) => {
                    tracing::warn!(%gateway, %error, "unreadable directory change; skipped")
                }
            }
        }
        Ok(())
    }

    async fn apply(&mut self, gateway: &str, seq: u64, event: Event) -> Result<(), FleetError> {
        let known = self.known.entry(gateway.to_owned()).or_default();
        if seq <= known.seq {
            return Ok(());
        }
        let in_order = known.seq != 0 && seq == known.seq + 1;
        known.seq = seq;
        if !in_order && !matches!(event, Event::Reset | Event::Gone) {
            // A gap: some change was missed. Read the list whole.
            return self.reload(gateway).await;
        }
        match event {
            Event::Join { id, agent } => self.upsert(gateway, &id, &agent).await,
            Event::Leave { id } => self.remove(gateway, &id),
            Event::Load { id, streams } => {
                if let Some(agent) = self.shared.routing.exits.directory().by_agent_id(&id) {
                    if agent.home.as_deref() == Some(gateway) {
                        agent.reported_streams.store(streams, Ordering::Relaxed);
                    }
                }
            }
            Event::Reset => return self.reload(gateway).await,
            Event::Gone => self.drop_gateway(gateway),
        }
        Ok(())
    }

    fn home(&mut self, gateway: &str) -> Arc<str> {
        self.homes
            .entry(gateway.to_owned())
            .or_insert_with(|| gateway.into())
            .clone()
    }

    /// Adds or updates an agent of `gateway`.
    async fn upsert(&mut self, gateway: &str, agent_id: &str, record: &AgentRecord) {
        let directory = self.shared.routing.exits.directory();
        if let Some(current) = directory.by_agent_id(agent_id) {
            match current.home.as_deref() {
                Some(home) if home == gateway => {
                    current
                        .max_streams
                        .store(record.max_streams, Ordering::Relaxed);
                    let location_same = current.location.country == record.country
                        && current.location.asn == record.asn
                        && current.location.city == record.city
                        && current.location.region == record.region;
                    if location_same {
                        directory.set_accepting(current.key, record.accepting);
                        return;
                    }
                }
                Some(_) => {}
                None => {
                    // The device's tunnel here: if it still answers, the other
                    // gateway's entry is the stale one (it will see its tunnel
                    // end); if not, the device has moved there.
                    if self
                        .shared
                        .routing
                        .exits
                        .tunnels()
                        .is_alive(current.key, self.shared.config.liveness_timeout)
                        .await
                    {
                        return;
                    }
                    self.shared.routing.exits.disconnect(
                        current.key,
                        exitpool_protocol::close_code::REPLACED,
                        b"the agent joined another gateway of the fleet",
                    );
                }
            }
        }
        let home = self.home(gateway);
        self.shared.routing.exits.admit_remote(Joining {
            agent_id: agent_id.to_owned(),
            token: Secret(String::new()),
            location: Location {
                country: record.country.clone(),
                asn: record.asn,
                city: record.city.clone(),
                region: record.region.clone(),
            },
            software: record.software.clone(),
            max_streams: record.max_streams,
            accepting: record.accepting,
            observed: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            home: Some(home),
        });
    }

    /// Removes `gateway`'s agent `agent_id`, if it is still listed as there.
    fn remove(&self, gateway: &str, agent_id: &str) {
        let directory = self.shared.routing.exits.directory();
        if let Some(current) = directory.by_agent_id(agent_id) {
            if current.home.as_deref() == Some(gateway) {
                self.shared.routing.exits.forget(current.key);
            }
        }
    }

    /// Takes every agent of `gateway` out: it stopped or stopped answering.
    fn drop_gateway(&mut self, gateway: &str) {
        let directory = self.shared.routing.exits.directory();
        let mut dropped = 0;
        for agent in directory.agents() {
            if agent.home.as_deref() == Some(gateway) {
                self.shared.routing.exits.forget(agent.key);
                dropped += 1;
            }
        }
        self.known.remove(gateway);
        self.fleet.peers.forget(gateway);
        tracing::info!(%gateway, agents = dropped, "gateway left the fleet; its agents are out of the pool");
    }

    /// Reads `gateway`'s agent list whole (and its record, for where its peer
    /// link is) and makes the replica match it.
    async fn reload(&mut self, gateway: &str) -> Result<(), FleetError> {
        let mut pipe = redis::pipe();
        pipe.hgetall(keys::agents(gateway))
            .get(keys::gateway(gateway));
        let (listed, record): (HashMap<String, String>, Option<String>) =
            self.fleet.query_pipe("read agent list", &pipe).await?;
        if let Some(record) = record.and_then(|text| self.fleet.open_gateway_record(gateway, &text))
        {
            self.note_address(&record);
        }
        let mut present = HashSet::new();
        let mut seq = 0;
        let records = self.fleet.records.clone();
        for (field, value) in &listed {
            if field == keys::SEQ_FIELD {
                match records.open(&seq_scope(gateway), value) {
                    Some(text) => seq = text.parse().unwrap_or(0),
                    None => self
                        .fleet
                        .refuse_record("agent list sequence number", gateway),
                }
                continue;
            }
            let Some(value) = records.open(&agent_scope(gateway, field), value) else {
                self.fleet.refuse_record("agent entry", gateway);
                continue;
            };
            match serde_json::from_str::<AgentRecord>(value) {
                Ok(record) => {
                    present.insert(field.clone());
                    self.upsert(gateway, field, &record).await;
                }
                Err(error) => tracing::warn!(%gateway, %error, "unreadable agent record; skipped"),
            }
        }
        for agent in self.shared.routing.exits.directory().agents() {
            if agent.home.as_deref() == Some(gateway) && !present.contains(&agent.agent_id) {
                self.shared.routing.exits.forget(agent.key);
            }
        }
        let known = self.known.entry(gateway.to_owned()).or_default();
        known.seq = known.seq.max(seq);
        known.behind = None;
        tracing::debug!(%gateway, agents = present.len(), "agent list read whole");
        Ok(())
    }

    /// Reads every gateway's record: notes peer addresses, drops gateways
    /// that are gone, and reads whole the lists that fell behind (all of them
    /// when `everything`, after Redis was out of reach).
    async fn check_gateways(&mut self, everything: bool) -> Result<(), FleetError> {
        if self.stream_position.is_none() {
            // Changes from here on come through the stream; what came before
            // is in the lists read below.
            let last: redis::streams::StreamRangeReply = self
                .fleet
                .query(
                    "directory position",
                    redis::cmd("XREVRANGE")
                        .arg(keys::DIRECTORY)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            self.stream_position = Some(
                last.ids
                    .first()
                    .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()),
            );
        }
        let ids: Vec<String> = self
            .fleet
            .query("list gateways", redis::cmd("SMEMBERS").arg(keys::GATEWAYS))
            .await?;
        let records: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            let mut get = redis::cmd("MGET");
            for id in &ids {
                get.arg(keys::gateway(id));
            }
            self.fleet.query("read gateways", &get).await?
        };
        let mut alive = Vec::new();
        for (id, record) in ids.iter().zip(records) {
            let record = record.and_then(|text| self.fleet.open_gateway_record(id, &text));
            match record {
                Some(record) => alive.push(record),
                // Its record expired: it stopped without a word.
                None if id.as_str() != &*self.fleet.id
                    && (self.known.contains_key(id) || self.has_agents_of(id)) =>
                {
                    self.drop_gateway(id);
                }
                None => {}
            }
        }
        let resync = self.fleet.config.resync_interval;
        for record in &alive {
            if record.id == *self.fleet.id {
                continue;
            }
            self.note_address(record);
            let known = self.known.entry(record.id.clone()).or_default();
            let due = match known.behind {
                _ if known.seq == 0 => true,
                Some((claimed, _)) if known.seq >= claimed => {
                    known.behind = None;
                    false
                }
                Some((_, since)) => since.elapsed() >= resync,
                None => {
                    if known.seq < record.seq {
                        known.behind = Some((record.seq, Instant::now()));
                    }
                    false
                }
            };
            if everything || due {
                self.reload(&record.id).await?;
            }
        }
        *self
            .fleet
            .gateways
            .lock()
            .expect("fleet gateways lock poisoned") = alive;
        Ok(())
    }

    /// Notes where `record`'s gateway takes peer links.
    fn note_address(&mut self, record: &GatewayRecord) {
        let home = self.home(&record.id);
        if let (Some(addr), Ok(pin)) = (record.peer, record.pin.parse()) {
            let tcp = record.peer_tcp;
            self.fleet
                .peers
                .set_address(&home, PeerAddress { addr, tcp, pin });
        }
    }

    fn has_agents_of(&self, gateway: &str) -> bool {
        self.shared
            .routing
            .exits
            .directory()
            .agents()
            .iter()
            .any(|agent| agent.home.as_deref() == Some(gateway))
    }
}
