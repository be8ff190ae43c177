//! An agent joining, for either transport (QUIC in [`super::quic`], TLS over
//! TCP in [`super::tcp`]): its handshake on the control stream, its place in
//! the directory and the tunnel table, and its life until it leaves.
//!
//! Flow per agent: QUIC (or TLS + HTTP/2) handshake -> control stream -> `Hello`
//! (version, token, identity proof, capacity) -> `Welcome` or `Reject` -> the agent is in the
//! directory (and its tunnel in [`crate::tunnel::Tunnels`]) until its connection
//! ends or it finishes its control stream, sending `Load` and `Draining` on the way.
//! Nothing after the transport's own handshake knows which transport it is.

use super::pending::PendingSlot;
use crate::abuse::source_network;
use crate::agent_tokens::Verdict;
use crate::directory::{Agent, Joining};
use crate::shared::Shared;
use exitpool_protocol::close_code;
use exitpool_protocol::{
    decode_body, hello_version, read_frame, read_frame_body, write_frame, AgentMessage, FrameError,
    GatewayMessage, IdentityProof, RejectReason, PROTOCOL_VERSION,
};
use exitpool_transport::leave::leave;
use exitpool_transport::{StreamRecv, StreamSend, Tunnel, TunnelConnection, TunnelSend};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tracing::{debug, info, Instrument};

/// Largest stream capacity an agent may claim.
pub const MAX_AGENT_STREAMS: u32 = 4096;

/// What a connection may make the gateway buffer before its `Hello` is accepted
/// (the connection's receive window until then): a `Hello` is at most one 4 KiB
/// frame, so anything more is a peer trying to pin memory. Raised to the full
/// window once the agent is in.
pub const PRE_HELLO_WINDOW: u32 = 64 * 1024;

/// Runs one agent's handshake (`handshake`, which ends in [`join`]) and then its
/// life, holding its pending `slot` until the handshake is over.
pub(crate) fn spawn_agent<F>(
    shared: Arc<Shared>,
    slot: PendingSlot,
    span: tracing::Span,
    handshake: F,
) where
    F: std::future::Future<Output = Result<AdmittedAgent, HandshakeError>> + Send + 'static,
{
    // Boxed before the task takes it, and freed once done: captured inline,
    // even the handshake's unstarted state (a QUIC `Incoming`) would size the
    // task for as long as the agent stays.
    let handshake = Box::pin(handshake);
    shared.lifecycle.tasks.clone().spawn(
        async move {
            let started = std::time::Instant::now();
            let handshake = tokio::select! {
                result = handshake => result,
                // Not yet an agent: `Gateway::shutdown`'s endpoint close tells it.
                () = shared.lifecycle.shutdown.cancelled() => return,
                // Another source's handshake took this place (see `pending`).
                () = slot.evicted.cancelled() => {
                    debug!("handshake gave its place to one from a network holding fewer");
                    return;
                }
            };
            let joined = match handshake {
                Ok(joined) => {
                    shared
                        .accounting
                        .metrics
                        .tunnel_handshake_seconds
                        .observe(started.elapsed().as_secs_f64());
                    drop(slot);
                    joined
                }
                Err(error) => {
                    info!(%error, "agent handshake failed");
                    return;
                }
            };
            serve_agent(joined, shared).await;
        }
        .instrument(span),
    );
}

/// Why an agent's handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// quinn's error, as its `io::Error` (same text).
    #[error("QUIC handshake: {0}")]
    Quic(std::io::Error),
    #[error("TLS/TCP handshake: {0}")]
    Tcp(std::io::Error),
    #[error("no valid Hello within {0:?}")]
    Timeout(Duration),
    #[error("control stream: {0}")]
    Frame(#[from] FrameError),
    #[error("first message was not Hello")]
    NotHello,
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("QUIC accept: {0}")]
    Accept(String),
}

/// An agent through its handshake: its tunnel, its control stream, and its
/// directory entry.
pub(crate) struct AdmittedAgent {
    connection: Tunnel,
    control_send: StreamSend,
    control_recv: StreamRecv,
    agent: Arc<Agent>,
}

