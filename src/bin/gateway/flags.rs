//! The gateway's flags: clap argument groups, each filling its part of
//! [`GatewayConfig`]; and the subcommands.
//!
//! Every flag is also a key of the `--config` file (config_file.rs reads
//! them from clap's `Command`, so a flag added here has its key at once): the
//! first word of its help heading ([`heading`]) is the file's section, its
//! long name with `_` for `-` the key. A flag whose value name is `SECONDS` or
//! `MS` is a duration there (`"15s"`, `"500ms"`), `BYTES` a size and `RATE` a
//! rate (`"10GB"`, `"2MB/s"`). A secret (`hide_env_values`) is never echoed.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use exitpool::gateway::auth::{AgentTokens, Customer, Users};
use exitpool::gateway::config::{DEFAULT_ADMIN, DEFAULT_LISTEN, DEFAULT_TUNNEL};
use exitpool::gateway::{GatewayConfig, TunnelTcp};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The help headings, one per section of the config file (its first word, in
/// lower case): a flag goes under the heading of its area whatever struct
/// holds it.
pub(crate) mod heading {
    pub(crate) const CUSTOMERS: &str = "Customers (port, accounts, TLS, balancers)";
    pub(crate) const TUNNEL: &str = "Tunnel (agents' ports and tokens)";
    pub(crate) const ADMIN: &str = "Admin (port and token)";
    pub(crate) const LIMITS: &str = "Limits";
    pub(crate) const ROUTING: &str = "Routing (timeouts, retries, GeoIP)";
    pub(crate) const HEALTH: &str = "Health (silence checks, cooling)";
    pub(crate) const LOGGING: &str = "Logging";
    pub(crate) const FLEET: &str = "Fleet (--redis)";
    pub(crate) const RUNTIME: &str = "Runtime (state, threads, config file, demo)";
}

/// The exitpool gateway: customers' proxy port, agents' QUIC tunnel, operators'
/// stats.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) ports: PortArgs,
    #[command(flatten)]
    pub(crate) accounts: AccountArgs,
    #[command(flatten)]
    pub(crate) customer_ports: CustomerPortArgs,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) routing: RoutingArgs,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
}

/// The ports and the state directory.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::TUNNEL)]
pub(crate) struct PortArgs {
    /// Customer port: HTTP proxy and SOCKS5.
    #[arg(long, default_value = DEFAULT_LISTEN, help_heading = heading::CUSTOMERS)]
    pub(crate) listen: SocketAddr,
    /// QUIC port (UDP) agents connect to.
    #[arg(long, default_value = DEFAULT_TUNNEL)]
    pub(crate) tunnel: SocketAddr,
    /// TLS-over-TCP tunnel port for agents whose networks block UDP
    /// [default: the --tunnel address and port number, on TCP].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_tunnel_tcp")]
    pub(crate) tunnel_tcp: Option<SocketAddr>,
    /// Turn the TLS-over-TCP tunnel port off (agents then need UDP).
    #[arg(long)]
    pub(crate) no_tunnel_tcp: bool,
    /// Admin port for /stats and /healthz.
    #[arg(long, default_value = DEFAULT_ADMIN, help_heading = heading::ADMIN)]
    pub(crate) admin: SocketAddr,
    /// Turn the admin port off.
    #[arg(long, help_heading = heading::ADMIN)]
    pub(crate) no_admin: bool,
    /// Where the certificate, key and secrets live.
    #[arg(long, help_heading = heading::RUNTIME)]
    pub(crate) state_dir: Option<PathBuf>,
}

/// Customer accounts and the tokens agents enrol with.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::CUSTOMERS)]
pub(crate) struct AccountArgs {
    /// A customer account, NAME:PASSWORD (repeatable).
    #[arg(
        long = "user",
        value_name = "NAME:PASSWORD",
        env = "EXITPOOL_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) users: Vec<String>,
    /// Customer accounts file (TOML, `[[customer]]` entries with password hashes
    /// and limits); re-read on SIGHUP.
    #[arg(long = "users", value_name = "FILE")]
    pub(crate) users_file: Option<PathBuf>,
    /// A token agents may enrol with (repeatable).
    #[arg(
        long = "agent-token",
        value_name = "TOKEN",
        env = "EXITPOOL_AGENT_TOKEN",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = heading::TUNNEL
    )]
    pub(crate) agent_tokens: Vec<String>,
    /// Agent tokens file, one token per line (`#` comments); re-read on SIGHUP.
    #[arg(long = "agent-tokens", value_name = "FILE", help_heading = heading::TUNNEL)]
    pub(crate) agent_tokens_file: Option<PathBuf>,
}

