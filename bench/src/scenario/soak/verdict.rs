//! The soak's checks and what it reports: growth of every window (memory
//! from the samples, descriptors and threads from the quiet points), panics
//! in any process's output, `bench`'s bytes against usage, and what the
//! customers and the faults did.
//!
//! Judged, each at most [`GROWTH_LIMIT`] percent more at a window's end than
//! at its start: RSS, open descriptors and threads, all read at the quiet
//! points once the process was at rest ([`super::rest`]: its memory no
//! longer falling after a trim, its blocking pool's idle threads retired).
//! The threads judged are all but tokio's blocking pool: its threads at rest
//! are one or two by how tokio wakes them in turn (see `rest`), not by what
//! the process holds, so they are shown beside, and fail only when one
//! neither ran nor retired (a blocking call that does not return). Shown
//! beside them, not judged: anonymous memory at the same points (a TLS/TCP
//! agent has about 1 MiB of it), the blocking pool's threads, and the
//! memory sampled all through the run with traffic flowing: the medians of
//! the window's first and last fifth and the least-squares trend over its
//! second half in KiB a minute (also carried over the whole window as a
//! percentage of the start). The samples follow the load a process carries
//! (a QUIC agent's buffers hold a `cut` download in flight), so they tell
//! where a failure comes from (memory still growing against memory taken at a
//! moment) rather than decide it.

use super::customers::{Customers, Protocol};
use super::faults::settle_usage;
use super::rig::{panics_in, Rig};
use super::sampling::{trend, Reading, Sample, Samples, Trend};
use super::schedule::{Run, UsageKept, Window};
use super::settings::{
    CHURN_EVERY, CHURN_SLOTS, CUT_DOWNLOAD, CUT_LOOPS, CUT_USER, GROWTH_LIMIT, KILL_EVERY,
    LOOPS_PER_PROTOCOL, MAX_EXCHANGE, SCENARIO, STABLE_AGENTS,
};
use crate::cli::Bench;
use crate::client::STEP;
use crate::launch::USER;
use crate::measure::MIB;
use crate::report::Report;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Picks one memory figure of a sample.
type Figure = fn(&Sample) -> u64;

/// Counts the panics, compares the bytes and judges every window.
pub async fn judge(run: Run<'_>, bench: &Bench, report: &mut Report) -> Result<()> {
    let wall = run.t0.elapsed();
    let Run {
        rig,
        customers,
        sampler,
        t0,
        usage_kept,
        windows,
        ..
    } = run;
    for (i, gateway) in rig.gateways.iter().enumerate() {
        *rig.panics.entry(rig.gateway_name(i)).or_default() += panics_in(&gateway.lines());
    }
    for slot in rig.stable.iter().chain(&rig.churn) {
        if let Some(process) = &slot.process {
            *rig.panics.entry(slot.name.clone()).or_default() += panics_in(&process.lines());
        }
    }
    let (moved_up, moved_down, counted) = settle_usage(rig, &customers).await;
    let cut_counted = rig.counted(CUT_USER).await?;
    let redis_usage = match &rig.redis {
        Some(redis) => Some(redis_usage(&redis.url()).await?),
        None => None,
    };
    let every = sampler.every;
    let samples = sampler.finish().await;
    growth(&windows, &samples, t0, every, report);
    panics(&rig.panics, report);
    bytes(
        &customers,
        &usage_kept,
        (moved_up, moved_down),
        counted,
        report,
    );
    if let Some((up, down)) = redis_usage {
        report.row(
            SCENARIO,
            "bench: bytes in Redis's fleet totals (since the Redis restart)",
            "bytes",
            None,
            Some((up + down) as f64),
            None,
        );
    }
    tally(&customers, cut_counted, report);
    for (event, n) in &rig.events {
        report.row(
            SCENARIO,
            format!("events: {event}"),
            "count",
            None,
            Some(*n as f64),
            None,
        );
    }
    report.row(
        SCENARIO,
        "run time",
        "s",
        None,
        Some(wall.as_secs_f64()),
        None,
    );
    note(rig, bench, wall, every, report);
    Ok(())
}

