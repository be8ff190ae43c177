//! The control stream, the first on every tunnel: the agent's `Hello` (its
//! device key proven over this connection's keying material) and the
//! gateway's `Welcome` or `Reject`, then load reports for the tunnel's life.

use super::end::{RetryReason, SessionEnd};
use crate::error::AgentError;
use crate::shared::Shared;
use crate::stats::SessionInfo;
use exitpool_protocol::{
    read_frame, write_frame, AgentMessage, Capacity, FrameError, GatewayMessage, RejectReason,
    PROTOCOL_VERSION,
};
use exitpool_transport::{StreamRecv, StreamSend, Tunnel, TunnelConnection};
use std::sync::atomic::Ordering;

/// Opens the control stream and says `Hello`; the gateway's `Welcome` gives
/// the session's details. A full gateway is retried later, a rejected token or
/// version stops the agent.
pub(super) async fn hello(
    connection: &Tunnel,
    shared: &Shared,
) -> Result<(StreamSend, StreamRecv, SessionInfo), SessionEnd> {
    let config = &shared.config;
    let retry = |step: &'static str, error: &dyn std::fmt::Display| {
        SessionEnd::Retry(RetryReason::control(step, error))
    };
    let (mut send, mut recv) = connection
        .open_control()
        .await
        .map_err(|e| retry("opening the control stream", &e))?;
    let material = exitpool_transport::tunnel::identity_material(connection)
        .map_err(|e| retry("proving the device key", &e))?;
    let hello = AgentMessage::Hello {
        version: PROTOCOL_VERSION,
        identity: shared.device_key.prove(&material),
        token: config.token.clone(),
        software: config.software.clone(),
        capacity: Capacity {
            max_streams: config.max_streams,
        },
        accepting: shared.accepting(),
    };
    write_frame(&mut send, &hello)
        .await
        .map_err(|e| retry("sending Hello", &e))?;
    match read_frame::<GatewayMessage, _>(&mut recv).await {
        Ok(GatewayMessage::Welcome {
            observed_addr,
            country,
            exit_id,
        }) => Ok((
            send,
            recv,
            SessionInfo {
                observed_addr,
                country,
                exit_id,
                transport: connection.transport().to_string(),
            },
        )),
        // A full enrolment or network frees up as other agents leave: wait, retry.
        Ok(GatewayMessage::Reject {
            reason: RejectReason::TooManyAgents,
            message,
        }) => Err(SessionEnd::Retry(RetryReason::GatewayFull(message))),
        Ok(GatewayMessage::Reject { reason, message }) => Err(SessionEnd::Fatal(match reason {
            RejectReason::BadToken => AgentError::BadToken(message),
            RejectReason::UnsupportedVersion
            | RejectReason::BadAgentId
            | RejectReason::TooManyAgents => AgentError::Rejected(message),
        })),
        Err(error) => Err(retry("waiting for Welcome", &error)),
    }
}

/// Reports the agent's load (live streams, whether it takes new ones).
pub(super) async fn send_load(control: &mut StreamSend, shared: &Shared) -> Result<(), FrameError> {
    let load = AgentMessage::Load {
        active_streams: shared.counters.active_streams.load(Ordering::Relaxed),
        accepting: shared.accepting(),
    };
    write_frame(control, &load).await
}
