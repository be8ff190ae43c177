//! A QUIC endpoint as the layers above the transport interface hold it (the
//! gateway's tunnel port and the fleet's peer port): bound on
//! [`crate::udp::bind`]'s socket with server settings made from a TLS 1.3
//! configuration, with its address, its close and its drain; and, for the
//! fleet's peer links, the connections it answers ([`QuicIncoming`]) and the
//! ones it dials from the same port ([`QuicEndpoint::connect`]), each handed
//! up as a [`Tunnel`]. Only the gateway's agent-tunnel listener takes the
//! quinn endpoint out ([`QuicEndpoint::quinn`]).

use crate::Tunnel;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// QUIC transport settings: windows, stream limits, keep-alive, idle timeout
/// ([`crate::udp::base_transport`] and each side's additions).
pub type TransportSettings = quinn::TransportConfig;

/// QUIC endpoint settings: stateless-reset key, connection-id generator.
pub type EndpointSettings = quinn::EndpointConfig;

/// What a QUIC server answers handshakes with: TLS and transport settings.
pub type ServerSettings = quinn::ServerConfig;

/// What a QUIC client dials with: TLS and transport settings.
pub type ClientSettings = quinn::ClientConfig;

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

/// Client settings from a TLS 1.3 client configuration (with its ALPN and
/// the check of the server's certificate) and `transport`, shared by every
/// dial; the error is the TLS configuration's unsuitability for QUIC.
pub fn client_settings(
    tls: rustls::ClientConfig,
    transport: Arc<TransportSettings>,
) -> Result<ClientSettings, String> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|error| error.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// Lets the other end of `link` open up to `streams` streams at once, over
/// QUIC (what an answering side's settings held back until the link proved
/// itself); a TLS/TCP link's answering end lifts its own limit on admission.
pub fn allow_incoming_streams(link: &Tunnel, streams: u32) {
    if let Tunnel::Quic(connection) = link {
        connection.set_max_concurrent_bi_streams(streams.into());
    }
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

    /// An endpoint on `addr` that only dials (it answers no handshakes).
    pub fn client(addr: SocketAddr) -> io::Result<QuicEndpoint> {
        crate::udp::endpoint(addr, EndpointSettings::default(), None).map(QuicEndpoint)
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

    /// The next connection attempt, or `None` once the endpoint is closed.
    /// Cancel safe.
    pub async fn accept(&self) -> Option<QuicIncoming> {
        self.0.accept().await.map(QuicIncoming)
    }

    /// Dials `addr` from this endpoint's port, expecting a certificate for
    /// `server_name` as `settings` check it; the error says why the dial or
    /// its handshake failed. The caller bounds the wait.
    pub async fn connect(
        &self,
        settings: ClientSettings,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Tunnel, String> {
        let connecting = self
            .0
            .connect_with(settings, addr, server_name)
            .map_err(|error| error.to_string())?;
        let connection = connecting.await.map_err(|error| error.to_string())?;
        Ok(connection.into())
    }

    /// The quinn endpoint, for the gateway's agent-tunnel listener.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.0
    }
}

/// A connection attempt on a [`QuicEndpoint`], before its handshake: cheap to
/// refuse, so the accept loop decides before spending a handshake on it.
#[derive(Debug)]
pub struct QuicIncoming(quinn::Incoming);

impl QuicIncoming {
    /// Where it comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Turns it away at once, without a handshake.
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Completes its handshake with the endpoint's server settings; the error
    /// says why it failed. The caller bounds the wait.
    pub async fn connected(self) -> Result<Tunnel, String> {
        let connection = self.0.await.map_err(|error| error.to_string())?;
        Ok(connection.into())
    }
}
