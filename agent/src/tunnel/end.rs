//! How a tunnel session ended ([`super::session`] says, [`super::reconnect`]
//! decides what follows).

use super::reach_error::ReachError;
use crate::error::AgentError;
use exitpool_transport::Tunnel;

/// How a session ended.
pub(super) enum SessionEnd {
    /// Shutdown was asked for and done.
    Shutdown,
    /// The gateway closed the tunnel because it is shutting down.
    GatewayStopped,
    /// A failure worth retrying.
    Retry(RetryReason),
    /// A failure retrying cannot fix.
    Fatal(AgentError),
    /// The QUIC tunnel carried nothing for two keep-alive intervals: UDP is
    /// degraded here, so the agent falls back as if the handshake had failed.
    Degraded,
    /// QUIC works again: the TCP tunnel drains in the background and the
    /// agent continues on this QUIC tunnel.
    Moved(Tunnel),
}

/// Why a session ended in a way worth retrying: the log line's reason (its
/// text is the [`Display`](std::fmt::Display)), typed so the loop and the
/// tests can tell the causes apart without reading words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RetryReason {
    /// No gateway could be reached: the dialer's account of each attempt.
    Unreachable(ReachError),
    /// The gateway did not answer `Hello` within the handshake timeout.
    NoWelcome,
    /// A step on the control stream failed: which step, and the error.
    Control {
        /// What was being done (`sending Hello`, `control stream`, ...).
        step: &'static str,
        /// The error's text.
        error: String,
    },
    /// The gateway is full for now (its message).
    GatewayFull(String),
    /// The tunnel ended (the transport's words).
    TunnelLost(String),
    /// The gateway sent nothing for two keep-alive intervals.
    Silent,
    /// The control stream closed under a load report.
    ControlClosed,
    /// The gateway sent a message it should not have (as debug-printed).
    UnexpectedMessage(String),
}

impl RetryReason {
    /// A failed control-stream step.
    pub(super) fn control(step: &'static str, error: &dyn std::fmt::Display) -> RetryReason {
        RetryReason::Control {
            step,
            error: error.to_string(),
        }
    }
}

impl std::fmt::Display for RetryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryReason::Unreachable(why) => write!(f, "{why}"),
            RetryReason::TunnelLost(why) => f.write_str(why),
            RetryReason::NoWelcome => f.write_str("no answer to Hello"),
            RetryReason::Control { step, error } => write!(f, "{step}: {error}"),
            RetryReason::GatewayFull(message) => {
                write!(f, "the gateway is full for now: {message}")
            }
            RetryReason::Silent => {
                f.write_str("the gateway sent nothing for two keep-alive intervals")
            }
            RetryReason::ControlClosed => f.write_str("control stream closed"),
            RetryReason::UnexpectedMessage(message) => {
                write!(f, "unexpected control message {message}")
            }
        }
    }
}
