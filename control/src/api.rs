//! The `/api/v1` router: customers, sub-users, agent tokens and usage
//! history, JSON in and out (CSV on `Accept: text/csv` for history), behind a
//! bearer token, with its OpenAPI document generated from these handlers
//! (utoipa) and served at `/api/v1/openapi.json`.
//!
//! Handlers are thin: parse (a body or query that does not parse is a
//! `400`), call one [`Store`] method (which checks and answers an [`Error`]),
//! answer. Live connections, the exits list, bans and the kick need the
//! gateway's in-memory state and are not here yet.

use crate::error::{Error, ErrorBody, Result};
use crate::model::{
    Account, AccountPatch, AgentToken, Created, CreatedToken, NewAccount, NewPassword, NewToken,
    Page,
};
use crate::period::{date, now, parse_day, parse_time, DAY, HOUR};
use crate::store::{AccountRef, DomainUsage, ExitDay, QuotaStatus, Step, Store, UsageBucket};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The tokens the API accepts, given by its owner (the gateway).
#[derive(Clone)]
pub struct ApiTokens {
    /// Reads and writes.
    pub admin: String,
    /// Reads only (`GET`); a write with it is `403`.
    pub read_only: Option<String>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTokens { .. }")
    }
}

#[derive(Clone)]
struct ApiState {
    store: Store,
    openapi: Arc<String>,
}

/// What a presented token may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
}

/// Digests of the tokens: comparing digests takes the same time wherever
/// the presented token first differs from a real one.
#[derive(Clone)]
struct TokenDigests {
    admin: [u8; 32],
    read_only: Option<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "exitpool control plane", description = "Customers, sub-users, agent tokens and usage history."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn split() -> (axum::Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_customers, create_customer))
        .routes(routes!(show_customer, patch_customer, delete_customer))
        .routes(routes!(disable_customer))
        .routes(routes!(enable_customer))
        .routes(routes!(rotate_customer_password))
        .routes(routes!(list_sub_users, create_sub_user))
        .routes(routes!(show_sub_user, patch_sub_user, delete_sub_user))
        .routes(routes!(disable_sub_user))
        .routes(routes!(enable_sub_user))
        .routes(routes!(rotate_sub_user_password))
        .routes(routes!(customer_usage))
        .routes(routes!(customer_domains))
        .routes(routes!(customer_quota))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(exit_usage))
        .routes(routes!(openapi_json))
        .split_for_parts()
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

/// The `/api/v1` router over `store`, accepting `tokens`. Serve it with
/// `axum::serve` (or nest it in a larger router).
pub fn router(store: Store, tokens: ApiTokens) -> axum::Router {
    router_with(store, tokens, None)
}

/// [`router`], with the accounts owned by a file (`--users FILE`) when
/// `accounts_file` names one: every write to customers or sub-users then
/// answers `409` naming the file (reads, history and tokens work as usual),
/// since the file, not the database, is what the gateway serves.
pub fn router_with(store: Store, tokens: ApiTokens, accounts_file: Option<String>) -> axum::Router {
    let (router, doc) = split();
    let router = match accounts_file {
        Some(file) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(file),
            refuse_account_writes,
        )),
        None => router,
    };
    let openapi = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into()));
    let digests = TokenDigests {
        admin: digest(&tokens.admin),
        read_only: tokens.read_only.as_deref().map(digest),
    };
    router
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(digests, authorize))
        .with_state(ApiState { store, openapi })
}

async fn no_route(method: Method) -> Response {
    let body = ErrorBody {
        error: "no_route".into(),
        field: None,
        message: format!("no {method} route here; see /api/v1/openapi.json"),
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `409` for a write to customers or sub-users while a file owns the accounts.
async fn refuse_account_writes(
    State(file): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Response {
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    if write && request.uri().path().starts_with("/api/v1/customers") {
        return Error::Conflict {
            field: None,
            message: format!(
                "accounts come from the file {file} (--users): change the file and reload (SIGHUP); \
                 start without --users to manage accounts through this API"
            ),
        }
        .into_response();
    }
    next.run(request).await
}

async fn authorize(State(digests): State<TokenDigests>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim()));
    let access = match presented {
        Some(d) if d == digests.admin => Access::ReadWrite,
        Some(d) if Some(d) == digests.read_only => Access::ReadOnly,
        _ => return Error::Unauthorized.into_response(),
    };
    if access == Access::ReadOnly && !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Error::Forbidden {
            message: "this token may only read (GET)".into(),
        }
        .into_response();
    }
    next.run(request).await
}

