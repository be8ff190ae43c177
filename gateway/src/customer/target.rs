//! Validating the target a customer names (`host:port`) before anything is sent to
//! an exit, with the grammar the agent parses the same name with
//! ([`exitpool_protocol::host`]); here a refusal becomes [`ProxyError::BadTarget`].
//! The agent checks again against its own policy after resolving.

use crate::error::ProxyError;
pub use exitpool_protocol::host::{parse_host, parse_port};
use exitpool_protocol::TargetHost;

/// Parses `host:port` (IPv6 literals in brackets) into a target.
pub fn parse_authority(authority: &str) -> Result<(TargetHost, u16), ProxyError> {
    exitpool_protocol::host::parse_authority(authority)
        .map_err(|why| ProxyError::BadTarget(format!("{why} (got {:?})", truncate(authority))))
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}
