//! The QUIC listener agents dial: the endpoint's settings, the accept loop's
//! cheap decisions (a Retry under handshake pressure, the pending-handshake
//! places), and the QUIC handshake; from the control stream on, the agent
//! joins as over any transport ([`super::join`]).

use super::join::{join, spawn_agent, AdmittedAgent, HandshakeError, PRE_HELLO_WINDOW};
use crate::shared::Shared;
use exitpool_protocol::{IDLE_TIMEOUT, KEEP_ALIVE_INTERVAL};
use exitpool_transport::Tunnel;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tracing::info_span;

/// Endpoint settings for the tunnel port. quinn keys its stateless resets and
/// its connection-id check with secrets random per process, so a gateway that
/// crashed and restarted drops the old tunnels' packets silently and agents
/// wait out their idle timeout. Keyed from the gateway's identity instead, the
/// new process recognises those connection ids and answers with a reset the
/// agent accepts: it hears of the restart at its next packet (a keep-alive at
/// the latest) and reconnects as after a shutdown notice. quinn also sends at
/// most one reset per `min_reset_interval` (20 ms by default), which would take
/// minutes to tell 10,000 agents; a reset is always smaller than the packet
/// that caused it, so a short interval amplifies nothing.
pub fn endpoint_config(identity: &crate::tls::Identity) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &identity.derive_secret("quic stateless reset"),
    );
    let cid_secret = identity.derive_secret("quic connection ids");
    let cid_key = u64::from_le_bytes(cid_secret[..8].try_into().expect("8 of 32 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        })
        .min_reset_interval(Duration::from_micros(100));
    config
}

/// Transport settings for agent tunnels. quinn's defaults allow an unlimited
/// connection receive window and no keep-alive; both are set here. A tunnel
/// silent for `idle_timeout` is dead (a vanished agent is noticed within it).
pub fn transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let idle = idle_timeout.max(Duration::from_millis(100));
    // Windows bound what one agent can make the gateway buffer (16 MiB).
    let mut transport = exitpool_transport::udp::base_transport();
    transport
        .max_idle_timeout(Some(
            idle.try_into()
                .unwrap_or_else(|_| IDLE_TIMEOUT.try_into().expect("fits")),
        ))
        // Agents ping every KEEP_ALIVE_INTERVAL (for their NAT); the gateway
        // pings too only when its idle timeout is shorter than two of those,
        // so an idle pool costs one ping per agent per interval, not two.
        .keep_alive_interval((idle < KEEP_ALIVE_INTERVAL * 2).then_some(idle / 3))
        .receive_window(PRE_HELLO_WINDOW.into())
        // Agents open exactly one stream (control); relay streams are opened by us.
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into());
    transport
}

/// Accepts agent connections until `shared.shutdown` fires.
pub async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let pending = shared.walls.pending_handshakes.clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shared.lifecycle.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        // Under handshake pressure an unproven source address gets a stateless
        // Retry first: spoofed sources cannot answer it, so they hold no slot.
        if pending.in_progress() >= shared.config.handshake_retry_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            shared.accounting.metrics.tunnel_retries.inc();
            if let Err(error) = incoming.retry() {
                error.into_incoming().refuse();
            }
            continue;
        }
        let Some(slot) = pending.admit(incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        let span = info_span!("agent", remote = %incoming.remote_address(), transport = "quic");
        spawn_agent(
            shared.clone(),
            slot,
            span,
            quic_handshake(incoming, shared.clone()),
        );
    }
    // Each agent's task tells it of the shutdown (see `serve_agent`), and
    // `Gateway::shutdown` closes the endpoint once they have.
}

async fn quic_handshake(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
) -> Result<AdmittedAgent, HandshakeError> {
    let handshake_timeout = shared.config.handshake_timeout;
    let connecting = incoming
        .accept()
        .map_err(|e| HandshakeError::Accept(e.to_string()))?;
    let connection = timeout(handshake_timeout, connecting)
        .await
        .map_err(|_| HandshakeError::Timeout(handshake_timeout))?
        .map_err(|error| HandshakeError::Quic(error.into()))?;
    join(Tunnel::Quic(connection), &shared).await
}
