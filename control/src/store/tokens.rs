//! Agent enrolment tokens: create (the secret answered once, only its
//! SHA-256 kept), list, revoke; and the lookup a gateway makes when an agent
//! presents a secret.

use super::{api_amount, bump_revision, db_amount, unique_violation, Store};
use crate::error::{Error, Result};
use crate::model::{AgentToken, CreatedToken, NewToken, Page, MAX_AMOUNT};
use crate::period::{now, rfc3339};
use crate::secret::{generate_token, token_digest};
use sqlx::any::AnyRow;
use sqlx::Row;

/// Longest token label.
pub const MAX_LABEL_LEN: usize = 200;

/// A token as the gateway checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The token as listed.
    pub token: AgentToken,
    /// Whether it was revoked (then refused).
    pub revoked: bool,
}

const SELECT: &str =
    "SELECT id, label, max_agents, created_at, last_used_at, revoked_at FROM agent_tokens";

fn token(row: &AnyRow) -> Result<AgentToken> {
    Ok(AgentToken {
        id: row.try_get("id")?,
        label: row.try_get("label")?,
        max_agents: api_amount(row.try_get("max_agents")?),
        created_at: rfc3339(row.try_get("created_at")?),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(rfc3339),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(rfc3339),
    })
}

impl Store {
    /// Creates a token; its secret is in the answer and nowhere else.
    pub async fn create_token(&self, new: NewToken) -> Result<CreatedToken> {
        let label = new.label.trim();
        if label.is_empty()
            || label.chars().count() > MAX_LABEL_LEN
            || label.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "label",
                format!("a label is 1 to {MAX_LABEL_LEN} characters, none a control character"),
            ));
        }
        if let Some(n) = new.max_agents {
            if n == 0 || n > MAX_AMOUNT {
                return Err(Error::invalid("max_agents", "must be at least 1"));
            }
        }
        let (id, secret) = generate_token();
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO agent_tokens (id, label, secret_sha256, max_agents, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(label)
        .bind(token_digest(&secret))
        .bind(db_amount(new.max_agents))
        .bind(now())
        .execute(&mut *tx)
        .await;
        match inserted {
            // 64 random bits of id colliding: astronomically rare, still not a 500.
            Err(e) if unique_violation(&e) => {
                return Err(Error::Conflict {
                    field: None,
                    message: "token id collision; try again".into(),
                })
            }
            other => other?,
        };
        bump_revision(&mut tx).await?;
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        self.commit_change(tx).await?;
        Ok(CreatedToken {
            token: token(&row)?,
            secret,
        })
    }

    /// Tokens in id order after `after`, at most `limit`.
    pub async fn list_tokens(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<AgentToken>> {
        let limit = super::page_limit(limit)?;
        let rows = sqlx::query(&format!("{SELECT} WHERE id > $1 ORDER BY id LIMIT $2"))
            .bind(after.unwrap_or(""))
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows.iter().map(token).collect::<Result<Vec<_>>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|t| t.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Revokes a token (again is harmless: the first time stays recorded).
    pub async fn revoke_token(&self, id: &str) -> Result<AgentToken> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE agent_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
        )
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("token {id:?}")));
        }
        bump_revision(&mut tx).await?;
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        self.commit_change(tx).await?;
        token(&row)
    }

    /// The token whose secret is `secret`, revoked or not; `None` when no
    /// token has it. One SHA-256 and one indexed lookup.
    pub async fn token_by_secret(&self, secret: &str) -> Result<Option<TokenEntry>> {
        let row = sqlx::query(&format!("{SELECT} WHERE secret_sha256 = $1"))
            .bind(token_digest(secret))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let token = token(&row)?;
            Ok(TokenEntry {
                revoked: token.revoked_at.is_some(),
                token,
            })
        })
        .transpose()
    }

    /// Records that agents presented these tokens at `at` (a gateway batches
    /// these; `last_used_at` only moves forward).
    pub async fn mark_tokens_used(&self, ids: &[String], at: i64) -> Result<()> {
        if ids.len() > super::MAX_BATCH {
            return Err(Error::invalid(
                "ids",
                format!("at most {} a batch", super::MAX_BATCH),
            ));
        }
        let mut tx = self.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE agent_tokens SET last_used_at = $1 \
                 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
