//! Writes to a SQLite store until it is killed: the writer tests/crash.rs
//! SIGKILLs mid-way to check that every commit it reported survives.
//!
//! `crash_writer DB_FILE`: creates customers `c0`, `c1`, ... (each with one
//! usage record) and prints `committed N` after each commit returns.

use exitpool_control::model::NewAccount;
use exitpool_control::store::UsageRecord;
use exitpool_control::{Retention, Store};

/// A bound, so a writer nobody kills still ends.
const MAX_ACCOUNTS: usize = 100_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: crash_writer DB_FILE")?;
    let store = Store::open(&path, Retention::default()).await?;
    println!("opened");
    for i in 0..MAX_ACCOUNTS {
        let name = format!("c{i}");
        store
            .create(
                None,
                NewAccount {
                    name: name.clone(),
                    password: Some("pw".into()),
                    ..NewAccount::default()
                },
            )
            .await?;
        store
            .record_batch(&[UsageRecord {
                at: 1_800_000_000,
                account: name,
                bytes_up: 1,
                bytes_down: 2,
                connections: 1,
                ..UsageRecord::default()
            }])
            .await?;
        println!("committed {i}");
    }
    Ok(())
}
