//! The `agent` binary: flags laid over `agent.toml` (`--config`), `agent
//! check-config FILE`, logging, and the agent library until Ctrl-C/SIGTERM.
//! The file model is the library's (`exitpool_agent::file_config`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use exitpool::agent::file_config::{self, Settings, TOKEN_ENV};
use exitpool::agent::policy::PortRange;
use exitpool::agent::{consent, AgentBuilder, Period, Pin, TransportChoice};
use exitpool::protocol::Secret;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[path = "shared/malloc_trim.rs"]
mod malloc_trim;

/// Log lines queued for the logging thread: the agent writes a few a minute
/// (the queue drops when full), and the library's default would cost 8 MiB,
/// most of an idle agent's memory.
const LOG_QUEUE_LINES: usize = 1024;

/// Exit status when the flags and file describe no agent that can start
/// (sysexits' `EX_CONFIG`): the unit does not restart on it
/// (`RestartPreventExitStatus=78`), as a file still waiting for its owner's
/// consent would only fail again every 5 s.
const EXIT_CONFIG: u8 = 78;

/// An exitpool exit node: shares this device's connection with the gateway's
/// customers, never towards its own network. Every flag has a key in the
/// `--config` file (docs/install.md); a flag overrides the file.
#[derive(Debug, Parser)]
#[command(name = "agent", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read the settings from this agent.toml; flags override it. With a
    /// file, the agent starts only if it says `consent = true`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Gateway tunnel address, HOST:PORT (UDP for QUIC, the same port number on
    /// TCP for the TLS fallback). Repeatable, and a name with several addresses
    /// counts as several: the agent prefers one by its id and fails over to
    /// the others (all must present the same certificate, for one --pin).
    #[arg(long, value_name = "HOST:PORT")]
    gateway: Vec<String>,
    /// Tunnel transport: quic, tcp (TLS over TCP, where UDP is blocked), or
    /// auto (race them, QUIC first; remember the winner; move back to QUIC).
    /// Default auto.
    #[arg(long, value_name = "quic|tcp|auto")]
    transport: Option<TransportChoice>,
    /// The gateway's certificate pin, as printed by `gateway pin`.
    #[arg(long)]
    pin: Option<Pin>,
    /// Enrolment token from the operator.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Local IP for the tunnel socket and for target connections.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Allow loopback and private targets. For local testing only.
    #[arg(long)]
    allow_private: bool,
    /// Where the agent keeps its id (default $STATE_DIRECTORY under systemd,
    /// else ~/.local/state/exitpool/agent).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Most relay streams served at once (default 64).
    #[arg(long)]
    max_streams: Option<u32>,
    /// Bandwidth cap in each direction: bytes per second, or e.g. 2MB/s.
    #[arg(long, value_name = "RATE", value_parser = file_config::parse_rate)]
    max_rate: Option<NonZeroU32>,
    /// Most UDP flows (customers' UDP destinations) at once on the tunnel;
    /// more are refused. 0 turns UDP off (default 64).
    #[arg(long, value_name = "FLOWS", value_parser = clap::value_parser!(u32).range(0..=file_config::MAX_UDP_FLOWS as i64))]
    udp_max_flows: Option<u32>,
    /// Most datagrams per second one UDP flow carries, both ways together;
    /// more are dropped (default 2000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    udp_packets_per_second: Option<u32>,
    /// A UDP flow with no datagram either way for this long ends, e.g. 30s
    /// (the default) or 2m.
    #[arg(long, value_name = "DURATION", value_parser = file_config::parse_udp_idle_timeout)]
    udp_idle_timeout: Option<Duration>,
    /// Stop sharing after this many bytes (up + down) per --quota-period: a
    /// number, or e.g. 10GB.
    #[arg(long, value_name = "BYTES", value_parser = file_config::parse_size)]
    quota_bytes: Option<u64>,
    /// The quota's period: day or month (UTC; default month).
    #[arg(long)]
    quota_period: Option<Period>,
    /// Ports never dialled (replaces the default 25,465,587), e.g. 25,465,587,6000-6100.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    deny_ports: Option<Vec<PortRange>>,
    /// Only these ports are dialled, e.g. 80,443,8000-8999.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    allow_ports: Option<Vec<PortRange>>,
    /// Serve this agent's stats as JSON here (keep it on loopback), e.g. 127.0.0.1:9091.
    #[arg(long, value_name = "ADDR")]
    status_listen: Option<SocketAddr>,
    /// Bearer token that shows this device's id and addresses on the status
    /// endpoint (without it they are left out of its JSON).
    #[arg(long, env = "EXITPOOL_STATUS_TOKEN", hide_env_values = true)]
    status_token: Option<String>,
    /// Seconds between the one-line status summaries in the log (default 60).
    #[arg(long)]
    summary_secs: Option<u64>,
    /// Milliseconds between keep-alives on the tunnel (default 3000 for this
    /// binary, so a dead gateway is left for another within about 6 s; the
    /// SDK's default is 15000); two silent ones in a row end a QUIC tunnel
    /// (degraded UDP, or a gateway gone when there are others).
    #[arg(long)]
    keep_alive_ms: Option<u64>,
    /// Milliseconds each handshake step with a gateway may take (default
    /// 10000); also how long an unreachable gateway holds up failing over.
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// Runtime worker threads. One (the default) moves a home link's traffic with
    /// the least CPU and memory; 0 is one per core.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks an agent.toml as `--config` would read it: prints every problem
    /// (file, line, key) and exits non-zero, or prints `ok`.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let _logs = exitpool::logs::init_with_queue(exitpool::logs::LogFormat::Text, LOG_QUEUE_LINES);
    let mut args = Args::parse();
    if let Some(Command::CheckConfig { file }) = &args.command {
        return check_config(file);
    }
    let (builder, threads) = match configure(&mut args) {
        Ok(configured) => configured,
        Err(error) => {
            eprintln!("agent: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = malloc_trim::start() {
        eprintln!("agent: {error:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    exitpool::cli::run("agent", threads, run(builder))
}

/// The volunteer binary's keep-alive: two silent intervals (6 s) end a tunnel
/// to a gateway that died without a word, so its agents are back through
/// another gateway within 10 s at the defaults. An app embedding the agent on
/// a battery keeps the SDK's 15 s; a volunteer's always-on machine can afford
/// a ping every 3 s (about 2,400 packets and 130 KB an hour with the answers,
/// see docs/volunteers.md).
const VOLUNTEER_KEEP_ALIVE: Duration = Duration::from_secs(3);

/// `agent check-config FILE`.
fn check_config(file: &Path) -> ExitCode {
    let token_in_env = std::env::var_os(TOKEN_ENV).is_some();
    match file_config::load_complete(file, token_in_env) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// The agent the flags and the `--config` file describe, and its runtime threads.
fn configure(args: &mut Args) -> anyhow::Result<(AgentBuilder, usize)> {
    let (mut settings, from_file) = settings(args)?;
    if settings.state_dir.is_none() {
        settings.state_dir = Some(default_state_dir());
    }
    let threads = settings.threads.unwrap_or(1);
    settings.keep_alive = settings.keep_alive.or(Some(VOLUNTEER_KEEP_ALIVE));
    let builder = settings.builder().map_err(|missing| {
        anyhow::anyhow!(
            "missing {}: give --{} or put them in agent.toml (--config); the token may also be in {TOKEN_ENV}",
            missing.join(", "),
            missing.join(", --")
        )
    })?;
    Ok((builder.require_consent(from_file), threads))
}

/// The flags laid over the `--config` file; whether there was a file.
fn settings(args: &mut Args) -> anyhow::Result<(Settings, bool)> {
    let ms = |ms: u64| Duration::from_millis(ms);
    let flags = Settings {
        gateways: std::mem::take(&mut args.gateway),
        transport: args.transport,
        pin: args.pin,
        token: args.token.take().map(Secret),
        bind: args.bind,
        allow_private: args.allow_private.then_some(true),
        state_dir: args.state_dir.take(),
        max_streams: args.max_streams,
        max_rate: args.max_rate,
        udp_max_flows: args.udp_max_flows,
        udp_packets_per_second: args.udp_packets_per_second,
        udp_idle_timeout: args.udp_idle_timeout,
        quota_bytes: args.quota_bytes,
        quota_period: args.quota_period,
        deny_ports: args.deny_ports.take(),
        allow_ports: args.allow_ports.take(),
        status_listen: args.status_listen,
        status_token: args.status_token.take().map(Secret),
        summary_interval: args.summary_secs.map(Duration::from_secs),
        keep_alive: args.keep_alive_ms.map(ms),
        handshake_timeout: args.handshake_timeout_ms.map(ms),
        threads: args.threads,
        consent: None,
        schedule: None,
    };
    let Some(path) = &args.config else {
        return Ok((flags, false));
    };
    let loaded = file_config::load(path)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let mut settings = flags.or(loaded.settings);
    if settings.state_dir.is_none() {
        settings.state_dir = Some(default_state_dir());
    }
    let dir = settings.state_dir.clone().expect("set above");
    // Consent is the owner's, in the file; recorded in the state directory
    // (with its time, shown in stats), and withdrawn there when it is taken back.
    if settings.consent != Some(true) {
        consent::revoke(&dir, false).context("withdrawing the recorded consent")?;
        anyhow::bail!(
            "{}: key `consent`: {}",
            path.display(),
            file_config::CONSENT_MISSING
        );
    }
    if consent::load(&dir)?.is_none() {
        consent::record(&dir, Some(&format!("consent = true in {}", path.display())))?;
    }
    Ok((settings, true))
}

/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else the library's default.
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(exitpool::agent::state::default_dir)
}

async fn run(builder: AgentBuilder) -> anyhow::Result<()> {
    // Listened for before the agent says anything, so an early stop is clean.
    let stop = exitpool::cli::shutdown_signal();
    let mut agent = builder.spawn().context("starting the agent")?;
    tokio::select! {
        result = agent.finished() => result.context("the agent stopped")?,
        () = stop => {
            tracing::info!("shutting down");
            agent.shutdown().await?;
        }
    }
    Ok(())
}
