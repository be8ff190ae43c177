//! The answering side of peer links: another gateway of the fleet carries its
//! customer here, to an exit whose tunnel this gateway holds.
//!
//! A link must prove fleet membership on its first stream within the handshake
//! timeout (at most [`MAX_PEER_HANDSHAKES`] at once and
//! [`MAX_PEER_HANDSHAKES_PER_NETWORK`] from one source network, so strangers
//! cannot hold memory or keep the fleet's own links out); each later stream
//! names an exit and a target, gets the exit's own answer, and is relayed to
//! the exit's stream. Once the dialler has proved itself, this end answers
//! with its own proof ([`super::peer::AnswerProof`]). This gateway counts the
//! bytes against the agent; the dialling gateway counts them against its
//! customer.

use super::Fleet;
use crate::directory::{Outcome, StreamGuard};
use crate::error::ProxyError;
use crate::shared::Shared;
use crate::tunnel::pending::{PendingHandshakes, PendingSlot};
use exitpool_protocol::peer::{PeerAnswer, PeerHello, PeerOpen, PEER_VERSION};
use exitpool_protocol::{read_frame, write_frame, FailureCode, OpenReply, RESET_CODE};
use exitpool_transport::relay::{relay_streams, LiveCounters};
use exitpool_transport::{tcp, StreamRecv, StreamSend, Tunnel, TunnelConnection, TunnelSend};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Most peer links proving their membership at once, over both transports.
pub const MAX_PEER_HANDSHAKES: usize = 64;

/// Most of those from one source network: a gateway dials one link to each
/// other gateway, so a stranger's silent dials cannot take every place.
pub const MAX_PEER_HANDSHAKES_PER_NETWORK: usize = 4;

/// How long a refused link is kept for its refusal to reach the dialler.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Accepts peer links, QUIC on the peer endpoint and TLS over TCP on
/// `tcp_listener` with `tcp_tls`, until the gateway stops.
pub async fn serve(
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    tcp_listener: TcpListener,
    tcp_tls: Arc<rustls::ServerConfig>,
) {
    let handshakes = Arc::new(PendingHandshakes::new(
        "peer-link",
        MAX_PEER_HANDSHAKES,
        MAX_PEER_HANDSHAKES_PER_NETWORK,
    ));
    tokio::join!(
        serve_quic(shared.clone(), fleet.clone(), handshakes.clone()),
        serve_tcp(shared, fleet, handshakes, tcp_listener, tcp_tls),
    );
}

async fn serve_quic(shared: Arc<Shared>, fleet: Arc<Fleet>, handshakes: Arc<PendingHandshakes>) {
    let endpoint = fleet.peers.endpoint().clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = shared.lifecycle.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let Some(permit) = handshakes.try_admit(incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        spawn_link(&shared, &fleet, permit, incoming.connected());
    }
}

async fn serve_tcp(
    shared: Arc<Shared>,
    fleet: Arc<Fleet>,
    handshakes: Arc<PendingHandshakes>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let settings = super::peer::tcp_settings(fleet.config.gateway_timeout, true);
    while let Some((stream, remote)) = shared.lifecycle.accept(&listener, "tcp peer").await {
        let Some(permit) = handshakes.try_admit(remote.ip()) else {
            continue;
        };
        let acceptor = acceptor.clone();
        let connected = async move {
            let _ = stream.set_nodelay(true);
            let tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
            tcp::answering_end(tls, settings)
                .await
                .map(Tunnel::from)
                .map_err(|e| e.to_string())
        };
        spawn_link(&shared, &fleet, permit, connected);
    }
}

/// Runs one incoming link: its handshake, its proof within the handshake
/// timeout (holding `permit` until then), then its streams.
fn spawn_link(
    shared: &Arc<Shared>,
    fleet: &Arc<Fleet>,
    permit: PendingSlot,
    connected: impl Future<Output = Result<Tunnel, String>> + Send + 'static,
) {
    let shared = shared.clone();
    let fleet = fleet.clone();
    shared.lifecycle.tasks.clone().spawn(async move {
        let deadline = shared.config.handshake_timeout;
        let admitted =
            tokio::time::timeout(deadline, async { admit(connected.await?, &fleet).await }).await;
        drop(permit);
        match admitted {
            Ok(Ok((link, peer))) => serve_link(link, peer, shared, fleet).await,
            Ok(Err(reason)) => tracing::warn!(%reason, "peer link refused"),
            Err(_) => tracing::warn!(?deadline, "peer link did not prove itself in time"),
        }
    });
}

