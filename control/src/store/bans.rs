//! Banned exits kept in the store, so that every gateway of a fleet on one
//! database refuses and disconnects them: a ban or an unban bumps the
//! revision, and the list travels with the accounts in [`Snapshot`].
//!
//! [`Snapshot`]: super::Snapshot

use super::{bump_revision, Store};
use crate::error::{Error, Result};
use sqlx::Row;

/// Most bans kept.
pub const MAX_EXIT_BANS: i64 = 100_000;
/// Longest reason kept with a ban, bytes.
pub const MAX_BAN_REASON: usize = 512;
/// Longest exit id.
const MAX_EXIT_ID: usize = 128;

/// One banned exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitBan {
    /// The exit's public id.
    pub exit_id: String,
    /// When it was banned (Unix seconds).
    pub since: i64,
    /// Why, as the operator said (may be empty).
    pub reason: String,
}

impl Store {
    /// Bans `exit_id` for every gateway on this store; `false` when it was
    /// banned already (the first ban's time and reason stay).
    pub async fn ban_exit(&self, exit_id: &str, reason: &str, since: i64) -> Result<bool> {
        if exit_id.is_empty() || exit_id.len() > MAX_EXIT_ID {
            return Err(Error::invalid("id", format!("1 to {MAX_EXIT_ID} bytes")));
        }
        if reason.len() > MAX_BAN_REASON {
            return Err(Error::invalid(
                "reason",
                format!("at most {MAX_BAN_REASON} bytes"),
            ));
        }
        let mut tx = self.begin().await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM exit_bans")
            .fetch_one(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO exit_bans (exit_id, since, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (exit_id) DO NOTHING",
        )
        .bind(exit_id)
        .bind(since)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if count >= MAX_EXIT_BANS {
            return Err(Error::Conflict {
                field: None,
                message: format!("{MAX_EXIT_BANS} exits are banned already; unban some first"),
            });
        }
        bump_revision(&mut tx).await?;
        self.commit_change(tx).await?;
        Ok(true)
    }

    /// Lifts the ban of `exit_id`; `false` when it was not banned.
    pub async fn unban_exit(&self, exit_id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM exit_bans WHERE exit_id = $1")
            .bind(exit_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        bump_revision(&mut tx).await?;
        self.commit_change(tx).await?;
        Ok(true)
    }

    /// Every ban, by exit id.
    pub async fn exit_bans(&self) -> Result<Vec<ExitBan>> {
        let mut tx = self.begin().await?;
        let bans = exit_bans_in(&mut tx).await?;
        tx.commit().await?;
        Ok(bans)
    }
}

/// The bans as `tx` sees them (a snapshot reads them beside the accounts).
pub(super) async fn exit_bans_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
) -> Result<Vec<ExitBan>> {
    let rows = sqlx::query("SELECT exit_id, since, reason FROM exit_bans ORDER BY exit_id")
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ExitBan {
                exit_id: row.try_get("exit_id")?,
                since: row.try_get("since")?,
                reason: row.try_get("reason")?,
            })
        })
        .collect()
}
