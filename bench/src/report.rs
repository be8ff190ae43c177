//! What a run found and how it is shown: rows with one column per path, notes
//! and failures; the machine's setup; the printed table and the JSON file.

use crate::cli::{Args, Sizes};
use crate::measure::meminfo_kib;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub metric: String,
    pub unit: &'static str,
    pub direct: Option<f64>,
    pub exitpool: Option<f64>,
    pub tinyproxy: Option<f64>,
    /// The bare two-hop QUIC relay (see `bare_relay`), where measured.
    pub bare_relay: Option<f64>,
}

/// A figure every path has: its metric, its unit and how to read it from
/// one path's run (`None` where that path has no such figure).
pub type Figure<T> = (String, &'static str, fn(&T) -> Option<f64>);

/// Everything a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        unit: &'static str,
        direct: Option<f64>,
        exitpool: Option<f64>,
        tinyproxy: Option<f64>,
    ) {
        self.rows.push(Row {
            scenario,
            metric: metric.into(),
            unit,
            direct,
            exitpool,
            tinyproxy,
            bare_relay: None,
        });
    }

    /// Adds the bare relay's figure to the row added last.
    pub fn with_bare_relay(&mut self, value: Option<f64>) {
        if let Some(row) = self.rows.last_mut() {
            row.bare_relay = value;
        }
    }

    /// One row per figure, read from each path's run: direct, exitpool,
    /// tinyproxy and the bare relay, in that order (`None` where a path was not
    /// measured).
    pub fn rows_per_path<T>(
        &mut self,
        scenario: &'static str,
        runs: [Option<&T>; 4],
        figures: impl IntoIterator<Item = Figure<T>>,
    ) {
        for (metric, unit, figure) in figures {
            let [direct, exitpool, tinyproxy, bare] = runs.map(|run| run.and_then(figure));
            self.row(scenario, metric, unit, direct, exitpool, tinyproxy);
            self.with_bare_relay(bare);
        }
    }

    /// exitpool-only figures measured with the gateway on `threads` workers.
    pub fn rows_with_threads(
        &mut self,
        scenario: &'static str,
        threads: usize,
        figures: &[(&str, &'static str, f64)],
    ) {
        for &(metric, unit, value) in figures {
            let metric = format!("{metric}, gateway --threads {threads}");
            self.row(scenario, metric, unit, None, Some(value), None);
        }
    }

    pub fn find(&self, scenario: &str, metric: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.metric == metric)
    }
}

/// The machine, the build and the sizes, printed first and stored in the JSON.
pub fn setup(args: &Args, sizes: &Sizes) -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = meminfo_kib("MemTotal").map(|k| k / 1024).unwrap_or(0);
    json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "cores": cores,
        "cpu": cpu,
        "kernel": kernel,
        "memory_mib": mem,
        "profile": if cfg!(debug_assertions) { "dev (debug assertions on)" } else { "release" },
        "runtime": format!("client and target: tokio multi-thread in this process; gateway process: --threads {}, RUST_LOG={} (info: an access line per connection); agent processes: their default (current-thread)", args.gateway_threads, args.gateway_log),
        "bulk_mib": sizes.bulk_mib,
        "bulk_rounds": sizes.bulk_rounds,
        "connects": sizes.connects,
        "concurrency": sizes.concurrency,
        "rate_seconds": sizes.rate_time.as_secs_f64(),
        "rate_clients": sizes.rate_clients,
        "rate_agent_max_streams": sizes.rate_max_streams.unwrap_or(exitpool_agent::DEFAULT_MAX_STREAMS),
        "fanout_conns": sizes.fanout_conns,
        "fanout_agents": sizes.fanout_agents,
        "fanout_kib": sizes.fanout_kib,
        "swarm_agents": sizes.swarm,
        "fleet_agents": sizes.fleet_agents,
        "udp_rmem_max": std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default().trim(),
    })
}

pub fn print_setup(setup: &Value) {
    println!("exitpool load test");
    for key in [
        "scenario",
        "cores",
        "cpu",
        "kernel",
        "memory_mib",
        "profile",
        "runtime",
        "udp_rmem_max",
    ] {
        println!("  {key:<14} {}", setup[key].to_string().trim_matches('"'));
    }
    println!(
        "  sizes          bulk {} MiB x {} rounds; connect {} x (1 + {} workers); rate {} clients x {} s, agent --max-streams {}; fanout {} conns / {} agents x {} KiB; swarm {} agents; fleet {} agents",
        setup["bulk_mib"], setup["bulk_rounds"], setup["connects"], setup["concurrency"],
        setup["rate_clients"], setup["rate_seconds"], setup["rate_agent_max_streams"], setup["fanout_conns"],
        setup["fanout_agents"], setup["fanout_kib"], setup["swarm_agents"], setup["fleet_agents"]
    );
    println!("  units          MB/s = 10^6 bytes/s; CPU from /proc/PID/stat utime+stime");
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

pub fn print_table(report: &Report) {
    println!();
    println!(
        "{:<10} {:<44} {:<9} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "measurement", "unit", "direct", "exitpool", "tinyproxy", "bare QUIC"
    );
    println!("{}", "-".repeat(109));
    for r in &report.rows {
        println!(
            "{:<10} {:<44} {:<9} {:>10} {:>10} {:>10} {:>10}",
            r.scenario,
            r.metric,
            r.unit,
            fmt_value(r.direct),
            fmt_value(r.exitpool),
            fmt_value(r.tinyproxy),
            fmt_value(r.bare_relay)
        );
    }
    if !report.notes.is_empty() {
        println!();
        println!("notes:");
        for note in &report.notes {
            println!("  - {note}");
        }
    }
    if !report.failures.is_empty() {
        println!();
        println!("FAILURES:");
        for failure in &report.failures {
            println!("  - {failure}");
        }
    }
    println!();
}

/// The whole report as JSON: setup, one object per row, notes, failures.
pub fn write_json(
    path: &Path,
    setup: &Value,
    report: &Report,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|r| {
            json!({"scenario": r.scenario, "metric": r.metric, "unit": r.unit,
            "direct": r.direct, "exitpool": r.exitpool, "tinyproxy": r.tinyproxy,
            "bare_quic_relay": r.bare_relay})
        })
        .collect();
    let doc = json!({"setup": setup, "results": rows, "notes": report.notes,
        "failures": report.failures, "wall_seconds": elapsed.as_secs_f64()});
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    Ok(())
}
