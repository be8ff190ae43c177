//! What the dashboard's own read endpoints answer (part of the admin port's
//! dashboard, [`super`]): the overview, summed on the server so the page
//! stays small with 10,000 agents, and the exits table, filtered and paged
//! here for the same reason.

use super::samples::{Sample, Samples};
use crate::admin::view::AdminView;
use crate::directory::Agent;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Most exits one page of the table holds.
pub const MAX_EXITS_PAGE: usize = 500;

/// The health band of an exit, as the `exits_by_health` metric counts them.
fn band(agent: &Agent, now: Instant, shared: &AdminView) -> (&'static str, f64) {
    let view = agent.health.view(now, &shared.config.health);
    (view.band(), view.success_rate)
}

/// `GET /dashboard/api/overview`.
pub fn overview(shared: &AdminView, samples: &Samples) -> Value {
    let agents = shared.routing.exits.directory().agents();
    let now = Instant::now();
    let mut bands = BTreeMap::from([
        ("healthy", 0u64),
        ("degraded", 0),
        ("failing", 0),
        ("cooling", 0),
    ]);
    for agent in &agents {
        *bands.entry(band(agent, now, shared).0).or_default() += 1;
    }
    let mut countries: Vec<(String, usize)> = shared
        .routing
        .exits
        .directory()
        .countries()
        .into_iter()
        .collect();
    countries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let live_streams: u64 = agents
        .iter()
        .map(|agent| u64::from(agent.active_streams.load(Ordering::Relaxed)))
        .sum();
    let usage = shared.accounting.usage.snapshot();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for totals in usage.customers.values() {
        for (code, count) in &totals.errors_by_code {
            *errors.entry(code.clone()).or_default() += count;
        }
    }
    let mut errors: Vec<(String, u64)> = errors.into_iter().collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let (quic, tcp) = shared.routing.exits.tunnels().count_by_transport();
    json!({
        "now": unix_now(),
        "agents": agents.len(),
        "accepting": agents.iter().filter(|agent| agent.is_accepting()).count(),
        "countries": countries,
        "transports": {"quic": quic, "tcp": tcp},
        "health": bands,
        "live_streams": live_streams,
        "live_connections": shared.accounting.limits.live_total(),
        "sessions": shared.routing.sessions.len(),
        "uptime_secs": shared.lifecycle.started.elapsed().as_secs(),
        "bytes_up": shared.accounting.metrics.bytes_up.get(),
        "bytes_down": shared.accounting.metrics.bytes_down.get(),
        "connections": shared.accounting.metrics.connections.get(),
        "errors": errors,
        "rates": samples.rates(counters(shared, live_streams)),
        "ready": shared.fleet.as_ref().and_then(|fleet| fleet.not_ready()),
        "database": shared.accounting.accounts.control().map(|link| json!({
            "backend": match link.store().backend() {
                exitpool_control::Backend::Sqlite => "SQLite",
                exitpool_control::Backend::Postgres => "PostgreSQL",
            },
            "accounts_from_store": link.serves_accounts(),
            "stalled": link.stalled(),
        })),
        "fleet": shared.fleet.as_deref().map(fleet),
    })
}

/// The traffic counters as they are now.
pub fn sample_now(shared: &AdminView) -> Sample {
    let live_streams = shared
        .routing
        .exits
        .directory()
        .agents()
        .iter()
        .map(|agent| u64::from(agent.active_streams.load(Ordering::Relaxed)))
        .sum();
    counters(shared, live_streams)
}

/// The counters now, with `live_streams` already summed.
fn counters(shared: &AdminView, live_streams: u64) -> Sample {
    Sample {
        at: unix_now(),
        bytes_up: shared.accounting.metrics.bytes_up.get(),
        bytes_down: shared.accounting.metrics.bytes_down.get(),
        connections: shared.accounting.metrics.connections.get(),
        live_streams,
    }
}

/// The fleet as the overview shows it: every gateway as of its last
/// heartbeat, and whether Redis is in reach.
fn fleet(fleet: &crate::fleet::Fleet) -> Value {
    let gateways: Vec<Value> = fleet
        .gateways()
        .into_iter()
        .map(|record| {
            json!({
                "id": record.id,
                "this": record.id == *fleet.id,
                "agents": record.agents,
                "live_streams": record.streams,
                "live_connections": record.connections,
                "bytes_up": record.bytes_up,
                "bytes_down": record.bytes_down,
                "peer_link": fleet.peers.link_transport(&record.id).map(|t| t.as_str()),
            })
        })
        .collect();
    let redis = match fleet.degraded() {
        None => json!({"reachable": true}),
        Some((reason, since)) => {
            json!({"reachable": false, "reason": reason, "since_secs": since.as_secs()})
        }
    };
    json!({"gateway_id": &*fleet.id, "redis": redis, "gateways": gateways})
}

