//! The command line: flags, the scenarios, the sizes a run uses, and [`Bench`],
//! what every scenario is given.

use crate::bare_relay::HopArgs;
use crate::launch::{binaries, Binaries, Runs};
use anyhow::Result;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "exitpool load test: throughput, connect latency, connection rate, fan-out, a flaky pool, swarm, footprint, a fleet of gateways"
)]
pub struct Args {
    /// What to run.
    #[arg(value_enum, required_unless_present_any = ["bare_exit", "bare_entry"])]
    pub scenario: Option<Scenario>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and connect latency against the direct baseline (SVG).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Tiny sizes, for a smoke run.
    #[arg(long)]
    pub quick: bool,
    /// bulk: MiB per direction.
    #[arg(long)]
    pub size: Option<u64>,
    /// bulk and rate: rounds, the paths taking turns in each; bulk reports
    /// medians, rate totals, and both each round's ratios.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// connect: fresh connections per path (sequential; the same again concurrently).
    #[arg(long)]
    pub connects: Option<usize>,
    /// connect: concurrent workers in the concurrent round.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// rate: seconds each path is driven for in each round.
    #[arg(long)]
    pub rate_secs: Option<f64>,
    /// rate: concurrent client loops.
    #[arg(long)]
    pub rate_clients: Option<usize>,
    /// rate: the agent's `--max-streams` (default: the agent's own default).
    #[arg(long)]
    pub rate_max_streams: Option<u32>,
    /// fanout: concurrent customer connections.
    #[arg(long)]
    pub fanout_conns: Option<usize>,
    /// fanout: agents.
    #[arg(long)]
    pub fanout_agents: Option<usize>,
    /// fanout: KiB downloaded by each connection.
    #[arg(long)]
    pub fanout_kib: Option<u64>,
    /// swarm: agents.
    #[arg(long)]
    pub swarm: Option<usize>,
    /// fleet: agents in the mass join over three gateways.
    #[arg(long)]
    pub fleet_agents: Option<usize>,
    /// flaky: rotating requests per pool.
    #[arg(long)]
    pub flaky_requests: Option<usize>,
    /// soak: how long it runs, in seconds (at least 20).
    #[arg(long, default_value_t = 600.0)]
    pub soak_duration: f64,
    /// soak: two gateways sharing a Redis (and one Redis restart) instead of
    /// one gateway.
    #[arg(long)]
    pub fleet: bool,
    /// Where the `gateway` and `agent` binaries are (default: next to this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Worker threads of the gateway process (its `--threads`). One by default:
    /// here the client, target, gateway and agents share two cores, where each
    /// would have a machine of its own.
    #[arg(long, default_value_t = 1)]
    pub gateway_threads: usize,
    /// The gateway's `RUST_LOG`. `info`, its default, writes the access line of
    /// every connection; `warn` measures it without.
    #[arg(long, default_value = "info")]
    pub gateway_log: String,
    /// fleet: after the bulk rounds on shared cores, run them again with every
    /// process (this program, each gateway, the agent) capped at this share of
    /// one core, as if each had a machine of its own (cgroup `cpu` quotas;
    /// needs root). Default: 90 % of the cores over the four processes of the
    /// forwarded path, at most one core each; 0 leaves the pass out.
    #[arg(long, value_parser = crate::cpu_share::parse_share)]
    pub fleet_cpu_share: Option<f64>,
    /// bulk, connect, rate and fanout: also measure the gateway with `--threads 2`.
    #[arg(long)]
    pub compare_runtimes: bool,
    /// Do not run `cargo build --bin gateway --bin agent` first.
    #[arg(long)]
    pub no_build: bool,
    /// The hidden flags that run this program as a hop of the bare relay.
    #[command(flatten)]
    pub hop: HopArgs,
    /// swarm's own flags.
    #[command(flatten)]
    pub swarm_args: SwarmArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Bulk,
    Connect,
    Rate,
    Fanout,
    Flaky,
    Swarm,
    Footprint,
    Fleet,
    /// UDP through SOCKS5 and MASQUE against the echo directly and a bare relay.
    Udp,
    /// Not part of `all`: it runs for minutes.
    Soak,
    All,
}

