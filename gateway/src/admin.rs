//! The operator's admin listener:
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `ok`, or in a fleet out of touch with Redis, `degraded: …` and why |
//! | `GET /readyz` | for balancers: `200 ready`, or `503` and why while a fleet gateway cannot do its fleet work |
//! | `GET /stats` | JSON: pool, live streams, sessions, per-customer and per-agent usage |
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//! | `POST /usage/reset` | zero every usage total; `?customer=NAME` or `?agent=ID` for one |
//! | `POST /reload` | re-read the accounts files, like SIGHUP (`409` and the reason if invalid) |
//!
//! `/api/v1/...` is the control plane's API ([`api`], docs/control.md), with
//! a store (`--database`, SQLite in the state directory by default) and
//! `--admin-token`.
//!
//! `/dashboard/...` is the operators' web dashboard ([`dashboard`],
//! docs/dashboard.md): its own cookie sessions and same-origin rules, its
//! writes forwarded to `/api/v1` with the session's token.
//!
//! With `--admin-token` set, every request needs `Authorization: Bearer TOKEN`
//! (`401` otherwise); the gateway refuses to start with the admin port beyond
//! loopback and no token.
//!
//! A web page in the operator's browser cannot drive the port: a request whose
//! `Host` is not an IP literal, `localhost` or a configured `--admin-host` name
//! (DNS rebinding) is `421`; one that carries `Origin` or
//! `Sec-Fetch-Site: cross-site` is `403`; a `POST` without the admin token must
//! carry a content type no HTML form can send (`application/json`), else `415`.
//!
//! Strangers cannot keep the operator out by holding connections open: each
//! source network holds at most a share of the places, an idle connection must
//! send its request head within [`HEAD_DEADLINE`], and a full port gives a
//! newcomer the place of the oldest connection that has not yet made an
//! authorized request ([`slots`]).

pub mod dashboard;
pub(crate) mod exits;
pub mod live;
mod slots;
mod view;

use bytes::Bytes;
use exitpool_protocol::local_http::{from_a_web_page, is_own_host};
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tracing::debug;

pub use slots::{MAX_ADMIN_CONNECTIONS, PER_SOURCE as MAX_ADMIN_CONNECTIONS_PER_SOURCE};
pub use view::AdminView;

/// How long a connection may take to send a request head: an operator's
/// client sends it at once.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// Longest an admin connection lives.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<AdminView>) {
    let slots = Arc::new(slots::Slots::default());
    // The web dashboard (/dashboard/); the admin port speaks plain HTTP.
    let dashboard = dashboard::Dashboard::start(&shared, false);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.lifecycle.shutdown.cancelled() => break,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let Some(slot) = slots.take(peer.ip()) else {
            continue;
        };
        let shared = shared.clone();
        let dashboard = dashboard.clone();
        shared.lifecycle.tasks.clone().spawn(async move {
            let proven = slot.proven.clone();
            let service = hyper::service::service_fn(|request| {
                let shared = shared.clone();
                let proven = proven.clone();
                let dashboard = dashboard.clone();
                async move {
                    let request = match dashboard.front(request).await {
                        dashboard::Front::Answer(answer) => return Ok(answer),
                        dashboard::Front::Pass(request) => request,
                    };
                    // Live connections and exits answer from this gateway's memory.
                    if live::owns(request.uri().path()) {
                        return Ok::<_, Infallible>(serve_live(request, &shared, &proven).await);
                    }
                    if request.uri().path().starts_with(API_PREFIX) {
                        return Ok::<_, Infallible>(api(request, &shared, &proven).await);
                    }
                    Ok::<_, Infallible>(route(request, &shared, &proven))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_DEADLINE)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {
                    if let Err(error) = served {
                        debug!(%error, "admin connection timed out");
                    }
                }
                () = slot.evicted.cancelled() => debug!("admin connection gave its place to a newer one"),
            }
            drop(slot);
        });
    }
}

