//! rate: how many fresh connections a second each path carries, and what each
//! costs its proxy in CPU. Client loops (64 by default) each open a fresh TCP
//! connection, CONNECT where there is a proxy, send a 1 KiB request, read the
//! 1 KiB answer and start again, for a fixed time per path: direct, exitpool
//! (the gateway and one agent process), tinyproxy, the bare relay and the bare
//! relay with a CONNECT exchange (the floor for the protocol exitpool speaks;
//! its figures are rows of their own, in the bare relay's column). The paths
//! take turns, round after round, so a slow spell of a shared machine hits them
//! alike: the table shows each path's totals over the rounds, and each round's
//! exitpool-to-floor ratios are listed too (median, lowest, highest).
//! Failed connections are counted by kind (an `exits_busy` answer, a reset, …).
//! Two more gateways take turns in the same rounds for the history rows
//! (`rate_history.rs`); one path's drive is in `rate_run.rs`.

use super::rate_run::{drive, RateRun, EXCHANGE};
use crate::bare_relay::{self, BareRelay};
use crate::cli::Bench;
use crate::client::{start_target, Route};
use crate::launch::Processes;
use crate::measure::{median, percentile};
use crate::report::{Figure, Report};
use crate::tinyproxy::Tinyproxy;
use anyhow::Result;

/// One figure of a run, where the path has it.
type RunFigure = fn(&RateRun) -> Option<f64>;

