//! Everything an agent is configured with ([`AgentConfig`]), and the defaults
//! [`crate::Agent::builder`] starts from.

use crate::interfaces::InterfaceSource;
use crate::meter::Limits;
use crate::nat64::Nat64Source;
use crate::policy::ExitPolicy;
use crate::schedule::{Clock, Schedule};
use crate::tls::Pin;
use exitpool_protocol::Secret;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default number of relay streams an agent serves at once.
pub const DEFAULT_MAX_STREAMS: u32 = 64;

/// Default period of the owner's one-line summary in the log.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Default shortest time between two log lines summarising refused
/// destinations: customers choose the targets, so one line per refusal would
/// let them fill the volunteer's log.
pub const DEFAULT_REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Default wait before trying again after the gateway presented a certificate
/// that does not match a pin this agent has connected with before: long, since
/// it is likely a forgery on the path (or a replaced certificate needing a new
/// `--pin`), and short enough that sharing resumes by itself when it passes.
pub const DEFAULT_PIN_MISMATCH_RETRY: Duration = Duration::from_secs(600);

/// Default period for re-reading the device's interface addresses between
/// connections: a new IPv6 prefix from the router or a new Wi-Fi network is
/// refused within a minute.
pub const DEFAULT_INTERFACE_REFRESH: Duration = Duration::from_secs(60);

/// Default wait between two background tries of QUIC while the tunnel runs
/// over TCP: a network that unblocks UDP is back on QUIC within minutes, and
/// one that does not pays one failed handshake per interval.
pub const DEFAULT_QUIC_RETRY: Duration = Duration::from_secs(300);

/// Default head start QUIC gets before TLS over TCP joins the race.
pub const DEFAULT_RACE_DELAY: Duration = Duration::from_millis(250);

/// Default longest time a tunnel left behind by a move to QUIC keeps serving
/// its live streams (the relay's own idle bound).
pub const DEFAULT_MOVE_DRAIN: Duration = Duration::from_secs(600);

/// Which tunnel transport an agent uses (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
    /// Race them (QUIC first, TCP a moment later), remember the winner, and
    /// move back to QUIC when it works again. The default.
    #[default]
    Auto,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "quic" => Ok(TransportChoice::Quic),
            "tcp" => Ok(TransportChoice::Tcp),
            "auto" => Ok(TransportChoice::Auto),
            other => Err(format!(
                "unknown transport {other:?}; use quic, tcp or auto"
            )),
        }
    }
}

/// Most gateway addresses an agent considers (all `--gateway` values and
/// every address they resolve to): one failover cycle tries each once.
pub const MAX_GATEWAYS: usize = 64;

