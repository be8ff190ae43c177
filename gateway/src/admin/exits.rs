//! `/api/v1/exits`: the exits in the pool with their place, transport, health
//! and load, and banning a device ([`crate::bans`]): a banned exit is
//! disconnected at once when this gateway holds its tunnel, and refused at
//! join until unbanned. Served by [`super::live::serve`].
//!
//! In a fleet the list shows every exit of the pool (each with the gateway
//! that holds it). With a control-plane store a ban is the store's: every
//! gateway on it takes the ban with its next snapshot (within a second) and
//! disconnects the exit if it holds it ([`enforce_store_bans`]). Without a
//! store a ban is this gateway's (kept in its state directory): an exit
//! another gateway holds stays there, and is refused here when it next joins
//! this gateway.

use crate::admin::view::AdminView;
use crate::bans::{Ban, BanError};
use crate::directory::Agent;
use axum::extract::{Path, Query, State};
use axum::Json;
use exitpool_control::Error;
use exitpool_protocol::close_code;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use utoipa::{IntoParams, ToSchema};

/// `?banned=true` lists the bans instead.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ExitsQuery {
    /// `true`: the banned exits (connected or not) with when and why.
    banned: Option<bool>,
}

/// One exit in the pool.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Exit {
    /// Its public id (what customers see in `X-Exitpool-Exit`).
    id: String,
    /// ISO 3166-1 country.
    country: Option<String>,
    /// ISO 3166-2 region.
    region: Option<String>,
    /// City (lower case).
    city: Option<String>,
    /// Autonomous system number.
    asn: Option<u32>,
    /// `quic` or `tcp` for an exit connected here; absent for one another
    /// fleet gateway holds.
    transport: Option<&'static str>,
    /// The fleet gateway holding it, when not this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    /// Whether it takes new streams.
    accepting: bool,
    /// Streams open on it now.
    load: u32,
    /// Most streams it takes.
    max_streams: u32,
    /// Health as routing sees it.
    health: ExitHealth,
    /// When it joined (Unix seconds).
    connected_since: u64,
    /// Whether it is banned (an exit banned while connected elsewhere in
    /// the fleet shows here until it leaves).
    banned: bool,
}

/// An exit's health.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ExitHealth {
    /// Share of recent opens and relays that went well (0 to 1).
    success_rate: f64,
    /// Opens or relays that failed in a row.
    consecutive_failures: u32,
    /// Taken out of routing for a while after failures.
    cooling: bool,
    /// Recent opens were slow.
    slow: bool,
    /// Suspected of failing its customers.
    suspect: bool,
}

/// A banned exit.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BannedExit {
    /// The exit's id.
    id: String,
    /// When it was banned (Unix seconds).
    since: u64,
    /// Why, as the operator said.
    reason: String,
    /// Whether it is connected to the pool now (held by another fleet gateway).
    connected: bool,
}

/// The exits list.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ExitList {
    /// The exits (`?banned=true`: empty, see `banned`).
    items: Vec<Exit>,
    /// With `?banned=true`: every ban this gateway keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    banned: Option<Vec<BannedExit>>,
}

/// A ban's body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BanRequest {
    /// Why, for the operators (kept with the ban, at most 512 bytes; never
    /// sent to the agent).
    #[serde(default)]
    reason: String,
}

/// What a ban or unban did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BanOutcome {
    /// The exit.
    id: String,
    /// Whether it is banned now.
    banned: bool,
    /// Whether this call changed that (`false`: it was so already).
    changed: bool,
    /// Whether its tunnel here was closed.
    disconnected: bool,
    /// The fleet gateway still holding it, if another one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_by: Option<String>,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn exit(agent: &Agent, shared: &AdminView, now: std::time::Instant) -> Exit {
    let health = agent.health.view(now, &shared.config.health);
    Exit {
        id: agent.exit_id.clone(),
        country: agent.location.country.clone(),
        region: agent.location.region.clone(),
        city: agent.location.city.clone(),
        asn: agent.location.asn,
        transport: shared
            .routing
            .exits
            .tunnels()
            .transport(agent.key)
            .map(|t| t.as_str()),
        gateway: agent.home.as_deref().map(str::to_owned),
        accepting: agent.is_accepting(),
        load: agent.load(),
        max_streams: agent.max_streams.load(Ordering::Relaxed),
        health: ExitHealth {
            success_rate: (health.success_rate * 1000.0).round() / 1000.0,
            consecutive_failures: health.consecutive_failures,
            cooling: health.cooling_left.is_some(),
            slow: health.slow,
            suspect: health.suspect,
        },
        connected_since: unix(agent.connected_at),
        banned: shared.routing.bans.is_banned(&agent.exit_id),
    }
}

/// An exit id as given: the gateway's are 16 lower-case hex digits.
fn exit_id(id: &str) -> Result<String, Error> {
    let id = id.to_ascii_lowercase();
    if (1..=64).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(Error::invalid(
            "id",
            "an exit id is hexadecimal (16 digits, as /api/v1/exits lists them)",
        ))
    }
}

/// List the exits in the pool (or, with `?banned=true`, the bans).
#[utoipa::path(get, path = "/api/v1/exits", tag = "exits", params(ExitsQuery),
    responses((status = 200, body = ExitList), (status = 400, body = exitpool_control::error::ErrorBody)))]
