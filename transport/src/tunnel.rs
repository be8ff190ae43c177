//! The tunnel interface the relay is written against: the two halves of one
//! tunnel stream (one customer connection), and the tunnel connection that
//! carries them ([`TunnelConnection`]). QUIC ([`crate::quic`]) and TLS over TCP
//! with HTTP/2 streams ([`crate::tcp`]) implement both; the relay, its
//! half-close and its resets are written once against them.
//!
//! # Cancel safety
//!
//! The relay drops a pending [`TunnelRecv::read`] or [`TunnelSend::write_chunk`]
//! only when it gives the whole stream up (idle timeout, the other direction
//! failed, the caller stopped it) and then resets and stops it, so:
//!
//! - [`TunnelRecv::read`] and [`TunnelRecv::read_chunk`] must be
//!   cancel-safe: a dropped read loses no data (callers may `select!` on it).
//! - [`TunnelSend::write_chunk`] need not be: a dropped write may have sent part
//!   of its chunk. Dropping it must still leave the stream usable for
//!   [`TunnelSend::reset`].
//! - [`TunnelSend::finish`], [`TunnelSend::reset`] and [`TunnelRecv::stop`] are
//!   not `async` and so are never cancelled.

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The sending half of a tunnel stream: bytes towards the peer.
pub trait TunnelSend: Send {
    /// Sends all of `chunk`, waiting for flow control; fails once the peer has
    /// stopped the stream or the tunnel is gone. Not cancel-safe (see the
    /// module doc).
    fn write_chunk(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the stream cleanly after what was written: the half-close the peer
    /// turns into a TCP write shutdown.
    fn finish(&mut self) -> io::Result<()>;

    /// Abandons the stream with `code`, so the peer sees an abort, never a clean
    /// end of data. Best effort: a stream already gone is left alone.
    fn reset(&mut self, code: u32);

    /// Resolves once the peer has taken everything up to the finish (or
    /// stopped the stream, or the tunnel is gone): what a leaving side waits
    /// for before it closes ([`crate::leave`]).
    fn stopped(&mut self) -> impl Future<Output = ()> + Send;
}

/// The receiving half of a tunnel stream: bytes from the peer.
pub trait TunnelRecv: Send {
    /// Reads what has arrived into `buf`, as much as fits: `Some(n)` with
    /// `n > 0`, or `None` once the peer has finished the stream. Fails when the
    /// peer reset it or the tunnel is gone. Must be cancel-safe.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<Option<usize>>> + Send;

    /// The next bytes that have arrived, as one chunk: a frame the transport
    /// already holds, handed over without a copy (HTTP/2), or what has arrived
    /// gathered into `buf`'s spare room and split off it (QUIC's ~1.2 KB
    /// packets). `None` once the peer has finished the stream; the caller
    /// keeps room in `buf`. Must be cancel-safe.
    fn read_chunk(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;

    /// Tells the peer to stop sending, with `code`. Best effort.
    fn stop(&mut self, code: u32);
}

/// Which transport a tunnel runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP (quinn), the first choice.
    Quic,
    /// TLS 1.3 over TCP with HTTP/2 streams ([`crate::tcp`]), where UDP is
    /// blocked or degraded.
    Tcp,
}

impl Transport {
    /// `quic` or `tcp`, as shown in stats, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// This side closed it with this code.
    Local(u32),
    /// The peer closed it, with its code when it sent one.
    Peer(Option<u32>),
    /// Nothing came back within the idle timeout.
    TimedOut,
    /// The peer's end reset it: a QUIC stateless reset, or a TCP reset (a
    /// peer that restarted or crashed without a close), with the transport's
    /// words for it.
    Reset(String),
    /// The connection failed otherwise (broken pipe, protocol error, ...).
    Lost(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local(code) => write!(f, "closed here (code {code})"),
            CloseReason::Peer(Some(code)) => write!(f, "closed by peer (code {code})"),
            CloseReason::Peer(None) => f.write_str("closed by peer"),
            CloseReason::TimedOut => f.write_str("timed out"),
            CloseReason::Reset(why) | CloseReason::Lost(why) => {
                write!(f, "connection lost: {why}")
            }
        }
    }
}

/// Keying material could not be exported (the TLS library refused the label
/// or length).
#[derive(Debug, Clone, thiserror::Error)]
#[error("exporting keying material: {0}")]
pub struct ExportError(pub String);

