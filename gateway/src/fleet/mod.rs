//! Fleet mode (`--redis`): several gateways share one pool through Redis (or
//! Valkey), behind one balancer.
//!
//! What lives where:
//! - **Redis** holds what must agree: each gateway's agent list and a change
//!   stream ([`replica`]), session pins with their expiry ([`sessions`]), usage
//!   totals and each gateway's live load ([`usage`]), and one short-lived record
//!   per gateway (its peer address, pin and load) that says it is alive.
//! - **Each gateway** keeps a replica of every other gateway's agents in its own
//!   directory (as agents with a [`crate::directory::Agent::home`]), so a pick
//!   never waits for Redis; a customer whose exit sits elsewhere is carried over
//!   a [`peer`] link to the gateway holding its tunnel ([`serve`] answers them).
//!
//! Redis is not trusted with membership: every record a gateway publishes is
//! signed with a key derived from the fleet key ([`signed`]), and both ends of
//! a peer link prove membership ([`peer`]), so a Redis writer can disturb the
//! pool's view and the accounting but cannot add a gateway or an exit.
//!
//! Redis may go away: every command has a deadline ([`FleetConfig::redis_timeout`]),
//! the gateway keeps serving with what it holds, `/healthz` says `degraded` and
//! why, usage not yet flushed is journalled in the state directory, and
//! everything is published and read again when Redis is back.

pub mod peer;
pub mod replica;
pub mod serve;
pub mod sessions;
pub mod signed;
pub mod usage;

use crate::config::FleetConfig;
use crate::limits::Elsewhere;
use crate::metrics::FleetCounters;
use crate::usage::MemoryUsage;
use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one read of the change stream blocks in Redis. [`replica`] follows
/// the stream with such reads; the connection they use ([`Fleet`]'s `feed`)
/// answers within the Redis timeout plus this.
pub const FEED_BLOCK: Duration = Duration::from_millis(500);

/// Every Redis key the fleet uses, in one place.
pub mod keys {
    /// Set of every gateway id that has joined the fleet.
    pub const GATEWAYS: &str = "exitpool:gateways";
    /// The change stream of every gateway's agent list.
    pub const DIRECTORY: &str = "exitpool:directory";
    /// Per gateway: the sequence number of its last usage flush (idempotence).
    pub const FLUSHED: &str = "exitpool:usage:flushed";
    /// Per customer: bytes up + down over the fleet (quotas read this).
    pub const CUSTOMER_BYTES: &str = "exitpool:usage:customer-bytes";
    /// Field of an agent-list hash holding the list's sequence number.
    pub const SEQ_FIELD: &str = "~seq";

    /// A gateway's record (peer address, pin, load), expiring unless renewed.
    pub fn gateway(id: &str) -> String {
        format!("exitpool:gateway:{id}")
    }

    /// A gateway's agents: agent id -> record, and [`SEQ_FIELD`].
    pub fn agents(id: &str) -> String {
        format!("exitpool:agents:{id}")
    }

    /// A gateway's live load per customer (connections, requests per second).
    pub fn live(id: &str) -> String {
        format!("exitpool:live:{id}")
    }

    /// One customer's usage totals over the fleet.
    pub fn customer_usage(customer: &str) -> String {
        format!("exitpool:usage:customer:{customer}")
    }

    /// One agent's usage totals over the fleet.
    pub fn agent_usage(agent_id: &str) -> String {
        format!("exitpool:usage:agent:{agent_id}")
    }

    /// A sticky-session pin. The customer name is length-prefixed so no
    /// (customer, session) pair can spell another's key.
    pub fn session(customer: &str, session: &str) -> String {
        format!("exitpool:session:{}:{customer}:{session}", customer.len())
    }
}

/// The Redis client for `config`'s URL: over TLS for `rediss://` (rustls
/// with ring), trusting `redis_ca` when given, else the system's roots.
fn redis_client(config: &FleetConfig) -> Result<redis::Client, FleetError> {
    let url = config.redis_url.expose();
    let error = |what: &'static str| {
        move |e: redis::RedisError| FleetError {
            what,
            reason: e.to_string(),
        }
    };
    let tls = url.starts_with("rediss://");
    if tls {
        // The redis crate builds its rustls configuration from the process's
        // provider: ours (ring), whatever else is linked in.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let Some(ca) = &config.redis_ca else {
        return redis::Client::open(url).map_err(error("url"));
    };
    if !tls {
        return Err(FleetError {
            what: "ca",
            reason: "--redis-ca needs a rediss:// URL".into(),
        });
    }
    let pem = std::fs::read(ca).map_err(|e| FleetError {
        what: "ca",
        reason: format!("reading {}: {e}", ca.display()),
    })?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(url, certificates).map_err(error("ca"))
}

