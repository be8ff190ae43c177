//! HTTP/2 on the HTTPS proxy port (ALPN `h2`, RFC 9113), served with the h2
//! crate: every stream is a customer connection of its own, run through the
//! same steps as HTTP/1.1.
//!
//! - `CONNECT host:port` (§8.5): credentials from the stream's
//!   `Proxy-Authorization` -> [`http_connect::open_tunnel`] (authenticate,
//!   target, exit) -> `200` with the exit's headers -> the one metered relay
//!   ([`transfer::relay_halves`]) between the stream and the exit. A failed
//!   relay resets the stream (`CONNECT_ERROR`), as a TCP reset ends an
//!   HTTP/1.1 tunnel; a client's `RST_STREAM` resets the exit's stream.
//! - Any other method with `:scheme http` goes to [`forward`], like an
//!   absolute-form HTTP/1.1 request, and the answer streams back on the stream.
//! - A refusal is the stream's answer, built by [`response::refused`] (status,
//!   `Proxy-Status`, product code, JSON body); the connection's other streams
//!   carry on.
//!
//! # Bounds
//!
//! | what | bound |
//! |---|---|
//! | streams open at once | `--h2-max-streams` (`SETTINGS_MAX_CONCURRENT_STREAMS`, default 100); each also takes a place under `--max-connections`, else it is answered `503 gateway_busy` |
//! | a customer's streams | the account's `max_connections` counts each stream ([`session::open`]) |
//! | request head | [`http::MAX_HEAD_BYTES`] of header list (`SETTINGS_MAX_HEADER_LIST_SIZE`), also across CONTINUATION frames |
//! | bytes the client may send ahead | [`STREAM_WINDOW`] per stream, [`CONNECTION_WINDOW`] per connection |
//! | bytes queued towards the client | [`SEND_BUFFER`] per stream |
//! | streams reset before they were accepted | [`MAX_PENDING_RESETS`]; past it h2 closes the connection (`ENHANCE_YOUR_CALM`) |
//! | streams reset by the client before their answer | [`MAX_CANCELLED`] per [`CANCEL_WINDOW`]; past it the connection is closed (`GOAWAY ENHANCE_YOUR_CALM`) |
//! | streams the client makes the gateway reset (protocol errors) | [`MAX_LOCAL_RESETS`]; past it h2 closes the connection |
//! | handshake and first stream | the head's deadline, counted from accept |
//! | a connection with no stream | closed (`GOAWAY`) after `head_timeout`, as an idle HTTP/1.1 connection is |
//!
//! So a misbehaving client (rapid reset, a CONTINUATION flood, a window it
//! never opens) loses its connection, and holds no more than that many
//! HTTP/1.1 connections would.

use super::response::{self, basic_credentials, exit_headers, Body};
use super::session::{Arrival, Refusal};
use super::transfer::{self, AccessContext};
use super::{forward, http, http_connect};
use crate::abuse::AddressSlot;
use crate::error::ProxyError;
use crate::shared::Shared;
use bytes::Bytes;
use exitpool_transport::tcp::{TcpRecv, TcpSend};
use exitpool_transport::TunnelSend;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use hyper::header::{HeaderMap, HeaderValue, COOKIE};
use hyper::{Method, Request, Response, Version};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info_span, Instrument};

/// Bytes a client may send on one stream before the gateway has taken them:
/// a relay's few chunks, so one stream moves at full speed.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Bytes a client may send on all its streams together before the gateway
/// has taken them: what one connection can make the gateway hold.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Bytes queued towards the client per stream (h2 asks the exit side for no
/// more): one relay chunk, what an HTTP/1.1 tunnel holds in flight.
pub const SEND_BUFFER: usize = exitpool_transport::relay::RELAY_CHUNK;
/// Streams the client may reset before the gateway accepted them (h2's
/// defence against "rapid reset", CVE-2023-44487).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the client may reset while the gateway was still answering them
/// (credentials checked, an exit opened for nothing), per [`CANCEL_WINDOW`].
/// A browser cancels a few on navigation; a flood is an attack.
pub const MAX_CANCELLED: u32 = 100;
/// The window [`MAX_CANCELLED`] counts in.
pub const CANCEL_WINDOW: Duration = Duration::from_secs(10);
/// Streams the gateway may reset for the client's protocol errors before the
/// connection is closed.
pub const MAX_LOCAL_RESETS: usize = 256;

/// Whether the TLS handshake chose HTTP/2.
pub(crate) fn negotiated(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(crate::customer_tls::ALPN_H2)
}

/// What one connection's streams share.
struct Streams {
    /// `--max-connections`: a place per stream.
    places: Arc<Semaphore>,
    /// Streams the client cancelled in the current window: (window start, count).
    cancels: Mutex<(Instant, u32)>,
    /// Wakes the connection to close it once the client cancels too many.
    too_many_cancelled: Notify,
    /// When the last stream ended, so an idle connection is timed from then.
    last_ended: Mutex<Instant>,
    /// Streams being served now.
    live: tokio_util::task::TaskTracker,
}