/// The growth table: RSS, descriptors and threads judged at the quiet
/// points, the rest shown.
fn growth(
    windows: &[Window],
    samples: &Samples,
    t0: Instant,
    every: Duration,
    report: &mut Report,
) {
    println!();
    println!(
        "soak: every process over its window. Judged (growth at most {GROWTH_LIMIT} %): RSS, open fds and threads (all but tokio's blocking pool) at the quiet points, each process at rest. Shown: anon(ymous memory) there, the blocking pool's threads (FAIL only if one is held by a call that never returns), and memory sampled every {:.1} s with traffic flowing ('run': medians of the first and last fifth, trend = least-squares slope over the second half)",
        every.as_secs_f64()
    );
    println!(
        "   {:<34} {:<9} {:>7} {:>7} {:>10} {:>10} {:>9} {:>11} {:>8}",
        "process", "figure", "from s", "to s", "start", "end", "growth", "KiB/min", "trend"
    );
    for window in windows {
        let (start, end) = (&window.start, &window.end);
        let label = &window.label;
        if end.pid != start.pid {
            report.failures.push(format!(
                "soak: {label}: pid {} at the start of its window, {} at its end",
                start.pid, end.pid
            ));
        }
        let (from, to) = (start.at.duration_since(t0), end.at.duration_since(t0));
        let window_s = (to - from).as_secs_f64();
        report.row(
            SCENARIO,
            format!("{label}: window"),
            "s",
            None,
            Some(window_s),
            None,
        );
        rest(label, start, end, report);
        for (figure, a, b, judged) in [
            ("RSS", start.rss_kib, end.rss_kib, true),
            ("anon", start.anon_kib, end.anon_kib, false),
        ] {
            quiet_memory(label, figure, (from, to), (a, b), judged, report);
        }
        let of = samples.get(&start.name).map(Vec::as_slice).unwrap_or(&[]);
        let figures: [(&str, Figure); 2] = [("RSS", |s| s.rss_kib), ("anon", |s| s.anon_kib)];
        for (figure, pick) in figures {
            match trend(of, start.pid, from, to, pick) {
                Some(t) => memory(label, figure, (from, to), &t, report),
                None => report.notes.push(format!(
                    "soak: {label}: fewer than ten {figure} samples in its window, no trend shown"
                )),
            }
        }
        // The process's own threads: the blocking pool's, shown below, come
        // and go with tokio's wake-ups (see `rest`).
        let own = |r: &Reading| r.threads.saturating_sub(r.pool);
        for (figure, a, b) in [
            ("open fds", start.fds, end.fds),
            ("threads", own(start), own(end)),
        ] {
            counts(label, figure, (from, to), (a, b), report);
            if figure == "open fds" && a != b {
                fd_change(label, start, end, (from, to), report);
            }
            if figure == "threads" && a != b {
                thread_change(label, start, end, (from, to), report);
            }
        }
        pool(label, (from, to), (start, end), report);
    }
}

/// How long each end of a window waited for its process at rest, and a note
/// when it was not at rest within the bound.
fn rest(label: &str, start: &Reading, end: &Reading, report: &mut Report) {
    for (when, reading) in [("at warm-up", start), ("at end", end)] {
        for (what, rested) in [
            ("memory", reading.memory_rest),
            ("threads", reading.threads_rest),
        ] {
            match rested {
                Some(after) => report.row(
                    SCENARIO,
                    format!("{label}: {what} at rest {when}, after"),
                    "s",
                    None,
                    Some(after.as_secs_f64()),
                    None,
                ),
                None => {
                    let what = format!(
                        "soak: {label}: {what} {when} not at rest within the bound; the reading after it is the one judged"
                    );
                    println!("   {what}");
                    report.notes.push(what);
                }
            }
        }
    }
}