/// A Redis command that failed or did not answer in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis {what}: {reason}")]
pub struct FleetError {
    /// What the command was for.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

/// One gateway as the fleet sees it: renewed every heartbeat, gone when it
/// stops being renewed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// Fleet id.
    pub id: String,
    /// Where its peer link is accepted.
    pub peer: Option<SocketAddr>,
    /// Whether it takes peer links over TLS on TCP at `peer`'s port number
    /// too (absent from records of gateways that take only QUIC).
    #[serde(default)]
    pub peer_tcp: bool,
    /// Its certificate pin, which peer links check.
    pub pin: String,
    /// The sequence number of its agent list's last change.
    pub seq: u64,
    /// Agents whose tunnels it holds.
    pub agents: usize,
    /// Relay streams open through its agents.
    pub streams: u64,
    /// Customer connections open on it.
    pub connections: u64,
    /// Bytes its customers sent and received, since its usage began.
    pub bytes_up: u64,
    /// See `bytes_up`.
    pub bytes_down: u64,
}

/// Why the fleet's shared state is out of reach, and since when.
#[derive(Debug, Clone)]
struct Degraded {
    reason: String,
    since: Instant,
}

/// This gateway's membership in a fleet: its Redis connections, its peer
/// links, and what it last heard from the others.
pub struct Fleet {
    /// This gateway's fleet id.
    pub id: Arc<str>,
    /// How the fleet was configured.
    pub config: FleetConfig,
    /// The peer address other gateways dial.
    pub advertise: SocketAddr,
    /// This gateway's certificate pin, which they check.
    pub pin: String,
    redis: ConnectionManager,
    /// A connection of its own for blocking reads of the change stream, so they
    /// never hold up other commands.
    feed: ConnectionManager,
    degraded: Mutex<Option<Degraded>>,
    /// Whether Redis has answered since this gateway started.
    reached: std::sync::atomic::AtomicBool,
    /// Links to the other gateways.
    pub peers: peer::Peers,
    /// The key of the records this fleet's gateways publish.
    records: signed::RecordKey,
    /// What the rest of the fleet uses of each busy customer's limits.
    elsewhere: DashMap<String, Elsewhere>,
    /// Per customer: fleet-wide bytes as of the last flush, and this gateway's
    /// own bytes included in that figure.
    quota_bytes: DashMap<String, (u64, u64)>,
    /// The fleet's gateways as last read, for `/stats`.
    gateways: Mutex<Vec<GatewayRecord>>,
    /// Usage counted here since the last flush ([`usage`]).
    pub unflushed: Arc<MemoryUsage>,
    /// What was asked of Redis and of peers (shared with `/metrics`).
    pub counters: FleetCounters,
}

