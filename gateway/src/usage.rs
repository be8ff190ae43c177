//! Usage accounting: bytes up and down, connections and errors, per customer (for
//! billing and quotas) and per agent (for payouts).
//!
//! The byte path never touches this: relays count into their own live counters
//! and fold the difference in here about once a second and when they end
//! (the customer transfer), so one connection costs a few map lookups per second.
//! [`UsageSink`] is the interface the rest of the gateway uses; [`MemoryUsage`]
//! keeps it in memory, and the gateway writes a [`UsageSnapshot`] to
//! `usage.json` in its state directory every [`FLUSH_INTERVAL`] and at shutdown
//! (atomically: temp file + rename), and loads it at start. A crash loses at most
//! the last interval; a restart loses nothing. A shared store (Redis/Valkey) for
//! several gateways would be another `UsageSink`. With a control-plane store,
//! [`History`] collects the same usage by exit and target host for its
//! history (see [`crate::control_link`]).

use crate::directory::Agent;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often usage is written to the state directory.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// The file in the state directory.
pub const FILE_NAME: &str = "usage.json";

/// Version of the file's layout.
const FILE_VERSION: u32 = 1;

/// Totals for one customer or agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    /// Bytes from the customer towards targets.
    pub bytes_up: u64,
    /// Bytes from targets towards the customer.
    pub bytes_down: u64,
    /// Connections (CONNECT tunnels, SOCKS5 connections, plain-HTTP requests)
    /// that reached their target.
    pub connections: u64,
    /// Failed requests and relays.
    pub errors: u64,
    /// The same failures by product code (see the README's error table).
    pub errors_by_code: BTreeMap<String, u64>,
}

impl Totals {
    /// Bytes up + down, what quotas count.
    pub fn bytes(&self) -> u64 {
        self.bytes_up.saturating_add(self.bytes_down)
    }
}

/// Totals for one agent, keyed by its device id in [`UsageSnapshot::agents`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentTotals {
    /// The exit id customers see.
    pub exit_id: String,
    /// The country it was last seen in.
    pub country: Option<String>,
    /// What went through it.
    #[serde(flatten)]
    pub totals: Totals,
}

/// Everything counted, as persisted and as shown on `/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageSnapshot {
    /// Layout version.
    pub version: u32,
    /// By customer name.
    pub customers: BTreeMap<String, Totals>,
    /// By agent id.
    pub agents: BTreeMap<String, AgentTotals>,
}

/// What an operator resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetScope {
    /// Everything.
    All,
    /// One customer's totals.
    Customer(String),
    /// One agent's totals (by agent id or exit id).
    Agent(String),
}

/// Where usage is counted. Implementations must be cheap: calls come once per
/// connection and about once a second per long connection.
pub trait UsageSink: Send + Sync {
    /// Adds bytes moved for `customer` through `agent`. In a fleet each side
    /// counts its own: the gateway the customer reached counts the customer (and
    /// not an agent of another gateway), the gateway holding the agent's tunnel
    /// counts the agent (with no customer), so no byte is counted twice.
    fn record_transfer(&self, customer: Option<&str>, agent: &Agent, up: u64, down: u64);
    /// Counts one connection that reached its target, likewise.
    fn record_connection(&self, customer: Option<&str>, agent: &Agent);
    /// Counts one failure with product `code`, for whichever of the customer and
    /// agent are known.
    fn record_error(&self, customer: Option<&str>, agent: Option<&Agent>, code: &str);
    /// Bytes up + down `customer` has used (for quotas).
    fn customer_bytes(&self, customer: &str) -> u64;
    /// Everything counted so far.
    fn snapshot(&self) -> UsageSnapshot;
    /// Sets totals back to zero; returns whether anything matched.
    fn reset(&self, scope: &ResetScope) -> bool;
}