/// Whether `authorization` (the header's value, if any) carries the admin token,
/// when one is configured. Compared in constant time.
pub fn authorized(token: Option<&exitpool_protocol::Secret>, authorization: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token.filter(|token| !token.expose().is_empty()) else {
        return true;
    };
    let Some((scheme, given)) = authorization.and_then(|value| value.trim().split_once(' ')) else {
        return false;
    };
    let (expected, given) = (token.expose().as_bytes(), given.trim().as_bytes());
    scheme.eq_ignore_ascii_case("bearer")
        && expected.len() == given.len()
        && bool::from(expected.ct_eq(given))
}

/// A refusal for requests a browser could have been made to send on a web
/// page's behalf (see the module docs), or `None` for an operator's request.
fn refuse_browsers<B>(request: &Request<B>, shared: &AdminView) -> Option<Response<Full<Bytes>>> {
    let headers = request.headers();
    let host = headers.get(HOST).and_then(|value| value.to_str().ok());
    if !host.is_some_and(|host| is_own_host(host, &shared.settings().admin_hosts)) {
        return Some(text(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain",
            "the Host header must be an IP address, localhost or an --admin-host name\n".into(),
        ));
    }
    let site = headers.get("sec-fetch-site").map(|value| value.as_bytes());
    if from_a_web_page(headers.contains_key(ORIGIN), site) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "requests from web pages are refused on the admin port\n".into(),
        ));
    }
    // With a token configured, the request already proved it holds it.
    let has_token = shared
        .config
        .admin_token
        .as_ref()
        .is_some_and(|token| !token.expose().is_empty());
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("application/json"))
        });
    if request.method() == Method::POST && !has_token && !json {
        return Some(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "text/plain",
            "POST needs Content-Type: application/json (or the admin token)\n".into(),
        ));
    }
    None
}

fn route(
    request: Request<hyper::body::Incoming>,
    shared: &AdminView,
    proven: &AtomicBool,
) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if authorized(shared.config.admin_token.as_ref(), authorization) {
        proven.store(true, Ordering::Relaxed);
    } else {
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "admin token required: Authorization: Bearer <token>\n".into(),
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"exitpool-admin\""),
        );
        return response;
    }
    if let Some(refusal) = refuse_browsers(&request, shared) {
        return refusal;
    }
    let query = request.uri().query().unwrap_or("");
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", health(shared)),
        (&Method::GET, "/readyz") => match shared.fleet.as_ref().and_then(|f| f.not_ready()) {
            None => text(
                StatusCode::OK,
                "text/plain",
                crate::control_link::ready_text(
                    shared.accounting.accounts.control().map(|link| &**link),
                ),
            ),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        (&Method::GET, "/stats") => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&stats(shared)).unwrap_or_default(),
        ),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::control_link::add_metrics(
                shared.accounting.accounts.control().map(|link| &**link),
                shared.accounting.metrics.render(
                    shared.routing.exits.directory(),
                    shared.routing.sessions.len(),
                    &shared.config.health,
                    shared.routing.exits.tunnels().count_by_transport(),
                ),
            ),
        ),
        (&Method::POST, "/usage/reset") => reset_usage(query, shared),
        (&Method::POST, "/reload") => match shared.reload() {
            Ok(()) => text(StatusCode::OK, "text/plain", "reloaded\n".into()),
            Err(error) => text(
                StatusCode::CONFLICT,
                "text/plain",
                format!("kept the running accounts: {error}\n"),
            ),
        },
        (&Method::GET, _) => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /stats, /metrics, /healthz or /readyz\n".into(),
        ),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /stats, /metrics, /healthz, /readyz; POST /usage/reset, /reload\n".into(),
        ),
    }
}

/// Where the control plane's API lives on the admin port.
pub const API_PREFIX: &str = "/api/v1";

/// Longest answer the API may give through the admin port.
const MAX_API_ANSWER: usize = 64 << 20;

