//! The UDP socket under a QUIC endpoint, with large kernel buffers.
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
    server_config: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server_config,
        bind(addr)?,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}
