//! Keeps the load-test program working: one run of every scenario at tiny sizes,
//! through the real `gateway` and `agent` binaries. It checks that each scenario
//! produced its figures and that nothing failed; speed is the program's business,
//! not this test's (no figure here is compared with a threshold).

use exitpool_launcher::Launch;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn every_loadtest_scenario_runs_at_tiny_sizes() {
    // `loadtest` is the `exitpool-bench` package's binary: `cargo test
    // --workspace` builds it next to this package's binaries.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway")).parent().unwrap();
    let loadtest = bin_dir.join("loadtest");
    assert!(
        loadtest.is_file(),
        "{} is missing: run the suite with `cargo test --workspace`, or build it first with `cargo build -p exitpool-bench`",
        loadtest.display()
    );
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
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..80.min(svg.len())]
    );
}