/// What the customer ports speak besides the plain HTTP proxy and SOCKS5, and whom they trust.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::CUSTOMERS)]
pub(crate) struct CustomerPortArgs {
    /// PEM certificate chain for TLS on the customer ports (an HTTPS proxy,
    /// told from HTTP and SOCKS5 by its first byte); re-read on SIGHUP.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// A UDP address for MASQUE CONNECT-UDP over HTTP/3 (RFC 9298: UDP and
    /// HTTP/3 through an exit), with --tls-cert's certificate (ALPN `h3`).
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub(crate) listen_h3: Option<std::net::SocketAddr>,
    /// Extra customer ports whose number selects targeting (TOML: `[[ports]]`
    /// entries with `ports`, `targeting`, `session_per_port`), on --listen's address.
    #[arg(long, value_name = "FILE")]
    pub(crate) entry_ports: Option<PathBuf>,
    /// A balancer's network (CIDR) or address trusted to send a PROXY protocol
    /// v2 header on the customer ports (repeatable): its connections must begin
    /// with one, whose source address is then the customer's.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR", value_parser = exitpool::cli::network)]
    pub(crate) proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// Bounds on customer connections and agents.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::LIMITS)]
pub(crate) struct LimitArgs {
    /// Most customer connections open at once.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// Most connections from one address that have not authenticated yet.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_unauthenticated_per_ip: usize,
    /// Most connections in all that have not authenticated yet (past it:
    /// `503 gateway_busy`), so strangers never fill --max-connections.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_MAX_UNAUTHENTICATED)]
    pub(crate) max_unauthenticated: usize,
    /// TLS handshakes one address (IPv4, or IPv6 /64) may start per second on
    /// the HTTPS proxy port, with bursts of twice that; past it the ClientHello
    /// is answered with a TLS `internal_error` alert before any cryptography.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_TLS_HANDSHAKES_PER_IP)]
    pub(crate) max_tls_handshakes_per_ip: std::num::NonZeroU32,
    /// Most streams at once on one HTTP/2 connection to the HTTPS proxy port
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); each stream is a customer connection.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_H2_MAX_STREAMS)]
    pub(crate) h2_max_streams: u32,
    /// Close a customer tunnel after this many seconds without traffic.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub(crate) idle_timeout: u64,
    /// Ports a SOCKS5 UDP association's relay socket is bound in, as LOW-HIGH
    /// (for a firewall that opens only these); default: an ephemeral port.
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_port_range)]
    pub(crate) socks_udp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Most destinations one SOCKS5 UDP association reaches at once;
    /// datagrams to more are dropped.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_SOCKS_UDP_MAX_FLOWS)]
    pub(crate) socks_udp_max_flows: u32,
    /// Most agents connected at once from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_MAX_AGENTS_PER_ADDRESS)]
    pub(crate) max_agents_per_address: usize,
}

/// How an exit is chosen, waited for and cooled, and where agents are located.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::ROUTING)]
pub(crate) struct RoutingArgs {
    /// Seconds a request waits for an exit to answer `Open`, per exit tried.
    #[arg(long, value_name = "SECONDS", default_value_t = exitpool::gateway::config::DEFAULT_OPEN_TIMEOUT.as_secs())]
    pub(crate) open_timeout: u64,
    /// Most exits one request tries when exits fail it for their own reasons
    /// (lost tunnel, no answer, unavailable) before anything reached the
    /// customer; 1 turns transparent retry off.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_OPEN_ATTEMPTS)]
    pub(crate) open_attempts: u32,
    /// Seconds a request may spend reaching its target over all its attempts.
    #[arg(long, value_name = "SECONDS", default_value_t = exitpool::gateway::config::DEFAULT_CONNECT_DEADLINE.as_secs())]
    pub(crate) connect_deadline: u64,
    /// Milliseconds of silence from an exit a waiting customer stream allows
    /// before the exit's tunnel is checked.
    #[arg(long, value_name = "MS", help_heading = heading::HEALTH, default_value_t = exitpool::gateway::config::DEFAULT_SILENCE_CHECK.as_millis() as u64)]
    pub(crate) silence_check_ms: u64,
    /// Milliseconds that check waits for the tunnel's answer (at least three
    /// round trips) before the agent is dropped and its streams reset.
    #[arg(long, value_name = "MS", help_heading = heading::HEALTH, default_value_t = exitpool::gateway::config::DEFAULT_LIVENESS_TIMEOUT.as_millis() as u64)]
    pub(crate) liveness_timeout_ms: u64,
    /// Exit failures in a row that cool an exit (take it out of routing for a
    /// while); 0 never cools.
    #[arg(long, default_value_t = 3, help_heading = heading::HEALTH)]
    pub(crate) cool_after: u32,
    /// Seconds of an exit's first cooling; each further one doubles, up to
    /// --max-cooling.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, help_heading = heading::HEALTH)]
    pub(crate) cooling: u64,
    /// Longest cooling, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, help_heading = heading::HEALTH)]
    pub(crate) max_cooling: u64,
    /// Route on live load alone: no health scores, no cooling (for comparison).
    #[arg(long, help_heading = heading::HEALTH)]
    pub(crate) no_health: bool,
    /// A MaxMind-format database (GeoLite2 Country/City/ASN, ip-location-db, ...)
    /// to locate agents with, instead of the embedded country database
    /// (repeatable: country + ASN + city).
    #[arg(long = "geoip", value_name = "FILE")]
    pub(crate) geoip: Vec<PathBuf>,
}

