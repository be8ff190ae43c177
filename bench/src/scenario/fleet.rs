//! fleet: three `gateway` processes in one fleet on a `redis-server` of the
//! run's own, sharing one certificate as operators do (copied files). In one
//! run:
//! - bulk and connect latency on the **forwarded path** (customer on gateway A,
//!   the exit's tunnel on gateway B: A -> B -> agent, over a TLS/TCP peer link)
//!   and over a QUIC peer link (customer on gateway C, which dials QUIC) against
//!   the **local path** (customer on B), through the same agent process, with
//!   bulk's and connect's own client code; bulk a second time with every
//!   process at an equal CPU share ([`CpuShares`]), where a path moves as fast
//!   as its busiest process, as across machines;
//! - **Redis commands per customer connection** for rotation, a new session, a
//!   session already pinned by another gateway and a repeated session, from
//!   Redis's `INFO commandstats` before and after each batch;
//! - a **mass join** of many in-process agents that know all three gateways:
//!   the time until every gateway's directory holds them all, and Redis memory
//!   per agent (`INFO memory`).

use super::bulk::median_transfer;
use super::connect::{connect_paths_in_turn, one_connect, ConnectStats};
use super::swarm::swarm_ip;
use crate::cli::Bench;
use crate::client::{basic, join_all, one_transfer, start_target, Route, Transfer, STEP};
use crate::cpu_share::CpuShares;
use crate::launch::{pin_of, spawn_agent_process, GatewayProcess, PASSWORD, TOKEN, USER};
use crate::measure::{median, open_files_limit, MIB};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use exitpool_agent::Agent;
use exitpool_launcher::redis::RedisServer;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const SCENARIO: &str = "fleet";

/// How long Redis may take to stop cleanly at the end of the run.
const REDIS_GRACE: Duration = Duration::from_secs(10);

/// The gateway's fleet defaults, passed explicitly so the report names what
/// the Redis figures were measured at.
const HEARTBEAT_MS: u64 = 1000;
const GATEWAY_TIMEOUT_MS: u64 = 3000;
const RESYNC_MS: u64 = 5000;
const REDIS_TIMEOUT_MS: u64 = 1000;

/// What a gateway's state directory shares with the rest of its fleet: one
/// certificate (one `--pin` for every gateway) and one exit-id key.
const SHARED_STATE: [&str; 3] = ["gateway-cert.der", "gateway-key.der", "exit-id.key"];

/// The sequential connects come in this many batches per path, the paths
/// taking turns, as bulk's rounds do.
const CONNECT_BATCHES: usize = 10;

/// Commands this program sends itself, left out of every count.
const OWN_COMMANDS: [&str; 4] = ["info", "hmget", "xlen", "hlen"];

/// Three gateway processes in one fleet: A, B, C.
struct Fleet {
    gateways: Vec<GatewayProcess>,
    pin: String,
    _states: Vec<tempfile::TempDir>,
}

impl Fleet {
    async fn start(bench: &Bench, redis: &RedisServer) -> Result<Fleet> {
        let url = redis.url();
        let mut gateways: Vec<GatewayProcess> = Vec::new();
        let mut states: Vec<tempfile::TempDir> = Vec::new();
        for id in ["gw-a", "gw-b", "gw-c"] {
            let state = tempfile::tempdir()?;
            if let Some(first) = states.first() {
                for name in SHARED_STATE {
                    std::fs::copy(first.path().join(name), state.path().join(name))
                        .with_context(|| format!("copying {name} from the first gateway"))?;
                }
            }
            // C dials its peer links over QUIC, A over TLS/TCP (the default):
            // both forwarded paths are measured in the same run.
            let transport = if id == "gw-c" { "quic" } else { "tcp" };
            let flags = [
                format!("--peer-transport={transport}"),
                "--redis".to_owned(),
                url.clone(),
                "--gateway-id".to_owned(),
                id.to_owned(),
                "--peer-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                format!("--fleet-heartbeat-ms={HEARTBEAT_MS}"),
                format!("--fleet-gateway-timeout-ms={GATEWAY_TIMEOUT_MS}"),
                format!("--fleet-resync-ms={RESYNC_MS}"),
                format!("--redis-timeout-ms={REDIS_TIMEOUT_MS}"),
            ];
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            gateways.push(
                GatewayProcess::start_with(
                    &bench.bins.gateway,
                    state.path(),
                    4096,
                    bench.runs.gateway_threads,
                    &flags,
                )
                .await
                .with_context(|| format!("starting gateway {id}"))?,
            );
            states.push(state);
        }
        let pin = pin_of(&bench.bins.gateway, states[0].path()).await?;
        let fleet = Fleet {
            gateways,
            pin,
            _states: states,
        };
        // Each must have heard every heartbeat before peers can be dialled.
        for gateway in &fleet.gateways {
            crate::launch::wait_until(
                Duration::from_secs(20),
                "every gateway hears all three",
                || async {
                    let stats = gateway.stats().await.ok();
                    stats.is_some_and(|s| s["fleet"]["totals"]["gateways"] == 3)
                },
            )
            .await
            .with_context(|| gateway.tail())?;
        }
        Ok(fleet)
    }

