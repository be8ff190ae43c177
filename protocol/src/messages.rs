//! The messages of the tunnel protocol, one enum per direction and stream kind,
//! with the limits and timeouts that belong to them.

use crate::identity::IdentityProof;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// ALPN protocol id both ends require; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"exitpool/1";

/// Version carried in [`AgentMessage::Hello`]; bumped on any incompatible change.
/// Version 2: agents prove their id with a device key ([`crate::identity`]).
pub const PROTOCOL_VERSION: u16 = 2;

/// How long an agent has, after its QUIC handshake, to send a valid `Hello`, and how
/// long either side waits for the answer to a handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC keep-alive period: well under the 30 s UDP timeout of many home routers.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// A tunnel silent for this long is dead; bounds how long a customer waits on a
/// vanished agent.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the agent may take to resolve and dial a target before it answers
/// [`FailureCode::ConnectionTimeout`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a connected agent restates its load on the control stream. Changes
/// that matter for routing (pause, resume, quota) are sent at once; this periodic
/// restatement is cheap insurance, kept rare because a gateway holds many agents.
pub const LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// QUIC application close codes, for both directions of a tunnel. A side reads
/// the peer's code to tell a deliberate end (and its reason) from a failure.
pub mod close_code {
    // Sent by the gateway to an agent.

    /// The agent was rejected (bad token, version, or id).
    pub const REJECTED: u32 = 1;
    /// The agent did not complete its handshake in time or sent garbage.
    pub const PROTOCOL: u32 = 2;
    /// A newer connection with the same agent id replaced this one.
    pub const REPLACED: u32 = 3;
    /// The gateway is shutting down (and usually restarting): agents spread their
    /// reconnects out instead of arriving all at once.
    pub const SHUTDOWN: u32 = 4;
    /// The agent finished its control stream: it is leaving, and the gateway
    /// closes the tunnel at once. The finish is delivered reliably, so a leave
    /// is noticed even when the agent's own connection close is lost.
    pub const LEFT: u32 = 5;

    // Sent by an agent to the gateway.

    /// The agent closes its tunnel on purpose: it is shutting down (after
    /// draining and leaving), or it drops this tunnel to reconnect.
    pub const AGENT_SHUTDOWN: u32 = 0;
}

/// QUIC error code with which either side resets (or stops) a relay stream when
/// its own side failed, so the peer never mistakes an abort for a clean end.
pub const RESET_CODE: u32 = 1;

/// Longest hostname accepted in an [`OpenRequest`] (the DNS limit).
pub const MAX_HOST_LEN: usize = 253;

/// A secret that never shows in `Debug` output, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Secret(pub String);

impl Secret {
    /// The secret's text, for comparing and sending; never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// What an agent offers to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Most relay streams the agent serves at once; the gateway routes no more to it.
    pub max_streams: u32,
}

/// Messages the agent sends on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message: who the agent is and what it offers.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`]; checked before anything else.
        version: u16,
        /// The device key and its proof for this connection; the agent's id is
        /// derived from the key, never declared.
        identity: IdentityProof,
        /// Enrolment token the operator handed out.
        token: Secret,
        /// Free-form software name and version, for the operator's stats.
        software: String,
        /// What the agent offers.
        capacity: Capacity,
        /// Whether it takes streams right away (false when it starts paused or
        /// over quota), so the gateway never routes to it in between.
        accepting: bool,
    },
    /// Periodic report of live load.
    Load {
        /// Relay streams open right now.
        active_streams: u32,
        /// Whether the agent accepts new streams (false while paused or over quota).
        accepting: bool,
    },
    /// The agent is shutting down: route nothing new to it; live streams finish.
    Draining,
}

/// Messages the gateway sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayMessage {
    /// The agent joined the pool.
    Welcome {
        /// The agent's address as the gateway sees it (its public exit address).
        observed_addr: SocketAddr,
        /// ISO country the gateway's GeoIP placed it in, if known.
        country: Option<String>,
        /// The opaque id customers see for this exit.
        exit_id: String,
    },
    /// The agent may not join; it must not retry with the same settings.
    Reject {
        /// Why, as a closed set the agent can act on.
        reason: RejectReason,
        /// Human-readable explanation for the agent's log.
        message: String,
    },
}

/// Why the gateway refused an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The token is unknown or revoked.
    BadToken,
    /// The agent speaks another protocol version.
    UnsupportedVersion,
    /// The identity proof is malformed or does not verify for this connection.
    BadAgentId,
    /// The enrolment token, or the agent's source network, already has its
    /// maximum of agents connected; the agent tries again later.
    TooManyAgents,
}

/// A destination the gateway asks an agent to dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetHost {
    /// A name the agent resolves itself, so targeting is honest.
    Domain(String),
    /// A literal address.
    Ip(IpAddr),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Domain(name) => f.write_str(name),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            TargetHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// First message on a relay stream (gateway to agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// Host to dial.
    pub host: TargetHost,
    /// TCP port to dial.
    pub port: u16,
}

/// The agent's answer on a relay stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenReply {
    /// Connected; raw bytes follow in both directions.
    Opened {
        /// The address actually dialled.
        peer: SocketAddr,
    },
    /// Not connected; the agent finishes the stream.
    Failed {
        /// What went wrong, as a closed set the gateway maps to customer answers.
        code: FailureCode,
        /// Short explanation (never contains secrets).
        detail: String,
    },
}

/// Why an agent could not open a target connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureCode {
    /// The name did not resolve.
    DnsError,
    /// The address is refused by the agent's exit policy.
    DestinationIpProhibited,
    /// The port is refused by the agent's exit policy (SMTP by default).
    DestinationPortProhibited,
    /// The target refused the connection.
    ConnectionRefused,
    /// The target did not answer within [`CONNECT_TIMEOUT`].
    ConnectionTimeout,
    /// No route to the target's network.
    NetworkUnreachable,
    /// No route to the target host.
    HostUnreachable,
    /// The agent is at its stream cap, paused, draining or out of quota.
    AgentUnavailable,
    /// The request itself was malformed.
    BadRequest,
    /// Anything else.
    Other,
}
