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

use super::peer::PeerAddress;
use super::{keys, Fleet, FleetError, GatewayRecord, FEED_BLOCK};
use crate::directory::{Change, Joining, Location};
use crate::shared::Shared;
use exitpool_protocol::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

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
    let publisher = Publisher {
        // Above anything an earlier run of this gateway used, so followers
        // never take a new change for one they have seen.
        seq: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |since| since.as_micros() as u64),
        shared: shared.clone(),
        fleet: fleet.clone(),
        reported: HashMap::new(),
    };
    let follower = Follower {
        shared: shared.clone(),
        fleet: fleet.clone(),
        known: HashMap::new(),
        homes: HashMap::new(),
        stream_position: None,
    };
    tokio::join!(publisher.run(changes), follower.run());
}

struct Publisher {
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    seq: u64,
    /// The quarter of its capacity each local agent's load was last reported
    /// in, by agent id.
    reported: HashMap<String, u32>,
}

/// Which quarter of `max` `streams` is in (0 idle .. 4 full).
fn load_quarter(streams: u32, max: u32) -> u32 {
    (streams.saturating_mul(4) / max.max(1)).min(4)
}

impl Publisher {
    async fn run(mut self, mut changes: mpsc::Receiver<Change>) {
        let mut heartbeat = tokio::time::interval(self.fleet.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The list in Redis may be an earlier run's: publish it whole first.
        let mut whole_needed = true;
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { break };
                    let mut batch = vec![change];
                    while batch.len() < BATCH {
                        match changes.try_recv() {
                            Ok(change) => batch.push(change),
                            Err(_) => break,
                        }
                    }
                    // While the whole list is due, it carries these changes.
                    if !whole_needed && self.publish(&batch).await.is_err() {
                        whole_needed = true;
                    }
                }
                _ = heartbeat.tick() => {
                    whole_needed |= self.shared.directory.take_feed_lost();
                    // The record (with the peer address) first, so a follower
                    // that learns of the agents can already reach them.
                    let beat = self.heartbeat().await;
                    if whole_needed {
                        whole_needed = self.publish_whole().await.is_err();
                    }
                    // A heartbeat that fails may mean Redis restarted empty:
                    // the list goes out whole once it answers again.
                    whole_needed |= beat.is_err();
                    if !whole_needed && self.publish_loads().await.is_err() {
                        whole_needed = true;
                    }
                }
                () = self.shared.shutdown.cancelled() => break,
            }
        }
        self.leave().await;
    }

    fn stream_entry(&mut self, pipe: &mut redis::Pipeline, event: &Event) {
        self.seq += 1;
        let event = json(event);
        let seq = self.seq.to_string();
        let tag = self
            .fleet
            .records
            .tag(&change_parts(&self.fleet.id, &seq, &event));
        pipe.cmd("XADD")
            .arg(keys::DIRECTORY)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LENGTH)
            .arg("*")
            .arg("g")
            .arg(&*self.fleet.id)
            .arg("s")
            .arg(seq)
            .arg("e")
            .arg(event)
            .arg("m")
            .arg(tag)
            .ignore();
    }

    async fn publish(&mut self, batch: &[Change]) -> Result<(), FleetError> {
        let hash = keys::agents(&self.fleet.id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for change in batch {
            let event = match change {
                Change::Joined(agent) | Change::Accepting(agent) => {
                    let record = record_of(agent);
                    pipe.hset(&hash, &agent.agent_id, self.sealed(agent, &record))
                        .ignore();
                    Event::Join {
                        id: agent.agent_id.clone(),
                        agent: record,
                    }
                }
                Change::Left(agent) => {
                    // A device that reconnected here at once is still here.
                    if self
                        .shared
                        .directory
                        .by_agent_id(&agent.agent_id)
                        .is_some_and(|current| current.is_local())
                    {
                        continue;
                    }
                    pipe.hdel(&hash, &agent.agent_id).ignore();
                    Event::Leave {
                        id: agent.agent_id.clone(),
                    }
                }
            };
            self.stream_entry(&mut pipe, &event);
        }
        pipe.hset(&hash, keys::SEQ_FIELD, self.sealed_seq())
            .ignore();
        self.fleet.query_pipe::<()>("publish agents", &pipe).await
    }

    async fn publish_whole(&mut self) -> Result<(), FleetError> {
        let hash = keys::agents(&self.fleet.id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&hash).ignore();
        let agents = self.local_agents();
        for chunk in agents.chunks(BATCH) {
            let fields: Vec<(String, String)> = chunk
                .iter()
                .map(|agent| {
                    (
                        agent.agent_id.clone(),
                        self.sealed(agent, &record_of(agent)),
                    )
                })
                .collect();
            pipe.hset_multiple(&hash, &fields).ignore();
        }
        self.stream_entry(&mut pipe, &Event::Reset);
        pipe.hset(&hash, keys::SEQ_FIELD, self.sealed_seq())
            .ignore();
        self.fleet
            .query_pipe::<()>("publish agent list", &pipe)
            .await?;
        tracing::info!(agents = agents.len(), "agent list published to the fleet");
        Ok(())
    }

    /// Reports the agents whose load moved to another quarter of capacity.
    async fn publish_loads(&mut self) -> Result<(), FleetError> {
        let mut moved = Vec::new();
        let mut present = HashSet::new();
        for agent in self.local_agents() {
            let streams = agent.active_streams.load(Ordering::Relaxed);
            let quarter = load_quarter(streams, agent.max_streams.load(Ordering::Relaxed));
            present.insert(agent.agent_id.clone());
            if self.reported.get(&agent.agent_id).copied().unwrap_or(0) != quarter {
                self.reported.insert(agent.agent_id.clone(), quarter);
                moved.push(Event::Load {
                    id: agent.agent_id.clone(),
                    streams,
                });
            }
        }
        self.reported.retain(|id, _| present.contains(id));
        if moved.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for event in &moved {
            self.stream_entry(&mut pipe, event);
        }
        pipe.hset(
            keys::agents(&self.fleet.id),
            keys::SEQ_FIELD,
            self.sealed_seq(),
        )
        .ignore();
        self.fleet.query_pipe::<()>("publish loads", &pipe).await
    }

    /// `agent`'s entry in this gateway's list, signed.
    fn sealed(&self, agent: &crate::directory::Agent, record: &AgentRecord) -> String {
        self.fleet
            .records
            .seal(&agent_scope(&self.fleet.id, &agent.agent_id), &json(record))
    }

    /// The list's sequence number, signed.
    fn sealed_seq(&self) -> String {
        self.fleet
            .records
            .seal(&seq_scope(&self.fleet.id), &self.seq.to_string())
    }

    /// The agents whose tunnels this gateway holds.
    fn local_agents(&self) -> Vec<Arc<crate::directory::Agent>> {
        let mut agents = self.shared.directory.agents();
        agents.retain(|agent| agent.is_local());
        agents
    }

    async fn heartbeat(&self) -> Result<(), FleetError> {
        let local = self.local_agents();
        let record = GatewayRecord {
            id: self.fleet.id.to_string(),
            peer: Some(self.fleet.advertise),
            peer_tcp: true,
            pin: self.fleet.pin.clone(),
            seq: self.seq,
            agents: local.len(),
            streams: local
                .iter()
                .map(|agent| u64::from(agent.active_streams.load(Ordering::Relaxed)))
                .sum(),
            connections: u64::from(self.shared.limits.live_total()),
            bytes_up: self.shared.metrics.bytes_up.get(),
            bytes_down: self.shared.metrics.bytes_down.get(),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::gateway(&self.fleet.id))
            .arg(self.fleet.records.seal(
                &super::signed::gateway_scope(&self.fleet.id),
                &json(&record),
            ))
            .arg("PX")
            .arg(self.fleet.config.gateway_timeout.as_millis() as u64)
            .ignore();
        pipe.sadd(keys::GATEWAYS, &*self.fleet.id).ignore();
        self.fleet.query_pipe::<()>("heartbeat", &pipe).await
    }

    /// Takes this gateway and its agents out of the fleet (a clean stop).
    async fn leave(&mut self) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(keys::agents(&self.fleet.id)).ignore();
        pipe.del(keys::gateway(&self.fleet.id)).ignore();
        pipe.srem(keys::GATEWAYS, &*self.fleet.id).ignore();
        self.stream_entry(&mut pipe, &Event::Gone);
        match self.fleet.query_pipe::<()>("leave", &pipe).await {
            Ok(()) => tracing::info!("left the fleet"),
            Err(error) => {
                tracing::warn!(%error, "could not tell the fleet this gateway stops; its record expires instead")
            }
        }
    }
}

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

