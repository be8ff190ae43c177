//! The tunnel interface the relay is written against: the two halves of one
//! tunnel stream (one customer connection). QUIC streams implement it today
//! ([`crate::quic`]); a second transport (TLS over TCP with a stream
//! multiplexer) plugs in by implementing these two traits, and the relay, its
//! half-close and its resets stay as they are.
//!
//! # Cancel safety
//!
//! The relay drops a pending [`TunnelRecv::read`] or [`TunnelSend::write_chunk`]
//! only when it gives the whole stream up (idle timeout, the other direction
//! failed, the caller stopped it) and then resets and stops it, so:
//!
//! - [`TunnelRecv::read`] must be cancel-safe: a dropped read loses no data
//!   (callers may `select!` on it).
//! - [`TunnelSend::write_chunk`] need not be: a dropped write may have sent part
//!   of its chunk. Dropping it must still leave the stream usable for
//!   [`TunnelSend::reset`].
//! - [`TunnelSend::finish`], [`TunnelSend::reset`] and [`TunnelRecv::stop`] are
//!   not `async` and so are never cancelled.

use bytes::Bytes;
use std::future::Future;
use std::io;

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
}

/// The receiving half of a tunnel stream: bytes from the peer.
pub trait TunnelRecv: Send {
    /// Reads what has arrived into `buf`, as much as fits: `Some(n)` with
    /// `n > 0`, or `None` once the peer has finished the stream. Fails when the
    /// peer reset it or the tunnel is gone. Must be cancel-safe.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<Option<usize>>> + Send;

    /// Tells the peer to stop sending, with `code`. Best effort.
    fn stop(&mut self, code: u32);
}
