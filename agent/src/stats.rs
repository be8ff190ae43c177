//! What an agent has done and where it is: [`AgentStats`] for the app and the
//! owner, [`SessionInfo`] from the gateway's `Welcome`, and the live counters
//! behind them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// What the gateway told the agent when it joined.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// The agent's address as the gateway sees it.
    pub observed_addr: SocketAddr,
    /// The country the gateway placed it in.
    pub country: Option<String>,
    /// The id customers see for this exit.
    pub exit_id: String,
}

/// Live counters the tunnel bumps and [`AgentStats`] reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub streams_served: AtomicU64,
    pub active_streams: AtomicU32,
    pub connects: AtomicU64,
}

/// What an agent has done, for the app or the owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentStats {
    /// The agent's id (kept on the device).
    pub agent_id: String,
    /// The current tunnel, if connected.
    pub session: Option<SessionInfo>,
    /// Whether sharing is paused.
    pub paused: bool,
    /// Relay streams served since start.
    pub streams_served: u64,
    /// Relay streams open now.
    pub active_streams: u32,
    /// Bytes sent to targets.
    pub bytes_up: u64,
    /// Bytes received from targets.
    pub bytes_down: u64,
    /// Successful tunnel connections since start (1 + reconnects).
    pub connects: u64,
    /// The quota period now (`2026-11-23` or `2026-11`).
    pub period: String,
    /// Bytes relayed (up + down) in this period.
    pub period_bytes: u64,
    /// The quota per period, if any.
    pub quota_bytes: Option<u64>,
    /// Whether the quota is used up (sharing stops until the next period).
    pub quota_exhausted: bool,
    /// The bandwidth cap per direction, bytes per second, if any.
    pub max_rate: Option<u32>,
}
