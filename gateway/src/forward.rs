//! Plain HTTP proxying on the customer port: absolute-form requests such as
//! `GET http://example.com/path`, any method.
//!
//! Every request is routed on its own: authenticate -> take the target from the
//! URI -> choose an exit and open a relay stream ([`crate::connect::open`]) -> speak
//! HTTP/1.1 to the target over that stream with hyper's client -> stream the answer
//! back with the exit's headers. So a rotating customer gets a new exit per request
//! even on one kept-alive connection, and a sticky session keeps its exit.
//!
//! Hop-by-hop headers are dropped both ways and nothing that reveals the customer is
//! added. Bodies stream through without being buffered whole; hyper re-frames them
//! (chunked or `Content-Length`) on each side.

use crate::connect::Authorized;
use crate::error::ProxyError;
use crate::exit::OpenedExit;
use crate::http::{basic_credentials, exit_headers, Body};
use crate::registry::{Agent, StreamGuard};
use crate::Shared;
use exitpool_protocol::{FailureCode, TargetHost};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tracing::{debug, info, Instrument};

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
/// target's answer, or the failure to present.
pub async fn forward(
    request: Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, ProxyError> {
    let (user, password) = basic_credentials(&request).ok_or(ProxyError::AuthRequired)?;
    let grant = crate::connect::authenticate(&user, &password, shared)?;
    let (host, port) = target_of(request.uri())?;
    let target = format!("{host}:{port}");
    let Authorized { opened, session } = crate::connect::open(&grant, host, port, shared).await?;
    let mut exit_headers = exit_headers(&opened.agent, session.as_ref());
    let OpenedExit {
        agent,
        send,
        recv,
        peer: _,
        guard,
    } = opened;

    let meter = Arc::new(Meter::default());
    let io = Metered {
        inner: tokio::io::join(recv, send),
        meter: meter.clone(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(target_failed)?;
    let (status_tx, status_rx) = oneshot::channel();
    let exchange = Exchange {
        agent: agent.clone(),
        guard,
        meter,
        status: status_rx,
        user: grant.user,
        peer,
        method: request.method().clone(),
        target: target.clone(),
        started,
        idle_timeout: shared.config.idle_timeout,
        shared: shared.clone(),
    };
    let span = tracing::info_span!("forward", exit = %agent.exit_id, %target);
    shared
        .tasks
        .spawn(drive(connection, exchange).instrument(span));

    let response = sender
        .send_request(outbound(request))
        .await
        .map_err(target_failed)?;
    // The connection serves this one exchange and closes once it is over.
    drop(sender);
    let _ = status_tx.send(response.status().as_u16());
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
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
    let host = crate::target::parse_host(bare)
        .map_err(|why| ProxyError::BadTarget(format!("{why} (got {bare:?})")))?;
    let port = match authority.port() {
        None => DEFAULT_HTTP_PORT,
        Some(port) => crate::target::parse_port(port.as_str())
            .ok_or_else(|| ProxyError::BadTarget("port must be 1-65535".into()))?,
    };
    Ok((host, port))
}

/// The request as the target should see it: origin-form, no hop-by-hop headers,
/// a `Host` header (the client's, or the URI's authority when it sent none).
fn outbound(request: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(HOST) {
        if let Some(value) = parts
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        {
            parts.headers.insert(HOST, value);
        }
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

/// A failure talking HTTP to the target after the exit connected: it closed the
/// connection, reset the stream or answered something that is not HTTP.
fn target_failed(error: hyper::Error) -> ProxyError {
    ProxyError::Exit {
        code: FailureCode::Other,
        detail: format!("the target did not give a complete HTTP answer: {error}"),
    }
}

/// Everything the driver task needs to finish one exchange: the stream's load
/// guard, its byte meter and what to write in the access log.
struct Exchange {
    agent: Arc<Agent>,
    /// Keeps the stream counted in the exit's live load until the exchange is over.
    guard: StreamGuard,
    meter: Arc<Meter>,
    /// The status the customer was answered; dropped unanswered if the request
    /// failed (then the customer connection's "refused" line is the log).
    status: oneshot::Receiver<u16>,
    user: String,
    peer: SocketAddr,
    method: Method,
    target: String,
    started: Instant,
    idle_timeout: Duration,
    shared: Arc<Shared>,
}

/// Drives hyper's client connection to the target until the exchange is over (or
/// nothing moved for the idle timeout), then accounts the bytes and logs it.
async fn drive<C>(connection: C, exchange: Exchange)
where
    C: Future<Output = hyper::Result<()>>,
{
    // Boxed, not stack-pinned, so it can be dropped before the accounting below.
    let mut connection = Box::pin(connection);
    let idle = exchange.idle_timeout;
    let mut seen = exchange.meter.total();
    let result = loop {
        tokio::select! {
            result = &mut connection => break result.map_err(|e| e.to_string()),
            () = tokio::time::sleep(idle) => {
                let now = exchange.meter.total();
                if now == seen {
                    break Err(format!("idle for {idle:?}"));
                }
                seen = now;
            }
        }
    };
    // Dropping the connection (on idle) aborts the customer's response body.
    drop(connection);
    drop(exchange.guard);
    let up = exchange.meter.up.load(Ordering::Relaxed);
    let down = exchange.meter.down.load(Ordering::Relaxed);
    let agent = &exchange.agent;
    agent.bytes_up.fetch_add(up, Ordering::Relaxed);
    agent.bytes_down.fetch_add(down, Ordering::Relaxed);
    exchange
        .shared
        .record_transfer(&exchange.user, agent, up, down);
    let Ok(status) = exchange.status.await else {
        debug!(
            bytes_up = up,
            bytes_down = down,
            "exchange ended without an answer"
        );
        return;
    };
    info!(
        user = %exchange.user,
        peer = %exchange.peer,
        method = %exchange.method,
        target = %exchange.target,
        exit = %agent.exit_id,
        country = agent.location.country.as_deref().unwrap_or("??"),
        status,
        bytes_up = up,
        bytes_down = down,
        duration_ms = exchange.started.elapsed().as_millis() as u64,
        result = result.as_ref().err().map(String::as_str).unwrap_or("ok"),
        "access"
    );
}

/// Bytes through one relay stream: heads and bodies, as a CONNECT tunnel counts.
#[derive(Debug, Default)]
struct Meter {
    /// Towards the target.
    up: AtomicU64,
    /// From the target.
    down: AtomicU64,
}

impl Meter {
    fn total(&self) -> u64 {
        self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed)
    }
}

/// The relay stream as hyper's client sees it, counting bytes per read and write.
struct Metered<T> {
    inner: T,
    meter: Arc<Meter>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.meter.down.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.meter.up.fetch_add(written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
