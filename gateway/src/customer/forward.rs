//! Plain HTTP proxying on the customer port: absolute-form requests such as
//! `GET http://example.com/path`, any method.
//!
//! Every request is routed on its own: authenticate -> take the target from the
//! URI -> choose an exit and open a relay stream ([`session::open`]) -> speak
//! HTTP/1.1 to the target over that stream with hyper's client, metered as one
//! [`Transfer`] (folded each second, cut at quota) -> stream the answer back with
//! the exit's headers. So a rotating customer gets a new exit per request
//! even on one kept-alive connection, and a sticky session keeps its exit.
//!
//! Hop-by-hop headers are dropped both ways and nothing that reveals the customer is
//! added. Bodies stream through without being buffered whole; hyper re-frames them
//! (chunked or `Content-Length`) on each side.

use super::response::{basic_credentials, exit_headers, Body};
use super::session;
use super::session::{Arrival, Refusal};
use super::target;
use super::transfer::{exhausted_quota, AccessContext, MeteredIo, Transfer, QUOTA_CUT};
use crate::abuse::AddressSlot;
use crate::directory::Agent;
use crate::error::ProxyError;
use crate::shared::Shared;
use exitpool_protocol::{FailureCode, TargetHost};
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, Instrument};

/// Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus
/// `Proxy-Connection` (a legacy client spelling) and `Proxy-Authorization`, which
/// carries the customer's credentials and must never reach a target.
/// `Transfer-Encoding` goes too: hyper frames each side's body itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Port for `http://` URIs without one.
const DEFAULT_HTTP_PORT: u16 = 80;

/// Forwards one absolute-form request through its own exit and returns the
/// target's answer, or the failure to present. The request's body is
/// hyper's (HTTP/1.1) or an HTTP/2 stream's ([`super::http2`]).
pub(crate) async fn forward<B>(
    request: Request<B>,
    arrival: &Arrival,
    pending: &AddressSlot,
    started: Instant,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, Refusal>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let credentials = basic_credentials(&request);
    let credentials = credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()));
    let grant = session::authenticate_either(credentials, arrival, pending, shared).await?;
    let peer = arrival.peer;
    let (host, port) = target_of(request.uri())?;
    let target = format!("{host}:{port}");
    let authorized = session::open(&grant, host, port, shared).await?;
    // From here on a failure is the target's (or the quota's), after these exits.
    let attempts = authorized.attempts;
    let refused = |error: ProxyError| Refusal::from(error).tried(attempts as usize);
    let mut exit_headers = exit_headers(
        &authorized.agent,
        authorized.session.as_ref(),
        authorized.attempts,
    );
    let exit_id = authorized.agent.exit_id.clone();
    let lost = Arc::new(LostExchange {
        agent: authorized.agent.clone(),
        scored: Once::new(),
    });
    let context = AccessContext {
        user: grant.user,
        peer,
        target: target.clone(),
        started,
        protocol: "http",
    };
    let user = context.user.clone();
    let (transfer, exit) = Transfer::start(authorized, context, shared);
    let io = MeteredIo::new(tokio::io::join(exit.recv, exit.send), &transfer, shared);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| refused(target_failed(error)))?;
    let (status_tx, status_rx) = oneshot::channel();
    let exchange = Exchange {
        transfer,
        status: status_rx,
        method: request.method().clone(),
        idle_timeout: shared.settings().idle_timeout,
        lost: lost.clone(),
        shared: shared.clone(),
    };
    let span = tracing::info_span!("forward", exit = %exit_id, %target);
    shared
        .lifecycle
        .tasks
        .spawn(drive(connection, exchange).instrument(span));

    let response = match sender.send_request(outbound(request)).await {
        Ok(response) => response,
        // Cut off mid-request by the quota: say so, not "the target failed".
        Err(error) => {
            lost.score(&error, shared);
            return Err(refused(match exhausted_quota(&user, &shared.accounting) {
                Some(quota) => ProxyError::QuotaExhausted(quota),
                None => target_failed(error),
            }));
        }
    };
    // The connection serves this one exchange and closes once it is over.
    drop(sender);
    let _ = status_tx.send(response.status().as_u16());
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    strip_our_headers(&mut parts.headers);
    parts.headers.extend(exit_headers.drain());
    // Whatever the target spoke, the customer's connection stays HTTP/1.1 keep-alive.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, body.boxed()))
}