/// Rows of exitpool's ratio to the floor `floor_name` in `metric`, round by
/// round: the median, lowest and highest round.
fn round_ratio_rows(
    report: &mut Report,
    metric: &str,
    figure: RunFigure,
    ourses: &[RateRun],
    floor_name: &str,
    floors: &[RateRun],
) {
    let ratios: Vec<f64> = ourses
        .iter()
        .zip(floors)
        .filter_map(|(ours, floor)| Some(figure(ours)? / figure(floor)?))
        .collect();
    if ratios.is_empty() {
        return;
    }
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    for (which, value) in [
        ("median round", median(ratios.iter().copied())),
        ("lowest round", lowest),
        ("highest round", highest),
    ] {
        report.row(
            "rate",
            format!("{metric}, exitpool / {floor_name}, {which}"),
            "ratio",
            None,
            Some(value),
            None,
        );
    }
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let Bench {
        sizes, bins, runs, ..
    } = bench;
    let target = start_target().await?;
    let processes = Processes::start(
        bins,
        runs.gateway_threads,
        1,
        4096,
        sizes.rate_max_streams,
        "quic",
    )
    .await?;
    let tiny = Tinyproxy::start_if_installed(bench.tinyproxy.as_deref()).await?;
    let bare = BareRelay::start(target).await?;
    let bare_connect = BareRelay::speaking_connect(target).await?;
    let mut history = super::rate_history::HistoryPair::start(bench).await?;
    // Every path's processes stay up for all rounds; an idle one costs nothing
    // measurable next to the path being driven.
    let (mut directs, mut ourses, mut theirses, mut floors, mut connect_floors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=sizes.rate_rounds {
        eprintln!("   round {round}");
        directs.push(drive("direct", &Route::Direct, &[], target, sizes).await?);
        ourses.push(
            drive(
                "exitpool",
                &processes.path(),
                &processes.pids(),
                target,
                sizes,
            )
            .await?,
        );
        if let Some(t) = &tiny {
            theirses.push(drive("tinyproxy", &t.path(), &[t.pid()], target, sizes).await?);
        }
        floors.push(drive(bare_relay::NAME, &bare.path(), &bare.pids(), target, sizes).await?);
        let (name, path) = (bare_relay::CONNECT_NAME, bare_connect.path());
        connect_floors.push(drive(name, &path, &bare_connect.pids(), target, sizes).await?);
        history.round(target, sizes).await?;
    }
    processes.stop().await;
    drop((tiny, bare, bare_connect));
    let direct = RateRun::total(&directs);
    let ours = RateRun::total(&ourses);
    let theirs = (!theirses.is_empty()).then(|| RateRun::total(&theirses));
    let floor = RateRun::total(&floors);
    let connect_floor = RateRun::total(&connect_floors);

    let figures: [Figure<RateRun>; 8] = [
        (
            format!("connections per second, {} clients", sizes.rate_clients),
            "conn/s",
            |r| Some(r.per_second()),
        ),
        (
            "CPU per connection, proxy processes".into(),
            "CPU-µs",
            |r| r.proxy_micros(),
        ),
        (
            "CPU per connection, gateway process".into(),
            "CPU-µs",
            |r| r.process_micros(0),
        ),
        ("CPU per connection, agent process".into(), "CPU-µs", |r| {
            r.process_micros(1)
        }),
        (
            "CPU per connection, client and target".into(),
            "CPU-µs",
            |r| r.micros(0..1),
        ),
        ("connection time, p50".into(), "ms", |r| {
            Some(percentile(&r.times, 0.5))
        }),
        ("connection time, p99".into(), "ms", |r| {
            Some(percentile(&r.times, 0.99))
        }),
        ("errors".into(), "count", |r| Some(r.error_count() as f64)),
    ];
    let measured = [Some(&direct), Some(&ours), theirs.as_ref(), Some(&floor)];
    report.rows_per_path("rate", measured, figures.clone());
    for (metric, unit, figure) in figures {
        let metric = format!("{metric}, {}", bare_relay::CONNECT_NAME);
        report.row("rate", metric, unit, None, None, None);
        report.with_bare_relay(figure(&connect_floor));
    }
    let kinds: std::collections::BTreeSet<&String> = measured
        .iter()
        .flatten()
        .flat_map(|r| r.errors.keys())
        .collect();
    for kind in kinds {
        let count = |r: &RateRun| r.errors.get(kind).copied().unwrap_or(0) as f64;
        report.row(
            "rate",
            format!("errors: {kind}"),
            "count",
            Some(count(&direct)),
            Some(count(&ours)),
            theirs.as_ref().map(count),
        );
        report.with_bare_relay(Some(count(&floor)));
    }
    for (kind, &n) in &connect_floor.errors {
        let metric = format!("errors: {kind}, {}", bare_relay::CONNECT_NAME);
        report.row("rate", metric, "count", None, None, None);
        report.with_bare_relay(Some(n as f64));
    }
    let ratio = |r: &RateRun| r.per_second() / direct.per_second();
    report.row(
        "rate",
        "connections per second / direct",
        "ratio",
        None,
        Some(ratio(&ours)),
        theirs.as_ref().map(ratio),
    );
    report.with_bare_relay(Some(ratio(&floor)));
    let metric = format!(
        "connections per second / direct, {}",
        bare_relay::CONNECT_NAME
    );
    report.row("rate", metric, "ratio", None, None, None);
    report.with_bare_relay(Some(ratio(&connect_floor)));
    // Each round's exitpool-to-floor ratios: the spread says how far the
    // totals can be trusted on this machine.
    let per_round: [(&str, RunFigure); 2] = [
        ("connections per second", |r| Some(r.per_second())),
        ("CPU per connection, proxy processes", |r| r.proxy_micros()),
    ];
    for (metric, figure) in per_round {
        for (floor_name, floors) in [
            (bare_relay::NAME, &floors),
            (bare_relay::CONNECT_NAME, &connect_floors),
        ] {
            round_ratio_rows(report, metric, figure, &ourses, floor_name, floors);
        }
    }
    if let Some(threads) = runs.also_threads {
        let other =
            Processes::start(bins, threads, 1, 4096, sizes.rate_max_streams, "quic").await?;
        let name = format!("gateway --threads {threads}");
        let run = drive(&name, &other.path(), &other.pids(), target, sizes).await?;
        report.rows_with_threads(
            "rate",
            threads,
            &[
                ("connections per second", "conn/s", run.per_second()),
                (
                    "CPU per connection, proxy processes",
                    "CPU-µs",
                    run.proxy_micros().unwrap_or(f64::NAN),
                ),
                ("errors", "count", run.error_count() as f64),
            ],
        );
        other.stop().await;
    }
    // The history pair's rows after the paths' own, whose rows readers
    // (and tests/loadtest_smoke.rs) find by their metric's start.
    history.finish(report).await?;
    let streams = sizes
        .rate_max_streams
        .unwrap_or(exitpool_agent::DEFAULT_MAX_STREAMS);
    report.notes.push(format!(
        "rate: {} client loops (from 127.0.3.x) for {:.1} s per path in each of {} rounds (the paths taking turns; figures are totals over the rounds), each a fresh TCP connection, CONNECT where there is a proxy, and a {EXCHANGE}-byte request answered with {EXCHANGE} bytes, the target closing first; exitpool = the gateway (--threads {}) and one agent process (--max-streams {streams}); CPU per connection = the proxy processes' CPU time (the bare relay: entry as gateway, exit as agent) over the connections completed; errors by kind: exitpool's X-Exitpool-Error code, another proxy's HTTP status, or the I/O error",
        sizes.rate_clients,
        sizes.rate_time.as_secs_f64(),
        sizes.rate_rounds,
        runs.gateway_threads
    ));
    report.notes.push(format!(
        "rate: {} = {}",
        bare_relay::CONNECT_NAME,
        bare_relay::CONNECT_NOTE
    ));
    // The HTTPS proxy port over HTTP/1.1 and HTTP/2, in the same run.
    super::rate_h2::run(bench, report).await
}
