//! The store: every durable thing the control plane keeps, in SQLite (a file
//! in the state directory, the default) or PostgreSQL (one database for a
//! fleet), through one code path.
//!
//! Both backends are reached through `sqlx::Any`, so each query is written
//! once: the schema keeps to types both read the same way (BIGINT, TEXT; lists
//! as JSON text; times as Unix seconds), placeholders are `$1`, and upserts are
//! `INSERT ... ON CONFLICT ... DO UPDATE`, which both speak. What differs is
//! the migrations' id column and row locking (`FOR UPDATE` on PostgreSQL; one
//! connection on SQLite, which serialises writers anyway).
//!
//! SQLite is opened in WAL mode with `synchronous=FULL`: an answer that says
//! "created" has reached the disk, surviving a power cut, not only a killed
//! process (which WAL with NORMAL would survive too). Writes are account
//! changes and one usage batch a second, so the fsync per commit is cheap.
//! Foreign keys are on (deleting a customer deletes its sub-users and their
//! history) and a busy timeout waits out another process's writer.
//!
//! Migrations are numbered and checked in (`control/migrations/{sqlite,postgres}/`),
//! applied at open through sqlx's migrator (which takes an advisory lock on
//! PostgreSQL, so a fleet's gateways starting together apply them once); a
//! database whose schema is newer than this build is refused.
//!
//! The methods live beside this file: [`accounts`](self) (customers,
//! sub-users and the snapshot the gateway loads), `tokens` (agent tokens) and
//! `usage` (history, retention, quota periods).

mod accounts;
mod bans;
mod tokens;
mod usage;

pub use accounts::{AccountEntry, AccountRef, Snapshot, MAX_PAGE, MAX_SUB_USERS};
pub use bans::{ExitBan, MAX_BAN_REASON, MAX_EXIT_BANS};
pub use tokens::TokenEntry;
pub use usage::{
    quota_periods, BatchOutcome, DomainUsage, Exhausted, ExitDay, PeriodUsage, PruneOutcome,
    QuotaStatus, Step, UsageBucket, UsageRecord, MAX_BATCH, MAX_BUCKETS, TOP_DOMAINS,
};

use crate::error::{Error, Result};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Row, Transaction};
use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

/// The file name of the SQLite database in a state directory.
pub const SQLITE_FILE: &str = "control.sqlite3";

/// How long a connection attempt, or a wait for a pooled connection, may take.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits for another process's write lock.
const BUSY_TIMEOUT_MS: u32 = 5000;
/// Connections to a PostgreSQL server.
const POSTGRES_CONNECTIONS: u32 = 8;

/// The migrations, per dialect: (version, description, SQLite, PostgreSQL).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "accounts tokens usage",
        include_str!("../../migrations/sqlite/0001_accounts_tokens_usage.sql"),
        include_str!("../../migrations/postgres/0001_accounts_tokens_usage.sql"),
    ),
    (
        2,
        "exit bans",
        include_str!("../../migrations/sqlite/0002_exit_bans.sql"),
        include_str!("../../migrations/postgres/0002_exit_bans.sql"),
    ),
];

/// Which database a store is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// How long usage history is kept, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Hourly buckets (and errors by code). Default 90.
    pub hourly_days: u32,
    /// Daily buckets of accounts and exits. Default 730 (two years).
    pub daily_days: u32,
    /// Top target domains per account and day. Default 90.
    pub domain_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            hourly_days: 90,
            daily_days: 730,
            domain_days: 90,
        }
    }
}

/// The PostgreSQL channel every committed change to accounts, tokens or exit
/// bans is announced on (`NOTIFY`, delivered at commit), so that every
/// gateway of a fleet reloads at once instead of at its next poll.
pub const CHANGES_CHANNEL: &str = "exitpool_changes";

/// The control plane's database. Cheap to clone (a pool); clones share the
/// change signal ([`Store::changes`]).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    retention: Retention,
    /// The location's URL, for [`Store::change_notices`]' own connection.
    url: std::sync::Arc<str>,
    /// Marked after each change this process commits.
    changed: std::sync::Arc<tokio::sync::watch::Sender<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("retention", &self.retention)
            .finish()
    }
}

/// `location` with any password replaced, for messages and logs.
pub fn redact(location: &str) -> String {
    match (location.find("://"), location.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &location[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &location[..scheme + 3],
                    &userinfo[..colon],
                    &location[at..]
                ),
                None => location.to_owned(),
            }
        }
        _ => location.to_owned(),
    }
}

impl Store {
    /// Opens the store in a state directory: `DIR/control.sqlite3`, created
    /// if missing.
    pub async fn open_state_dir(dir: &Path) -> Result<Store> {
        Store::open(
            &dir.join(SQLITE_FILE).to_string_lossy(),
            Retention::default(),
        )
        .await
    }

