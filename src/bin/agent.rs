//! The `agent` binary: flags, logging, and the agent library until Ctrl-C/SIGTERM.

use anyhow::Context;
use clap::Parser;
use exitpool::agent::policy::PortRange;
use exitpool::agent::{Agent, ExitPolicy, Period, Pin};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// An exitpool exit node: shares this device's connection with the gateway's
/// customers, never towards its own network.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Args {
    /// Gateway tunnel address, HOST:PORT (UDP for QUIC, the same port number on
    /// TCP for the TLS fallback). Repeatable, and a name with several addresses
    /// counts as several: the agent prefers one by its id and fails over to
    /// the others (all must present the same certificate, for one --pin).
    #[arg(long, required = true, value_name = "HOST:PORT")]
    gateway: Vec<String>,
    /// Tunnel transport: quic, tcp (TLS over TCP, where UDP is blocked), or
    /// auto (race them, QUIC first; remember the winner; move back to QUIC).
    #[arg(long, default_value = "auto", value_name = "quic|tcp|auto")]
    transport: exitpool::agent::TransportChoice,
    /// The gateway's certificate pin, as printed by `gateway pin`.
    #[arg(long)]
    pin: Pin,
    /// Enrolment token from the operator.
    #[arg(long, env = "EXITPOOL_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// Local IP for the tunnel socket and for target connections.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Allow loopback and private targets. For local testing only.
    #[arg(long)]
    allow_private: bool,
    /// Where the agent keeps its id.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Most relay streams served at once.
    #[arg(long, default_value_t = exitpool::agent::DEFAULT_MAX_STREAMS)]
    max_streams: u32,
    /// Bandwidth cap in each direction, bytes per second.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    max_rate: Option<u32>,
    /// Stop sharing after this many bytes (up + down) per --quota-period.
    #[arg(long, value_name = "BYTES")]
    quota_bytes: Option<u64>,
    /// The quota's period: day or month (UTC).
    #[arg(long, default_value = "month")]
    quota_period: Period,
    /// Ports never dialled (replaces the default 25,465,587), e.g. 25,465,587,6000-6100.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    deny_ports: Option<Vec<PortRange>>,
    /// Only these ports are dialled, e.g. 80,443,8000-8999.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    allow_ports: Option<Vec<PortRange>>,
    /// Serve this agent's stats as JSON here (keep it on loopback), e.g. 127.0.0.1:9091.
    #[arg(long, value_name = "ADDR")]
    status_listen: Option<std::net::SocketAddr>,
    /// Seconds between the one-line status summaries in the log.
    #[arg(long, default_value_t = 60)]
    summary_secs: u64,
    /// Milliseconds between keep-alives on the tunnel; two silent ones in a
    /// row end a QUIC tunnel (degraded UDP, or a gateway gone when there are others).
    #[arg(long, default_value_t = exitpool::protocol::KEEP_ALIVE_INTERVAL.as_millis() as u64)]
    keep_alive_ms: u64,
    /// Milliseconds each handshake step with a gateway may take; also how long
    /// an unreachable gateway holds up failing over to the next.
    #[arg(long, default_value_t = exitpool::protocol::HANDSHAKE_TIMEOUT.as_millis() as u64)]
    handshake_timeout_ms: u64,
    /// Runtime worker threads. One (the default) moves a home link's traffic with
    /// the least CPU and memory; 0 is one per core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let _logs = exitpool::logs::init(exitpool::logs::LogFormat::Text);
    let args = Args::parse();
    exitpool::cli::run("agent", args.threads, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut policy = ExitPolicy::new().allow_private(args.allow_private);
    if let Some(ports) = args.deny_ports {
        policy = policy.with_denied_ports(ports);
    }
    if let Some(ports) = args.allow_ports {
        policy = policy.with_allowed_ports(ports);
    }
    let mut gateways = args.gateway.into_iter();
    let first = gateways.next().context("--gateway HOST:PORT is required")?;
    let mut builder = Agent::builder(first, args.pin, args.token);
    for gateway in gateways {
        builder = builder.gateway(gateway);
    }
    let mut builder = builder
        .policy(policy)
        .keep_alive(std::time::Duration::from_millis(
            args.keep_alive_ms.max(100),
        ))
        .handshake_timeout(std::time::Duration::from_millis(
            args.handshake_timeout_ms.max(100),
        ))
        .max_streams(args.max_streams)
        .transport(args.transport)
        .summary_interval(std::time::Duration::from_secs(args.summary_secs.max(1)))
        .state_dir(
            args.state_dir
                .unwrap_or_else(exitpool::agent::state::default_dir),
        );
    if let Some(bind) = args.bind {
        builder = builder.bind(bind);
    }
    if let Some(rate) = args.max_rate {
        builder = builder.max_rate(rate);
    }
    if let Some(bytes) = args.quota_bytes {
        builder = builder.quota(bytes, args.quota_period);
    }
    if let Some(addr) = args.status_listen {
        builder = builder.status_listen(addr);
    }
    let mut agent = builder.spawn().context("starting the agent")?;
    tokio::select! {
        result = agent.finished() => result.context("the agent stopped")?,
        () = exitpool::cli::shutdown_signal() => {
            tracing::info!("shutting down");
            agent.shutdown().await?;
        }
    }
    Ok(())
}
