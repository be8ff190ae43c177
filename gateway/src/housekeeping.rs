//! The gateway's periodic chores, each a task that ends at shutdown: writing
//! usage to the state directory and sweeping expired session pins and stale
//! per-address failure records.

use crate::shared::Shared;
use crate::{sessions, usage};
use std::sync::Arc;
use std::time::Instant;

/// Writes usage to the state directory every [`usage::FLUSH_INTERVAL`], on a
/// blocking thread (it is file I/O).
pub(crate) async fn flush_usage(shared: Arc<Shared>) {
    let mut timer = tokio::time::interval(usage::FLUSH_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {
                let saver = shared.clone();
                match tokio::task::spawn_blocking(move || saver.save_usage()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "writing usage failed"),
                    Err(error) => tracing::warn!(%error, "usage writer panicked"),
                }
            }
            () = shared.lifecycle.shutdown.cancelled() => break,
        }
    }
}

/// Drops expired session pins every [`sessions::SWEEP_INTERVAL`].
pub(crate) async fn sweep_sessions(shared: Arc<Shared>) {
    let mut timer = tokio::time::interval(sessions::SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = timer.tick() => {
                shared.walls.auth_failures.sweep();
                shared.walls.tls_handshakes.sweep();
                let swept = shared.routing.sessions.sweep(Instant::now());
                if swept > 0 {
                    tracing::debug!(swept, "expired sessions swept");
                }
            }
            () = shared.lifecycle.shutdown.cancelled() => break,
        }
    }
}
