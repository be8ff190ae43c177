//! The tunnel interface ([`crate::tunnel`]) over one TLS 1.3 connection on TCP,
//! for networks that block or throttle UDP: HTTP/2 frames (the `h2` crate) carry
//! the control stream and one stream per customer connection. Never QUIC inside
//! TCP: two reliable layers retransmitting over each other melt down under loss.
//!
//! Roles: one end opens the streams and is the HTTP/2 client ([`opening_end`]),
//! the other answers them as the HTTP/2 server ([`answering_end`]), whichever
//! end dialled. On an agent tunnel the agent dials and is the TLS client, but
//! the gateway opens the streams (as with QUIC, where it opens every relay
//! stream); on a peer link between gateways the dialling gateway opens them.
//! The opener's first stream is the control stream; each later one is a relay
//! stream, answered with headers (which leave with its first frame) so both
//! directions carry raw bytes.
//! No HTTP semantics ride on it beyond that.
//!
//! What HTTP/2 gives, and why h2 rather than yamux (see the README): flow
//! control per stream *and* per connection, with the window released only when
//! the relay has taken the bytes (so a never-reading customer pushes back to the
//! exit instead of filling memory); half-close as END_STREAM; resets with a code
//! as RST_STREAM; a bounded send buffer per stream; a stream limit the receiver
//! sets; and PING for keep-alives.
//!
//! A tunnel is driven by one task (see [`opening_end`] and [`answering_end`]),
//! which also pings every keep-alive interval and closes the tunnel when a ping
//! is not answered within the idle timeout, like QUIC's idle timeout. The same
//! task sends the PINGs asked for on demand ([`TcpTunnel::ping`]): h2 allows
//! one in flight, so one task owns its `PingPong`.
//!
//! Close codes (said here of an agent tunnel; a peer link's ends do the same):
//! the agent, as HTTP/2 server, sends its code in GOAWAY. h2's
//! client has no GOAWAY to send, so the gateway opens a *close stream* first
//! (path [`CLOSE_PATH`], before the control stream) and, when it closes the
//! tunnel, ends that stream with trailers carrying the code and reason
//! ([`CLOSE_CODE_HEADER`], [`CLOSE_REASON_HEADER`]). HEADERS frames are not
//! flow-controlled, so the code goes out even when every window is full. The
//! agent's driver keeps that stream to itself and reports the code as
//! [`CloseReason::Peer`], exactly as QUIC's application close does.

use crate::tunnel::{
    CloseReason, ExportError, Transport, TunnelConnection, TunnelRecv, TunnelSend,
};
use bytes::{Bytes, BytesMut};
use h2::Reason;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// ALPN of the TCP tunnel: the same messages as QUIC's `exitpool/1`, framed
/// in HTTP/2 streams.
pub const ALPN: &[u8] = b"exitpool-tcp/1";

/// Largest HTTP/2 frame either side accepts: one relay chunk
/// ([`crate::relay::RELAY_CHUNK`]) per frame, and a bound on what one frame
/// makes the reader buffer.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// Largest header block accepted; ours are a few dozen bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 4 * 1024;

/// Most unsent bytes one stream may hold in h2's send buffer beyond the
/// peer's window.
pub const MAX_SEND_BUFFER: usize = 256 * 1024;

/// Largest first frame a new stream queues without send capacity. h2 grants
/// none until the stream's HEADERS are out, so waiting for it would send a
/// stream's opening message (`Open`, a few dozen bytes) in a write, a TLS
/// record and a wake-up of the peer of its own.
const FIRST_FRAME_UNRESERVED: usize = 4 * 1024;

/// How long a closing side keeps driving the connection so what it queued last
/// (a `Reject`, a GOAWAY) reaches the peer, unless the peer closes first.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Path of the gateway's close stream (see the module doc); relay and control
/// streams use `/`.
pub const CLOSE_PATH: &str = "/close";

/// Trailer of the close stream with the gateway's close code, in decimal.
pub const CLOSE_CODE_HEADER: &str = "exitpool-close-code";

/// Trailer of the close stream with the close reason, printable ASCII.
pub const CLOSE_REASON_HEADER: &str = "exitpool-close-reason";