/// RSS or anonymous memory at a window's two quiet points: printed,
/// reported and, for RSS, judged.
fn quiet_memory(
    label: &str,
    figure: &str,
    (from, to): (Duration, Duration),
    (a, b): (u64, u64),
    judged: bool,
    report: &mut Report,
) {
    let growth = (b as f64 - a as f64) / (a.max(1) as f64) * 100.0;
    let pass = !judged || growth <= GROWTH_LIMIT;
    println!(
        "   {label:<34} {figure:<9} {:>7.0} {:>7.0} {a:>10} {b:>10} {growth:>+8.1}% {:>11} {:>8} {}",
        from.as_secs_f64(),
        to.as_secs_f64(),
        "",
        "",
        match (judged, pass) {
            (false, _) => "",
            (true, true) => "PASS",
            (true, false) => "FAIL",
        }
    );
    let metric = format!("{label}: {figure}");
    for (what, value) in [
        ("at the warm-up quiet point", a),
        ("at the end quiet point", b),
    ] {
        report.row(
            SCENARIO,
            format!("{metric} {what}"),
            "KiB",
            None,
            Some(value as f64),
            None,
        );
    }
    let limit = if judged {
        format!(" (<= {GROWTH_LIMIT} %)")
    } else {
        " (shown, not judged)".to_owned()
    };
    report.row(
        SCENARIO,
        format!("{metric} growth{limit}"),
        "%",
        None,
        Some(growth),
        None,
    );
    if !pass {
        report.failures.push(format!(
            "soak: growth: {metric} at the quiet points {a} -> {b} KiB ({growth:+.1} %), more than {GROWTH_LIMIT} %"
        ));
    }
}

/// One memory figure sampled over one window with traffic flowing: printed
/// and reported, never judged.
fn memory(
    label: &str,
    figure: &str,
    (from, to): (Duration, Duration),
    t: &Trend,
    report: &mut Report,
) {
    println!(
        "   {label:<34} {:<9} {:>7.0} {:>7.0} {:>10.0} {:>10.0} {:>+8.1}% {:>+11.1} {:>+7.1}%",
        format!("{figure} run"),
        from.as_secs_f64(),
        to.as_secs_f64(),
        t.start,
        t.end,
        t.growth,
        t.slope,
        t.slope_growth,
    );
    let metric = format!("{label}: {figure}");
    for (what, unit, value) in [
        ("samples in the window", "count", t.samples as f64),
        ("at warm-up (median of the first fifth)", "KiB", t.start),
        ("at end (median of the last fifth)", "KiB", t.end),
        ("trend over the second half", "KiB/min", t.slope),
        ("growth of the medians (shown, not judged)", "%", t.growth),
        ("trend carried over the window", "%", t.slope_growth),
    ] {
        report.row(
            SCENARIO,
            format!("{metric} {what}"),
            unit,
            None,
            Some(value),
            None,
        );
    }
}

/// Descriptors or threads at the two quiet points of one window.
fn counts(
    label: &str,
    figure: &str,
    (from, to): (Duration, Duration),
    (a, b): (u64, u64),
    report: &mut Report,
) {
    let growth = (b as f64 - a as f64) / (a.max(1) as f64) * 100.0;
    let pass = growth <= GROWTH_LIMIT;
    println!(
        "   {label:<34} {figure:<9} {:>7.0} {:>7.0} {a:>10} {b:>10} {growth:>+8.1}% {:>11} {:>8} {}",
        from.as_secs_f64(),
        to.as_secs_f64(),
        "",
        "",
        if pass { "PASS" } else { "FAIL" }
    );
    let metric = format!("{label}: {figure}");
    for (what, value) in [("at warm-up", a as f64), ("at end", b as f64)] {
        report.row(
            SCENARIO,
            format!("{metric} {what}"),
            "count",
            None,
            Some(value),
            None,
        );
    }
    report.row(
        SCENARIO,
        format!("{metric} growth (<= {GROWTH_LIMIT} %)"),
        "%",
        None,
        Some(growth),
        None,
    );
    if !pass {
        report.failures.push(format!(
            "soak: growth: {metric} grew {growth:.1} % ({a} -> {b}), more than {GROWTH_LIMIT} %"
        ));
    }
}

/// The blocking pool's threads at the two quiet points, shown, and judged
/// only on threads held by a call that never returned (`Reading::stuck`).
fn pool(
    label: &str,
    (from, to): (Duration, Duration),
    (start, end): (&Reading, &Reading),
    report: &mut Report,
) {
    let stuck = start.stuck + end.stuck;
    println!(
        "   {label:<34} {:<9} {:>7.0} {:>7.0} {:>10} {:>10} {:>9} {:>11} {:>8} {}",
        "pool",
        from.as_secs_f64(),
        to.as_secs_f64(),
        start.pool,
        end.pool,
        "",
        "",
        "",
        if stuck == 0 { "" } else { "FAIL" }
    );
    for (when, reading) in [("at warm-up", start), ("at end", end)] {
        for (what, value) in [
            ("blocking-pool threads", reading.pool),
            ("threads in all", reading.threads),
        ] {
            report.row(
                SCENARIO,
                format!("{label}: {what} {when} (shown, not judged)"),
                "count",
                None,
                Some(value as f64),
                None,
            );
        }
        if reading.stuck > 0 {
            report.failures.push(format!(
                "soak: threads: {label}: {} blocking-pool thread(s) {when} neither ran nor retired while traffic was paused, past tokio's 10 s keep-alive: held by a call that does not return",
                reading.stuck
            ));
        }
    }
}