#[derive(Default)]
struct Counters {
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    errors: AtomicU64,
    errors_by_code: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn from_totals(totals: &Totals) -> Counters {
        Counters {
            bytes_up: totals.bytes_up.into(),
            bytes_down: totals.bytes_down.into(),
            connections: totals.connections.into(),
            errors: totals.errors.into(),
            errors_by_code: Mutex::new(totals.errors_by_code.clone()),
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            errors_by_code: self
                .errors_by_code
                .lock()
                .expect("usage lock poisoned")
                .clone(),
        }
    }

    /// The totals, leaving zero behind: nothing counted meanwhile is lost.
    fn drain(&self) -> Totals {
        Totals {
            bytes_up: self.bytes_up.swap(0, Ordering::Relaxed),
            bytes_down: self.bytes_down.swap(0, Ordering::Relaxed),
            connections: self.connections.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            errors_by_code: std::mem::take(
                &mut *self.errors_by_code.lock().expect("usage lock poisoned"),
            ),
        }
    }

    fn transfer(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    fn error(&self, code: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .errors_by_code
            .lock()
            .expect("usage lock poisoned")
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

struct AgentCounters {
    exit_id: Mutex<String>,
    country: Mutex<Option<String>>,
    counters: Counters,
}

/// Usage kept in memory (and persisted by the gateway through snapshots).
#[derive(Default)]
pub struct MemoryUsage {
    customers: DashMap<String, Counters>,
    agents: DashMap<String, AgentCounters>,
}

impl MemoryUsage {
    /// Starts from a loaded snapshot.
    pub fn from_snapshot(snapshot: &UsageSnapshot) -> MemoryUsage {
        let usage = MemoryUsage::default();
        for (name, totals) in &snapshot.customers {
            usage
                .customers
                .insert(name.clone(), Counters::from_totals(totals));
        }
        for (id, agent) in &snapshot.agents {
            usage.agents.insert(
                id.clone(),
                AgentCounters {
                    exit_id: Mutex::new(agent.exit_id.clone()),
                    country: Mutex::new(agent.country.clone()),
                    counters: Counters::from_totals(&agent.totals),
                },
            );
        }
        usage
    }

    /// Everything counted since the last drain, leaving zero behind (the
    /// fleet's per-heartbeat flush): each counter is taken atomically, so a
    /// byte counted meanwhile lands in this drain or the next, never in none.
    pub fn drain(&self) -> UsageSnapshot {
        let mut drained = self.collect(Counters::drain);
        drained
            .customers
            .retain(|_, totals| *totals != Totals::default());
        drained
            .agents
            .retain(|_, agent| agent.totals != Totals::default());
        drained
    }

    /// Every customer's and agent's totals, read by `read`.
    fn collect(&self, read: impl Fn(&Counters) -> Totals) -> UsageSnapshot {
        UsageSnapshot {
            version: FILE_VERSION,
            customers: self
                .customers
                .iter()
                .map(|entry| (entry.key().clone(), read(entry.value())))
                .collect(),
            agents: self
                .agents
                .iter()
                .map(|entry| {
                    let agent = entry.value();
                    let totals = AgentTotals {
                        exit_id: agent.exit_id.lock().expect("usage lock poisoned").clone(),
                        country: agent.country.lock().expect("usage lock poisoned").clone(),
                        totals: read(&agent.counters),
                    };
                    (entry.key().clone(), totals)
                })
                .collect(),
        }
    }

    fn with_customer(&self, name: &str, f: impl FnOnce(&Counters)) {
        if let Some(counters) = self.customers.get(name) {
            return f(&counters);
        }
        f(&self.customers.entry(name.to_owned()).or_default());
    }

    fn with_agent(&self, agent: &Agent, f: impl FnOnce(&Counters)) {
        if let Some(entry) = self.agents.get(&agent.agent_id) {
            return f(&entry.counters);
        }
        let entry = self
            .agents
            .entry(agent.agent_id.clone())
            .or_insert_with(|| AgentCounters {
                exit_id: Mutex::new(agent.exit_id.clone()),
                country: Mutex::new(agent.location.country.clone()),
                counters: Counters::default(),
            });
        f(&entry.counters)
    }
}

impl UsageSink for MemoryUsage {
    fn record_transfer(&self, customer: Option<&str>, agent: &Agent, up: u64, down: u64) {
        if up == 0 && down == 0 {
            return;
        }
        if let Some(customer) = customer {
            self.with_customer(customer, |c| c.transfer(up, down));
        }
        if agent.is_local() {
            self.with_agent(agent, |c| c.transfer(up, down));
        }
    }

    fn record_connection(&self, customer: Option<&str>, agent: &Agent) {
        if let Some(customer) = customer {
            self.with_customer(customer, |c| {
                c.connections.fetch_add(1, Ordering::Relaxed);
            });
        }
        if !agent.is_local() {
            return;
        }
        // An agent's location can change between connections; keep the latest.
        if let Some(entry) = self.agents.get(&agent.agent_id) {
            let mut country = entry.country.lock().expect("usage lock poisoned");
            if *country != agent.location.country {
                country.clone_from(&agent.location.country);
            }
        }
        self.with_agent(agent, |c| {
            c.connections.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn record_error(&self, customer: Option<&str>, agent: Option<&Agent>, code: &str) {
        if let Some(customer) = customer {
            self.with_customer(customer, |c| c.error(code));
        }
        if let Some(agent) = agent.filter(|agent| agent.is_local()) {
            self.with_agent(agent, |c| c.error(code));
        }
    }

    fn customer_bytes(&self, customer: &str) -> u64 {
        self.customers.get(customer).map_or(0, |c| {
            c.bytes_up
                .load(Ordering::Relaxed)
                .saturating_add(c.bytes_down.load(Ordering::Relaxed))
        })
    }

    fn snapshot(&self) -> UsageSnapshot {
        self.collect(Counters::totals)
    }

    fn reset(&self, scope: &ResetScope) -> bool {
        match scope {
            ResetScope::All => {
                let any = !self.customers.is_empty() || !self.agents.is_empty();
                self.customers.clear();
                self.agents.clear();
                any
            }
            ResetScope::Customer(name) => self.customers.remove(name).is_some(),
            ResetScope::Agent(id) => {
                if self.agents.remove(id).is_some() {
                    return true;
                }
                let by_exit = self
                    .agents
                    .iter()
                    .find(|entry| *entry.exit_id.lock().expect("usage lock poisoned") == *id)
                    .map(|entry| entry.key().clone());
                by_exit.is_some_and(|key| self.agents.remove(&key).is_some())
            }
        }
    }
}

/// Counts into two sinks: this gateway's own totals, and (in a fleet) what is
/// still to be flushed to the fleet's. Everything else reads the first.
pub struct Tee {
    /// This gateway's totals: `/stats`, quotas, `usage.json`.
    pub own: MemoryUsage,
    /// Counted since the last flush to the fleet (drained by it).
    pub unflushed: std::sync::Arc<MemoryUsage>,
}

impl UsageSink for Tee {
    fn record_transfer(&self, customer: Option<&str>, agent: &Agent, up: u64, down: u64) {
        self.own.record_transfer(customer, agent, up, down);
        self.unflushed.record_transfer(customer, agent, up, down);
    }

    fn record_connection(&self, customer: Option<&str>, agent: &Agent) {
        self.own.record_connection(customer, agent);
        self.unflushed.record_connection(customer, agent);
    }

    fn record_error(&self, customer: Option<&str>, agent: Option<&Agent>, code: &str) {
        self.own.record_error(customer, agent, code);
        self.unflushed.record_error(customer, agent, code);
    }

    fn customer_bytes(&self, customer: &str) -> u64 {
        self.own.customer_bytes(customer)
    }

    fn snapshot(&self) -> UsageSnapshot {
        self.own.snapshot()
    }

    fn reset(&self, scope: &ResetScope) -> bool {
        self.own.reset(scope)
    }
}

/// Most distinct (account, exit, target, error) keys held between two
/// history flushes; past it new keys lose their target (bytes still count,
/// only the domain attribution is lost).
pub const MAX_HISTORY_KEYS: usize = 100_000;

/// What one history record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HistoryKey {
    account: String,
    exit: Option<String>,
    target: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct HistoryCounts {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
}

/// Usage on its way to the control plane's history
/// ([`crate::control_link`]): per account, exit, target host and error
/// code, drained into `UsageRecord`s once a second. Bytes come from the
/// transfers' once-a-second folds (which know the target), connections and
/// errors through [`WithHistory`]. It also keeps each account's bytes
/// counted on this gateway since start ([`History::local_bytes`]; a
/// customer's include its sub-users'), which period quotas lease against.
#[derive(Debug, Default)]
pub struct History {
    pending: DashMap<HistoryKey, HistoryCounts>,
    local: DashMap<String, AtomicU64>,
}

impl History {
    fn add(&self, key: HistoryKey, up: u64, down: u64, connections: u64) {
        if let Some(counts) = self.pending.get(&key) {
            counts.up.fetch_add(up, Ordering::Relaxed);
            counts.down.fetch_add(down, Ordering::Relaxed);
            counts.connections.fetch_add(connections, Ordering::Relaxed);
            return;
        }
        let key = if self.pending.len() >= MAX_HISTORY_KEYS {
            HistoryKey {
                target: None,
                ..key
            }
        } else {
            key
        };
        let counts = self.pending.entry(key).or_default();
        counts.up.fetch_add(up, Ordering::Relaxed);
        counts.down.fetch_add(down, Ordering::Relaxed);
        counts.connections.fetch_add(connections, Ordering::Relaxed);
    }

    fn count_local(&self, account: &str, bytes: u64) {
        let add = |name: &str| {
            if let Some(total) = self.local.get(name) {
                total.fetch_add(bytes, Ordering::Relaxed);
                return;
            }
            self.local
                .entry(name.to_owned())
                .or_default()
                .fetch_add(bytes, Ordering::Relaxed);
        };
        add(account);
        // `sub.customer`: the customer's quotas count its sub-users' bytes.
        if let Some((_, customer)) = account.split_once('.') {
            add(customer);
        }
    }

    /// Bytes `account` moved through a transfer to `target` (`host:port`
    /// as the client named it) through `exit`.
    pub fn transfer(&self, account: &str, exit: &Agent, target: &str, up: u64, down: u64) {
        if up == 0 && down == 0 {
            return;
        }
        self.count_local(account, up.saturating_add(down));
        self.add(
            HistoryKey {
                account: account.to_owned(),
                exit: Some(exit.exit_id.clone()),
                target: Some(target_host(target).to_owned()),
                error: None,
            },
            up,
            down,
            0,
        );
    }

    /// Bytes up + down `account` (and, for a customer, its sub-users) moved
    /// on this gateway since it started.
    pub fn local_bytes(&self, account: &str) -> u64 {
        self.local
            .get(account)
            .map_or(0, |total| total.load(Ordering::Relaxed))
    }

    /// Accounts with usage waiting: whose quotas the next tick recounts.
    pub fn active_accounts(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pending
            .iter()
            .map(|entry| entry.key().account.clone())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Everything counted since the last drain as records at `at`, leaving
    /// zero behind; a count landing meanwhile goes into this drain or the next.
    pub fn drain(&self, at: i64) -> Vec<exitpool_control::store::UsageRecord> {
        let mut records = Vec::new();
        let keys: Vec<HistoryKey> = self.pending.iter().map(|e| e.key().clone()).collect();
        for key in keys {
            let Some(counts) = self.pending.get(&key) else {
                continue;
            };
            let (up, down, connections) = (
                counts.up.swap(0, Ordering::Relaxed),
                counts.down.swap(0, Ordering::Relaxed),
                counts.connections.swap(0, Ordering::Relaxed),
            );
            drop(counts);
            self.pending.remove_if(&key, |_, c| {
                c.up.load(Ordering::Relaxed) == 0
                    && c.down.load(Ordering::Relaxed) == 0
                    && c.connections.load(Ordering::Relaxed) == 0
            });
            if up == 0 && down == 0 && connections == 0 {
                continue;
            }
            records.push(exitpool_control::store::UsageRecord {
                at,
                account: key.account,
                exit: key.exit,
                target: key.target,
                bytes_up: up,
                bytes_down: down,
                connections,
                error: key.error,
            });
        }
        records
    }
}

/// The host of `host:port` (`[v6]:port` too).
fn target_host(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => target,
    }
}

/// A [`UsageSink`] that also counts connections and errors into a
/// [`History`] (bytes reach it from the transfers' folds, with the target).
pub struct WithHistory {
    /// The gateway's own sink.
    pub inner: Box<dyn UsageSink>,
    /// The control plane's.
    pub history: std::sync::Arc<History>,
}

impl UsageSink for WithHistory {
    fn record_transfer(&self, customer: Option<&str>, agent: &Agent, up: u64, down: u64) {
        self.inner.record_transfer(customer, agent, up, down);
    }

    fn record_connection(&self, customer: Option<&str>, agent: &Agent) {
        self.inner.record_connection(customer, agent);
        if let Some(customer) = customer {
            self.history.add(
                HistoryKey {
                    account: customer.to_owned(),
                    exit: Some(agent.exit_id.clone()),
                    target: None,
                    error: None,
                },
                0,
                0,
                1,
            );
        }
    }

    fn record_error(&self, customer: Option<&str>, agent: Option<&Agent>, code: &str) {
        self.inner.record_error(customer, agent, code);
        if let Some(customer) = customer {
            self.history.add(
                HistoryKey {
                    account: customer.to_owned(),
                    exit: agent.map(|agent| agent.exit_id.clone()),
                    target: None,
                    error: Some(code.to_owned()),
                },
                0,
                0,
                1,
            );
        }
    }

    fn customer_bytes(&self, customer: &str) -> u64 {
        self.inner.customer_bytes(customer)
    }

    fn snapshot(&self) -> UsageSnapshot {
        self.inner.snapshot()
    }

    fn reset(&self, scope: &ResetScope) -> bool {
        self.inner.reset(scope)
    }
}

/// Where usage lives in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Loads a snapshot; a missing file is an empty one.
pub fn load(path: &Path) -> std::io::Result<UsageSnapshot> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a usage file ({e}); move it aside to start from zero"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsageSnapshot::default()),
        Err(e) => Err(e),
    }
}

/// Writes a snapshot atomically (temp file + rename).
pub fn save(path: &Path, snapshot: &UsageSnapshot) -> std::io::Result<()> {
    /// The periodic writer and the one at shutdown share a temp file name.
    static WRITING: Mutex<()> = Mutex::new(());
    let bytes = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    crate::state::write_private(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_hosts_lose_their_port() {
        assert_eq!(target_host("example.com:443"), "example.com");
        assert_eq!(target_host("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(target_host("example.com"), "example.com");
        assert_eq!(target_host("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn snapshots_round_trip_through_the_file_format() {
        let usage = MemoryUsage::default();
        usage.record_error(Some("alice"), None, "no_exit");
        usage.record_error(Some("alice"), None, "no_exit");
        usage.with_customer("alice", |c| c.transfer(10, 20));
        let snapshot = usage.snapshot();
        assert_eq!(snapshot.customers["alice"].errors_by_code["no_exit"], 2);
        assert_eq!(usage.customer_bytes("alice"), 30);
        let text = serde_json::to_string(&snapshot).unwrap();
        let back: UsageSnapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(MemoryUsage::from_snapshot(&back).snapshot(), snapshot);
        assert!(usage.reset(&ResetScope::Customer("alice".into())));
        assert_eq!(usage.customer_bytes("alice"), 0);
        assert!(!usage.reset(&ResetScope::Customer("alice".into())));
    }
}