/// Longest close reason sent or kept; ours are a few words.
pub const MAX_CLOSE_REASON: usize = 256;

/// On-demand pings waiting for the driver; callers beyond this wait their turn.
const PING_QUEUE: usize = 64;

/// What a TCP tunnel is configured with; windows are [`crate::udp`]'s, shared
/// with QUIC.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    /// Most streams the peer may open towards us at once (the agent: its
    /// capacity plus the control stream, to which the agent's side adds the
    /// close stream; the gateway: none are opened to it).
    pub max_incoming_streams: u32,
    /// Period of this side's PINGs.
    pub keep_alive: Duration,
    /// A PING unanswered this long ends the tunnel.
    pub idle_timeout: Duration,
    /// Connection receive window until [`TunnelConnection::admitted`]: what a
    /// peer not yet known may make us buffer.
    pub initial_connection_window: u32,
    /// Answering end: most streams a peer not yet admitted may open (more are
    /// refused, so it cannot hold h2 state for thousands); `None` for no limit
    /// but `max_incoming_streams` (an end that never calls `admitted`).
    pub streams_before_admitted: Option<u32>,
    /// Most HTTP/2 frames a peer not yet admitted may send before the
    /// connection is closed, which also closes at the first PING
    /// acknowledgement it was not asked for (see [`FrameGate`]); `None` for an
    /// end that trusts its peer already (an agent, which checked the
    /// gateway's pin) and never calls `admitted`.
    pub frames_before_admitted: Option<u32>,
}

/// A TLS connection over TCP, either side of the handshake.
pub type Io = tokio_rustls::TlsStream<TcpStream>;

/// One TCP tunnel, either end. Cheap to clone; the tunnel lives while its
/// driver task does, and is closed (code 0) when the last clone is dropped,
/// as a QUIC connection is: a tunnel nobody holds must not live on answering
/// pings.
#[derive(Clone)]
pub struct TcpTunnel {
    inner: Arc<Inner>,
    _held: Arc<CloseWhenDropped>,
}

/// Dropped with the last [`TcpTunnel`] handle: asks the driver to close.
struct CloseWhenDropped(Arc<Inner>);

impl Drop for CloseWhenDropped {
    fn drop(&mut self) {
        self.0.request_close(0, b"");
    }
}

impl TcpTunnel {
    fn new(inner: Arc<Inner>) -> TcpTunnel {
        TcpTunnel {
            _held: Arc::new(CloseWhenDropped(inner.clone())),
            inner,
        }
    }
}

impl std::fmt::Debug for TcpTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTunnel")
            .field("remote", &self.inner.remote)
            .field("closed", &self.inner.reason.get())
            .finish()
    }
}

struct Inner {
    remote: SocketAddr,
    /// The TLS connection, shared with h2's I/O only for keying-material export.
    tls: Arc<Mutex<Io>>,
    role: Role,
    /// Fires once the driver has ended.
    closed: CancellationToken,
    reason: OnceLock<CloseReason>,
    /// The peer's close reason text, when its close said one (agent side).
    peer_reason: OnceLock<String>,
    /// A local close asked for (code, reason), picked up by the driver.
    close_request: Mutex<Option<(u32, Bytes)>>,
    close_notify: Notify,
    /// Asks the driver to open the connection window to the full size.
    admit: Notify,
    /// Shared with the read side's [`FrameGate`].
    admission: Arc<Admission>,
    /// On-demand pings for the driver, each answered once a PONG is back.
    pings: mpsc::Sender<oneshot::Sender<()>>,
}

enum Role {
    /// HTTP/2 client: opens the control stream and every relay stream.
    Opener {
        requests: h2::client::SendRequest<Bytes>,
    },
    /// HTTP/2 server: streams the opener opened, in order.
    Answerer {
        incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    },
}

type Incoming = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
);

type PingAsks = mpsc::Receiver<oneshot::Sender<()>>;

