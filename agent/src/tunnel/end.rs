//! How a tunnel session ended ([`super::session`] says, [`super::reconnect`]
//! decides what follows).

use crate::error::AgentError;
use exitpool_transport::Tunnel;

/// How a session ended.
pub(super) enum SessionEnd {
    /// Shutdown was asked for and done.
    Shutdown,
    /// The gateway closed the tunnel because it is shutting down.
    GatewayStopped,
    /// A failure worth retrying.
    Retry(String),
    /// A failure retrying cannot fix.
    Fatal(AgentError),
    /// The QUIC tunnel carried nothing for two keep-alive intervals: UDP is
    /// degraded here, so the agent falls back as if the handshake had failed.
    Degraded,
    /// QUIC works again: the TCP tunnel drains in the background and the
    /// agent continues on this QUIC tunnel.
    Moved(Tunnel),
}
