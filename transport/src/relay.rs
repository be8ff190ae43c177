//! The byte path: copies one TCP connection to and from one tunnel stream.
//!
//! Both the gateway (customer socket <-> stream) and the agent (stream <-> target
//! socket) run this once the `OpenRequest`/`OpenReply` exchange is over. One copy
//! runs per direction so a half-close travels across: TCP EOF becomes a stream
//! `finish`, and a finished stream becomes a TCP write shutdown. An error in
//! either direction stops both, and the caller resets both ends, so an abort never
//! looks like a clean end of data.
//!
//! The tunnel side is any [`TunnelSend`]/[`TunnelRecv`] pair (QUIC streams today);
//! the relay is generic over them, so no chunk pays for dynamic dispatch or a
//! boxed future. "QUIC" in the names below ([`Direction::TcpToQuic`],
//! [`Transferred::quic_to_tcp`], ...) means that tunnel side.
//!
//! TCP reads go into a reusable buffer and are handed to the tunnel as `Bytes`
//! without a copy; tunnel data is gathered into buffer-sized TCP writes. Every
//! buffer is bounded by [`RELAY_CHUNK`], and the tunnel's flow control bounds
//! what is in flight.

use crate::tunnel::{TunnelRecv, TunnelSend};
use bytes::BytesMut;
use exitpool_protocol::RESET_CODE;
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
    /// Bytes read from TCP and sent into the QUIC stream.
    pub tcp_to_quic: u64,
    /// Bytes received from the QUIC stream and written to TCP.
    pub quic_to_tcp: u64,
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
    TcpToQuic,
    /// Received from the tunnel stream, written to TCP.
    QuicToTcp,
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
    /// Mirrors [`Transferred::tcp_to_quic`].
    pub tcp_to_quic: AtomicU64,
    /// Mirrors [`Transferred::quic_to_tcp`].
    pub quic_to_tcp: AtomicU64,
}

impl LiveCounters {
    /// Bytes either way so far.
    pub fn total(&self) -> u64 {
        self.tcp_to_quic.load(Ordering::Relaxed) + self.quic_to_tcp.load(Ordering::Relaxed)
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
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: TunnelSend,
    V: TunnelRecv,
    T: Throttle,
{
    let activity = Activity::new();
    let mut send = tunnel_send;
    let mut recv = tunnel_recv;
    let up = tcp_to_quic(
        tcp_read,
        &mut send,
        &counters.tcp_to_quic,
        &activity,
        throttle,
    );
    let down = quic_to_tcp(
        &mut recv,
        tcp_write,
        &counters.quic_to_tcp,
        &activity,
        throttle,
    );
    let both = async { tokio::try_join!(up, down) };
    let result = tokio::select! {
        result = both => result.map(|_| ()),
        idle = activity.expired(idle_timeout) => Err(RelayError::Idle(idle)),
    };
    if result.is_err() {
        send.reset(RESET_CODE);
        recv.stop(RESET_CODE);
    }
    let transferred = Transferred {
        tcp_to_quic: counters.tcp_to_quic.load(Ordering::Relaxed),
        quic_to_tcp: counters.quic_to_tcp.load(Ordering::Relaxed),
    };
    (transferred, result)
}

async fn tcp_to_quic<R: AsyncRead + Unpin, S: TunnelSend, T: Throttle>(
    mut tcp: R,
    send: &mut S,
    counter: &AtomicU64,
    activity: &Activity,
    throttle: &T,
) -> Result<(), RelayError> {
    // Starts small for the same reason as `quic_to_tcp`, and because a
    // full-chunk allocation per connection, freed when it ends, made the
    // allocator consolidate its free lists every time (glibc does so for any
    // free of 64 KiB or more); grows to full chunks once a read fills it.
    let mut chunk = FIRST_CHUNK;
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        if buf.capacity() < chunk / 4 {
            buf.reserve(chunk);
        }
        let room = buf.capacity() - buf.len();
        let n = tcp.read_buf(&mut buf).await.map_err(RelayError::Tcp)?;
        if n == room {
            chunk = RELAY_CHUNK;
        }
        if n == 0 {
            // Clean EOF from TCP: carry the half-close across.
            send.finish().map_err(RelayError::Tunnel)?;
            return Ok(());
        }
        activity.touch();
        throttle.pass(Direction::TcpToQuic, n).await;
        let chunk = buf.split().freeze();
        send.write_chunk(chunk).await.map_err(RelayError::Tunnel)?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn quic_to_tcp<V: TunnelRecv, W: AsyncWrite + Unpin, T: Throttle>(
    recv: &mut V,
    mut tcp: W,
    counter: &AtomicU64,
    activity: &Activity,
    throttle: &T,
) -> Result<(), RelayError> {
    // QUIC hands data over about one packet (~1.2 KB) at a time; `read` gathers
    // everything already received into one buffer (see `TunnelRecv::read`), so
    // TCP gets large writes instead of a syscall per packet. The buffer starts
    // small, because most connections carry a page or two and zeroing a full
    // chunk for each was a measurable share of a short connection's cost, and
    // grows to a full chunk the first time a read fills it.
    let mut buf = vec![0u8; FIRST_CHUNK];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                activity.touch();
                throttle.pass(Direction::QuicToTcp, n).await;
                tcp.write_all(&buf[..n]).await.map_err(RelayError::Tcp)?;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if n == buf.len() && buf.len() < RELAY_CHUNK {
                    buf.resize(RELAY_CHUNK, 0);
                }
            }
            Ok(None) => {
                // The peer finished its side: half-close TCP, keep the other way open.
                tcp.shutdown().await.map_err(RelayError::Tcp)?;
                return Ok(());
            }
            Err(e) => return Err(RelayError::Tunnel(e)),
        }
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
