//! The tunnel interface ([`crate::tunnel`]) for QUIC: one bidirectional quinn
//! stream per customer connection, on one quinn connection per tunnel. Thin forwarding; quinn's errors become
//! `io::Error`s through quinn's own conversions, so their text is unchanged.

use crate::tunnel::{
    CloseReason, ExportError, Transport, TunnelConnection, TunnelRecv, TunnelSend,
};
use bytes::{Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// How often a liveness probe looks at the received-datagram count.
const PROBE_POLL: Duration = Duration::from_millis(10);

impl TunnelSend for quinn::SendStream {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        quinn::SendStream::write_chunk(self, chunk)
            .await
            .map_err(io::Error::from)
    }

    fn finish(&mut self) -> io::Result<()> {
        quinn::SendStream::finish(self).map_err(io::Error::from)
    }

    fn reset(&mut self, code: u32) {
        let _ = quinn::SendStream::reset(self, code.into());
    }

    async fn stopped(&mut self) {
        let _ = quinn::SendStream::stopped(self).await;
    }
}

impl TunnelRecv for quinn::RecvStream {
    /// quinn's `read` is cancel-safe, and gathers everything already received
    /// (many ~1.2 KB packets) into `buf` in one call.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        quinn::RecvStream::read(self, buf)
            .await
            .map_err(io::Error::from)
    }

    /// Gathers into `buf` like `read` (quinn's `AsyncRead` is the same call).
    async fn read_chunk(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match tokio::io::AsyncReadExt::read_buf(self, buf).await? {
            0 => Ok(None),
            _ => Ok(Some(buf.split().freeze())),
        }
    }

    fn stop(&mut self, code: u32) {
        let _ = quinn::RecvStream::stop(self, code.into());
    }
}

impl TunnelConnection for quinn::Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;

    fn transport(&self) -> Transport {
        Transport::Quic
    }

    async fn open_stream(&self) -> io::Result<(quinn::SendStream, quinn::RecvStream)> {
        self.open_bi().await.map_err(io::Error::from)
    }

    async fn accept_stream(&self) -> io::Result<(quinn::SendStream, quinn::RecvStream)> {
        self.accept_bi().await.map_err(io::Error::from)
    }

    async fn open_control(&self) -> io::Result<(quinn::SendStream, quinn::RecvStream)> {
        self.open_bi().await.map_err(io::Error::from)
    }

    async fn accept_control(&self) -> io::Result<(quinn::SendStream, quinn::RecvStream)> {
        self.accept_bi().await.map_err(io::Error::from)
    }

    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(self)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportError> {
        quinn::Connection::export_keying_material(self, output, label, context)
            .map_err(|_| ExportError("the TLS session refused the request".into()))
    }

    fn admitted(&self) {
        self.set_receive_window(crate::udp::CONNECTION_WINDOW.into());
    }

    fn packets_received(&self) -> u64 {
        self.stats().udp_rx.datagrams
    }

    /// quinn 0.11 has no public PING; a one-byte bump of the connection's
    /// receive window sends a MAX_DATA frame, which is ack-eliciting, and a
    /// live peer acknowledges it within its ack delay (25 ms) plus a round
    /// trip. The wait is stretched to three round trips on slow links.
    async fn probe(&self, within: Duration) -> bool {
        if quinn::Connection::close_reason(self).is_some() {
            return false;
        }
        let received = self.packets_received();
        let window = u64::from(crate::udp::CONNECTION_WINDOW);
        if let (Ok(bumped), Ok(restored)) = (
            quinn::VarInt::from_u64(window + 1),
            quinn::VarInt::from_u64(window),
        ) {
            self.set_receive_window(bumped);
            self.set_receive_window(restored);
        }
        let deadline = tokio::time::Instant::now() + within.max(self.rtt() * 3);
        let mut poll = tokio::time::interval(PROBE_POLL);
        loop {
            poll.tick().await;
            if quinn::Connection::close_reason(self).is_some() {
                return false;
            }
            if self.packets_received() > received {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    fn close(&self, code: u32, reason: &[u8]) {
        quinn::Connection::close(self, code.into(), reason);
    }

    fn close_reason(&self) -> Option<CloseReason> {
        use quinn::ConnectionError as E;
        Some(match quinn::Connection::close_reason(self)? {
            E::LocallyClosed => CloseReason::Local(0),
            E::ApplicationClosed(close) => {
                CloseReason::Peer(u32::try_from(close.error_code.into_inner()).ok())
            }
            E::TimedOut => CloseReason::TimedOut,
            reset @ E::Reset => CloseReason::Reset(reset.to_string()),
            other => CloseReason::Lost(other.to_string()),
        })
    }

    async fn closed(&self) {
        quinn::Connection::closed(self).await;
    }

    fn max_datagram_size(&self) -> Option<usize> {
        quinn::Connection::max_datagram_size(self)
    }

    /// quinn drops the oldest unsent datagrams when its buffer is full.
    fn send_datagram(&self, datagram: Bytes) -> io::Result<()> {
        quinn::Connection::send_datagram(self, datagram).map_err(io::Error::other)
    }

    async fn read_datagram(&self) -> io::Result<Bytes> {
        quinn::Connection::read_datagram(self)
            .await
            .map_err(io::Error::from)
    }
}
