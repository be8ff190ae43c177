//! The peer link between gateways of one fleet: a connection (TLS over TCP
//! with HTTP/2 streams, or QUIC) from the gateway a customer reached to the
//! gateway holding the chosen exit's tunnel, one stream per customer
//! connection.
//!
//! The dialling gateway proves it belongs to the fleet in [`PeerHello`]: an
//! HMAC, under the fleet key, of TLS keying material exported from this very
//! connection (RFC 8446 §7.5), so a proof cannot be replayed on another
//! connection. Each relay stream then starts with [`PeerOpen`] and is answered
//! with the exit's own [`crate::OpenReply`]; raw bytes follow, as on an agent
//! tunnel.

use crate::TargetHost;
use serde::{Deserialize, Serialize};

/// ALPN of the peer link over QUIC.
pub const PEER_ALPN: &[u8] = b"exitpool-peer/1";

/// ALPN of the peer link over TLS on TCP: the same messages, framed in
/// HTTP/2 streams as on the TCP agent tunnel.
pub const PEER_TCP_ALPN: &[u8] = b"exitpool-peer-tcp/1";

/// Version of the peer-link messages.
pub const PEER_VERSION: u16 = 1;

/// TLS exporter label for the fleet proof.
pub const PEER_EXPORTER_LABEL: &[u8] = b"EXPORTER-exitpool-peer-link";

/// Bytes of keying material the proof covers.
pub const PEER_EXPORTER_LEN: usize = 32;

/// First message on the first stream of a peer link, from the dialling gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// [`PEER_VERSION`].
    pub version: u16,
    /// The dialling gateway's fleet id (for logs).
    pub gateway_id: String,
    /// HMAC-SHA256 under the fleet key of this connection's exported material.
    pub proof: [u8; 32],
}

/// The answer to [`PeerHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAnswer {
    /// Relay streams may follow.
    Welcome,
    /// Refused; the connection is closed.
    Refused(String),
}

/// First message on a relay stream of a peer link: which of the answering
/// gateway's exits, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOpen {
    /// The exit's device id.
    pub agent_id: String,
    /// Host the exit should dial.
    pub host: TargetHost,
    /// Port the exit should dial.
    pub port: u16,
}
