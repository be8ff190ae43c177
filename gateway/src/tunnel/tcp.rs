//! The TCP tunnel port, for agents whose networks block or throttle UDP: TLS 1.3
//! with the gateway's one certificate (so an agent's `--pin` holds on both
//! transports), then HTTP/2 streams ([`exitpool_transport::tcp`]). The accept
//! loop takes the same pending-handshake places as the QUIC listener; the TLS
//! and HTTP/2 handshakes run inside each agent's task under the handshake
//! deadline, and from the control stream on the agent goes the way a QUIC one
//! does ([`super::join`]).

use super::join::{join, spawn_agent, AdmittedAgent, HandshakeError, PRE_HELLO_WINDOW};
use crate::shared::Shared;
use exitpool_transport::tcp::{self, TcpSettings};
use exitpool_transport::Tunnel;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::info_span;

/// Accepts agents' TCP tunnels until `shared.shutdown` fires.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shared: Arc<Shared>) {
    let acceptor = TlsAcceptor::from(tls);
    let pending = shared.walls.pending_handshakes.clone();
    while let Some((stream, remote)) = shared.lifecycle.accept(&listener, "tcp tunnel").await {
        let Some(slot) = pending.admit(remote.ip()) else {
            drop(stream);
            continue;
        };
        let span = info_span!("agent", %remote, transport = "tcp");
        let handshake = handshake(stream, acceptor.clone(), shared.clone());
        spawn_agent(shared.clone(), slot, span, handshake);
    }
}

/// TLS, then HTTP/2, within the handshake deadline; then the common join.
async fn handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<AdmittedAgent, HandshakeError> {
    let handshake_timeout = shared.config.handshake_timeout;
    let _ = stream.set_nodelay(true);
    let settings = settings(shared.config.tunnel_idle_timeout);
    let tunnel = timeout(handshake_timeout, async {
        let tls = acceptor.accept(stream).await?;
        tcp::opening_end(tls, settings).await
    })
    .await
    .map_err(|_| HandshakeError::Timeout(handshake_timeout))?
    .map_err(HandshakeError::Tcp)?;
    join(Tunnel::Tcp(tunnel), &shared).await
}

/// HTTP/2 frames an agent may send before its `Hello` is accepted: an honest
/// one sends about six (SETTINGS and its ACK, a window update, the control
/// stream's headers and `Hello`); a flood ends at this many.
pub const FRAMES_BEFORE_HELLO: u32 = 64;

/// The gateway's TCP tunnel settings: it pings every half idle timeout and
/// gives up on a ping after the other half, so a vanished agent is gone
/// within the idle timeout, as over QUIC. Agents open no streams, so none
/// are allowed beyond h2's minimum.
pub fn settings(idle_timeout: Duration) -> TcpSettings {
    let half = (idle_timeout / 2).max(Duration::from_millis(50));
    TcpSettings {
        max_incoming_streams: 1,
        keep_alive: half,
        idle_timeout: half,
        initial_connection_window: PRE_HELLO_WINDOW,
        streams_before_admitted: None,
        frames_before_admitted: Some(FRAMES_BEFORE_HELLO),
    }
}
