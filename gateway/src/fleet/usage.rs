//! Usage and limits over the fleet.
//!
//! Relays count locally ([`crate::usage::Tee`]); once a heartbeat, what was
//! counted since the last flush is drained and sent to Redis as increments, in
//! one script that also records the flush's sequence number, so a flush lands
//! exactly once even when its answer is lost and it is sent again. Until it has
//! landed it is journalled in the state directory (`fleet-usage.json`): Redis
//! out of reach for any time, or a restart meanwhile, loses no byte; the journal
//! is flushed when Redis is back.
//!
//! The same heartbeat tells the fleet what this gateway's customers use now
//! (connections open, requests admitted) and reads what the others' use, for
//! [`crate::limits::Elsewhere`], and reads the fleet's bytes per customer for
//! quotas. So quotas, `max_connections` and `requests_per_second` hold across
//! the fleet, each overshooting by at most what the fleet does in one heartbeat.

use super::{keys, Fleet, FleetError};
use crate::limits::Elsewhere;
use crate::shared::{Accounting, Shared};
use crate::usage::{Totals, UsageSink, UsageSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

/// The journal's file in the state directory.
pub const FILE_NAME: &str = "fleet-usage.json";

/// Applies one flush unless a flush with this sequence number (or a later
/// one) of this gateway already landed. ARGV: gateway id, sequence number,
/// JSON list of `[op, key, field, value]` (`i`: HINCRBY, `s`: HSET).
const APPLY: &str = r"
local flushed = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if flushed >= tonumber(ARGV[2]) then return 0 end
for _, op in ipairs(cjson.decode(ARGV[3])) do
  if op[1] == 'i' then
    redis.call('HINCRBY', op[2], op[3], op[4])
  else
    redis.call('HSET', op[2], op[3], op[4])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

static APPLY_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(APPLY));

/// Usage counted here and not yet known to have reached Redis.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Journal {
    /// Sequence number of the last flush known to have landed.
    pub landed: u64,
    /// A flush sent (perhaps more than once) and not known to have landed:
    /// its sequence number and its increments, resent unchanged.
    pub in_flight: Option<(u64, UsageSnapshot)>,
    /// Counted since, waiting for the flush in flight.
    pub next: UsageSnapshot,
}

impl Journal {
    /// Whether nothing is waiting to be flushed.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_none() && is_empty(&self.next)
    }

    /// Bytes up + down of `customer` waiting to be flushed.
    fn customer_bytes(&self, customer: &str) -> u64 {
        let of =
            |snapshot: &UsageSnapshot| snapshot.customers.get(customer).map_or(0, Totals::bytes);
        of(&self.next) + self.in_flight.as_ref().map_or(0, |(_, delta)| of(delta))
    }
}

fn is_empty(snapshot: &UsageSnapshot) -> bool {
    snapshot.customers.is_empty() && snapshot.agents.is_empty()
}

fn add(into: &mut Totals, from: &Totals) {
    into.bytes_up += from.bytes_up;
    into.bytes_down += from.bytes_down;
    into.connections += from.connections;
    into.errors += from.errors;
    for (code, count) in &from.errors_by_code {
        *into.errors_by_code.entry(code.clone()).or_default() += count;
    }
}

/// Adds `from` to `into`.
pub fn merge(into: &mut UsageSnapshot, from: UsageSnapshot) {
    for (name, totals) in from.customers {
        add(into.customers.entry(name).or_default(), &totals);
    }
    for (id, agent) in from.agents {
        let entry = into.agents.entry(id).or_default();
        entry.exit_id = agent.exit_id;
        entry.country = agent.country;
        add(&mut entry.totals, &agent.totals);
    }
}

/// The increments of one flush, for [`APPLY`].
fn operations(delta: &UsageSnapshot) -> serde_json::Value {
    let mut ops = Vec::new();
    let mut counts = |key: &str, totals: &Totals| {
        for (field, value) in [
            ("bytes_up", totals.bytes_up),
            ("bytes_down", totals.bytes_down),
            ("connections", totals.connections),
            ("errors", totals.errors),
        ] {
            if value > 0 {
                ops.push(serde_json::json!(["i", key, field, value]));
            }
        }
        for (code, count) in &totals.errors_by_code {
            ops.push(serde_json::json!([
                "i",
                key,
                format!("error:{code}"),
                count
            ]));
        }
    };
    for (name, totals) in &delta.customers {
        counts(&keys::customer_usage(name), totals);
    }
    for (id, agent) in &delta.agents {
        counts(&keys::agent_usage(id), &agent.totals);
    }
    for (name, totals) in &delta.customers {
        if totals.bytes() > 0 {
            ops.push(serde_json::json!([
                "i",
                keys::CUSTOMER_BYTES,
                name,
                totals.bytes()
            ]));
        }
    }
    for (id, agent) in &delta.agents {
        let key = keys::agent_usage(id);
        ops.push(serde_json::json!(["s", key, "exit_id", agent.exit_id]));
        if let Some(country) = &agent.country {
            ops.push(serde_json::json!(["s", key, "country", country]));
        }
    }
    serde_json::Value::Array(ops)
}

