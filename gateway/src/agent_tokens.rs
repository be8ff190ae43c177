//! Agent tokens from the control plane's store (`gateway tokens new`,
//! `POST /api/v1/tokens`), beside the ones from `--agent-token` and the
//! `--agent-tokens` file ([`crate::accounts`]).
//!
//! At join ([`crate::tunnel`]) a token the flags and file do not hold is
//! looked up with [`exitpool_control::Store::token_by_secret`] through a small
//! cache ([`CACHE_TTL`], at most [`MAX_CACHED`] secrets), so a reconnect
//! storm costs one query per token, not per agent; customers never wait on
//! it. Once a second `crate::tunnel::revocations` marks the tokens used
//! since the last round (`Store::mark_tokens_used`, one batch) and looks up
//! again the store tokens that connected agents hold: an agent whose token
//! was revoked (through any gateway of the fleet) is disconnected, and refused
//! when it comes back. This module holds the cache and the lookups; that one
//! the rounds over the gateway's agents.

use crate::control_link::ControlLink;
use dashmap::DashMap;
use exitpool_control::store::TokenEntry;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup's answer is reused at join.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Most secrets whose answers are cached (unknown ones included); past it
/// the cache starts over.
pub const MAX_CACHED: usize = 10_000;

/// Most distinct store tokens remembered as used between two rounds.
pub const MAX_USED: usize = 10_000;

/// How often used tokens are marked and connected agents' tokens rechecked.
pub const ROUND: Duration = Duration::from_secs(1);

/// Longest one lookup may take at join (the agent's handshake waits on it).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the store says of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A live token: its id and cap.
    Accepted {
        /// The token's id.
        id: String,
        /// Most agents connected with it at once.
        max_agents: Option<u64>,
    },
    /// A token that was revoked.
    Revoked,
    /// No token has this secret.
    Unknown,
    /// The store did not answer (why); the agent is told to try later.
    Unavailable(String),
}

impl Verdict {
    /// The verdict on a store lookup's answer.
    pub fn of(entry: Option<TokenEntry>) -> Verdict {
        match entry {
            None => Verdict::Unknown,
            Some(entry) if entry.revoked => Verdict::Revoked,
            Some(entry) => Verdict::Accepted {
                id: entry.token.id,
                max_agents: entry.token.max_agents,
            },
        }
    }
}

/// The cache and the used-token batch.
#[derive(Debug, Default)]
pub struct StoreTokens {
    cache: DashMap<[u8; 32], (Verdict, Instant)>,
    used: Mutex<HashSet<String>>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl StoreTokens {
    /// What `link`'s store says of `secret`, from the cache when fresh;
    /// `None` when the gateway has no store.
    pub async fn check(&self, link: Option<&ControlLink>, secret: &str) -> Option<Verdict> {
        let link = link?;
        let key = digest(secret);
        let cached = self
            .cache
            .get(&key)
            .filter(|entry| entry.value().1.elapsed() < CACHE_TTL)
            .map(|entry| entry.value().0.clone());
        let verdict = match cached {
            Some(verdict) => verdict,
            None => {
                let verdict = lookup(link, secret).await;
                if !matches!(verdict, Verdict::Unavailable(_)) {
                    self.remember(secret, verdict.clone());
                }
                verdict
            }
        };
        if let Verdict::Accepted { id, .. } = &verdict {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            if used.len() < MAX_USED {
                used.insert(id.clone());
            }
        }
        Some(verdict)
    }

    /// Keeps the store's word on `secret` for [`CACHE_TTL`].
    pub fn remember(&self, secret: &str, verdict: Verdict) {
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(digest(secret), (verdict, Instant::now()));
    }

    /// The ids of the tokens used since the last call.
    pub fn take_used(&self) -> Vec<String> {
        std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }

    /// Whether the store's last word on `secret` was yes (its agents are the
    /// store's to keep or drop, not the tokens file's on a reload).
    pub fn from_store(&self, secret: &str) -> bool {
        self.cache
            .get(&digest(secret))
            .is_some_and(|entry| matches!(entry.value().0, Verdict::Accepted { .. }))
    }
}

/// One lookup of `secret` in `link`'s store, within [`LOOKUP_TIMEOUT`].
pub async fn lookup(link: &ControlLink, secret: &str) -> Verdict {
    match tokio::time::timeout(LOOKUP_TIMEOUT, link.store().token_by_secret(secret)).await {
        Ok(Ok(entry)) => Verdict::of(entry),
        Ok(Err(error)) => Verdict::Unavailable(error.to_string()),
        Err(_) => Verdict::Unavailable(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
    }
}
