//! footprint: one `agent` process (its default runtime), idle and after
//! traffic, against an in-process gateway.

use crate::cli::Bench;
use crate::client::{basic, one_transfer, start_target, Route, STEP};
use crate::launch::{spawn_agent_process, PASSWORD, TOKEN, USER};
use crate::measure::{cpu_seconds, status_kib, GIB, MIB};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use exitpool_gateway::auth::{AgentTokens, Customer, Users};
use exitpool_gateway::{Gateway, GatewayConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let target = start_target().await?;
    let state = tempfile::tempdir()?;
    let gateway = start_gateway(state.path()).await?;
    let dir = tempfile::tempdir()?;
    let mut agent = spawn_agent_process(
        &bench.bins.agent,
        gateway.tunnel_addr(),
        gateway.pin(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        dir.path(),
        None,
        "quic",
    )?;
    let joined = tokio::time::timeout(
        STEP,
        gateway.directory().wait_for_census(|c| c.accepting >= 1),
    )
    .await;
    if joined.is_err() {
        bail!(
            "the agent process did not join within {STEP:?}; log: {}",
            agent.tail()
        );
    }
    let pid = agent.pid();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = status_kib(Some(pid), "VmRSS")?;
    let idle = Duration::from_secs(10);
    let c0 = cpu_seconds(Some(pid))?;
    tokio::time::sleep(idle).await;
    let idle_pct = (cpu_seconds(Some(pid))? - c0) / idle.as_secs_f64() * 100.0;
    // Then some traffic through it, and what stays resident afterwards.
    let path = Route::Proxy {
        addr: gateway.listen_addr(),
        auth: Some(basic(USER, PASSWORD)),
    };
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
    let _ = agent.stop(Duration::from_secs(15)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), gateway.shutdown()).await;
    Ok(())
}

/// A gateway in this process on loopback port 0, knowing the benchmark
/// customer and agent token.
async fn start_gateway(state: &Path) -> Result<Gateway> {
    let mut config = GatewayConfig::new(state.to_owned());
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    (config.listen, config.tunnel, config.admin) = (local, local, None);
    config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}"))?]);
    config.agent_tokens = AgentTokens::new([TOKEN.to_owned()]);
    config.max_connections = 1024;
    config.shutdown_grace = Duration::from_secs(2);
    Ok(tokio::time::timeout(STEP, Gateway::start(config))
        .await
        .context("gateway start timed out")??)
}