impl Inner {
    fn new(
        remote: SocketAddr,
        tls: Arc<Mutex<Io>>,
        admission: Arc<Admission>,
        role: Role,
    ) -> (Arc<Inner>, PingAsks) {
        let (pings, asks) = mpsc::channel(PING_QUEUE);
        let inner = Arc::new(Inner {
            remote,
            tls,
            role,
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
            peer_reason: OnceLock::new(),
            close_request: Mutex::new(None),
            close_notify: Notify::new(),
            admit: Notify::new(),
            admission,
            pings,
        });
        (inner, asks)
    }

    fn end(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.closed.cancel();
    }

    /// Asks the driver to close with `code` and `reason`; the first ask wins.
    fn request_close(&self, code: u32, reason: &[u8]) {
        lock(&self.close_request).get_or_insert_with(|| (code, Bytes::copy_from_slice(reason)));
        self.close_notify.notify_one();
    }

    async fn close_requested(&self) -> (u32, Bytes) {
        loop {
            let notified = self.close_notify.notified();
            if let Some(request) = lock(&self.close_request).clone() {
                return request;
            }
            notified.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// h2's I/O: the TLS stream behind a mutex that only keying-material export
/// contends for, so export works while h2 owns the connection; until the peer
/// is admitted, its bytes pass a [`FrameGate`] first.
struct SharedIo {
    tls: Arc<Mutex<Io>>,
    gate: Option<FrameGate>,
    /// Where reads that brought bytes are counted.
    admission: Arc<Admission>,
}

impl AsyncRead for SharedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut *lock(&self.tls)).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.admission.received.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(gate) = &mut self.gate {
            if gate.ended() {
                self.gate = None;
            } else if let Err(abuse) = gate.inspect(&buf.filled()[before..]) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, abuse)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.tls)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.tls)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.tls).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.tls)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.tls)).poll_shutdown(cx)
    }
}

/// What a gated end and its driver share: whether the peer has been admitted,
/// and how many PINGs this end has sent (each may be acknowledged once); and
/// how many reads brought bytes from the peer (the tunnel's
/// `packets_received`).
#[derive(Debug, Default)]
struct Admission {
    admitted: AtomicBool,
    pings_sent: AtomicU32,
    received: AtomicU64,
}

/// Reads the HTTP/2 frame headers a peer sends before it is admitted, as the
/// bytes pass on to h2, and refuses what an honest peer never sends there:
/// more than its frame budget (a WINDOW_UPDATE or stream-open flood costs CPU
/// per frame) or a PING acknowledgement this end did not ask for (h2 would log
/// each one). A refusal is a read error, so h2 never sees the frame and the
/// connection ends. Once the peer is admitted the gate steps aside.
#[derive(Debug)]
struct FrameGate {
    admission: Arc<Admission>,
    /// Bytes of the client connection preface still to pass (answering end).
    preface_left: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    payload_left: usize,
    frames_left: u32,
    acks_seen: u32,
}

/// An HTTP/2 frame header: length (3), type, flags, stream id (4).
const FRAME_HEADER: usize = 9;
/// RFC 9113 §3.4: the client's 24-byte preface before its first frame.
const CLIENT_PREFACE: usize = 24;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

impl FrameGate {
    fn new(admission: Arc<Admission>, frames: u32, answering: bool) -> FrameGate {
        FrameGate {
            admission,
            preface_left: if answering { CLIENT_PREFACE } else { 0 },
            header: [0; FRAME_HEADER],
            header_len: 0,
            payload_left: 0,
            frames_left: frames,
            acks_seen: 0,
        }
    }

    fn ended(&self) -> bool {
        self.admission.admitted.load(Ordering::Relaxed)
    }

    /// Follows the frame boundaries through `bytes`.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !bytes.is_empty() {
            if self.preface_left > 0 || self.payload_left > 0 {
                let skipped = if self.preface_left > 0 {
                    let n = self.preface_left.min(bytes.len());
                    self.preface_left -= n;
                    n
                } else {
                    let n = self.payload_left.min(bytes.len());
                    self.payload_left -= n;
                    n
                };
                bytes = &bytes[skipped..];
                continue;
            }
            let n = (FRAME_HEADER - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER {
                self.header_len = 0;
                self.frame()?;
            }
        }
        Ok(())
    }

    /// One whole frame header.
    fn frame(&mut self) -> Result<(), &'static str> {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.frames_left = self
            .frames_left
            .checked_sub(1)
            .ok_or("too many HTTP/2 frames before the peer proved itself")?;
        if kind == PING && flags & ACK != 0 {
            self.acks_seen += 1;
            if self.acks_seen > self.admission.pings_sent.load(Ordering::Relaxed) {
                return Err("a PING acknowledgement that was never asked for");
            }
        }
        Ok(())
    }
}