/// Where the journal lives in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Loads the journal; a missing file is an empty one. An unreadable one is an
/// error: starting without it could lose usage.
pub fn load(path: &Path) -> std::io::Result<Journal> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a fleet usage journal ({e}); it holds usage not yet in Redis, so it is not ignored: repair it or move it aside"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(e) => Err(e),
    }
}

async fn save(path: PathBuf, journal: Journal) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let bytes = serde_json::to_vec(&journal).map_err(std::io::Error::other)?;
        crate::state::write_private(&path, &bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Flushes usage and trades live load with the fleet every heartbeat, until
/// the gateway stops (with a last flush).
pub async fn run(shared: Arc<Shared>, fleet: Arc<Fleet>, mut journal: Journal) {
    let path = path_in(&shared.config.state_dir);
    let mut heartbeat = tokio::time::interval(fleet.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = heartbeat.tick() => false,
            () = shared.lifecycle.shutdown.cancelled() => true,
        };
        flush(&fleet, &mut journal, &path).await;
        if stopping {
            if !journal.is_empty() {
                tracing::warn!(
                    "usage not yet in Redis stays journalled in {}",
                    path.display()
                );
            }
            break;
        }
        if let Err(error) = trade_load(&shared.accounting, &fleet, &journal).await {
            tracing::debug!(%error, "live load not traded this heartbeat");
        }
    }
}

/// Drains what was counted, journals it, and sends the flush in flight.
async fn flush(fleet: &Fleet, journal: &mut Journal, path: &Path) {
    let drained = fleet.unflushed.drain();
    let mut changed = !is_empty(&drained);
    merge(&mut journal.next, drained);
    if journal.in_flight.is_none() && !is_empty(&journal.next) {
        // Above any number an earlier run used, even one whose journal is lost.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        let seq = (journal.landed + 1).max(now);
        journal.in_flight = Some((seq, std::mem::take(&mut journal.next)));
        changed = true;
    }
    if changed {
        if let Err(error) = save(path.to_owned(), journal.clone()).await {
            tracing::error!(%error, path = %path.display(), "fleet usage journal not written");
        }
    }
    let Some((seq, delta)) = &journal.in_flight else {
        return;
    };
    if send(fleet, *seq, delta).await.is_ok() {
        journal.landed = *seq;
        journal.in_flight = None;
        if let Err(error) = save(path.to_owned(), journal.clone()).await {
            tracing::error!(%error, path = %path.display(), "fleet usage journal not written");
        }
    }
}

