//! The byte path: copies one TCP connection to and from one tunnel stream.
//!
//! Both the gateway (customer socket <-> stream) and the agent (stream <-> target
//! socket) run this once the `OpenRequest`/`OpenReply` exchange is over. One copy
//! runs per direction so a half-close travels across: TCP EOF becomes a stream
//! `finish`, and a finished stream becomes a TCP write shutdown. An error in
//! either direction stops both, and the caller resets both ends, so an abort never
//! looks like a clean end of data.
//!
//! The tunnel side is any [`TunnelSend`]/[`TunnelRecv`] pair (QUIC or HTTP/2 streams);
//! the relay is generic over them, so no chunk pays for dynamic dispatch or a
//! boxed future. The names below ([`Direction::ToTunnel`],
//! [`Transferred::from_tunnel`], ...) say which way bytes move relative to the
//! tunnel, true for both transports and both ends: on the gateway, to the
//! tunnel is the customer's upload; on the agent, its download from the target.
//!
//! TCP reads go into a reusable buffer and are handed to the tunnel as `Bytes`
//! without a copy; QUIC data is gathered into buffer-sized TCP writes, and an
//! HTTP/2 frame is written as it came. Every buffer is bounded by
//! [`RELAY_CHUNK`], and the tunnel's flow control bounds what is in flight.
//! [`relay_streams`] joins two tunnel streams the same way.

use crate::tunnel::{TunnelRecv, TunnelSend};
use bytes::{Bytes, BytesMut};
use exitpool_protocol::RESET_CODE;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest single read or write on the byte path.
pub const RELAY_CHUNK: usize = 64 * 1024;

/// The tunnel-to-TCP buffer a relay starts with, before its first full read.
const FIRST_CHUNK: usize = 4 * 1024;

/// Byte counts of one finished relay, whether or not it ended cleanly.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes read from TCP and sent into the tunnel stream.
    pub to_tunnel: u64,
    /// Bytes received from the tunnel stream and written to TCP.
    pub from_tunnel: u64,
}

/// Why a relay ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The TCP side failed (reset, broken pipe, ...).
    #[error("tcp side: {0}")]
    Tcp(io::Error),
    /// The tunnel stream was reset or its connection was lost.
    #[error("tunnel side: {0}")]
    Tunnel(io::Error),
    /// Neither direction moved a byte for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// Which way bytes are moving through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from TCP, sent into the tunnel stream.
    ToTunnel,
    /// Received from the tunnel stream, written to TCP.
    FromTunnel,
}

