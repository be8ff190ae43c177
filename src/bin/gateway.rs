//! The `gateway` binary: flags, logging, `gateway pin`, `gateway hash-password`,
//! `--demo`, and signals (SIGTERM/Ctrl-C stop, SIGHUP reloads the accounts files).

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use exitpool::gateway::auth::{AgentTokens, Customer, Users};
use exitpool::gateway::config::{DEFAULT_ADMIN, DEFAULT_LISTEN, DEFAULT_TUNNEL};
use exitpool::gateway::{Gateway, GatewayConfig, TunnelTcp};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Flags come in groups, one per area (a help heading each, the same areas as
// docs/operators.md's tables), each filling its part of `GatewayConfig`.

/// The exitpool gateway: customers' proxy port, agents' QUIC tunnel, operators'
/// stats.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    ports: PortArgs,
    #[command(flatten)]
    accounts: AccountArgs,
    #[command(flatten)]
    customer_ports: CustomerPortArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    routing: RoutingArgs,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// The ports and the state directory.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Ports")]
struct PortArgs {
    /// Customer port: HTTP proxy and SOCKS5.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// QUIC port (UDP) agents connect to.
    #[arg(long, default_value = DEFAULT_TUNNEL)]
    tunnel: SocketAddr,
    /// TLS-over-TCP tunnel port for agents whose networks block UDP
    /// [default: the --tunnel address and port number, on TCP].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_tunnel_tcp")]
    tunnel_tcp: Option<SocketAddr>,
    /// Turn the TLS-over-TCP tunnel port off (agents then need UDP).
    #[arg(long)]
    no_tunnel_tcp: bool,
    /// Admin port for /stats and /healthz.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// Turn the admin port off.
    #[arg(long)]
    no_admin: bool,
    /// Where the certificate, key and secrets live.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Customer accounts and the tokens agents enrol with.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Customer accounts and agent tokens")]
struct AccountArgs {
    /// A customer account, NAME:PASSWORD (repeatable).
    #[arg(
        long = "user",
        value_name = "NAME:PASSWORD",
        env = "EXITPOOL_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    users: Vec<String>,
    /// Customer accounts file (TOML, `[[customer]]` entries with password hashes
    /// and limits); re-read on SIGHUP.
    #[arg(long = "users", value_name = "FILE")]
    users_file: Option<PathBuf>,
    /// A token agents may enrol with (repeatable).
    #[arg(
        long = "agent-token",
        value_name = "TOKEN",
        env = "EXITPOOL_AGENT_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    agent_tokens: Vec<String>,
    /// Agent tokens file, one token per line (`#` comments); re-read on SIGHUP.
    #[arg(long = "agent-tokens", value_name = "FILE")]
    agent_tokens_file: Option<PathBuf>,
}

/// What the customer ports speak besides the plain HTTP proxy and SOCKS5, and whom they trust.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Customer ports: TLS, entry ports, balancers")]
struct CustomerPortArgs {
    /// PEM certificate chain for TLS on the customer ports (an HTTPS proxy,
    /// told from HTTP and SOCKS5 by its first byte); re-read on SIGHUP.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra customer ports whose number selects targeting (TOML: `[[ports]]`
    /// entries with `ports`, `targeting`, `session_per_port`), on --listen's address.
    #[arg(long, value_name = "FILE")]
    entry_ports: Option<PathBuf>,
    /// A balancer's network (CIDR) or address trusted to send a PROXY protocol
    /// v2 header on the customer ports (repeatable): its connections must begin
    /// with one, whose source address is then the customer's.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR", value_parser = exitpool::cli::network)]
    proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// Bounds on customer connections and agents.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Most customer connections open at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most connections from one address that have not authenticated yet.
    #[arg(long, default_value_t = 64)]
    max_unauthenticated_per_ip: usize,
    /// Most connections in all that have not authenticated yet (past it:
    /// `503 gateway_busy`), so strangers never fill --max-connections.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_MAX_UNAUTHENTICATED)]
    max_unauthenticated: usize,
    /// Close a customer tunnel after this many seconds without traffic.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Most agents connected at once from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_MAX_AGENTS_PER_ADDRESS)]
    max_agents_per_address: usize,
}

/// How an exit is chosen, waited for and cooled, and where agents are located.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Routing, exit health and retries")]
struct RoutingArgs {
    /// Seconds a request waits for an exit to answer `Open`, per exit tried.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_OPEN_TIMEOUT.as_secs())]
    open_timeout: u64,
    /// Most exits one request tries when exits fail it for their own reasons
    /// (lost tunnel, no answer, unavailable) before anything reached the
    /// customer; 1 turns transparent retry off.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_OPEN_ATTEMPTS)]
    open_attempts: u32,
    /// Seconds a request may spend reaching its target over all its attempts.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_CONNECT_DEADLINE.as_secs())]
    connect_deadline: u64,
    /// Milliseconds of silence from an exit a waiting customer stream allows
    /// before the exit's tunnel is checked.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_SILENCE_CHECK.as_millis() as u64)]
    silence_check_ms: u64,
    /// Milliseconds that check waits for the tunnel's answer (at least three
    /// round trips) before the agent is dropped and its streams reset.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_LIVENESS_TIMEOUT.as_millis() as u64)]
    liveness_timeout_ms: u64,
    /// Exit failures in a row that cool an exit (take it out of routing for a
    /// while); 0 never cools.
    #[arg(long, default_value_t = 3)]
    cool_after: u32,
    /// Seconds of an exit's first cooling; each further one doubles, up to
    /// --max-cooling.
    #[arg(long, default_value_t = 5)]
    cooling: u64,
    /// Longest cooling, in seconds.
    #[arg(long, default_value_t = 300)]
    max_cooling: u64,
    /// Route on live load alone: no health scores, no cooling (for comparison).
    #[arg(long)]
    no_health: bool,
    /// A MaxMind-format database (GeoLite2 Country/City/ASN, ip-location-db, ...)
    /// to locate agents with, instead of the embedded country database
    /// (repeatable: country + ASN + city).
    #[arg(long = "geoip", value_name = "FILE")]
    geoip: Vec<PathBuf>,
}

/// Who may use the admin port, and how logs are written.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Admin port and logs")]
struct AdminArgs {
    /// Bearer token for the admin port; required when it binds beyond loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EXITPOOL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// A host name the admin port answers to, besides IP addresses and localhost
    /// (repeatable); requests naming any other host are refused.
    #[arg(long = "admin-host", value_name = "NAME")]
    admin_hosts: Vec<String>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Fleet membership through Redis, and the peer links.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "A fleet (--redis)")]
struct FleetArgs {
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
    redis: Option<String>,
    /// PEM certificates (a CA) that a rediss:// server's certificate must
    /// chain to; default: the system's roots.
    #[arg(long, value_name = "PEM", requires = "redis")]
    redis_ca: Option<PathBuf>,
    /// This gateway's id in the fleet; default: the host name and a hash of
    /// the state directory's path.
    #[arg(long, value_name = "ID", requires = "redis")]
    gateway_id: Option<String>,
    /// Where other gateways of the fleet dial this one: QUIC on this UDP port
    /// and TLS on the TCP port of the same number.
    #[arg(long, value_name = "ADDR", default_value = exitpool::gateway::config::DEFAULT_PEER_LISTEN)]
    peer_listen: SocketAddr,
    /// The transport of the peer links this gateway dials: tcp (TLS over TCP,
    /// half the CPU per byte; for gateways in one data centre) or quic (for
    /// gateways far apart over lossy paths).
    #[arg(long, value_enum, default_value_t = PeerTransportArg::Tcp, requires = "redis")]
    peer_transport: PeerTransportArg,
    /// The address other gateways dial for --peer-listen; needed when that
    /// binds every address (0.0.0.0).
    #[arg(long, value_name = "ADDR", requires = "redis")]
    peer_advertise: Option<SocketAddr>,
    /// Milliseconds between fleet heartbeats (liveness, load, usage flush).
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_FLEET_HEARTBEAT.as_millis() as u64)]
    fleet_heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which a gateway's agents leave
    /// the others' pools.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_FLEET_GATEWAY_TIMEOUT.as_millis() as u64)]
    fleet_gateway_timeout_ms: u64,
    /// Milliseconds a gateway's agent list may disagree with its changes
    /// before it is read whole.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_FLEET_RESYNC.as_millis() as u64)]
    fleet_resync_ms: u64,
    /// Milliseconds one Redis command may take before the gateway carries on
    /// without it (and reports itself degraded).
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_REDIS_TIMEOUT.as_millis() as u64)]
    redis_timeout_ms: u64,
}

