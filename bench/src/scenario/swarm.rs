//! swarm: many agents (in this process) on one gateway process, its memory and
//! CPU measured on their own, next to a bare QUIC server holding as many idle
//! connections; then the gateway restarts (SIGTERM, then SIGKILL) and the time
//! for all agents to come back is measured. The same pool follows on the
//! TLS/TCP tunnel, and, when asked ([`crate::cli::SwarmArgs`]), at further keep-alive
//! periods (idle CPU, each beside the bare server at the same period), and the
//! dashboard's API under the QUIC pool with customer connections held open
//! ([`dashboard`]). Each phase starts once the previous one's descriptors are
//! released, and a phase that falls short names the descriptor limit it met.

mod dashboard;

use crate::bare_relay::{idle_clients, BareExit};
use crate::cli::Bench;
use crate::client::join_all;
use crate::launch::{pin_of, GatewayProcess, TOKEN};
use crate::measure::{
    cpu_seconds, meminfo_kib, open_files_limit, open_files_limit_of, proc_entries, sockets,
    status_kib,
};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use exitpool_agent::{Agent, AgentHandle, Pin, TransportChoice};
use exitpool_protocol::KEEP_ALIVE_INTERVAL;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Descriptors this process keeps besides the agents' (runtime, pipes to the
/// children, stdio).
const HEADROOM: u64 = 500;
/// What one bare QUIC client costs the load test at least (KiB), measured at
/// 3,000 and 10,000: a first batch alone can look cheaper when it reuses the
/// heap earlier phases freed, and 10,000 held on that estimate met the OOM
/// killer.
const CLIENT_KIB: f64 = 2048.0;
/// A process this close to its RLIMIT_NOFILE is counted as at it.
const NEAR_LIMIT: u64 = 64;

/// The address of the `i`th in-process agent: 127.1.0.1, 127.1.0.2, ...
pub(crate) fn swarm_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 250 / 250) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let baseline = own_descriptors()?;
    let (n, idle) = (bench.sizes.swarm, idle_window(bench));
    let mut loads = Vec::new();
    // One UDP socket per QUIC agent.
    let n = fit_descriptors(n, 1, "QUIC", report);
    let (n, quic) = quic_phase(bench, n, idle, &mut loads, report).await?;
    release(baseline, "QUIC", report).await;

    let mut idle_at = vec![(KEEP_ALIVE_INTERVAL, quic.idle_pct)];
    for &secs in &bench.swarm.swarm_keep_alive {
        let every = Duration::from_secs_f64(secs.clamp(0.1, 600.0));
        let pct = keep_alive_phase(bench, n, every, idle, &mut loads, report).await?;
        release(baseline, "keep-alive", report).await;
        idle_at.push((every, pct));
    }

    // A TLS/TCP agent holds two descriptors here: its TCP connection and the
    // UDP socket of the QUIC endpoint every agent keeps.
    let n_tcp = fit_descriptors(n, 2, "TLS/TCP", report);
    let tcp = tcp_phase(bench, n_tcp, idle, &mut loads, report).await?;
    release(baseline, "TLS/TCP", report).await;
    eprintln!(
        "   TLS/TCP agents: gateway {:.1} KiB per agent (QUIC {:.1}); idle CPU {:.1} %",
        tcp.kib, quic.kib, tcp.idle_pct
    );
    for (metric, unit, value) in [
        ("gateway memory per agent, TLS/TCP tunnel", "KiB", tcp.kib),
        (
            "gateway memory per agent, TLS/TCP / QUIC",
            "ratio",
            tcp.kib / quic.kib,
        ),
        (
            "gateway idle CPU with all agents, TLS/TCP tunnel",
            "% core",
            tcp.idle_pct,
        ),
    ] {
        report.row("swarm", metric, unit, None, Some(value), None);
    }

    floors(n, idle, &idle_at, quic.kib, &mut loads, report).await?;
    release(baseline, "bare QUIC", report).await;
    report.notes.push(format!(
        "swarm: gateway = the real `gateway` binary in its own process (RSS/CPU from /proc/PID, utime+stime over {:.0} s idle windows); {n} agents in this process on 127.1.x.y, one QUIC endpoint each; restart = SIGTERM, then the same ports and state dir; crash restart = the same after SIGKILL (no shutdown notice); load average (1, 5, 15 min) at the end of each window: {}",
        idle.as_secs_f64(),
        loads.join("; ")
    ));
    Ok(())
}

