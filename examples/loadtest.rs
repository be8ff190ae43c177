//! The load-test program: how fast exitpool moves bytes, opens tunnels and holds
//! agents, always next to a direct-to-target baseline measured in the same run.
//!
//! ```sh
//! cargo build --release --bins --example loadtest
//! cargo run --release --example loadtest -- all --json bench.json --chart bench.svg
//! cargo run --release --example loadtest -- bulk --size 1024
//! cargo run --example loadtest -- all --quick          # a smoke run
//! ```
//!
//! Scenarios (see `--help`):
//! - `bulk`: one CONNECT, N MiB down and then up; MB/s and CPU seconds per GiB,
//!   direct, through exitpool, through tinyproxy when it is on PATH, and through
//!   a bare two-hop QUIC relay (see [`bare_relay`]), the floor under exitpool;
//! - `connect`: fresh CONNECT + 1 KiB response, sequential and concurrent, p50/p99/max,
//!   on the same paths;
//! - `fanout`: many concurrent customer connections over many agents, errors must be 0;
//! - `swarm`: many agents (in this process) on one gateway process, its memory and
//!   CPU measured on their own, next to a bare QUIC server holding as many idle
//!   connections; then the gateway restarts and the time for all agents to come
//!   back is measured;
//! - `footprint`: one agent process, idle and after traffic, against an in-process
//!   gateway.
//!
//! exitpool is measured as it is deployed: the real `gateway` and `agent` binaries,
//! each in its own process (built first unless `--no-build`), like tinyproxy's. The
//! gateway runs with `--threads 1` (`--gateway-threads`), because here the client,
//! the target, the gateway and the agents share two cores; `--compare-runtimes`
//! measures `--threads 2` next to it.
//!
//! CPU time comes from `/proc/PID/stat` (utime + stime, USER_HZ = 100): this
//! process (client and target) plus the proxy's processes, so the figures cover the
//! whole path; subtract the direct column for the proxy's share. Every wait is
//! bounded; a failure exits non-zero with a message.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use exitpool::agent::{Agent, AgentHandle};
use exitpool::gateway::auth::{AgentTokens, Customer, Users};
use exitpool::gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Bound on every single network step (connect, handshake, one small reply).
const STEP: Duration = Duration::from_secs(20);
/// The agent token the benchmark gateways accept.
const TOKEN: &str = "loadtest-token";
/// The benchmark customer.
const USER: &str = "bench";
const PASSWORD: &str = "benchpass";
/// Size of the buffers the client and target read and write with.
const CHUNK: usize = 256 * 1024;
/// Linux reports process CPU time in USER_HZ ticks, 100 per second on every
/// architecture the kernel exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;
const MIB: u64 = 1024 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "exitpool load test: throughput, connect latency, fan-out, swarm, footprint"
)]
struct Args {
    /// What to run.
    #[arg(value_enum, required_unless_present_any = ["bare_exit", "bare_entry"])]
    scenario: Option<Scenario>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput and connect latency against the direct baseline (SVG).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Tiny sizes, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// bulk: MiB per direction.
    #[arg(long)]
    size: Option<u64>,
    /// bulk: rounds, the paths taking turns in each; medians are reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// connect: fresh connections per path (sequential; the same again concurrently).
    #[arg(long)]
    connects: Option<usize>,
    /// connect: concurrent workers in the concurrent round.
    #[arg(long)]
    concurrency: Option<usize>,
    /// fanout: concurrent customer connections.
    #[arg(long)]
    fanout_conns: Option<usize>,
    /// fanout: agents.
    #[arg(long)]
    fanout_agents: Option<usize>,
    /// fanout: KiB downloaded by each connection.
    #[arg(long)]
    fanout_kib: Option<u64>,
    /// swarm: agents.
    #[arg(long)]
    swarm: Option<usize>,
    /// Where the `gateway` and `agent` binaries are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Worker threads of the gateway process (its `--threads`). One by default:
    /// here the client, target, gateway and agents share two cores, where each
    /// would have a machine of its own.
    #[arg(long, default_value_t = 1)]
    gateway_threads: usize,
    /// bulk, connect and fanout: also measure the gateway with `--threads 2`.
    #[arg(long)]
    compare_runtimes: bool,
    /// Do not run `cargo build --bin gateway --bin agent` before swarm/footprint.
    #[arg(long)]
    no_build: bool,
    /// Internal: run as the bare relay's exit hop, dialling this target.
    #[arg(long, hide = true)]
    bare_exit: Option<SocketAddr>,
    /// Internal: streams the bare exit hop lets each connection open at once
    /// (quinn sets up state for each in advance).
    #[arg(long, hide = true, default_value_t = exitpool::agent::DEFAULT_MAX_STREAMS)]
    bare_streams: u32,
    /// Internal: run as the bare relay's entry hop, towards this exit hop.
    #[arg(long, hide = true, requires = "bare_cert")]
    bare_entry: Option<SocketAddr>,
    /// Internal: the exit hop's certificate (hex DER), for `--bare-entry`.
    #[arg(long, hide = true)]
    bare_cert: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Bulk,
    Connect,
    Fanout,
    Swarm,
    Footprint,
    All,
}

/// The sizes one run uses.
#[derive(Debug, Clone)]
struct Sizes {
    bulk_mib: u64,
    bulk_rounds: usize,
    connects: usize,
    concurrency: usize,
    fanout_conns: usize,
    fanout_agents: usize,
    fanout_kib: u64,
    swarm: usize,
}

