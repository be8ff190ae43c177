//! connect: fresh CONNECT + 1 KiB answer, sequential and concurrent,
//! p50/p99/max, direct, through exitpool, tinyproxy and the bare relay.

use crate::bare_relay::{self, BareRelay};
use crate::cli::{Bench, Sizes};
use crate::client::{download, join_all, open, start_target, Route, STEP};
use crate::launch::Processes;
use crate::measure::percentile;
use crate::report::{Figure, Report};
use crate::tinyproxy::Tinyproxy;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fresh connection + 1 KiB answer; returns the time it took.
pub(crate) async fn one_connect(path: &Route, target: SocketAddr) -> Result<Duration> {
    let t0 = Instant::now();
    let mut stream = open(path, target).await?;
    tokio::time::timeout(STEP, download(&mut stream, 1024))
        .await
        .context("1 KiB answer timed out")??;
    Ok(t0.elapsed())
}

pub(crate) struct ConnectStats {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub seq_rate: f64,
    pub conc_rate: f64,
    pub conc_p50: f64,
    pub conc_p99: f64,
}

pub(crate) async fn connect_path(
    path: &Route,
    target: SocketAddr,
    n: usize,
    workers: usize,
) -> Result<ConnectStats> {
    let mut stats = connect_paths_in_turn(&[path], target, n, workers, 1).await?;
    Ok(stats.remove(0))
}

/// `n` sequential connects on each of `paths`, the paths taking turns in
/// `rounds` batches so that drift over the run falls on every path alike; then
/// `n` again from `workers` concurrent clients, one path after another.
pub(crate) async fn connect_paths_in_turn(
    paths: &[&Route],
    target: SocketAddr,
    n: usize,
    workers: usize,
    rounds: usize,
) -> Result<Vec<ConnectStats>> {
    for path in paths {
        for _ in 0..20.min(n) {
            one_connect(path, target).await.context("warm-up")?;
        }
    }
    let rounds = rounds.clamp(1, n.max(1));
    let mut sequential: Vec<(Vec<Duration>, Duration)> =
        vec![(Vec::with_capacity(n), Duration::ZERO); paths.len()];
    for round in 0..rounds {
        // An even split of `n` whose batches add up to exactly `n`.
        let batch = n * (round + 1) / rounds - n * round / rounds;
        for (path, (lat, spent)) in paths.iter().zip(&mut sequential) {
            let t0 = Instant::now();
            for _ in 0..batch {
                lat.push(one_connect(path, target).await?);
            }
            *spent += t0.elapsed();
        }
    }
    let mut stats = Vec::with_capacity(paths.len());
    for (path, (mut lat, spent)) in paths.iter().zip(sequential) {
        lat.sort();
        let (conc_rate, conc) = concurrent_connects(path, target, n, workers).await?;
        stats.push(ConnectStats {
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            max: percentile(&lat, 1.0),
            seq_rate: n as f64 / spent.as_secs_f64(),
            conc_rate,
            conc_p50: percentile(&conc, 0.5),
            conc_p99: percentile(&conc, 0.99),
        });
    }
    Ok(stats)
}

/// `n` connects from `workers` concurrent clients: the rate, and each
/// connection's time, sorted.
async fn concurrent_connects(
    path: &Route,
    target: SocketAddr,
    n: usize,
    workers: usize,
) -> Result<(f64, Vec<Duration>)> {
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
    let rate = n as f64 / t1.elapsed().as_secs_f64();
    conc.sort();
    Ok((rate, conc))
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

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let Bench {
        sizes, bins, runs, ..
    } = bench;
    let target = start_target().await?;
    let processes = Processes::start(bins, runs.gateway_threads, 1, 4096, None, "quic").await?;
    let tiny = Tinyproxy::start_if_installed(bench.tinyproxy.as_deref()).await?;
    let direct = measured_connects("direct", &Route::Direct, target, sizes).await?;
    let ours = measured_connects("exitpool", &processes.path(), target, sizes).await?;
    processes.stop().await;
    let over_tcp = Processes::start(bins, runs.gateway_threads, 1, 4096, None, "tcp").await?;
    let ours_tcp = measured_connects("exitpool-tcp", &over_tcp.path(), target, sizes).await?;
    over_tcp.stop().await;
    let tiny_stats = match &tiny {
        Some(t) => Some(measured_connects("tinyproxy", &t.path(), target, sizes).await?),
        None => None,
    };
    let bare = BareRelay::start(target).await?;
    let bare_stats = measured_connects(bare_relay::NAME, &bare.path(), target, sizes).await?;
    drop(bare);
    let concurrent = |what: &str| format!("{} concurrent clients: {what}", sizes.concurrency);
    let figures: [Figure<ConnectStats>; 7] = [
        ("fresh connect + 1 KiB, p50".into(), "ms", |s| Some(s.p50)),
        ("fresh connect + 1 KiB, p99".into(), "ms", |s| Some(s.p99)),
        ("fresh connect + 1 KiB, max".into(), "ms", |s| Some(s.max)),
        ("sequential rate".into(), "conn/s", |s| Some(s.seq_rate)),
        (concurrent("rate"), "conn/s", |s| Some(s.conc_rate)),
        (concurrent("p50"), "ms", |s| Some(s.conc_p50)),
        (concurrent("p99"), "ms", |s| Some(s.conc_p99)),
    ];
    let runs_by_path = [
        Some(&direct),
        Some(&ours),
        tiny_stats.as_ref(),
        Some(&bare_stats),
    ];
    report.rows_per_path("connect", runs_by_path, figures);
    let ratio = |s: &ConnectStats| s.p50 / direct.p50;
    report.row(
        "connect",
        "p50 / direct p50",
        "ratio",
        None,
        Some(ratio(&ours)),
        tiny_stats.as_ref().map(ratio),
    );
    report.with_bare_relay(Some(ratio(&bare_stats)));
    for (metric, unit, tcp, quic) in [
        (
            "TLS/TCP tunnel: fresh connect + 1 KiB, p50",
            "ms",
            ours_tcp.p50,
            ours.p50,
        ),
        (
            "TLS/TCP tunnel: fresh connect + 1 KiB, p99",
            "ms",
            ours_tcp.p99,
            ours.p99,
        ),
        (
            "TLS/TCP tunnel: sequential rate",
            "conn/s",
            ours_tcp.seq_rate,
            ours.seq_rate,
        ),
        (
            "TLS/TCP tunnel: concurrent rate",
            "conn/s",
            ours_tcp.conc_rate,
            ours.conc_rate,
        ),
    ] {
        report.row("connect", metric, unit, None, Some(tcp), None);
        report.row(
            "connect",
            format!("{metric}, TLS/TCP / QUIC"),
            "ratio",
            None,
            Some(tcp / quic),
            None,
        );
    }
    if let Some(threads) = runs.also_threads {
        let other = Processes::start(bins, threads, 1, 4096, None, "quic").await?;
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