/// What a phase measured: gateway memory per agent and idle CPU.
struct Figures {
    kib: f64,
    idle_pct: f64,
}

/// How long each idle CPU figure is measured over.
fn idle_window(bench: &Bench) -> Duration {
    let default = if bench.sizes.swarm > 1000 { 16.0 } else { 5.0 };
    let secs = bench.swarm.swarm_idle_secs.unwrap_or(default);
    Duration::from_secs_f64(secs.clamp(1.0, 3600.0))
}

/// The QUIC pool at the SDK's keep-alive: join, memory, idle CPU, the
/// dashboard when asked, then a restart and a crash restart. Returns how
/// many agents took part (memory may have fitted fewer) and the figures.
async fn quic_phase(
    bench: &Bench,
    n: usize,
    idle: Duration,
    loads: &mut Vec<String>,
    report: &mut Report,
) -> Result<(usize, Figures)> {
    let tunnel = (TransportChoice::Quic, KEEP_ALIVE_INTERVAL);
    let mut pool = Pool::start(bench, n, tunnel, true, "QUIC", report).await?;
    let n = pool.started;
    eprintln!(
        "   {} agents joined in {:.1} s",
        pool.joined,
        pool.join_time.as_secs_f64()
    );
    let kib = pool.gateway_kib_per_agent()?;
    let self_kib = (status_kib(None, "VmRSS")? as f64 - pool.self_rss0 as f64) / n as f64;
    let (idle_pct, agents_idle_pct) = pool.idle_cpu(idle, loads, "QUIC 15 s").await?;
    let still = pool.gw.agents().await?;
    eprintln!("   gateway {kib:.1} KiB per agent; idle CPU {idle_pct:.1} %");
    report.row(
        "swarm",
        format!("agents connected to one gateway ({n} started)"),
        "count",
        None,
        Some(still as f64),
        None,
    );
    for (metric, unit, value) in [
        (
            "time for all to join (cold start)",
            "s",
            pool.join_time.as_secs_f64(),
        ),
        (
            "gateway RSS before agents",
            "MiB",
            pool.rss0 as f64 / 1024.0,
        ),
        (
            "gateway RSS with all agents",
            "MiB",
            status_kib(Some(pool.gw.pid()), "VmRSS")? as f64 / 1024.0,
        ),
        ("gateway memory per agent", "KiB", kib),
        ("gateway idle CPU with all agents", "% core", idle_pct),
        ("in-process agents: memory per agent", "KiB", self_kib),
        (
            "in-process agents: idle CPU, all together",
            "% core",
            agents_idle_pct,
        ),
    ] {
        report.row("swarm", metric, unit, None, Some(value), None);
    }
    if bench.swarm.swarm_dashboard > 0 {
        let conns = bench.swarm.swarm_dashboard;
        if let Err(error) = dashboard::measure(&pool.gw, pool.joined, conns, idle, report).await {
            report.failures.push(format!("swarm, dashboard: {error:#}"));
        }
    }
    measure_restart(&mut pool.gw, pool.joined, false, report).await;
    measure_restart(&mut pool.gw, pool.joined, true, report).await;
    pool.stop().await;
    Ok((n, Figures { kib, idle_pct }))
}

/// Gateway idle CPU with `n` QUIC agents keeping alive every `every`.
async fn keep_alive_phase(
    bench: &Bench,
    n: usize,
    every: Duration,
    idle: Duration,
    loads: &mut Vec<String>,
    report: &mut Report,
) -> Result<f64> {
    let what = format!("QUIC {} s", every.as_secs_f64());
    let tunnel = (TransportChoice::Quic, every);
    let pool = Pool::start(bench, n, tunnel, false, &what, report).await?;
    let (idle_pct, _) = pool.idle_cpu(idle, loads, &what).await?;
    eprintln!(
        "   {} QUIC agents at {:.1} s keep-alive: gateway idle CPU {idle_pct:.1} %",
        pool.joined,
        every.as_secs_f64()
    );
    pool.stop().await;
    Ok(idle_pct)
}