/// `/api/v1/...`: the control plane's axum router ([`exitpool_control::router`],
/// built by [`crate::control_link`]), called as a tower service behind the
/// same browser defences as every admin path. The router checks the bearer
/// token itself: the admin token reads and writes, `--admin-readonly-token`
/// only reads. Other routers for `/api/v1` merge into the one this serves.
async fn api(
    request: Request<hyper::body::Incoming>,
    shared: &AdminView,
    proven: &AtomicBool,
) -> Response<Full<Bytes>> {
    if let Some(refusal) = refuse_browsers(&request, shared) {
        return refusal;
    }
    let Some(router) = shared
        .accounting
        .accounts
        .control()
        .and_then(|link| link.router().cloned())
    else {
        let why = match shared.accounting.accounts.control() {
            None => "this gateway has no control-plane store (--database); with --users FILE or --redis it starts without one",
            Some(_) => "the API needs --admin-token (EXITPOOL_ADMIN_TOKEN)",
        };
        return text(
            StatusCode::NOT_FOUND,
            "application/json",
            serde_json::json!({"error": "no_api", "message": why}).to_string(),
        );
    };
    let request = request.map(axum::body::Body::new);
    let response = match tower::ServiceExt::oneshot(router, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if response.status() != StatusCode::UNAUTHORIZED {
        proven.store(true, Ordering::Relaxed);
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_API_ANSWER).await {
        Ok(bytes) => Response::from_parts(parts, Full::new(bytes)),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("the answer could not be read: {error}\n"),
        ),
    }
}

/// `POST /usage/reset[?customer=NAME|?agent=ID]`.
fn reset_usage(query: &str, shared: &AdminView) -> Response<Full<Bytes>> {
    use crate::usage::ResetScope;
    let scope = match query.split_once('=') {
        None if query.is_empty() => ResetScope::All,
        Some(("customer", name)) if !name.is_empty() => ResetScope::Customer(name.to_owned()),
        Some(("agent", id)) if !id.is_empty() => ResetScope::Agent(id.to_owned()),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "use /usage/reset, /usage/reset?customer=NAME or /usage/reset?agent=ID\n".into(),
            )
        }
    };
    let found = shared.accounting.usage.reset(&scope);
    tracing::info!(?scope, found, "usage reset by the operator");
    if let Some(fleet) = &shared.fleet {
        // The fleet's totals in Redis too; the other gateways' own figures
        // on their /stats stay as they are.
        let agent_id = match &scope {
            ResetScope::Agent(id) => Some(
                shared
                    .routing
                    .exits
                    .directory()
                    .agents()
                    .into_iter()
                    .find(|agent| agent.exit_id == *id)
                    .map_or_else(|| id.clone(), |agent| agent.agent_id.clone()),
            ),
            _ => None,
        };
        let fleet = fleet.clone();
        let scope = scope.clone();
        shared.lifecycle.tasks.spawn(async move {
            if let Err(error) = fleet.reset_usage(&scope, agent_id.as_deref()).await {
                tracing::warn!(%error, "the fleet's usage totals were not reset");
            }
        });
    }
    if let Err(error) = shared.save_usage() {
        tracing::warn!(%error, "writing usage after a reset failed");
    }
    if found || scope == ResetScope::All {
        text(StatusCode::OK, "text/plain", "reset\n".into())
    } else {
        text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no usage recorded for that name\n".into(),
        )
    }
}

/// `/healthz`: `ok`, or in a fleet whose Redis is out of reach, `degraded`
/// and why (still 200: the gateway serves with its own agents and state, so
/// a balancer must keep sending it customers).
fn health(shared: &AdminView) -> String {
    match shared.fleet.as_ref().and_then(|fleet| fleet.degraded()) {
        None => "ok\n".into(),
        Some((reason, since)) => format!(
            "degraded: the fleet's shared state is out of reach for {} s ({reason}); serving with this gateway's own agents, sessions and usage journal\n",
            since.as_secs()
        ),
    }
}