async fn send(fleet: &Fleet, seq: u64, delta: &UsageSnapshot) -> Result<(), FleetError> {
    let mut invocation = APPLY_SCRIPT.key(keys::FLUSHED);
    invocation
        .arg(&*fleet.id)
        .arg(seq)
        .arg(operations(delta).to_string());
    let mut connection = fleet.redis.clone();
    fleet
        .finish(
            "usage flush",
            fleet.config.redis_timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await
        .map(|_| ())
}

impl Fleet {
    /// Sets the fleet's usage totals in Redis back to zero for `scope`
    /// (`agent_id`: the device id an agent scope names).
    pub async fn reset_usage(
        &self,
        scope: &crate::usage::ResetScope,
        agent_id: Option<&str>,
    ) -> Result<(), FleetError> {
        use crate::usage::ResetScope;
        let mut pipe = redis::pipe();
        match scope {
            ResetScope::All => {
                let mut cursor: u64 = 0;
                loop {
                    let (next, found): (u64, Vec<String>) = self
                        .query(
                            "find usage keys",
                            redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg("exitpool:usage:*")
                                .arg("COUNT")
                                .arg(1000),
                        )
                        .await?;
                    for key in found.iter().filter(|key| key.as_str() != keys::FLUSHED) {
                        pipe.del(key).ignore();
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            ResetScope::Customer(name) => {
                pipe.del(keys::customer_usage(name)).ignore();
                pipe.hdel(keys::CUSTOMER_BYTES, name).ignore();
            }
            ResetScope::Agent(_) => {
                if let Some(agent_id) = agent_id {
                    pipe.del(keys::agent_usage(agent_id)).ignore();
                }
            }
        }
        self.query_pipe::<()>("reset usage", &pipe).await
    }
}

/// Publishes this gateway's live load per customer and reads the others' and
/// the fleet's bytes per customer, in one round trip.
async fn trade_load(
    accounting: &Accounting,
    fleet: &Fleet,
    journal: &Journal,
) -> Result<(), FleetError> {
    let busy = accounting.limits.drain_admitted();
    let period = fleet.config.heartbeat.as_secs_f64().max(0.001);
    let own = keys::live(&fleet.id);
    let others: Vec<String> = fleet
        .gateways()
        .into_iter()
        .map(|record| record.id)
        .filter(|id| *id != *fleet.id)
        .collect();
    let mut pipe = redis::pipe();
    pipe.del(&own).ignore();
    if !busy.is_empty() {
        let fields: Vec<(String, String)> = busy
            .iter()
            .map(|(name, live, admitted)| {
                let rate = (*admitted as f64 / period).ceil() as u64;
                (name.clone(), format!("{live} {rate}"))
            })
            .collect();
        pipe.hset_multiple(&own, &fields).ignore();
        pipe.pexpire(&own, fleet.config.gateway_timeout.as_millis() as i64)
            .ignore();
    }
    pipe.hgetall(keys::CUSTOMER_BYTES);
    for id in &others {
        pipe.hgetall(keys::live(id));
    }
    let mut replies: Vec<HashMap<String, String>> =
        fleet.query_pipe("trade live load", &pipe).await?;
    let fleet_bytes = if replies.is_empty() {
        HashMap::new()
    } else {
        replies.remove(0)
    };
    let mut elsewhere: HashMap<String, Elsewhere> = HashMap::new();
    for reply in replies {
        for (name, value) in reply {
            let mut parts = value
                .split(' ')
                .map(|part| part.parse::<u32>().unwrap_or(0));
            let entry = elsewhere.entry(name).or_default();
            entry.connections = entry.connections.saturating_add(parts.next().unwrap_or(0));
            entry.requests_per_second = entry
                .requests_per_second
                .saturating_add(parts.next().unwrap_or(0));
        }
    }
    fleet
        .elsewhere
        .retain(|name, _| elsewhere.contains_key(name));
    for (name, used) in elsewhere {
        fleet.elsewhere.insert(name, used);
    }
    fleet.quota_bytes.clear();
    for (name, total) in fleet_bytes {
        let Ok(total) = total.parse::<u64>() else {
            continue;
        };
        // This gateway's bytes already in `total`: all it counted, less what
        // has not landed yet.
        let pending = journal.customer_bytes(&name) + fleet.unflushed.customer_bytes(&name);
        let landed_here = accounting
            .usage
            .customer_bytes(&name)
            .saturating_sub(pending);
        fleet.quota_bytes.insert(name, (total, landed_here));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(up: u64, errors: &[(&str, u64)]) -> Totals {
        Totals {
            bytes_up: up,
            bytes_down: up * 2,
            connections: 1,
            errors: errors.iter().map(|(_, n)| n).sum(),
            errors_by_code: errors.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn journalled_counts_add_up_and_become_increments() {
        let mut journal = Journal::default();
        let mut first = UsageSnapshot::default();
        first
            .customers
            .insert("alice".into(), totals(10, &[("no_exit", 1)]));
        let mut second = UsageSnapshot::default();
        second
            .customers
            .insert("alice".into(), totals(5, &[("no_exit", 2)]));
        merge(&mut journal.next, first);
        merge(&mut journal.next, second);
        let alice = &journal.next.customers["alice"];
        assert_eq!(
            (alice.bytes_up, alice.bytes_down, alice.connections),
            (15, 30, 2)
        );
        assert_eq!(alice.errors_by_code["no_exit"], 3);
        assert_eq!(journal.customer_bytes("alice"), 45);
        let ops = operations(&journal.next).to_string();
        assert!(
            ops.contains(r#"["i","exitpool:usage:customer:alice","bytes_up",15]"#),
            "{ops}"
        );
        assert!(
            ops.contains(r#"["i","exitpool:usage:customer-bytes","alice",45]"#),
            "{ops}"
        );
        assert!(ops.contains(r#""error:no_exit",3]"#), "{ops}");
        // The journal's file format round-trips.
        let text = serde_json::to_string(&journal).unwrap();
        assert_eq!(serde_json::from_str::<Journal>(&text).unwrap(), journal);
    }
}
