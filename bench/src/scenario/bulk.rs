//! bulk: one CONNECT, N MiB down and then up; MB/s and CPU seconds per GiB,
//! direct, through exitpool, through tinyproxy when it is on PATH, and through
//! the bare two-hop QUIC relay, the floor under exitpool. The paths take turns,
//! round after round, and the table shows medians.

use crate::bare_relay::{self, BareRelay};
use crate::cli::Bench;
use crate::client::{one_transfer, start_target, Route, Transfer};
use crate::launch::Processes;
use crate::measure::{median, udp_rcvbuf_errors, MIB};
use crate::report::Report;
use crate::tinyproxy::Tinyproxy;
use anyhow::{Context, Result};

/// The bulk path through exitpool with the agent's tunnel on TLS over TCP.
const OVER_TCP: &str = "exitpool-tcp";

/// One path through which bulk moves data, with every round's transfers.
struct BulkPath {
    name: String,
    route: Route,
    pids: Vec<u32>,
    down: Vec<Transfer>,
    up: Vec<Transfer>,
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let Bench {
        sizes, bins, runs, ..
    } = bench;
    let target = start_target().await?;
    let processes = Processes::start(bins, runs.gateway_threads, 1, 1024, None, "quic").await?;
    // The same binaries with the agent on the TLS-over-TCP tunnel.
    let over_tcp = Processes::start(bins, runs.gateway_threads, 1, 1024, None, "tcp").await?;
    let other = match runs.also_threads {
        Some(threads) => Some((
            threads,
            Processes::start(bins, threads, 1, 1024, None, "quic").await?,
        )),
        None => None,
    };
    let tiny = Tinyproxy::start_if_installed(bench.tinyproxy.as_deref()).await?;
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
        path(OVER_TCP, over_tcp.path(), over_tcp.pids()),
    ];
    if let Some(t) = &tiny {
        paths.push(path("tinyproxy", t.path(), vec![t.pid()]));
    }
    paths.push(path(bare_relay::NAME, bare.path(), bare.pids()));
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
        report.with_bare_relay(of(bare_relay::NAME));
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
        report.with_bare_relay(minus(bare_relay::NAME));
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
            report.with_bare_relay(of(bare_relay::NAME));
        }
    }
    // The TLS/TCP tunnel against the QUIC one and the bare relay, same run.
    for (way, up) in [("download", false), ("upload", true)] {
        let (Some(tcp), Some(quic)) = (get(OVER_TCP, up), get("exitpool", up)) else {
            continue;
        };
        let bare = get(bare_relay::NAME, up);
        report.row(
            "bulk",
            format!("{way} throughput, TLS/TCP tunnel"),
            "MB/s",
            None,
            Some(tcp.mb_per_s),
            None,
        );
        report.with_bare_relay(bare.map(|b| b.mb_per_s));
        report.row(
            "bulk",
            format!("{way} CPU, whole path, TLS/TCP tunnel"),
            "CPU-s/GiB",
            None,
            Some(tcp.cpu_per_gib),
            None,
        );
        report.with_bare_relay(bare.map(|b| b.cpu_per_gib));
        for (metric, value) in [
            (
                format!("{way} throughput, TLS/TCP tunnel / QUIC tunnel"),
                Some(tcp.mb_per_s / quic.mb_per_s),
            ),
            (
                format!("{way} CPU, TLS/TCP tunnel / QUIC tunnel"),
                Some(tcp.cpu_per_gib / quic.cpu_per_gib),
            ),
            (
                format!("{way} throughput, TLS/TCP tunnel / bare relay"),
                bare.map(|b| tcp.mb_per_s / b.mb_per_s),
            ),
            (
                format!("{way} CPU, TLS/TCP tunnel / bare relay"),
                bare.map(|b| tcp.cpu_per_gib / b.cpu_per_gib),
            ),
        ] {
            report.row("bulk", metric, "ratio", None, value, None);
        }
    }
    // The ratio each round measured, so the spread shows next to the medians.
    let named = |name: &str| paths.iter().find(|p| p.name == name);
    for other in ["tinyproxy", bare_relay::NAME] {
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
        "bulk: one connection per transfer, {} MiB each way after an 8 MiB warm-up, {} rounds with the paths taking turns, medians shown; exitpool = the gateway (--threads {}) and agent binaries, each its own process (QUIC over loopback; exitpool-tcp: the same with the agent on --transport tcp); CPU 'whole path' = this process (client and target) plus the proxy's processes",
        sizes.bulk_mib, sizes.bulk_rounds, runs.gateway_threads
    ));
    report.notes.push(bare_relay::NOTE.into());
    if let Some((_, other)) = other {
        other.stop().await;
    }
    processes.stop().await;
    over_tcp.stop().await;
    Ok(())
}

/// Field by field medians of several runs of one transfer.
pub(crate) fn median_transfer(runs: &[Transfer]) -> Transfer {
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