impl Scenario {
    /// What `all` runs, in order.
    pub const EACH: [Scenario; 9] = [
        Scenario::Bulk,
        Scenario::Connect,
        Scenario::Rate,
        Scenario::Fanout,
        Scenario::Flaky,
        Scenario::Swarm,
        Scenario::Footprint,
        Scenario::Fleet,
        Scenario::Udp,
    ];

    /// The name on the command line, in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Connect => "connect",
            Scenario::Rate => "rate",
            Scenario::Fanout => "fanout",
            Scenario::Flaky => "flaky",
            Scenario::Swarm => "swarm",
            Scenario::Footprint => "footprint",
            Scenario::Fleet => "fleet",
            Scenario::Udp => "udp",
            Scenario::Soak => "soak",
            Scenario::All => "all",
        }
    }

    /// The heading printed when the scenario starts.
    pub fn describe(self, sizes: &Sizes) -> String {
        let what = match self {
            Scenario::Bulk => format!(
                "{} MiB each way, {} rounds",
                sizes.bulk_mib, sizes.bulk_rounds
            ),
            Scenario::Connect => format!("{} fresh connections per path", sizes.connects),
            Scenario::Rate => format!(
                "{} client loops for {:.0?} per path, {} rounds",
                sizes.rate_clients, sizes.rate_time, sizes.rate_rounds
            ),
            Scenario::Fanout => format!(
                "{} connections over {} agents",
                sizes.fanout_conns, sizes.fanout_agents
            ),
            Scenario::Flaky => format!(
                "{} rotating requests per pool of 50 agents, healthy and flaky",
                sizes.flaky_requests
            ),
            Scenario::Swarm => format!("{} agents", sizes.swarm),
            Scenario::Footprint => "one agent process".to_owned(),
            Scenario::Fleet => format!(
                "three gateways on one Redis: forwarded against local path, Redis commands per connection, {} agents joining",
                sizes.fleet_agents
            ),
            Scenario::Udp => format!(
                "round trips to a UDP echo, {} in flight for {:.0?} per path, and an overload of {}",
                UDP_WINDOW,
                sizes.rate_time,
                UDP_BURST
            ),
            Scenario::Soak => format!(
                "{:.0?} of customers on every protocol, agents joining and leaving, failing targets, a gateway restart{}",
                sizes.soak_duration,
                if sizes.soak_fleet {
                    ", two gateways on one Redis and a Redis restart"
                } else {
                    ""
                }
            ),
            Scenario::All => "everything".to_owned(),
        };
        format!("{}: {what}", self.name())
    }
}

/// The sizes one run uses.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub bulk_mib: u64,
    pub bulk_rounds: usize,
    pub connects: usize,
    pub concurrency: usize,
    pub rate_time: Duration,
    pub rate_rounds: usize,
    pub rate_clients: usize,
    /// `None`: the agent's default.
    pub rate_max_streams: Option<u32>,
    pub fanout_conns: usize,
    pub fanout_agents: usize,
    pub fanout_kib: u64,
    pub swarm: usize,
    pub flaky_requests: usize,
    pub fleet_agents: usize,
    pub soak_duration: Duration,
    /// soak: the fleet variant.
    pub soak_fleet: bool,
}