/// Paces and meters the byte path: `pass` is awaited once per chunk before it is
/// forwarded, so a bandwidth cap holds back reads and tunnel/TCP flow control pushes
/// back on the sender instead of anything piling up in memory.
pub trait Throttle: Sync {
    /// Resolves when `bytes` more may move in `direction`.
    fn pass(
        &self,
        direction: Direction,
        bytes: usize,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// No cap, no metering.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

impl Throttle for Unlimited {
    async fn pass(&self, _direction: Direction, _bytes: usize) {}
}

/// Live byte counters the relay bumps once per chunk, so usage is visible while a
/// long connection is still open. Counting per chunk (not per byte) keeps this off
/// the profile.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Mirrors [`Transferred::to_tunnel`].
    pub to_tunnel: AtomicU64,
    /// Mirrors [`Transferred::from_tunnel`].
    pub from_tunnel: AtomicU64,
}

impl LiveCounters {
    /// Bytes either way so far.
    pub fn total(&self) -> u64 {
        self.to_tunnel.load(Ordering::Relaxed) + self.from_tunnel.load(Ordering::Relaxed)
    }
}

/// Relays until both directions have ended, either one fails, or nothing moves for
/// `idle_timeout`. On error the tunnel stream is reset here; the caller should close
/// the TCP side abortively (e.g. `SO_LINGER` 0) so the peer sees an error too.
pub async fn relay<R, W, S, V, T>(
    tcp_read: R,
    tcp_write: W,
    tunnel_send: S,
    tunnel_recv: V,
    idle_timeout: Duration,
    counters: &LiveCounters,
    throttle: &T,
) -> (Transferred, Result<(), RelayError>)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    S: TunnelSend,
    V: TunnelRecv,
    T: Throttle,
{
    relay_sides(
        TcpSource(tcp_read),
        TcpSink(tcp_write),
        tunnel_send,
        tunnel_recv,
        idle_timeout,
        counters,
        throttle,
    )
    .await
}

/// [`relay`] between two tunnel streams, as a gateway does that carries another
/// gateway's customer to its exit: the first pair stands where a TCP
/// connection does (`to_tunnel` counts what it sent). Chunks pass from one
/// stream to the other as the transports hold them, without another copy. On
/// error both streams are reset here.
pub async fn relay_streams<S1, V1, S2, V2>(
    near_send: S1,
    near_recv: V1,
    far_send: S2,
    far_recv: V2,
    idle_timeout: Duration,
    counters: &LiveCounters,
) -> (Transferred, Result<(), RelayError>)
where
    S1: TunnelSend,
    V1: TunnelRecv,
    S2: TunnelSend,
    V2: TunnelRecv,
{
    relay_sides(
        near_recv,
        near_send,
        far_send,
        far_recv,
        idle_timeout,
        counters,
        &Unlimited,
    )
    .await
}

/// Where a direction's bytes come from: a TCP read half or a tunnel stream.
trait Source: Send {
    /// The next bytes, as one chunk: read into `buf` (whose room the caller
    /// keeps), or a chunk the source already holds; `None` at the end.
    fn next(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;

    /// Gives the source up after a failure.
    fn abort(&mut self) {}
}

/// Where a direction's bytes go: a TCP write half or a tunnel stream.
trait Sink: Send {
    fn put(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;

    /// The half-close: the source ended cleanly.
    fn end(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Gives the sink up after a failure, so its peer sees an abort.
    fn abort(&mut self) {}
}

struct TcpSource<R>(R);

impl<R: AsyncRead + Unpin + Send> Source for TcpSource<R> {
    async fn next(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match self.0.read_buf(buf).await? {
            0 => Ok(None),
            _ => Ok(Some(buf.split().freeze())),
        }
    }
}

struct TcpSink<W>(W);

impl<W: AsyncWrite + Unpin + Send> Sink for TcpSink<W> {
    async fn put(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.write_all(&chunk).await
    }

    async fn end(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

impl<V: TunnelRecv> Source for V {
    async fn next(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        self.read_chunk(buf).await
    }

    fn abort(&mut self) {
        self.stop(RESET_CODE);
    }
}

impl<S: TunnelSend> Sink for S {
    async fn put(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write_chunk(chunk).await
    }

    async fn end(&mut self) -> io::Result<()> {
        self.finish()
    }

    fn abort(&mut self) {
        self.reset(RESET_CODE);
    }
}

async fn relay_sides<R, W, S, V, T>(
    mut near_read: R,
    mut near_write: W,
    mut tunnel_send: S,
    mut tunnel_recv: V,
    idle_timeout: Duration,
    counters: &LiveCounters,
    throttle: &T,
) -> (Transferred, Result<(), RelayError>)
where
    R: Source,
    W: Sink,
    S: Sink,
    V: Source,
    T: Throttle,
{
    let activity = Activity::new();
    let up = pump(
        &mut near_read,
        &mut tunnel_send,
        Direction::ToTunnel,
        &counters.to_tunnel,
        &activity,
        throttle,
    );
    let down = pump(
        &mut tunnel_recv,
        &mut near_write,
        Direction::FromTunnel,
        &counters.from_tunnel,
        &activity,
        throttle,
    );
    let both = async { tokio::try_join!(up, down) };
    let result = tokio::select! {
        result = both => result.map(|_| ()),
        idle = activity.expired(idle_timeout) => Err(RelayError::Idle(idle)),
    };
    if result.is_err() {
        tunnel_send.abort();
        tunnel_recv.abort();
        near_write.abort();
        near_read.abort();
    }
    let transferred = Transferred {
        to_tunnel: counters.to_tunnel.load(Ordering::Relaxed),
        from_tunnel: counters.from_tunnel.load(Ordering::Relaxed),
    };
    (transferred, result)
}

/// One direction: chunks from `source` to `sink` until the source ends (then
/// the sink is half-closed) or either fails.
async fn pump<R: Source, W: Sink, T: Throttle>(
    source: &mut R,
    sink: &mut W,
    direction: Direction,
    counter: &AtomicU64,
    activity: &Activity,
    throttle: &T,
) -> Result<(), RelayError> {
    let failed = |side_is_tcp: bool| -> fn(io::Error) -> RelayError {
        if side_is_tcp {
            RelayError::Tcp
        } else {
            RelayError::Tunnel
        }
    };
    let source_is_tcp = direction == Direction::ToTunnel;
    let (source_failed, sink_failed) = (failed(source_is_tcp), failed(!source_is_tcp));
    // The buffer starts small, because most connections carry a page or two
    // and a full-chunk allocation per connection, freed when it ends, made the
    // allocator consolidate its free lists every time (glibc does so for any
    // free of 64 KiB or more); it grows to full chunks once a read fills it.
    // A chunk handed on is split off, and its room reclaimed once the sink is
    // done with it. QUIC hands data over about one packet (~1.2 KB) at a time,
    // so its reads gather everything already received into the buffer;
    // HTTP/2 frames and TCP reads arrive large already.
    let mut chunk = FIRST_CHUNK;
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        if buf.capacity() < chunk / 4 {
            buf.reserve(chunk);
        }
        let room = buf.capacity() - buf.len();
        let Some(bytes) = source.next(&mut buf).await.map_err(source_failed)? else {
            // Clean end: carry the half-close across.
            sink.end().await.map_err(sink_failed)?;
            return Ok(());
        };
        let n = bytes.len();
        if n == room {
            chunk = RELAY_CHUNK;
        }
        activity.touch();
        throttle.pass(direction, n).await;
        sink.put(bytes).await.map_err(sink_failed)?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Tracks the last time either direction moved bytes, for the idle timeout.
struct Activity {
    started: tokio::time::Instant,
    last_millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: tokio::time::Instant::now(),
            last_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = self.started.elapsed().as_millis() as u64;
        self.last_millis.store(elapsed, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    async fn expired(&self, timeout: Duration) -> Duration {
        loop {
            let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
            let deadline = self.started + last + timeout;
            if tokio::time::Instant::now() >= deadline {
                return timeout;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
