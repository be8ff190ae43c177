//! Publishing: this gateway's agents into its Redis hash and the change
//! stream, its record every heartbeat, and its agents' load by quarters.

use super::records::{
    agent_scope, change_parts, json, record_of, seq_scope, AgentRecord, Event, BATCH, STREAM_LENGTH,
};
use crate::directory::Change;
use crate::fleet::{keys, Fleet, FleetError, GatewayRecord};
use crate::shared::Shared;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;

pub(super) struct Publisher {
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    seq: u64,
    /// The quarter of its capacity each local agent's load was last reported
    /// in, by agent id.
    reported: HashMap<String, u32>,
}

/// Which quarter of `max` `streams` is in (0 idle .. 4 full).
pub(super) fn load_quarter(streams: u32, max: u32) -> u32 {
    (streams.saturating_mul(4) / max.max(1)).min(4)
}

impl Publisher {
    /// A publisher whose first sequence number is above anything an earlier
    /// run of this gateway used, so followers never take a new change for one
    /// they have seen.
    pub(super) fn new(shared: Arc<Shared>, fleet: Arc<Fleet>) -> Publisher {
        Publisher {
            seq: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |since| since.as_micros() as u64),
            shared,
            fleet,
            reported: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, mut changes: mpsc::Receiver<Change>) {
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
                    whole_needed |= self.shared.routing.exits.directory().take_feed_lost();
                    // The record (with the peer address) first, so a follower
                    // that learns of the agents can already reach them.
                    let beat = self.heartbeat().await;
                    if matches!(beat, Ok(false)) && !whole_needed {
                        // Redis lost or replaced the list although none of
                        // this publisher's commands failed: it restarted (the
                        // command that met the dropped connection may have
                        // been another task's), was flushed or failed over.
                        tracing::warn!(
                            "this gateway's agent list in Redis is gone or not the one it last published (Redis restarted, was flushed or failed over, or another gateway runs with this gateway id); publishing it whole"
                        );
                        whole_needed = true;
                    }
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
                () = self.shared.lifecycle.shutdown.cancelled() => break,
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
                        .routing
                        .exits
                        .directory()
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
        let mut agents = self.shared.routing.exits.directory().agents();
        agents.retain(|agent| agent.is_local());
        agents
    }

    /// Renews this gateway's record, and says whether Redis still holds the
    /// agent list this publisher last wrote (its signed sequence number is
    /// the one last published): the only way to tell that Redis lost its
    /// data when no command of this publisher failed.
    async fn heartbeat(&self) -> Result<bool, FleetError> {
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
            connections: u64::from(self.shared.accounting.limits.live_total()),
            bytes_up: self.shared.accounting.metrics.bytes_up.get(),
            bytes_down: self.shared.accounting.metrics.bytes_down.get(),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::gateway(&self.fleet.id))
            .arg(self.fleet.records.seal(
                &crate::fleet::signed::gateway_scope(&self.fleet.id),
                &json(&record),
            ))
            .arg("PX")
            .arg(self.fleet.config.gateway_timeout.as_millis() as u64)
            .ignore();
        pipe.sadd(keys::GATEWAYS, &*self.fleet.id).ignore();
        pipe.hget(keys::agents(&self.fleet.id), keys::SEQ_FIELD);
        let (stored,): (Option<String>,) = self.fleet.query_pipe("heartbeat", &pipe).await?;
        Ok(stored.is_some_and(|stored| stored == self.sealed_seq()))
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
