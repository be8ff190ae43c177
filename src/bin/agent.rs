//! The `agent` binary: flags, logging, and the agent library until Ctrl-C/SIGTERM.

use anyhow::Context;
use clap::Parser;
use exitpool::agent::{Agent, Pin};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// An exitpool exit node: shares this device's connection with the gateway's
/// customers, never towards its own network.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Args {
    /// Gateway tunnel address, HOST:PORT (UDP).
    #[arg(long)]
    gateway: String,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agent: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = Agent::builder(args.gateway, args.pin, args.token)
        .allow_private(args.allow_private)
        .max_streams(args.max_streams)
        .state_dir(
            args.state_dir
                .unwrap_or_else(exitpool::agent::state::default_dir),
        );
    if let Some(bind) = args.bind {
        builder = builder.bind(bind);
    }
    let mut agent = builder.spawn().context("starting the agent")?;
    tokio::select! {
        result = agent.finished() => result.context("the agent stopped")?,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            agent.shutdown().await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
