//! Agent tokens from the control plane's store (`gateway tokens new`,
//! `POST /api/v1/tokens`), beside the ones from `--agent-token` and the
//! `--agent-tokens` file ([`crate::accounts`]).
//!
//! At join ([`crate::tunnel`]) a token the flags and file do not hold is
//! looked up with [`exitpool_control::Store::token_by_secret`] through a small
//! cache ([`CACHE_TTL`], at most [`MAX_CACHED`] secrets), so a reconnect
//! storm costs one query per token, not per agent; customers never wait on
//! it. Once a second [`run`] marks the tokens used since the last round
//! (`Store::mark_tokens_used`, one batch) and looks up again the store tokens
//! that connected agents hold: an agent whose token was revoked (through any
//! gateway of the fleet) is disconnected, and refused when it comes back.

use crate::shared::Shared;
use dashmap::DashMap;
use exitpool_control::store::TokenEntry;
use exitpool_protocol::close_code;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
    fn of(entry: Option<TokenEntry>) -> Verdict {
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
    /// What the store says of `secret`, from the cache when fresh; `None`
    /// when the gateway has no store.
    pub async fn check(&self, shared: &Shared, secret: &str) -> Option<Verdict> {
        let link = shared.accounts.control()?;
        let key = digest(secret);
        let cached = self
            .cache
            .get(&key)
            .filter(|entry| entry.value().1.elapsed() < CACHE_TTL)
            .map(|entry| entry.value().0.clone());
        let verdict = match cached {
            Some(verdict) => verdict,
            None => {
                let lookup = link.store().token_by_secret(secret);
                let verdict = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(Ok(entry)) => Verdict::of(entry),
                    Ok(Err(error)) => Verdict::Unavailable(error.to_string()),
                    Err(_) => Verdict::Unavailable(format!(
                        "no answer within {} s",
                        LOOKUP_TIMEOUT.as_secs()
                    )),
                };
                if !matches!(verdict, Verdict::Unavailable(_)) {
                    if self.cache.len() >= MAX_CACHED {
                        self.cache.clear();
                    }
                    self.cache.insert(key, (verdict.clone(), Instant::now()));
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

    /// Whether the store's last word on `secret` was yes (its agents are the
    /// store's to keep or drop, not the tokens file's on a reload).
    pub fn from_store(&self, secret: &str) -> bool {
        self.cache
            .get(&digest(secret))
            .is_some_and(|entry| matches!(entry.value().0, Verdict::Accepted { .. }))
    }

    /// One round: marks the tokens used since the last one, and disconnects
    /// the local agents whose store token is revoked now.
    async fn round(&self, shared: &Shared) {
        let Some(link) = shared.accounts.control() else {
            return;
        };
        let used: Vec<String> =
            std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if !used.is_empty() {
            let now = exitpool_control::period::now();
            let marked =
                tokio::time::timeout(LOOKUP_TIMEOUT, link.store().mark_tokens_used(&used, now));
            match marked.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => warn!(%error, "marking agent tokens used failed"),
                Err(_) => warn!("marking agent tokens used: no answer in time"),
            }
        }
        // The store tokens connected agents hold, each looked up once.
        let accounts = shared.accounts.current();
        let mut holders: HashMap<String, Vec<Arc<crate::directory::Agent>>> = HashMap::new();
        for agent in shared.directory.agents() {
            let secret = agent.token.expose();
            if agent.is_local() && !accounts.agent_tokens.accepts(secret) {
                holders.entry(secret.to_owned()).or_default().push(agent);
            }
        }
        for (secret, agents) in holders {
            let lookup = link.store().token_by_secret(&secret);
            let verdict = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(entry)) => Verdict::of(entry),
                // Out of reach: the agents stay (the last word was yes).
                _ => continue,
            };
            self.cache
                .insert(digest(&secret), (verdict.clone(), Instant::now()));
            if matches!(verdict, Verdict::Accepted { .. }) {
                continue;
            }
            for agent in agents {
                info!(exit = %agent.exit_id, "agent token revoked; disconnecting");
                shared.directory.remove(agent.key);
                shared
                    .tunnels
                    .close(agent.key, close_code::REJECTED, b"agent token revoked");
            }
        }
    }
}

/// What the store says of the token in a `Hello`'s `body`, when the flags
/// and file do not hold it and the gateway has a store; `None` otherwise (and
/// for a body that is no `Hello`, which the join refuses on its own).
pub async fn verdict_for_hello(body: &[u8], shared: &Shared) -> Option<Verdict> {
    let Ok(exitpool_protocol::AgentMessage::Hello { token, .. }) =
        exitpool_protocol::decode_body::<exitpool_protocol::AgentMessage>(body)
    else {
        return None;
    };
    if shared
        .accounts
        .current()
        .agent_tokens
        .accepts(token.expose())
    {
        return None;
    }
    shared.agent_tokens.check(shared, token.expose()).await
}

/// Every [`ROUND`] until shutdown: [`StoreTokens`]' marking and rechecking,
/// for a gateway with a store.
pub async fn run(shared: Arc<Shared>) {
    if shared.accounts.control().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.agent_tokens.round(&shared).await,
            () = shared.shutdown.cancelled() => return,
        }
    }
}