impl Streams {
    /// Counts a stream the client reset before its answer; wakes the
    /// connection once the window holds more than [`MAX_CANCELLED`].
    fn cancelled(&self) {
        let mut window = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(window.0) > CANCEL_WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
        if window.1 > MAX_CANCELLED {
            self.too_many_cancelled.notify_one();
        }
    }

    fn ended(&self) {
        *self.last_ended.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// Serves one HTTP/2 connection: its handshake by `deadline`, then each
/// stream in a task of its own until the client leaves, the connection idles
/// for `head_timeout`, or the gateway shuts down (after `shutdown_grace`).
pub(crate) async fn serve(
    stream: TlsStream<TcpStream>,
    arrival: Arrival,
    pending: Arc<AddressSlot>,
    deadline: tokio::time::Instant,
    places: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(shared.config.h2_max_streams)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(http::MAX_HEAD_BYTES as u32)
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS));
    let mut connection =
        match tokio::time::timeout_at(deadline, builder.handshake::<_, Bytes>(stream)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return debug!(%error, "HTTP/2 handshake failed"),
            Err(_) => return debug!("no HTTP/2 preface within the head timeout"),
        };
    let idle_after = shared.config.head_timeout;
    // The first stream is due by the head's deadline, as a first head is:
    // the connection counts as quiet since accept.
    let accepted = deadline.into_std().checked_sub(idle_after);
    let streams = Arc::new(Streams {
        places,
        cancels: Mutex::new((Instant::now(), 0)),
        too_many_cancelled: Notify::new(),
        last_ended: Mutex::new(accepted.unwrap_or_else(Instant::now)),
        live: tokio_util::task::TaskTracker::new(),
    });
    let mut idle_check = deadline;
    // Once closing: when the streams left are cut off.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let cut_off = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    shared.accounting.metrics.customer_h2_streams.inc();
                    let id = u32::from(respond.stream_id());
                    let span = info_span!("h2", stream = id, user = tracing::field::Empty);
                    let task = serve_stream(
                        request,
                        respond,
                        streams.clone(),
                        arrival.clone(),
                        pending.clone(),
                        shared.clone(),
                    );
                    shared
                        .lifecycle.tasks
                        .spawn(streams.live.track_future(task.instrument(span)));
                }
                Some(Err(error)) => return debug!(%error, "HTTP/2 connection ended with an error"),
                None => return debug!("HTTP/2 connection closed"),
            },
            () = tokio::time::sleep_until(idle_check), if closing.is_none() => {
                let since = *streams.last_ended.lock().unwrap_or_else(|e| e.into_inner());
                let quiet_until = tokio::time::Instant::from_std(since + idle_after);
                if streams.live.is_empty() && quiet_until <= tokio::time::Instant::now() {
                    debug!("HTTP/2 connection idle; closing");
                    connection.graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + shared.config.shutdown_grace);
                } else {
                    idle_check = quiet_until.max(tokio::time::Instant::now() + idle_after / 4);
                }
            }
            () = streams.too_many_cancelled.notified(), if closing.is_none() => {
                tracing::info!(
                    limit = MAX_CANCELLED,
                    "closed an HTTP/2 connection: too many streams reset before their answer"
                );
                connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                closing = Some(tokio::time::Instant::now() + shared.config.shutdown_grace);
            }
            () = shared.lifecycle.shutdown.cancelled(), if closing.is_none() => {
                connection.graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + shared.config.shutdown_grace);
            }
            () = cut_off => return debug!("HTTP/2 streams cut off after the grace period"),
        }
    }
}

/// Serves one stream: a place under `--max-connections`, then `CONNECT` or a
/// plain-HTTP request, abandoned (and counted) if the client resets it first.
async fn serve_stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    streams: Arc<Streams>,
    arrival: Arrival,
    pending: Arc<AddressSlot>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let target = request.uri().to_string();
    let Ok(_place) = streams.places.clone().try_acquire_owned() else {
        let refusal = Refusal::from(ProxyError::GatewayBusy);
        response::log_refusal(&target, &refusal, started);
        answer(respond, response::refused(&refusal)).await;
        streams.ended();
        return;
    };
    if request.method() == Method::CONNECT {
        connect(
            request, respond, &streams, &arrival, &pending, started, &shared,
        )
        .await;
    } else {
        let request = join_cookies(request.map(StreamBody));
        let forwarded = forward::forward(request, &arrival, &pending, started, &shared);
        match until_reset(&mut respond, forwarded).await {
            None => streams.cancelled(),
            Some(Ok(forwarded)) => answer(respond, forwarded).await,
            Some(Err(refusal)) => {
                response::log_refusal(&target, &refusal, started);
                answer(respond, response::refused(&refusal)).await;
            }
        }
    }
    streams.ended();
}