/// The fleet section of `/stats`: every gateway as of its last heartbeat,
/// their totals, and where this gateway's pool comes from.
fn fleet_stats(
    fleet: &crate::fleet::Fleet,
    agents: &[std::sync::Arc<crate::directory::Agent>],
) -> serde_json::Value {
    let gateways = fleet.gateways();
    let sum = |field: fn(&crate::fleet::GatewayRecord) -> u64| -> u64 {
        gateways.iter().map(field).sum()
    };
    let counters = &fleet.counters;
    serde_json::json!({
        "gateway_id": &*fleet.id,
        "redis": match fleet.degraded() {
            None => serde_json::json!({"reachable": true}),
            Some((reason, since)) => serde_json::json!({
                "reachable": false,
                "reason": reason,
                "since_secs": since.as_secs(),
            }),
        },
        "local_agents": agents.iter().filter(|agent| agent.is_local()).count(),
        "gateways": gateways.iter().map(|record| (record.id.clone(), serde_json::json!({
            "peer": record.peer,
            "peer_link": fleet.peers.link_transport(&record.id).map(|transport| transport.as_str()),
            "agents": record.agents,
            "live_streams": record.streams,
            "live_connections": record.connections,
            "bytes_up": record.bytes_up,
            "bytes_down": record.bytes_down,
        }))).collect::<serde_json::Map<_, _>>(),
        "totals": {
            "gateways": gateways.len(),
            "agents": sum(|record| record.agents as u64),
            "live_streams": sum(|record| record.streams),
            "live_connections": sum(|record| record.connections),
            "bytes_up": sum(|record| record.bytes_up),
            "bytes_down": sum(|record| record.bytes_down),
        },
        "customer_bytes": fleet.quota_snapshot(),
        "redis_round_trips": counters.redis_round_trips.get(),
        "redis_errors": counters.redis_errors.get(),
        "session_round_trips": counters.session_round_trips.get(),
        "peer_streams_out": counters.peer_streams_out.get(),
        "peer_streams_in": counters.peer_streams_in.get(),
    })
}

