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

/// The exitpool gateway: customers' proxy port, agents' QUIC tunnel, operators'
/// stats.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// A host name the admin port answers to, besides IP addresses and localhost
    /// (repeatable); requests naming any other host are refused.
    #[arg(long = "admin-host", value_name = "NAME")]
    admin_hosts: Vec<String>,
    /// Bearer token for the admin port; required when it binds beyond loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EXITPOOL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Close a customer tunnel after this many seconds without traffic.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Most customer connections open at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most connections from one address that have not authenticated yet.
    #[arg(long, default_value_t = 64)]
    max_unauthenticated_per_ip: usize,
    /// Most agents connected at once from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = exitpool::gateway::config::DEFAULT_MAX_AGENTS_PER_ADDRESS)]
    max_agents_per_address: usize,
    /// A MaxMind-format database (GeoLite2 Country/City/ASN, ip-location-db, ...)
    /// to locate agents with, instead of the embedded country database
    /// (repeatable: country + ASN + city).
    #[arg(long = "geoip", value_name = "FILE")]
    geoip: Vec<PathBuf>,
    /// Start with a local agent and a demo user, make one request through them,
    /// and print how to try it.
    #[arg(long)]
    demo: bool,
    /// Runtime worker threads; 0 is one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
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
    /// Print the certificate pin agents need (sha256:...), creating the certificate
    /// if needed.
    Pin {
        /// Where the certificate lives.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _logs = exitpool::logs::init(match args.log_format {
        LogFormat::Text => exitpool::logs::LogFormat::Text,
        LogFormat::Json => exitpool::logs::LogFormat::Json,
    });
    exitpool::cli::run("gateway", args.threads, run(args))
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
    if let Some(Command::HashPassword) = &args.command {
        return hash_password();
    }
    if let Some(Command::Pin { state_dir }) = &args.command {
        let dir = state_dir
            .clone()
            .or(args.state_dir.clone())
            .unwrap_or_else(exitpool::gateway::state::default_dir);
        exitpool::gateway::state::ensure_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let identity = exitpool::gateway::tls::Identity::load_or_create(&dir)?;
        println!("{}", identity.pin());
        return Ok(());
    }
    let mut config = GatewayConfig::new(
        args.state_dir
            .clone()
            .unwrap_or_else(exitpool::gateway::state::default_dir),
    );
    config.listen = args.listen;
    config.tunnel = args.tunnel;
    config.tunnel_tcp = match (args.no_tunnel_tcp, args.tunnel_tcp) {
        (true, _) => TunnelTcp::Off,
        (false, Some(addr)) => TunnelTcp::At(addr),
        (false, None) => TunnelTcp::SamePort,
    };
    config.admin = (!args.no_admin).then_some(args.admin);
    config.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    config.max_connections = args.max_connections.max(1);
    config.max_unauthenticated_per_ip = args.max_unauthenticated_per_ip.max(1);
    config.max_agents_per_address = args.max_agents_per_address.max(1);
    if !args.geoip.is_empty() {
        config.geoip = std::sync::Arc::new(exitpool::geoip::GeoIp::open(&args.geoip)?);
    }
    if args.demo {
        check_demo_alone(&args)?;
    }
    let mut customers = args
        .users
        .iter()
        .map(|spec| Customer::parse(spec).with_context(|| "in --user"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tokens = args.agent_tokens.clone();
    let demo = args.demo.then(|| {
        let password = hex::encode(rand::random::<[u8; 8]>());
        let token = hex::encode(rand::random::<[u8; 16]>());
        (password, token)
    });
    if let Some((password, token)) = &demo {
        customers.push(Customer::parse(&format!("demo:{password}")).expect("valid demo user"));
        tokens.push(token.clone());
    }
    if customers.is_empty() && args.users_file.is_none() {
        bail!("no customer accounts: add --users FILE or --user NAME:PASSWORD (or try --demo)");
    }
    if tokens.is_empty() && args.agent_tokens_file.is_none() {
        bail!("no agent can join: add --agent-token TOKEN or --agent-tokens FILE (or try --demo)");
    }
    config.users = Users::new(customers);
    config.agent_tokens = AgentTokens::new(tokens);
    config.users_file = args.users_file.clone();
    config.agent_tokens_file = args.agent_tokens_file.clone();
    config.admin_hosts = args.admin_hosts.clone();
    config.admin_token = args
        .admin_token
        .clone()
        .filter(|token| !token.is_empty())
        .map(exitpool::protocol::Secret);
    // Every customer connection and agent tunnel is a descriptor; the usual soft
    // limit of 1,024 would cap the gateway long before its own limits do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    let gateway = Gateway::start(config).await?;
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
    let _demo_agent = match &demo {
        Some((password, token)) => Some(start_demo(&gateway, password, token).await?),
        None => None,
    };
    wait_for_shutdown(&gateway).await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

/// The demo's agent may reach this machine (`--allow-private`), so the demo never
/// serves anyone but this machine: its customer port stays on loopback and it
/// takes no real accounts.
fn check_demo_alone(args: &Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--demo keeps its customer port on loopback (its agent may reach this machine's own networks); got --listen {}",
            args.listen
        );
    }
    if !args.users.is_empty()
        || args.users_file.is_some()
        || !args.agent_tokens.is_empty()
        || args.agent_tokens_file.is_some()
    {
        bail!("--demo runs with its own demo user and agent only; drop --user, --users, --agent-token and --agent-tokens (or drop --demo)");
    }
    Ok(())
}

/// Starts an in-process agent, proves a request goes through it, and prints how
/// to make one by hand.
async fn start_demo(
    gateway: &Gateway,
    password: &str,
    token: &str,
) -> anyhow::Result<exitpool::agent::AgentHandle> {
    let mut tunnel = gateway.tunnel_addr();
    if tunnel.ip().is_unspecified() {
        tunnel.set_ip([127, 0, 0, 1].into());
    }
    let agent = exitpool::agent::Agent::builder(tunnel.to_string(), gateway.pin().parse()?, token)
        .bind([127, 0, 0, 1].into())
        // The demo's only target is this machine; never use this in production.
        .allow_private(true)
        .spawn()?;
    let joined = tokio::time::timeout(Duration::from_secs(10), agent.connected())
        .await
        .context("the demo agent did not connect within 10 s")?;
    let proxy = gateway.listen_addr();
    let target = gateway.admin_addr().unwrap_or(proxy);
    let answer = tokio::time::timeout(Duration::from_secs(10), self_test(proxy, target, password))
        .await
        .context("the demo request timed out")??;
    println!(
        "demo: agent {} joined; GET http://{target}/healthz through it answered: {answer}",
        joined.exit_id
    );
    println!("demo: try it yourself:");
    println!("  curl -p -x http://demo:{password}@{proxy} http://{target}/stats");
    println!("demo: Ctrl-C to stop");
    Ok(agent)
}

/// One real request through the proxy: CONNECT, then a GET inside the tunnel.
async fn self_test(
    proxy: SocketAddr,
    target: SocketAddr,
    password: &str,
) -> anyhow::Result<String> {
    use base64::Engine;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("demo:{password}"));
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let mut lines = text.lines();
    let connect_status = lines.next().unwrap_or_default().to_owned();
    if !connect_status.contains(" 200") {
        bail!("the proxy answered {connect_status:?}");
    }
    let inner_status = lines
        .find(|line| line.starts_with("HTTP/1.1"))
        .unwrap_or_default()
        .to_owned();
    Ok(format!("{connect_status} then {inner_status}"))
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