impl Fleet {
    /// Sets up fleet membership as `id` (no Redis round trip yet: the
    /// connections are made on first use, so a gateway starts while Redis is
    /// down and catches up when it is back).
    pub fn new(
        config: FleetConfig,
        id: Arc<str>,
        advertise: SocketAddr,
        pin: String,
        peers: peer::Peers,
        counters: FleetCounters,
    ) -> Result<Fleet, FleetError> {
        let client = redis_client(&config)?;
        let manager = |response_timeout: Duration| {
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.redis_timeout))
                .set_response_timeout(Some(response_timeout))
                // Reconnect attempts stay short and frequent: every command
                // has its own deadline, and the gateway lives on without Redis.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(client.clone(), settings).map_err(|e| {
                FleetError {
                    what: "connection",
                    reason: e.to_string(),
                }
            })
        };
        let redis = manager(config.redis_timeout)?;
        let feed = manager(config.redis_timeout + FEED_BLOCK)?;
        Ok(Fleet {
            id,
            advertise,
            pin,
            redis,
            feed,
            degraded: Mutex::new(None),
            reached: std::sync::atomic::AtomicBool::new(false),
            records: peers.record_key().clone(),
            peers,
            elsewhere: DashMap::new(),
            quota_bytes: DashMap::new(),
            gateways: Mutex::new(Vec::new()),
            unflushed: Arc::default(),
            counters,
            config,
        })
    }

    /// The default fleet id: the host name and a hash of the state directory's
    /// path, so copying a state directory to another machine (as operators do
    /// to share the certificate) still gives each gateway its own id.
    pub fn default_id(state_dir: &std::path::Path) -> String {
        use sha2::{Digest, Sha256};
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "gateway".into());
        let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
        let digest = Sha256::digest(path.to_string_lossy().as_bytes());
        format!("{host}-{}", hex::encode(&digest[..4]))
    }

    /// Runs one Redis command with the fleet's deadline, keeping count and
    /// the degraded state.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, FleetError> {
        let mut connection = self.redis.clone();
        self.finish(
            what,
            self.config.redis_timeout,
            command.query_async(&mut connection),
        )
        .await
    }

    /// Like [`Fleet::query`] for a pipeline (one round trip).
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, FleetError> {
        let mut connection = self.redis.clone();
        self.finish(
            what,
            self.config.redis_timeout,
            pipe.query_async(&mut connection),
        )
        .await
    }

    /// Like [`Fleet::query`] on the change-stream connection, whose reads block
    /// up to [`FEED_BLOCK`].
    async fn query_feed<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, FleetError> {
        let mut connection = self.feed.clone();
        let deadline = self.config.redis_timeout + FEED_BLOCK;
        self.finish(what, deadline, command.query_async(&mut connection))
            .await
    }

    async fn finish<T>(
        &self,
        what: &'static str,
        deadline: Duration,
        sent: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        self.counters.redis_round_trips.inc();
        let outcome = match tokio::time::timeout(deadline, sent).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(FleetError {
                what,
                reason: error.to_string(),
            }),
            Err(_) => Err(FleetError {
                what,
                reason: format!("no answer within {deadline:?}"),
            }),
        };
        match &outcome {
            Ok(_) => self.mark_reachable(),
            Err(error) => self.mark_degraded(error),
        }
        outcome
    }

    fn mark_reachable(&self) {
        self.reached
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut degraded = self.degraded.lock().expect("fleet status lock poisoned");
        if let Some(was) = degraded.take() {
            tracing::info!(
                after_ms = was.since.elapsed().as_millis() as u64,
                "redis reachable again; fleet state catching up"
            );
        }
    }

    fn mark_degraded(&self, error: &FleetError) {
        self.counters.redis_errors.inc();
        let mut degraded = self.degraded.lock().expect("fleet status lock poisoned");
        match &mut *degraded {
            Some(current) => current.reason = error.to_string(),
            None => {
                tracing::warn!(%error, "redis unreachable; serving with this gateway's own state");
                *degraded = Some(Degraded {
                    reason: error.to_string(),
                    since: Instant::now(),
                });
            }
        }
    }

    /// Refuses to join a fleet whose gateways use another certificate: when
    /// Redis lists live gateways, none of them signs with this gateway's key,
    /// and some publish another pin, this gateway's identity is not the
    /// fleet's (its state directory lacks the fleet's shared files), and it
    /// would only serve alone while the others ignore it. Redis out of reach
    /// (or a wrong password) is no refusal: the gateway starts degraded and
    /// checks nothing more.
    pub async fn check_membership(&self) -> Result<(), String> {
        let others = match self.read_records().await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "could not check this gateway's certificate against the fleet's at start");
                return Ok(());
            }
        };
        let others: Vec<(String, String)> = others
            .into_iter()
            .filter(|(id, _)| id.as_str() != &*self.id)
            .collect();
        if others.iter().any(|(id, sealed)| {
            self.records
                .open(&signed::gateway_scope(id), sealed)
                .is_some()
        }) {
            return Ok(());
        }
        let mut foreign: Vec<(String, String)> = others
            .iter()
            .filter_map(|(id, sealed)| {
                // Signed (`<tag>.<json>`) by another key, or unsigned (an
                // older gateway).
                let text = match sealed.split_once('.') {
                    Some((tag, text)) if !tag.starts_with('{') => text,
                    _ => sealed,
                };
                let record = serde_json::from_str::<GatewayRecord>(text).ok()?;
                (record.pin != self.pin).then(|| (id.clone(), record.pin))
            })
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        let names: Vec<&str> = foreign.iter().map(|(id, _)| id.as_str()).collect();
        Err(format!(
            "this gateway's certificate is not the fleet's: its pin is {}, while the fleet's gateways in Redis ({}) use {}. Copy gateway-cert.der, gateway-key.der and exit-id.key from a gateway of the fleet into this gateway's --state-dir (or point --redis at this gateway's own fleet)",
            self.pin,
            names.join(", "),
            foreign[0].1,
        ))
    }

    /// Every live gateway record in Redis, as stored: (id, sealed text).
    async fn read_records(&self) -> Result<Vec<(String, String)>, FleetError> {
        let ids: Vec<String> = self
            .query("list gateways", redis::cmd("SMEMBERS").arg(keys::GATEWAYS))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for id in &ids {
            get.arg(keys::gateway(id));
        }
        let records: Vec<Option<String>> = self.query("read gateways", &get).await?;
        Ok(ids
            .into_iter()
            .zip(records)
            .filter_map(|(id, record)| Some((id, record?)))
            .collect())
    }

    /// Counts and logs a record read from Redis that is not signed with the
    /// fleet's key (written by someone else, or by a gateway of another
    /// fleet): it is ignored.
    fn refuse_record(&self, what: &'static str, gateway: &str) {
        self.counters.records_refused.inc();
        // Repeats of this line are summarised by the log layer (per call site).
        tracing::warn!(
            what,
            gateway = ?gateway,
            "a fleet record in Redis is not signed with this fleet's key; ignored"
        );
    }

    /// Gateway `id`'s record from its sealed text, if its signature verifies
    /// and it names `id`.
    fn open_gateway_record(&self, id: &str, sealed: &str) -> Option<GatewayRecord> {
        let record = self
            .records
            .open(&signed::gateway_scope(id), sealed)
            .and_then(|text| serde_json::from_str::<GatewayRecord>(text).ok())
            .filter(|record| record.id == id);
        if record.is_none() {
            self.refuse_record("gateway record", id);
        }
        record
    }

    /// Why the fleet's shared state is out of reach, if it is: the reason and
    /// for how long.
    pub fn degraded(&self) -> Option<(String, Duration)> {
        self.degraded
            .lock()
            .expect("fleet status lock poisoned")
            .as_ref()
            .map(|state| (state.reason.clone(), state.since.elapsed()))
    }

    /// Why this gateway cannot do its fleet work now (`/readyz` answers
    /// `503` with it): Redis has not answered yet, or its last command failed
    /// (out of reach, a wrong password). `None` when it can.
    pub fn not_ready(&self) -> Option<String> {
        if let Some((reason, since)) = self.degraded() {
            return Some(format!(
                "not ready: the fleet's shared state is out of reach for {} s ({reason})\n",
                since.as_secs()
            ));
        }
        if !self.reached.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("not ready: Redis has not answered yet\n".into());
        }
        None
    }

    /// Whether Redis answered the last command.
    pub fn is_reachable(&self) -> bool {
        self.degraded().is_none()
    }

    /// What the rest of the fleet uses of `customer`'s limits.
    pub fn elsewhere(&self, customer: &str) -> Elsewhere {
        self.elsewhere
            .get(customer)
            .map(|entry| *entry)
            .unwrap_or_default()
    }

    /// Bytes `customer` has used over the fleet, given this gateway's own
    /// figure `local`: the fleet's total at the last flush plus what this
    /// gateway counted since.
    pub fn customer_bytes(&self, customer: &str, local: u64) -> u64 {
        match self.quota_bytes.get(customer) {
            Some(entry) => {
                let (fleet, local_then) = *entry;
                fleet.saturating_add(local.saturating_sub(local_then))
            }
            None => local,
        }
    }

    /// Bytes per customer over the fleet, as of the last heartbeat.
    pub fn quota_snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.quota_bytes
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().0))
            .collect()
    }

    /// The fleet's gateways as last read.
    pub fn gateways(&self) -> Vec<GatewayRecord> {
        self.gateways
            .lock()
            .expect("fleet gateways lock poisoned")
            .clone()
    }
}