/// One `CONNECT` stream: the tunnel opened as for HTTP/1.1, then relayed.
async fn connect(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    streams: &Streams,
    arrival: &Arrival,
    pending: &AddressSlot,
    started: Instant,
    shared: &Arc<Shared>,
) {
    // h2 has checked that a `CONNECT` carries `:authority` and nothing else.
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let credentials = basic_credentials(&request);
    let opening = http_connect::open_tunnel(credentials, &authority, arrival, pending, shared);
    let (authorized, user) = match until_reset(&mut respond, opening).await {
        None => return streams.cancelled(),
        Some(Err(refusal)) => {
            response::log_refusal(&authority, &refusal, started);
            return answer(respond, response::refused(&refusal)).await;
        }
        Some(Ok(opened)) => opened,
    };
    let mut head = Response::new(());
    head.headers_mut().extend(exit_headers(
        &authorized.agent,
        authorized.session.as_ref(),
        authorized.attempts,
    ));
    let send = match respond.send_response(head, false) {
        Ok(send) => send,
        // The exit's stream is reset as `authorized` is dropped.
        Err(error) => return debug!(%error, "customer stream gone before the tunnel's answer"),
    };
    let (mut send, mut recv) = (TcpSend::opened(send), TcpRecv::body(request.into_body()));
    let context = AccessContext {
        user,
        peer: arrival.peer,
        target: authority,
        started,
        protocol: "connect",
    };
    let relayed = transfer::relay_halves(
        &mut recv,
        &mut send,
        Bytes::new(),
        authorized,
        context,
        shared,
    )
    .await;
    if relayed.is_err() {
        // RFC 9113 §8.5: a tunnel that failed ends in CONNECT_ERROR, never
        // in an end of data the client could take for the whole answer.
        send.reset(u32::from(Reason::CONNECT_ERROR));
    }
}

/// Runs `work` unless the client resets the stream first (`None`): nothing is
/// answered then, and dropping `work` gives back what it held.
async fn until_reset<T>(
    respond: &mut SendResponse<Bytes>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        _ = poll_fn(|cx| respond.poll_reset(cx)) => None,
    }
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2); an HTTP/1.1 answer may carry them
/// (a refusal's `Connection: close`).
const CONNECTION_SPECIFIC: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Sends `response` on the stream: the head, then its body as the stream's
/// windows allow. A body that fails (the exit lost, the quota spent) resets
/// the stream, so the client never takes a cut answer for a whole one.
async fn answer(mut respond: SendResponse<Bytes>, response: Response<Body>) {
    let (mut parts, mut body) = response.into_parts();
    for name in CONNECTION_SPECIFIC {
        parts.headers.remove(*name);
    }
    parts.version = Version::HTTP_2;
    let end = body.is_end_stream();
    let send = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) => send,
        Err(error) => return debug!(%error, "answer not sent: the stream is gone"),
    };
    if end {
        return;
    }
    let mut send = TcpSend::opened(send);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The client reset the stream: dropping the body ends the exchange.
            () = send.stopped() => return,
        };
        match frame {
            None => {
                let _ = send.finish();
                return;
            }
            Some(Err(error)) => {
                debug!(%error, "answer cut short");
                return send.reset(u32::from(Reason::INTERNAL_ERROR));
            }
            // Trailers are not passed on (HTTP/1.1 targets seldom send them).
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if send.write_chunk(data).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// An HTTP/2 request may split `Cookie` into several fields (RFC 9113
/// §8.2.3); an HTTP/1.1 target gets them joined into one.
fn join_cookies<B>(mut request: Request<B>) -> Request<B> {
    let headers: &mut HeaderMap = request.headers_mut();
    let cookies: Vec<&str> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if cookies.len() > 1 {
        if let Ok(joined) = HeaderValue::from_str(&cookies.join("; ")) {
            headers.insert(COOKIE, joined);
        }
    }
    request
}

/// A request body arriving on an HTTP/2 stream, as hyper's client sends it
/// on to the target. Each frame's bytes go back to the client's window as
/// hyper takes them, so hyper's pace (the exit's) is the client's.
struct StreamBody(RecvStream);

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let polled = ready!(self.0.poll_data(cx));
        Poll::Ready(polled.map(|data| {
            let data = data?;
            let _ = self.0.flow_control().release_capacity(data.len());
            Ok(Frame::data(data))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookies_are_joined_for_the_target() {
        let request = Request::builder()
            .header(COOKIE, "a=1")
            .header(COOKIE, "b=2")
            .body(())
            .unwrap();
        let request = join_cookies(request);
        let cookies: Vec<_> = request.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }
}