/// h2's I/O for `tls`, behind a [`FrameGate`] when `settings` ask for one.
fn gated(
    tls: &Arc<Mutex<Io>>,
    settings: &TcpSettings,
    answering: bool,
) -> (SharedIo, Arc<Admission>) {
    let admission = Arc::new(Admission::default());
    let gate = settings
        .frames_before_admitted
        .map(|frames| FrameGate::new(admission.clone(), frames, answering));
    let io = SharedIo {
        tls: tls.clone(),
        gate,
        admission: admission.clone(),
    };
    (io, admission)
}

fn remote_of(io: &Io) -> io::Result<SocketAddr> {
    io.get_ref().0.peer_addr()
}

/// The end that opens the streams (the gateway of an agent tunnel, the dialling
/// gateway of a peer link), once the TLS handshake is done: the HTTP/2
/// handshake as client, then a driver task.
pub async fn opening_end(io: impl Into<Io>, settings: TcpSettings) -> io::Result<TcpTunnel> {
    let io = io.into();
    let remote = remote_of(&io)?;
    let tls = Arc::new(Mutex::new(io));
    let (io, admission) = gated(&tls, &settings, false);
    let (requests, mut connection) = h2::client::Builder::new()
        .initial_window_size(crate::udp::STREAM_WINDOW)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(settings.max_incoming_streams)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(h2_to_io)?;
    let ping = connection.ping_pong();
    // The close stream, first; its response is never needed.
    let mut close_stream = {
        let mut ready = requests.clone().ready().await.map_err(h2_to_io)?;
        let (_response, send) = ready
            .send_request(stream_request(CLOSE_PATH), false)
            .map_err(h2_to_io)?;
        send
    };
    let (inner, asks) = Inner::new(remote, tls, admission, Role::Opener { requests });
    let driver = inner.clone();
    tokio::spawn(async move {
        let keep_alive = keep_alive(ping, settings, asks, driver.admission.clone());
        tokio::pin!(keep_alive);
        let reason = loop {
            tokio::select! {
                result = &mut connection => break connection_end(result),
                reason = &mut keep_alive => break reason,
                () = driver.admit.notified() => {
                    connection.set_target_window_size(crate::udp::CONNECTION_WINDOW);
                }
                (code, reason) = driver.close_requested() => {
                    // Best effort: a peer already gone has no use for it.
                    let _ = close_stream.send_trailers(close_trailers(code, &reason));
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut connection).await;
                    break CloseReason::Local(code);
                }
            }
        };
        driver.end(reason);
    });
    Ok(TcpTunnel::new(inner))
}

/// The close stream's trailers: `code`, and `reason` cut to printable ASCII.
fn close_trailers(code: u32, reason: &[u8]) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert(CLOSE_CODE_HEADER, http::HeaderValue::from(code));
    let printable: Vec<u8> = reason
        .iter()
        .take(MAX_CLOSE_REASON)
        .map(|&byte| {
            if (b' '..=b'~').contains(&byte) {
                byte
            } else {
                b'?'
            }
        })
        .collect();
    if let Ok(value) = http::HeaderValue::from_bytes(&printable) {
        trailers.insert(CLOSE_REASON_HEADER, value);
    }
    trailers
}