/// Gateway memory per agent and idle CPU with `n` idle agents on the TLS/TCP
/// tunnel, on a fresh gateway process (per agent that joined, when not all
/// did: the report then says which limit stopped them).
async fn tcp_phase(
    bench: &Bench,
    n: usize,
    idle: Duration,
    loads: &mut Vec<String>,
    report: &mut Report,
) -> Result<Figures> {
    let tunnel = (TransportChoice::Tcp, KEEP_ALIVE_INTERVAL);
    let pool = Pool::start(bench, n, tunnel, false, "TLS/TCP", report).await?;
    report.notes.push(format!(
        "swarm, TLS/TCP with {} agents: {}",
        pool.joined,
        descriptors(pool.gw.pid())
    ));
    let kib = pool.gateway_kib_per_agent()?;
    let (idle_pct, _) = pool.idle_cpu(idle, loads, "TLS/TCP 15 s").await?;
    pool.stop().await;
    Ok(Figures { kib, idle_pct })
}

/// The bare quinn server at every keep-alive measured, its figures in the
/// bare relay's column of the gateway's rows (and a row for each further
/// period, with its ratio to the SDK's).
async fn floors(
    n: usize,
    idle: Duration,
    idle_at: &[(Duration, f64)],
    quic_kib: f64,
    loads: &mut Vec<String>,
    report: &mut Report,
) -> Result<()> {
    let (mut floor_15, mut client_kib) = (None, 0.0);
    for (i, &(every, gateway_pct)) in idle_at.iter().enumerate() {
        let secs = every.as_secs_f64();
        let (floor_kib, floor_pct) =
            bare_quic_floor(n, idle, every, loads, &mut report.notes, &mut client_kib).await?;
        eprintln!(
            "   bare QUIC server at {secs:.1} s keep-alive: {floor_kib:.1} KiB per connection; idle CPU {floor_pct:.1} %"
        );
        if i == 0 {
            floor_15 = Some(floor_pct);
            for (metric, value) in [
                ("gateway memory per agent", floor_kib),
                ("gateway idle CPU with all agents", floor_pct),
            ] {
                if let Some(row) = report
                    .rows
                    .iter_mut()
                    .find(|r| r.scenario == "swarm" && r.metric == metric)
                {
                    row.bare_relay = Some(value);
                }
            }
            report.row(
                "swarm",
                "gateway memory per agent / bare QUIC server",
                "ratio",
                None,
                Some(quic_kib / floor_kib),
                None,
            );
            continue;
        }
        let (base_gateway, base_floor) = (idle_at[0].1, floor_15.unwrap_or(f64::NAN));
        report.row(
            "swarm",
            format!("gateway idle CPU, QUIC agents keeping alive every {secs} s"),
            "% core",
            None,
            Some(gateway_pct),
            None,
        );
        report.with_bare_relay(Some(floor_pct));
        report.row(
            "swarm",
            format!("gateway idle CPU, keep-alive {secs} s / 15 s"),
            "ratio",
            None,
            Some(gateway_pct / base_gateway),
            None,
        );
        report.with_bare_relay(Some(floor_pct / base_floor));
    }
    report.notes.push(format!(
        "swarm, bare QUIC column: the bare relay's exit process holding {n} idle QUIC connections (the clients keeping alive at the gateway's agents' period), each from its own endpoint in this process; the floor under the gateway's figures"
    ));
    Ok(())
}

/// A gateway process and its in-process agents.
struct Pool {
    gw: GatewayProcess,
    agents: Vec<AgentHandle>,
    _state: tempfile::TempDir,
    /// Agents started (memory may have fitted fewer than asked).
    started: usize,
    /// Agents that joined within the bound.
    joined: usize,
    join_time: Duration,
    /// Gateway RSS before any agent, KiB.
    rss0: u64,
    /// This process's RSS before any agent, KiB.
    self_rss0: u64,
}