/// The transport-independent part of a handshake: `Hello` on the control
/// stream, the checks, and the agent in the directory with a `Welcome`.
pub(crate) async fn join(
    connection: Tunnel,
    shared: &Shared,
) -> Result<AdmittedAgent, HandshakeError> {
    let (mut control_send, control_recv, body) = read_hello(&connection, shared).await?;
    // A token from the control plane's store is looked up (cached) first.
    let from_store = crate::tunnel::revocations::verdict_for_hello(&body, &shared.accounting).await;
    let hello = match check_hello_body(&body, &connection, shared, from_store.as_ref())? {
        Ok(hello) => hello,
        Err(refusal) => return Err(refuse(&connection, &mut control_send, refusal, shared).await),
    };
    // A valid Hello: from here the agent may use the full window.
    connection.admitted();
    let agent = enter_directory(&connection, hello, shared);
    let welcome = GatewayMessage::Welcome {
        observed_addr: connection.remote_address(),
        country: agent.location.country.clone(),
        exit_id: agent.exit_id.clone(),
    };
    if let Err(error) = write_frame(&mut control_send, &welcome).await {
        shared.routing.exits.forget(agent.key);
        return Err(error.into());
    }
    Ok(AdmittedAgent {
        connection,
        control_send,
        control_recv,
        agent,
    })
}

/// The control stream and the body of its first frame, within the handshake
/// deadline; the connection is closed when either does not come.
async fn read_hello(
    connection: &Tunnel,
    shared: &Shared,
) -> Result<(StreamSend, StreamRecv, Vec<u8>), HandshakeError> {
    let handshake_timeout = shared.config.handshake_timeout;
    let hello = async {
        let (send, mut recv) = connection
            .accept_control()
            .await
            .map_err(|e| HandshakeError::Frame(e.into()))?;
        let body = read_frame_body(&mut recv).await?;
        Ok::<_, HandshakeError>((send, recv, body))
    };
    match timeout(handshake_timeout, hello).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(error)) => {
            connection.close(close_code::PROTOCOL, b"bad hello");
            Err(error)
        }
        Err(_) => {
            connection.close(close_code::PROTOCOL, b"hello timeout");
            Err(HandshakeError::Timeout(handshake_timeout))
        }
    }
}

/// Decodes the first frame and checks it: `Err` (the connection closed) for
/// one that is no `Hello`, `Ok(Err)` for a `Hello` the agent is told it may
/// not join with.
fn check_hello_body(
    body: &[u8],
    connection: &Tunnel,
    shared: &Shared,
    from_store: Option<&Verdict>,
) -> Result<Result<CheckedHello, Refusal>, HandshakeError> {
    match decode_body::<AgentMessage>(body) {
        Ok(AgentMessage::Hello {
            version,
            identity,
            token,
            software,
            capacity,
            accepting,
        }) => Ok(
            check_hello(version, &identity, &token, connection, shared, from_store).map(
                |agent_id| CheckedHello {
                    agent_id,
                    token,
                    software,
                    capacity,
                    accepting,
                },
            ),
        ),
        // An agent of another protocol version may not decode at all: its
        // version alone earns it the clear refusal.
        Err(error) => match hello_version(body) {
            Some(version) if version != PROTOCOL_VERSION => Ok(Err(unsupported_version(version))),
            _ => {
                connection.close(close_code::PROTOCOL, b"bad hello");
                Err(error.into())
            }
        },
        Ok(_) => {
            connection.close(close_code::PROTOCOL, b"expected hello");
            Err(HandshakeError::NotHello)
        }
    }
}

/// Tells the agent why it may not join (best effort, within the handshake
/// deadline), then closes the connection.
async fn refuse(
    connection: &Tunnel,
    control_send: &mut StreamSend,
    (reason, message): Refusal,
    shared: &Shared,
) -> HandshakeError {
    let reject = GatewayMessage::Reject {
        reason,
        message: message.clone(),
    };
    let _ = timeout(shared.config.handshake_timeout, async {
        write_frame(control_send, &reject).await?;
        let _ = control_send.finish();
        control_send.stopped().await;
        Ok::<_, FrameError>(())
    })
    .await;
    connection.close(close_code::REJECTED, message.as_bytes());
    HandshakeError::Rejected(message)
}