    fn a(&self) -> &GatewayProcess {
        &self.gateways[0]
    }

    fn b(&self) -> &GatewayProcess {
        &self.gateways[1]
    }

    fn c(&self) -> &GatewayProcess {
        &self.gateways[2]
    }

    fn tunnels(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(GatewayProcess::tunnel).collect()
    }

    /// Waits until every gateway's directory lists `n` agents; returns when
    /// the last one did, polling every 200 ms (the figure's resolution).
    async fn wait_directories(&self, n: u64, bound: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let mut sizes = Vec::new();
            for gateway in &self.gateways {
                sizes.push(gateway.directory_size().await.unwrap_or(0));
            }
            if sizes.iter().all(|&size| size == n) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > bound {
                bail!(
                    "directories at {sizes:?}, not {n} each, after {bound:?}; gateway A log: {}",
                    self.a().tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A figure of every gateway's `/stats` fleet section, summed.
    async fn fleet_counter(&self, name: &str) -> Result<u64> {
        let mut sum = 0;
        for gateway in &self.gateways {
            sum += gateway.stats().await?["fleet"][name]
                .as_u64()
                .with_context(|| format!("/stats has no fleet.{name}"))?;
        }
        Ok(sum)
    }

    async fn stop(self) {
        for mut gateway in self.gateways {
            let _ = gateway.stop(Duration::from_secs(10)).await;
        }
    }
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let mut redis = RedisServer::start(STEP).await?;
    let fleet = match Fleet::start(bench, &redis).await {
        Ok(fleet) => fleet,
        Err(error) => {
            let _ = redis.stop(REDIS_GRACE).await;
            return Err(error);
        }
    };
    let result = measure(bench, &fleet, &redis, report).await;
    fleet.stop().await;
    let _ = redis.stop(REDIS_GRACE).await;
    result
}

async fn measure(
    bench: &Bench,
    fleet: &Fleet,
    redis: &RedisServer,
    report: &mut Report,
) -> Result<()> {
    let client = redis::Client::open(redis.url())?;
    let mut conn = tokio::time::timeout(STEP, client.get_multiplexed_async_connection()).await??;
    let target = start_target().await?;
    // One agent process whose only gateway is B: a customer on B reaches it
    // locally, one on A over the peer link.
    let dir = tempfile::tempdir()?;
    let mut agent = spawn_agent_process(
        &bench.bins.agent,
        fleet.b().tunnel(),
        &fleet.pin,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)),
        dir.path(),
        None,
        "quic",
    )?;
    if let Err(error) = fleet.wait_directories(1, Duration::from_secs(20)).await {
        bail!("{error:#}; agent log: {}", agent.tail());
    }
    let pids = [
        fleet.a().pid(),
        fleet.b().pid(),
        fleet.c().pid(),
        agent.pid(),
    ];
    let streams_out = |stats: serde_json::Value| stats["fleet"]["peer_streams_out"].as_u64();
    let out_before = [
        streams_out(fleet.a().stats().await?).unwrap_or(0),
        streams_out(fleet.c().stats().await?).unwrap_or(0),
    ];
    let forwarded_conns = paths(bench, fleet, target, &pids, report).await?;
    // Proof that each forwarded path went over its peer link, once each.
    for ((from, gateway, transport), before) in [("A", fleet.a(), "tcp"), ("C", fleet.c(), "quic")]
        .into_iter()
        .zip(out_before)
    {
        let stats = gateway.stats().await?;
        let link = stats["fleet"]["gateways"]["gw-b"]["peer_link"].clone();
        let out = streams_out(stats).unwrap_or(0) - before;
        report.row(
            SCENARIO,
            format!("peer streams {from} -> B per forwarded conn"),
            "ratio",
            None,
            Some(out as f64 / forwarded_conns as f64),
            None,
        );
        if out < forwarded_conns || link != transport {
            report.failures.push(format!(
                "fleet: {forwarded_conns} forwarded connections but {out} peer streams out of {from}, over {link} (expected {transport})"
            ));
        }
    }

    commands_per_connection(bench, fleet, &mut conn, target, report).await?;

    // The mass join starts from an empty pool.
    let _ = agent.stop(Duration::from_secs(10)).await;
    fleet.wait_directories(0, Duration::from_secs(30)).await?;
    mass_join(bench, fleet, &mut conn, report).await?;
    report.notes.push(format!(
        "fleet: three gateway processes (--threads {}) on one redis-server (Unix socket, no persistence), sharing the first one's gateway-cert.der, gateway-key.der and exit-id.key; --fleet-heartbeat-ms {HEARTBEAT_MS} --fleet-gateway-timeout-ms {GATEWAY_TIMEOUT_MS} --fleet-resync-ms {RESYNC_MS} --redis-timeout-ms {REDIS_TIMEOUT_MS} (the defaults); local path = customer on gateway B, whose tunnel the agent process holds; forwarded = customer on gateway A, carried A -> B -> agent over a TLS/TCP peer link (the default), forwarded-quic = customer on gateway C (--peer-transport quic), carried C -> B -> agent over a QUIC one; bulk and connect as in those scenarios ({} MiB each way x {} rounds, paths taking turns, medians; {} fresh connections sequential, in {CONNECT_BATCHES} batches per path taking turns, then {} workers per path)",
        bench.runs.gateway_threads,
        bench.sizes.bulk_mib,
        bench.sizes.bulk_rounds,
        bench.sizes.connects,
        bench.sizes.concurrency,
    ));
    Ok(())
}

/// Bulk and connect on the local path and the two forwarded ones (TLS/TCP and
/// QUIC peer links); returns how many connections each forwarded path opened.
async fn paths(
    bench: &Bench,
    fleet: &Fleet,
    target: SocketAddr,
    pids: &[u32],
    report: &mut Report,
) -> Result<u64> {
    let sizes = &bench.sizes;
    let bytes = sizes.bulk_mib * MIB;
    let named = [
        ("local", fleet.b().path()),
        ("forwarded", fleet.a().path()),
        ("forwarded-quic", fleet.c().path()),
    ];
    for (name, route) in &named {
        one_transfer(route, target, (8 * MIB).min(bytes), false, pids)
            .await
            .with_context(|| format!("{name} warm-up"))?;
    }
    bulk_pass(bench, &named, target, pids, None, report).await?;
    let capped_pass = bulk_pass_at_equal_shares(bench, &named, target, pids, report).await?;

    let (n, workers) = (sizes.connects, sizes.concurrency);
    let routes: Vec<&Route> = named.iter().map(|(_, route)| route).collect();
    let stats: Vec<ConnectStats> =
        connect_paths_in_turn(&routes, target, n, workers, CONNECT_BATCHES)
            .await
            .context("connects")?;
    for ((name, _), s) in named.iter().zip(&stats) {
        eprintln!(
            "   {name:<14} connect p50 {:.3} ms p99 {:.3} ms  {:.0}/s sequential  {:.0}/s concurrent",
            s.p50, s.p99, s.seq_rate, s.conc_rate
        );
    }
    let local = &stats[0];
    for (metric, unit, value) in [
        ("connect + 1 KiB p50, local path", "ms", local.p50),
        ("connect + 1 KiB p99, local path", "ms", local.p99),
        (
            "connect, concurrent rate, local path",
            "conn/s",
            local.conc_rate,
        ),
    ] {
        report.row(SCENARIO, metric, unit, None, Some(value), None);
    }
    for ((name, _), forwarded) in named[1..].iter().zip(&stats[1..]) {
        let target = if *name == "forwarded" {
            " (<= 1.5)"
        } else {
            ""
        };
        for (metric, unit, value) in [
            (
                format!("connect + 1 KiB p50, {name} path"),
                "ms",
                forwarded.p50,
            ),
            (
                format!("connect + 1 KiB p99, {name} path"),
                "ms",
                forwarded.p99,
            ),
            (
                format!("connect p50, {name} / local{target}"),
                "ratio",
                forwarded.p50 / local.p50,
            ),
            (
                format!("connect p99, {name} / local"),
                "ratio",
                forwarded.p99 / local.p99,
            ),
            (
                format!("connect, concurrent rate, {name} path"),
                "conn/s",
                forwarded.conc_rate,
            ),
            (
                format!("connect, concurrent p50, {name} / local"),
                "ratio",
                forwarded.conc_p50 / local.conc_p50,
            ),
        ] {
            report.row(SCENARIO, metric, unit, None, Some(value), None);
        }
    }
    // Warm-ups, rounds and both connect passes (connect_paths_in_turn warms up
    // with 20).
    let bulk_passes = 1 + usize::from(capped_pass);
    let transfers = 1 + bulk_passes * 2 * sizes.bulk_rounds;
    Ok((transfers + 20.min(n) + 2 * n) as u64)
}

/// The bulk pass again with this program (client and target) and every
/// process of `pids` at `--fleet-cpu-share` of a core; whether it ran. Where
/// the quotas cannot be set, a note says why and the run goes on.
async fn bulk_pass_at_equal_shares(
    bench: &Bench,
    named: &[(&str, Route); 3],
    target: SocketAddr,
    pids: &[u32],
    report: &mut Report,
) -> Result<bool> {
    let share = bench.runs.fleet_cpu_share;
    if share <= 0.0 {
        return Ok(false);
    }
    let capped: Vec<u32> = std::iter::once(std::process::id())
        .chain(pids.iter().copied())
        .collect();
    let shares = match CpuShares::apply(share, &capped) {
        Ok(shares) => shares,
        Err(error) => {
            eprintln!("   equal CPU shares not applied: {error:#}");
            report.notes.push(format!(
                "fleet: the bulk pass with each process at {share:.2} CPU was not run: {error:#}"
            ));
            return Ok(false);
        }
    };
    let result = bulk_pass(bench, named, target, pids, Some(share), report).await;
    drop(shares);
    result?;
    report.notes.push(format!(
        "fleet, rows marked 'each process at {share:.2} CPU': the bulk rounds again with this program (client and target), each gateway and the agent in a cgroup of its own, its `cpu` quota {share:.2} of a core in {} ms periods, so a path moves as fast as its busiest process, as across machines",
        crate::cpu_share::PERIOD_US / 1000
    ));
    Ok(true)
}

/// One bulk pass: `bench.sizes.bulk_rounds` rounds of a download and an upload
/// on each path in turn, then their rows. `cpu_share`: every process was
/// capped at that share of a core ([`CpuShares`]), which the rows' names say.
async fn bulk_pass(
    bench: &Bench,
    named: &[(&str, Route); 3],
    target: SocketAddr,
    pids: &[u32],
    cpu_share: Option<f64>,
    report: &mut Report,
) -> Result<()> {
    let bytes = bench.sizes.bulk_mib * MIB;
    let pass = match cpu_share {
        Some(share) => format!(", each process at {share:.2} CPU"),
        None => String::new(),
    };
    // Marks a capped pass's round lines.
    let capped = if cpu_share.is_some() { "*" } else { " " };
    let mut transfers: [(Vec<Transfer>, Vec<Transfer>); 3] = Default::default();
    for round in 1..=bench.sizes.bulk_rounds {
        for ((name, route), (down, up)) in named.iter().zip(&mut transfers) {
            let d = one_transfer(route, target, bytes, false, pids)
                .await
                .with_context(|| format!("{name} download, round {round}"))?;
            let u = one_transfer(route, target, bytes, true, pids)
                .await
                .with_context(|| format!("{name} upload, round {round}"))?;
            eprintln!(
                "   {round}{capped} {name:<14} down {:>7.1} MB/s {:.2} CPU-s/GiB {}   up {:>7.1} MB/s {:.2} CPU-s/GiB {}",
                d.mb_per_s,
                d.cpu_per_gib,
                per_process(&d),
                u.mb_per_s,
                u.cpu_per_gib,
                per_process(&u)
            );
            down.push(d);
            up.push(u);
        }
    }
    let [(local_down, local_up), forwarded @ ..] = &transfers;
    for ((name, _), (fwd_down, fwd_up)) in named[1..].iter().zip(forwarded) {
        // The target applies to the default peer link (TLS/TCP).
        let target = if *name == "forwarded" {
            " (>= 0.8)"
        } else {
            ""
        };
        for (way, local, forwarded) in [
            ("download", local_down, fwd_down),
            ("upload", local_up, fwd_up),
        ] {
            let (l, f) = (median_transfer(local), median_transfer(forwarded));
            let ratios = forwarded
                .iter()
                .zip(local)
                .map(|(f, l)| f.mb_per_s / l.mb_per_s);
            if *name == "forwarded" {
                report.row(
                    SCENARIO,
                    format!("bulk {way}, local path{pass}"),
                    "MB/s",
                    None,
                    Some(l.mb_per_s),
                    None,
                );
                report.row(
                    SCENARIO,
                    format!("bulk {way} CPU, local, all processes{pass}"),
                    "CPU-s/GiB",
                    None,
                    Some(l.cpu_per_gib),
                    None,
                );
            }
            for (metric, unit, value) in [
                (format!("bulk {way}, {name} path{pass}"), "MB/s", f.mb_per_s),
                (
                    format!("bulk {way}, {name} / local{pass}{target}"),
                    "ratio",
                    f.mb_per_s / l.mb_per_s,
                ),
                (
                    format!("bulk {way}, {name} / local, median round{pass}"),
                    "ratio",
                    median(ratios),
                ),
                (
                    format!("bulk {way} CPU, {name}, all processes{pass}"),
                    "CPU-s/GiB",
                    f.cpu_per_gib,
                ),
            ] {
                report.row(SCENARIO, metric, unit, None, Some(value), None);
            }
            // Where the CPU goes, and what it predicts across machines: the
            // shared pass's (a capped pass measures the latter).
            if cpu_share.is_none() {
                if *name == "forwarded" {
                    cpu_rows(report, way, "local", &l);
                }
                cpu_rows(report, way, name, &f);
                report.row(
                    SCENARIO,
                    format!(
                        "bulk {way}, {name} / local, busiest process on its own core (estimate)"
                    ),
                    "ratio",
                    None,
                    Some(busiest(&l) / busiest(&f)),
                    None,
                );
            }
        }
    }
    Ok(())
}

/// The processes whose CPU a transfer counts, in `pids`' order, after the
/// load test's own (client and target).
const PROCESSES: [&str; 4] = ["gateway A", "gateway B", "gateway C", "agent"];

/// A transfer's CPU per process, for the per-round lines.
fn per_process(transfer: &Transfer) -> String {
    let parts: Vec<String> = PROCESSES
        .iter()
        .zip(&transfer.cpu_per_gib_of)
        .map(|(name, cpu)| format!("{name} {cpu:.2}"))
        .collect();
    format!("({})", parts.join(", "))
}

/// Rows of each process's median CPU per GiB on one path (idle ones left out).
fn cpu_rows(report: &mut Report, way: &str, path: &str, transfer: &Transfer) {
    for (name, cpu) in PROCESSES.iter().zip(&transfer.cpu_per_gib_of) {
        if *cpu >= IDLE_CPU_PER_GIB {
            report.row(
                SCENARIO,
                format!("bulk {way} CPU, {path}, {name}"),
                "CPU-s/GiB",
                None,
                Some(*cpu),
                None,
            );
        }
    }
}

/// Below this a process is not on the path (heartbeats only).
const IDLE_CPU_PER_GIB: f64 = 0.05;

/// The CPU per GiB of a path's busiest process: with every process on a
/// core of its own (gateways on their own machines), the path moves at most
/// one GiB per that many seconds.
fn busiest(transfer: &Transfer) -> f64 {
    transfer
        .cpu_per_gib_of
        .iter()
        .copied()
        .fold(f64::MIN_POSITIVE, f64::max)
}

/// `INFO commandstats` as command -> calls. Commands run inside a script
/// count too, under their own names.
async fn commandstats(conn: &mut MultiplexedConnection) -> Result<HashMap<String, u64>> {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// What the gateways ran in Redis between two readings, this program's own
/// commands left out.
struct Counted {
    all: u64,
    scripts: u64,
    /// Usage flushes: the flush script is the only caller of HGET.
    flushes: u64,
    window: Duration,
}

impl Counted {
    fn between(
        before: &HashMap<String, u64>,
        after: &HashMap<String, u64>,
        window: Duration,
    ) -> Counted {
        let delta = |name: &str| {
            after
                .get(name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(name).copied().unwrap_or(0))
        };
        let all = after
            .keys()
            .filter(|name| !OWN_COMMANDS.contains(&name.as_str()))
            .map(|name| delta(name))
            .sum();
        Counted {
            all,
            scripts: delta("evalsha") + delta("eval"),
            flushes: delta("hget"),
            window,
        }
    }
}

/// Waits until every customer connection the gateways counted is in Redis's
/// usage totals: the flushes of a batch have landed, so they fall in its
/// window and not in the next one's.
async fn settle(fleet: &Fleet, conn: &mut MultiplexedConnection) -> Result<()> {
    let key = format!("exitpool:usage:customer:{USER}");
    let start = Instant::now();
    let bound = Duration::from_secs(30);
    loop {
        let mut counted = 0;
        for gateway in &fleet.gateways {
            counted += gateway.stats().await?["customers"][USER]["connections"]
                .as_u64()
                .unwrap_or(0);
        }
        let (landed,): (Option<u64>,) = redis::cmd("HMGET")
            .arg(&key)
            .arg("connections")
            .query_async(conn)
            .await?;
        if landed.unwrap_or(0) == counted {
            return Ok(());
        }
        if start.elapsed() > bound {
            bail!("usage flushes did not land within {bound:?}: {landed:?} in Redis, {counted} counted by the gateways");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The customer `bench` with targeting parameters in the user name.
fn customer(gateway: &GatewayProcess, params: &str) -> Route {
    let Route::Proxy { addr, .. } = gateway.path() else {
        unreachable!("a gateway's path is a proxy route");
    };
    Route::Proxy {
        addr,
        auth: Some(basic(&format!("{USER}{params}"), PASSWORD)),
    }
}

/// One batch: `routes` connections (CONNECT + 1 KiB each, one after another),
/// counted from a settled fleet until their flushes landed.
async fn batch(
    fleet: &Fleet,
    conn: &mut MultiplexedConnection,
    target: SocketAddr,
    routes: &[Route],
) -> Result<(Counted, u64)> {
    settle(fleet, conn).await?;
    let trips0 = fleet.fleet_counter("session_round_trips").await?;
    let before = commandstats(conn).await?;
    let t0 = Instant::now();
    for route in routes {
        one_connect(route, target).await?;
    }
    settle(fleet, conn).await?;
    let window = t0.elapsed();
    let after = commandstats(conn).await?;
    let trips = fleet.fleet_counter("session_round_trips").await? - trips0;
    Ok((Counted::between(&before, &after, window), trips))
}

async fn commands_per_connection(
    bench: &Bench,
    fleet: &Fleet,
    conn: &mut MultiplexedConnection,
    target: SocketAddr,
    report: &mut Report,
) -> Result<()> {
    let n = bench.sizes.connects;
    let (a, b) = (fleet.a(), fleet.b());
    // Warm-up: every gateway has loaded the session script, so no batch
    // counts a first EVALSHA's NOSCRIPT and the SCRIPT LOAD after it.
    for gateway in [a, b] {
        one_connect(&customer(gateway, "-session-warm"), target).await?;
    }
    one_connect(&customer(a, "-session-repeat"), target).await?;
    settle(fleet, conn).await?;
    // The background: heartbeats, stream reads, resync checks.
    let idle = Duration::from_secs(if bench.sizes.connects >= 1000 { 10 } else { 3 });
    let before = commandstats(conn).await?;
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let after = commandstats(conn).await?;
    let idle = Counted::between(&before, &after, t0.elapsed());
    let idle_rate = idle.all as f64 / idle.window.as_secs_f64();
    report.row(
        SCENARIO,
        "Redis commands/s, idle fleet, no agents",
        "cmd/s",
        None,
        Some(idle_rate),
        None,
    );

    let new_sessions: Vec<String> = (0..n).map(|i| format!("-session-new{i}")).collect();
    let kinds: [(&str, Vec<Route>); 4] = [
        ("rotation", vec![a.path(); n]),
        (
            "new session on A",
            new_sessions.iter().map(|s| customer(a, s)).collect(),
        ),
        (
            "session of A, first on B",
            new_sessions.iter().map(|s| customer(b, s)).collect(),
        ),
        ("repeated session", vec![customer(a, "-session-repeat"); n]),
    ];
    for (kind, routes) in kinds {
        let (counted, trips) = batch(fleet, conn, target, &routes)
            .await
            .with_context(|| format!("{kind} batch"))?;
        let per = |count: f64| count / n as f64;
        let background = idle_rate * counted.window.as_secs_f64();
        let scripts = counted.scripts.saturating_sub(counted.flushes);
        eprintln!(
            "   {kind}: {} commands in {:.1} s ({background:.0} background), {} scripts of which {} usage flushes; gateways counted {trips} session round trips",
            counted.all,
            counted.window.as_secs_f64(),
            counted.scripts,
            counted.flushes
        );
        for (metric, unit, value) in [
            (
                format!("{kind}: scripts (EVALSHA) / conn"),
                "cmd/conn",
                per(scripts as f64),
            ),
            (
                format!("{kind}: all commands / conn, less idle"),
                "cmd/conn",
                per(counted.all as f64 - background),
            ),
            (
                format!("{kind}: usage flushes in the batch"),
                "count",
                counted.flushes as f64,
            ),
            (
                format!("{kind}: gateway session trips / conn"),
                "trip/conn",
                per(trips as f64),
            ),
        ] {
            report.row(SCENARIO, metric, unit, None, Some(value), None);
        }
    }
    report.notes.push(format!(
        "fleet, Redis commands: INFO commandstats before and after {n} sequential connections (CONNECT + 1 KiB) of each kind, each window running from a settled fleet until that batch's usage flushes had landed; session scripts = EVALSHA + EVAL calls less usage flushes (the flush script is the only caller of HGET, so HGET calls count flushes); 'all commands' counts every command Redis ran, those inside scripts included, less the idle fleet's rate over the same window, so it carries the per-heartbeat usage flushes and load exchange that traffic causes (per gateway per heartbeat, not per connection); this program's own INFO/HMGET/XLEN/HLEN are left out"
    ));
    Ok(())
}

/// `INFO memory`'s used_memory, in bytes.
async fn used_memory(conn: &mut MultiplexedConnection) -> Result<u64> {
    let text: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    text.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

async fn mass_join(
    bench: &Bench,
    fleet: &Fleet,
    conn: &mut MultiplexedConnection,
    report: &mut Report,
) -> Result<()> {
    let mut n = bench.sizes.fleet_agents;
    if let Some(limit) = open_files_limit() {
        // One UDP socket per agent here, plus headroom.
        let fit = limit.saturating_sub(500) as usize;
        if fit < n {
            report.notes.push(format!(
                "fleet: the open-files limit {limit} fits {fit} agents, not {n}; raise `ulimit -n` for more"
            ));
            n = fit;
        }
    }
    let memory0 = used_memory(conn).await?;
    let stream0: u64 = redis::cmd("XLEN")
        .arg("exitpool:directory")
        .query_async(conn)
        .await?;
    let tunnels = fleet.tunnels();
    let spawn_agent = |i: usize| {
        let mut builder = Agent::builder(
            tunnels[0].to_string(),
            fleet.pin.parse().expect("pin from `gateway pin` parses"),
            TOKEN,
        );
        for tunnel in &tunnels[1..] {
            builder = builder.gateway(tunnel.to_string());
        }
        builder
            .bind(swarm_ip(i))
            .allow_private(true)
            .max_streams(8)
            .spawn()
    };
    let t0 = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        agents.push(spawn_agent(i)?);
        // Let the handshakes already started go on while more are spawned.
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let bound = Duration::from_secs(120 + n as u64 / 50);
    // Both clocks run from the first spawn: every agent welcomed by the
    // gateway it chose, and every directory holding all of them.
    let all_joined = async {
        for agent in &agents {
            agent.connected().await;
        }
        t0.elapsed()
    };
    let all_converged = async {
        fleet
            .wait_directories(n as u64, bound)
            .await
            .map(|_| t0.elapsed())
    };
    let (joined, converged) = tokio::join!(tokio::time::timeout(bound, all_joined), all_converged);
    let converged = converged?;
    let joined = joined.context("not every agent was welcomed in time")?;
    eprintln!(
        "   {n} agents: all welcomed {:.1} s, every directory at {n} {:.1} s after the first spawn",
        joined.as_secs_f64(),
        converged.as_secs_f64()
    );
    let memory1 = used_memory(conn).await?;
    let stream1: u64 = redis::cmd("XLEN")
        .arg("exitpool:directory")
        .query_async(conn)
        .await?;
    let mut split = Vec::new();
    for id in ["gw-a", "gw-b", "gw-c"] {
        // The hash holds the agents plus its sequence-number field.
        let fields: u64 = redis::cmd("HLEN")
            .arg(format!("exitpool:agents:{id}"))
            .query_async(conn)
            .await?;
        split.push(fields.saturating_sub(1));
    }
    let mut confirmed = Vec::new();
    for gateway in &fleet.gateways {
        confirmed.push(gateway.stats().await?["agents"].as_u64().unwrap_or(0));
    }
    if confirmed.iter().any(|&count| count != n as u64) {
        report.failures.push(format!(
            "fleet: /stats agents {confirmed:?} after the directories reached {n}"
        ));
    }
    // The background with the whole pool: agents add nothing to it.
    let idle = Duration::from_secs(if n >= 1000 { 10 } else { 3 });
    let before = commandstats(conn).await?;
    let t1 = Instant::now();
    tokio::time::sleep(idle).await;
    let after = commandstats(conn).await?;
    let idle = Counted::between(&before, &after, t1.elapsed());
    let memory_per_agent = (memory1 as f64 - memory0 as f64) / n as f64;
    for (metric, unit, value) in [
        (
            format!("mass join: agents in every directory ({n} started)"),
            "count",
            confirmed.iter().copied().min().unwrap_or(0) as f64,
        ),
        (
            "mass join: every agent welcomed by its gateway".to_owned(),
            "s",
            joined.as_secs_f64(),
        ),
        (
            "mass join: every directory converged".to_owned(),
            "s",
            converged.as_secs_f64(),
        ),
        (
            "mass join: converged after the last welcome".to_owned(),
            "s",
            converged.saturating_sub(joined).as_secs_f64(),
        ),
        (
            "mass join: agents per gateway, fewest".to_owned(),
            "count",
            split.iter().copied().min().unwrap_or(0) as f64,
        ),
        (
            "mass join: agents per gateway, most".to_owned(),
            "count",
            split.iter().copied().max().unwrap_or(0) as f64,
        ),
        (
            "Redis used_memory per agent".to_owned(),
            "bytes",
            memory_per_agent,
        ),
        (
            "Redis used_memory with all agents".to_owned(),
            "MiB",
            memory1 as f64 / MIB as f64,
        ),
        (
            "directory stream entries per agent joined".to_owned(),
            "entries",
            (stream1 - stream0) as f64 / n as f64,
        ),
        (
            format!("Redis commands/s, idle fleet, {n} agents"),
            "cmd/s",
            idle.all as f64 / idle.window.as_secs_f64(),
        ),
    ] {
        report.row(SCENARIO, metric, unit, None, Some(value), None);
    }
    report.notes.push(format!(
        "fleet, mass join: {n} agents in this process (127.1.x.y, one QUIC endpoint each), each given all three gateways (it prefers one by rendezvous hash of its id), spawned at once; 'welcomed' = every agent's tunnel up, 'converged' = every gateway's directory (the exitpool_fleet_agents gauge of /metrics, polled every 200 ms, confirmed with /stats) at {n}; Redis memory = used_memory after less before, over {n}: the agent hashes and the directory stream's entries (split {split:?})"
    ));
    let stops = agents.into_iter().map(|agent| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), agent.shutdown()).await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), join_all(stops)).await;
    Ok(())
}