/// Who may use the admin port, and how logs are written.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::ADMIN)]
pub(crate) struct AdminArgs {
    /// Bearer token for the admin port; required when it binds beyond loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EXITPOOL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub(crate) admin_token: Option<String>,
    /// A host name the admin port answers to, besides IP addresses and localhost
    /// (repeatable); requests naming any other host are refused.
    #[arg(long = "admin-host", value_name = "NAME")]
    pub(crate) admin_hosts: Vec<String>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = heading::LOGGING)]
    pub(crate) log_format: LogFormat,
    /// Which lines are written (`RUST_LOG` syntax: `info`,
    /// `warn,exitpool_gateway=debug`); re-read from the config file on SIGHUP.
    #[arg(
        long,
        value_name = "FILTER",
        env = "RUST_LOG",
        default_value = exitpool::logs::DEFAULT_FILTER,
        hide_default_value = true,
        value_parser = exitpool::logs::check_filter,
        help_heading = heading::LOGGING
    )]
    pub(crate) log_filter: String,
}

/// Fleet membership through Redis, and the peer links.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::FLEET)]
pub(crate) struct FleetArgs {
    /// Join a fleet: share the pool, sessions, usage and limits with other
    /// gateways through Redis or Valkey (redis://[user:password@]host:port[/db],
    /// rediss://…, or unix:///path/to/socket). Without it the gateway stands
    /// alone with its state in memory.
    #[arg(
        long,
        value_name = "URL",
        env = "EXITPOOL_REDIS_URL",
        hide_env_values = true
    )]
    pub(crate) redis: Option<String>,
    /// PEM certificates (a CA) that a rediss:// server's certificate must
    /// chain to; default: the system's roots.
    #[arg(long, value_name = "PEM", requires = "redis")]
    pub(crate) redis_ca: Option<PathBuf>,
    /// This gateway's id in the fleet; default: the host name and a hash of
    /// the state directory's path.
    #[arg(long, value_name = "ID", requires = "redis")]
    pub(crate) gateway_id: Option<String>,
    /// Where other gateways of the fleet dial this one: QUIC on this UDP port
    /// and TLS on the TCP port of the same number.
    #[arg(long, value_name = "ADDR", default_value = exitpool::gateway::config::DEFAULT_PEER_LISTEN)]
    pub(crate) peer_listen: SocketAddr,
    /// The transport of the peer links this gateway dials: tcp (TLS over TCP,
    /// half the CPU per byte; for gateways in one data centre) or quic (for
    /// gateways far apart over lossy paths).
    #[arg(long, value_enum, default_value_t = PeerTransportArg::Tcp, requires = "redis")]
    pub(crate) peer_transport: PeerTransportArg,
    /// The address other gateways dial for --peer-listen; needed when that
    /// binds every address (0.0.0.0).
    #[arg(long, value_name = "ADDR", requires = "redis")]
    pub(crate) peer_advertise: Option<SocketAddr>,
    /// Milliseconds between fleet heartbeats (liveness, load, usage flush).
    #[arg(long, value_name = "MS", default_value_t = exitpool::gateway::config::DEFAULT_FLEET_HEARTBEAT.as_millis() as u64)]
    pub(crate) fleet_heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which a gateway's agents leave
    /// the others' pools.
    #[arg(long, value_name = "MS", default_value_t = exitpool::gateway::config::DEFAULT_FLEET_GATEWAY_TIMEOUT.as_millis() as u64)]
    pub(crate) fleet_gateway_timeout_ms: u64,
    /// Milliseconds a gateway's agent list may disagree with its changes
    /// before it is read whole.
    #[arg(long, value_name = "MS", default_value_t = exitpool::gateway::config::DEFAULT_FLEET_RESYNC.as_millis() as u64)]
    pub(crate) fleet_resync_ms: u64,
    /// Milliseconds one Redis command may take before the gateway carries on
    /// without it (and reports itself degraded).
    #[arg(long, value_name = "MS", default_value_t = exitpool::gateway::config::DEFAULT_REDIS_TIMEOUT.as_millis() as u64)]
    pub(crate) redis_timeout_ms: u64,
}