/// The code and reason in a close stream's trailers; `None` for anything else
/// (a garbled code is no close code).
fn parse_close(trailers: &http::HeaderMap) -> Option<(u32, String)> {
    let code = trailers
        .get(CLOSE_CODE_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let reason = trailers
        .get(CLOSE_REASON_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(MAX_CLOSE_REASON)
        .collect();
    Some((code, reason))
}

/// Resolves with the gateway's close once the close stream's trailers arrive;
/// `None` when the stream ends without one (it is then no longer watched).
/// Cancel-safe: it only polls.
async fn close_from(body: &mut Option<h2::RecvStream>) -> Option<(u32, String)> {
    let stream = body.as_mut()?;
    match poll_fn(|cx| stream.poll_trailers(cx)).await {
        Ok(Some(trailers)) => parse_close(&trailers),
        _ => None,
    }
}

/// The end that answers the streams (the agent of an agent tunnel, the dialled
/// gateway of a peer link), once the TLS handshake is done: the HTTP/2
/// handshake as server, then a driver task.
pub async fn answering_end(io: impl Into<Io>, settings: TcpSettings) -> io::Result<TcpTunnel> {
    let io = io.into();
    let remote = remote_of(&io)?;
    let tls = Arc::new(Mutex::new(io));
    let (io, admission) = gated(&tls, &settings, true);
    let mut connection = h2::server::Builder::new()
        .initial_window_size(crate::udp::STREAM_WINDOW)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        // One more for the gateway's close stream.
        .max_concurrent_streams(settings.max_incoming_streams.saturating_add(1))
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_to_io)?;
    let ping = connection.ping_pong();
    // h2 admits no more than `max_incoming_streams` at once, so this bound is
    // never what refuses one.
    let (queue, incoming) = mpsc::channel(settings.max_incoming_streams.max(1) as usize);
    let (inner, asks) = Inner::new(
        remote,
        tls,
        admission,
        Role::Answerer {
            incoming: tokio::sync::Mutex::new(incoming),
        },
    );
    let driver = inner.clone();
    tokio::spawn(async move {
        let keep_alive = keep_alive(ping, settings, asks, driver.admission.clone());
        tokio::pin!(keep_alive);
        // The gateway's close stream, once it has arrived: its trailers carry
        // the close code. (Its answer half is held so h2 keeps it open.)
        let mut close_stream: Option<h2::RecvStream> = None;
        let mut _close_respond = None;
        // Streams the peer may still open before it is admitted.
        let mut unadmitted_room = settings.streams_before_admitted;
        let reason = loop {
            tokio::select! {
                accepted = connection.accept() => match accepted {
                    Some(Ok((request, respond))) if request.uri().path() == CLOSE_PATH => {
                        if close_stream.is_none() {
                            close_stream = Some(request.into_body());
                            _close_respond = Some(respond);
                        }
                    }
                    Some(Ok((_, mut respond))) if unadmitted_room == Some(0) => {
                        respond.send_reset(Reason::REFUSED_STREAM);
                    }
                    Some(Ok(stream)) => {
                        if let Some(room) = &mut unadmitted_room {
                            *room -= 1;
                        }
                        if let Err(mpsc::error::TrySendError::Full((_, mut respond))) = queue.try_send(stream) {
                            respond.send_reset(Reason::REFUSED_STREAM);
                        }
                    }
                    Some(Err(error)) => break connection_end(Err(error)),
                    None => break CloseReason::Peer(None),
                },
                closing = close_from(&mut close_stream), if close_stream.is_some() => {
                    close_stream = None;
                    let Some((code, reason)) = closing else { continue };
                    // The gateway waits for this side to end the connection;
                    // what it sent before (a `Reject`) stays readable.
                    let _ = driver.peer_reason.set(reason);
                    connection.abrupt_shutdown(Reason::NO_ERROR);
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        while let Some(Ok(_)) = connection.accept().await {}
                    })
                    .await;
                    break CloseReason::Peer(Some(code));
                }
                reason = &mut keep_alive => break reason,
                () = driver.admit.notified() => {
                    connection.set_target_window_size(crate::udp::CONNECTION_WINDOW);
                    unadmitted_room = None;
                }
                (code, _) = driver.close_requested() => {
                    connection.abrupt_shutdown(Reason::from(code));
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        while let Some(Ok(_)) = connection.accept().await {}
                    })
                    .await;
                    break CloseReason::Local(code);
                }
            }
        };
        driver.end(reason);
    });
    Ok(TcpTunnel::new(inner))
}