impl Pool {
    /// A fresh gateway and `n` agents on `tunnel` (transport, keep-alive),
    /// waited for until all joined or the bound passes; with `fit_memory`,
    /// as many as half the available memory holds, from a first batch's cost.
    async fn start(
        bench: &Bench,
        n: usize,
        tunnel: (TransportChoice, Duration),
        fit_memory: bool,
        what: &str,
        report: &mut Report,
    ) -> Result<Pool> {
        let Bench { bins, runs, .. } = bench;
        let state = tempfile::tempdir()?;
        let pin = pin_of(&bins.gateway, state.path()).await?;
        let pin: Pin = pin.parse().context("pin from `gateway pin`")?;
        let gw = GatewayProcess::start(&bins.gateway, state.path(), 10_000, runs.gateway_threads)
            .await?;
        // Lets the new process's memory settle before its baseline is read.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss0, self_rss0) = (
            status_kib(Some(gw.pid()), "VmRSS")?,
            status_kib(None, "VmRSS")?,
        );
        gateway_room(gw.pid(), n, what, report);
        let spawn_agent = |i: usize| {
            Agent::builder(gw.tunnel().to_string(), pin, TOKEN)
                .bind(swarm_ip(i))
                .allow_private(true)
                .max_streams(8)
                .keep_alive(tunnel.1)
                // One transport, never `auto`: a join storm makes QUIC
                // handshakes over 250 ms common, auto would fall back to
                // TLS/TCP, and the figure would be a mix of both tunnels'.
                .transport(tunnel.0)
                .spawn()
        };
        let t0 = Instant::now();
        let mut n = n;
        let mut agents = Vec::with_capacity(n);
        if fit_memory {
            // The agents live in this process; measure what one costs here on
            // a first batch and keep the total within 80 % of what is free.
            let probe = n.min(100);
            for i in 0..probe {
                agents.push(spawn_agent(i)?);
            }
            gw.wait_agents(probe as u64, Duration::from_secs(60))
                .await?;
            let here = status_kib(None, "VmRSS")?.saturating_sub(self_rss0) as f64;
            let per_agent_here = (here / probe as f64).max(1.0);
            let available = meminfo_kib("MemAvailable").unwrap_or(u64::MAX / 4) as f64;
            let fit = (available * 0.8 / per_agent_here) as usize;
            if fit < n {
                report.notes.push(format!("swarm: in-process agents cost ~{per_agent_here:.0} KiB each here; memory fits {fit}, not {n}"));
                n = fit.max(probe);
            }
        }
        // In batches, so the handshakes arrive at a steady rate.
        for i in agents.len()..n {
            agents.push(spawn_agent(i)?);
            if i % 500 == 499 {
                tokio::task::yield_now().await;
            }
        }
        let bound = Duration::from_secs(120 + n as u64 / 50);
        let joined = match gw.wait_agents(n as u64, bound).await {
            Ok(_) => n,
            Err(error) => {
                let count = gw.directory_size().await.unwrap_or(0) as usize;
                report.failures.push(format!(
                    "swarm, {what}: {error:#}; {}",
                    which_limit(gw.pid())
                ));
                if count == 0 {
                    bail!("swarm, {what}: no agent joined");
                }
                count
            }
        };
        let join_time = t0.elapsed();
        // Past the join storm's retransmissions and first load reports.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(Pool {
            gw,
            agents,
            _state: state,
            started: n,
            joined,
            join_time,
            rss0,
            self_rss0,
        })
    }

    /// The gateway's RSS growth since before the agents, per agent joined.
    fn gateway_kib_per_agent(&self) -> Result<f64> {
        let rss1 = status_kib(Some(self.gw.pid()), "VmRSS")?;
        Ok((rss1 as f64 - self.rss0 as f64) / self.joined.max(1) as f64)
    }

    /// CPU (% of one core) of the gateway and of this process over `window`
    /// with nothing but keep-alives and load reports moving.
    async fn idle_cpu(
        &self,
        window: Duration,
        loads: &mut Vec<String>,
        what: &str,
    ) -> Result<(f64, f64)> {
        let pid = self.gw.pid();
        let (gc0, sc0) = (cpu_seconds(Some(pid))?, cpu_seconds(None)?);
        tokio::time::sleep(window).await;
        let (gc1, sc1) = (cpu_seconds(Some(pid))?, cpu_seconds(None)?);
        loads.push(format!("{what} idle {}", load_average()));
        let pct = |cpu: f64| cpu / window.as_secs_f64() * 100.0;
        Ok((pct(gc1 - gc0), pct(sc1 - sc0)))
    }

    /// Stops the agents (while the gateway still answers their goodbyes),
    /// then the gateway.
    async fn stop(self) {
        let Pool { mut gw, agents, .. } = self;
        let stops = agents.into_iter().map(|a| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), a.shutdown()).await;
        });
        let _ = tokio::time::timeout(Duration::from_secs(60), join_all(stops)).await;
        let _ = gw.stop(Duration::from_secs(10)).await;
    }
}

