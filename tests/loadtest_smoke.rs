//! Keeps the load-test program working: one run of every scenario at tiny sizes,
//! through the real `gateway` and `agent` binaries. It checks that each scenario
//! produced its figures and that nothing failed; speed is the program's business,
//! not this test's (no figure here is compared with a threshold).

use exitpool_launcher::{Launch, Ready, Signal};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory of the binaries under test, and the `loadtest` in it (the
/// `exitpool-bench` package's binary: `cargo test --workspace` builds it next
/// to this package's binaries).
fn loadtest_binary() -> (&'static Path, PathBuf) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway")).parent().unwrap();
    let loadtest = bin_dir.join("loadtest");
    assert!(
        loadtest.is_file(),
        "{} is missing: run the suite with `cargo test --workspace`, or build it first with `cargo build -p exitpool-bench`",
        loadtest.display()
    );
    (bin_dir, loadtest)
}

#[tokio::test]
async fn every_loadtest_scenario_runs_at_tiny_sizes() {
    let (bin_dir, loadtest) = loadtest_binary();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("results.json");
    let chart = out.path().join("chart.svg");
    let output = Launch::new(&loadtest)
        .args(["all", "--quick", "--no-build"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--json")
        .arg(&json)
        .arg("--chart")
        .arg(&chart)
        .run(Duration::from_secs(300))
        .await
        .expect("the quick load test finishes within 5 minutes");
    let stderr = &output.stderr;
    assert!(output.status.success(), "loadtest failed:\n{stderr}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["failures"], serde_json::json!([]), "{stderr}");
    let results = doc["results"].as_array().unwrap();
    let column = |column: &str, scenario: &str, metric_start: &str| -> f64 {
        results
            .iter()
            .find(|r| {
                r["scenario"] == scenario && r["metric"].as_str().unwrap().starts_with(metric_start)
            })
            .and_then(|r| r[column].as_f64())
            .unwrap_or_else(|| panic!("no {column} figure for {scenario} / {metric_start}"))
    };
    let figure = |scenario: &str, metric_start: &str| column("exitpool", scenario, metric_start);
    assert!(figure("bulk", "download throughput") > 0.0);
    assert!(figure("bulk", "upload throughput") > 0.0);
    assert!(figure("connect", "fresh connect + 1 KiB, p50") > 0.0);
    // The bare two-hop QUIC relay, exitpool's floor, measured in the same run.
    assert!(column("bare_quic_relay", "bulk", "download throughput") > 0.0);
    assert!(column("bare_quic_relay", "connect", "fresh connect + 1 KiB, p50") > 0.0);
    // rate: connections per second on every path, what each costs the proxy,
    // and the failures counted (by kind in rows of their own).
    for path in ["direct", "exitpool", "bare_quic_relay"] {
        assert!(
            column(path, "rate", "connections per second") > 0.0,
            "{path}"
        );
        assert!(column(path, "rate", "errors") >= 0.0, "{path}");
    }
    assert!(figure("rate", "CPU per connection, proxy processes") >= 0.0);
    // Each round's ratio against the bare relay, next to the totals.
    assert!(
        figure(
            "rate",
            "connections per second, exitpool / bare relay, median round"
        ) > 0.0
    );
    assert!(
        column(
            "bare_quic_relay",
            "rate",
            "CPU per connection, proxy processes"
        ) >= 0.0
    );
    // The bare relay with a CONNECT exchange: the floor for exitpool's protocol,
    // in rows of its own, with exitpool's ratio to it.
    let with_connect = |metric: &str| format!("{metric}, bare relay with CONNECT");
    assert!(
        column(
            "bare_quic_relay",
            "rate",
            &with_connect("connections per second, 64 clients")
        ) > 0.0
    );
    assert!(
        column(
            "bare_quic_relay",
            "rate",
            &with_connect("CPU per connection, proxy processes")
        ) >= 0.0
    );
    assert_eq!(
        column("bare_quic_relay", "rate", &with_connect("errors")),
        0.0
    );
    assert!(
        figure(
            "rate",
            "connections per second, exitpool / bare relay with CONNECT, median round"
        ) > 0.0
    );
    assert_eq!(
        figure("fanout", "100 concurrent conns over 5 agents: errors"),
        0.0
    );
    assert_eq!(figure("fanout", "agents that served a stream"), 5.0);
    assert_eq!(
        figure("swarm", "agents connected to one gateway (200 started)"),
        200.0
    );
    assert!(figure("swarm", "restart: new gateway up to all agents back") > 0.0);
    assert!(figure("swarm", "crash restart: new gateway up to all agents back") > 0.0);
    assert!(figure("footprint", "agent process idle RSS") > 0.0);
    // fleet: every path moved data and opened connections, the forwarded ones
    // over their peer links (TLS/TCP from A, QUIC from C); Redis saw one script per first connection of a
    // session on a gateway and none for rotation or repeats; the whole quick
    // pool reached every gateway's directory.
    assert!(figure("fleet", "bulk download, forwarded path") > 0.0);
    assert!(figure("fleet", "connect + 1 KiB p50, forwarded path") > 0.0);
    assert!(figure("fleet", "bulk upload, forwarded-quic path") > 0.0);
    assert!(figure("fleet", "connect + 1 KiB p50, forwarded-quic path") > 0.0);
    assert!(figure("fleet", "peer streams A -> B per forwarded conn") >= 1.0);
    assert!(figure("fleet", "peer streams C -> B per forwarded conn") >= 1.0);
    assert_eq!(figure("fleet", "rotation: scripts (EVALSHA) / conn"), 0.0);
    let first = figure("fleet", "new session on A: scripts (EVALSHA) / conn");
    assert!(first > 0.0 && first <= 1.0, "{first}");
    assert_eq!(
        figure("fleet", "repeated session: scripts (EVALSHA) / conn"),
        0.0
    );
    assert_eq!(
        figure(
            "fleet",
            "mass join: agents in every directory (300 started)"
        ),
        300.0
    );
    assert!(figure("fleet", "Redis used_memory per agent") > 0.0);
    // The bulk pass with every process at an equal CPU share ran where cgroup
    // quotas can be set (root), or a note says why it did not; either way no
    // group of the run is left behind.
    let capped = results.iter().find(|r| {
        r["scenario"] == "fleet"
            && r["metric"]
                .as_str()
                .unwrap()
                .starts_with("bulk upload, forwarded / local, each process at")
    });
    match capped {
        Some(row) => assert!(row["exitpool"].as_f64().unwrap() > 0.0, "{row}"),
        None => assert!(
            doc["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|note| note.as_str().unwrap().contains("CPU was not run")),
            "neither the capped bulk pass's rows nor a note on why it did not run"
        ),
    }
    for hierarchy in ["/sys/fs/cgroup", "/sys/fs/cgroup/cpu"] {
        let left: Vec<_> = std::fs::read_dir(hierarchy)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("exitpool-loadtest-")
            })
            .collect();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..80.min(svg.len())]
    );
}

/// The fields of `/proc/PID/stat` after the process name (which may hold
/// spaces): state, parent pid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let parent = pid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_fields(*child).is_some_and(|fields| fields.get(1) == Some(&parent)))
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

#[tokio::test]
async fn a_loadtest_stopped_by_a_signal_stops_the_processes_it_started() {
    let (bin_dir, loadtest) = loadtest_binary();
    // Far more rounds than the test waits for: it is stopped in the first.
    let mut run = Launch::new(&loadtest)
        .args(["bulk", "--no-build", "--size", "64", "--rounds", "100"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .start(Ready::line("exitpool  down"), Duration::from_secs(120))
        .await
        .expect("the first exitpool round within 2 minutes");
    let started = children_of(run.pid());
    assert!(
        started.len() >= 2,
        "a gateway and an agent at least: {started:?}\n{}",
        run.tail()
    );

    run.signal(Signal::Term).unwrap();
    let status = run
        .exited(Duration::from_secs(30))
        .await
        .expect("loadtest ends on SIGTERM");
    assert!(!status.success(), "a stopped run is not a success");
    assert!(
        run.stderr().contains("stopped by a signal"),
        "{}",
        run.tail()
    );
    let left: Vec<u32> = started.into_iter().filter(|pid| running(*pid)).collect();
    assert!(
        left.is_empty(),
        "still running after loadtest stopped: {left:?}"
    );
}

/// The soak at 25 s (the real run is minutes; see docs/performance.md): every
/// customer protocol moved bytes, the gateway restarted once, no process
/// panicked, every byte the targets saw was counted in usage, and each
/// process's RSS, descriptors and threads were read at the warm-up and at the
/// end. Growth over 25 s is noise, not a leak, so only its figures are
/// required here; a growth FAIL is the one failure this run may report.
#[tokio::test]
async fn a_short_soak_counts_every_byte_and_reports_growth() {
    let (bin_dir, loadtest) = loadtest_binary();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("soak.json");
    let output = Launch::new(&loadtest)
        .args(["soak", "--soak-duration", "25", "--no-build"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--json")
        .arg(&json)
        .run(Duration::from_secs(240))
        .await
        .expect("the short soak finishes within 4 minutes");
    let stderr = &output.stderr;
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .unwrap_or_else(|error| panic!("no JSON report ({error}); loadtest said:\n{stderr}")),
    )
    .unwrap();
    let failures: Vec<&str> = doc["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let others: Vec<&&str> = failures
        .iter()
        .filter(|f| !f.starts_with("soak: growth:"))
        .collect();
    assert!(others.is_empty(), "{others:?}\n{stderr}");
    // A growth failure, and only that, makes the run exit non-zero.
    assert_eq!(output.status.success(), failures.is_empty(), "{stderr}");

    let results = doc["results"].as_array().unwrap();
    let figure = |metric: &str| -> f64 {
        results
            .iter()
            .find(|r| r["scenario"] == "soak" && r["metric"] == metric)
            .and_then(|r| r["exitpool"].as_f64())
            .unwrap_or_else(|| panic!("no soak figure {metric:?}"))
    };
    assert_eq!(figure("panics in any process's output"), 0.0);
    let moved = figure("bench: bytes up, moved (read by the targets)")
        + figure("bench: bytes down, moved (written by the targets)");
    assert!(moved > 0.0);
    assert_eq!(figure("bench: bytes counted - moved"), 0.0);
    assert_eq!(
        figure("bench: bytes up, counted in usage (/stats)"),
        figure("bench: bytes up, moved (read by the targets)")
    );
    assert_eq!(
        figure("bench: bytes down, counted in usage (/stats)"),
        figure("bench: bytes down, moved (written by the targets)")
    );
    assert_eq!(
        figure("bench: usage before gateway restart 1"),
        figure("bench: usage after gateway restart 1")
    );
    assert_eq!(figure("events: gateway restarts"), 1.0);
    assert!(figure("events: agent joins") > 4.0);
    for protocol in [
        "HTTP CONNECT",
        "plain HTTP",
        "SOCKS5",
        "HTTPS proxy CONNECT",
    ] {
        assert!(
            figure(&format!("{protocol}: exchanges")) > 0.0,
            "{protocol}"
        );
        assert!(
            figure(&format!(
                "{protocol}: refused target answered with an error"
            )) > 0.0,
            "{protocol}"
        );
    }
    for protocol in ["HTTP CONNECT", "SOCKS5", "HTTPS proxy CONNECT"] {
        assert!(
            figure(&format!(
                "{protocol}: reset mid-transfer, seen by the client"
            )) > 0.0,
            "{protocol}"
        );
    }
    // The restarted gateway: one window for each of its processes. In 25 s
    // on a loaded machine the new process's own warm-up may not fit; the
    // report then says so in a note rather than measuring a degenerate window.
    let notes: Vec<&str> = doc["notes"]
        .as_array()
        .map(|notes| notes.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    let restarted_unmeasured = notes.iter().any(|note| {
        note.contains("gateway (after its restart)") && note.contains("ended too soon")
    });
    let mut processes = vec!["gateway", "agent 1 (quic)", "agent 2 (tcp)"];
    if !restarted_unmeasured {
        processes.push("gateway (after its restart)");
    }
    for process in processes {
        // Memory: sampled through the window, judged on its medians.
        let rss = format!("{process}: RSS");
        assert!(
            figure(&format!("{rss} samples in the window")) > 0.0,
            "{rss}"
        );
        for what in [
            "at warm-up (median of the first fifth)",
            "at end (median of the last fifth)",
        ] {
            assert!(figure(&format!("{rss} {what}")) > 0.0, "{rss} {what}");
        }
        let growth = figure(&format!("{rss} growth (<= 5 %)"));
        assert!(growth.is_finite(), "{rss}");
        // Descriptors and threads: read at the quiet points.
        for measure in ["open fds", "threads"] {
            let metric = format!("{process}: {measure}");
            assert!(figure(&format!("{metric} at warm-up")) > 0.0, "{metric}");
            assert!(figure(&format!("{metric} at end")) > 0.0, "{metric}");
            assert!(
                figure(&format!("{metric} growth (<= 5 %)")).is_finite(),
                "{metric}"
            );
        }
    }
    // The table printed a verdict beside every judged growth figure.
    let verdicts = output
        .stdout
        .lines()
        .filter(|line| line.ends_with(" PASS") || line.ends_with(" FAIL"))
        .count();
    assert!(verdicts >= 3 * 3, "{}", output.stdout);
}