/// Pings every `keep_alive`, and at once when asked through `asks`; resolves
/// when a ping goes unanswered for the idle timeout (or pings can no longer be
/// sent). h2 allows one PING in flight, so asks that come while one is out
/// share its PONG.
async fn keep_alive(
    ping: Option<h2::PingPong>,
    settings: TcpSettings,
    mut asks: PingAsks,
    admission: Arc<Admission>,
) -> CloseReason {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    let mut waiting = Vec::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.keep_alive) => {}
            Some(ask) = asks.recv() => waiting.push(ask),
        }
        // Counted before it leaves: its acknowledgement may be read first.
        admission.pings_sent.fetch_add(1, Ordering::Relaxed);
        let answered = tokio::time::timeout(settings.idle_timeout, async {
            let pong = ping.ping(h2::Ping::opaque());
            tokio::pin!(pong);
            loop {
                tokio::select! {
                    result = &mut pong => return result,
                    Some(ask) = asks.recv() => waiting.push(ask),
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(_pong)) => {
                for ask in waiting.drain(..) {
                    let _ = ask.send(());
                }
            }
            Ok(Err(error)) => return connection_end(Err(error)),
            Err(_) => return CloseReason::TimedOut,
        }
    }
}

fn connection_end(result: Result<(), h2::Error>) -> CloseReason {
    match result {
        Ok(()) => CloseReason::Peer(None),
        Err(error) if error.is_go_away() && error.is_remote() => {
            CloseReason::Peer(error.reason().map(u32::from))
        }
        Err(error)
            if error
                .get_io()
                .is_some_and(|cause| cause.kind() == io::ErrorKind::ConnectionReset) =>
        {
            CloseReason::Reset(error.to_string())
        }
        Err(error) => CloseReason::Lost(error.to_string()),
    }
}

/// An h2 error as the `io::Error` the relay and the framing expect, with
/// quinn's kinds: a stream reset is `ConnectionReset` (with its code), the
/// tunnel itself gone (its TCP connection failed, or GOAWAY) `NotConnected`,
/// so the gateway tells an exit passing on a target's reset from a lost exit
/// alike on both transports.
fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() || error.is_go_away() {
        return io::Error::new(io::ErrorKind::NotConnected, error.to_string());
    }
    match error.reason() {
        Some(reason) if error.is_reset() => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by peer (code {})", u32::from(reason)),
        ),
        _ => io::Error::new(io::ErrorKind::BrokenPipe, error.to_string()),
    }
}

/// A stream's request: `/` for control and relay streams, [`CLOSE_PATH`] for
/// the close stream.
fn stream_request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://exitpool{path}"))
        .body(())
        .expect("static request")
}

impl TcpTunnel {
    async fn open(&self) -> io::Result<(TcpSend, TcpRecv)> {
        let Role::Opener { requests } = &self.inner.role else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only the opening end opens streams",
            ));
        };
        let mut requests = requests.clone().ready().await.map_err(h2_to_io)?;
        let (response, send) = requests
            .send_request(stream_request("/"), false)
            .map_err(h2_to_io)?;
        Ok((
            TcpSend {
                state: SendState::Open(send),
                fresh: true,
            },
            TcpRecv {
                state: RecvState::Response(response),
                pending: Bytes::new(),
            },
        ))
    }

    async fn accept(&self) -> io::Result<(TcpSend, TcpRecv)> {
        let Role::Answerer { incoming } = &self.inner.role else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only the answering end accepts streams",
            ));
        };
        let next = tokio::select! {
            next = async { incoming.lock().await.recv().await } => next,
            () = self.inner.closed.cancelled() => None,
        };
        let Some((request, respond)) = next else {
            // Worded as quinn words an application close, so agent logs read
            // the same on both transports.
            let message = match (self.close_reason(), self.inner.peer_reason.get()) {
                (Some(CloseReason::Peer(Some(code))), Some(why)) if !why.is_empty() => {
                    format!("closed by peer: {why} (code {code})")
                }
                (Some(reason), _) => reason.to_string(),
                (None, _) => "tunnel closed".to_owned(),
            };
            return Err(io::Error::new(io::ErrorKind::NotConnected, message));
        };
        Ok((
            TcpSend {
                state: SendState::Unanswered(respond),
                fresh: false,
            },
            TcpRecv {
                state: RecvState::Body(request.into_body()),
                pending: Bytes::new(),
            },
        ))
    }
}

