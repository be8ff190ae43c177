//! A QUIC server endpoint as the layers above the transport interface hold
//! it (the gateway's tunnel port and the fleet's peer port): bound on
//! [`crate::udp::bind`]'s socket with server settings made from a TLS 1.3
//! configuration, with its address, its close and its drain. Only the QUIC
//! listener takes the quinn endpoint out ([`QuicEndpoint::quinn`]).

use std::io;
use std::net::SocketAddr;

/// QUIC transport settings: windows, stream limits, keep-alive, idle timeout
/// ([`crate::udp::base_transport`] and each side's additions).
pub type TransportSettings = quinn::TransportConfig;

/// QUIC endpoint settings: stateless-reset key, connection-id generator.
pub type EndpointSettings = quinn::EndpointConfig;

/// What a QUIC server answers handshakes with: TLS and transport settings.
pub type ServerSettings = quinn::ServerConfig;

/// Server settings from a TLS 1.3 server configuration (with its ALPN) and
/// `transport`; the error is the TLS configuration's unsuitability for QUIC.
pub fn server_settings(
    tls: rustls::ServerConfig,
    transport: TransportSettings,
) -> Result<ServerSettings, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|error| error.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    config.transport_config(std::sync::Arc::new(transport));
    Ok(config)
}

/// A bound QUIC endpoint that answers handshakes.
#[derive(Debug, Clone)]
pub struct QuicEndpoint(quinn::Endpoint);

impl QuicEndpoint {
    /// A server on `addr` with `endpoint` and `server` settings.
    pub fn serve(
        addr: SocketAddr,
        endpoint: EndpointSettings,
        server: ServerSettings,
    ) -> io::Result<QuicEndpoint> {
        crate::udp::endpoint(addr, endpoint, Some(server)).map(QuicEndpoint)
    }

    /// The address it is bound to (the port drawn for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Closes every connection on it with `code` and `reason`, and takes no
    /// new ones.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.0.close(code.into(), reason);
    }

    /// Resolves once closed connections have drained; the caller bounds the
    /// wait.
    pub async fn wait_idle(&self) {
        self.0.wait_idle().await;
    }

    /// The quinn endpoint, for the QUIC listener's accept loop.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.0
    }

    /// The quinn endpoint itself, for the fleet's peer links (which dial
    /// from the same port they answer on).
    pub fn into_quinn(self) -> quinn::Endpoint {
        self.0
    }
}
