//! HTTP proxy protocol on the customer port, served by hyper: `CONNECT` tunnels and
//! plain HTTP forwarding (absolute-form `GET http://host/path`, any method; see
//! [`crate::forward`]).
//!
//! `CONNECT`: authenticate (`Proxy-Authorization: Basic`) -> validate the target
//! -> choose an exit -> open a relay stream and wait for the exit's answer -> only
//! then answer `200` (with the exit's id and country) or the mapped error -> relay
//! bytes until both sides are done. Plain HTTP routes every request on its own.
//!
//! # Limits on the customer port
//!
//! What a client gets for a request head the gateway will not serve:
//!
//! | the client sends | it gets |
//! |---|---|
//! | a request line (method, URI, version) over 8 KiB ([`MAX_REQUEST_LINE`]) in a head that fits the head limit | `414`, JSON body `uri_too_long`, `Connection: close` |
//! | 16 KiB ([`MAX_HEAD_BYTES`]) of head without the blank line that ends it (also a request line of 16 KiB or more) | `431` from hyper (empty body), connection closed |
//! | more than 100 header lines ([`MAX_HEADERS`]) | `431` from hyper (empty body), connection closed |
//! | a malformed head: bad method token, header or version, or bytes that are not HTTP | `400` from hyper (empty body), connection closed |
//! | no complete head within `head_timeout` (10 s) of the gateway starting to wait for one; on a kept-alive connection that is also the idle limit between requests | no response; the connection is closed |
//! | any refused request (`407`, `400`, `403`, `429`, `502`, `504`, ...) | the error with `Proxy-Status`, `X-Exitpool-Error`, a JSON body and `Connection: close`; nothing more is read |
//!
//! hyper answers the `431`/`400` cases itself, before our code sees a request, so
//! those answers carry no product headers. hyper only refuses URIs of 64 KiB and
//! more with `414`, which the 16 KiB head limit never lets through, so the 8 KiB
//! request-line check is ours (in `handle`, before credentials are looked at).
//!
//! The first head's deadline counts from accept (the first-byte sniff in
//! `customer.rs` shares it), so a silent client is closed after `head_timeout`.

use crate::error::ProxyError;
use crate::exit::OpenedExit;
use crate::registry::Agent;
use crate::Shared;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tracing::{debug, info, Instrument};

/// Response body type for every answer on the customer port.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Largest request head (request line and headers) hyper buffers: enough for any
/// real client's cookies, small enough that idle connections cost little memory.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in a request head; hyper's default, set explicitly so the
/// limit is ours.
pub const MAX_HEADERS: usize = 100;
/// Longest request line served; longer ones get `414`. Matches common servers'
/// 8 KiB so a URL that works through the gateway works at most targets.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Header naming the exit that served a request.
pub const EXIT_HEADER: &str = "x-exitpool-exit";
/// Header naming the serving exit's country.
pub const COUNTRY_HEADER: &str = "x-exitpool-country";
/// Header saying whether a sticky session is `new`, `kept` or `moved`.
pub const SESSION_HEADER: &str = "x-exitpool-session";
/// Header naming the exit a moved session was pinned to before.
pub const MOVED_FROM_HEADER: &str = "x-exitpool-moved-from";
/// Header carrying the stable product error code.
pub const ERROR_HEADER: &str = "x-exitpool-error";

/// Serves HTTP proxy requests on one customer connection.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) {
    let service_shared = shared.clone();
    // hyper's header timer starts when it starts reading; the first head must
    // also arrive by `deadline`, counted from accept, so time spent before the
    // first byte is not granted twice.
    let first_head_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = first_head_seen.clone();
    let service = hyper::service::service_fn(move |request| {
        seen.store(true, std::sync::atomic::Ordering::Relaxed);
        let shared = service_shared.clone();
        async move { Ok::<_, Infallible>(handle(request, peer, shared).await) }
    });
    let first_head_deadline = async {
        tokio::time::sleep_until(deadline).await;
        if first_head_seen.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.head_timeout)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "customer connection ended with an error");
            }
        }
        () = first_head_deadline => debug!("no request head by the deadline; closing"),
        () = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(shared.config.shutdown_grace, connection).await;
        }
    }
}

/// Answers one request: the request-line limit first (before credentials, so an
/// oversized line costs nothing), then `CONNECT` or plain forwarding.
async fn handle(
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<Body> {
    let started = Instant::now();
    let target = request.uri().to_string();
    // `METHOD SP URI SP HTTP/1.1`, rebuilt from what hyper parsed.
    let request_line = request.method().as_str().len() + 1 + target.len() + 9;
    if request_line > MAX_REQUEST_LINE {
        info!(request_line, "refused: request line too long");
        return uri_too_long(request_line);
    }
    let result = if request.method() == Method::CONNECT {
        connect(request, peer, started, &shared).await
    } else {
        crate::forward::forward(request, peer, started, &shared).await
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            info!(
                %target,
                code = error.presentation().code,
                status = error.presentation().status,
                duration_ms = started.elapsed().as_millis() as u64,
                "refused: {error}"
            );
            error_response(&error)
        }
    }
}

