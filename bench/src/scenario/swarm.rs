//! swarm: many agents (in this process) on one gateway process, its memory and
//! CPU measured on their own, next to a bare QUIC server holding as many idle
//! connections; then the gateway restarts (SIGTERM, then SIGKILL) and the time
//! for all agents to come back is measured.

use crate::bare_relay::{idle_clients, BareExit};
use crate::cli::Bench;
use crate::client::join_all;
use crate::launch::{pin_of, GatewayProcess, TOKEN};
use crate::measure::{
    cpu_seconds, meminfo_kib, open_files_limit, open_files_limit_of, proc_entries, sockets,
    status_kib,
};
use crate::report::Report;
use anyhow::{Context, Result};
use exitpool_agent::{Agent, TransportChoice};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

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
    let Bench {
        sizes, bins, runs, ..
    } = bench;
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
    let gw_rss0 = status_kib(Some(gw.pid()), "VmRSS")?;
    let self_rss0 = status_kib(None, "VmRSS")?;

    let spawn_agent = |i: usize| {
        Agent::builder(
            gw.tunnel().to_string(),
            pin.parse().expect("pin from `gateway pin` parses"),
            TOKEN,
        )
        .bind(swarm_ip(i))
        .allow_private(true)
        .max_streams(8)
        // QUIC only: the default (`auto`) falls back to TLS/TCP when a QUIC
        // handshake takes over 250 ms, which a join storm here makes common,
        // and the figure would be a mix of both tunnels'.
        .transport(TransportChoice::Quic)
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
    gw.wait_agents(probe as u64, Duration::from_secs(60))
        .await?;
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
    gw.wait_agents(n as u64, join_bound).await?;
    let join_time = t0.elapsed();
    eprintln!("   {n} agents joined in {:.1} s", join_time.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = gw.pid();
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

    // The same pool on the TLS/TCP tunnel: gateway memory per idle agent.
    let (tcp_kib, tcp_idle_pct) = tcp_swarm(bench, n, idle, report).await?;
    let quic_kib = (gw_rss1 as f64 - gw_rss0 as f64) / n as f64;
    eprintln!("   TLS/TCP agents: gateway {tcp_kib:.1} KiB per agent (QUIC {quic_kib:.1}); idle CPU {tcp_idle_pct:.1} %");
    for (metric, unit, value) in [
        ("gateway memory per agent, TLS/TCP tunnel", "KiB", tcp_kib),
        (
            "gateway memory per agent, TLS/TCP / QUIC",
            "ratio",
            tcp_kib / quic_kib,
        ),
        (
            "gateway idle CPU with all agents, TLS/TCP tunnel",
            "% core",
            tcp_idle_pct,
        ),
    ] {
        report.row("swarm", metric, unit, None, Some(value), None);
    }

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

/// Gateway memory per agent (KiB) and idle CPU (% of a core) with `n` idle
/// agents on the TLS/TCP tunnel, on a fresh gateway process (per agent that
/// joined, when not all did: the report then says which process ran short).
async fn tcp_swarm(
    bench: &Bench,
    n: usize,
    idle: Duration,
    report: &mut Report,
) -> Result<(f64, f64)> {
    let Bench { bins, runs, .. } = bench;
    // A TLS/TCP agent holds two descriptors here: its TCP connection and the
    // UDP socket of the QUIC endpoint every agent keeps. (10,000 of them
    // under a 20,000 limit, beside sockets the QUIC phase had not yet let go
    // of, could not all connect: EMFILE here, not at the gateway.)
    let mut n = n;
    if let (Some(limit), Ok(open)) = (open_files_limit(), proc_entries(std::process::id(), "fd")) {
        let fit = (limit.saturating_sub(open + 64) / 2) as usize;
        if fit < n {
            report.notes.push(format!("swarm, TLS/TCP: {open} of this process's {limit} descriptors are open and each TLS/TCP agent takes two, so {fit} agents, not {n}; raise `ulimit -n` for more"));
            n = fit;
        }
    }
    let state = tempfile::tempdir()?;
    let pin = pin_of(&bins.gateway, state.path()).await?;
    let mut gw =
        GatewayProcess::start(&bins.gateway, state.path(), 10_000, runs.gateway_threads).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = status_kib(Some(gw.pid()), "VmRSS")?;
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        agents.push(
            Agent::builder(
                gw.tunnel().to_string(),
                pin.parse().expect("pin from `gateway pin` parses"),
                TOKEN,
            )
            .bind(swarm_ip(i))
            .allow_private(true)
            .max_streams(8)
            .transport(TransportChoice::Tcp)
            .spawn()?,
        );
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let joined = gw.wait_agents(n as u64, Duration::from_secs(120 + n as u64 / 50));
    let joined = match joined.await {
        Ok(_) => n,
        Err(error) => {
            let count = gw.directory_size().await.unwrap_or(0) as usize;
            report.failures.push(format!(
                "swarm, TLS/TCP: {error:#}; {}",
                descriptors(gw.pid())
            ));
            count.max(1)
        }
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = gw.pid();
    report.notes.push(format!(
        "swarm, TLS/TCP with {joined} agents: {}",
        descriptors(pid)
    ));
    let rss1 = status_kib(Some(pid), "VmRSS")?;
    let cpu0 = cpu_seconds(Some(pid))?;
    tokio::time::sleep(idle).await;
    let idle_pct = (cpu_seconds(Some(pid))? - cpu0) / idle.as_secs_f64() * 100.0;
    let _ = gw.stop(Duration::from_secs(10)).await;
    let stops = agents.into_iter().map(|a| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), a.shutdown()).await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), join_all(stops)).await;
    Ok(((rss1 as f64 - rss0 as f64) / joined as f64, idle_pct))
}

/// Open descriptors against RLIMIT_NOFILE for this process (where the agents
/// live) and the gateway, naming either one within 64 of its limit: a TLS/TCP
/// agent holds one socket at each end, so an agent that cannot join for want
/// of one shows here.
fn descriptors(gateway: u32) -> String {
    let of = |name: &str, open: Option<u64>, limit: Option<u64>| match (open, limit) {
        (Some(open), Some(limit)) => {
            let full = if open + 64 >= limit {
                " (AT ITS LIMIT)"
            } else {
                ""
            };
            format!("{name} {open} of {limit} descriptors open{full}")
        }
        _ => format!("{name}: descriptors unknown"),
    };
    let own = proc_entries(std::process::id(), "fd").ok();
    let theirs = proc_entries(gateway, "fd").ok();
    format!(
        "{} ({}); {}",
        of("load test", own, open_files_limit()),
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

/// Memory per connection (KiB) and idle CPU (% of a core) of a bare QUIC server
/// (the bare relay's exit process) holding `n` idle connections.
async fn bare_quic_floor(n: usize, idle: Duration) -> Result<(f64, f64)> {
    let unused_target = SocketAddr::from(([127, 0, 0, 1], 9));
    // One stream, like the gateway allows each agent (its control stream).
    let exit = BareExit::start(unused_target, 1).await?;
    let pid = exit.pid();
    let rss0 = status_kib(Some(pid), "VmRSS")?;
    let clients = idle_clients(exit.addr, &exit.cert_hex, n, swarm_ip)
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