/// A JSON body; one that does not parse is a `400` naming where.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| Error::BadRequest {
                message: e.body_text(),
            })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(Body)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                // A value of the wrong type or an unknown key names its field;
                // text that is not JSON at all does not.
                match inner.classify() {
                    serde_json::error::Category::Data if path != "." => Error::Invalid {
                        field: path,
                        message: inner.to_string(),
                    },
                    _ => Error::BadRequest {
                        message: format!("the body is not the JSON expected: {inner}"),
                    },
                }
            })
    }
}

/// A query string; one that does not parse is a `400`.
struct Params<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| Error::BadRequest {
                message: e.body_text(),
            })
    }
}

/// Paging: after the item named `after`, at most `limit` (1 to 1000, default 100).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// The `next` of the previous page.
    after: Option<String>,
    /// Items per page.
    limit: Option<u32>,
}

/// A page of accounts.
#[derive(Serialize, ToSchema)]
struct AccountPage {
    /// The accounts, in name order.
    items: Vec<Account>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

impl From<Page<Account>> for AccountPage {
    fn from(p: Page<Account>) -> Self {
        AccountPage {
            items: p.items,
            next: p.next,
        }
    }
}

/// A page of tokens.
#[derive(Serialize, ToSchema)]
struct TokenPage {
    /// The tokens, in id order.
    items: Vec<AgentToken>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

fn sub<'a>(name: &'a str, sub: &'a str) -> AccountRef<'a> {
    AccountRef::SubUser {
        customer: name,
        sub,
    }
}

/// A user name on the history paths: `alice` or `ops.alice`.
fn named(name: &str) -> AccountRef<'_> {
    match name.split_once('.') {
        Some((sub, customer)) => AccountRef::SubUser { customer, sub },
        None => AccountRef::Customer(name),
    }
}

// ---- customers ----------------------------------------------------------

/// List customers.
#[utoipa::path(get, path = "/api/v1/customers", tag = "customers", params(PageQuery),
    responses((status = 200, body = AccountPage), (status = 422, body = ErrorBody)))]
async fn list_customers(
    State(s): State<ApiState>,
    Params(q): Params<PageQuery>,
) -> Result<Json<AccountPage>> {
    Ok(Json(
        s.store
            .list(None, q.after.as_deref(), q.limit)
            .await?
            .into(),
    ))
}