/// Decodes `Proxy-Authorization: Basic` into user name and password.
pub(crate) fn basic_credentials(
    request: &Request<hyper::body::Incoming>,
) -> Option<(String, String)> {
    let value = request.headers().get(PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

async fn connect(
    mut request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    started: Instant,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, ProxyError> {
    let (user, password) = basic_credentials(&request).ok_or(ProxyError::AuthRequired)?;
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .ok_or_else(|| ProxyError::BadTarget("CONNECT needs host:port".into()))?;
    let (host, port) = crate::target::parse_authority(&authority)?;
    let grant = crate::connect::authenticate(&user, &password, shared)?;
    let authorized = crate::connect::open(&grant, host, port, shared).await?;
    let opened = authorized.opened;
    let mut response = Response::new(empty());
    add_exit_headers(&mut response, &opened, authorized.session.as_ref());
    let upgrade = hyper::upgrade::on(&mut request);
    let shared = shared.clone();
    let span = tracing::info_span!("relay", exit = %opened.agent.exit_id, target = %authority);
    let context = crate::relay::AccessContext {
        user: grant.user,
        peer,
        target: authority,
        started,
    };
    shared.tasks.clone().spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    crate::relay::run_upgraded(upgraded, opened, context, &shared).await
                }
                Err(error) => debug!(%error, "CONNECT upgrade failed"),
            }
        }
        .instrument(span),
    );
    Ok(response)
}

/// Tells the customer which exit served them, and what became of their session.
pub fn add_exit_headers(
    response: &mut Response<Body>,
    opened: &OpenedExit,
    session: Option<&crate::connect::SessionOutcome>,
) {
    let headers = exit_headers(&opened.agent, session);
    response.headers_mut().extend(headers);
}

/// The headers [`add_exit_headers`] adds, for callers that build the response
/// after the [`OpenedExit`] has been taken apart (plain HTTP forwarding).
pub fn exit_headers(agent: &Agent, session: Option<&crate::connect::SessionOutcome>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(session) = session {
        headers.insert(SESSION_HEADER, HeaderValue::from_static(session.as_str()));
        if let crate::connect::SessionOutcome::Moved { from } = session {
            if let Ok(value) = HeaderValue::from_str(from) {
                headers.insert(MOVED_FROM_HEADER, value);
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&agent.exit_id) {
        headers.insert(EXIT_HEADER, value);
    }
    let country = agent.location.country.as_deref().unwrap_or("??");
    if let Ok(value) = HeaderValue::from_str(country) {
        headers.insert(COUNTRY_HEADER, value);
    }
    headers
}

fn empty() -> Body {
    full(Bytes::new())
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `414` for a request line over [`MAX_REQUEST_LINE`], shaped like
/// [`error_response`] (no [`ProxyError`] variant carries 414 yet).
fn uri_too_long(request_line: usize) -> Response<Body> {
    let message =
        format!("the request line is {request_line} bytes; the limit is {MAX_REQUEST_LINE}");
    let mut response = error_response(&ProxyError::BadRequest(message.clone()));
    *response.status_mut() = StatusCode::URI_TOO_LONG;
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static("uri_too_long"));
    let body = serde_json::json!({"error": "uri_too_long", "status": 414, "message": message});
    *response.body_mut() = full(body.to_string());
    response
}

/// The same answer as [`error_response`], as raw HTTP/1.1 bytes, for refusals
/// written before a connection reaches hyper.
pub fn raw_error_response(error: &ProxyError) -> Vec<u8> {
    let response = error_response(error);
    let status = response.status();
    let body = error.json_body();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    for (name, value) in response.headers() {
        head.push_str(&format!(
            "{name}: {}\r\n",
            value.to_str().unwrap_or_default()
        ));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

/// The HTTP answer for a failure: status, `Proxy-Status`, product code, JSON body,
/// and `Connection: close` (nothing more is read from a refused connection).
pub fn error_response(error: &ProxyError) -> Response<Body> {
    let presentation = error.presentation();
    let body = error.json_body();
    let mut response = Response::new(full(body));
    *response.status_mut() =
        StatusCode::from_u16(presentation.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(presentation.code));
    if let Some(value) = error
        .proxy_status_header()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert("proxy-status", value);
    }
    if let Some(seconds) = error.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if *error == ProxyError::AuthRequired {
        headers.insert(
            PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"exitpool\""),
        );
    }
    response
}