/// The exits table's query: `?country=&transport=&health=&q=&offset=&limit=`.
#[derive(Debug, Default)]
pub struct ExitQuery {
    country: Option<String>,
    transport: Option<String>,
    health: Option<String>,
    text: Option<String>,
    offset: usize,
    limit: usize,
}

impl ExitQuery {
    /// Parses a query string; a bad number or an unknown key is an error that names it.
    pub fn parse(query: &str) -> Result<ExitQuery, String> {
        let mut parsed = ExitQuery {
            limit: 100,
            ..ExitQuery::default()
        };
        for (key, value) in form_pairs(query) {
            let value = value.trim().to_owned();
            let some = (!value.is_empty()).then(|| value.clone());
            match key.as_str() {
                "country" => parsed.country = some.map(|c| c.to_ascii_uppercase()),
                "transport" => parsed.transport = some.map(|t| t.to_ascii_lowercase()),
                "health" => parsed.health = some.map(|h| h.to_ascii_lowercase()),
                "q" => parsed.text = some.map(|t| t.to_lowercase()),
                "offset" => {
                    parsed.offset = value
                        .parse()
                        .map_err(|_| format!("offset must be a whole number, not {value:?}"))?
                }
                "limit" => {
                    parsed.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=MAX_EXITS_PAGE).contains(limit))
                        .ok_or_else(|| {
                            format!("limit must be 1 to {MAX_EXITS_PAGE}, not {value:?}")
                        })?
                }
                other => {
                    return Err(format!(
                    "unknown parameter {other:?}; use country, transport, health, q, offset, limit"
                ))
                }
            }
        }
        Ok(parsed)
    }
}

/// `GET /dashboard/api/exits`: one page of the exits that match, busiest first.
pub fn exits(shared: &AdminView, query: &ExitQuery) -> Value {
    let now = Instant::now();
    let mut rows: Vec<(Arc<Agent>, &'static str, f64, Option<&'static str>)> = shared
        .routing
        .exits
        .directory()
        .agents()
        .into_iter()
        .filter_map(|agent| {
            let (band, rate) = band(&agent, now, shared);
            let transport = shared
                .routing
                .exits
                .tunnels()
                .transport(agent.key)
                .map(|t| t.as_str());
            let keep = query
                .country
                .as_ref()
                .is_none_or(|c| agent.location.country.as_deref() == Some(c.as_str()))
                && query
                    .transport
                    .as_ref()
                    .is_none_or(|t| transport == Some(t.as_str()))
                && query.health.as_ref().is_none_or(|h| h == band)
                && query.text.as_ref().is_none_or(|text| {
                    let location = &agent.location;
                    agent.exit_id.to_lowercase().contains(text)
                        || location
                            .city
                            .as_ref()
                            .is_some_and(|c| c.to_lowercase().contains(text))
                        || location
                            .region
                            .as_ref()
                            .is_some_and(|r| r.to_lowercase().contains(text))
                        || location.asn.is_some_and(|asn| {
                            asn.to_string().contains(text.trim_start_matches("as"))
                        })
                });
            keep.then_some((agent, band, rate, transport))
        })
        .collect();
    let total = rows.len();
    rows.sort_by(|a, b| {
        b.0.active_streams
            .load(Ordering::Relaxed)
            .cmp(&a.0.active_streams.load(Ordering::Relaxed))
            .then_with(|| a.0.exit_id.cmp(&b.0.exit_id))
    });
    let items: Vec<Value> = rows
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|(agent, band, rate, transport)| {
            json!({
                "exit_id": agent.exit_id,
                "country": agent.location.country,
                "region": agent.location.region,
                "city": agent.location.city,
                "asn": agent.location.asn,
                "transport": transport,
                "gateway": agent.home.as_deref(),
                "software": agent.software,
                "health": band,
                "success_rate": (rate * 1000.0).round() / 1000.0,
                "accepting": agent.is_accepting(),
                "live_streams": agent.active_streams.load(Ordering::Relaxed),
                "max_streams": agent.max_streams.load(Ordering::Relaxed),
                "load": agent.load(),
                "streams_total": agent.streams_total.load(Ordering::Relaxed),
                "bytes_up": agent.bytes_up.load(Ordering::Relaxed),
                "bytes_down": agent.bytes_down.load(Ordering::Relaxed),
                "connected_at": agent.connected_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
            })
        })
        .collect();
    json!({"total": total, "offset": query.offset, "items": items})
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `key=value` pairs of a query string, percent-decoded.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}