/// The admitted agent's tunnel in the tunnel table and the agent in the
/// directory, replacing (and closing) a stale tunnel of the same agent.
fn enter_directory(connection: &Tunnel, hello: CheckedHello, shared: &Shared) -> Arc<Agent> {
    let CheckedHello {
        agent_id,
        token,
        software,
        capacity,
        accepting,
    } = hello;
    let location = shared.locate(connection.remote_address().ip());
    let (agent, replaced) = shared.routing.exits.admit(
        connection,
        Joining {
            agent_id,
            token,
            location,
            software,
            max_streams: capacity.max_streams.clamp(1, MAX_AGENT_STREAMS),
            accepting,
            observed: connection.remote_address(),
            home: None,
        },
    );
    if let Some(old) = replaced {
        // An agent moving from TLS/TCP back to QUIC keeps its old tunnel until
        // the customers on it are done, then leaves it itself; the directory
        // already routes to the new one. Same transport: a stale tunnel.
        if shared.routing.exits.tunnels().transport(old.key) == Some(connection.transport()) {
            shared.routing.exits.tunnels().close(
                old.key,
                close_code::REPLACED,
                b"replaced by a newer connection",
            );
        }
    }
    agent
}

/// What a `Hello` that passed every check brings: the id it proved.
struct CheckedHello {
    agent_id: String,
    token: exitpool_protocol::Secret,
    software: String,
    capacity: exitpool_protocol::Capacity,
    accepting: bool,
}

/// A refusal for the agent: why, and what to tell it.
type Refusal = (RejectReason, String);

/// Checks a `Hello` in order (version, token, identity, ban, caps) and returns the
/// agent id its identity proof proves, or why it may not join. An impostor
/// claiming a connected agent's key fails here, before the directory is
/// touched, so the live agent never notices. (One Ed25519 verification, tens of
/// microseconds: less than the QUIC handshake before it, so it runs inline.)
fn check_hello(
    version: u16,
    identity: &IdentityProof,
    token: &exitpool_protocol::Secret,
    connection: &Tunnel,
    shared: &Shared,
    from_store: Option<&Verdict>,
) -> Result<String, Refusal> {
    if version != PROTOCOL_VERSION {
        return Err(unsupported_version(version));
    }
    let accepted = match from_store {
        // No lookup: the flags or file hold it, or there is no store.
        None => shared
            .accounting
            .accounts
            .current()
            .agent_tokens
            .accepts(token.expose()),
        Some(Verdict::Accepted { .. }) => true,
        Some(Verdict::Unknown) => false,
        Some(Verdict::Revoked) => {
            return Err((
                RejectReason::BadToken,
                "the agent token was revoked by the gateway's operator; ask for a new one"
                    .to_owned(),
            ))
        }
        Some(Verdict::Unavailable(why)) => {
            debug!(%why, "the store could not check an agent token");
            return Err((
                RejectReason::TooManyAgents,
                "the gateway cannot check agent tokens now; this agent will try again later"
                    .to_owned(),
            ));
        }
    };
    if !accepted {
        return Err((
            RejectReason::BadToken,
            "the agent token is not accepted by this gateway; check --token".to_owned(),
        ));
    }
    let agent_id = exitpool_transport::tunnel::identity_material(connection)
        .map_err(|error| error.to_string())
        .and_then(|material| {
            identity
                .verify(&material)
                .map_err(|error| error.to_string())
        })
        .map_err(|error| {
            shared.accounting.metrics.agent_identity_refusals.inc();
            (RejectReason::BadAgentId, error)
        })?;
    // A banned device (crate::bans) is told so; the agent logs the message
    // and stops. (The protocol has no reason of its own for it.)
    let exit_id = shared.routing.exits.directory().exit_id(&agent_id);
    if shared.routing.bans.is_banned(&exit_id) {
        return Err((
            RejectReason::BadAgentId,
            format!("this device (exit {exit_id}) is banned by the gateway's operator; it may not join until unbanned"),
        ));
    }
    match over_agent_caps(&agent_id, token.expose(), connection, shared, from_store) {
        Some(message) => {
            shared.accounting.metrics.agents_turned_away.inc();
            Err((RejectReason::TooManyAgents, message))
        }
        None => Ok(agent_id),
    }
}

