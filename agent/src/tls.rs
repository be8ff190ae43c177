//! How the agent trusts its gateway: the SHA-256 pin of the gateway's certificate.
//! A mismatch fails the TLS handshake, so the agent's token is never sent to an
//! impostor; the tunnel then decides whether to stop or retry later.

use quinn::crypto::rustls::QuicClientConfig;
use std::sync::Arc;

pub use exitpool_transport::pin::{Pin, PinError, PinVerifier};

/// Client configurations for both tunnel transports that trust only `pin`,
/// through one verifier, returned too so the caller can tell a pin mismatch
/// from a network failure on either.
pub struct ClientConfigs {
    /// QUIC, ALPN `exitpool/1`.
    pub quic: quinn::ClientConfig,
    /// TLS over TCP, ALPN `exitpool-tcp/1`.
    pub tcp: Arc<rustls::ClientConfig>,
    /// The pin check both use.
    pub verifier: Arc<PinVerifier>,
}

/// Builds [`ClientConfigs`] for `pin`, QUIC with `transport`'s settings.
pub fn client_configs(
    pin: Pin,
    transport: quinn::TransportConfig,
) -> Result<ClientConfigs, rustls::Error> {
    let verifier = PinVerifier::ring(pin);
    let crypto = QuicClientConfig::try_from(verifier.client_config(exitpool_protocol::ALPN)?)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    quic.transport_config(Arc::new(transport));
    Ok(ClientConfigs {
        quic,
        tcp: Arc::new(verifier.client_config(exitpool_transport::tcp::ALPN)?),
        verifier,
    })
}