/// This process's open descriptors.
fn own_descriptors() -> Result<u64> {
    proc_entries(std::process::id(), "fd")
}

/// At most `n` agents of `per_agent` descriptors each, as many as this
/// process's RLIMIT_NOFILE leaves room for beside what is open now.
fn fit_descriptors(n: usize, per_agent: u64, what: &str, report: &mut Report) -> usize {
    let (Some(limit), Ok(open)) = (open_files_limit(), own_descriptors()) else {
        return n;
    };
    let fit = (limit.saturating_sub(open + HEADROOM) / per_agent) as usize;
    if fit >= n {
        return n;
    }
    report.notes.push(format!("swarm, {what}: the load test's own RLIMIT_NOFILE ({limit}, {open} open) fits {fit} agents of {per_agent} descriptor(s) each, not {n}; raise `ulimit -n` for more"));
    fit.max(1)
}

/// Notes when the gateway's RLIMIT_NOFILE cannot hold `n` agents (a TLS/TCP
/// agent is one descriptor there; QUIC agents share one socket).
fn gateway_room(gateway: u32, n: usize, what: &str, report: &mut Report) {
    let (Some(limit), Ok(open)) = (open_files_limit_of(gateway), proc_entries(gateway, "fd"))
    else {
        return;
    };
    if what.starts_with("TLS/TCP") && open + n as u64 + NEAR_LIMIT > limit {
        report.notes.push(format!("swarm, {what}: the gateway's RLIMIT_NOFILE ({limit}, {open} open) has no room for {n} TLS/TCP agents"));
    }
}