/// One tunnel between an agent and the gateway: the connection-level
/// interface, beside the stream-level [`TunnelSend`]/[`TunnelRecv`]. QUIC
/// ([`crate::quic`]) and TLS over TCP ([`crate::tcp`]) implement it, and
/// [`crate::any::Tunnel`] holds either, so everything above (registry,
/// routing, accounting, policy) is written once.
///
/// Roles: the gateway opens relay streams ([`Self::open_stream`]) and the agent
/// accepts them ([`Self::accept_stream`]); the control stream is set up once,
/// first, with [`Self::open_control`] (agent) and [`Self::accept_control`]
/// (gateway), whichever end the transport has open it on the wire.
///
/// Cancel safety: [`Self::accept_stream`] and [`Self::closed`] are cancel-safe
/// (the agent `select!`s on them); a dropped [`Self::open_stream`] leaves no
/// stream behind that the peer would wait on.
pub trait TunnelConnection: Clone + Send + Sync + 'static {
    /// Sending half of a stream.
    type Send: TunnelSend + tokio::io::AsyncWrite + Unpin;
    /// Receiving half of a stream.
    type Recv: TunnelRecv + tokio::io::AsyncRead + Unpin;

    /// Which transport this is.
    fn transport(&self) -> Transport;

    /// Gateway: a new relay stream, once the agent's stream limit allows one.
    fn open_stream(&self) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;

    /// Agent: the next relay stream the gateway opened.
    fn accept_stream(&self) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;

    /// Agent: the control stream, on which it sends `Hello`.
    fn open_control(&self) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;

    /// Gateway: the control stream, on which it reads `Hello`.
    fn accept_control(&self) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;

    /// The peer's address as this side sees it.
    fn remote_address(&self) -> SocketAddr;

    /// Fills `output` with TLS keying material (RFC 8446 section 7.5) for
    /// `label` and `context`: the same bytes on both ends of this tunnel and
    /// on no other, so a signature over them binds a key to this connection.
    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportError>;

    /// The peer proved itself (a valid `Hello`): lift the small receive window
    /// it had until then to the full one.
    fn admitted(&self);

    /// A count that grows whenever something arrives from the peer (QUIC: UDP
    /// datagrams; TLS/TCP: reads that brought bytes): a tunnel whose count
    /// stands still over a keep-alive interval heard nothing, not even the
    /// acknowledgement of its own keep-alive.
    fn packets_received(&self) -> u64;

    /// Whether the peer proves alive within `within` (stretched on slow
    /// links): it is asked for an acknowledgement now, and anything received
    /// from it in that time counts. `false` once the tunnel has ended. For a
    /// liveness check while a customer waits, so idle peers see no extra
    /// traffic.
    fn probe(&self, within: Duration) -> impl Future<Output = bool> + Send;

    /// Closes the tunnel with `code`; streams end with it. Idempotent.
    fn close(&self, code: u32, reason: &[u8]);

    /// Why the tunnel ended, once it has.
    fn close_reason(&self) -> Option<CloseReason>;

    /// Resolves once the tunnel has ended.
    fn closed(&self) -> impl Future<Output = ()> + Send;

    /// The largest unreliable datagram (RFC 9221) the peer takes now, or
    /// `None` when this tunnel carries none (TLS/TCP, or a peer without
    /// DATAGRAM support): UDP flows then put every datagram on their stream.
    fn max_datagram_size(&self) -> Option<usize> {
        None
    }

    /// Sends one unreliable datagram. Never waits: when the send buffer is
    /// full the oldest unsent datagrams are dropped. Fails when datagrams are
    /// not carried or `datagram` is larger than [`Self::max_datagram_size`].
    fn send_datagram(&self, datagram: Bytes) -> io::Result<()> {
        let _ = datagram;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this tunnel carries no datagrams",
        ))
    }

    /// The next unreliable datagram from the peer; fails once the tunnel has
    /// ended. Cancel-safe. A tunnel without datagrams never yields one.
    fn read_datagram(&self) -> impl Future<Output = io::Result<Bytes>> + Send {
        async {
            self.closed().await;
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the tunnel has ended",
            ))
        }
    }
}

/// This tunnel's TLS keying material for the agent's identity proof
/// ([`exitpool_protocol::identity`]): the same on both ends of one connection,
/// different on every other, on either transport.
pub fn identity_material<C: TunnelConnection>(
    connection: &C,
) -> io::Result<[u8; exitpool_protocol::identity::EXPORTER_LEN]> {
    use exitpool_protocol::identity::{EXPORTER_CONTEXT, EXPORTER_LABEL, EXPORTER_LEN};
    let mut material = [0u8; EXPORTER_LEN];
    connection
        .export_keying_material(&mut material, EXPORTER_LABEL, EXPORTER_CONTEXT)
        .map_err(|_| io::Error::other("TLS keying material export failed"))?;
    Ok(material)
}
