//! The UDP socket under a QUIC endpoint, with large kernel buffers, and the
//! transport settings both ends share.
//!
//! The OS default (about 208 KiB on Linux) drops packets during bulk transfers
//! (`UdpRcvbufErrors`) and costs 10-15 % of throughput; 4 MiB does not. The
//! kernel caps the request at `net.core.rmem_max` / `wmem_max`, which is fine:
//! we take what we get.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;

/// Requested send and receive buffer size.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A bound, non-blocking UDP socket with [`UDP_BUFFER_BYTES`] buffers (as far as
/// the kernel allows). An unspecified IPv6 address is dual-stack.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems refuse dual-stack; IPv6-only still works.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A QUIC endpoint on `addr` over [`bind`]'s socket; a server when
/// `server_config` is given.
pub fn endpoint(
    addr: SocketAddr,
    config: quinn::EndpointConfig,
    server_config: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        config,
        server_config,
        bind(addr)?,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// Per-stream receive window: what one relay stream may have in flight.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive and send windows: what one tunnel may have in flight,
/// which bounds the memory a peer can make the other side buffer.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// DATAGRAM frames (RFC 9221) buffered per connection each way: UDP flows'
/// datagrams ([`crate::tunnel::TunnelConnection::send_datagram`]). quinn's
/// defaults (1.25 MB in, 1 MB out) would cost every tunnel that much under a
/// flood; past this bound the oldest are dropped, which UDP allows.
pub const DATAGRAM_BUFFER: usize = 64 * 1024;

/// Transport settings both ends share: bounded windows (quinn's default
/// connection window is unlimited) and DATAGRAM frames with small buffers
/// ([`DATAGRAM_BUFFER`]). Each
/// side adds its own stream limits, keep-alive and idle timeout. (Raising quinn's MTU-discovery ceiling to 8,952
/// bytes was measured on loopback with the load test and made no difference,
/// so quinn's default, safe on internet paths, stays.)
pub fn base_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(u64::from(CONNECTION_WINDOW))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER);
    transport
}
