//! Either transport behind one type: [`Tunnel`] and its stream halves
//! [`StreamSend`]/[`StreamRecv`]. The gateway's tunnel table, its customer
//! path and the agent hold these, so nothing above the transport interface
//! has a second copy for TCP. Each call is one `match`; the relay stays
//! generic, so no chunk pays for a boxed future.

use crate::tcp::{TcpRecv, TcpSend, TcpTunnel};
use crate::tunnel::{
    CloseReason, ExportError, Transport, TunnelConnection, TunnelRecv, TunnelSend,
};
use bytes::{Bytes, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A tunnel over either transport.
#[derive(Debug, Clone)]
pub enum Tunnel {
    /// QUIC over UDP.
    Quic(quinn::Connection),
    /// TLS over TCP with HTTP/2 streams.
    Tcp(TcpTunnel),
}

/// Sending half of a stream on either transport.
#[derive(Debug)]
pub enum StreamSend {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// An HTTP/2 stream.
    Tcp(TcpSend),
}

/// Receiving half of a stream on either transport.
#[derive(Debug)]
pub enum StreamRecv {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// An HTTP/2 stream.
    Tcp(TcpRecv),
}

impl From<quinn::Connection> for Tunnel {
    fn from(connection: quinn::Connection) -> Tunnel {
        Tunnel::Quic(connection)
    }
}

impl From<TcpTunnel> for Tunnel {
    fn from(tunnel: TcpTunnel) -> Tunnel {
        Tunnel::Tcp(tunnel)
    }
}

fn quic_pair((send, recv): (quinn::SendStream, quinn::RecvStream)) -> (StreamSend, StreamRecv) {
    (StreamSend::Quic(send), StreamRecv::Quic(recv))
}

fn tcp_pair((send, recv): (TcpSend, TcpRecv)) -> (StreamSend, StreamRecv) {
    (StreamSend::Tcp(send), StreamRecv::Tcp(recv))
}

impl TunnelConnection for Tunnel {
    type Send = StreamSend;
    type Recv = StreamRecv;

    fn transport(&self) -> Transport {
        match self {
            Tunnel::Quic(c) => c.transport(),
            Tunnel::Tcp(c) => c.transport(),
        }
    }

    async fn open_stream(&self) -> io::Result<(StreamSend, StreamRecv)> {
        match self {
            Tunnel::Quic(c) => c.open_stream().await.map(quic_pair),
            Tunnel::Tcp(c) => c.open_stream().await.map(tcp_pair),
        }
    }

    async fn accept_stream(&self) -> io::Result<(StreamSend, StreamRecv)> {
        match self {
            Tunnel::Quic(c) => c.accept_stream().await.map(quic_pair),
            Tunnel::Tcp(c) => c.accept_stream().await.map(tcp_pair),
        }
    }

    async fn open_control(&self) -> io::Result<(StreamSend, StreamRecv)> {
        match self {
            Tunnel::Quic(c) => c.open_control().await.map(quic_pair),
            Tunnel::Tcp(c) => c.open_control().await.map(tcp_pair),
        }
    }

    async fn accept_control(&self) -> io::Result<(StreamSend, StreamRecv)> {
        match self {
            Tunnel::Quic(c) => c.accept_control().await.map(quic_pair),
            Tunnel::Tcp(c) => c.accept_control().await.map(tcp_pair),
        }
    }

    fn remote_address(&self) -> SocketAddr {
        match self {
            Tunnel::Quic(c) => TunnelConnection::remote_address(c),
            Tunnel::Tcp(c) => c.remote_address(),
        }
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportError> {
        match self {
            Tunnel::Quic(c) => TunnelConnection::export_keying_material(c, output, label, context),
            Tunnel::Tcp(c) => c.export_keying_material(output, label, context),
        }
    }

    fn admitted(&self) {
        match self {
            Tunnel::Quic(c) => c.admitted(),
            Tunnel::Tcp(c) => c.admitted(),
        }
    }

    fn packets_received(&self) -> u64 {
        match self {
            Tunnel::Quic(c) => c.packets_received(),
            Tunnel::Tcp(c) => c.packets_received(),
        }
    }

    async fn probe(&self, within: Duration) -> bool {
        match self {
            Tunnel::Quic(c) => c.probe(within).await,
            Tunnel::Tcp(c) => c.probe(within).await,
        }
    }

    fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Tunnel::Quic(c) => TunnelConnection::close(c, code, reason),
            Tunnel::Tcp(c) => c.close(code, reason),
        }
    }

    fn close_reason(&self) -> Option<CloseReason> {
        match self {
            Tunnel::Quic(c) => TunnelConnection::close_reason(c),
            Tunnel::Tcp(c) => c.close_reason(),
        }
    }

    async fn closed(&self) {
        match self {
            Tunnel::Quic(c) => TunnelConnection::closed(c).await,
            Tunnel::Tcp(c) => c.closed().await,
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Tunnel::Quic(c) => TunnelConnection::max_datagram_size(c),
            Tunnel::Tcp(c) => c.max_datagram_size(),
        }
    }

    fn send_datagram(&self, datagram: Bytes) -> io::Result<()> {
        match self {
            Tunnel::Quic(c) => TunnelConnection::send_datagram(c, datagram),
            Tunnel::Tcp(c) => c.send_datagram(datagram),
        }
    }

    async fn read_datagram(&self) -> io::Result<Bytes> {
        match self {
            Tunnel::Quic(c) => TunnelConnection::read_datagram(c).await,
            Tunnel::Tcp(c) => c.read_datagram().await,
        }
    }
}

impl TunnelSend for StreamSend {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        match self {
            StreamSend::Quic(s) => TunnelSend::write_chunk(s, chunk).await,
            StreamSend::Tcp(s) => s.write_chunk(chunk).await,
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        match self {
            StreamSend::Quic(s) => TunnelSend::finish(s),
            StreamSend::Tcp(s) => s.finish(),
        }
    }

    fn reset(&mut self, code: u32) {
        match self {
            StreamSend::Quic(s) => TunnelSend::reset(s, code),
            StreamSend::Tcp(s) => s.reset(code),
        }
    }

    async fn stopped(&mut self) {
        match self {
            StreamSend::Quic(s) => TunnelSend::stopped(s).await,
            StreamSend::Tcp(s) => s.stopped().await,
        }
    }
}

impl TunnelRecv for StreamRecv {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            StreamRecv::Quic(s) => TunnelRecv::read(s, buf).await,
            StreamRecv::Tcp(s) => s.read(buf).await,
        }
    }

    async fn read_chunk(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match self {
            StreamRecv::Quic(s) => TunnelRecv::read_chunk(s, buf).await,
            StreamRecv::Tcp(s) => s.read_chunk(buf).await,
        }
    }

    fn stop(&mut self, code: u32) {
        match self {
            StreamRecv::Quic(s) => TunnelRecv::stop(s, code),
            StreamRecv::Tcp(s) => s.stop(code),
        }
    }
}

impl AsyncWrite for StreamSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamSend::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            StreamSend::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamSend::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            StreamSend::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamSend::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            StreamSend::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for StreamRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamRecv::Quic(s) => AsyncRead::poll_read(Pin::new(s), cx, buf),
            StreamRecv::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}
