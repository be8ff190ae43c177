//! The part of `/api/v1` that answers from this gateway's own memory rather
//! than from the control plane's store: live connections ([`crate::live`]) and
//! exits with their bans ([`super::exits`]). It works with or without a store
//! (`--users` and `--redis` gateways have these too).
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v1/connections?customer=NAME&limit=N` | this gateway's live customer connections, oldest first |
//! | `DELETE /api/v1/connections/{id}` | closes one: its customer's transfer ends at once (a reset) |
//! | `DELETE /api/v1/connections?customer=NAME` | closes all of a customer's (and its sub-users') |
//! | `GET /api/v1/exits`, `POST /api/v1/exits/{id}/ban`, `.../unban` | see [`super::exits`] |
//!
//! [`serve`] answers the requests for these paths, which the admin port takes
//! off before the control plane's router and answers with the same JSON
//! error shape (`{"error","field","message"}`, [`exitpool_control::Error`]).
//! The admin token may do all; the read-only token (`--admin-readonly-token`,
//! which the control plane's router holds and is asked about) only `GET`s.
//! `GET /api/v1/openapi.json` is answered here too: the control plane's
//! document with these paths merged in.

use super::exits;
use crate::admin::view::AdminView;
use crate::live::Live;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use exitpool_control::Error;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most connections one list answers (`limit`'s ceiling and default).
pub const MAX_LIST: usize = 10_000;

/// Longest request body these routes read (a ban's reason).
const MAX_BODY: usize = 16 * 1024;

/// Whether `path` is one of the paths this module answers.
pub fn owns(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1") else {
        return false;
    };
    rest == "/openapi.json"
        || rest == "/connections"
        || rest.starts_with("/connections/")
        || rest == "/exits"
        // An exit's usage history is the store's (`/exits/{id}/usage`).
        || (rest.starts_with("/exits/") && !rest.ends_with("/usage"))
}

fn split() -> (axum::Router<Arc<AdminView>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::new()
        .routes(routes!(list_connections, close_connections))
        .routes(routes!(close_connection))
        .routes(routes!(exits::list_exits))
        .routes(routes!(exits::ban_exit))
        .routes(routes!(exits::unban_exit))
        .split_for_parts()
}

/// The OpenAPI paths of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

/// The whole `/api/v1` document: the control plane's and these paths.
pub fn full_openapi() -> utoipa::openapi::OpenApi {
    let mut doc = exitpool_control::api::openapi();
    doc.merge(openapi());
    doc
}

/// Who may ask: the admin token may do all, the read-only token only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// The admin token.
    Admin,
    /// The read-only token.
    ReadOnly,
    /// Neither.
    None,
}

/// Answers a request for one of [`owns`]'s paths, once the admin port
/// (`super::serve_live`) has applied its browser defences and told who is
/// asking.
pub(super) async fn serve(
    request: hyper::Request<hyper::body::Incoming>,
    shared: &Arc<AdminView>,
    access: Access,
) -> Response {
    let reads = matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD);
    match access {
        Access::Admin => answer(request, shared).await,
        Access::ReadOnly if reads => answer(request, shared).await,
        Access::ReadOnly => Error::Forbidden {
            message: "this token may only read (GET)".into(),
        }
        .into_response(),
        Access::None => Error::Unauthorized.into_response(),
    }
}

/// Whether `authorization` carries the read-only token. The control plane's
/// router alone holds it: it is asked whether the token may read its
/// OpenAPI document (no database query), as a `GET` of ours would be.
pub(super) async fn read_only(shared: &AdminView, authorization: Option<&str>) -> bool {
    let (Some(router), Some(authorization)) = (
        shared
            .accounting
            .accounts
            .control()
            .and_then(|link| link.router().cloned()),
        authorization,
    ) else {
        return false;
    };
    let probe = axum::http::Request::get("/api/v1/openapi.json")
        .header(hyper::header::AUTHORIZATION, authorization)
        .body(axum::body::Body::empty());
    let Ok(probe) = probe else {
        return false;
    };
    matches!(
        tokio::time::timeout(READ_PROBE_TIMEOUT, tower::ServiceExt::oneshot(router, probe)).await,
        Ok(Ok(answer)) if answer.status().is_success()
    )
}

/// Longest the read-only token's check may take (it touches no database).
const READ_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The answer to an authorized request for one of [`owns`]'s paths.
async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    shared: &Arc<AdminView>,
) -> Response {
    if request.uri().path() == "/api/v1/openapi.json" {
        let doc = full_openapi().to_json().unwrap_or_else(|_| "{}".into());
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            doc,
        )
            .into_response()
    } else {
        let (router, _) = split();
        let router = router
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(shared.clone());
        let request = request.map(axum::body::Body::new);
        match tower::ServiceExt::oneshot(router, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = exitpool_control::error::ErrorBody {
        error: "method_not_allowed".into(),
        field: None,
        message: format!("{} takes no {method}; see /api/v1/openapi.json", uri.path()),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn no_route(method: axum::http::Method) -> Response {
    let body = exitpool_control::error::ErrorBody {
        error: "no_route".into(),
        field: None,
        message: format!("no {method} route here; see /api/v1/openapi.json"),
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `?customer=&limit=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// A customer (its own and its sub-users' connections) or a sub-user
    /// (`sub.customer`); all when absent.
    customer: Option<String>,
    /// At most this many, oldest first (1 to 10000, default 10000).
    limit: Option<usize>,
}

