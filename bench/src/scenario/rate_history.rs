//! rate's history rows: what the usage history costs a connection. Two more
//! gateways (each with one agent process) take their turns in `rate`'s
//! rounds: one whose benchmark customer is an account in its SQLite store,
//! so every connection's usage is counted and written to the history once a
//! second, and one with a `--users` file, which opens no store at all (the
//! customer comes from flags). Their ratio, round by round, says whether
//! history costs the hot path (issue 32: no worse than without).

use super::rate_run::{drive, RateRun, EXCHANGE};
use crate::cli::{Bench, Sizes};
use crate::launch::{wait_until, Processes, PASSWORD, USER};
use crate::report::Report;
use anyhow::{bail, Result};
use exitpool_gateway::control_link::exitpool_control::{self, model::NewAccount};
use exitpool_gateway::control_link::exitpool_control::{AccountRef, Store};
use exitpool_gateway::control_link::SQLITE_FILE;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest the rounds' usage may take to reach the store's history.
const FLUSH_BOUND: Duration = Duration::from_secs(30);

/// The two gateways, each with one agent process.
pub(super) struct HistoryPair {
    /// The customer in a SQLite store that records its history.
    store: Processes,
    /// The customer from flags beside a `--users` file: no store.
    file: Processes,
    /// The store's SQLite file.
    database: String,
    _dir: tempfile::TempDir,
    /// Each round's run of each, in order.
    pub(super) store_runs: Vec<RateRun>,
    pub(super) file_runs: Vec<RateRun>,
}

impl HistoryPair {
    pub(super) async fn start(bench: &Bench) -> Result<HistoryPair> {
        let (bins, sizes, runs) = (&bench.bins, &bench.sizes, &bench.runs);
        let streams = sizes.rate_max_streams;
        let threads = runs.gateway_threads;
        let dir = tempfile::tempdir()?;
        // The customer is put in the store before the gateway opens it (an
        // admin token would also guard /stats, which the launcher reads).
        let database = dir.path().join(SQLITE_FILE);
        let database = database.to_string_lossy().into_owned();
        let store = Store::open(&database, Default::default()).await?;
        let account = NewAccount {
            name: USER.into(),
            password: Some(PASSWORD.into()),
            ..NewAccount::default()
        };
        store.create(None, account).await?;
        store.close().await;
        let store = Processes::start_with(
            bins,
            threads,
            1,
            4096,
            streams,
            "quic",
            &["--database", &database],
        )
        .await?;
        let users = dir.path().join("users.toml");
        std::fs::write(&users, "# empty: the customer comes from --user\n")?;
        let users = users.to_string_lossy().into_owned();
        let file = Processes::start_with(
            bins,
            threads,
            1,
            4096,
            streams,
            "quic",
            &["--users", &users],
        )
        .await?;
        Ok(HistoryPair {
            store,
            file,
            database,
            _dir: dir,
            store_runs: Vec::new(),
            file_runs: Vec::new(),
        })
    }

    /// One round of each, the store's first.
    pub(super) async fn round(&mut self, target: SocketAddr, sizes: &Sizes) -> Result<()> {
        let (store, file) = (&self.store, &self.file);
        let run = drive("history", &store.path(), &store.pids(), target, sizes).await?;
        self.store_runs.push(run);
        let run = drive("users file", &file.path(), &file.pids(), target, sizes).await?;
        self.file_runs.push(run);
        Ok(())
    }

    /// Checks that the store's history holds the rounds' connections (else
    /// the rows would compare two gateways that both skip it), adds the rows,
    /// and stops the processes.
    pub(super) async fn finish(self, report: &mut Report) -> Result<()> {
        let store = RateRun::total(&self.store_runs);
        let file = RateRun::total(&self.file_runs);
        let expected = store.done as u64 * 2 * EXCHANGE;
        let recorded = recorded_bytes(&self.database, expected).await;
        self.store.stop().await;
        self.file.stop().await;
        let recorded = recorded?;
        for (which, run) in [
            ("SQLite store recording history", &store),
            ("users file, no store", &file),
        ] {
            let metric = format!("connections per second, exitpool with a {which}");
            report.row("rate", metric, "conn/s", None, Some(run.per_second()), None);
            let metric = format!("CPU per connection, proxy processes, exitpool with a {which}");
            report.row("rate", metric, "CPU-µs", None, run.proxy_micros(), None);
        }
        let ratios: Vec<f64> = self
            .store_runs
            .iter()
            .zip(&self.file_runs)
            .map(|(with, without)| with.per_second() / without.per_second())
            .collect();
        let total = store.per_second() / file.per_second();
        let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = ratios.iter().copied().fold(0.0, f64::max);
        for (which, value) in [
            ("all rounds", total),
            ("lowest round", lowest),
            ("highest round", highest),
        ] {
            report.row(
                "rate",
                format!("connections per second, with history / users file, {which}"),
                "ratio",
                None,
                Some(value),
                None,
            );
        }
        report.notes.push(format!(
            "rate: history rows = two more gateways in the same rounds, each with one agent process: the benchmark customer as an account in the gateway's SQLite store (its usage history written once a second: {recorded} bytes recorded for the {} connections made) against the same customer from --user beside a --users file (no store); 'with history / users file' is their connections-per-second ratio",
            store.done
        ));
        Ok(())
    }
}

/// Bytes the store's history holds for the benchmark customer over its
/// life, once it holds at least `expected` (the rounds' exchanges; the usage
/// reaches the store on the gateway's next once-a-second flush), or what it
/// holds after a bound. The bench reads the SQLite file beside the gateway.
async fn recorded_bytes(database: &str, expected: u64) -> Result<u64> {
    let store = Store::open(database, Default::default()).await?;
    let lifetime = || async {
        let now = exitpool_control::period::now();
        store
            .period_usage(AccountRef::Customer(USER), now)
            .await
            .map(|usage| usage.lifetime)
    };
    let reached = wait_until(
        FLUSH_BOUND,
        "the history holds the rounds' bytes",
        || async { lifetime().await.is_ok_and(|bytes| bytes >= expected) },
    )
    .await;
    let bytes = lifetime().await;
    store.close().await;
    let bytes = bytes?;
    if reached.is_err() {
        bail!("history: the store recorded {bytes} bytes of the {expected} the rounds moved");
    }
    Ok(bytes)
}
