//! One tunnel session, from reaching the gateway to its end: reach it (or take
//! over the QUIC tunnel a probe found), say `Hello`, then serve relay streams
//! and report load until shutdown, the gateway leaving, a failure, silence or a
//! move to QUIC; how it ended ([`SessionEnd`]) decides what
//! [`super::reconnect`] does next.

use super::control::{hello, send_load};
use super::drain::{drain, drain_left_behind};
use super::end::{RetryReason, SessionEnd};
use super::pins::remember_pin;
use super::reach_gateway::{quic_probe, remember_transport, GatewayDialer};
use super::silence::Silence;
use super::stream::{serve_stream, StreamContext};
use crate::config::TransportChoice;
use crate::shared::Shared;
use exitpool_protocol::{close_code, read_frame, FrameError, GatewayMessage, LOAD_REPORT_INTERVAL};
use exitpool_transport::{
    CloseReason, StreamRecv, StreamSend, Transport, Tunnel, TunnelConnection,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{info, warn, Instrument};

/// A tunnel the gateway has welcomed, and what its serving loop works with.
struct Welcomed {
    connection: Tunnel,
    /// The gateway address it reached.
    gateway: SocketAddr,
    /// Whether there were other gateway addresses to go to.
    several: bool,
    control_send: StreamSend,
    control_recv: StreamRecv,
    /// This device's public address as the gateway saw it.
    observed: IpAddr,
    /// Pausing and resuming, watched from before the first load report.
    paused: watch::Receiver<bool>,
    /// The quota running out or renewing, likewise.
    exhausted: watch::Receiver<bool>,
    load_timer: Interval,
    interface_refresh: Interval,
    /// The relay streams' tasks.
    streams: TaskTracker,
}

/// One session: reach the gateway (or continue on `moved_to`), join, serve
/// until it ends, and close or drain what is left.
pub(super) async fn session(
    dialer: &GatewayDialer,
    moved_to: Option<Tunnel>,
    prefer_tcp: &mut bool,
    shared: &Arc<Shared>,
    pin_proven: &mut bool,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let config = &shared.config;
    let (connection, gateway, several) = match moved_to {
        Some(connection) => {
            let address = connection.remote_address();
            (connection, address, config.gateways.len() > 1)
        }
        None => tokio::select! {
            result = dialer.reach(config, *prefer_tcp) => match result {
                Ok(reached) => (reached.tunnel, reached.address, reached.candidates > 1),
                Err(reason) => return SessionEnd::Retry(RetryReason::Unreachable(reason)),
            },
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
        },
    };
    let mut welcomed =
        match join(connection, gateway, several, prefer_tcp, shared, pin_proven).await {
            Ok(welcomed) => welcomed,
            Err(end) => return end,
        };
    let end = serve(&mut welcomed, dialer, shared, shutdown).await;
    welcomed.streams.close();
    match &end {
        SessionEnd::Shutdown => {}
        SessionEnd::Moved(_) => {
            tokio::spawn(
                drain_left_behind(
                    welcomed.connection,
                    welcomed.control_send,
                    welcomed.streams,
                    shared.clone(),
                    shutdown.clone(),
                )
                .in_current_span(),
            );
        }
        _ => welcomed
            .connection
            .close(close_code::AGENT_SHUTDOWN, b"agent reconnecting"),
    }
    end
}

/// Says `Hello` on `connection` and, once welcomed, does what a new session
/// does before it serves: counts the connect, remembers the pin and the
/// transport that won, reports the load once, and puts the device's own
/// addresses in the policy.
async fn join(
    connection: Tunnel,
    gateway: SocketAddr,
    several: bool,
    prefer_tcp: &mut bool,
    shared: &Arc<Shared>,
    pin_proven: &mut bool,
) -> Result<Welcomed, SessionEnd> {
    let config = &shared.config;
    let transport = connection.transport();
    let (mut control_send, control_recv, info) =
        match tokio::time::timeout(config.handshake_timeout, hello(&connection, shared)).await {
            Ok(Ok(joined)) => joined,
            Ok(Err(end)) => return Err(end),
            Err(_) => return Err(SessionEnd::Retry(RetryReason::NoWelcome)),
        };
    shared.counters.connects.fetch_add(1, Ordering::Relaxed);
    if !*pin_proven {
        remember_pin(shared).await;
        *pin_proven = true;
    }
    if config.transport == TransportChoice::Auto {
        *prefer_tcp = transport == Transport::Tcp;
        remember_transport(shared, transport).await;
    }
    info!(exit = %info.exit_id, %gateway, %transport, observed = %info.observed_addr, country = info.country.as_deref().unwrap_or("??"), "connected to the gateway");
    let paused = shared.paused.subscribe();
    let exhausted = shared.meter.subscribe_exhausted();
    // The load once now, first on the control stream after the Hello, so a
    // pause or a quota change since the Hello reaches the gateway (the
    // watches see changes from here on); then restated every interval.
    if let Err(error) = send_load(&mut control_send, shared).await {
        return Err(SessionEnd::Retry(RetryReason::control(
            "control stream",
            &error,
        )));
    }
    let mut load_timer = tokio::time::interval(LOAD_REPORT_INTERVAL);
    load_timer.reset();
    let observed = info.observed_addr.ip();
    // The own addresses are in the policy before the first stream is taken.
    refresh_own_addresses(shared, observed, gateway.ip()).await;
    shared.session.send_replace(Some(info));
    let mut interface_refresh = tokio::time::interval(config.interface_refresh);
    interface_refresh.reset();
    Ok(Welcomed {
        connection,
        gateway,
        several,
        control_send,
        control_recv,
        observed,
        paused,
        exhausted,
        load_timer,
        interface_refresh,
        streams: TaskTracker::new(),
    })
}

/// Serves the welcomed tunnel until it ends: relay streams as they come, load
/// reports, the own addresses refreshed, silence watched, QUIC probed from TCP.
async fn serve(
    welcomed: &mut Welcomed,
    dialer: &GatewayDialer,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let config = &shared.config;
    let Welcomed {
        connection,
        gateway,
        several,
        control_send,
        control_recv,
        observed,
        paused,
        exhausted,
        load_timer,
        interface_refresh,
        streams,
    } = welcomed;
    let transport = connection.transport();
    let auto = config.transport == TransportChoice::Auto;
    let slots = Arc::new(Semaphore::new(config.max_streams as usize));
    // UDP flows per tunnel (crate::udp), on top of their stream slots, and the
    // routing of their DATAGRAM frames, which ends with the session.
    let flows = crate::udp::Flows::new(&config.udp, connection.clone());
    let _routing = AbortOnDropHandle::new(tokio::spawn(flows.clone().route_datagrams()));
    // Over TCP under `auto`, QUIC is tried again in the background.
    let probing = transport == Transport::Tcp && auto;
    let probe = quic_probe(dialer, config, *gateway);
    tokio::pin!(probe);
    let mut silence = Silence::new(connection);
    // A silent QUIC tunnel means UDP is degraded under `auto`; with other
    // gateways to go to, it may as well mean this one died (a crash sends no
    // close): either way, move on long before the idle timeout.
    let watch_silence = transport == Transport::Quic && (auto || *several);
    let mut degraded_check = tokio::time::interval(config.keep_alive);
    // The first check one interval from now, not at once.
    degraded_check.reset();
    loop {
        tokio::select! {
            accepted = connection.accept_stream() => match accepted {
                Ok((send, recv)) => spawn_stream(streams, shared, (&slots, &flows), send, recv),
                Err(_) if gateway_stopped(connection) => break SessionEnd::GatewayStopped,
                Err(_) if transport == Transport::Quic
                    && connection.close_reason() == Some(CloseReason::TimedOut)
                    && auto =>
                {
                    break SessionEnd::Degraded
                }
                Err(error) => break SessionEnd::Retry(RetryReason::TunnelLost(error.to_string())),
            },
            _ = degraded_check.tick(), if watch_silence => {
                if silence.degraded(connection) {
                    if auto {
                        break SessionEnd::Degraded;
                    }
                    break SessionEnd::Retry(RetryReason::Silent);
                }
            }
            quic = &mut probe, if probing => break SessionEnd::Moved(quic),
            _ = interface_refresh.tick() => refresh_own_addresses(shared, *observed, gateway.ip()).await,
            _ = load_timer.tick() => {
                if let Err(error) = send_load(control_send, shared).await {
                    break SessionEnd::Retry(RetryReason::control("control stream", &error));
                }
            }
            // Pausing, resuming and the quota running out or renewing are told to
            // the gateway at once, so it stops (or resumes) routing here.
            changed = paused.changed() => {
                if changed.is_err() || send_load(control_send, shared).await.is_err() {
                    break SessionEnd::Retry(RetryReason::ControlClosed);
                }
            }
            changed = exhausted.changed() => {
                if changed.is_err() || send_load(control_send, shared).await.is_err() {
                    break SessionEnd::Retry(RetryReason::ControlClosed);
                }
            }
            message = read_frame::<GatewayMessage, _>(control_recv) => {
                break match message {
                    // A stopping gateway finishes the control stream before it
                    // closes: QUIC retransmits the finish, not the close.
                    Err(FrameError::Ended) => SessionEnd::GatewayStopped,
                    Err(_) if gateway_stopped(connection) => SessionEnd::GatewayStopped,
                    Ok(message) => SessionEnd::Retry(RetryReason::UnexpectedMessage(format!("{message:?}"))),
                    Err(error) => SessionEnd::Retry(RetryReason::control("control stream", &error)),
                };
            }
            () = shutdown.cancelled() => {
                drain(connection, control_send, streams, config).await;
                break SessionEnd::Shutdown;
            }
        }
    }
}

/// Serves a relay stream the gateway opened in a task of its own, under the
/// policy in force now.
fn spawn_stream(
    streams: &TaskTracker,
    shared: &Arc<Shared>,
    (slots, flows): (&Arc<Semaphore>, &Arc<crate::udp::Flows>),
    send: StreamSend,
    recv: StreamRecv,
) {
    let stream = StreamContext {
        shared: shared.clone(),
        policy: shared.policy.borrow().clone(),
        slots: slots.clone(),
        flows: flows.clone(),
        accepting: shared.accepting(),
    };
    // Boxed so the wrappers on the way into the task move a pointer, not the
    // stream's whole (KiB-sized) state; in the tunnel's span, as a span per
    // stream would name nothing more.
    streams.spawn(Box::pin(serve_stream(stream, send, recv)).in_current_span());
}

/// Puts the configured policy plus the device's own addresses in force: the
/// gateway it is connected to, the public address the gateway observed, every
/// interface address with its on-link network, and the network's NAT64 prefix,
/// read now. What cannot be read keeps what was refused before.
async fn refresh_own_addresses(shared: &Shared, observed: IpAddr, gateway: IpAddr) {
    let config = &shared.config;
    let before = shared.policy.borrow().clone();
    let interfaces: Vec<(IpAddr, u8)> = match config.interfaces.read(config.handshake_timeout).await
    {
        Ok(addresses) => addresses,
        Err(error) => {
            warn!(%error, "reading the interface addresses failed; keeping the ones read before");
            let alone = before.own_addresses().iter().map(|&ip| (ip, 128));
            before.own_v4_networks().chain(alone).collect()
        }
    };
    // Without address rules (the tests' --allow-private) nothing is asked.
    let nat64 = if config.policy.allows_private() {
        Vec::new()
    } else {
        match config.nat64.discover(config.handshake_timeout).await {
            Ok(prefixes) => prefixes,
            Err(error) => {
                warn!(%error, "looking for the network's NAT64 prefix failed; keeping the ones found before");
                before.nat64_prefixes().collect()
            }
        }
    };
    let policy = config
        .policy
        .clone()
        .with_gateway_address(gateway)
        .with_own_address(observed);
    let policy = interfaces
        .into_iter()
        .fold(policy, |policy, (ip, prefix_len)| {
            policy.with_own_network(ip, prefix_len)
        });
    let policy = nat64.into_iter().fold(policy, |policy, (prefix, length)| {
        policy.with_nat64_prefix(prefix, length)
    });
    shared.policy.send_replace(Arc::new(policy));
}

/// Whether the gateway closed this tunnel because it is shutting down, or a
/// gateway that restarted without notice (a crash) reset it: either way every
/// agent hears it at about the same moment, so reconnects are spread out and
/// start from a fresh backoff. Read from the transport's close reason, the
/// same for both transports: a close with the gateway's SHUTDOWN code (QUIC's
/// close, or the TLS/TCP tunnel's close stream; any other code, such as
/// replaced, unresponsive or rejected, is an ordinary retry), an end with no
/// code at all (a FIN from a crashed gateway's host ending a TLS/TCP tunnel;
/// a QUIC close always carries one), or a reset (a QUIC stateless reset, or a
/// TCP reset from a crashed gateway's host).
fn gateway_stopped(connection: &Tunnel) -> bool {
    match connection.close_reason() {
        Some(CloseReason::Peer(Some(code))) => code == close_code::SHUTDOWN,
        Some(CloseReason::Peer(None)) => true,
        Some(CloseReason::Reset(_)) => true,
        _ => false,
    }
}