impl Sizes {
    fn from_args(args: &Args) -> Sizes {
        let mut sizes = if args.quick {
            Sizes {
                bulk_mib: 16,
                bulk_rounds: 1,
                connects: 200,
                concurrency: 8,
                fanout_conns: 100,
                fanout_agents: 5,
                fanout_kib: 64,
                swarm: 200,
            }
        } else if args.scenario == Some(Scenario::All) {
            // Suited to a 2-core machine: the whole run fits in a few minutes.
            Sizes {
                bulk_mib: 512,
                bulk_rounds: 5,
                connects: 1000,
                concurrency: 16,
                fanout_conns: 2000,
                fanout_agents: 50,
                fanout_kib: 128,
                swarm: 10_000,
            }
        } else {
            Sizes {
                bulk_mib: 1024,
                bulk_rounds: 5,
                connects: 2000,
                concurrency: 16,
                fanout_conns: 2000,
                fanout_agents: 50,
                fanout_kib: 256,
                swarm: 10_000,
            }
        };
        sizes.bulk_mib = args.size.unwrap_or(sizes.bulk_mib).max(1);
        sizes.bulk_rounds = args.rounds.unwrap_or(sizes.bulk_rounds).max(1);
        sizes.connects = args.connects.unwrap_or(sizes.connects).max(1);
        sizes.concurrency = args.concurrency.unwrap_or(sizes.concurrency).max(1);
        sizes.fanout_conns = args.fanout_conns.unwrap_or(sizes.fanout_conns).max(1);
        sizes.fanout_agents = args
            .fanout_agents
            .unwrap_or(sizes.fanout_agents)
            .clamp(1, 250);
        sizes.fanout_kib = args.fanout_kib.unwrap_or(sizes.fanout_kib).max(1);
        sizes.swarm = args.swarm.unwrap_or(sizes.swarm).max(1);
        sizes
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    metric: String,
    unit: &'static str,
    direct: Option<f64>,
    exitpool: Option<f64>,
    tinyproxy: Option<f64>,
    /// The bare two-hop QUIC relay (see [`bare_relay`]), where measured.
    bare_relay: Option<f64>,
}

/// Everything a run found.
#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        unit: &'static str,
        direct: Option<f64>,
        exitpool: Option<f64>,
        tinyproxy: Option<f64>,
    ) {
        self.rows.push(Row {
            scenario,
            metric: metric.into(),
            unit,
            direct,
            exitpool,
            tinyproxy,
            bare_relay: None,
        });
    }

    /// Adds the bare relay's figure to the row added last.
    fn with_bare_relay(&mut self, value: Option<f64>) {
        if let Some(row) = self.rows.last_mut() {
            row.bare_relay = value;
        }
    }

    /// exitpool-only figures measured with the gateway on `threads` workers.
    fn rows_with_threads(
        &mut self,
        scenario: &'static str,
        threads: usize,
        figures: &[(&str, &'static str, f64)],
    ) {
        for &(metric, unit, value) in figures {
            let metric = format!("{metric}, gateway --threads {threads}");
            self.row(scenario, metric, unit, None, Some(value), None);
        }
    }

    fn find(&self, scenario: &str, metric: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.metric == metric)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if args.bare_exit.is_some() || args.bare_entry.is_some() {
        return run_bare_relay_hop(&args);
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
    let result = runtime.block_on(run(args));
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

/// Runs this process as one hop of the bare relay, on one thread like the agent
/// and the benchmark gateway, until it is killed.
fn run_bare_relay_hop(args: &Args) -> ExitCode {
    let hop = async {
        match (args.bare_exit, args.bare_entry, &args.bare_cert) {
            (Some(target), _, _) => bare_relay::exit(target, args.bare_streams).await,
            (None, Some(exit), Some(cert)) => bare_relay::entry(exit, cert).await,
            _ => bail!("--bare-entry needs --bare-cert"),
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(hop));
    if let Err(error) = result {
        eprintln!("loadtest bare relay hop: {error:#}");
    }
    ExitCode::FAILURE
}

async fn run(args: Args) -> Result<bool> {
    let Some(scenario) = args.scenario else {
        bail!("no scenario given");
    };
    let sizes = Sizes::from_args(&args);
    let setup = setup(&args, &sizes);
    print_setup(&setup);
    let mut report = Report::default();
    let tinyproxy = which("tinyproxy");
    if tinyproxy.is_none() && matches!(scenario, Scenario::Bulk | Scenario::Connect | Scenario::All)
    {
        report.notes.push(
            "tinyproxy is not on PATH (apt-get install tinyproxy): its column is skipped".into(),
        );
    }
    let wants = |s: Scenario| scenario == s || scenario == Scenario::All;
    let bins = binaries(&args).await?;
    let runs = Runs {
        gateway_threads: args.gateway_threads,
        also_threads: args.compare_runtimes.then_some(2),
    };
    let started = Instant::now();
    if wants(Scenario::Bulk) {
        eprintln!(
            "== bulk: {} MiB each way, {} rounds",
            sizes.bulk_mib, sizes.bulk_rounds
        );
        if let Err(error) = bulk(&sizes, &bins, &runs, tinyproxy.as_deref(), &mut report).await {
            eprintln!("   bulk failed: {error:#}");
            report.failures.push(format!("bulk: {error:#}"));
        }
    }
    if wants(Scenario::Connect) {
        eprintln!("== connect: {} fresh connections per path", sizes.connects);
        if let Err(error) = connect(&sizes, &bins, &runs, tinyproxy.as_deref(), &mut report).await {
            eprintln!("   connect failed: {error:#}");
            report.failures.push(format!("connect: {error:#}"));
        }
    }
    if wants(Scenario::Fanout) {
        eprintln!(
            "== fanout: {} connections over {} agents",
            sizes.fanout_conns, sizes.fanout_agents
        );
        if let Err(error) = fanout(&sizes, &bins, &runs, &mut report).await {
            eprintln!("   fanout failed: {error:#}");
            report.failures.push(format!("fanout: {error:#}"));
        }
    }
    if wants(Scenario::Swarm) {
        eprintln!("== swarm: {} agents", sizes.swarm);
        if let Err(error) = swarm(&sizes, &bins, &runs, &mut report).await {
            eprintln!("   swarm failed: {error:#}");
            report.failures.push(format!("swarm: {error:#}"));
        }
    }
    if wants(Scenario::Footprint) {
        eprintln!("== footprint: one agent process");
        if let Err(error) = footprint(&bins, &mut report).await {
            eprintln!("   footprint failed: {error:#}");
            report.failures.push(format!("footprint: {error:#}"));
        }
    }
    let elapsed = started.elapsed();
    print_table(&report);
    println!("wall time: {:.1} s", elapsed.as_secs_f64());
    if let Some(path) = &args.json {
        let rows: Vec<Value> = report
            .rows
            .iter()
            .map(|r| {
                json!({"scenario": r.scenario, "metric": r.metric, "unit": r.unit,
                "direct": r.direct, "exitpool": r.exitpool, "tinyproxy": r.tinyproxy,
                "bare_quic_relay": r.bare_relay})
            })
            .collect();
        let doc = json!({"setup": setup, "results": rows, "notes": report.notes,
            "failures": report.failures, "wall_seconds": elapsed.as_secs_f64()});
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
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

// ---------------------------------------------------------------------------
// Setup description
// ---------------------------------------------------------------------------

fn setup(args: &Args, sizes: &Sizes) -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = meminfo_kib("MemTotal").map(|k| k / 1024).unwrap_or(0);
    json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "cores": cores,
        "cpu": cpu,
        "kernel": kernel,
        "memory_mib": mem,
        "profile": if cfg!(debug_assertions) { "dev (debug assertions on)" } else { "release" },
        "runtime": format!("client and target: tokio multi-thread in this process; gateway process: --threads {}; agent processes: their default (current-thread)", args.gateway_threads),
        "bulk_mib": sizes.bulk_mib,
        "bulk_rounds": sizes.bulk_rounds,
        "connects": sizes.connects,
        "concurrency": sizes.concurrency,
        "fanout_conns": sizes.fanout_conns,
        "fanout_agents": sizes.fanout_agents,
        "fanout_kib": sizes.fanout_kib,
        "swarm_agents": sizes.swarm,
        "udp_rmem_max": std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default().trim(),
    })
}

fn print_setup(setup: &Value) {
    println!("exitpool load test");
    for key in [
        "scenario",
        "cores",
        "cpu",
        "kernel",
        "memory_mib",
        "profile",
        "runtime",
        "udp_rmem_max",
    ] {
        println!("  {key:<14} {}", setup[key].to_string().trim_matches('"'));
    }
    println!(
        "  sizes          bulk {} MiB x {} rounds; connect {} x (1 + {} workers); fanout {} conns / {} agents x {} KiB; swarm {} agents",
        setup["bulk_mib"], setup["bulk_rounds"], setup["connects"], setup["concurrency"], setup["fanout_conns"],
        setup["fanout_agents"], setup["fanout_kib"], setup["swarm_agents"]
    );
    println!("  units          MB/s = 10^6 bytes/s; CPU from /proc/PID/stat utime+stime");
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn print_table(report: &Report) {
    println!();
    println!(
        "{:<10} {:<44} {:<9} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "measurement", "unit", "direct", "exitpool", "tinyproxy", "bare QUIC"
    );
    println!("{}", "-".repeat(109));
    for r in &report.rows {
        println!(
            "{:<10} {:<44} {:<9} {:>10} {:>10} {:>10} {:>10}",
            r.scenario,
            r.metric,
            r.unit,
            fmt_value(r.direct),
            fmt_value(r.exitpool),
            fmt_value(r.tinyproxy),
            fmt_value(r.bare_relay)
        );
    }
    if !report.notes.is_empty() {
        println!();
        println!("notes:");
        for note in &report.notes {
            println!("  - {note}");
        }
    }
    if !report.failures.is_empty() {
        println!();
        println!("FAILURES:");
        for failure in &report.failures {
            println!("  - {failure}");
        }
    }
    println!();
}

// ---------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------

/// utime + stime of a process (this one with `None`), in seconds.
fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / TICKS_PER_SECOND)
}

/// A `VmXxx:` line of /proc/PID/status, in KiB.
fn status_kib(pid: Option<u32>, key: &str) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// UDP receive-buffer drops so far (the `RcvbufErrors` of /proc/net/snmp).
fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Target server and clients
// ---------------------------------------------------------------------------

/// A target speaking a tiny request/response protocol: the client sends one
/// command byte and a big-endian u64 length. `D`: the target sends that many
/// bytes and closes. `U`: it reads that many bytes and answers with the count.
async fn start_target() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = serve_target(stream).await;
            });
        }
    });
    Ok(addr)
}

