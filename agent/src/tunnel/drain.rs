//! Ending a tunnel without cutting its customers: tell the gateway to route
//! nothing new here (`Draining`), let live streams finish within a grace, then
//! [`leave`], so a lost close packet cannot leave the gateway routing to, and
//! customers waiting on, an agent that is gone. On shutdown ([`drain`]) and for
//! a TLS/TCP tunnel left behind for QUIC ([`drain_left_behind`]).

use crate::config::AgentConfig;
use crate::shared::Shared;
use exitpool_protocol::{close_code, write_frame, AgentMessage};
use exitpool_transport::leave::leave;
use exitpool_transport::{StreamSend, Tunnel};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Tells the gateway to route nothing new here, lets live streams finish within
/// the drain grace, then [`leave`]s.
pub(super) async fn drain(
    connection: &Tunnel,
    control: &mut StreamSend,
    streams: &TaskTracker,
    config: &AgentConfig,
) {
    let grace = config.drain_grace;
    let _ = tokio::time::timeout(
        config.handshake_timeout,
        write_frame(control, &AgentMessage::Draining),
    )
    .await;
    streams.close();
    info!(live = streams.len(), ?grace, "draining");
    if tokio::time::timeout(grace, streams.wait()).await.is_err() {
        warn!(
            live = streams.len(),
            "grace period over; closing live streams"
        );
    }
    leave(
        connection,
        control,
        close_code::AGENT_SHUTDOWN,
        b"agent shutting down",
    )
    .await;
}

/// The TCP tunnel an agent left for QUIC: routes nothing new (`Draining`),
/// lets its live streams finish within [`AgentConfig::move_drain`], then
/// [`leave`]s. Customers' transfers on it are not cut.
pub(super) async fn drain_left_behind(
    connection: Tunnel,
    mut control: StreamSend,
    streams: TaskTracker,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let config = &shared.config;
    let _ = tokio::time::timeout(
        config.handshake_timeout,
        write_frame(&mut control, &AgentMessage::Draining),
    )
    .await;
    debug!(live = streams.len(), "the TLS/TCP tunnel drains");
    tokio::select! {
        _ = tokio::time::timeout(config.move_drain, streams.wait()) => {}
        () = shutdown.cancelled() => {
            let _ = tokio::time::timeout(config.drain_grace, streams.wait()).await;
        }
    }
    leave(
        &connection,
        &mut control,
        close_code::AGENT_SHUTDOWN,
        b"agent moved to QUIC",
    )
    .await;
}