/// The runtime, and the demo.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Runtime and demo")]
struct RuntimeArgs {
    /// Runtime worker threads; 0 is one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Start with a local agent and a demo user, make one request through them,
    /// and print how to try it; state goes to a temporary directory unless
    /// --state-dir is given.
    #[arg(long)]
    demo: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerTransportArg {
    Tcp,
    Quic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Agent enrolment tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Print a new random agent token (256 bits) for --agent-token or a line
    /// of the --agent-tokens file.
    New,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _logs = exitpool::logs::init(match args.admin.log_format {
        LogFormat::Text => exitpool::logs::LogFormat::Text,
        LogFormat::Json => exitpool::logs::LogFormat::Json,
    });
    exitpool::cli::run("gateway", args.runtime.threads, run(args))
}

/// `gateway pin`: the pin of `dir`'s identity. Without `init`, a directory
/// holding none is an error: a pin made up on the spot would match no gateway.
fn print_pin(dir: &std::path::Path, init: bool) -> anyhow::Result<()> {
    use exitpool::gateway::tls::Identity;
    let identity = match Identity::load(dir)? {
        Some(identity) => identity,
        None if init => {
            exitpool::gateway::state::ensure_dir(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            Identity::load_or_create(dir)?
        }
        None => bail!(
            "{} holds no gateway identity (no certificate and key): point --state-dir at the \
             gateway's state directory, or add --init to create a new identity there",
            dir.display()
        ),
    };
    println!("{}", identity.pin());
    Ok(())
}

/// `gateway hash-password`: the first line of standard input, hashed.
fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    let hash = exitpool::gateway::auth::hash_password(password).context("hashing")?;
    println!("{hash}");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(command) = &args.command {
        return run_command(command, &args);
    }
    // The demo keeps its certificate and usage out of the default state
    // directory, where a real gateway started later would inherit them: in a
    // temporary directory removed on exit, unless --state-dir names one.
    let demo_state = match (args.runtime.demo, &args.ports.state_dir) {
        (true, None) => Some(
            tempfile::Builder::new()
                .prefix("exitpool-demo-")
                .tempdir()
                .context("creating the demo's temporary state directory")?,
        ),
        _ => None,
    };
    let state_dir = match (&demo_state, &args.ports.state_dir) {
        (Some(temporary), _) => temporary.path().to_owned(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => exitpool::gateway::state::default_dir(),
    };
    let demo = args.runtime.demo.then(|| {
        let password = hex::encode(rand::random::<[u8; 8]>());
        let token = hex::encode(rand::random::<[u8; 16]>());
        (password, token)
    });
    let config = gateway_config(&args, state_dir, demo.as_ref())?;
    // Every customer connection and agent tunnel is a descriptor; the usual soft
    // limit of 1,024 would cap the gateway long before its own limits do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    let gateway = Gateway::start(config).await?;
    print_started(&gateway, demo_state.as_ref());
    let _demo = match &demo {
        Some((password, token)) => Some(start_demo(&gateway, password, token).await?),
        None => None,
    };
    wait_for_shutdown(&gateway).await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

/// The subcommands: `hash-password`, `token new`, `pin`.
fn run_command(command: &Command, args: &Args) -> anyhow::Result<()> {
    match command {
        Command::HashPassword => hash_password(),
        Command::Token {
            action: TokenAction::New,
        } => {
            println!("{}", exitpool::gateway::auth::generate_token());
            Ok(())
        }
        Command::Pin { state_dir, init } => {
            let dir = state_dir
                .clone()
                .or(args.ports.state_dir.clone())
                .unwrap_or_else(exitpool::gateway::state::default_dir);
            print_pin(&dir, *init)
        }
    }
}

/// The configuration the flags give, each group filling its part, in the
/// order their errors are reported; `demo` is the demo's user password and
/// agent token.
fn gateway_config(
    args: &Args,
    state_dir: PathBuf,
    demo: Option<&(String, String)>,
) -> anyhow::Result<GatewayConfig> {
    let mut config = GatewayConfig::new(state_dir);
    args.ports.apply(&mut config);
    args.limits.apply(&mut config);
    args.customer_ports.apply(&mut config)?;
    args.routing.apply(&mut config)?;
    config.fleet = args.fleet.config();
    if args.runtime.demo {
        check_demo_alone(args)?;
        config.geoip = std::sync::Arc::new(demo_geoip()?);
    }
    args.accounts.apply(&mut config, demo)?;
    args.admin.apply(&mut config);
    Ok(config)
}

/// Where the gateway listens, as the operator reads it on start.
fn print_started(gateway: &Gateway, demo_state: Option<&tempfile::TempDir>) {
    println!(
        "gateway: customers on {}, agents on {} (UDP), pin {}",
        gateway.listen_addr(),
        gateway.tunnel_addr(),
        gateway.pin()
    );
    if let Some(tcp) = gateway.tunnel_tcp_addr() {
        println!("gateway: agents also on {tcp} (TLS over TCP, where UDP is blocked)");
    }
    if let Some(admin) = gateway.admin_addr() {
        println!("gateway: stats on http://{admin}/stats");
    }
    if let Some(temporary) = demo_state {
        println!(
            "demo: state in {} (removed on exit; --state-dir keeps it)",
            temporary.path().display()
        );
    }
}

impl PortArgs {
    /// The customer, tunnel and admin ports.
    fn apply(&self, config: &mut GatewayConfig) {
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

impl LimitArgs {
    /// The connection and agent caps, each at least 1.
    fn apply(&self, config: &mut GatewayConfig) {
        config.idle_timeout = Duration::from_secs(self.idle_timeout.max(1));
        config.max_connections = self.max_connections.max(1);
        config.max_unauthenticated_per_ip = self.max_unauthenticated_per_ip.max(1);
        config.max_unauthenticated = self.max_unauthenticated.max(1);
        config.max_agents_per_address = self.max_agents_per_address.max(1);
    }
}

impl CustomerPortArgs {
    /// TLS, the balancers trusted, and the entry ports (whose file is read
    /// here).
    fn apply(&self, config: &mut GatewayConfig) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.customer_tls = Some(exitpool::gateway::customer_tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
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
    fn apply(&self, config: &mut GatewayConfig) -> anyhow::Result<()> {
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
    fn config(&self) -> Option<exitpool::gateway::config::FleetConfig> {
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
    fn apply(
        &self,
        config: &mut GatewayConfig,
        demo: Option<&(String, String)>,
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
        if customers.is_empty() && self.users_file.is_none() {
            bail!("no customer accounts: add --users FILE or --user NAME:PASSWORD (or try --demo)");
        }
        if tokens.is_empty() && self.agent_tokens_file.is_none() {
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
    fn apply(&self, config: &mut GatewayConfig) {
        config.admin_hosts = self.admin_hosts.clone();
        config.admin_token = self
            .admin_token
            .clone()
            .filter(|token| !token.is_empty())
            .map(exitpool::protocol::Secret);
    }
}

/// The demo's agent may reach this machine (`--allow-private`), so the demo never
/// serves anyone but this machine: its customer port stays on loopback and it
/// takes no real accounts.
fn check_demo_alone(args: &Args) -> anyhow::Result<()> {
    if !args.ports.listen.ip().is_loopback() {
        bail!(
            "--demo keeps its customer port on loopback (its agent may reach this machine's own networks); got --listen {}",
            args.ports.listen
        );
    }
    let accounts = &args.accounts;
    if !accounts.users.is_empty()
        || accounts.users_file.is_some()
        || !accounts.agent_tokens.is_empty()
        || accounts.agent_tokens_file.is_some()
    {
        bail!("--demo runs with its own demo user and agent only; drop --user, --users, --agent-token and --agent-tokens (or drop --demo)");
    }
    Ok(())
}

/// Where the demo's three agents are: each on its own loopback address, which
/// the demo's generated GeoIP database places in a country.
const DEMO_EXITS: [(&str, &str, &str); 3] = [
    ("127.0.0.2", "US", "New York"),
    ("127.0.0.3", "DE", "Berlin"),
    ("127.0.0.4", "JP", "Tokyo"),
];

/// The demo's GeoIP database: [`DEMO_EXITS`]' addresses in their countries,
/// generated in memory (the real lookup path, as the tests use).
fn demo_geoip() -> anyhow::Result<exitpool::geoip::GeoIp> {
    use exitpool::geoip::testdb::{build, Layout, TestEntry};
    let entries: Vec<TestEntry> = DEMO_EXITS
        .iter()
        .map(|(ip, country, city)| {
            TestEntry::host(ip.parse().expect("valid demo address"))
                .country(*country)
                .city(*city)
        })
        .collect();
    Ok(exitpool::geoip::GeoIp::from_bytes(vec![build(
        Layout::MaxMind,
        &entries,
    )])?)
}

/// The demo running: its agents and the little target that tells who called.
struct Demo {
    _agents: Vec<exitpool::agent::AgentHandle>,
    _target: tokio::task::JoinHandle<()>,
}

/// Starts three in-process agents in three countries and a local target that
/// answers with the address it was reached from, proves one request per
/// country, and prints curl lines for a country, a sticky session and SOCKS5.
async fn start_demo(gateway: &Gateway, password: &str, token: &str) -> anyhow::Result<Demo> {
    let mut tunnel = gateway.tunnel_addr();
    if tunnel.ip().is_unspecified() {
        tunnel.set_ip([127, 0, 0, 1].into());
    }
    let mut agents = Vec::new();
    for (ip, _, _) in DEMO_EXITS {
        let ip: std::net::IpAddr = ip.parse()?;
        std::net::UdpSocket::bind((ip, 0)).with_context(|| {
            format!(
                "the demo's agents need the loopback address {ip} (Linux has all of 127.0.0.0/8)"
            )
        })?;
        let agent =
            exitpool::agent::Agent::builder(tunnel.to_string(), gateway.pin().parse()?, token)
                .bind(ip)
                // The demo's only target is this machine; never use this in production.
                .allow_private(true)
                .spawn()?;
        tokio::time::timeout(Duration::from_secs(10), agent.connected())
            .await
            .with_context(|| format!("the demo agent on {ip} did not connect within 10 s"))?;
        agents.push(agent);
    }
    let (target, target_task) = whoami_target().await?;
    let proxy = gateway.listen_addr();
    for (_, country, _) in DEMO_EXITS {
        let user = format!("demo-country-{}", country.to_ascii_lowercase());
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            self_test(proxy, target, &user, password),
        )
        .await
        .context("the demo request timed out")??;
        println!("demo: {user}: {answer}");
    }
    println!("demo: three agents joined (US, DE, JP). Try it yourself:");
    println!("  curl -i -x http://demo-country-de:{password}@{proxy} http://{target}/            # an exit in Germany");
    println!("  curl -i -x http://demo-session-s1:{password}@{proxy} http://{target}/            # sticky: the same exit on every call");
    println!("  curl --socks5-hostname {proxy} --proxy-user demo-country-jp:{password} http://{target}/   # SOCKS5, an exit in Japan");
    println!("  curl -i -x http://demo:{password}@{proxy} http://{target}/                       # rotating: a new exit per request");
    println!("demo: the target answers with the exit address it saw; X-Exitpool-Exit and X-Exitpool-Country name the exit");
    println!("demo: Ctrl-C to stop");
    Ok(Demo {
        _agents: agents,
        _target: target_task,
    })
}

/// A local HTTP target that answers every request with the address it came
/// from (the exit's), then closes.
async fn whoami_target() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the request head (bounded), then answer.
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let body = format!("seen from {}\n", peer.ip());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}

/// One real request through the proxy: CONNECT as `user`, then a GET inside
/// the tunnel; answers the exit's country and what the target saw.
async fn self_test(
    proxy: SocketAddr,
    target: SocketAddr,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    use base64::Engine;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n\r\nGET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let mut lines = text.lines();
    let connect_status = lines.next().unwrap_or_default().to_owned();
    if !connect_status.contains(" 200") {
        bail!("the proxy answered {connect_status:?}");
    }
    let country = text
        .lines()
        .find_map(|line| line.strip_prefix("x-exitpool-country: "))
        .unwrap_or("??")
        .to_owned();
    let seen = text
        .lines()
        .find(|line| line.starts_with("seen from"))
        .unwrap_or("no answer from the target")
        .to_owned();
    Ok(format!("exit in {country}, target {seen}"))
}

/// Waits for Ctrl-C or SIGTERM, reloading the accounts files on every SIGHUP.
async fn wait_for_shutdown(gateway: &Gateway) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let stop = exitpool::cli::shutdown_signal();
        tokio::pin!(stop);
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return stop.await;
        };
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = hangup.recv() => {
                    // Success and failure are both logged by reload itself.
                    let _ = gateway.reload();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = gateway;
        exitpool::cli::shutdown_signal().await;
    }
}