async fn serve_target(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut head = [0u8; 9];
    tokio::time::timeout(STEP, stream.read_exact(&mut head)).await??;
    let len = u64::from_be_bytes(head[1..].try_into().expect("8 bytes"));
    match head[0] {
        b'D' => {
            write_bytes(&mut stream, len).await?;
            stream.shutdown().await?;
        }
        b'U' => {
            let got = read_bytes(&mut stream, len).await?;
            stream.write_all(&got.to_be_bytes()).await?;
            stream.shutdown().await?;
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}

static PAYLOAD: [u8; CHUNK] = [0x5a; CHUNK];

async fn write_bytes(stream: &mut TcpStream, mut len: u64) -> Result<()> {
    while len > 0 {
        let n = len.min(CHUNK as u64) as usize;
        stream.write_all(&PAYLOAD[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

/// Reads `len` bytes (or until EOF, whichever first) and returns how many came.
async fn read_bytes(stream: &mut TcpStream, len: u64) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(CHUNK as u64) as usize;
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    Ok(got)
}

/// How a client reaches the target.
#[derive(Debug, Clone)]
enum Route {
    Direct,
    /// A relay that carries the target protocol as it is (the bare QUIC relay).
    Relay(SocketAddr),
    /// An HTTP proxy taking CONNECT, with an optional `Proxy-Authorization` value.
    Proxy {
        addr: SocketAddr,
        auth: Option<String>,
    },
    /// Like `Proxy`, from a given local address (many customers, many addresses).
    ProxyFrom {
        addr: SocketAddr,
        auth: Option<String>,
        source: IpAddr,
    },
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Opens a connection to `target` along `path`, ready for the target protocol.
async fn open(path: &Route, target: SocketAddr) -> Result<TcpStream> {
    match path {
        Route::Direct | Route::Relay(_) => {
            let to = match path {
                Route::Relay(relay) => *relay,
                _ => target,
            };
            let stream = tokio::time::timeout(STEP, TcpStream::connect(to))
                .await
                .context("connect timed out")??;
            stream.set_nodelay(true)?;
            Ok(stream)
        }
        Route::Proxy { .. } | Route::ProxyFrom { .. } => {
            let (addr, auth, source) = match path {
                Route::Proxy { addr, auth } => (addr, auth, None),
                Route::ProxyFrom { addr, auth, source } => (addr, auth, Some(*source)),
                Route::Direct | Route::Relay(_) => unreachable!("matched above"),
            };
            let connecting = async {
                match source {
                    None => TcpStream::connect(addr).await,
                    Some(ip) => {
                        let socket = tokio::net::TcpSocket::new_v4()?;
                        socket.bind(SocketAddr::new(ip, 0))?;
                        socket.connect(*addr).await
                    }
                }
            };
            let mut stream = tokio::time::timeout(STEP, connecting)
                .await
                .context("proxy connect timed out")??;
            stream.set_nodelay(true)?;
            let auth = auth
                .as_ref()
                .map(|a| format!("Proxy-Authorization: {a}\r\n"))
                .unwrap_or_default();
            let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
            stream.write_all(request.as_bytes()).await?;
            let head = tokio::time::timeout(STEP, read_head(&mut stream))
                .await
                .context("CONNECT answer timed out")??;
            let status = head.split(' ').nth(1).unwrap_or("");
            if status != "200" {
                bail!("CONNECT answered {:?}", head.lines().next().unwrap_or(""));
            }
            Ok(stream)
        }
    }
}

/// Reads a response head. The target never speaks first, so nothing after the
/// head can arrive before we send a command; reading in chunks is safe.
async fn read_head(stream: &mut TcpStream) -> Result<String> {
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!(
                "proxy closed before answering: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let ok = head.split(' ').nth(1) == Some("200");
            if ok && end + 4 != raw.len() {
                bail!("unexpected bytes after the CONNECT answer");
            }
            if !ok {
                // An error answer may carry a body; keep its first line for the report.
                let body = String::from_utf8_lossy(&raw[end + 4..])
                    .chars()
                    .take(160)
                    .collect::<String>();
                bail!(
                    "CONNECT answered {:?} {body:?}",
                    head.lines().next().unwrap_or("")
                );
            }
            return Ok(String::from_utf8_lossy(&raw).into_owned());
        }
        if raw.len() > 64 * 1024 {
            bail!("CONNECT answer head too long");
        }
    }
}

/// Asks for `len` bytes and reads them all.
async fn download(stream: &mut TcpStream, len: u64) -> Result<()> {
    let mut head = [b'D'; 9];
    head[1..].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&head).await?;
    let got = read_bytes(stream, len).await?;
    if got != len {
        bail!("download cut short: {got} of {len} bytes");
    }
    Ok(())
}

/// Sends `len` bytes and waits for the target to confirm it got them.
async fn upload(stream: &mut TcpStream, len: u64) -> Result<()> {
    let mut head = [b'U'; 9];
    head[1..].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&head).await?;
    write_bytes(stream, len).await?;
    let mut answer = [0u8; 8];
    tokio::time::timeout(STEP, stream.read_exact(&mut answer))
        .await
        .context("upload ack timed out")??;
    let got = u64::from_be_bytes(answer);
    if got != len {
        bail!("upload cut short: target got {got} of {len} bytes");
    }
    Ok(())
}

/// A generous bound for moving `bytes`: 5 MB/s at least, 60 s minimum.
fn transfer_bound(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 5_000_000)
}

// ---------------------------------------------------------------------------
// In-process gateway and agents
// ---------------------------------------------------------------------------

struct Pool {
    gateway: Gateway,
    agents: Vec<AgentHandle>,
    _state: tempfile::TempDir,
}

impl Pool {
    /// A gateway on loopback port 0 and `agents` agents on 127.0.1.1, .2, ...
    async fn start(agents: usize, max_connections: usize, max_streams: u32) -> Result<Pool> {
        let state = tempfile::tempdir()?;
        let gateway = Self::start_gateway(state.path(), max_connections).await?;
        let mut handles = Vec::with_capacity(agents);
        for i in 0..agents {
            handles.push(
                Self::agent_builder(gateway.tunnel_addr(), gateway.pin(), i, max_streams)?
                    .spawn()?,
            );
        }
        tokio::time::timeout(
            STEP * 3,
            gateway
                .directory()
                .wait_for_census(|c| c.accepting >= agents),
        )
        .await
        .with_context(|| format!("{agents} agents did not all join within {:?}", STEP * 3))?;
        Ok(Pool {
            gateway,
            agents: handles,
            _state: state,
        })
    }

    async fn start_gateway(state: &Path, max_connections: usize) -> Result<Gateway> {
        let mut config = GatewayConfig::new(state.to_owned());
        let local: SocketAddr = "127.0.0.1:0".parse()?;
        (config.listen, config.tunnel, config.admin) = (local, local, None);
        config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}"))?]);
        config.agent_tokens = AgentTokens::new([TOKEN.to_owned()]);
        config.max_connections = max_connections;
        config.shutdown_grace = Duration::from_secs(2);
        Ok(tokio::time::timeout(STEP, Gateway::start(config))
            .await
            .context("gateway start timed out")??)
    }

    /// Agent `i` of a pool: bound to 127.0.1.(i+1), allowed to reach loopback targets.
    fn agent_builder(
        tunnel: SocketAddr,
        pin: &str,
        i: usize,
        max_streams: u32,
    ) -> Result<exitpool::agent::AgentBuilder> {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1) as u8));
        Ok(Agent::builder(tunnel.to_string(), pin.parse()?, TOKEN)
            .bind(ip)
            .allow_private(true)
            .max_streams(max_streams))
    }

    fn path(&self) -> Route {
        Route::Proxy {
            addr: self.gateway.listen_addr(),
            auth: Some(basic(USER, PASSWORD)),
        }
    }

    async fn stop(self) {
        let stops = self.agents.into_iter().map(|a| async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), a.shutdown()).await;
        });
        join_all(stops).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.gateway.shutdown()).await;
    }
}

async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task does not panic"));
    }
    out
}

// ---------------------------------------------------------------------------
// tinyproxy
// ---------------------------------------------------------------------------

