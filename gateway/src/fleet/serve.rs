//! The answering side of peer links: another gateway of the fleet carries its
//! customer here, to an exit whose tunnel this gateway holds.
//!
//! A link must prove fleet membership on its first stream within the handshake
//! timeout (at most [`MAX_PEER_HANDSHAKES`] at once, so strangers cannot hold
//! memory); each later stream names an exit and a target, gets the exit's own
//! answer, and is relayed to the exit's stream. This gateway counts the bytes
//! against the agent; the dialling gateway counts them against its customer.

use super::Fleet;
use crate::directory::{Outcome, StreamGuard};
use crate::error::ProxyError;
use crate::shared::Shared;
use exitpool_protocol::peer::{PeerAnswer, PeerHello, PeerOpen, PEER_VERSION};
use exitpool_protocol::{read_frame, write_frame, FailureCode, OpenReply, RESET_CODE};
use exitpool_transport::relay::{relay, LiveCounters, Unlimited};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Most peer links proving their membership at once.
pub const MAX_PEER_HANDSHAKES: usize = 64;

/// Accepts peer links until the gateway stops.
pub async fn serve(shared: Arc<Shared>, fleet: Arc<Fleet>) {
    let endpoint = fleet.peers.endpoint().clone();
    let handshakes = Arc::new(Semaphore::new(MAX_PEER_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shared.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let fleet = fleet.clone();
        shared.tasks.clone().spawn(async move {
            let deadline = shared.config.handshake_timeout;
            let admitted = tokio::time::timeout(deadline, admit(incoming, &fleet)).await;
            drop(permit);
            match admitted {
                Ok(Ok((connection, peer))) => serve_link(connection, peer, shared, fleet).await,
                Ok(Err(reason)) => tracing::warn!(%reason, "peer link refused"),
                Err(_) => tracing::warn!(?deadline, "peer link did not prove itself in time"),
            }
        });
    }
}

/// Completes the handshake and checks the fleet proof; returns the link and
/// the peer's fleet id.
async fn admit(
    incoming: quinn::Incoming,
    fleet: &Fleet,
) -> Result<(quinn::Connection, String), String> {
    let connection = incoming.await.map_err(|e| e.to_string())?;
    let remote = connection.remote_address();
    let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
    let hello: PeerHello = read_frame(&mut recv)
        .await
        .map_err(|e| format!("{remote}: {e}"))?;
    let material = super::peer::material(&connection)?;
    let refusal = if hello.version != PEER_VERSION {
        Some(format!(
            "peer-link version {} (this gateway speaks {PEER_VERSION})",
            hello.version
        ))
    } else if !fleet.peers.verify(&material, &hello.proof) {
        Some("the fleet proof does not verify (another fleet's key?)".to_owned())
    } else {
        None
    };
    let answer = match &refusal {
        Some(reason) => PeerAnswer::Refused(reason.clone()),
        None => PeerAnswer::Welcome,
    };
    write_frame(&mut send, &answer)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    if let Some(reason) = refusal {
        connection.close(0u32.into(), reason.as_bytes());
        return Err(format!("{remote} ({}): {reason}", hello.gateway_id));
    }
    tracing::info!(peer = %hello.gateway_id, %remote, "peer link accepted");
    Ok((connection, hello.gateway_id))
}

/// Serves the streams of one admitted link until it closes.
async fn serve_link(
    connection: quinn::Connection,
    peer: String,
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
) {
    loop {
        let stream = tokio::select! {
            stream = connection.accept_bi() => stream,
            () = shared.shutdown.cancelled() => break,
        };
        let Ok((send, recv)) = stream else { break };
        fleet.counters.peer_streams_in.inc();
        shared.tasks.spawn(serve_stream(send, recv, shared.clone()));
    }
    tracing::info!(%peer, "peer link closed");
}

/// One customer stream from a peer: open the exit's stream, answer, relay.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
) {
    let request = tokio::time::timeout(
        shared.config.handshake_timeout,
        read_frame::<PeerOpen, _>(&mut recv),
    )
    .await;
    let Ok(Ok(request)) = request else {
        let _ = send.reset(RESET_CODE.into());
        return;
    };
    let agent = shared
        .directory
        .by_agent_id(&request.agent_id)
        .filter(|agent| agent.is_local());
    let Some(agent) = agent else {
        let reply = OpenReply::Failed {
            code: FailureCode::AgentUnavailable,
            detail: "the exit is no longer on this gateway".into(),
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
        return;
    };
    let load = StreamGuard::new(agent.clone());
    let started = Instant::now();
    let opened = shared
        .links
        .open(
            agent.key,
            request.host,
            request.port,
            shared.config.open_timeout,
        )
        .await;
    let stream = match opened {
        Ok(stream) => {
            shared.report_outcome(&agent, Outcome::Opened(started.elapsed()));
            stream
        }
        Err(error) => {
            if error.exit_fault().is_some() {
                shared.report_outcome(&agent, Outcome::ExitFailed);
            }
            shared.record_error(None, Some(&agent), &error);
            let reply = match error {
                ProxyError::Exit { code, detail } => OpenReply::Failed { code, detail },
                other => OpenReply::Failed {
                    code: FailureCode::AgentUnavailable,
                    detail: other.to_string(),
                },
            };
            let _ = write_frame(&mut send, &reply).await;
            let _ = send.finish();
            return;
        }
    };
    if write_frame(&mut send, &OpenReply::Opened { peer: stream.peer })
        .await
        .is_err()
    {
        return;
    }
    shared.usage.record_connection(None, &agent);
    let counters = LiveCounters::default();
    let (moved, result) = relay(
        &mut recv,
        &mut send,
        stream.send,
        stream.recv,
        shared.config.idle_timeout,
        &counters,
        &Unlimited,
    )
    .await;
    shared.record_transfer(None, &agent, moved.tcp_to_quic, moved.quic_to_tcp);
    if result.is_err() {
        // The customer's side must see an abort, not a clean end.
        let _ = send.reset(RESET_CODE.into());
        let _ = recv.stop(RESET_CODE.into());
    }
    drop(load);
}