pub(super) async fn list_exits(
    State(shared): State<Arc<AdminView>>,
    params: Result<Query<ExitsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ExitList>, Error> {
    let Query(params) = params.map_err(|rejection| Error::BadRequest {
        message: rejection.body_text(),
    })?;
    let agents = shared.routing.exits.directory().agents();
    if params.banned == Some(true) {
        let banned = shared
            .routing
            .bans
            .list()
            .into_iter()
            .map(|(id, Ban { since, reason })| BannedExit {
                connected: agents.iter().any(|agent| agent.exit_id == id),
                id,
                since,
                reason,
            })
            .collect();
        return Ok(Json(ExitList {
            items: Vec::new(),
            banned: Some(banned),
        }));
    }
    let now = std::time::Instant::now();
    let mut items: Vec<Exit> = agents
        .iter()
        .map(|agent| exit(agent, &shared, now))
        .collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(ExitList {
        items,
        banned: None,
    }))
}

/// The answer to a failed ban or unban.
fn ban_failed(error: BanError) -> Error {
    match error {
        BanError::ReasonTooLong => Error::invalid("reason", error.to_string()),
        BanError::Full => Error::Conflict {
            field: None,
            message: error.to_string(),
        },
        BanError::Write { .. } => Error::Internal(error.to_string()),
    }
}

/// Longest a ban or unban waits for the store.
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A store call within [`STORE_TIMEOUT`].
async fn store_bound<T>(
    call: impl std::future::Future<Output = exitpool_control::Result<T>>,
) -> Result<T, Error> {
    tokio::time::timeout(STORE_TIMEOUT, call)
        .await
        .map_err(|_| {
            Error::Internal(format!(
                "the database did not answer within {} s; nothing changed",
                STORE_TIMEOUT.as_secs()
            ))
        })?
}

/// Puts the store's exit bans (the control link's last snapshot) in force
/// and disconnects the banned exits whose tunnel this gateway holds: a ban
/// made through any gateway of the fleet. Called with each new snapshot.
pub(crate) fn enforce_store_bans(shared: &crate::shared::Shared) {
    let Some(bans) = shared
        .accounting
        .accounts
        .control()
        .and_then(|link| link.exit_bans())
    else {
        return;
    };
    let list = bans
        .iter()
        .map(|ban| {
            let since = u64::try_from(ban.since).unwrap_or(0);
            let reason = ban.reason.clone();
            (ban.exit_id.clone(), Ban { since, reason })
        })
        .collect();
    shared.routing.bans.adopt_store(list);
    for agent in shared.routing.exits.directory().agents() {
        if agent.is_local() && shared.routing.bans.is_banned(&agent.exit_id) {
            shared.routing.exits.disconnect(
                agent.key,
                close_code::REJECTED,
                b"banned by the operator",
            );
            tracing::info!(exit = %agent.exit_id, "banned exit disconnected (a ban in the store)");
        }
    }
}

/// Ban an exit: disconnected at once if connected here, refused at join until unbanned.
#[utoipa::path(post, path = "/api/v1/exits/{id}/ban", tag = "exits", request_body(content = BanRequest, description = "optional"),
    params(("id" = String, Path, description = "The exit's id")),
    responses((status = 200, body = BanOutcome), (status = 422, body = exitpool_control::error::ErrorBody)))]
pub(super) async fn ban_exit(
    State(shared): State<Arc<AdminView>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<BanOutcome>, Error> {
    let id = exit_id(&id)?;
    let request: BanRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BanRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            Error::invalid(
                "body",
                format!("{{\"reason\": \"...\"}} or nothing: {error}"),
            )
        })?
    };
    let changed = match shared.accounting.accounts.control() {
        Some(link) => {
            let since = exitpool_control::period::now();
            let banned = link.store().ban_exit(&id, &request.reason, since);
            let changed = store_bound(banned).await?;
            let ban = Ban {
                since: u64::try_from(since).unwrap_or(0),
                reason: request.reason,
            };
            shared.routing.bans.store_changed(&id, Some(ban));
            changed
        }
        None => {
            let shared = shared.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || shared.routing.bans.ban(&id, &request.reason))
                .await
                .map_err(|error| Error::Internal(error.to_string()))?
                .map_err(ban_failed)?
        }
    };
    let mut disconnected = false;
    let mut held_by = None;
    for agent in shared.routing.exits.directory().agents() {
        if agent.exit_id != id {
            continue;
        }
        if agent.is_local() {
            shared.routing.exits.disconnect(
                agent.key,
                close_code::REJECTED,
                b"banned by the operator",
            );
            disconnected = true;
        } else {
            held_by = agent.home.as_deref().map(str::to_owned);
        }
    }
    tracing::info!(exit = %id, changed, disconnected, "exit banned by the operator");
    Ok(Json(BanOutcome {
        id,
        banned: true,
        changed,
        disconnected,
        held_by,
    }))
}

/// Lift an exit's ban: it may join again.
#[utoipa::path(post, path = "/api/v1/exits/{id}/unban", tag = "exits",
    params(("id" = String, Path, description = "The exit's id")),
    responses((status = 200, body = BanOutcome), (status = 422, body = exitpool_control::error::ErrorBody)))]
pub(super) async fn unban_exit(
    State(shared): State<Arc<AdminView>>,
    Path(id): Path<String>,
) -> Result<Json<BanOutcome>, Error> {
    let id = exit_id(&id)?;
    let changed = match shared.accounting.accounts.control() {
        Some(link) => {
            let changed = store_bound(link.store().unban_exit(&id)).await?;
            shared.routing.bans.store_changed(&id, None);
            changed
        }
        None => {
            let shared = shared.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || shared.routing.bans.unban(&id))
                .await
                .map_err(|error| Error::Internal(error.to_string()))?
                .map_err(ban_failed)?
        }
    };
    tracing::info!(exit = %id, changed, "exit unbanned by the operator");
    Ok(Json(BanOutcome {
        id,
        banned: false,
        changed,
        disconnected: false,
        held_by: None,
    }))
}
