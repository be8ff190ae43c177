//! What an operator configures. The binary fills this from flags; tests and
//! embedding programs build it directly.

use crate::auth::{AgentTokens, Users};
use crate::customer_tls::TlsFiles;
use crate::directory::HealthPolicy;
use crate::entry_ports::EntryPorts;
use exitpool_geoip::GeoIp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default of [`GatewayConfig::tls_handshakes_per_ip`]: a browser's or a
/// scraper's connection pool filling at once passes; one address cannot make
/// the HTTPS port spend more than a few percent of a core on handshakes.
pub const DEFAULT_TLS_HANDSHAKES_PER_IP: std::num::NonZeroU32 =
    std::num::NonZeroU32::new(100).expect("non-zero");
/// Default of [`GatewayConfig::h2_max_streams`]: Chromium's and curl's
/// parallel requests to one proxy fit, and one connection holds at most this
/// many relays.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;
/// Default of [`GatewayConfig::max_unauthenticated`]: a quarter of the
/// default `max_connections`.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 2_500;

/// Default customer port (HTTP proxy and SOCKS5).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default QUIC port for agents.
pub const DEFAULT_TUNNEL: &str = "0.0.0.0:4433";
/// Default admin port.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Default for [`GatewayConfig::max_agents_per_address`]: a household's devices,
/// not a server farm behind one address.
pub const DEFAULT_MAX_AGENTS_PER_ADDRESS: usize = 16;
/// Default for [`GatewayConfig::handshake_retry_above`]: a quarter of the
/// pending-handshake budget, so a flood from spoofed sources meets Retry long
/// before it could fill the budget.
pub const DEFAULT_HANDSHAKE_RETRY_ABOVE: usize = 256;
/// Default for how long the gateway waits for an agent's `OpenReply`: the agent's
/// own connect timeout plus a margin for the tunnel round trip, so the agent's
/// more precise answer normally arrives first.
pub const DEFAULT_OPEN_TIMEOUT: Duration =
    Duration::from_secs(exitpool_protocol::CONNECT_TIMEOUT.as_secs() + 5);

/// Default for [`GatewayConfig::open_attempts`]: the first exit and two more.
pub const DEFAULT_OPEN_ATTEMPTS: u32 = 3;
/// Default for [`GatewayConfig::connect_deadline`]: two full open timeouts, so a
/// request whose first exit never answers still gets a second exit.
pub const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// Default for [`GatewayConfig::silence_check`].
pub const DEFAULT_SILENCE_CHECK: Duration = Duration::from_secs(2);
/// Default for [`GatewayConfig::liveness_timeout`]: a home link's round trip many
/// times over (it is stretched to three measured round trips on slower links).
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