/// The control plane's store: accounts, usage history, the `/api/v1` API
/// and its notices (docs/control.md).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Database and control plane")]
pub(crate) struct DatabaseArgs {
    /// Where accounts and usage history live: a SQLite file, a sqlite: URL,
    /// or postgres://USER:PASSWORD@HOST/DB (one for a whole fleet)
    /// [default: control.sqlite3 in the state directory, unless --users or
    /// --redis is given].
    #[arg(
        long,
        value_name = "LOCATION",
        env = "EXITPOOL_DATABASE",
        hide_env_values = true
    )]
    pub(crate) database: Option<String>,
    /// Days hourly usage history is kept.
    #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) history_hourly_days: u32,
    /// Days daily usage history (accounts and exits) is kept.
    #[arg(long, value_name = "DAYS", default_value_t = 730, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) history_daily_days: u32,
    /// A bearer token that may only read /api/v1 (GET), for monitoring.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EXITPOOL_ADMIN_READONLY_TOKEN",
        hide_env_values = true
    )]
    pub(crate) admin_readonly_token: Option<String>,
    /// An http:// or https:// URL that gets a signed JSON POST when an
    /// account passes 80 % and 100 % of a quota.
    #[arg(long, value_name = "URL", requires = "webhook_secret")]
    pub(crate) webhook_url: Option<String>,
    /// The HMAC-SHA256 key of --webhook-url's X-Exitpool-Signature header.
    #[arg(
        long,
        value_name = "SECRET",
        env = "EXITPOOL_WEBHOOK_SECRET",
        hide_env_values = true,
        requires = "webhook_url"
    )]
    pub(crate) webhook_secret: Option<String>,
    /// PEM certificates (a private CA) to trust for an https:// --webhook-url,
    /// instead of the system's roots.
    #[arg(long, value_name = "FILE", requires = "webhook_url")]
    pub(crate) webhook_ca: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The store's location: --database, else the state directory's SQLite
    /// file unless a --users file or --redis says accounts come from flags.
    pub(crate) fn location(
        &self,
        state_dir: &std::path::Path,
        users_file: bool,
        redis: bool,
    ) -> Option<String> {
        match &self.database {
            Some(location) => Some(location.clone()),
            None if users_file || redis => None,
            None => Some(
                state_dir
                    .join(exitpool::gateway::control_link::SQLITE_FILE)
                    .to_string_lossy()
                    .into_owned(),
            ),
        }
    }

    /// The control plane's part of the start.
    pub(crate) fn options(
        &self,
        config: &GatewayConfig,
    ) -> exitpool::gateway::control_link::ControlOptions {
        use exitpool::gateway::control_link::{ControlOptions, Retention};
        ControlOptions {
            database: self.location(
                &config.state_dir,
                config.users_file.is_some(),
                config.fleet.is_some(),
            ),
            retention: Retention {
                hourly_days: self.history_hourly_days,
                daily_days: self.history_daily_days,
                ..Retention::default()
            },
            read_only_token: self.admin_readonly_token.clone().filter(|t| !t.is_empty()),
            webhook: match (&self.webhook_url, &self.webhook_secret) {
                (Some(url), Some(secret)) => Some(exitpool::gateway::webhooks::WebhookConfig {
                    url: url.clone(),
                    secret: secret.clone(),
                    ca_file: self.webhook_ca.clone(),
                }),
                _ => None,
            },
        }
    }
}