/// Waits until this process is back to `baseline` descriptors (give or take
/// a few), so the next phase has all of its room: agents let their sockets
/// go only once their tasks have ended.
async fn release(baseline: u64, phase: &str, report: &mut Report) {
    let started = Instant::now();
    let bound = Duration::from_secs(120);
    loop {
        let open = own_descriptors().unwrap_or(0);
        if open <= baseline + 32 {
            eprintln!(
                "   {phase} phase: descriptors released in {:.1} s ({open} open)",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if started.elapsed() > bound {
            report.notes.push(format!(
                "swarm: {open} descriptors still open {bound:?} after the {phase} phase ended, against {baseline} before the scenario ({})",
                socket_kinds(std::process::id())
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which descriptor limit stopped a phase's agents, if one did, then both
/// processes' counts.
fn which_limit(gateway: u32) -> String {
    let at_limit = |open: Option<u64>, limit: Option<u64>| match (open, limit) {
        (Some(open), Some(limit)) => open + NEAR_LIMIT >= limit,
        _ => false,
    };
    let own = at_limit(own_descriptors().ok(), open_files_limit());
    let theirs = at_limit(
        proc_entries(gateway, "fd").ok(),
        open_files_limit_of(gateway),
    );
    let verdict = match (own, theirs) {
        (true, true) => "stopped by both processes' RLIMIT_NOFILE",
        (true, false) => "stopped by the load test's own RLIMIT_NOFILE (where the agents live)",
        (false, true) => "stopped by the gateway's RLIMIT_NOFILE",
        (false, false) => "neither process at its descriptor limit (the bound ran out)",
    };
    format!("{verdict}: {}", descriptors(gateway))
}

/// Open descriptors against RLIMIT_NOFILE for this process (where the agents
/// live) and the gateway, naming either one within [`NEAR_LIMIT`] of its
/// limit.
fn descriptors(gateway: u32) -> String {
    let of = |name: &str, open: Option<u64>, limit: Option<u64>| match (open, limit) {
        (Some(open), Some(limit)) => {
            let full = if open + NEAR_LIMIT >= limit {
                " (AT ITS LIMIT)"
            } else {
                ""
            };
            format!("{name} {open} of {limit} descriptors open{full}")
        }
        _ => format!("{name}: descriptors unknown"),
    };
    let theirs = proc_entries(gateway, "fd").ok();
    format!(
        "{} ({}); {}",
        of("load test", own_descriptors().ok(), open_files_limit()),
        socket_kinds(std::process::id()),
        of("gateway", theirs, open_files_limit_of(gateway))
    )
}

/// A process's sockets counted by table (`tcp 9998, udp 2, ...`).
fn socket_kinds(pid: u32) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for description in sockets(pid).into_values() {
        let kind = description.split(' ').next().unwrap_or("?").to_owned();
        *kinds.entry(kind).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("sockets: {}", kinds.join(", "))
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Memory per connection (KiB) and idle CPU (% of a core) of a bare QUIC server
/// (the bare relay's exit process) holding `n` idle connections whose clients
/// keep alive every `every` (fewer when this process's memory cannot hold
/// them: the CPU then scaled to `n`, and a note says so).
async fn bare_quic_floor(
    n: usize,
    idle: Duration,
    every: Duration,
    loads: &mut Vec<String>,
    notes: &mut Vec<String>,
    client_kib: &mut f64,
) -> Result<(f64, f64)> {
    let unused_target = SocketAddr::from(([127, 0, 0, 1], 9));
    // One stream, like the gateway allows each agent (its control stream).
    let exit = BareExit::start(unused_target, 1).await?;
    let pid = exit.pid();
    let rss0 = status_kib(Some(pid), "VmRSS")?;
    let self0 = status_kib(None, "VmRSS")?;
    let connect = |n: usize, first: usize| {
        let bind = move |i| swarm_ip(first + i);
        idle_clients(exit.addr, &exit.cert_hex, n, bind, every)
    };
    // The clients live in this process and cost far more here than an agent
    // (1-2 MiB each, measured; quinn's per-endpoint buffers, not yet traced);
    // hold as many as 70 % of the free memory fits, from a first batch.
    // A first batch that reuses freed heap looks cheap, so the dearest cost
    // seen so far, and at least [`CLIENT_KIB`], counts.
    let probe = n.min(200);
    let mut clients = connect(probe, 0).await.context("bare QUIC clients")?;
    let measured = status_kib(None, "VmRSS")?.saturating_sub(self0) as f64 / probe as f64;
    *client_kib = client_kib.max(measured).max(CLIENT_KIB);
    let here = *client_kib;
    let available = meminfo_kib("MemAvailable").unwrap_or(u64::MAX / 4) as f64;
    let held = n.min(((available * 0.7) / here.max(1.0)) as usize + probe);
    if held < n {
        notes.push(format!("swarm, bare QUIC at {} s keep-alive: its clients cost ~{here:.0} KiB each in the load test, so it held {held} connections, not {n}; its idle CPU is scaled to {n}", every.as_secs_f64()));
    }
    clients.extend(
        connect(held - probe, probe)
            .await
            .context("bare QUIC clients")?,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = status_kib(Some(pid), "VmRSS")?;
    let cpu0 = cpu_seconds(Some(pid))?;
    tokio::time::sleep(idle).await;
    let idle_pct = (cpu_seconds(Some(pid))? - cpu0) / idle.as_secs_f64() * 100.0;
    loads.push(format!(
        "bare QUIC {} s idle {}",
        every.as_secs_f64(),
        load_average()
    ));
    drop(clients);
    let scale = n as f64 / held as f64;
    Ok(((rss1 as f64 - rss0 as f64) / held as f64, idle_pct * scale))
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
            gw.wait_agents(n as u64, bound).await,
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