/// Default for [`GatewayConfig::socks_udp_max_flows`].
pub const DEFAULT_SOCKS_UDP_MAX_FLOWS: u32 = 64;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Customer port.
    pub listen: SocketAddr,
    /// Extra customer ports, on the customer port's address, each selecting
    /// targeting by its number (port 0 in tests binds any free port).
    pub entry_ports: EntryPorts,
    /// The file `entry_ports` came from, re-read on SIGHUP.
    pub entry_ports_file: Option<PathBuf>,
    /// TLS on the customer ports (`--tls-cert`, `--tls-key`): a client whose
    /// first byte starts a TLS handshake speaks HTTP inside it.
    pub customer_tls: Option<TlsFiles>,
    /// MASQUE CONNECT-UDP over HTTP/3 (`--listen-h3`, a UDP port), with the
    /// customer ports' certificate; needs `customer_tls`.
    pub listen_h3: Option<SocketAddr>,
    /// QUIC port for agents.
    pub tunnel: SocketAddr,
    /// Admin port; `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Where the certificate, key and secrets live.
    pub state_dir: PathBuf,
    /// Customer accounts.
    pub users: Users,
    /// Accepted agent tokens.
    pub agent_tokens: AgentTokens,
    /// More customers, from a TOML file re-read on reload (see [`crate::accounts`]).
    pub users_file: Option<PathBuf>,
    /// More agent tokens, one per line, re-read on reload.
    pub agent_tokens_file: Option<PathBuf>,
    /// Bearer token every admin request must carry; required when the admin port
    /// binds beyond loopback.
    pub admin_token: Option<exitpool_protocol::Secret>,
    /// Host names the admin port answers to besides IP literals and `localhost`
    /// (any other `Host` is refused, so DNS rebinding cannot reach it).
    pub admin_hosts: Vec<String>,
    /// Deadline for a customer's request head (and SOCKS5 greeting).
    pub head_timeout: Duration,
    /// Ports a SOCKS5 UDP association's relay socket is bound in
    /// (`--socks-udp-ports`); `None`: an ephemeral port.
    pub socks_udp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Most destinations (UDP flows) one SOCKS5 UDP association reaches at
    /// once; datagrams to more are dropped.
    pub socks_udp_max_flows: u32,
    /// Where agents' TLS-over-TCP tunnels are accepted.
    pub tunnel_tcp: TunnelTcp,
    /// A tunnel with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a customer waits for an exit to answer `Open` (the agent's own
    /// connect timeout plus a margin, so its more precise answer comes first).
    pub open_timeout: Duration,
    /// Most exits one request tries before it fails, when an exit fails it for
    /// the exit's own reasons (lost tunnel, no answer, unavailable) and nothing
    /// has reached the customer yet. 1 turns transparent retry off.
    pub open_attempts: u32,
    /// The longest a request waits for an `Opened`, over all its attempts.
    pub connect_deadline: Duration,
    /// A customer stream with nothing arriving from its exit for this long
    /// checks that the exit's tunnel is alive.
    pub silence_check: Duration,
    /// How long that check waits for the tunnel to answer before the agent is
    /// taken for dead and its streams reset.
    pub liveness_timeout: Duration,
    /// How exits are scored, and failing ones cooled.
    pub health: HealthPolicy,
    /// How long an agent has for its QUIC handshake, and again for its `Hello`.
    pub handshake_timeout: Duration,
    /// Most agents connected at once from one IPv4 address or IPv6 /64.
    pub max_agents_per_address: usize,
    /// Agent handshakes in progress from which a new one must first prove its
    /// source address with a stateless QUIC Retry (one extra round trip).
    pub handshake_retry_above: usize,
    /// An agent tunnel silent for this long is dead (QUIC idle timeout; the
    /// negotiated value is the smaller of the gateway's and the agent's, 30 s).
    pub tunnel_idle_timeout: Duration,
    /// Most customer connections open at once.
    pub max_connections: usize,
    /// Most Argon2 password checks running at once (each holds a core).
    pub password_checks: usize,
    /// Longest a password check waits for its turn before `auth_busy`.
    pub password_queue_timeout: Duration,
    /// Most connections from one address that have not authenticated yet.
    pub max_unauthenticated_per_ip: usize,
    /// Most connections in all that have not authenticated yet: a smaller
    /// share of `max_connections`, so strangers cannot take every place.
    pub max_unauthenticated: usize,
    /// TLS handshakes each source address (IPv4, or IPv6 /64) may start per
    /// second on the customer ports, sustained; bursts of twice that pass.
    pub tls_handshakes_per_ip: std::num::NonZeroU32,
    /// Most streams one HTTP/2 customer connection (the HTTPS proxy port,
    /// ALPN `h2`) may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub h2_max_streams: u32,
    /// How long live connections may finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Where agents are: the embedded country database unless `--geoip` files are
    /// given.
    pub geoip: Arc<GeoIp>,
    /// Fleet mode (`--redis`): several gateways sharing one pool; `None` is
    /// the embedded single-process gateway.
    pub fleet: Option<FleetConfig>,
    /// Balancers trusted to send a PROXY protocol v2 header
    /// (`--proxy-protocol-from CIDR`): a customer connection from one of these
    /// networks must begin with one, and its source address is then the
    /// customer's. Empty (the default): no header is ever believed.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// The settings a running gateway reads per connection or per request, so
/// that a re-read config file (SIGHUP) changes them for the next one
/// ([`crate::Gateway::apply_live`]); [`GatewayConfig`] keeps the values the
/// gateway started with. Each field is the [`GatewayConfig`] field of the
/// same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    /// [`GatewayConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// [`GatewayConfig::open_timeout`].
    pub open_timeout: Duration,
    /// [`GatewayConfig::open_attempts`].
    pub open_attempts: u32,
    /// [`GatewayConfig::connect_deadline`].
    pub connect_deadline: Duration,
    /// [`GatewayConfig::socks_udp_max_flows`].
    pub socks_udp_max_flows: u32,
    /// [`GatewayConfig::admin_hosts`].
    pub admin_hosts: Vec<String>,
}

impl LiveSettings {
    /// `config`'s live settings.
    pub fn of(config: &GatewayConfig) -> LiveSettings {
        LiveSettings {
            idle_timeout: config.idle_timeout,
            open_timeout: config.open_timeout,
            open_attempts: config.open_attempts,
            connect_deadline: config.connect_deadline,
            socks_udp_max_flows: config.socks_udp_max_flows,
            admin_hosts: config.admin_hosts.clone(),
        }
    }
}