    /// Opens `location`: a `postgres://` or `postgresql://` URL, a
    /// `sqlite:` URL, or the path of a SQLite file (created if missing).
    /// Applies the migrations; refuses a database from a newer version.
    pub async fn open(location: &str, retention: Retention) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let shown = redact(location);
        let (backend, url) =
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                (Backend::Postgres, location.to_owned())
            } else if location.starts_with("sqlite:") {
                (Backend::Sqlite, location.to_owned())
            } else if location.contains("://") {
                return Err(Error::Location {
                    location: shown,
                    message: "not a SQLite file path nor a postgres:// URL".into(),
                });
            } else {
                if location.is_empty() || location.contains(['?', '#']) {
                    return Err(Error::Location {
                        location: shown,
                        message: "a SQLite file path may not be empty or hold `?` or `#`".into(),
                    });
                }
                (Backend::Sqlite, format!("sqlite://{location}?mode=rwc"))
            };
        let options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let options = match backend {
            // One connection: SQLite has one writer at a time anyway, and a
            // deferred transaction that reads and then writes would fail at
            // once (SQLITE_BUSY, not retried) beside a concurrent writer.
            Backend::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL".to_owned(),
                        "PRAGMA synchronous = FULL".to_owned(),
                        "PRAGMA foreign_keys = ON".to_owned(),
                        format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"),
                    ] {
                        sqlx::query(&pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(POSTGRES_CONNECTIONS),
        };
        let pool = options.connect(&url).await.map_err(|e| Error::Location {
            location: shown.clone(),
            message: e.to_string(),
        })?;
        let store = Store {
            pool,
            backend,
            retention,
            url: url.into(),
            changed: std::sync::Arc::new(tokio::sync::watch::Sender::new(())),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The retention [`Store::prune`] applies.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The newest schema version this build knows.
    pub fn schema_version() -> i64 {
        MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
    }

    async fn migrate(&self) -> Result<()> {
        let known = Store::schema_version();
        // Absent on a new database: the query fails and there is nothing to check.
        let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&self.pool)
            .await
            .ok()
            .flatten();
        if let Some(found) = applied.filter(|found| *found > known) {
            return Err(Error::SchemaTooNew { found, known });
        }
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sqlite, postgres)| {
                let sql = match self.backend {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect::<Vec<_>>();
        let migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        };
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(found) => {
                Error::SchemaTooNew { found, known }
            }
            other => Error::Migrate(other),
        })
    }

    /// The revision of accounts, tokens and exit bans: it moves on every change, so a
    /// gateway polls it (one tiny query) and reloads [`Store::snapshot`]
    /// only when it moved.
    pub async fn revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Marked (`changed()` returns) after each change to accounts, tokens or
    /// exit bans committed through this store or a clone of it: a gateway
    /// applies its own API's writes at once, whatever the backend.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// On PostgreSQL, a listener on [`CHANGES_CHANNEL`] of its own (one more
    /// connection): changes committed by any process, other gateways
    /// included. `None` for SQLite, whose file belongs to one gateway (its
    /// changes are in [`Store::changes`]).
    pub async fn change_notices(&self) -> Result<Option<ChangeNotices>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(Some(ChangeNotices(listener)))
    }

    /// Commits a change's transaction (which bumped the revision), then marks
    /// [`Store::changes`].
    async fn commit_change(&self, tx: Transaction<'static, Any>) -> Result<()> {
        tx.commit().await?;
        self.changed.send_replace(());
        Ok(())
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(self.pool.begin().await?)
    }

    /// ` FOR UPDATE` where rows can be locked (PostgreSQL); SQLite's single
    /// connection serialises instead.
    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// PostgreSQL's notices on [`CHANGES_CHANNEL`] ([`Store::change_notices`]).
/// sqlx buffers what arrives (unbounded, so [`ChangeNotices::next`] should
/// be awaited in a loop: each call drains what is buffered) and reconnects
/// after a lost connection.
pub struct ChangeNotices(sqlx::postgres::PgListener);

impl std::fmt::Debug for ChangeNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeNotices").finish_non_exhaustive()
    }
}

impl ChangeNotices {
    /// Waits for the next notice, then takes any others already buffered
    /// (one reload covers them all). `Ok(false)`: the connection was lost, so
    /// notices may have been missed (the caller should check the revision
    /// now); the next call reconnects.
    pub async fn next(&mut self) -> Result<bool> {
        let notice = self.0.try_recv().await?;
        while self.0.next_buffered().is_some() {}
        Ok(notice.is_some())
    }
}

/// Marks a change to accounts, tokens or bans, inside the change's
/// transaction; on PostgreSQL it also announces it on [`CHANGES_CHANNEL`]
/// (PostgreSQL sends the notice at commit, and never for a rollback).
async fn bump_revision(tx: &mut Transaction<'static, Any>) -> Result<()> {
    sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    if tx.backend_name() == "PostgreSQL" {
        sqlx::query(&format!("NOTIFY {CHANGES_CHANNEL}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// An amount from the API as the store's BIGINT (checked on the way in).
fn db_amount(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A stored amount as the API's.
fn api_amount(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

/// A JSON list column.
fn list(row: &AnyRow, column: &str) -> Result<Vec<String>> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Internal(format!("column {column} holds no JSON list: {e}")))
}

/// A list as a JSON column.
fn list_text(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Whether `e` is a unique-key violation.
fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A page size from a client: 1 to `max`, default 100.
pub fn page_limit(limit: Option<u32>) -> Result<i64> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(i64::from(n)),
        Some(_) => Err(Error::invalid(
            "limit",
            format!("a page holds 1 to {MAX_PAGE} items"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://gw:hunter2@db.example:5432/exitpool"),
            "postgres://gw:***@db.example:5432/exitpool"
        );
        assert_eq!(
            redact("postgres://gw@db/exitpool"),
            "postgres://gw@db/exitpool"
        );
        assert_eq!(
            redact("/var/lib/exitpool/control.sqlite3"),
            "/var/lib/exitpool/control.sqlite3"
        );
    }
}
