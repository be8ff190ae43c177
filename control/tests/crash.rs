//! A SQLite store survives its process being killed: this test's binary runs
//! again as a writer (the same test, told by [`WRITER_DB`] to write) that
//! creates accounts, each with a batch of usage, in a loop and reports each
//! commit; it is SIGKILLed mid-way, and every account it reported is in the
//! file when the store is opened again, whole (its usage too), and the
//! file's integrity check passes.

mod common;

use common::TEST_BOUND;
use exitpool_control::model::NewAccount;
use exitpool_control::period::parse_time;
use exitpool_control::store::UsageRecord;
use exitpool_control::{AccountRef, Retention, Store};
use exitpool_launcher::{Launch, Ready};
use std::time::Duration;

/// Set in the writer's environment: the database file it writes.
const WRITER_DB: &str = "EXITPOOL_CONTROL_CRASH_WRITER_DB";
/// This test's name, to run it alone in the writer.
const TEST_NAME: &str = "sqlite_file_survives_sigkill_mid_write";
/// A bound, so a writer nobody kills still ends.
const MAX_ACCOUNTS: usize = 100_000;
/// When the writer's usage is recorded (2027-01-15T08:00:00Z).
const USAGE_AT: i64 = 1_800_000_000;
/// Usage records per account, each to its own domain: a batch long enough
/// in SQL that the kill is likely to land inside a transaction.
const RECORDS: u64 = 300;

/// The writer's side: accounts `c0`, `c1`, ... each with 3 bytes of usage,
/// `committed N` printed after each commit returns.
async fn write_until_killed(db: &str) {
    let store = Store::open(db, Retention::default()).await.expect("open");
    for i in 0..MAX_ACCOUNTS {
        let name = format!("c{i}");
        let new = NewAccount {
            name: name.clone(),
            password: Some("pw".into()),
            ..NewAccount::default()
        };
        store.create(None, new).await.expect("create");
        let usage: Vec<_> = (0..RECORDS)
            .map(|d| UsageRecord {
                at: USAGE_AT,
                account: name.clone(),
                target: Some(format!("site{d}.example")),
                bytes_up: 1,
                bytes_down: 2,
                connections: 1,
                ..UsageRecord::default()
            })
            .collect();
        store.record_batch(&usage).await.expect("record");
        println!("committed {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_survives_sigkill_mid_write() {
    if let Ok(db) = std::env::var(WRITER_DB) {
        return write_until_killed(&db).await;
    }
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("control.sqlite3");
        let exe = std::env::current_exe().expect("this test's binary");
        let mut process = Launch::new(exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(WRITER_DB, &db)
            .start(Ready::line("committed 30"), Duration::from_secs(60))
            .await
            .expect("the writer commits 31 accounts");
        process.kill().await.expect("SIGKILL");
        let committed: Vec<usize> = process
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("committed ")?.parse().ok())
            .collect();
        let last = *committed.last().expect("commits were reported");
        assert!(last >= 30);

        let store = Store::open(&db.to_string_lossy(), Retention::default())
            .await
            .expect("the killed writer's file opens");
        let snapshot = store.snapshot().await.unwrap();
        let day = parse_time("t", "2027-01-15").unwrap();
        for i in 0..=last {
            let name = format!("c{i}");
            assert!(
                snapshot.accounts.iter().any(|a| a.name == name),
                "{name} was reported committed but is missing"
            );
            let usage = store
                .period_usage(AccountRef::Customer(&name), day)
                .await
                .unwrap();
            assert_eq!(usage.lifetime, 3 * RECORDS, "{name}'s usage");
        }
        println!(
            "writer killed after {last} reported commits; {} accounts in the file",
            snapshot.accounts.len()
        );
        // At most the one in flight when the kill came is beyond the last report.
        assert!(
            snapshot.accounts.len() <= last + 2,
            "{} accounts after {last} reported commits",
            snapshot.accounts.len()
        );
        store.close().await;
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        pool.close().await;
    })
    .await
    .expect("the test finishes in time");
}