/// Create a customer; a generated password is answered once.
#[utoipa::path(post, path = "/api/v1/customers", tag = "customers", request_body = NewAccount,
    responses((status = 201, body = Created), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_customer(
    State(s): State<ApiState>,
    Body(new): Body<NewAccount>,
) -> Result<(StatusCode, Json<Created>)> {
    Ok((StatusCode::CREATED, Json(s.store.create(None, new).await?)))
}

/// Show a customer.
#[utoipa::path(get, path = "/api/v1/customers/{name}", tag = "customers",
    params(("name" = String, Path, description = "The customer")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
async fn show_customer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Account>> {
    Ok(Json(s.store.account(AccountRef::Customer(&name)).await?))
}

/// Change a customer: only the fields given; all or nothing.
#[utoipa::path(patch, path = "/api/v1/customers/{name}", tag = "customers", request_body = AccountPatch,
    params(("name" = String, Path, description = "The customer")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn patch_customer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(patch): Body<AccountPatch>,
) -> Result<Json<Account>> {
    Ok(Json(
        s.store.patch(AccountRef::Customer(&name), patch).await?,
    ))
}

/// Delete a customer, its sub-users and their history.
#[utoipa::path(delete, path = "/api/v1/customers/{name}", tag = "customers",
    params(("name" = String, Path, description = "The customer")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_customer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    s.store.delete(AccountRef::Customer(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disable a customer.
#[utoipa::path(post, path = "/api/v1/customers/{name}/disable", tag = "customers",
    params(("name" = String, Path, description = "The customer")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
async fn disable_customer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Account>> {
    Ok(Json(
        s.store
            .set_enabled(AccountRef::Customer(&name), false)
            .await?,
    ))
}

/// Enable a customer.
#[utoipa::path(post, path = "/api/v1/customers/{name}/enable", tag = "customers",
    params(("name" = String, Path, description = "The customer")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
async fn enable_customer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Account>> {
    Ok(Json(
        s.store
            .set_enabled(AccountRef::Customer(&name), true)
            .await?,
    ))
}

/// Give a customer a generated password, answered once.
#[utoipa::path(post, path = "/api/v1/customers/{name}/rotate-password", tag = "customers",
    params(("name" = String, Path, description = "The customer")),
    responses((status = 200, body = NewPassword), (status = 404, body = ErrorBody)))]
async fn rotate_customer_password(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<NewPassword>> {
    Ok(Json(
        s.store.rotate_password(AccountRef::Customer(&name)).await?,
    ))
}

// ---- sub-users ----------------------------------------------------------

/// List a customer's sub-users.
#[utoipa::path(get, path = "/api/v1/customers/{name}/sub-users", tag = "sub-users",
    params(("name" = String, Path, description = "The customer"), PageQuery),
    responses((status = 200, body = AccountPage), (status = 404, body = ErrorBody)))]
async fn list_sub_users(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Params(q): Params<PageQuery>,
) -> Result<Json<AccountPage>> {
    Ok(Json(
        s.store
            .list(Some(&name), q.after.as_deref(), q.limit)
            .await?
            .into(),
    ))
}

/// Create a sub-user (user name `sub.customer`), its limits at most the customer's.
#[utoipa::path(post, path = "/api/v1/customers/{name}/sub-users", tag = "sub-users", request_body = NewAccount,
    params(("name" = String, Path, description = "The customer")),
    responses((status = 201, body = Created), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_sub_user(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Body(new): Body<NewAccount>,
) -> Result<(StatusCode, Json<Created>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.store.create(Some(&name), new).await?),
    ))
}

/// Show a sub-user.
#[utoipa::path(get, path = "/api/v1/customers/{name}/sub-users/{sub}", tag = "sub-users",
    params(("name" = String, Path, description = "The customer"), ("sub" = String, Path, description = "The sub-user's own name")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
async fn show_sub_user(
    State(s): State<ApiState>,
    Path((name, su)): Path<(String, String)>,
) -> Result<Json<Account>> {
    Ok(Json(s.store.account(sub(&name, &su)).await?))
}

/// Change a sub-user: only the fields given; all or nothing.
#[utoipa::path(patch, path = "/api/v1/customers/{name}/sub-users/{sub}", tag = "sub-users", request_body = AccountPatch,
    params(("name" = String, Path, description = "The customer"), ("sub" = String, Path, description = "The sub-user's own name")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn patch_sub_user(
    State(s): State<ApiState>,
    Path((name, su)): Path<(String, String)>,
    Body(patch): Body<AccountPatch>,
) -> Result<Json<Account>> {
    Ok(Json(s.store.patch(sub(&name, &su), patch).await?))
}

/// Delete a sub-user and its history.
#[utoipa::path(delete, path = "/api/v1/customers/{name}/sub-users/{sub}", tag = "sub-users",
    params(("name" = String, Path, description = "The customer"), ("sub" = String, Path, description = "The sub-user's own name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_sub_user(
    State(s): State<ApiState>,
    Path((name, su)): Path<(String, String)>,
) -> Result<StatusCode> {
    s.store.delete(sub(&name, &su)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disable a sub-user.
#[utoipa::path(post, path = "/api/v1/customers/{name}/sub-users/{sub}/disable", tag = "sub-users",
    params(("name" = String, Path, description = "The customer"), ("sub" = String, Path, description = "The sub-user's own name")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
async fn disable_sub_user(
    State(s): State<ApiState>,
    Path((name, su)): Path<(String, String)>,
) -> Result<Json<Account>> {
    Ok(Json(s.store.set_enabled(sub(&name, &su), false).await?))
}

/// Enable a sub-user.
#[utoipa::path(post, path = "/api/v1/customers/{name}/sub-users/{sub}/enable", tag = "sub-users",
    params(("name" = String, Path, description = "The customer"), ("sub" = String, Path, description = "The sub-user's own name")),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
async fn enable_sub_user(
    State(s): State<ApiState>,
    Path((name, su)): Path<(String, String)>,
) -> Result<Json<Account>> {
    Ok(Json(s.store.set_enabled(sub(&name, &su), true).await?))
}

/// Give a sub-user a generated password, answered once.
#[utoipa::path(post, path = "/api/v1/customers/{name}/sub-users/{sub}/rotate-password", tag = "sub-users",
    params(("name" = String, Path, description = "The customer"), ("sub" = String, Path, description = "The sub-user's own name")),
    responses((status = 200, body = NewPassword), (status = 404, body = ErrorBody)))]
async fn rotate_sub_user_password(
    State(s): State<ApiState>,
    Path((name, su)): Path<(String, String)>,
) -> Result<Json<NewPassword>> {
    Ok(Json(s.store.rotate_password(sub(&name, &su)).await?))
}

// ---- usage --------------------------------------------------------------

/// A history range: `from` and `to` as RFC 3339 or a UTC date; `to`
/// exclusive. Defaults: the last 24 hours by hour, the last 30 days by day.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    /// Start (rounded down to a bucket).
    from: Option<String>,
    /// End, exclusive (default now).
    to: Option<String>,
    /// `hour` (default) or `day`.
    step: Option<Step>,
}

impl RangeQuery {
    fn range(&self, step: Step) -> Result<(i64, i64)> {
        let to = match &self.to {
            Some(t) => parse_time("to", t)?,
            None => now() + 1,
        };
        let from = match &self.from {
            Some(t) => parse_time("from", t)?,
            None => match step {
                Step::Hour => to - 24 * HOUR,
                Step::Day => to - 30 * DAY,
            },
        };
        Ok((from, to))
    }
}

/// An account's history.
#[derive(Serialize, ToSchema)]
struct UsageReport {
    /// The user name.
    account: String,
    /// The bucket width.
    step: Step,
    /// The buckets, oldest first, every one present. The last second or so
    /// a gateway has not flushed yet is not in them.
    buckets: Vec<UsageBucket>,
}

/// Whether the client asked for CSV.
fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/csv")))
}

/// Rows as a `text/csv` answer.
fn csv_response(head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Result<Response> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| Error::Internal(format!("csv: {e}"));
    writer.write_record(head).map_err(fail)?;
    for row in rows {
        writer.write_record(&row).map_err(fail)?;
    }
    let body = writer
        .into_inner()
        .map_err(|e| Error::Internal(format!("csv: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}

/// An account's (a customer's includes its sub-users') history by hour or
/// day; `name` may be a sub-user's `sub.customer`. CSV on `Accept: text/csv`.
#[utoipa::path(get, path = "/api/v1/customers/{name}/usage", tag = "usage",
    params(("name" = String, Path, description = "The customer, or a sub-user as sub.customer"), RangeQuery),
    responses((status = 200, description = "JSON, or CSV on Accept: text/csv", content((UsageReport = "application/json"), (String = "text/csv"))), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn customer_usage(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Params(q): Params<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let step = q.step.unwrap_or(Step::Hour);
    let (from, to) = q.range(step)?;
    let buckets = s.store.usage(named(&name), from, to, step).await?;
    if wants_csv(&headers) {
        return csv_response(
            &["start", "bytes_up", "bytes_down", "connections", "errors"],
            buckets.into_iter().map(|b| {
                let errors = b
                    .errors
                    .iter()
                    .map(|(code, n)| format!("{code}={n}"))
                    .collect::<Vec<_>>()
                    .join(";");
                vec![
                    b.start,
                    b.bytes_up.to_string(),
                    b.bytes_down.to_string(),
                    b.connections.to_string(),
                    errors,
                ]
            }),
        );
    }
    Ok(Json(UsageReport {
        account: name,
        step,
        buckets,
    })
    .into_response())
}

/// The day to show (a UTC date; default today).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DayQuery {
    /// `2026-12-07`.
    day: Option<String>,
}

/// An account's top registrable target domains on one day.
#[derive(Serialize, ToSchema)]
struct DomainReport {
    /// The user name.
    account: String,
    /// The UTC day.
    day: String,
    /// At most 100, by bytes.
    domains: Vec<DomainUsage>,
}

/// An account's top 100 target domains (registrable, by bytes) on a UTC day.
#[utoipa::path(get, path = "/api/v1/customers/{name}/domains", tag = "usage",
    params(("name" = String, Path, description = "The customer, or a sub-user as sub.customer"), DayQuery),
    responses((status = 200, description = "JSON, or CSV on Accept: text/csv", content((DomainReport = "application/json"), (String = "text/csv"))), (status = 404, body = ErrorBody)))]
async fn customer_domains(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Params(q): Params<DayQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let day = match &q.day {
        Some(d) => parse_day("day", d)?,
        None => now(),
    };
    let domains = s.store.domains(named(&name), day).await?;
    if wants_csv(&headers) {
        return csv_response(
            &["domain", "bytes"],
            domains
                .into_iter()
                .map(|d| vec![d.domain, d.bytes.to_string()]),
        );
    }
    Ok(Json(DomainReport {
        account: name,
        day: date(day),
        domains,
    })
    .into_response())
}

/// An account's bytes today, this month and over its life, and which quota
/// (if any) ran out and when it resets.
#[utoipa::path(get, path = "/api/v1/customers/{name}/quota", tag = "usage",
    params(("name" = String, Path, description = "The customer, or a sub-user as sub.customer")),
    responses((status = 200, body = QuotaStatus), (status = 404, body = ErrorBody)))]
async fn customer_quota(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<QuotaStatus>> {
    Ok(Json(s.store.quota_status(named(&name), now()).await?))
}

/// An exit's days.
#[derive(Serialize, ToSchema)]
struct ExitReport {
    /// The exit's device id.
    exit: String,
    /// Every day of the range, oldest first.
    days: Vec<ExitDay>,
}

/// A day range (`from`, `to` exclusive; RFC 3339 or dates; default the last 30 days).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DaysQuery {
    /// Start.
    from: Option<String>,
    /// End, exclusive.
    to: Option<String>,
}

/// An exit's bytes and streams per UTC day (for payouts). CSV on `Accept: text/csv`.
#[utoipa::path(get, path = "/api/v1/exits/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "The exit's device id"), DaysQuery),
    responses((status = 200, description = "JSON, or CSV on Accept: text/csv", content((ExitReport = "application/json"), (String = "text/csv"))), (status = 422, body = ErrorBody)))]
async fn exit_usage(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Params(q): Params<DaysQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let range = RangeQuery {
        from: q.from,
        to: q.to,
        step: Some(Step::Day),
    };
    let (from, to) = range.range(Step::Day)?;
    let days = s.store.exit_usage(&id, from, to).await?;
    if wants_csv(&headers) {
        return csv_response(
            &["day", "bytes", "streams"],
            days.into_iter()
                .map(|d| vec![d.day, d.bytes.to_string(), d.streams.to_string()]),
        );
    }
    Ok(Json(ExitReport { exit: id, days }).into_response())
}

// ---- tokens -------------------------------------------------------------

/// List agent tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(PageQuery),
    responses((status = 200, body = TokenPage)))]
async fn list_tokens(
    State(s): State<ApiState>,
    Params(q): Params<PageQuery>,
) -> Result<Json<TokenPage>> {
    let page = s.store.list_tokens(q.after.as_deref(), q.limit).await?;
    Ok(Json(TokenPage {
        items: page.items,
        next: page.next,
    }))
}

/// Create an agent token; its secret is answered once.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 422, body = ErrorBody)))]
async fn create_token(
    State(s): State<ApiState>,
    Body(new): Body<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>)> {
    Ok((StatusCode::CREATED, Json(s.store.create_token(new).await?)))
}

/// Revoke an agent token.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, body = AgentToken), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AgentToken>> {
    Ok(Json(s.store.revoke_token(&id).await?))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.as_str().to_owned(),
    )
        .into_response()
}