struct Tinyproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy when it was found, so its column can be filled.
    async fn start_if_installed(binary: Option<&Path>) -> Result<Option<Tinyproxy>> {
        match binary {
            Some(binary) => Ok(Some(Self::start(binary).await?)),
            None => Ok(None),
        }
    }

    async fn start(binary: &Path) -> Result<Tinyproxy> {
        let dir = tempfile::tempdir()?;
        let port = free_tcp_port()?;
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 4096\nAllow 127.0.0.1\nLogLevel Critical\nDisableViaHeader Yes\n"
        );
        // Run as root, tinyproxy insists on dropping to a named user.
        if is_root() {
            conf.push_str("User nobody\nGroup nogroup\n");
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting tinyproxy")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_until(
            Duration::from_secs(10),
            "tinyproxy listens",
            || async move { TcpStream::connect(addr).await.is_ok() },
        )
        .await?;
        Ok(Tinyproxy {
            child,
            addr,
            _dir: dir,
        })
    }

    fn path(&self) -> Route {
        Route::Proxy {
            addr: self.addr,
            auth: None,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `check` every 50 ms until it holds, at most `bound`.
async fn wait_until<F, Fut>(bound: Duration, what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > bound {
            bail!("timed out after {bound:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// bulk
// ---------------------------------------------------------------------------

struct Transfer {
    mb_per_s: f64,
    /// This process (client and target) plus every process in `pids`.
    cpu_per_gib: f64,
    /// Each process of `pids` on its own, in the same order.
    cpu_per_gib_of: Vec<f64>,
}

/// CPU seconds used so far by this process, then by each of `pids`.
fn cpu_of(pids: &[u32]) -> Result<Vec<f64>> {
    std::iter::once(None)
        .chain(pids.iter().map(|&p| Some(p)))
        .map(cpu_seconds)
        .collect()
}

async fn one_transfer(
    path: &Route,
    target: SocketAddr,
    bytes: u64,
    up: bool,
    pids: &[u32],
) -> Result<Transfer> {
    let cpu0 = cpu_of(pids)?;
    let t0 = Instant::now();
    let mut stream = open(path, target).await?;
    let work = async {
        if up {
            upload(&mut stream, bytes).await
        } else {
            download(&mut stream, bytes).await
        }
    };
    tokio::time::timeout(transfer_bound(bytes), work)
        .await
        .context("transfer timed out")??;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(pids)?;
    let per_gib: Vec<f64> = cpu1
        .iter()
        .zip(&cpu0)
        .map(|(after, before)| (after - before) / (bytes as f64 / GIB))
        .collect();
    Ok(Transfer {
        mb_per_s: bytes as f64 / secs / 1e6,
        cpu_per_gib: per_gib.iter().sum(),
        cpu_per_gib_of: per_gib[1..].to_vec(),
    })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Field by field medians of several runs of one transfer.
fn median_transfer(runs: &[Transfer]) -> Transfer {
    let processes = runs
        .iter()
        .map(|t| t.cpu_per_gib_of.len())
        .min()
        .unwrap_or(0);
    Transfer {
        mb_per_s: median(runs.iter().map(|t| t.mb_per_s)),
        cpu_per_gib: median(runs.iter().map(|t| t.cpu_per_gib)),
        cpu_per_gib_of: (0..processes)
            .map(|i| median(runs.iter().map(|t| t.cpu_per_gib_of[i])))
            .collect(),
    }
}

/// The bare two-hop QUIC relay's path name in bulk and connect.
const BARE: &str = "bare relay";
const BARE_NOTE: &str = "bare QUIC = a bare two-hop QUIC relay (entry and exit processes, the same byte path, transport settings and one-thread runtimes as the gateway and agent; no authentication, routing, Open/Opened exchange, accounting or limits): the floor for two QUIC hops on this machine";

/// One path through which bulk moves data, with every round's transfers.
struct BulkPath {
    name: String,
    route: Route,
    pids: Vec<u32>,
    down: Vec<Transfer>,
    up: Vec<Transfer>,
}

async fn bulk(
    sizes: &Sizes,
    bins: &Binaries,
    runs: &Runs,
    tinyproxy: Option<&Path>,
    report: &mut Report,
) -> Result<()> {
    let target = start_target().await?;
    let processes = Processes::start(bins, runs.gateway_threads, 1, 1024, None).await?;
    let other = match runs.also_threads {
        Some(threads) => Some((
            threads,
            Processes::start(bins, threads, 1, 1024, None).await?,
        )),
        None => None,
    };
    let tiny = Tinyproxy::start_if_installed(tinyproxy).await?;
    let bare = BareRelay::start(target).await?;
    let bytes = sizes.bulk_mib * MIB;
    let path = |name: &str, route: Route, pids: Vec<u32>| BulkPath {
        name: name.to_owned(),
        route,
        pids,
        down: Vec::new(),
        up: Vec::new(),
    };
    let mut paths = vec![
        path("direct", Route::Direct, vec![]),
        path("exitpool", processes.path(), processes.pids()),
    ];
    if let Some(t) = &tiny {
        paths.push(path("tinyproxy", t.path(), t.pid().into_iter().collect()));
    }
    paths.push(path(BARE, bare.path(), bare.pids()));
    if let Some((threads, other)) = &other {
        paths.push(path(
            &format!("gateway --threads {threads}"),
            other.path(),
            other.pids(),
        ));
    }
    let drops0 = udp_rcvbuf_errors();
    for path in &paths {
        // Warm-up: let caches, windows and the allocator settle.
        one_transfer(&path.route, target, (8 * MIB).min(bytes), false, &path.pids)
            .await
            .with_context(|| format!("{} warm-up", path.name))?;
    }
    // Paths take turns, round after round, so a slow spell of a shared machine
    // hits them alike; the table shows each figure's median over the rounds.
    for round in 1..=sizes.bulk_rounds {
        for path in &mut paths {
            let name = &path.name;
            let down = one_transfer(&path.route, target, bytes, false, &path.pids)
                .await
                .with_context(|| format!("{name} download, round {round}"))?;
            let up = one_transfer(&path.route, target, bytes, true, &path.pids)
                .await
                .with_context(|| format!("{name} upload, round {round}"))?;
            eprintln!(
                "   {round}  {name:<9} down {:>7.1} MB/s {:.2} CPU-s/GiB {:.2?}   up {:>7.1} MB/s {:.2} CPU-s/GiB {:.2?}",
                down.mb_per_s, down.cpu_per_gib, down.cpu_per_gib_of, up.mb_per_s, up.cpu_per_gib, up.cpu_per_gib_of
            );
            path.down.push(down);
            path.up.push(up);
        }
    }
    let drops = udp_rcvbuf_errors()
        .zip(drops0)
        .map(|(a, b)| a.saturating_sub(b));
    let medians: Vec<(&str, Transfer, Transfer)> = paths
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                median_transfer(&p.down),
                median_transfer(&p.up),
            )
        })
        .collect();
    let get = |name: &str, up: bool| {
        medians
            .iter()
            .find(|r| r.0 == name)
            .map(|r| if up { &r.2 } else { &r.1 })
    };
    type Figure = fn(&Transfer) -> f64;
    let throughput: Figure = |t| t.mb_per_s;
    let cpu: Figure = |t| t.cpu_per_gib;
    for (metric, unit, up, figure) in [
        ("download throughput", "MB/s", false, throughput),
        ("upload throughput", "MB/s", true, throughput),
        ("download CPU, whole path", "CPU-s/GiB", false, cpu),
        ("upload CPU, whole path", "CPU-s/GiB", true, cpu),
    ] {
        let of = |name: &str| get(name, up).map(figure);
        report.row(
            "bulk",
            metric,
            unit,
            of("direct"),
            of("exitpool"),
            of("tinyproxy"),
        );
        report.with_bare_relay(of(BARE));
    }
    for (way, up) in [("download", false), ("upload", true)] {
        let minus = |name: &str| Some(get(name, up)?.cpu_per_gib - get("direct", up)?.cpu_per_gib);
        report.row(
            "bulk",
            format!("{way} CPU, proxy share (minus direct)"),
            "CPU-s/GiB",
            None,
            minus("exitpool"),
            minus("tinyproxy"),
        );
        report.with_bare_relay(minus(BARE));
    }
    // The bare relay's entry hop stands where the gateway does, its exit hop
    // where the agent does.
    for (i, process) in ["gateway", "agent"].iter().enumerate() {
        for (way, up) in [("download", false), ("upload", true)] {
            let of = |name: &str| get(name, up).and_then(|t| t.cpu_per_gib_of.get(i).copied());
            report.row(
                "bulk",
                format!("{way} CPU, {process} process"),
                "CPU-s/GiB",
                None,
                of("exitpool"),
                None,
            );
            report.with_bare_relay(of(BARE));
        }
    }
    // The ratio each round measured, so the spread shows next to the medians.
    let named = |name: &str| paths.iter().find(|p| p.name == name);
    for other in ["tinyproxy", BARE] {
        let (Some(ours), Some(theirs)) = (named("exitpool"), named(other)) else {
            continue;
        };
        for (way, up) in [("download", false), ("upload", true)] {
            let (ours, theirs) = if up {
                (&ours.up, &theirs.up)
            } else {
                (&ours.down, &theirs.down)
            };
            let ratios: Vec<f64> = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| a.mb_per_s / b.mb_per_s)
                .collect();
            let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = ratios.iter().copied().fold(0.0, f64::max);
            for (metric, value) in [
                (
                    format!("{way}, exitpool / {other}, median round"),
                    median(ratios.iter().copied()),
                ),
                (format!("{way}, exitpool / {other}, lowest round"), lowest),
                (format!("{way}, exitpool / {other}, highest round"), highest),
            ] {
                report.row("bulk", metric, "ratio", None, Some(value), None);
            }
        }
    }
    if let Some(drops) = drops {
        report.row(
            "bulk",
            "UDP receive-buffer drops (all paths)",
            "packets",
            None,
            Some(drops as f64),
            None,
        );
    }
    if let Some((threads, _)) = &other {
        let name = format!("gateway --threads {threads}");
        if let (Some(down), Some(up)) = (get(&name, false), get(&name, true)) {
            report.rows_with_threads(
                "bulk",
                *threads,
                &[
                    ("download", "MB/s", down.mb_per_s),
                    ("upload", "MB/s", up.mb_per_s),
                    ("download CPU, whole path", "CPU-s/GiB", down.cpu_per_gib),
                    ("upload CPU, whole path", "CPU-s/GiB", up.cpu_per_gib),
                ],
            );
        }
    }
    report.notes.push(format!(
        "bulk: one connection per transfer, {} MiB each way after an 8 MiB warm-up, {} rounds with the paths taking turns, medians shown; exitpool = the gateway (--threads {}) and agent binaries, each its own process (QUIC over loopback); CPU 'whole path' = this process (client and target) plus the proxy's processes",
        sizes.bulk_mib, sizes.bulk_rounds, runs.gateway_threads
    ));
    report.notes.push(BARE_NOTE.into());
    if let Some((_, other)) = other {
        other.stop().await;
    }
    processes.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// connect
// ---------------------------------------------------------------------------

/// Fresh connection + 1 KiB answer; returns the time it took.
async fn one_connect(path: &Route, target: SocketAddr) -> Result<Duration> {
    let t0 = Instant::now();
    let mut stream = open(path, target).await?;
    tokio::time::timeout(STEP, download(&mut stream, 1024))
        .await
        .context("1 KiB answer timed out")??;
    Ok(t0.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

struct ConnectStats {
    p50: f64,
    p99: f64,
    max: f64,
    seq_rate: f64,
    conc_rate: f64,
    conc_p50: f64,
    conc_p99: f64,
}

async fn connect_path(
    path: &Route,
    target: SocketAddr,
    n: usize,
    workers: usize,
) -> Result<ConnectStats> {
    for _ in 0..20.min(n) {
        one_connect(path, target).await.context("warm-up")?;
    }
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        lat.push(one_connect(path, target).await?);
    }
    let seq_rate = n as f64 / t0.elapsed().as_secs_f64();
    lat.sort();
    // The same number again from `workers` concurrent clients.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t1 = Instant::now();
    let jobs = (0..workers).map(|_| {
        let (path, next) = (path.clone(), next.clone());
        async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                lat.push(one_connect(&path, target).await?);
            }
            anyhow::Ok(lat)
        }
    });
    let mut conc = Vec::with_capacity(n);
    for result in join_all(jobs).await {
        conc.extend(result?);
    }
    let conc_rate = n as f64 / t1.elapsed().as_secs_f64();
    conc.sort();
    Ok(ConnectStats {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        max: percentile(&lat, 1.0),
        seq_rate,
        conc_rate,
        conc_p50: percentile(&conc, 0.5),
        conc_p99: percentile(&conc, 0.99),
    })
}

/// `connect_path` on one named path, reported as it finishes.
async fn measured_connects(
    name: &str,
    path: &Route,
    target: SocketAddr,
    sizes: &Sizes,
) -> Result<ConnectStats> {
    let stats = connect_path(path, target, sizes.connects, sizes.concurrency)
        .await
        .context(name.to_owned())?;
    eprintln!(
        "   {name:<10} p50 {:.3} ms  {:.0}/s sequential  {:.0}/s concurrent",
        stats.p50, stats.seq_rate, stats.conc_rate
    );
    Ok(stats)
}

async fn connect(
    sizes: &Sizes,
    bins: &Binaries,
    runs: &Runs,
    tinyproxy: Option<&Path>,
    report: &mut Report,
) -> Result<()> {
    let target = start_target().await?;
    let processes = Processes::start(bins, runs.gateway_threads, 1, 4096, None).await?;
    let tiny = Tinyproxy::start_if_installed(tinyproxy).await?;
    let direct = measured_connects("direct", &Route::Direct, target, sizes).await?;
    let ours = measured_connects("exitpool", &processes.path(), target, sizes).await?;
    let tiny_stats = match &tiny {
        Some(t) => Some(measured_connects("tinyproxy", &t.path(), target, sizes).await?),
        None => None,
    };
    let bare = BareRelay::start(target).await?;
    let bare_stats = measured_connects(BARE, &bare.path(), target, sizes).await?;
    drop(bare);
    let t = |f: fn(&ConnectStats) -> f64| tiny_stats.as_ref().map(f);
    report.row(
        "connect",
        "fresh connect + 1 KiB, p50",
        "ms",
        Some(direct.p50),
        Some(ours.p50),
        t(|s| s.p50),
    );
    report.with_bare_relay(Some(bare_stats.p50));
    report.row(
        "connect",
        "fresh connect + 1 KiB, p99",
        "ms",
        Some(direct.p99),
        Some(ours.p99),
        t(|s| s.p99),
    );
    report.with_bare_relay(Some(bare_stats.p99));
    report.row(
        "connect",
        "fresh connect + 1 KiB, max",
        "ms",
        Some(direct.max),
        Some(ours.max),
        t(|s| s.max),
    );
    report.with_bare_relay(Some(bare_stats.max));
    report.row(
        "connect",
        "sequential rate",
        "conn/s",
        Some(direct.seq_rate),
        Some(ours.seq_rate),
        t(|s| s.seq_rate),
    );
    report.with_bare_relay(Some(bare_stats.seq_rate));
    let label = format!("{} concurrent clients: rate", sizes.concurrency);
    report.row(
        "connect",
        label,
        "conn/s",
        Some(direct.conc_rate),
        Some(ours.conc_rate),
        t(|s| s.conc_rate),
    );
    report.with_bare_relay(Some(bare_stats.conc_rate));
    let label = format!("{} concurrent clients: p50", sizes.concurrency);
    report.row(
        "connect",
        label,
        "ms",
        Some(direct.conc_p50),
        Some(ours.conc_p50),
        t(|s| s.conc_p50),
    );
    report.with_bare_relay(Some(bare_stats.conc_p50));
    let label = format!("{} concurrent clients: p99", sizes.concurrency);
    report.row(
        "connect",
        label,
        "ms",
        Some(direct.conc_p99),
        Some(ours.conc_p99),
        t(|s| s.conc_p99),
    );
    report.with_bare_relay(Some(bare_stats.conc_p99));
    report.row(
        "connect",
        "p50 / direct p50",
        "ratio",
        None,
        Some(ours.p50 / direct.p50),
        tiny_stats.as_ref().map(|s| s.p50 / direct.p50),
    );
    report.with_bare_relay(Some(bare_stats.p50 / direct.p50));
    processes.stop().await;
    if let Some(threads) = runs.also_threads {
        let other = Processes::start(bins, threads, 1, 4096, None).await?;
        let stats = connect_path(&other.path(), target, sizes.connects, sizes.concurrency)
            .await
            .with_context(|| format!("gateway --threads {threads}"))?;
        eprintln!(
            "   gateway --threads {threads}: p50 {:.3} ms  {:.0}/s sequential  {:.0}/s concurrent",
            stats.p50, stats.seq_rate, stats.conc_rate
        );
        report.rows_with_threads(
            "connect",
            threads,
            &[
                ("p50", "ms", stats.p50),
                ("concurrent rate", "conn/s", stats.conc_rate),
            ],
        );
        other.stop().await;
    }
    report.notes.push(format!(
        "connect: exitpool = the gateway (--threads {}) and agent binaries, each its own process; the bare relay dials its target when the stream arrives, with no Open/Opened round trip",
        runs.gateway_threads
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------

struct FanoutRun {
    errors: usize,
    first_errors: Vec<String>,
    secs: f64,
    p50: f64,
    p99: f64,
    /// This process and every process in `pids`.
    cpu: f64,
    /// The first process of `pids` (the gateway's) on its own.
    first_pid_cpu: Option<f64>,
}

async fn fanout_run(
    path: &Route,
    target: SocketAddr,
    conns: usize,
    bytes: u64,
    pids: &[u32],
) -> Result<FanoutRun> {
    let cpu0 = cpu_of(pids)?;
    let start = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let jobs = (0..conns).map(|i| {
        // Customers come from 127.0.2.1-250: the gateway rightly caps how many
        // unauthenticated connections one address may hold.
        let path = match path {
            Route::Proxy { addr, auth } => Route::ProxyFrom {
                addr: *addr,
                auth: auth.clone(),
                source: IpAddr::V4(Ipv4Addr::new(127, 0, 2, (i % 250 + 1) as u8)),
            },
            other => other.clone(),
        };
        let start = start.clone();
        async move {
            start.wait().await;
            let t0 = Instant::now();
            let work = async {
                let mut stream = open(&path, target).await?;
                download(&mut stream, bytes).await
            };
            match tokio::time::timeout(transfer_bound(bytes) + STEP, work).await {
                Ok(Ok(())) => Ok(t0.elapsed()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("timed out".to_owned()),
            }
        }
    });
    let handles: Vec<_> = jobs.map(tokio::spawn).collect();
    start.wait().await;
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(conns);
    let mut first_errors = Vec::new();
    let mut errors = 0;
    for handle in handles {
        match handle.await? {
            Ok(d) => lat.push(d),
            Err(e) => {
                errors += 1;
                if first_errors.len() < 3 {
                    first_errors.push(e);
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(pids)?;
    lat.sort();
    Ok(FanoutRun {
        errors,
        first_errors,
        secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        cpu: cpu1.iter().sum::<f64>() - cpu0.iter().sum::<f64>(),
        first_pid_cpu: cpu1.get(1).zip(cpu0.get(1)).map(|(a, b)| a - b),
    })
}

async fn fanout(sizes: &Sizes, bins: &Binaries, runs: &Runs, report: &mut Report) -> Result<()> {
    let (conns, agents) = (sizes.fanout_conns, sizes.fanout_agents);
    let needed = conns as u64 * 4 + 1000;
    if let Some(limit) = open_files_limit() {
        if limit < needed {
            bail!("fanout needs about {needed} file descriptors, the limit is {limit}: raise it with `ulimit -n {needed}` or lower --fanout-conns");
        }
    }
    let target = start_target().await?;
    // Routing picks among agents by load, so leave each room for an uneven share.
    let per_agent = ((conns / agents) * 4).max(64) as u32;
    let processes = Processes::start(
        bins,
        runs.gateway_threads,
        agents,
        conns + 256,
        Some(per_agent),
    )
    .await?;
    let bytes = sizes.fanout_kib * 1024;
    let direct = fanout_run(&Route::Direct, target, conns, bytes, &[]).await?;
    eprintln!(
        "   direct    {} errors, {:.2} s",
        direct.errors, direct.secs
    );
    let ours = fanout_run(&processes.path(), target, conns, bytes, &processes.pids()).await?;
    eprintln!("   exitpool  {} errors, {:.2} s", ours.errors, ours.secs);
    let served = processes.gateway.streams_per_agent().await?;
    let used = served.iter().filter(|&&n| n > 0).count();
    let total = conns as f64 * bytes as f64;
    report.row(
        "fanout",
        format!("{conns} concurrent conns over {agents} agents: errors"),
        "count",
        Some(direct.errors as f64),
        Some(ours.errors as f64),
        None,
    );
    report.row(
        "fanout",
        "aggregate throughput",
        "MB/s",
        Some(total / direct.secs / 1e6),
        Some(total / ours.secs / 1e6),
        None,
    );
    report.row(
        "fanout",
        "wall time, all connections done",
        "s",
        Some(direct.secs),
        Some(ours.secs),
        None,
    );
    report.row(
        "fanout",
        "per-connection time, p50",
        "ms",
        Some(direct.p50),
        Some(ours.p50),
        None,
    );
    report.row(
        "fanout",
        "per-connection time, p99",
        "ms",
        Some(direct.p99),
        Some(ours.p99),
        None,
    );
    report.row(
        "fanout",
        "CPU, whole path",
        "CPU-s/GiB",
        Some(direct.cpu / (total / GIB)),
        Some(ours.cpu / (total / GIB)),
        None,
    );
    report.row(
        "fanout",
        "CPU, gateway process",
        "CPU-s/GiB",
        None,
        ours.first_pid_cpu.map(|c| c / (total / GIB)),
        None,
    );
    report.row(
        "fanout",
        "agents that served a stream",
        "count",
        None,
        Some(used as f64),
        None,
    );
    report.row(
        "fanout",
        "streams on the busiest agent",
        "count",
        None,
        served.iter().max().map(|&n| n as f64),
        None,
    );
    report.notes.push(format!("fanout: {conns} connections started at once (barrier), each CONNECT + {} KiB download; customers from 127.0.2.1-250; the gateway (--threads {}) and {agents} agents (on 127.0.1.1-{agents}) are the real binaries, each its own process; CPU = all of them plus this process", sizes.fanout_kib, runs.gateway_threads));
    let mut results = vec![("direct".to_owned(), direct), ("exitpool".to_owned(), ours)];
    processes.stop().await;
    if let Some(threads) = runs.also_threads {
        let other = Processes::start(bins, threads, agents, conns + 256, Some(per_agent)).await?;
        let run = fanout_run(&other.path(), target, conns, bytes, &other.pids()).await?;
        eprintln!(
            "   gateway --threads {threads}: {} errors, {:.2} s",
            run.errors, run.secs
        );
        report.rows_with_threads(
            "fanout",
            threads,
            &[
                ("errors", "count", run.errors as f64),
                ("throughput", "MB/s", total / run.secs / 1e6),
                ("p99", "ms", run.p99),
                ("CPU, whole path", "CPU-s/GiB", run.cpu / (total / GIB)),
                (
                    "CPU, gateway process",
                    "CPU-s/GiB",
                    run.first_pid_cpu.unwrap_or(f64::NAN) / (total / GIB),
                ),
            ],
        );
        results.push((format!("gateway --threads {threads}"), run));
        other.stop().await;
    }
    for (name, run) in &results {
        if run.errors > 0 {
            report.failures.push(format!(
                "fanout {name}: {} of {conns} connections failed, e.g. {:?}",
                run.errors, run.first_errors
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The real binaries: a gateway child process, an agent child process
// ---------------------------------------------------------------------------

struct Binaries {
    gateway: PathBuf,
    agent: PathBuf,
}

async fn binaries(args: &Args) -> Result<Binaries> {
    let dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            // target/<profile>/examples/loadtest -> target/<profile>
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(|p| p.parent())
                .context("locating target directory")?
                .to_owned()
        }
    };
    if !args.no_build && args.bin_dir.is_none() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--bin", "gateway", "--bin", "agent"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        eprintln!(
            "== building the gateway and agent binaries ({})",
            if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            }
        );
        let status =
            tokio::time::timeout(Duration::from_secs(1800), cmd.kill_on_drop(true).status())
                .await
                .context("cargo build timed out")??;
        if !status.success() {
            bail!("cargo build --bin gateway --bin agent failed ({status})");
        }
    }
    let bins = Binaries {
        gateway: dir.join("gateway"),
        agent: dir.join("agent"),
    };
    for bin in [&bins.gateway, &bins.agent] {
        if !bin.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release --bins` or pass --bin-dir",
                bin.display()
            );
        }
    }
    Ok(bins)
}

/// How a `gateway` child process is started; a restart reuses it.
#[derive(Debug, Clone)]
struct GatewayLaunch {
    binary: PathBuf,
    state: PathBuf,
    listen: SocketAddr,
    tunnel: SocketAddr,
    admin: SocketAddr,
    max_connections: usize,
    threads: usize,
}

/// The real `gateway` binary in a child process.
struct GatewayProcess {
    child: Child,
    launch: GatewayLaunch,
    log: PathBuf,
}

impl GatewayProcess {
    async fn start(
        binary: &Path,
        state: &Path,
        max_connections: usize,
        threads: usize,
    ) -> Result<GatewayProcess> {
        let launch = GatewayLaunch {
            binary: binary.to_owned(),
            state: state.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
            tunnel: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
            admin: SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
            max_connections,
            threads,
        };
        Self::spawn(launch, Duration::from_secs(20)).await
    }

    async fn spawn(launch: GatewayLaunch, ready_bound: Duration) -> Result<GatewayProcess> {
        let GatewayLaunch {
            binary,
            state,
            listen,
            tunnel,
            admin,
            max_connections,
            threads,
        } = &launch;
        let log = state.join("gateway.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(binary)
            .args([
                "--listen",
                &listen.to_string(),
                "--tunnel",
                &tunnel.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .arg("--state-dir")
            .arg(state)
            .args(["--max-connections", &max_connections.to_string()])
            .args(["--threads", &threads.to_string()])
            .env("EXITPOOL_AGENT_TOKEN", TOKEN)
            .env("EXITPOOL_USERS", format!("{USER}:{PASSWORD}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://{admin}/healthz");
        let mut process = GatewayProcess { child, launch, log };
        let client = reqwest::Client::new();
        let ready = wait_until(ready_bound, "the gateway answers /healthz", || {
            let request = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move {
                request
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
        if let Err(error) = ready {
            let _ = process.child.start_kill();
            bail!("{error}; gateway log: {}", tail(&process.log));
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            bail!("gateway exited ({status}); log: {}", tail(&process.log));
        }
        Ok(process)
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("gateway process has exited")
    }

    /// The gateway's `/stats` document.
    async fn stats(&self) -> Result<Value> {
        let url = format!("http://{}/stats", self.launch.admin);
        Ok(reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?)
    }

    async fn agents(&self) -> Result<u64> {
        self.stats().await?["agents"]
            .as_u64()
            .context("/stats has no \"agents\" count")
    }

    /// Streams each agent has served, from `/stats`.
    async fn streams_per_agent(&self) -> Result<Vec<u64>> {
        self.stats().await?["per_agent"]
            .as_array()
            .context("/stats has no \"per_agent\" list")?
            .iter()
            .map(|a| a["streams_total"].as_u64().context("no streams_total"))
            .collect()
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after `grace`).
    async fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }

    /// Stops and starts again on the same ports and state (so the same pin);
    /// returns how long the stop took and when the new process answered.
    async fn restart(&mut self, crash: bool) -> Result<(Duration, Instant)> {
        let t0 = Instant::now();
        if crash {
            self.child.kill().await?;
        } else {
            self.stop(Duration::from_secs(30)).await?;
        }
        let stopped = t0.elapsed();
        // A restart meets every agent reconnecting at once.
        let next = Self::spawn(self.launch.clone(), Duration::from_secs(300)).await?;
        *self = next;
        Ok((stopped, Instant::now()))
    }
}

/// Starts the real `agent` binary against `tunnel`, bound to `bind`, allowed to
/// reach loopback targets; its log goes to `dir`/agent.log.
fn spawn_agent_process(
    binary: &Path,
    tunnel: SocketAddr,
    pin: &str,
    bind: IpAddr,
    dir: &Path,
    max_streams: Option<u32>,
) -> Result<(Child, PathBuf)> {
    let log = dir.join("agent.log");
    let child = Command::new(binary)
        .args(["--gateway", &tunnel.to_string(), "--pin", pin])
        .args(["--bind", &bind.to_string(), "--allow-private"])
        .args(max_streams.map(|n| format!("--max-streams={n}")))
        .arg("--state-dir")
        .arg(dir)
        .env("EXITPOOL_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok((child, log))
}

/// How the gateway process runs: its worker threads for the headline figures,
/// and another setting to measure next to them.
struct Runs {
    gateway_threads: usize,
    also_threads: Option<usize>,
}

/// The product as it is deployed: the real `gateway` binary and `agents` real
/// `agent` binaries (on 127.0.1.1, .2, ...), each in its own process.
struct Processes {
    gateway: GatewayProcess,
    agents: Vec<Child>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Processes {
    async fn start(
        bins: &Binaries,
        gateway_threads: usize,
        agents: usize,
        max_connections: usize,
        max_streams: Option<u32>,
    ) -> Result<Processes> {
        let state = tempfile::tempdir()?;
        let pin = pin_of(&bins.gateway, state.path()).await?;
        let gateway = GatewayProcess::start(
            &bins.gateway,
            state.path(),
            max_connections,
            gateway_threads,
        )
        .await?;
        let mut dirs = vec![state];
        let mut children = Vec::with_capacity(agents);
        let mut logs = Vec::with_capacity(agents);
        for i in 0..agents {
            let dir = tempfile::tempdir()?;
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1) as u8));
            let (child, log) = spawn_agent_process(
                &bins.agent,
                gateway.launch.tunnel,
                &pin,
                bind,
                dir.path(),
                max_streams,
            )?;
            children.push(child);
            logs.push(log);
            dirs.push(dir);
        }
        let joined = wait_until(STEP * 3, "every agent process joined", || async {
            gateway.agents().await.ok() == Some(agents as u64)
        })
        .await;
        if let Err(error) = joined {
            let logs: Vec<String> = logs.iter().map(|l| tail(l)).collect();
            bail!(
                "{error}; gateway log: {}; agent logs: {logs:?}",
                tail(&gateway.log)
            );
        }
        Ok(Processes {
            gateway,
            agents: children,
            _dirs: dirs,
        })
    }

    fn path(&self) -> Route {
        Route::Proxy {
            addr: self.gateway.launch.listen,
            auth: Some(basic(USER, PASSWORD)),
        }
    }

    /// The gateway's and the agents' process ids, for CPU accounting.
    fn pids(&self) -> Vec<u32> {
        self.gateway
            .child
            .id()
            .into_iter()
            .chain(self.agents.iter().filter_map(|a| a.id()))
            .collect()
    }

    async fn stop(mut self) {
        for agent in &mut self.agents {
            let _ = agent.start_kill();
        }
        let _ = self.gateway.stop(Duration::from_secs(10)).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

async fn pin_of(binary: &Path, state: &Path) -> Result<String> {
    let out = tokio::time::timeout(
        STEP,
        Command::new(binary)
            .arg("pin")
            .arg("--state-dir")
            .arg(state)
            .output(),
    )
    .await
    .context("`gateway pin` timed out")??;
    if !out.status.success() {
        bail!(
            "`gateway pin` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

// ---------------------------------------------------------------------------
// swarm
// ---------------------------------------------------------------------------

fn swarm_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 250 / 250) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

async fn swarm(sizes: &Sizes, bins: &Binaries, runs: &Runs, report: &mut Report) -> Result<()> {
    let mut n = sizes.swarm;
    if let Some(limit) = open_files_limit() {
        // One UDP socket per agent, plus headroom.
        let fit = limit.saturating_sub(500) as usize;
        if fit < n {
            report.notes.push(format!("swarm: the open-files limit {limit} fits {fit} agents, not {n}; raise `ulimit -n` for more"));
            n = fit;
        }
    }
    let state = tempfile::tempdir()?;
    let pin = pin_of(&bins.gateway, state.path()).await?;
    let mut gw =
        GatewayProcess::start(&bins.gateway, state.path(), 10_000, runs.gateway_threads).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gw_rss0 = status_kib(Some(gw.pid()?), "VmRSS")?;
    let self_rss0 = status_kib(None, "VmRSS")?;

    let spawn_agent = |i: usize| {
        Agent::builder(
            gw.launch.tunnel.to_string(),
            pin.parse().expect("pin from `gateway pin` parses"),
            TOKEN,
        )
        .bind(swarm_ip(i))
        .allow_private(true)
        .max_streams(8)
        .spawn()
    };
    // The agents live in this process; measure what one costs here on a first
    // batch and keep the total within half the available memory.
    let probe = n.min(100);
    let t0 = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for i in 0..probe {
        agents.push(spawn_agent(i)?);
    }
    wait_agents(&gw, probe as u64, Duration::from_secs(60)).await?;
    let per_agent_here =
        (status_kib(None, "VmRSS")?.saturating_sub(self_rss0) as f64 / probe as f64).max(1.0);
    let available = meminfo_kib("MemAvailable").unwrap_or(u64::MAX / 4) as f64;
    let fit = (available * 0.8 / per_agent_here) as usize;
    if fit < n {
        report.notes.push(format!("swarm: in-process agents cost ~{per_agent_here:.0} KiB each here; memory fits {fit}, not {n}"));
        n = fit.max(probe);
    }
    // The rest in batches, so the handshakes arrive at a steady rate.
    for i in probe..n {
        agents.push(spawn_agent(i)?);
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let join_bound = Duration::from_secs(120 + n as u64 / 50);
    wait_agents(&gw, n as u64, join_bound).await?;
    let join_time = t0.elapsed();
    eprintln!("   {n} agents joined in {:.1} s", join_time.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = gw.pid()?;
    let gw_rss1 = status_kib(Some(pid), "VmRSS")?;
    let self_rss1 = status_kib(None, "VmRSS")?;
    // Idle: keep-alives only, for a full keep-alive period.
    let idle = Duration::from_secs(if n > 1000 { 16 } else { 5 });
    let (gc0, sc0) = (cpu_seconds(Some(pid))?, cpu_seconds(None)?);
    tokio::time::sleep(idle).await;
    let (gc1, sc1) = (cpu_seconds(Some(pid))?, cpu_seconds(None)?);
    let gw_idle_pct = (gc1 - gc0) / idle.as_secs_f64() * 100.0;
    let agents_idle_pct = (sc1 - sc0) / idle.as_secs_f64() * 100.0;
    let still = gw.agents().await?;
    eprintln!("   gateway RSS {gw_rss0} -> {gw_rss1} KiB; idle CPU {gw_idle_pct:.1} %");

    report.row(
        "swarm",
        format!("agents connected to one gateway ({n} started)"),
        "count",
        None,
        Some(still as f64),
        None,
    );
    report.row(
        "swarm",
        "time for all to join (cold start)",
        "s",
        None,
        Some(join_time.as_secs_f64()),
        None,
    );
    report.row(
        "swarm",
        "gateway RSS before agents",
        "MiB",
        None,
        Some(gw_rss0 as f64 / 1024.0),
        None,
    );
    report.row(
        "swarm",
        "gateway RSS with all agents",
        "MiB",
        None,
        Some(gw_rss1 as f64 / 1024.0),
        None,
    );
    report.row(
        "swarm",
        "gateway memory per agent",
        "KiB",
        None,
        Some((gw_rss1 as f64 - gw_rss0 as f64) / n as f64),
        None,
    );
    report.row(
        "swarm",
        "gateway idle CPU with all agents",
        "% core",
        None,
        Some(gw_idle_pct),
        None,
    );
    report.row(
        "swarm",
        "in-process agents: memory per agent",
        "KiB",
        None,
        Some((self_rss1 as f64 - self_rss0 as f64) / n as f64),
        None,
    );
    report.row(
        "swarm",
        "in-process agents: idle CPU, all together",
        "% core",
        None,
        Some(agents_idle_pct),
        None,
    );
    measure_restart(&mut gw, n, false, report).await;
    measure_restart(&mut gw, n, true, report).await;
    report.notes.push(format!(
        "swarm: gateway = the real `gateway` binary in its own process (RSS/CPU from /proc/PID); {n} agents in this process on 127.1.x.y, one QUIC endpoint each; restart = SIGTERM, then the same ports and state dir; crash restart = the same after SIGKILL (no shutdown notice)"
    ));
    let _ = gw.stop(Duration::from_secs(10)).await;
    let stops = agents.into_iter().map(|a| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), a.shutdown()).await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), join_all(stops)).await;

    let (floor_kib, floor_idle_pct) = bare_quic_floor(n, idle).await?;
    eprintln!(
        "   bare QUIC server: {floor_kib:.1} KiB per connection; idle CPU {floor_idle_pct:.1} %"
    );
    for (metric, value) in [
        ("gateway memory per agent", floor_kib),
        ("gateway idle CPU with all agents", floor_idle_pct),
    ] {
        if let Some(row) = report
            .rows
            .iter_mut()
            .find(|r| r.scenario == "swarm" && r.metric == metric)
        {
            row.bare_relay = Some(value);
        }
    }
    report.notes.push(format!(
        "swarm, bare QUIC column: the bare relay's exit process holding {n} idle QUIC connections (keep-alives every 15 s, like agents), each from its own endpoint in this process; the floor under the gateway's figures"
    ));
    Ok(())
}

/// Memory per connection (KiB) and idle CPU (% of a core) of a bare QUIC server
/// (the bare relay's exit process) holding `n` idle connections.
async fn bare_quic_floor(n: usize, idle: Duration) -> Result<(f64, f64)> {
    let unused_target = SocketAddr::from(([127, 0, 0, 1], 9));
    // One stream, like the gateway allows each agent (its control stream).
    let exit = BareExit::start(unused_target, 1).await?;
    let pid = exit.pid()?;
    let rss0 = status_kib(Some(pid), "VmRSS")?;
    let clients = bare_relay::idle_clients(exit.addr, &exit.cert_hex, n, swarm_ip)
        .await
        .context("bare QUIC clients")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = status_kib(Some(pid), "VmRSS")?;
    let cpu0 = cpu_seconds(Some(pid))?;
    tokio::time::sleep(idle).await;
    let idle_pct = (cpu_seconds(Some(pid))? - cpu0) / idle.as_secs_f64() * 100.0;
    drop(clients);
    Ok(((rss1 as f64 - rss0 as f64) / n as f64, idle_pct))
}

/// Restarts the gateway on the same ports and state, after SIGTERM or, for a
/// crash, SIGKILL, and reports how long until every agent is back.
async fn measure_restart(gw: &mut GatewayProcess, n: usize, crash: bool, report: &mut Report) {
    let (kind, signal) = if crash {
        ("crash restart", "SIGKILL")
    } else {
        ("restart", "SIGTERM")
    };
    let started = Instant::now();
    let bound = Duration::from_secs(120 + n as u64 / 50);
    let (stop_time, up_at, back) = match gw.restart(crash).await {
        Ok((stop_time, up_at)) => (
            stop_time,
            Some(up_at),
            wait_agents(gw, n as u64, bound).await,
        ),
        Err(error) => (
            started.elapsed(),
            None,
            Err(error.context("restarting the gateway")),
        ),
    };
    let total = started.elapsed();
    let after_up = up_at.map(|t| t.elapsed()).unwrap_or_default();
    let mut row = |metric: String, unit: &'static str, value: f64| {
        report.row("swarm", metric, unit, None, Some(value), None);
    };
    row(
        format!("{kind}: {signal} until the old gateway exited"),
        "s",
        stop_time.as_secs_f64(),
    );
    match back {
        Ok(_) => {
            eprintln!(
                "   {kind}: all {n} back {:.1} s after {signal} ({:.1} s after the new gateway answered)",
                total.as_secs_f64(),
                after_up.as_secs_f64()
            );
            row(
                format!("{kind}: new gateway up to all agents back"),
                "s",
                after_up.as_secs_f64(),
            );
            row(
                format!("{kind}: {signal} to all agents back"),
                "s",
                total.as_secs_f64(),
            );
        }
        Err(e) => {
            let count = gw.agents().await.unwrap_or(0);
            row(
                format!("{kind}: agents back within bound"),
                "count",
                count as f64,
            );
            report.failures.push(format!(
                "swarm: after a gateway {kind} only {count} of {n} agents came back: {e:#}"
            ));
        }
    }
}

async fn wait_agents(gw: &GatewayProcess, n: u64, bound: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = 0;
    loop {
        if let Ok(count) = gw.agents().await {
            last = count;
            if count >= n {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > bound {
            bail!(
                "only {last} of {n} agents joined within {bound:?}; gateway log: {}",
                tail(&gw.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------
// footprint
// ---------------------------------------------------------------------------

async fn footprint(bins: &Binaries, report: &mut Report) -> Result<()> {
    let target = start_target().await?;
    let pool = Pool::start(0, 1024, 64).await?;
    let dir = tempfile::tempdir()?;
    let (mut child, log) = spawn_agent_process(
        &bins.agent,
        pool.gateway.tunnel_addr(),
        pool.gateway.pin(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        dir.path(),
        None,
    )?;
    let joined = tokio::time::timeout(
        STEP,
        pool.gateway
            .directory()
            .wait_for_census(|c| c.accepting >= 1),
    )
    .await;
    if joined.is_err() {
        let _ = child.start_kill();
        bail!(
            "the agent process did not join within {STEP:?}; log: {}",
            tail(&log)
        );
    }
    let pid = child.id().context("agent exited")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = status_kib(Some(pid), "VmRSS")?;
    let idle = Duration::from_secs(10);
    let c0 = cpu_seconds(Some(pid))?;
    tokio::time::sleep(idle).await;
    let idle_pct = (cpu_seconds(Some(pid))? - c0) / idle.as_secs_f64() * 100.0;
    // Then some traffic through it, and what stays resident afterwards.
    let path = pool.path();
    let bytes = 64 * MIB;
    let c1 = cpu_seconds(Some(pid))?;
    let down = one_transfer(&path, target, bytes, false, &[])
        .await
        .context("64 MiB through the agent process")?;
    let up = one_transfer(&path, target, bytes, true, &[])
        .await
        .context("64 MiB up through the agent process")?;
    let agent_cpu = (cpu_seconds(Some(pid))? - c1) / (2.0 * bytes as f64 / GIB);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = status_kib(Some(pid), "VmRSS")?;
    let hwm = status_kib(Some(pid), "VmHWM")?;
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("Threads:")
                    .map(|v| v.trim().parse::<f64>().ok())
            })
        })
        .flatten();
    report.row(
        "footprint",
        "agent process idle RSS",
        "MiB",
        None,
        Some(rss_idle as f64 / 1024.0),
        None,
    );
    report.row(
        "footprint",
        "agent process idle CPU",
        "% core",
        None,
        Some(idle_pct),
        None,
    );
    report.row(
        "footprint",
        "agent RSS after 64 MiB down + up",
        "MiB",
        None,
        Some(rss_after as f64 / 1024.0),
        None,
    );
    report.row(
        "footprint",
        "agent peak RSS (VmHWM)",
        "MiB",
        None,
        Some(hwm as f64 / 1024.0),
        None,
    );
    report.row(
        "footprint",
        "agent process CPU while relaying",
        "CPU-s/GiB",
        None,
        Some(agent_cpu),
        None,
    );
    report.row(
        "footprint",
        "through the agent process: download",
        "MB/s",
        None,
        Some(down.mb_per_s),
        None,
    );
    report.row(
        "footprint",
        "through the agent process: upload",
        "MB/s",
        None,
        Some(up.mb_per_s),
        None,
    );
    if let Some(threads) = threads {
        report.row(
            "footprint",
            "agent process threads",
            "count",
            None,
            Some(threads),
            None,
        );
    }
    report.notes.push("footprint: the real `agent` binary (its default runtime) against an in-process gateway; idle CPU over 10 s".into());
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    pool.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// chart
// ---------------------------------------------------------------------------

mod chart {
    use super::Report;
    use plotters::prelude::*;
    use std::path::Path;

    const COLORS: [RGBColor; 4] = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(230, 130, 30),
        RGBColor(150, 190, 220),
    ];
    const SERIES: [&str; 4] = ["direct", "exitpool", "tinyproxy", "bare QUIC relay"];
    /// Where a group's first bar starts, and each bar's slot and width.
    const BAR_START: f64 = 0.1;
    const BAR_SLOT: f64 = 0.2;
    const BAR_WIDTH: f64 = 0.18;

    /// Groups of bars: (group label, one value per series).
    type Groups = Vec<(String, [Option<f64>; 4])>;

    pub fn draw(path: &Path, report: &Report) -> anyhow::Result<()> {
        let pick = |scenario: &str, metric: &str, label: &str| {
            report.find(scenario, metric).map(|r| {
                let values = [r.direct, r.exitpool, r.tinyproxy, r.bare_relay];
                (label.to_owned(), values)
            })
        };
        let throughput: Groups = [
            pick("bulk", "download throughput", "bulk download"),
            pick("bulk", "upload throughput", "bulk upload"),
            pick("fanout", "aggregate throughput", "fan-out aggregate"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let latency: Groups = [
            pick("connect", "fresh connect + 1 KiB, p50", "p50"),
            pick("connect", "fresh connect + 1 KiB, p99", "p99"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (left, right) = root.split_horizontally(560);
        bars(
            &left,
            "Throughput (MB/s, higher is better)",
            "MB/s",
            &throughput,
        )?;
        bars(
            &right,
            "Fresh CONNECT + 1 KiB (ms, lower is better)",
            "ms",
            &latency,
        )?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(())
    }

    fn bars(
        area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
        title: &str,
        unit: &str,
        groups: &Groups,
    ) -> anyhow::Result<()> {
        let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e:?}");
        let max = groups
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .fold(0.0f64, |a, &b| a.max(b));
        // Headroom above the tallest bar: group names, then the legend above them.
        let top = if max > 0.0 { max * 1.4 } else { 1.0 };
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(20)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(unit)
            .draw()
            .map_err(err)?;
        for (s, name) in SERIES.iter().enumerate() {
            let color = COLORS[s];
            let rects: Vec<_> = groups
                .iter()
                .enumerate()
                .filter_map(|(g, (_, values))| {
                    values[s].map(|v| {
                        let x0 = g as f64 + BAR_START + s as f64 * BAR_SLOT;
                        Rectangle::new([(x0, 0.0), (x0 + BAR_WIDTH, v)], color.filled())
                    })
                })
                .collect();
            if rects.is_empty() {
                continue;
            }
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            let labels: Vec<_> = groups
                .iter()
                .enumerate()
                .filter_map(|(g, (_, values))| {
                    values[s].map(|v| {
                        let x0 = g as f64 + BAR_START + s as f64 * BAR_SLOT;
                        let text = if v >= 100.0 {
                            format!("{v:.0}")
                        } else {
                            format!("{v:.2}")
                        };
                        Text::new(text, (x0, v + top * 0.02), ("sans-serif", 12))
                    })
                })
                .collect();
            chart.draw_series(labels).map_err(err)?;
        }
        let names: Vec<_> = groups
            .iter()
            .enumerate()
            .map(|(g, (label, _))| {
                Text::new(
                    label.clone(),
                    (g as f64 + 0.3, top * 0.75),
                    ("sans-serif", 14),
                )
            })
            .collect();
        chart.draw_series(names).map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The bare QUIC relay: two hops with nothing of exitpool's protocol
// ---------------------------------------------------------------------------

/// A bare two-hop QUIC relay, the floor under exitpool's byte path. An entry
/// process takes TCP and opens one QUIC stream per connection to an exit process,
/// which dials one fixed target as soon as the stream arrives. Both run the same
/// byte path (`transport::relay`), transport windows, UDP buffers, TLS provider and
/// single-threaded runtime as the gateway and the agent, and nothing else: no
/// authentication, routing, `Open`/`Opened` exchange, accounting or limits. Its
/// processes are this program, started with a hidden flag.
mod bare_relay {
    use anyhow::{Context, Result};
    use exitpool::transport::relay::{relay, LiveCounters, Unlimited};
    use exitpool::transport::udp;
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    const ALPN: &[u8] = b"bare-relay";
    const IDLE: Duration = Duration::from_secs(60);
    /// The name the exit's certificate is issued for.
    const SERVER_NAME: &str = "localhost";

    /// The shared transport settings, letting the peer open `streams` at once.
    fn transport(streams: u32) -> quinn::TransportConfig {
        let mut transport = udp::base_transport();
        transport
            .max_concurrent_bidi_streams(streams.into())
            .keep_alive_interval(Some(exitpool::protocol::KEEP_ALIVE_INTERVAL));
        transport
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Relays one TCP connection over one QUIC stream until both ends are done.
    async fn carry(mut tcp: TcpStream, send: quinn::SendStream, recv: quinn::RecvStream) {
        let _ = tcp.set_nodelay(true);
        let (read, write) = tcp.split();
        let counters = LiveCounters::default();
        let _ = relay(read, write, send, recv, IDLE, &counters, &Unlimited).await;
    }

    /// The exit hop: prints `ready <udp address> <certificate, hex DER>`, then
    /// dials `target` for every stream of every connection.
    pub async fn exit(target: SocketAddr, streams: u32) -> Result<()> {
        let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        let cert = generated.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        server.transport_config(Arc::new(transport(streams)));
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint = udp::endpoint(local, quinn::EndpointConfig::default(), Some(server))?;
        println!("ready {} {}", endpoint.local_addr()?, hex::encode(&cert));
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(tcp) = TcpStream::connect(target).await {
                            carry(tcp, send, recv).await;
                        }
                    });
                }
            });
        }
        Ok(())
    }

    /// A QUIC client that trusts only the exit's certificate (hex DER).
    fn client_config(cert_hex: &str) -> Result<quinn::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(
            hex::decode(cert_hex).context("the exit's certificate is not hex")?,
        ))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        // The exit never opens streams.
        client.transport_config(Arc::new(transport(0)));
        Ok(client)
    }

    /// One QUIC endpoint on `bind`, connected to the exit at `exit`.
    async fn connect(
        exit: SocketAddr,
        client: quinn::ClientConfig,
        bind: IpAddr,
    ) -> Result<(quinn::Endpoint, quinn::Connection)> {
        let local = SocketAddr::new(bind, 0);
        let mut endpoint = udp::endpoint(local, quinn::EndpointConfig::default(), None)?;
        endpoint.set_default_client_config(client);
        let connection = tokio::time::timeout(super::STEP, endpoint.connect(exit, SERVER_NAME)?)
            .await
            .context("QUIC handshake with the exit timed out")??;
        Ok((endpoint, connection))
    }

    /// `n` idle QUIC connections to the exit at `exit`, each from its own
    /// endpoint on `bind(i)`, as agents hold them to a gateway.
    pub async fn idle_clients(
        exit: SocketAddr,
        cert_hex: &str,
        n: usize,
        bind: impl Fn(usize) -> IpAddr,
    ) -> Result<Vec<(quinn::Endpoint, quinn::Connection)>> {
        let client = client_config(cert_hex)?;
        let mut clients = Vec::with_capacity(n);
        // Handshakes in batches, so they arrive at a steady rate.
        for first in (0..n).step_by(64) {
            let batch = (first..n.min(first + 64)).map(|i| connect(exit, client.clone(), bind(i)));
            for result in super::join_all(batch).await {
                clients.push(result?);
            }
        }
        Ok(clients)
    }

    /// The entry hop: connects to the exit at `exit`, trusting `cert_hex`, prints
    /// `ready <tcp address>`, then carries every accepted connection on a stream.
    pub async fn entry(exit: SocketAddr, cert_hex: &str) -> Result<()> {
        let local = IpAddr::from([127, 0, 0, 1]);
        let (_endpoint, connection) = connect(exit, client_config(cert_hex)?, local).await?;
        let listener = TcpListener::bind(SocketAddr::new(local, 0)).await?;
        println!("ready {}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let connection = connection.clone();
            tokio::spawn(async move {
                if let Ok((send, recv)) = connection.open_bi().await {
                    carry(tcp, send, recv).await;
                }
            });
        }
    }
}

/// The bare relay's exit hop: this program run with `--bare-exit`.
struct BareExit {
    child: Child,
    addr: SocketAddr,
    cert_hex: String,
}

impl BareExit {
    /// Starts the exit hop towards `target`, letting each connection open
    /// `streams` streams at once.
    async fn start(target: SocketAddr, streams: u32) -> Result<BareExit> {
        let me = std::env::current_exe()?;
        let (child, ready) = spawn_until_ready(
            Command::new(me)
                .args(["--bare-exit", &target.to_string()])
                .args(["--bare-streams", &streams.to_string()]),
        )
        .await
        .context("bare relay exit hop")?;
        let (addr, cert_hex) = ready
            .split_once(' ')
            .context("the exit hop's ready line lacks its certificate")?;
        Ok(BareExit {
            child,
            addr: addr.parse().context("the exit hop's address")?,
            cert_hex: cert_hex.to_owned(),
        })
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("the bare exit hop has exited")
    }
}

/// The bare relay's two processes: this program run as its entry and exit hops.
struct BareRelay {
    entry: Child,
    exit: BareExit,
    listen: SocketAddr,
}

impl BareRelay {
    async fn start(target: SocketAddr) -> Result<BareRelay> {
        // As many streams as an agent takes by default.
        let exit = BareExit::start(target, exitpool::agent::DEFAULT_MAX_STREAMS).await?;
        let (entry, ready) = spawn_until_ready(
            Command::new(std::env::current_exe()?)
                .args(["--bare-entry", &exit.addr.to_string()])
                .args(["--bare-cert", &exit.cert_hex]),
        )
        .await
        .context("bare relay entry hop")?;
        Ok(BareRelay {
            entry,
            exit,
            listen: ready.parse().context("the entry hop's address")?,
        })
    }

    fn path(&self) -> Route {
        Route::Relay(self.listen)
    }

    fn pids(&self) -> Vec<u32> {
        [&self.entry, &self.exit.child]
            .iter()
            .filter_map(|c| c.id())
            .collect()
    }
}

/// Starts a child that prints `ready <rest>` on stdout when it serves; returns
/// it with `<rest>`.
async fn spawn_until_ready(command: &mut Command) -> Result<(Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    tokio::time::timeout(STEP, tokio::io::BufReader::new(stdout).read_line(&mut line))
        .await
        .context("not ready in time")??;
    let rest = line
        .trim()
        .strip_prefix("ready ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((child, rest.to_owned()))
}