struct Follower {
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    known: HashMap<String, Known>,
    /// One shared name per gateway, for its agents' `home`.
    homes: HashMap<String, Arc<str>>,
    /// The last stream entry read; `None` until the first successful read.
    stream_position: Option<String>,
}

impl Follower {
    async fn run(mut self) {
        let heartbeat = self.fleet.config.heartbeat;
        let shutdown = self.shared.shutdown.clone();
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
                if let Some(agent) = self.shared.directory.by_agent_id(&id) {
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
        let directory = &self.shared.directory;
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
                        .tunnels
                        .is_alive(current.key, self.shared.config.liveness_timeout)
                        .await
                    {
                        return;
                    }
                    self.shared.tunnels.close(
                        current.key,
                        exitpool_protocol::close_code::REPLACED,
                        b"the agent joined another gateway of the fleet",
                    );
                    directory.remove(current.key);
                }
            }
        }
        let home = self.home(gateway);
        let key = self.shared.tunnels.reserve_key();
        self.shared.directory.insert(
            key,
            Joining {
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
            },
        );
    }

    /// Removes `gateway`'s agent `agent_id`, if it is still listed as there.
    fn remove(&self, gateway: &str, agent_id: &str) {
        let directory = &self.shared.directory;
        if let Some(current) = directory.by_agent_id(agent_id) {
            if current.home.as_deref() == Some(gateway) {
                directory.remove(current.key);
            }
        }
    }

    /// Takes every agent of `gateway` out: it stopped or stopped answering.
    fn drop_gateway(&mut self, gateway: &str) {
        let directory = &self.shared.directory;
        let mut dropped = 0;
        for agent in directory.agents() {
            if agent.home.as_deref() == Some(gateway) {
                directory.remove(agent.key);
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
        for agent in self.shared.directory.agents() {
            if agent.home.as_deref() == Some(gateway) && !present.contains(&agent.agent_id) {
                self.shared.directory.remove(agent.key);
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
            .directory
            .agents()
            .iter()
            .any(|agent| agent.home.as_deref() == Some(gateway))
    }
}

#[cfg(test)]
mod tests {
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