fn unsupported_version(version: u16) -> Refusal {
    (
        RejectReason::UnsupportedVersion,
        format!(
            "this gateway speaks protocol version {PROTOCOL_VERSION}, the agent {version}; upgrade the agent"
        ),
    )
}

/// Why one more agent may not join now: its source network (an IPv4 address or
/// an IPv6 /64) or its enrolment token already has its maximum connected. An
/// agent replacing its own stale connection is not one more. Checked at join, so
/// handshakes finishing at the same moment may pass a cap by the few in flight.
fn over_agent_caps(
    agent_id: &str,
    token: &str,
    connection: &Tunnel,
    shared: &Shared,
    from_store: Option<&Verdict>,
) -> Option<String> {
    if shared
        .routing
        .exits
        .directory()
        .by_agent_id(agent_id)
        .is_some()
    {
        return None;
    }
    let per_address = shared.config.max_agents_per_address;
    let network = source_network(connection.remote_address().ip());
    if shared.routing.exits.directory().agents_from(network) >= per_address {
        return Some(format!(
            "{per_address} agents are already connected from this network; this agent will try again later"
        ));
    }
    let max = match from_store {
        Some(Verdict::Accepted { max_agents, .. }) => (*max_agents)?,
        _ => u64::from(
            shared
                .accounting
                .accounts
                .current()
                .agent_tokens
                .find(token)?
                .max_agents?,
        ),
    };
    (shared.routing.exits.directory().agents_with_token(token) >= max as usize).then(|| {
        format!("this enrolment token's {max} agents are all connected; this agent will try again later")
    })
}

/// Follows a joined agent's control stream until its connection ends, then drops it
/// from the directory.
async fn serve_agent(admitted: AdmittedAgent, shared: Arc<Shared>) {
    let AdmittedAgent {
        connection,
        mut control_send,
        mut control_recv,
        agent,
    } = admitted;
    tracing::Span::current().record("exit", agent.exit_id.as_str());
    info!(
        exit = %agent.exit_id,
        transport = %connection.transport(),
        country = agent.location.country.as_deref().unwrap_or("??"),
        capacity = agent.max_streams.load(std::sync::atomic::Ordering::Relaxed),
        software = %agent.software,
        "agent joined"
    );
    let reason = loop {
        let message = tokio::select! {
            message = read_frame::<AgentMessage, _>(&mut control_recv) => message,
            () = shared.lifecycle.shutdown.cancelled() => {
                // No new customers reach this agent from here on.
                shared.routing.exits.directory().set_accepting(agent.key, false);
                // Boxed for the same reason as the handshake: it runs once, at the end.
                let code = close_code::SHUTDOWN;
                Box::pin(leave(&connection, &mut control_send, code, b"gateway shutting down")).await;
                break "gateway shutting down".to_owned();
            }
        };
        match message {
            Ok(AgentMessage::Load { accepting, .. }) => {
                shared
                    .routing
                    .exits
                    .directory()
                    .set_accepting(agent.key, accepting);
            }
            Ok(AgentMessage::Draining) => {
                debug!("agent draining");
                shared
                    .routing
                    .exits
                    .directory()
                    .set_accepting(agent.key, false);
            }
            Ok(AgentMessage::Hello { .. }) => {
                connection.close(close_code::PROTOCOL, b"duplicate hello");
                break "protocol error: second Hello".to_owned();
            }
            Err(error) => {
                // A garbled or oversized message is a protocol error; a closed
                // connection or a finished control stream is an ordinary leave.
                if let Some(reason) = connection.close_reason() {
                    break reason.to_string();
                }
                if matches!(error, FrameError::Ended) {
                    connection.close(close_code::LEFT, b"agent left");
                    break "agent finished its control stream".to_owned();
                }
                connection.close(close_code::PROTOCOL, b"bad control message");
                break format!("protocol error: {error}");
            }
        }
    };
    shared.routing.exits.forget(agent.key);
    info!(exit = %agent.exit_id, %reason, "agent left");
}