/// The exit's target for an absolute-form URI: `http` only, port 80 by default.
fn target_of(uri: &Uri) -> Result<(TargetHost, u16), ProxyError> {
    match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => {}
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
            return Err(ProxyError::BadRequest(
                "https:// URLs are tunnelled: send `CONNECT host:443` instead \
                 (curl, browsers and HTTP libraries do this by themselves)"
                    .into(),
            ))
        }
        Some(scheme) => {
            return Err(ProxyError::BadTarget(format!(
                "scheme `{scheme}` is not proxied; use http:// or CONNECT"
            )))
        }
        None => {
            return Err(ProxyError::BadRequest(
                "a proxy request needs an absolute URI such as http://example.com/ \
                 (or CONNECT host:port)"
                    .into(),
            ))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ProxyError::BadTarget("the URI has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadTarget(
            "user:password@ in the URL is not forwarded; send an Authorization header".into(),
        ));
    }
    let bare = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let host = target::parse_host(bare)
        .map_err(|why| ProxyError::BadTarget(format!("{why} (got {bare:?})")))?;
    let port = match authority.port() {
        None => DEFAULT_HTTP_PORT,
        Some(port) => target::parse_port(port.as_str())
            .ok_or_else(|| ProxyError::BadTarget("port must be 1-65535".into()))?,
    };
    Ok((host, port))
}

/// The request as the target should see it: origin-form, no hop-by-hop headers,
/// a `Host` header from the URI's authority.
fn outbound<B>(request: Request<B>) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // RFC 9112 section 3.2.2: the absolute-form URI's authority is the host; a
    // client's `Host` header that disagrees is replaced, never passed on.
    parts.headers.remove(HOST);
    if let Some(value) = parts
        .uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    {
        parts.headers.insert(HOST, value);
    }
    parts.uri = match parts.uri.path_and_query() {
        Some(path) if !path.path().is_empty() => Uri::from(path.clone()),
        // `OPTIONS http://host` asks about the server itself (RFC 9112 section 3.2.4).
        _ if parts.method == Method::OPTIONS => Uri::from_static("*"),
        _ => Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// Drops hop-by-hop headers, including every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Drops what a target may have sent in our name, so every `x-exitpool-*`
/// header and `Proxy-Status` member named `exitpool` the customer reads is the
/// gateway's: a target could otherwise claim another exit, session or error.
/// Other proxies' `Proxy-Status` members stay (RFC 9209 lists every hop).
fn strip_our_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(OUR_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
    let kept: Vec<String> = headers
        .get_all(PROXY_STATUS)
        .iter()
        .flat_map(|value| list_members(value.as_bytes()))
        .filter(|member| member_name(member) != OUR_PROXY_STATUS_NAME)
        .map(|member| String::from_utf8_lossy(member).into_owned())
        .collect();
    headers.remove(PROXY_STATUS);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(PROXY_STATUS, value);
        }
    }
}

/// Every header the gateway adds to a customer's answer starts so.
const OUR_HEADER_PREFIX: &str = "x-exitpool-";
/// The `Proxy-Status` member name the gateway's errors carry.
const OUR_PROXY_STATUS_NAME: &[u8] = b"exitpool";
const PROXY_STATUS: &str = "proxy-status";

/// The members of a structured-field list (RFC 8941 §3.1), trimmed: split at
/// commas outside quoted strings.
fn list_members(value: &[u8]) -> Vec<&[u8]> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, &byte) in value.iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                members.push(value[start..at].trim_ascii());
                start = at + 1;
            }
            _ => {}
        }
    }
    members.push(value[start..].trim_ascii());
    members.retain(|member| !member.is_empty());
    members
}

/// A list member's name: what stands before its first parameter.
fn member_name(member: &[u8]) -> &[u8] {
    let end = member
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(member.len());
    member[..end].trim_ascii()
}

/// A failure talking HTTP to the target after the exit connected: it closed the
/// connection, reset the stream or answered something that is not HTTP.
fn target_failed(error: hyper::Error) -> ProxyError {
    ProxyError::Exit {
        code: FailureCode::Other,
        detail: format!("the target did not give a complete HTTP answer: {error}"),
    }
}

/// Scores the exit once for an exchange lost on its side, whichever hears of
/// it first: hyper hands a failure to the waiting request, to the
/// connection's driver, or (on some paths) to both.
struct LostExchange {
    agent: Arc<Agent>,
    scored: Once,
}

