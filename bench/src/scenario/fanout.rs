//! fanout: many concurrent customer connections over many agent processes,
//! all started at once; errors must be 0.

use crate::cli::Bench;
use crate::client::{download, open, start_target, transfer_bound, Route, STEP};
use crate::launch::Processes;
use crate::measure::{cpu_of, open_files_limit, percentile, GIB};
use crate::report::Report;
use anyhow::{bail, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

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
        let path = path.with_source(IpAddr::V4(Ipv4Addr::new(127, 0, 2, (i % 250 + 1) as u8)));
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

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let Bench {
        sizes, bins, runs, ..
    } = bench;
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
        "quic",
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
        let other =
            Processes::start(bins, threads, agents, conns + 256, Some(per_agent), "quic").await?;
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