/// The `/stats` document.
pub fn stats(shared: &AdminView) -> serde_json::Value {
    let agents = shared.routing.exits.directory().agents();
    let live_streams: u64 = agents
        .iter()
        .map(|agent| u64::from(agent.active_streams.load(Ordering::Relaxed)))
        .sum();
    let now = std::time::Instant::now();
    let per_agent: Vec<_> = agents
        .iter()
        .map(|agent| exit_stats(agent, now, shared))
        .collect();
    let (quic_agents, tcp_agents) = shared.routing.exits.tunnels().count_by_transport();
    let usage = shared.accounting.usage.snapshot();
    let bytes_up: u64 = usage.customers.values().map(|t| t.bytes_up).sum();
    let bytes_down: u64 = usage.customers.values().map(|t| t.bytes_down).sum();
    serde_json::json!({
        "agents": agents.len(),
        "countries": shared.routing.exits.directory().countries(),
        "transports": {"quic": quic_agents, "tcp": tcp_agents},
        "live_streams": live_streams,
        "sessions": shared.routing.sessions.len(),
        "uptime_secs": shared.lifecycle.started.elapsed().as_secs(),
        "fleet": shared.fleet.as_ref().map(|fleet| fleet_stats(fleet, &agents)),
        "per_agent": per_agent,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "customers": customer_stats(&usage.customers, shared),
        // By exit id: the device ids stay with the gateway, so /stats cannot
        // help anyone claim an agent's identity or link exits to devices.
        "agent_usage": usage
            .agents
            .into_values()
            .map(|agent| {
                let entry = serde_json::json!({
                    "country": agent.country,
                    "bytes_up": agent.totals.bytes_up,
                    "bytes_down": agent.totals.bytes_down,
                    "connections": agent.totals.connections,
                    "errors": agent.totals.errors,
                    "errors_by_code": agent.totals.errors_by_code,
                });
                (agent.exit_id, entry)
            })
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// One exit's entry in `/stats`' `per_agent`: where it is, its load, its
/// bytes and its health as of `now`.
fn exit_stats(
    agent: &crate::directory::Agent,
    now: std::time::Instant,
    shared: &AdminView,
) -> serde_json::Value {
    let health = agent.health.view(now, &shared.config.health);
    serde_json::json!({
        "exit_id": agent.exit_id,
        "country": agent.location.country,
        "asn": agent.location.asn,
        "city": agent.location.city,
        "region": agent.location.region,
        "observed_addr": agent.home.is_none().then(|| agent.observed.to_string()),
        "gateway": agent.home.as_deref().or(shared.fleet.as_ref().map(|fleet| &*fleet.id)),
        "software": agent.software,
        "transport": shared.routing.exits.tunnels().transport(agent.key).map(|t| t.as_str()),
        "accepting": agent.is_accepting(),
        "max_streams": agent.max_streams.load(Ordering::Relaxed),
        "live_streams": agent.active_streams.load(Ordering::Relaxed),
        // In a fleet, what routing here takes the exit's load to be.
        "load": agent.load(),
        "streams_total": agent.streams_total.load(Ordering::Relaxed),
        "bytes_up": agent.bytes_up.load(Ordering::Relaxed),
        "bytes_down": agent.bytes_down.load(Ordering::Relaxed),
        "connected_secs": SystemTime::now()
            .duration_since(agent.connected_at)
            .unwrap_or_default()
            .as_secs(),
        "health": {
            "success_rate": (health.success_rate * 1000.0).round() / 1000.0,
            "open_latency_ms": health.open_latency.map(|latency| latency.as_millis() as u64),
            "consecutive_failures": health.consecutive_failures,
            "cooling": health.cooling_left.is_some(),
            "cooling_left_ms": health.cooling_left.map(|left| left.as_millis() as u64),
            "probation": health.probation,
            "coolings": health.coolings_total,
            "failures": health.failures_total,
            "waiting_opens": health.waiting,
            "suspect": health.suspect,
            "slow": health.slow,
        },
    })
}

/// `/stats`' `customers`: every account and every customer with usage, by
/// name, with its totals, live connections, quota and (in a fleet) what the
/// other gateways carry.
fn customer_stats(
    usage: &std::collections::BTreeMap<String, crate::usage::Totals>,
    shared: &AdminView,
) -> serde_json::Map<String, serde_json::Value> {
    let accounts = shared.accounting.accounts.current();
    accounts
        .users
        .iter()
        .map(|customer| customer.name.clone())
        .chain(usage.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|name| {
            let totals = usage.get(&name).cloned().unwrap_or_default();
            let quota = accounts
                .users
                .get(&name)
                .and_then(|customer| customer.limits.quota_bytes);
            let entry = serde_json::json!({
                "bytes_up": totals.bytes_up,
                "bytes_down": totals.bytes_down,
                "connections": totals.connections,
                "errors": totals.errors,
                "errors_by_code": totals.errors_by_code,
                "live_connections": shared.accounting.limits.live(&name),
                "fleet": shared.fleet.as_ref().map(|fleet| {
                    let elsewhere = fleet.elsewhere(&name);
                    serde_json::json!({
                        "bytes": shared.accounting.customer_bytes(&name),
                        "connections_elsewhere": elsewhere.connections,
                        "requests_per_second_elsewhere": elsewhere.requests_per_second,
                    })
                }),
                "quota_bytes": quota,
                "quota_remaining": quota.map(|quota| quota.saturating_sub(shared.accounting.customer_bytes(&name))),
            });
            (name, entry)
        })
        .collect()
}

/// A request for live connections or exits ([`live`]): the port's browser
/// defences, then who is asking (an operator's connection keeps its place on
/// a busy port, `slots`), then [`live::serve`]'s answer as the port's body.
async fn serve_live(
    request: Request<hyper::body::Incoming>,
    shared: &Arc<AdminView>,
    proven: &std::sync::atomic::AtomicBool,
) -> Response<Full<Bytes>> {
    if let Some(refusal) = refuse_browsers(&request, shared) {
        return refusal;
    }
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let access = if authorized(shared.config.admin_token.as_ref(), authorization) {
        live::Access::Admin
    } else if live::read_only(shared, authorization).await {
        live::Access::ReadOnly
    } else {
        live::Access::None
    };
    if access != live::Access::None {
        proven.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let (parts, body) = live::serve(request, shared, access).await.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => Response::from_parts(parts, Full::new(bytes)),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("the answer could not be read: {error}\n"),
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::authorized;
    use exitpool_protocol::Secret;

    #[test]
    fn the_admin_token_is_required_when_set() {
        let token = Secret("adm1n".into());
        assert!(authorized(None, None));
        assert!(authorized(Some(&Secret(String::new())), None));
        assert!(!authorized(Some(&token), None));
        assert!(!authorized(Some(&token), Some("Bearer wrong")));
        assert!(!authorized(Some(&token), Some("Basic adm1n")));
        assert!(!authorized(Some(&token), Some("Bearer adm1")));
        assert!(authorized(Some(&token), Some("Bearer adm1n")));
        assert!(authorized(Some(&token), Some("bearer  adm1n ")));
    }
}
