//! Agent tokens from the store, once they are in use: every
//! [`ROUND`](crate::agent_tokens::ROUND) the tokens used since the last round
//! are marked in the store (one batch), and the store tokens that connected
//! agents hold are looked up again, so an agent whose token was revoked
//! (through any gateway of the fleet) is disconnected at once. The lookup at
//! join is [`verdict_for_hello`]; the cache both share is
//! [`crate::agent_tokens::StoreTokens`].

use crate::agent_tokens::{lookup, Verdict, LOOKUP_TIMEOUT, ROUND};
use crate::shared::{Accounting, Shared};
use exitpool_protocol::close_code;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{info, warn};

/// What the store says of the token in a `Hello`'s `body`, when the flags
/// and file do not hold it and the gateway has a store; `None` otherwise (and
/// for a body that is no `Hello`, which the join refuses on its own).
pub async fn verdict_for_hello(body: &[u8], accounting: &Accounting) -> Option<Verdict> {
    let Ok(exitpool_protocol::AgentMessage::Hello { token, .. }) =
        exitpool_protocol::decode_body::<exitpool_protocol::AgentMessage>(body)
    else {
        return None;
    };
    if accounting
        .accounts
        .current()
        .agent_tokens
        .accepts(token.expose())
    {
        return None;
    }
    let link = accounting.accounts.control().map(|link| &**link);
    accounting.agent_tokens.check(link, token.expose()).await
}

/// Every [`ROUND`] until shutdown, for a gateway with a store: [`round`].
pub async fn run(shared: Arc<Shared>) {
    if shared.accounting.accounts.control().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => round(&shared).await,
            () = shared.lifecycle.shutdown.cancelled() => return,
        }
    }
}

/// One round: marks the tokens used since the last one, and disconnects
/// the local agents whose store token is revoked now.
async fn round(shared: &Shared) {
    let Some(link) = shared.accounting.accounts.control() else {
        return;
    };
    let used = shared.accounting.agent_tokens.take_used();
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
    let accounts = shared.accounting.accounts.current();
    let mut holders: HashMap<String, Vec<Arc<crate::directory::Agent>>> = HashMap::new();
    for agent in shared.routing.exits.directory().agents() {
        let secret = agent.token.expose();
        if agent.is_local() && !accounts.agent_tokens.accepts(secret) {
            holders.entry(secret.to_owned()).or_default().push(agent);
        }
    }
    for (secret, agents) in holders {
        let verdict = lookup(link, &secret).await;
        // Out of reach: the agents stay (the last word was yes).
        if matches!(verdict, Verdict::Unavailable(_)) {
            continue;
        }
        shared
            .accounting
            .agent_tokens
            .remember(&secret, verdict.clone());
        if matches!(verdict, Verdict::Accepted { .. }) {
            continue;
        }
        for agent in agents {
            info!(exit = %agent.exit_id, "agent token revoked; disconnecting");
            shared.routing.exits.disconnect(
                agent.key,
                close_code::REJECTED,
                b"agent token revoked",
            );
        }
    }
}