/// `?gateway=` for closing one connection: the gateway its row named.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseOneQuery {
    /// The `gateway` of the connection's row (in a fleet): a close sent to
    /// another gateway is refused naming the one that holds it.
    gateway: Option<String>,
}

/// `?customer=` for closing all of a customer's.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseQuery {
    /// The customer (or `sub.customer`) whose connections to close.
    customer: Option<String>,
}

/// One live customer connection.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Connection {
    /// Its id on this gateway (for `DELETE /api/v1/connections/{id}`).
    id: u64,
    /// The gateway that holds it (in a fleet: its id; close it there).
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    /// The customer it counts for.
    customer: String,
    /// The sub-user, when a sub-user (`ops` of `ops.alice`) connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_user: Option<String>,
    /// The customer's address.
    source: String,
    /// `host:port` as the customer named it.
    target: String,
    /// The exit's id.
    exit: String,
    /// The exit's country.
    country: Option<String>,
    /// `connect`, `socks5` or `http`.
    protocol: String,
    /// Bytes sent towards the target so far.
    bytes_up: u64,
    /// Bytes received from the target so far.
    bytes_down: u64,
    /// When it started (Unix seconds).
    started: u64,
    /// Seconds since it started.
    age_secs: u64,
}

impl Connection {
    fn new(live: &Live, gateway: Option<&String>) -> Self {
        let sub_user = live
            .what
            .user
            .split_once('.')
            .map(|(sub, _)| sub.to_owned());
        Connection {
            id: live.id,
            gateway: gateway.cloned(),
            customer: live.customer().to_owned(),
            sub_user,
            source: live.what.peer.to_string(),
            target: live.what.target.clone(),
            exit: live.what.exit_id.clone(),
            country: live.what.country.clone(),
            protocol: live.what.protocol.to_owned(),
            bytes_up: live
                .counters
                .to_tunnel
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_down: live
                .counters
                .from_tunnel
                .load(std::sync::atomic::Ordering::Relaxed),
            started: live
                .since
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            age_secs: live.started.elapsed().as_secs(),
        }
    }
}

/// A list of connections.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ConnectionList {
    /// The connections, oldest first.
    items: Vec<Connection>,
    /// How many matched (`items` may hold fewer, up to `limit`).
    total: usize,
    /// Which gateway answered, in a fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    /// What the list covers.
    scope: &'static str,
}

/// What closing did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Closed {
    /// How many connections were closed.
    closed: usize,
    /// What the close covered.
    scope: &'static str,
}

/// What a list or close covers: in a fleet, only the answering gateway.
const SCOPE: &str = "this gateway's connections; in a fleet, ask each gateway's admin port";

/// This gateway's fleet id, when it is in a fleet.
fn this_gateway(shared: &AdminView) -> Option<String> {
    shared.fleet.as_ref().map(|fleet| fleet.id.to_string())
}

/// A query string; one that does not parse is a `400`.
fn query<T: serde::de::DeserializeOwned>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    query
        .map(|Query(value)| value)
        .map_err(|rejection| Error::BadRequest {
            message: rejection.body_text(),
        })
}

/// A customer name as given: a user name's characters (a sub-user's `.`).
fn customer_name(name: &str) -> Result<&str, Error> {
    let ok = !name.is_empty()
        && name.len() <= 130
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.');
    if ok {
        Ok(name)
    } else {
        Err(Error::invalid(
            "customer",
            "a customer name (or sub.customer): letters, digits, `_`, at most 130 characters",
        ))
    }
}

