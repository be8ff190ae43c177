//! The gateway pins this agent has been welcomed with, as its state directory
//! remembers them (read and written off the runtime thread). A certificate that
//! does not match a pin once welcomed is retried rather than fatal
//! ([`super::reconnect`]).

use crate::shared::Shared;
use std::sync::Arc;
use tracing::warn;

/// Whether this agent has once been welcomed by a gateway with its pin, as the
/// state directory remembers (read off the runtime thread); false without one.
pub(super) async fn pin_proven(shared: &Arc<Shared>) -> bool {
    let Some(dir) = shared.config.state_dir.clone() else {
        return false;
    };
    let pin = shared.config.pin.to_string();
    match tokio::task::spawn_blocking(move || crate::state::has_connected_with(&dir, &pin)).await {
        Ok(Ok(proven)) => proven,
        Ok(Err(error)) => {
            warn!(%error, "reading the pins this agent has connected with");
            false
        }
        Err(_) => false,
    }
}

/// Remembers in the state directory (off the runtime thread) that a gateway
/// with the agent's pin has welcomed it.
pub(super) async fn remember_pin(shared: &Arc<Shared>) {
    let Some(dir) = shared.config.state_dir.clone() else {
        return;
    };
    let pin = shared.config.pin.to_string();
    match tokio::task::spawn_blocking(move || crate::state::remember_pin(&dir, &pin)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "saving the pin this agent has connected with"),
        Err(error) => warn!(%error, "saving the pin did not finish"),
    }
}