/// The runtime, and the demo.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = heading::RUNTIME)]
pub(crate) struct RuntimeArgs {
    /// Read flags from this TOML file: a section per help heading, a key per
    /// flag (`open_timeout = "15s"` in `[routing]`); flags and environment
    /// variables override it. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Runtime worker threads; 0 is one per core.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Start with a local agent and a demo user, make one request through them,
    /// and print how to try it; state goes to a temporary directory unless
    /// --state-dir is given.
    #[arg(long)]
    pub(crate) demo: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PeerTransportArg {
    Tcp,
    Quic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Read a customer password on standard input and print its hash for the
    /// `password_hash` key of the users file.
    HashPassword,
    /// Print the certificate pin agents need (sha256:...) from the state
    /// directory's identity; with --init, create the identity if there is none.
    Pin {
        /// Where the certificate lives.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Create the identity (certificate and key) if the directory holds none.
        #[arg(long)]
        init: bool,
    },
    /// Check a config file (as --config reads it): print every error with
    /// its line and key and exit non-zero, or a summary and exit 0.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Agent enrolment tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Customers and sub-users of a running gateway (through its /api/v1).
    Customers {
        #[command(subcommand)]
        action: crate::operators::Customers,
        #[command(flatten)]
        api: crate::operators::Api,
    },
    /// Agent tokens in a running gateway's database (through its /api/v1).
    Tokens {
        #[command(subcommand)]
        action: crate::operators::Tokens,
        #[command(flatten)]
        api: crate::operators::Api,
    },
    /// A running gateway's live customer connections: list, close.
    Connections {
        #[command(subcommand)]
        action: crate::operators::Connections,
        #[command(flatten)]
        api: crate::operators::Api,
    },
    /// The exits in a running gateway's pool: list, ban, unban.
    Exits {
        #[command(subcommand)]
        action: crate::operators::Exits,
        #[command(flatten)]
        api: crate::operators::Api,
    },
    /// Move a --users file's accounts into a running gateway's database.
    Accounts {
        #[command(subcommand)]
        action: crate::operators::Accounts,
        #[command(flatten)]
        api: crate::operators::Api,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenAction {
    /// Print a new random agent token (256 bits) for --agent-token or a line
    /// of the --agent-tokens file.
    New,
}

impl PortArgs {
    /// The customer, tunnel and admin ports.
    pub(crate) fn apply(&self, config: &mut GatewayConfig) {
        config.listen = self.listen;
        config.tunnel = self.tunnel;
        config.tunnel_tcp = match (self.no_tunnel_tcp, self.tunnel_tcp) {
            (true, _) => TunnelTcp::Off,
            (false, Some(addr)) => TunnelTcp::At(addr),
            (false, None) => TunnelTcp::SamePort,
        };
        config.admin = (!self.no_admin).then_some(self.admin);
    }
}

/// `LOW-HIGH`, two non-zero ports with LOW <= HIGH (for `--socks-udp-ports`).
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH, got {text:?}"))?;
    let port = |part: &str| match part.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{part:?} is not a port from 1 to 65535")),
    };
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(format!("{low} is above {high}"));
    }
    Ok(low..=high)
}

impl LimitArgs {
    /// The connection and agent caps, each at least 1.
    pub(crate) fn apply(&self, config: &mut GatewayConfig) {
        config.idle_timeout = Duration::from_secs(self.idle_timeout.max(1));
        config.socks_udp_ports = self.socks_udp_ports.clone();
        config.socks_udp_max_flows = self.socks_udp_max_flows.max(1);
        config.max_connections = self.max_connections.max(1);
        config.max_unauthenticated_per_ip = self.max_unauthenticated_per_ip.max(1);
        config.max_unauthenticated = self.max_unauthenticated.max(1);
        config.tls_handshakes_per_ip = self.max_tls_handshakes_per_ip;
        config.h2_max_streams = self.h2_max_streams.max(1);
        config.max_agents_per_address = self.max_agents_per_address.max(1);
    }
}

impl CustomerPortArgs {
    /// TLS, the balancers trusted, and the entry ports (whose file is read
    /// here).
    pub(crate) fn apply(&self, config: &mut GatewayConfig) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.customer_tls = Some(exitpool::gateway::customer_tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        config.listen_h3 = self.listen_h3;
        config.proxy_protocol_from = self.proxy_protocol_from.clone();
        if let Some(path) = &self.entry_ports {
            config.entry_ports = exitpool::gateway::entry_ports::EntryPorts::load(path)?;
            config.entry_ports_file = Some(path.clone());
        }
        Ok(())
    }
}