/// Default time live streams get to finish after shutdown is asked for.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Everything an agent is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Gateways, each `host:port` (UDP for QUIC, the same port number on TCP),
    /// never empty. A name resolving to several addresses counts as several
    /// gateways; the agent prefers one by its id and fails over along the
    /// rest (see `connect::gateway_order`).
    pub gateways: Vec<String>,
    /// Pin of the gateway's certificate.
    pub pin: Pin,
    /// Enrolment token.
    pub token: Secret,
    /// Local address for the tunnel socket and for target connections.
    pub bind: Option<IpAddr>,
    /// Which destinations may be dialled.
    pub policy: ExitPolicy,
    /// Where the agent id is kept; without it the id lasts one process.
    pub state_dir: Option<PathBuf>,
    /// Most relay streams served at once.
    pub max_streams: u32,
    /// How long live streams may finish on shutdown.
    pub drain_grace: Duration,
    /// Bounds on UDP flows ([`crate::udp`]).
    pub udp: UdpLimits,
    /// How long each handshake step may take: resolving the gateway, the QUIC
    /// handshake, the answer to `Hello`, a relay stream's `OpenRequest`, and
    /// sending `Draining`. Default [`exitpool_protocol::HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// How long resolving and dialling a target may take before the agent
    /// answers `ConnectionTimeout`. Default [`exitpool_protocol::CONNECT_TIMEOUT`],
    /// which the gateway's own wait for the answer is sized after.
    pub connect_timeout: Duration,
    /// Software name and version sent in `Hello`.
    pub software: String,
    /// Bandwidth cap and quota.
    pub limits: Limits,
    /// Local address for the JSON status endpoint, if wanted.
    pub status_listen: Option<SocketAddr>,
    /// Bearer token that shows the device's id and addresses on the status
    /// endpoint; without it (or when none is set) they are left out.
    pub status_token: Option<exitpool_protocol::Secret>,
    /// How often the one-line summary is logged.
    pub summary_interval: Duration,
    /// Shortest time between two log lines that count refused destinations;
    /// default [`DEFAULT_REFUSAL_SUMMARY_INTERVAL`].
    pub refusal_summary_interval: Duration,
    /// Wait (with jitter, half to all of it) before retrying after a pin
    /// mismatch on a pin this agent has connected with before; default
    /// [`DEFAULT_PIN_MISMATCH_RETRY`]. A mismatch on a pin never connected with
    /// stops the agent instead.
    pub pin_mismatch_retry: Duration,
    /// Where the device's interface addresses are read from; each is refused
    /// as a target (IPv6 with its prefix). Default [`InterfaceSource::system`].
    pub interfaces: InterfaceSource,
    /// Where the network's NAT64 prefix is discovered (RFC 7050), refused as
    /// a target; default [`Nat64Source::system`]. Not asked while
    /// `allow_private` is on, since no address rule applies then.
    pub nat64: Nat64Source,
    /// How often the interface addresses are read again while connected (they
    /// are also read at every connection); default [`DEFAULT_INTERFACE_REFRESH`].
    pub interface_refresh: Duration,
    /// Which tunnel transport to use; default [`TransportChoice::Auto`].
    pub transport: TransportChoice,
    /// Keep-alive period on either transport (NAT bindings), and the unit of
    /// the degraded-QUIC check: a QUIC tunnel that receives nothing for two of
    /// these in a row counts as blocked. Default
    /// [`exitpool_protocol::KEEP_ALIVE_INTERVAL`].
    pub keep_alive: Duration,
    /// Head start QUIC gets in the race; default [`DEFAULT_RACE_DELAY`].
    pub race_delay: Duration,
    /// With `Auto` on TCP, how often QUIC is tried again in the background;
    /// default [`DEFAULT_QUIC_RETRY`].
    pub quic_retry: Duration,
    /// Longest a TCP tunnel left for QUIC keeps serving its live streams;
    /// default [`DEFAULT_MOVE_DRAIN`].
    pub move_drain: Duration,
    /// When to share and how fast, and the monthly byte cap; `None` shares
    /// all the time.
    pub schedule: Option<Schedule>,
    /// Where the schedule reads the time; default the system clock.
    pub clock: Clock,
}

// Bounds on UDP flows ([`crate::udp`]) live here with the rest of the
// agent's settings, so the flows' module depends on the settings and not the
// other way round.

/// Default most UDP flows open at once on one tunnel.
pub const DEFAULT_MAX_FLOWS: u32 = 64;
/// Default most datagrams per second one flow carries (both ways together).
pub const DEFAULT_PACKETS_PER_SECOND: u32 = 2_000;
/// Default idle timeout of a flow: the common NAT binding lifetime for UDP.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's bounds on UDP flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpLimits {
    /// Most flows open at once on one tunnel; more are answered
    /// `AgentUnavailable`. 0 turns UDP off.
    pub max_flows: u32,
    /// Most datagrams per second per flow, both ways together; more are
    /// dropped and counted.
    pub packets_per_second: u32,
    /// A flow with no datagram either way for this long ends.
    pub idle_timeout: Duration,
}

impl Default for UdpLimits {
    fn default() -> Self {
        UdpLimits {
            max_flows: DEFAULT_MAX_FLOWS,
            packets_per_second: DEFAULT_PACKETS_PER_SECOND,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}