impl TcpTunnel {
    /// Whether the peer answers an HTTP/2 PING: for a liveness check while a
    /// customer waits, since a frozen peer's kernel still acknowledges TCP.
    /// `false` once the tunnel has ended; the caller bounds the wait.
    pub async fn ping(&self) -> bool {
        let (answer, answered) = oneshot::channel();
        tokio::select! {
            asked = self.inner.pings.send(answer) => if asked.is_err() {
                return false;
            },
            () = self.inner.closed.cancelled() => return false,
        }
        tokio::select! {
            pong = answered => pong.is_ok(),
            () = self.inner.closed.cancelled() => false,
        }
    }
}

impl TunnelConnection for TcpTunnel {
    type Send = TcpSend;
    type Recv = TcpRecv;

    fn transport(&self) -> Transport {
        Transport::Tcp
    }

    async fn open_stream(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.open().await
    }

    async fn accept_stream(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.accept().await
    }

    /// The gateway's first stream.
    async fn open_control(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.accept().await
    }

    async fn accept_control(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.open().await
    }

    fn remote_address(&self) -> SocketAddr {
        self.inner.remote
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportError> {
        let tls = lock(&self.inner.tls);
        let result = match &*tls {
            Io::Client(stream) => {
                stream
                    .get_ref()
                    .1
                    .export_keying_material(&mut *output, label, Some(context))
            }
            Io::Server(stream) => {
                stream
                    .get_ref()
                    .1
                    .export_keying_material(&mut *output, label, Some(context))
            }
        };
        result.map(|_| ()).map_err(|e| ExportError(e.to_string()))
    }

    fn admitted(&self) {
        self.inner.admission.admitted.store(true, Ordering::Relaxed);
        self.inner.admit.notify_one();
    }

    fn packets_received(&self) -> u64 {
        self.inner.admission.received.load(Ordering::Relaxed)
    }

    /// An HTTP/2 PING, which only the peer process answers (a frozen one's
    /// kernel still acknowledges TCP segments).
    async fn probe(&self, within: Duration) -> bool {
        self.close_reason().is_none()
            && tokio::time::timeout(within, self.ping())
                .await
                .unwrap_or(false)
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.inner.request_close(code, reason);
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.inner.reason.get().cloned()
    }

    async fn closed(&self) {
        self.inner.closed.cancelled().await
    }
}

/// Sending half of a TCP tunnel stream.
#[derive(Debug)]
pub struct TcpSend {
    state: SendState,
    /// A stream this end opened, nothing sent on it yet
    /// ([`FIRST_FRAME_UNRESERVED`]).
    fresh: bool,
}

#[derive(Debug)]
enum SendState {
    /// Answering end: the stream's response headers wait for its first frame
    /// (the exit's `Opened`, usually), so both leave in one write and the
    /// opener wakes once, not twice.
    Unanswered(h2::server::SendResponse<Bytes>),
    Open(h2::SendStream<Bytes>),
    /// Answering failed, and said so.
    Failed,
}

impl TcpSend {
    /// The stream, answering it first if that is still to do.
    fn stream(&mut self) -> io::Result<&mut h2::SendStream<Bytes>> {
        if matches!(self.state, SendState::Unanswered(_)) {
            let SendState::Unanswered(mut respond) =
                std::mem::replace(&mut self.state, SendState::Failed)
            else {
                unreachable!("checked above");
            };
            let stream = respond
                .send_response(http::Response::new(()), false)
                .map_err(h2_to_io)?;
            self.state = SendState::Open(stream);
        }
        match &mut self.state {
            SendState::Open(stream) => Ok(stream),
            _ => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")),
        }
    }