/// List this gateway's live customer connections.
#[utoipa::path(get, path = "/api/v1/connections", tag = "connections", params(ListQuery),
    responses((status = 200, body = ConnectionList), (status = 400, body = exitpool_control::error::ErrorBody),
        (status = 422, body = exitpool_control::error::ErrorBody)))]
pub(super) async fn list_connections(
    State(shared): State<Arc<AdminView>>,
    params: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectionList>, Error> {
    let params = query(params)?;
    let customer = params.customer.as_deref().map(customer_name).transpose()?;
    let limit = match params.limit {
        None => MAX_LIST,
        Some(limit @ 1..=MAX_LIST) => limit,
        Some(_) => return Err(Error::invalid("limit", format!("1 to {MAX_LIST}"))),
    };
    let (found, total) = shared.accounting.live.list(customer, limit);
    let gateway = this_gateway(&shared);
    Ok(Json(ConnectionList {
        items: found
            .iter()
            .map(|live| Connection::new(live, gateway.as_ref()))
            .collect(),
        total,
        gateway,
        scope: SCOPE,
    }))
}

/// Close one live connection: the customer's transfer ends at once.
#[utoipa::path(delete, path = "/api/v1/connections/{id}", tag = "connections",
    params(("id" = u64, Path, description = "The connection's id"), CloseOneQuery),
    responses((status = 200, body = Closed), (status = 404, body = exitpool_control::error::ErrorBody),
        (status = 409, body = exitpool_control::error::ErrorBody)))]
pub(super) async fn close_connection(
    State(shared): State<Arc<AdminView>>,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    params: Result<Query<CloseOneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Closed>, Error> {
    let Path(id) = id.map_err(|_| Error::invalid("id", "a connection id is a number"))?;
    let holder = query(params)?.gateway;
    let here = this_gateway(&shared);
    if let Some(holder) = holder.filter(|holder| Some(holder) != here.as_ref()) {
        // Ids are per gateway: this one's connection `id` is another one.
        return Err(Error::Conflict {
            field: Some("gateway".into()),
            message: format!(
                "connection {id} is on gateway {holder}; close it through that gateway's admin port (this is {})",
                here.as_deref().unwrap_or("a gateway outside any fleet")
            ),
        });
    }
    if !shared.accounting.live.close(id) {
        let scope = match &here {
            Some(here) => format!(
                "on this gateway ({here}): it ended, or it is another gateway's (each listed connection's `gateway` names the one that holds it)"
            ),
            None => "on this gateway: it ended".to_owned(),
        };
        return Err(Error::not_found(format!("connection {id} {scope}")));
    }
    tracing::info!(connection = id, "connection closed by the operator");
    Ok(Json(Closed {
        closed: 1,
        scope: SCOPE,
    }))
}

/// Close every live connection of a customer (`?customer=NAME`, required).
#[utoipa::path(delete, path = "/api/v1/connections", tag = "connections", params(CloseQuery),
    responses((status = 200, body = Closed), (status = 422, body = exitpool_control::error::ErrorBody)))]
pub(super) async fn close_connections(
    State(shared): State<Arc<AdminView>>,
    params: Result<Query<CloseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Closed>, Error> {
    let params = query(params)?;
    let Some(customer) = params.customer.as_deref() else {
        return Err(Error::invalid(
            "customer",
            "required: whose connections to close (closing every customer's at once is not offered)",
        ));
    };
    let customer = customer_name(customer)?;
    let closed = shared.accounting.live.close_customer(customer);
    tracing::info!(
        customer,
        closed,
        "a customer's connections closed by the operator"
    );
    Ok(Json(Closed {
        closed,
        scope: SCOPE,
    }))
}

#[cfg(test)]
mod tests {
    use super::owns;

    #[test]
    fn owns_its_paths_and_leaves_the_stores() {
        assert!(owns("/api/v1/connections"));
        assert!(owns("/api/v1/connections/7"));
        assert!(owns("/api/v1/exits"));
        assert!(owns("/api/v1/exits/0a1b/ban"));
        assert!(owns("/api/v1/openapi.json"));
        assert!(!owns("/api/v1/exits/0a1b/usage"));
        assert!(!owns("/api/v1/customers"));
        assert!(!owns("/api/v1/connectionsx"));
        assert!(!owns("/stats"));
    }
}