impl LostExchange {
    fn score(&self, error: &hyper::Error, shared: &Shared) {
        if let Some(cause) = io_cause(error) {
            self.scored
                .call_once(|| shared.report_relay_failure(&self.agent, cause));
        }
    }
}

/// The exit stream's own failure under a hyper error, if that is what it was.
fn io_cause(error: &hyper::Error) -> Option<&std::io::Error> {
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cause = error.source();
    }
    None
}

/// Everything the driver task needs to finish one exchange.
struct Exchange {
    /// Meters the exchange and holds the exit's load and the customer's slot
    /// until it is over.
    transfer: Transfer,
    /// The status the customer was answered; dropped unanswered if the request
    /// failed (then the customer connection's "refused" line is the log).
    status: oneshot::Receiver<u16>,
    method: Method,
    idle_timeout: Duration,
    lost: Arc<LostExchange>,
    shared: Arc<Shared>,
}

/// Drives hyper's client connection to the target until the exchange is over,
/// nothing moved for the idle timeout, or the quota ran out; then accounts the
/// bytes and logs the exchange.
async fn drive<C>(connection: C, exchange: Exchange)
where
    C: Future<Output = hyper::Result<()>>,
{
    let Exchange {
        mut transfer,
        status,
        method,
        idle_timeout: idle,
        lost,
        shared,
    } = exchange;
    let mut seen = transfer.total();
    let counters = transfer.counters().clone();
    // Dropping the connection (on idle or at quota) aborts the customer's
    // response body.
    let exchanging = async {
        tokio::pin!(connection);
        loop {
            tokio::select! {
                result = &mut connection => {
                    return result.map_err(|error| {
                        lost.score(&error, &shared);
                        error.to_string()
                    })
                }
                () = tokio::time::sleep(idle) => {
                    let now = counters.total();
                    if now == seen {
                        return Err(format!("idle for {idle:?}"));
                    }
                    seen = now;
                }
            }
        }
    };
    let result = transfer.supervise(exchanging, &shared).await;
    let Ok(status) = status.await else {
        debug!(
            total = transfer.total(),
            cut = result.as_ref().err().is_some_and(|e| e == QUOTA_CUT),
            "exchange ended without an answer"
        );
        // Accounted all the same; the refusal line is the log.
        transfer.finish_unlogged(&result, &shared);
        return;
    };
    transfer.finish(&result, Some((&method, status)), &shared.accounting);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic YTpi"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn a_targets_own_exitpool_headers_and_proxy_status_member_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-exitpool-exit",
            HeaderValue::from_static("0000000000000000"),
        );
        headers.insert("X-Exitpool-Country", HeaderValue::from_static("ZZ"));
        headers.insert("x-exitpoolish", HeaderValue::from_static("kept"));
        headers.append(
            "proxy-status",
            HeaderValue::from_static(
                r#"exitpool; error=dns_error; details="a, b", cdn; error=http_request_error"#,
            ),
        );
        headers.append("proxy-status", HeaderValue::from_static("exitpool"));
        strip_our_headers(&mut headers);
        assert!(headers.get("x-exitpool-exit").is_none());
        assert!(headers.get("x-exitpool-country").is_none());
        assert_eq!(headers["x-exitpoolish"], "kept");
        assert_eq!(headers["proxy-status"], "cdn; error=http_request_error");

        let mut only_ours = HeaderMap::new();
        only_ours.insert(
            "proxy-status",
            HeaderValue::from_static("exitpool; error=x"),
        );
        strip_our_headers(&mut only_ours);
        assert!(only_ours.get("proxy-status").is_none());
    }

    #[test]
    fn targets_come_from_http_uris_only() {
        let parse = |uri: &str| target_of(&uri.parse::<Uri>().unwrap());
        assert_eq!(
            parse("http://Example.com/x").unwrap(),
            (TargetHost::Domain("example.com".into()), 80)
        );
        assert_eq!(
            parse("http://[::1]:8080/").unwrap(),
            (TargetHost::Ip("::1".parse().unwrap()), 8080)
        );
        assert!(matches!(
            parse("https://example.com/"),
            Err(ProxyError::BadRequest(message)) if message.contains("CONNECT")
        ));
        for bad in [
            "/path",
            "ftp://example.com/",
            "http://u:p@example.com/",
            "http://127.1/",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
