//! Why an agent stopped for good ([`AgentError`]); network failures are retried
//! by the tunnel, never returned.

use crate::tls::Pin;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why an agent stopped for good (network failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway refused the token.
    #[error("the gateway rejected the agent token: {0}")]
    BadToken(String),
    /// The gateway refused the agent for another reason (version, id).
    #[error("the gateway rejected the agent: {0}")]
    Rejected(String),
    /// The gateway's certificate does not match `--pin`, and this agent has
    /// never connected with that pin (a mismatch on a pin it has connected
    /// with is retried later instead).
    #[error("the gateway's certificate does not match the pin {0}; check --pin (run `gateway pin` on the gateway)")]
    PinMismatch(Pin),
    /// The local socket could not be bound.
    #[error("binding the tunnel socket to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    State {
        /// The path at fault.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The agent task panicked or was aborted.
    #[error("agent task failed: {0}")]
    Task(String),
}