/// Checks the fleet proof of a connected link; returns the link and the
/// peer's fleet id.
async fn admit(link: Tunnel, fleet: &Fleet) -> Result<(Tunnel, String), String> {
    let remote = link.remote_address();
    let (mut send, mut recv) = link.accept_stream().await.map_err(|e| e.to_string())?;
    let hello: PeerHello = read_frame(&mut recv)
        .await
        .map_err(|e| format!("{remote}: {e}"))?;
    let material = super::peer::material(&link)?;
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
    if refusal.is_none() {
        // This end proves membership too ([`super::peer::AnswerProof`]).
        let proof = super::peer::AnswerProof {
            proof: fleet.peers.prove_answer(&material),
        };
        write_frame(&mut send, &proof)
            .await
            .map_err(|e| e.to_string())?;
    }
    let _ = TunnelSend::finish(&mut send);
    if let Some(reason) = refusal {
        // The dialler closes the link once it has read the answer; closing
        // first could discard the answer before it left.
        let _ = tokio::time::timeout(REFUSAL_LINGER, link.closed()).await;
        link.close(0, reason.as_bytes());
        return Err(format!("{remote} ({}): {reason}", hello.gateway_id));
    }
    super::peer::open_to_streams(&link);
    let transport = link.transport();
    tracing::info!(peer = %hello.gateway_id, %remote, %transport, "peer link accepted");
    Ok((link, hello.gateway_id))
}

/// Serves the streams of one admitted link until it closes.
async fn serve_link(link: Tunnel, peer: String, shared: Arc<Shared>, fleet: Arc<Fleet>) {
    loop {
        let stream = tokio::select! {
            stream = link.accept_stream() => stream,
            () = shared.lifecycle.shutdown.cancelled() => break,
        };
        let Ok((send, recv)) = stream else { break };
        fleet.counters.peer_streams_in.inc();
        shared
            .lifecycle
            .tasks
            .spawn(serve_stream(send, recv, shared.clone()));
    }
    tracing::info!(%peer, "peer link closed");
}

/// One customer stream from a peer: open the exit's stream, answer, relay.
async fn serve_stream(mut send: StreamSend, mut recv: StreamRecv, shared: Arc<Shared>) {
    let request = tokio::time::timeout(
        shared.config.handshake_timeout,
        read_frame::<PeerOpen, _>(&mut recv),
    )
    .await;
    let Ok(Ok(request)) = request else {
        send.reset(RESET_CODE);
        return;
    };
    let agent = shared
        .routing
        .exits
        .directory()
        .by_agent_id(&request.agent_id)
        .filter(|agent| agent.is_local());
    let Some(agent) = agent else {
        let reply = OpenReply::Failed {
            code: FailureCode::AgentUnavailable,
            detail: "the exit is no longer on this gateway".into(),
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = TunnelSend::finish(&mut send);
        return;
    };
    let load = StreamGuard::new(agent.clone());
    let started = Instant::now();
    let opened = shared
        .routing
        .exits
        .tunnels()
        .open(
            agent.key,
            request.host,
            request.port,
            shared.settings().open_timeout,
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
            shared.accounting.record_error(None, Some(&agent), &error);
            let reply = match error {
                ProxyError::Exit { code, detail } => OpenReply::Failed { code, detail },
                other => OpenReply::Failed {
                    code: FailureCode::AgentUnavailable,
                    detail: other.to_string(),
                },
            };
            let _ = write_frame(&mut send, &reply).await;
            let _ = TunnelSend::finish(&mut send);
            return;
        }
    };
    if write_frame(&mut send, &OpenReply::Opened { peer: stream.peer })
        .await
        .is_err()
    {
        return;
    }
    shared.accounting.usage.record_connection(None, &agent);
    let counters = LiveCounters::default();
    let (moved, _) = relay_streams(
        send,
        recv,
        stream.send,
        stream.recv,
        shared.settings().idle_timeout,
        &counters,
    )
    .await;
    shared
        .accounting
        .record_transfer(None, &agent, moved.to_tunnel, moved.from_tunnel);
    drop(load);
}