/// Default for [`FleetConfig::heartbeat`].
pub const DEFAULT_FLEET_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default for [`FleetConfig::gateway_timeout`]: three missed heartbeats.
pub const DEFAULT_FLEET_GATEWAY_TIMEOUT: Duration = Duration::from_secs(3);
/// Default for [`FleetConfig::resync_interval`].
pub const DEFAULT_FLEET_RESYNC: Duration = Duration::from_secs(5);
/// Default for [`FleetConfig::redis_timeout`].
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Fleet mode: gateways sharing one pool through Redis (or Valkey), carrying
/// customers to each other's exits over authenticated peer links.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…`. Never logged:
    /// it may carry a password.
    pub redis_url: exitpool_protocol::Secret,
    /// This gateway's id in the fleet, stable across restarts; default: the
    /// host name and a hash of the state directory's path.
    pub gateway_id: Option<String>,
    /// Where other gateways' peer links are accepted: QUIC on this UDP port
    /// and TLS on the TCP port of the same number.
    pub peer_listen: SocketAddr,
    /// The address other gateways dial for this one's peer link; default:
    /// `peer_listen` as bound, which must then name a specific address.
    pub peer_advertise: Option<SocketAddr>,
    /// Which transport this gateway's own peer links use when it dials.
    pub peer_transport: PeerTransport,
    /// How often this gateway tells the fleet it is alive, publishes its load
    /// and flushes usage.
    pub heartbeat: Duration,
    /// A gateway not heard from for this long is gone: its agents leave every
    /// other gateway's directory.
    pub gateway_timeout: Duration,
    /// How long a gateway's agent list may disagree with what its changes
    /// said before it is read again whole (repairs a lost change).
    pub resync_interval: Duration,
    /// Longest one Redis command may take; past it the gateway carries on
    /// with what it holds and reports itself degraded.
    pub redis_timeout: Duration,
    /// PEM certificates a `rediss://` server's chain must lead to (instead
    /// of the system's roots).
    pub redis_ca: Option<std::path::PathBuf>,
}

impl FleetConfig {
    /// Fleet mode on `redis_url` with the defaults.
    pub fn new(redis_url: &str) -> FleetConfig {
        FleetConfig {
            redis_url: exitpool_protocol::Secret(redis_url.to_owned()),
            gateway_id: None,
            peer_listen: DEFAULT_PEER_LISTEN.parse().expect("valid default"),
            peer_advertise: None,
            peer_transport: PeerTransport::default(),
            heartbeat: DEFAULT_FLEET_HEARTBEAT,
            gateway_timeout: DEFAULT_FLEET_GATEWAY_TIMEOUT,
            resync_interval: DEFAULT_FLEET_RESYNC,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_ca: None,
        }
    }
}

/// The transport of the peer links a gateway dials (`--peer-transport`). Every
/// gateway accepts both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PeerTransport {
    /// TLS over TCP with HTTP/2 streams (the default): between the machines of
    /// one fleet, where loss is rare, it moves a byte for about half the CPU of
    /// QUIC (one TLS record of 16 KiB where QUIC sends ~1.2 KB datagrams), and
    /// that CPU is what the forwarded path pays twice.
    #[default]
    Tcp,
    /// QUIC, for gateways far apart over lossy paths, where its per-stream
    /// loss recovery keeps one lost packet from stalling every customer.
    Quic,
}

/// Default for [`FleetConfig::peer_listen`].
pub const DEFAULT_PEER_LISTEN: &str = "0.0.0.0:4434";

/// Where the TLS-over-TCP tunnel port listens (`--tunnel-tcp`, `--no-tunnel-tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelTcp {
    /// The QUIC tunnel's address and port number, on TCP (the default): agents
    /// need one `--gateway HOST:PORT` for both transports.
    SamePort,
    /// This address.
    At(SocketAddr),
    /// No TCP tunnel: agents on networks without UDP cannot join.
    Off,
}

impl GatewayConfig {
    /// Defaults from DESIGN.md, with `state_dir` and no users or tokens.
    pub fn new(state_dir: PathBuf) -> Self {
        GatewayConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            entry_ports: EntryPorts::default(),
            entry_ports_file: None,
            customer_tls: None,
            tunnel: DEFAULT_TUNNEL.parse().expect("valid default"),
            tunnel_tcp: TunnelTcp::SamePort,
            admin: Some(DEFAULT_ADMIN.parse().expect("valid default")),
            state_dir,
            users: Users::default(),
            agent_tokens: AgentTokens::default(),
            users_file: None,
            agent_tokens_file: None,
            admin_token: None,
            admin_hosts: Vec::new(),
            head_timeout: Duration::from_secs(10),
            socks_udp_ports: None,
            socks_udp_max_flows: DEFAULT_SOCKS_UDP_MAX_FLOWS,
            idle_timeout: Duration::from_secs(300),
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            open_attempts: DEFAULT_OPEN_ATTEMPTS,
            connect_deadline: DEFAULT_CONNECT_DEADLINE,
            silence_check: DEFAULT_SILENCE_CHECK,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            health: HealthPolicy::default(),
            handshake_timeout: exitpool_protocol::HANDSHAKE_TIMEOUT,
            handshake_retry_above: DEFAULT_HANDSHAKE_RETRY_ABOVE,
            max_agents_per_address: DEFAULT_MAX_AGENTS_PER_ADDRESS,
            tunnel_idle_timeout: exitpool_protocol::IDLE_TIMEOUT,
            max_connections: 10_000,
            max_unauthenticated_per_ip: 64,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            tls_handshakes_per_ip: DEFAULT_TLS_HANDSHAKES_PER_IP,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
            listen_h3: None,
            password_checks: std::thread::available_parallelism().map_or(2, |n| n.get()),
            password_queue_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            geoip: Arc::new(GeoIp::embedded()),
            fleet: None,
            proxy_protocol_from: Vec::new(),
        }
    }
}