    /// Waits until the peer's windows let some bytes go: the capacity h2 has
    /// assigned, at most `wanted`.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
        if std::mem::take(&mut self.fresh) && wanted <= FIRST_FRAME_UNRESERVED {
            return Poll::Ready(Ok(wanted));
        }
        let stream = self.stream()?;
        loop {
            let available = stream.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(wanted)));
            }
            // h2 counts what is still buffered in the reservation: ask for a
            // send buffer's worth so chunks pipeline instead of taking turns.
            stream.reserve_capacity(wanted.max(MAX_SEND_BUFFER));
            match ready!(stream.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream closed",
                    )))
                }
            }
        }
    }
}

impl TunnelSend for TcpSend {
    async fn write_chunk(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            let len = chunk.len();
            let n = poll_fn(|cx| self.poll_capacity(cx, len)).await?;
            self.stream()?
                .send_data(chunk.split_to(n), false)
                .map_err(h2_to_io)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stream()?
            .send_data(Bytes::new(), true)
            .map_err(h2_to_io)
    }

    fn reset(&mut self, code: u32) {
        match &mut self.state {
            SendState::Unanswered(respond) => respond.send_reset(Reason::from(code)),
            SendState::Open(stream) => stream.send_reset(Reason::from(code)),
            SendState::Failed => {}
        }
    }

    async fn stopped(&mut self) {
        let _ = poll_fn(|cx| match &mut self.state {
            SendState::Unanswered(respond) => respond.poll_reset(cx),
            SendState::Open(stream) => stream.poll_reset(cx),
            SendState::Failed => Poll::Ready(Ok(Reason::CANCEL)),
        })
        .await;
    }
}

impl AsyncWrite for TcpSend {
    /// For the framed control messages: copies `buf` (a few bytes at a time).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_capacity(cx, buf.len()))?;
        this.stream()?
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    /// h2's connection task writes out what is queued by itself.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(TunnelSend::finish(self.get_mut()))
    }
}

/// Receiving half of a TCP tunnel stream.
#[derive(Debug)]
pub struct TcpRecv {
    state: RecvState,
    /// The part of the last DATA frame that did not fit the caller's buffer.
    pending: Bytes,
}

#[derive(Debug)]
enum RecvState {
    /// Gateway side: the agent's answer (headers) is on its way.
    Response(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    /// Stopped by us; nothing more will be read.
    Stopped,
}

impl TcpRecv {
    /// Waits until `pending` holds bytes; `false` once the stream has ended.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(true));
            }
            match &mut self.state {
                RecvState::Response(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_to_io)?;
                    if response.status() != http::StatusCode::OK {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("peer answered the stream with {}", response.status()),
                        )));
                    }
                    self.state = RecvState::Body(response.into_body());
                }
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        // Released as soon as it is ours: the caller's buffer
                        // (or `pending`, one frame at most) holds it, so the
                        // window tracks what the relay has taken.
                        let _ = body.flow_control().release_capacity(data.len());
                        self.pending = data;
                    }
                    Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                    None => return Poll::Ready(Ok(false)),
                },
                RecvState::Stopped => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream stopped",
                    )))
                }
            }
        }
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<Option<usize>>> {
        if !ready!(self.poll_pending(cx))? {
            return Poll::Ready(Ok(None));
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(Some(n)))
    }
}

impl TunnelRecv for TcpRecv {
    /// Cancel-safe: a frame taken from h2 but not yet copied stays in `pending`.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        poll_fn(|cx| self.poll_read_into(cx, buf)).await
    }

    /// The next DATA frame as h2 received it: no copy. Cancel-safe like `read`.
    async fn read_chunk(&mut self, _buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if !poll_fn(|cx| self.poll_pending(cx)).await? {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.pending)))
    }

    /// Dropping the body gives its buffered bytes back to the connection
    /// window; the reset the caller sends on the other half tells the peer.
    fn stop(&mut self, _code: u32) {
        self.pending = Bytes::new();
        self.state = RecvState::Stopped;
    }
}

impl AsyncRead for TcpRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = ready!(this.poll_read_into(cx, buf.initialize_unfilled()))?.unwrap_or(0);
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}
