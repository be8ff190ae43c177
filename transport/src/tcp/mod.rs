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
//! [`CloseReason::Peer`](crate::tunnel::CloseReason::Peer), exactly as QUIC's application close does.
//!
//! Files: `connection.rs` the tunnel handle ([`TcpTunnel`]) and the interface;
//! `driver.rs` the task driving each end; `close.rs` the close-stream protocol;
//! `stream.rs` the stream halves ([`TcpSend`], [`TcpRecv`]); `gate.rs` the
//! frame gate a peer's HTTP/2 frames pass before it is admitted.

use std::io;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

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
pub(super) const FIRST_FRAME_UNRESERVED: usize = 4 * 1024;

/// How long a closing side keeps driving the connection so what it queued last
/// (a `Reject`, a GOAWAY) reaches the peer, unless the peer closes first.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

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
    /// Connection receive window until [`admitted`](crate::tunnel::TunnelConnection::admitted): what a
    /// peer not yet known may make us buffer.
    pub initial_connection_window: u32,
    /// Answering end: most streams a peer not yet admitted may open (more are
    /// refused, so it cannot hold h2 state for thousands); `None` for no limit
    /// but `max_incoming_streams` (an end that never calls `admitted`).
    pub streams_before_admitted: Option<u32>,
    /// Most HTTP/2 frames a peer not yet admitted may send before the
    /// connection is closed, which also closes at the first PING
    /// acknowledgement it was not asked for (see the frame gate in `tcp/gate.rs`); `None` for an
    /// end that trusts its peer already (an agent, which checked the
    /// gateway's pin) and never calls `admitted`.
    pub frames_before_admitted: Option<u32>,
}

/// A TLS connection over TCP, either side of the handshake.
pub type Io = tokio_rustls::TlsStream<TcpStream>;

/// The mutex's value even if a holder panicked: the TLS stream and the close
/// request stay usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

mod close;
mod connection;
mod driver;
mod gate;
mod stream;

pub use close::{CLOSE_CODE_HEADER, CLOSE_PATH, CLOSE_REASON_HEADER, MAX_CLOSE_REASON};
pub use connection::TcpTunnel;
pub use driver::{answering_end, opening_end};
pub use stream::{TcpRecv, TcpSend};