impl Sizes {
    pub fn from_args(args: &Args) -> Sizes {
        let mut sizes = if args.quick {
            Sizes {
                bulk_mib: 16,
                bulk_rounds: 1,
                connects: 200,
                concurrency: 8,
                rate_time: Duration::from_secs(1),
                rate_rounds: 1,
                rate_clients: 64,
                rate_max_streams: None,
                fanout_conns: 100,
                fanout_agents: 5,
                fanout_kib: 64,
                swarm: 200,
                flaky_requests: 500,
                fleet_agents: 300,
                soak_duration: Duration::from_secs(600),
                soak_fleet: false,
            }
        } else {
            // Suited to a 2-core machine: the whole of `all` fits in a few minutes.
            let all = Sizes {
                bulk_mib: 512,
                bulk_rounds: 5,
                connects: 1000,
                concurrency: 16,
                rate_time: Duration::from_secs(10),
                rate_rounds: 3,
                rate_clients: 64,
                rate_max_streams: None,
                fanout_conns: 2000,
                fanout_agents: 50,
                fanout_kib: 128,
                swarm: 10_000,
                flaky_requests: 10_000,
                fleet_agents: 10_000,
                soak_duration: Duration::from_secs(600),
                soak_fleet: false,
            };
            if args.scenario == Some(Scenario::All) {
                all
            } else {
                // One scenario alone can afford more.
                Sizes {
                    bulk_mib: 1024,
                    connects: 2000,
                    fanout_kib: 256,
                    ..all
                }
            }
        };
        sizes.bulk_mib = args.size.unwrap_or(sizes.bulk_mib).max(1);
        sizes.bulk_rounds = args.rounds.unwrap_or(sizes.bulk_rounds).max(1);
        sizes.rate_rounds = args.rounds.unwrap_or(sizes.rate_rounds).max(1);
        sizes.connects = args.connects.unwrap_or(sizes.connects).max(1);
        sizes.concurrency = args.concurrency.unwrap_or(sizes.concurrency).max(1);
        if let Some(secs) = args.rate_secs {
            sizes.rate_time = Duration::from_secs_f64(secs.clamp(0.1, 3600.0));
        }
        sizes.rate_clients = args.rate_clients.unwrap_or(sizes.rate_clients).max(1);
        sizes.rate_max_streams = args.rate_max_streams.or(sizes.rate_max_streams);
        sizes.fanout_conns = args.fanout_conns.unwrap_or(sizes.fanout_conns).max(1);
        sizes.fanout_agents = args
            .fanout_agents
            .unwrap_or(sizes.fanout_agents)
            .clamp(1, 250);
        sizes.fanout_kib = args.fanout_kib.unwrap_or(sizes.fanout_kib).max(1);
        sizes.swarm = args.swarm.unwrap_or(sizes.swarm).max(1);
        sizes.flaky_requests = args.flaky_requests.unwrap_or(sizes.flaky_requests).max(1);
        sizes.fleet_agents = args.fleet_agents.unwrap_or(sizes.fleet_agents).max(1);
        sizes.soak_duration = Duration::from_secs_f64(args.soak_duration.clamp(20.0, 86_400.0));
        sizes.soak_fleet = args.fleet;
        sizes
    }
}

/// What every scenario is given.
pub struct Bench {
    pub sizes: Sizes,
    pub bins: Binaries,
    pub runs: Runs,
    /// tinyproxy's path, when it is installed.
    pub tinyproxy: Option<PathBuf>,
    /// swarm's own flags.
    pub swarm: SwarmArgs,
}

impl Bench {
    /// Finds (and unless `--no-build`, builds) the binaries.
    pub async fn new(args: &Args, sizes: Sizes) -> Result<Bench> {
        Ok(Bench {
            sizes,
            bins: binaries(args.bin_dir.as_deref(), !args.no_build).await?,
            runs: Runs {
                gateway_threads: args.gateway_threads,
                also_threads: args.compare_runtimes.then_some(2),
                // Four busy processes on the forwarded path: this program
                // (client and target), gateways A and B, the agent.
                fleet_cpu_share: args
                    .fleet_cpu_share
                    .unwrap_or_else(|| crate::cpu_share::default_share(4)),
            },
            tinyproxy: crate::launch::which("tinyproxy"),
            swarm: args.swarm_args.clone(),
        })
    }
}

/// The swarm scenario's own flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SwarmArgs {
    /// swarm: further agent keep-alive periods in seconds (comma-separated),
    /// each measured with as many idle QUIC agents on a fresh gateway and a
    /// bare quinn server at the same period; the main phase keeps the SDK's
    /// 15 s.
    #[arg(long, value_delimiter = ',')]
    pub swarm_keep_alive: Vec<f64>,
    /// swarm: seconds each idle CPU figure is measured over (default 16, 5
    /// under 1,000 agents).
    #[arg(long)]
    pub swarm_idle_secs: Option<f64>,
    /// swarm: hold this many customer connections through the QUIC pool and
    /// time the dashboard's API calls, with the gateway's CPU while each page
    /// polls against the same window without (0: leave it out).
    #[arg(long, default_value_t = 0)]
    pub swarm_dashboard: usize,
}

/// The `udp` scenario's datagrams in flight in its rate phase.
pub const UDP_WINDOW: usize = 32;
/// The `udp` scenario's datagrams sent at once in its overload phase.
pub const UDP_BURST: u64 = 50_000;