/// Which threads, by name, a window's ends had.
fn thread_change(
    label: &str,
    start: &Reading,
    end: &Reading,
    (from, to): (Duration, Duration),
    report: &mut Report,
) {
    let names = |r: &Reading| {
        r.thread_kinds
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = format!(
        "soak: {label}'s threads by name at {:.0} s: {}; at {:.0} s: {}",
        from.as_secs_f64(),
        names(start),
        to.as_secs_f64(),
        names(end)
    );
    println!("   {what}");
    report.notes.push(what);
}

/// Which descriptors and sockets came and went in a window.
fn fd_change(
    label: &str,
    start: &Reading,
    end: &Reading,
    (from, to): (Duration, Duration),
    report: &mut Report,
) {
    let (from, to) = (from.as_secs_f64(), to.as_secs_f64());
    let kinds = |r: &Reading| {
        r.fd_kinds
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = format!(
        "soak: {label}'s descriptors by kind at {from:.0} s: {}; at {to:.0} s: {}",
        kinds(start),
        kinds(end)
    );
    println!("   {what}");
    report.notes.push(what);
    // Which sockets came and went: a tunnel of an agent that rejoined is
    // new, so the one too many is among the new ones.
    let differ = |a: &Reading, b: &Reading| {
        a.sockets
            .iter()
            .filter(|(inode, _)| !b.sockets.contains_key(inode))
            .map(|(_, what)| what.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let what = format!(
        "soak: {label}'s sockets gone by {to:.0} s: {}; new since {from:.0} s: {}",
        differ(start, end),
        differ(end, start)
    );
    println!("   {what}");
    report.notes.push(what);
}

/// Panic lines in any process's output: none may be.
fn panics(by_process: &std::collections::BTreeMap<String, usize>, report: &mut Report) {
    let panics: usize = by_process.values().sum();
    println!(
        "   panics in any process's output: {panics} {}",
        if panics == 0 { "PASS" } else { "FAIL" }
    );
    report.row(
        SCENARIO,
        "panics in any process's output",
        "count",
        None,
        Some(panics as f64),
        None,
    );
    if panics > 0 {
        let by: Vec<String> = by_process
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}: {n}"))
            .collect();
        report
            .failures
            .push(format!("soak: panics: {}", by.join(", ")));
    }
}

/// `bench`'s bytes: at the targets against usage, the tunnel clients' count
/// against the tunnel target's, and usage across each gateway restart.
fn bytes(
    customers: &Customers,
    usage_kept: &[UsageKept],
    (moved_up, moved_down): (u64, u64),
    counted: (u64, u64),
    report: &mut Report,
) {
    let equal = counted == (moved_up, moved_down);
    println!(
        "   bench bytes moved (at the targets) up {moved_up} down {moved_down}; counted (/stats) up {} down {}: {}",
        counted.0,
        counted.1,
        if equal { "equal PASS" } else { "FAIL" }
    );
    for (metric, value) in [
        ("bench: bytes up, moved (read by the targets)", moved_up),
        ("bench: bytes up, counted in usage (/stats)", counted.0),
        (
            "bench: bytes down, moved (written by the targets)",
            moved_down,
        ),
        ("bench: bytes down, counted in usage (/stats)", counted.1),
    ] {
        report.row(SCENARIO, metric, "bytes", None, Some(value as f64), None);
    }
    let difference = (counted.0 + counted.1) as f64 - (moved_up + moved_down) as f64;
    report.row(
        SCENARIO,
        "bench: bytes counted - moved",
        "bytes",
        None,
        Some(difference),
        None,
    );
    if !equal {
        report.failures.push(format!(
            "soak: bytes: bench moved up {moved_up} down {moved_down}, usage counted up {} down {}",
            counted.0, counted.1
        ));
    }
    let tunnel_target = customers.tunnel_counted.get();
    let tally = customers.tally.lock().expect("tally lock");
    let clients = (tally.tunnel_moved.up, tally.tunnel_moved.down);
    report.row(
        SCENARIO,
        "bench: tunnel bytes up, clients' count",
        "bytes",
        None,
        Some(clients.0 as f64),
        None,
    );
    report.row(
        SCENARIO,
        "bench: tunnel bytes down, clients' count",
        "bytes",
        None,
        Some(clients.1 as f64),
        None,
    );
    if clients != tunnel_target {
        report.failures.push(format!(
            "soak: bytes: the tunnel clients counted {clients:?} (up, down), the tunnel target {tunnel_target:?}"
        ));
    }
    for (i, (before, after)) in usage_kept.iter().enumerate() {
        for (when, usage) in [("before", before), ("after", after)] {
            report.row(
                SCENARIO,
                format!("bench: usage {when} gateway restart {}", i + 1),
                "bytes",
                None,
                Some((usage.0 + usage.1) as f64),
                None,
            );
        }
        if before != after {
            report.failures.push(format!(
                "soak: bytes: usage {before:?} before the gateway restart, {after:?} after"
            ));
        }
    }
}

/// What the customers did: requests by protocol and outcome, and `cut`'s
/// downloads.
fn tally(customers: &Customers, cut_counted: (u64, u64), report: &mut Report) {
    let tally = customers.tally.lock().expect("tally lock");
    for ((protocol, what), n) in &tally.ok {
        report.row(
            SCENARIO,
            format!("{}: {what}", protocol.name()),
            "count",
            None,
            Some(*n as f64),
            None,
        );
    }
    for ((protocol, why), n) in &tally.failed {
        report.row(
            SCENARIO,
            format!("{}: failed, {why}", protocol.name()),
            "count",
            None,
            Some(*n as f64),
            None,
        );
    }
    for protocol in Protocol::ALL {
        if !tally.ok.contains_key(&(protocol, "exchanges")) {
            report
                .failures
                .push(format!("soak: no {} exchange succeeded", protocol.name()));
        }
    }
    for (metric, unit, value) in [
        ("cut: downloads completed", "count", tally.cut_completed),
        ("cut: downloads cut by a fault", "count", tally.cut_cut),
        (
            "cut: downloads that did not open",
            "count",
            tally.cut_failed_to_open,
        ),
        (
            "cut: bytes down, clients' count",
            "bytes",
            tally.cut_bytes_down,
        ),
        ("cut: bytes down, counted in usage", "bytes", cut_counted.1),
    ] {
        report.row(SCENARIO, metric, unit, None, Some(value as f64), None);
    }
}

/// The run described, for the report's notes.
fn note(rig: &Rig, bench: &Bench, wall: Duration, every: Duration, report: &mut Report) {
    let fleet = rig.redis.is_some();
    report.notes.push(format!(
        "soak: {:.0} s{}; {} gateway process(es) (--threads {}), {STABLE_AGENTS} agent processes throughout (QUIC and TLS/TCP), {CHURN_SLOTS} more joining and leaving in turn every {} s (every {KILL_EVERY}rd leave a SIGKILL), one graceful gateway restart{}; customer `bench`: {LOOPS_PER_PROTOCOL} loops on each of HTTP CONNECT, plain HTTP, SOCKS5 and CONNECT over TLS (HTTPS proxy), echoes of 1 B to {} KiB, a tenth to a refused port, on tunnels a tenth to a target that resets after half; its connections take turns with the faults, so its bytes are compared exactly: the targets' reads and writes against the gateways' /stats (usage survives a restart in the state directory's usage.json); customer `cut`: {CUT_LOOPS} loops of {} MiB downloads cut by the faults, shown not compared; growth windows from the end of the first fifth (the warm-up) to the end, a restarted process's first one until its restart and its new one from one warm-up after the restart; judged at both ends of a window, at quiet points (traffic paused, every agent joined, no stream open) with each process at rest: RSS (Rss of /proc/PID/smaps_rollup) once it held within 1 % over a malloc_trim period and a poll (at most 10 s), open descriptors, and threads (/proc/PID/task; the gateway exposes no task count) but tokio's blocking pool (named tokio-rt-worker, less a multi-thread runtime's workers), read once every pool thread had run since traffic stopped, idle ones having retired (at most 13 s; tokio's keep-alive is 10 s); shown, not judged: Anonymous memory at those points, the blocking pool's threads (a pool thread that neither ran nor retired in that time fails: a call that does not return), and memory sampled every {:.1} s with traffic flowing (medians of each window's first and last fifth, least-squares trend of its second half)",
        wall.as_secs_f64(),
        if fleet { ", fleet: two gateways on one redis-server" } else { "" },
        rig.gateways.len(),
        bench.runs.gateway_threads,
        CHURN_EVERY.as_secs(),
        if fleet { ", one Redis restart (SIGKILL, back empty: its fleet totals start again from zero; each gateway's own totals, which /stats shows, are in its state directory)" } else { "" },
        MAX_EXCHANGE / 1024,
        CUT_DOWNLOAD / MIB,
        every.as_secs_f64(),
    ));
}

/// `bench`'s bytes up and down in the fleet's Redis totals.
async fn redis_usage(url: &str) -> Result<(u64, u64)> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(STEP, client.get_multiplexed_async_connection()).await??;
    let (up, down): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(format!("exitpool:usage:customer:{USER}"))
        .arg("bytes_up")
        .arg("bytes_down")
        .query_async(&mut conn)
        .await?;
    Ok((up.unwrap_or(0), down.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(a: u64, b: u64, judged: bool) -> Report {
        let mut report = Report::default();
        let window = (Duration::from_secs(120), Duration::from_secs(240));
        quiet_memory("gateway", "RSS", window, (a, b), judged, &mut report);
        report
    }

    #[test]
    fn rss_at_the_quiet_points_is_judged_and_the_samples_are_not() {
        let failed = quiet(1000, 1060, true);
        assert_eq!(failed.failures.len(), 1, "{:?}", failed.failures);
        assert!(
            failed.failures[0].starts_with(
                "soak: growth: gateway: RSS at the quiet points 1000 -> 1060 KiB (+6.0 %)"
            ),
            "{:?}",
            failed.failures
        );
        assert!(quiet(1000, 1050, true).failures.is_empty());
        assert!(quiet(1000, 900, true).failures.is_empty());
        // Anonymous memory is shown, never judged.
        assert!(quiet(1000, 2000, false).failures.is_empty());
        // Samples with traffic flowing that doubled, still growing: shown.
        let t = Trend {
            samples: 60,
            start: 1000.0,
            end: 2000.0,
            growth: 100.0,
            slope: 500.0,
            slope_growth: 100.0,
        };
        let mut report = Report::default();
        let window = (Duration::from_secs(120), Duration::from_secs(240));
        memory("agent 1 (quic)", "RSS", window, &t, &mut report);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }

    fn reading(threads: u64, pool: u64, stuck: u64) -> Reading {
        Reading {
            name: "agent 1 (quic)".into(),
            at: Instant::now(),
            pid: 7,
            fds: 12,
            fd_kinds: Default::default(),
            sockets: Default::default(),
            threads,
            thread_kinds: Default::default(),
            pool,
            rss_kib: 8000,
            anon_kib: 1000,
            memory_rest: Some(Duration::from_secs(3)),
            threads_rest: (stuck == 0).then_some(Duration::from_secs(5)),
            stuck,
        }
    }

    #[test]
    fn the_pool_is_shown_apart_and_fails_only_on_a_stuck_thread() {
        let window = (Duration::from_secs(120), Duration::from_secs(600));
        // 6 -> 7 threads, the seventh a pool thread at rest: shown, no failure.
        let (start, end) = (reading(6, 1, 0), reading(7, 2, 0));
        let mut report = Report::default();
        pool("agent 1 (quic)", window, (&start, &end), &mut report);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        // One held by a call that did not return: a failure.
        let mut report = Report::default();
        pool(
            "agent 1 (quic)",
            window,
            (&start, &reading(7, 2, 1)),
            &mut report,
        );
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(
            report.failures[0]
                .starts_with("soak: threads: agent 1 (quic): 1 blocking-pool thread(s) at end"),
            "{:?}",
            report.failures
        );
    }
}
