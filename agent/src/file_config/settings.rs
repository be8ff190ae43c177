//! [`Settings`]: what `agent.toml` or the agent's flags say, each key
//! optional so the flags can be laid over the file.

use crate::meter::Period;
use crate::policy::PortRange;
use crate::schedule::Schedule;
use crate::{Pin, TransportChoice};
use exitpool_protocol::Secret;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

/// What a configuration file or the flags say; `None` is "not said", so the
/// flags can be laid over the file ([`Settings::or`]).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `gateway`: gateway tunnel addresses, `host:port`; empty is not said.
    pub gateways: Vec<String>,
    /// `transport`: quic, tcp or auto.
    pub transport: Option<TransportChoice>,
    /// `pin`: the gateway's certificate pin.
    pub pin: Option<Pin>,
    /// `token`: the enrolment token.
    pub token: Option<Secret>,
    /// `bind`: local IP for the tunnel and target connections.
    pub bind: Option<IpAddr>,
    /// `allow_private`: dial loopback and private targets (testing only).
    pub allow_private: Option<bool>,
    /// `state_dir`: where the agent keeps its id and usage.
    pub state_dir: Option<PathBuf>,
    /// `max_streams`: most relay streams at once.
    pub max_streams: Option<u32>,
    /// `max_rate`: bandwidth cap per direction, bytes per second.
    pub max_rate: Option<NonZeroU32>,
    /// `udp_max_flows`: most UDP flows at once per tunnel (0 turns UDP off).
    pub udp_max_flows: Option<u32>,
    /// `udp_packets_per_second`: most datagrams per second per UDP flow.
    pub udp_packets_per_second: Option<u32>,
    /// `udp_idle_timeout`: a UDP flow silent this long ends.
    pub udp_idle_timeout: Option<Duration>,
    /// `quota_bytes`: bytes (up + down) per `quota_period`.
    pub quota_bytes: Option<u64>,
    /// `quota_period`: day or month.
    pub quota_period: Option<Period>,
    /// `deny_ports`: ports never dialled.
    pub deny_ports: Option<Vec<PortRange>>,
    /// `allow_ports`: the only ports dialled.
    pub allow_ports: Option<Vec<PortRange>>,
    /// `status_listen`: where the JSON status endpoint listens.
    pub status_listen: Option<SocketAddr>,
    /// `status_token`: shows the device's id and addresses on the status
    /// endpoint to a request carrying it.
    pub status_token: Option<Secret>,
    /// `summary_interval` (flag `--summary-secs`): between log summaries.
    pub summary_interval: Option<Duration>,
    /// `keep_alive` (flag `--keep-alive-ms`): between tunnel keep-alives.
    pub keep_alive: Option<Duration>,
    /// `handshake_timeout` (flag `--handshake-timeout-ms`): per handshake step.
    pub handshake_timeout: Option<Duration>,
    /// `threads`: runtime worker threads (the binary's, not the library's).
    pub threads: Option<usize>,
    /// `consent`: the device owner agrees to share the connection.
    pub consent: Option<bool>,
    /// `[schedule]`: windows, their rate caps, the monthly cap.
    pub schedule: Option<Schedule>,
}
