//! One relay stream the gateway opened: read its `OpenRequest` (or a UDP flow
//! request, served by `crate::udp`), take a stream
//! slot, dial the target under the exit policy, answer `Opened` or `Failed`,
//! then relay bytes both ways until either side ends.

use crate::dial::{dial, DialError};
use crate::policy::ExitPolicy;
use crate::shared::Shared;
use crate::stats::ActiveStream;
use exitpool_protocol::udp::{Relay, RelayOpen};
use exitpool_protocol::{read_frame, write_frame, FailureCode, OpenReply};
use exitpool_transport::relay::{relay, LiveCounters};
use exitpool_transport::{StreamRecv, StreamSend, TunnelSend};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// A relay with no bytes either way for this long is closed (the gateway usually
/// closes idle customers much earlier; this is the agent's own bound).
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest a new stream waits for a stream slot before the agent answers that it
/// is at its limit: long enough for a finishing stream's task to let go of its
/// slot, short enough that a customer of a truly full exit hears it at once.
const SLOT_GRACE: Duration = Duration::from_millis(100);

/// What a stream's task needs from its session.
pub(super) struct StreamContext {
    pub shared: Arc<Shared>,
    /// The policy in force when the stream arrived.
    pub policy: Arc<ExitPolicy>,
    /// One permit per stream served at once (`max_streams`).
    pub slots: Arc<Semaphore>,
    /// This tunnel's UDP flows.
    pub flows: Arc<crate::udp::Flows>,
    /// Whether the agent took new streams when this one arrived.
    pub accepting: bool,
}

/// One relay stream: read `OpenRequest`, dial, answer, relay.
pub(super) async fn serve_stream(
    context: StreamContext,
    mut send: StreamSend,
    mut recv: StreamRecv,
) {
    let config = &context.shared.config;
    // A TCP open or a UDP flow ([`exitpool_protocol::udp`]).
    let request: RelayOpen =
        match tokio::time::timeout(config.handshake_timeout, read_frame(&mut recv)).await {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => {
                debug!(%error, "bad open request");
                send.reset(exitpool_protocol::RESET_CODE);
                return;
            }
            Err(_) => {
                send.reset(exitpool_protocol::RESET_CODE);
                return;
            }
        };
    let permit = match take_slot(&context).await {
        Ok(permit) => permit,
        Err(refusal) => {
            fail(&mut send, refusal).await;
            return;
        }
    };
    // Counted live until dropped, whichever way this task ends.
    let _active = ActiveStream::start(&context.shared.counters);
    let request = match Relay::from(request) {
        Relay::Tcp(request) => request,
        Relay::Udp(open) => {
            let (shared, policy) = (&context.shared, &context.policy);
            crate::udp::serve_flow(shared, policy, &context.flows, open, send, recv).await;
            drop(permit);
            return;
        }
    };
    match dial(
        &request,
        &context.policy,
        config.bind,
        config.connect_timeout,
    )
    .await
    {
        Err(error) => {
            // Refusals are counted and summarised (status::refusal_summaries):
            // the target is the customer's text, and one line each would let
            // customers write into the volunteer's log at will.
            if !context.shared.counters.count_refusal(error.code) {
                debug!(host = %request.host, port = request.port, code = ?error.code, "dial failed");
            }
            fail(&mut send, error).await;
        }
        Ok((mut stream, peer)) => {
            if write_frame(&mut send, &OpenReply::Opened { peer })
                .await
                .is_ok()
            {
                let live = LiveCounters::default();
                let (read, write) = stream.split();
                let meter = &context.shared.meter;
                let (transferred, result) =
                    relay(read, write, send, recv, RELAY_IDLE_TIMEOUT, &live, meter).await;
                debug!(host = %request.host, port = request.port, up = transferred.from_tunnel, down = transferred.to_tunnel, ok = result.is_ok(), "stream done");
            }
        }
    }
    drop(permit);
}

/// A stream slot, or why there is none: the agent is at its stream limit, or
/// paused or out of quota.
async fn take_slot(context: &StreamContext) -> Result<OwnedSemaphorePermit, DialError> {
    // A finished stream's QUIC credit reaches the gateway a moment before its
    // task here drops its slot, so the gateway may open the next stream just
    // before the slot is free: that moment is waited out, not refused.
    let permit = match context.accepting {
        true => tokio::time::timeout(SLOT_GRACE, context.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
        false => None,
    };
    permit.ok_or_else(|| {
        let detail = if context.accepting {
            "the exit is at its stream limit"
        } else {
            "the exit is paused or out of quota"
        };
        DialError {
            code: FailureCode::AgentUnavailable,
            detail: detail.into(),
        }
    })
}

/// Answers `Failed` with `error`'s code and detail, then finishes the stream.
async fn fail(send: &mut StreamSend, error: DialError) {
    let reply = OpenReply::Failed {
        code: error.code,
        detail: error.detail,
    };
    if write_frame(send, &reply).await.is_ok() {
        let _ = send.finish();
    }
}
