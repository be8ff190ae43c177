//! `loadtest`: how fast exitpool moves bytes, opens tunnels and holds agents,
//! always next to a direct-to-target baseline, tinyproxy and a bare two-hop QUIC
//! relay measured in the same run.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/loadtest all --json bench.json --chart bench.svg
//! ./target/release/loadtest bulk --size 1024
//! ./target/release/loadtest fleet --no-build     # three gateways on a redis-server
//! ./target/release/loadtest soak --soak-duration 300 --fleet --no-build
//! cargo run -p exitpool-bench -- all --quick      # a smoke run
//! ```
//!
//! exitpool is measured as it is deployed: the real `gateway` and `agent`
//! binaries, each in its own process (built first unless `--no-build`), like
//! tinyproxy's. The gateway runs with `--threads 1` (`--gateway-threads`),
//! because here the client, the target, the gateway and the agents share two
//! cores; `--compare-runtimes` measures `--threads 2` next to it.
//!
//! CPU time comes from `/proc/PID/stat`: this process (client and target) plus
//! the proxy's processes, so the figures cover the whole path. Every wait is
//! bounded; a failure exits non-zero with a message.
//!
//! The program, file by file:
//! - [`cli`]: flags, scenarios, the sizes a run uses;
//! - [`scenario`]: one file per scenario (bulk, connect, rate, fanout, swarm,
//!   footprint, fleet, udp; soak, not part of `all`);
//! - [`client`]: the target server and the clients (direct, via a proxy, via a relay);
//! - [`launch`]: the gateway and agent processes (through `exitpool-launcher`);
//! - [`tinyproxy`]: tinyproxy, the one-hop baseline;
//! - [`bare_relay`]: the bare two-hop QUIC relay, whose hops are this program
//!   behind hidden flags;
//! - [`measure`]: CPU and memory from /proc, medians and percentiles;
//! - [`report`]: the setup, the table and the JSON; [`chart`]: the SVG.

mod bare_relay;
mod chart;
mod cli;
mod client;
mod cpu_share;
mod launch;
mod measure;
mod report;
mod scenario;
mod tinyproxy;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{Args, Bench, Scenario, Sizes};
use report::Report;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    launch::set_gateway_log(&args.gateway_log);
    if args.hop.is_hop() {
        return bare_relay::run_hop(&args.hop);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadtest: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A stop signal drops the run, and with it every process it started (each
    // is killed when dropped); exiting straight away would leave them running.
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(args) => result,
            () = exitpool::cli::shutdown_signal() => {
                Err(anyhow::anyhow!("stopped by a signal; the processes it started are stopped"))
            }
        }
    });
    // Agents and servers still running in the background end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("loadtest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenarios and writes what they found; `false` if any failed.
async fn run(args: Args) -> Result<bool> {
    let Some(chosen) = args.scenario else {
        bail!("no scenario given");
    };
    let sizes = Sizes::from_args(&args);
    let setup = report::setup(&args, &sizes);
    report::print_setup(&setup);
    let mut report = Report::default();
    let bench = Bench::new(&args, sizes).await?;
    if bench.tinyproxy.is_none()
        && matches!(
            chosen,
            Scenario::Bulk | Scenario::Connect | Scenario::Rate | Scenario::All
        )
    {
        report.notes.push(
            "tinyproxy is not on PATH (apt-get install tinyproxy): its column is skipped".into(),
        );
    }
    let started = Instant::now();
    let chosen_ones = match chosen {
        Scenario::All => Scenario::EACH.to_vec(),
        one => vec![one],
    };
    for each in chosen_ones {
        eprintln!("== {}", each.describe(&bench.sizes));
        let result = match each {
            Scenario::Bulk => scenario::bulk::run(&bench, &mut report).await,
            Scenario::Connect => scenario::connect::run(&bench, &mut report).await,
            Scenario::Rate => scenario::rate::run(&bench, &mut report).await,
            Scenario::Fanout => scenario::fanout::run(&bench, &mut report).await,
            Scenario::Flaky => scenario::flaky::run(&bench, &mut report).await,
            Scenario::Swarm => scenario::swarm::run(&bench, &mut report).await,
            Scenario::Footprint => scenario::footprint::run(&bench, &mut report).await,
            Scenario::Fleet => scenario::fleet::run(&bench, &mut report).await,
            Scenario::Soak => scenario::soak::run(&bench, &mut report).await,
            Scenario::Udp => scenario::udp::run(&bench, &mut report).await,
            Scenario::All => unreachable!("not in Scenario::EACH"),
        };
        if let Err(error) = result {
            let name = each.name();
            eprintln!("   {name} failed: {error:#}");
            report.failures.push(format!("{name}: {error:#}"));
        }
    }
    let elapsed = started.elapsed();
    report::print_table(&report);
    println!("wall time: {:.1} s", elapsed.as_secs_f64());
    if let Some(path) = &args.json {
        report::write_json(path, &setup, &report, elapsed)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::draw(path, &report).with_context(|| format!("drawing {}", path.display()))?;
        println!("chart written to {}", path.display());
    }
    for failure in &report.failures {
        eprintln!("loadtest: FAILED: {failure}");
    }
    Ok(report.failures.is_empty())
}