/// The limits count what the rest of the fleet used ([`Fleet::elsewhere`],
/// [`Fleet::customer_bytes`]).
impl crate::limits::OtherGateways for Fleet {
    fn elsewhere(&self, customer: &str) -> Elsewhere {
        Fleet::elsewhere(self, customer)
    }

    fn customer_bytes(&self, customer: &str, here: u64) -> u64 {
        Fleet::customer_bytes(self, customer, here)
    }
}

/// Streams to exits of other gateways go over the peer link to the gateway
/// holding each ([`peer::Peers::open`]).
impl crate::tunnel::RemoteExits for Fleet {
    fn open<'a>(
        &'a self,
        home: &'a Arc<str>,
        agent_id: &'a str,
        host: exitpool_protocol::TargetHost,
        port: u16,
        timeout: Duration,
    ) -> crate::tunnel::RemoteOpen<'a> {
        self.counters.peer_streams_out.inc();
        Box::pin(self.peers.open(home, agent_id, host, port, timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::keys;

    #[test]
    fn no_customer_and_session_spell_another_pair_s_key() {
        assert_ne!(keys::session("a:b", "c"), keys::session("a", "b:c"));
        assert_eq!(keys::session("alice", "s1"), "exitpool:session:5:alice:s1");
    }
}