impl RoutingArgs {
    /// Open timeouts and retries, the silence check, exit health, and the
    /// GeoIP databases (opened here).
    pub(crate) fn apply(&self, config: &mut GatewayConfig) -> anyhow::Result<()> {
        config.open_timeout = Duration::from_secs(self.open_timeout.max(1));
        config.open_attempts = self.open_attempts.max(1);
        config.connect_deadline = Duration::from_secs(self.connect_deadline.max(1));
        config.silence_check = Duration::from_millis(self.silence_check_ms.max(10));
        config.liveness_timeout = Duration::from_millis(self.liveness_timeout_ms.max(10));
        config.health.cool_after = self.cool_after;
        config.health.cooling = Duration::from_secs(self.cooling.max(1));
        config.health.max_cooling = Duration::from_secs(self.max_cooling.max(self.cooling).max(1));
        config.health.enabled = !self.no_health;
        if !self.geoip.is_empty() {
            config.geoip = std::sync::Arc::new(exitpool::geoip::GeoIp::open(&self.geoip)?);
        }
        Ok(())
    }
}

impl FleetArgs {
    /// The fleet's part, with `--redis`.
    pub(crate) fn config(&self) -> Option<exitpool::gateway::config::FleetConfig> {
        let url = self.redis.as_ref()?;
        let mut fleet = exitpool::gateway::config::FleetConfig::new(url);
        fleet.gateway_id = self.gateway_id.clone();
        fleet.redis_ca = self.redis_ca.clone();
        fleet.peer_listen = self.peer_listen;
        fleet.peer_advertise = self.peer_advertise;
        fleet.peer_transport = match self.peer_transport {
            PeerTransportArg::Tcp => exitpool::gateway::config::PeerTransport::Tcp,
            PeerTransportArg::Quic => exitpool::gateway::config::PeerTransport::Quic,
        };
        fleet.heartbeat = Duration::from_millis(self.fleet_heartbeat_ms.max(10));
        fleet.gateway_timeout = Duration::from_millis(
            self.fleet_gateway_timeout_ms
                .max(self.fleet_heartbeat_ms * 2),
        );
        fleet.resync_interval = Duration::from_millis(self.fleet_resync_ms.max(10));
        fleet.redis_timeout = Duration::from_millis(self.redis_timeout_ms.max(10));
        Some(fleet)
    }
}

impl AccountArgs {
    /// Customers and agent tokens, with the demo's user and token when
    /// `demo` holds them; a gateway nobody could use or join is refused.
    pub(crate) fn apply(
        &self,
        config: &mut GatewayConfig,
        demo: Option<&(String, String)>,
        store_serves_accounts: bool,
    ) -> anyhow::Result<()> {
        let mut customers = self
            .users
            .iter()
            .map(|spec| Customer::parse(spec).with_context(|| "in --user"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for token in &self.agent_tokens {
            exitpool::gateway::auth::check_token_strength(token)
                .map_err(|weak| anyhow::anyhow!("in --agent-token: {weak}"))?;
        }
        let mut tokens = self.agent_tokens.clone();
        if let Some((password, token)) = demo {
            customers.push(Customer::parse(&format!("demo:{password}")).expect("valid demo user"));
            tokens.push(token.clone());
        }
        if customers.is_empty() && self.users_file.is_none() && !store_serves_accounts {
            bail!("no customer accounts: add --users FILE, --user NAME:PASSWORD or --database (or try --demo)");
        }
        // With the database owning the accounts, agents may join with its
        // tokens (`gateway tokens new`), made once the gateway runs.
        if tokens.is_empty() && self.agent_tokens_file.is_none() && !store_serves_accounts {
            bail!(
                "no agent can join: add --agent-token TOKEN or --agent-tokens FILE (or try --demo)"
            );
        }
        config.users = Users::new(customers);
        config.agent_tokens = AgentTokens::new(tokens);
        config.users_file = self.users_file.clone();
        config.agent_tokens_file = self.agent_tokens_file.clone();
        Ok(())
    }
}

impl AdminArgs {
    /// The admin port's host names and token (an empty token is none).
    pub(crate) fn apply(&self, config: &mut GatewayConfig) {
        config.admin_hosts = self.admin_hosts.clone();
        config.admin_token = self
            .admin_token
            .clone()
            .filter(|token| !token.is_empty())
            .map(exitpool::protocol::Secret);
    }
}
