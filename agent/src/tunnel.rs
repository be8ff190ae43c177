//! The agent's tunnel: connect to the gateway, say `Hello`, serve relay streams,
//! report load, and reconnect with capped exponential backoff and full jitter after
//! network failures. A rejected token stops the agent, and so does a pin
//! mismatch on a pin it has never connected with (a typo in `--pin`): retrying
//! cannot fix them. A mismatch on a pin it has connected with before is more
//! likely a forgery on the path, so it is retried after a long wait with a loud
//! warning: one forged handshake must not end a volunteer's sharing.

use crate::config::AgentConfig;
use crate::connect::{quic_probe, Dialer};
use crate::dial::{dial, DialError};
use crate::error::AgentError;
use crate::policy::ExitPolicy;
use crate::shared::Shared;
use crate::stats::{ActiveStream, SessionInfo};
use exitpool_protocol::{
    close_code, read_frame, write_frame, AgentMessage, Capacity, FailureCode, FrameError,
    GatewayMessage, OpenReply, OpenRequest, RejectReason, IDLE_TIMEOUT, LOAD_REPORT_INTERVAL,
    PROTOCOL_VERSION,
};
use exitpool_transport::leave::leave;
use exitpool_transport::relay::{relay, LiveCounters};
use exitpool_transport::{
    CloseReason, StreamRecv, StreamSend, Transport, Tunnel, TunnelConnection, TunnelSend,
};
use rand::Rng;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

/// First reconnect delay cap; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest reconnect delay, so agents are back soon after a gateway restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Window over which agents spread their reconnects after the gateway says it is
/// shutting down (a restart): 10,000 agents arrive at about 2,000 per second.
pub const RESTART_SPREAD: Duration = Duration::from_secs(5);
/// A tunnel that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// A relay with no bytes either way for this long is closed (the gateway usually
/// closes idle customers much earlier; this is the agent's own bound).
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest a new stream waits for a stream slot before the agent answers that it
/// is at its limit: long enough for a finishing stream's task to let go of its
/// slot, short enough that a customer of a truly full exit hears it at once.
const SLOT_GRACE: Duration = Duration::from_millis(100);

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    /// The next delay: uniform in [0, min(max, base * 2^failures)).
    pub fn next_delay(&mut self) -> Duration {
        let cap = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        cap.mul_f64(rand::rng().random::<f64>())
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Transport settings for the tunnel: keep-alive under home NAT timeouts, bounded
/// receive windows, and exactly as many incoming streams as the agent serves.
pub fn transport_config(max_streams: u32, keep_alive: Duration) -> quinn::TransportConfig {
    let mut transport = exitpool_transport::udp::base_transport();
    // The idle timeout stays above two keep-alives, so a silent tunnel is
    // first seen as degraded (and the agent falls back to TCP).
    let idle = IDLE_TIMEOUT.max(keep_alive * 2 + keep_alive / 2);
    transport
        .max_idle_timeout(Some(
            idle.try_into()
                .unwrap_or_else(|_| IDLE_TIMEOUT.try_into().expect("idle timeout fits")),
        ))
        .keep_alive_interval(Some(keep_alive))
        .max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u32.into());
    transport
}

enum SessionEnd {
    /// Shutdown was asked for and done.
    Shutdown,
    /// The gateway closed the tunnel because it is shutting down.
    GatewayStopped,
    /// A failure worth retrying.
    Retry(String),
    /// A failure retrying cannot fix.
    Fatal(AgentError),
    /// The QUIC tunnel carried nothing for two keep-alive intervals: UDP is
    /// degraded here, so the agent falls back as if the handshake had failed.
    Degraded,
    /// QUIC works again: the TCP tunnel drains in the background and the
    /// agent continues on this connection.
    Moved(quinn::Connection),
}

/// Runs the agent until shutdown or a fatal error.
pub(crate) async fn run(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let config = &shared.config;
    let local = SocketAddr::new(config.bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), 0);
    let endpoint = crate::connect::bind_endpoint(local).map_err(|source| AgentError::Bind {
        addr: local,
        source,
    })?;
    let configs = crate::tls::client_configs(
        config.pin,
        transport_config(config.max_streams, config.keep_alive),
    )
    .map_err(|e| AgentError::Tls(e.to_string()))?;
    let verifier = configs.verifier.clone();
    let dialer = Dialer {
        endpoint,
        configs,
        agent_id: shared.agent_id.clone(),
    };
    let mut backoff = Backoff::new();
    let mut pin_proven = pin_proven(&shared).await;
    let mut prefer_tcp = crate::connect::remembered_tcp(&shared).await;
    let mut moved_to = None;
    let result = loop {
        let started = Instant::now();
        let end = session(
            &dialer,
            moved_to.take(),
            &mut prefer_tcp,
            &shared,
            &mut pin_proven,
            &shutdown,
        )
        .instrument(info_span!("tunnel", gateways = %config.gateways.join(",")))
        .await;
        shared.session.send_replace(None);
        match end {
            SessionEnd::Shutdown => break Ok(()),
            SessionEnd::Moved(connection) => {
                info!("QUIC works again: moving the tunnel over, the TLS/TCP one drains");
                backoff.reset();
                moved_to = Some(connection);
            }
            SessionEnd::Degraded => {
                warn!("the QUIC tunnel carried nothing for two keep-alive intervals; falling back to TLS/TCP");
                prefer_tcp = true;
                crate::connect::remember(&shared, Transport::Tcp).await;
            }
            SessionEnd::Fatal(error) => break Err(error),
            SessionEnd::Retry(_) if verifier.take_mismatch() => {
                if !pin_proven {
                    break Err(AgentError::PinMismatch(config.pin));
                }
                shared
                    .counters
                    .pin_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                let delay = config
                    .pin_mismatch_retry
                    .mul_f64(0.5 + rand::rng().random::<f64>() / 2.0);
                warn!(
                    pin = %config.pin,
                    retry_in_secs = delay.as_secs(),
                    "THE GATEWAY'S CERTIFICATE DOES NOT MATCH THE PIN this agent has connected with before. \
                     Someone on the network path may be impersonating the gateway (nothing was sent to it), \
                     or its operator replaced the certificate (then set the new --pin). Retrying later"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break Ok(()),
                }
            }
            SessionEnd::GatewayStopped => {
                // Every agent hears this at the same moment: spread the reconnects
                // over RESTART_SPREAD so a restarted gateway is not stampeded.
                backoff.reset();
                let delay = RESTART_SPREAD.mul_f64(rand::rng().random::<f64>());
                warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "the gateway stopped or restarted; reconnecting"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break Ok(()),
                }
            }
            SessionEnd::Retry(reason) => {
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(%reason, retry_in_ms = delay.as_millis() as u64, "tunnel down; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break Ok(()),
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), dialer.endpoint.wait_idle()).await;
    result
}

/// Puts the configured policy plus the device's own addresses in force: the
/// public address the gateway observed and every interface address, read now.
/// If they cannot be read, the addresses refused so far stay refused.
async fn refresh_own_addresses(shared: &Shared, observed: IpAddr) {
    let config = &shared.config;
    let interfaces = match config.interfaces.read(config.handshake_timeout).await {
        Ok(addresses) => addresses,
        Err(error) => {
            warn!(%error, "reading the interface addresses failed; keeping the ones read before");
            shared.policy.borrow().own_addresses().to_vec()
        }
    };
    let policy = config
        .policy
        .clone()
        .with_own_addresses(std::iter::once(observed).chain(interfaces));
    shared.policy.send_replace(Arc::new(policy));
}

/// Whether this agent has once been welcomed by a gateway with its pin, as the
/// state directory remembers (read off the runtime thread); false without one.
async fn pin_proven(shared: &Arc<Shared>) -> bool {
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
async fn remember_pin(shared: &Arc<Shared>) {
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

async fn session(
    dialer: &Dialer,
    moved_to: Option<quinn::Connection>,
    prefer_tcp: &mut bool,
    shared: &Arc<Shared>,
    pin_proven: &mut bool,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let config = &shared.config;
    let (connection, gateway, several) = match moved_to {
        Some(connection) => {
            let address = connection.remote_address();
            (Tunnel::Quic(connection), address, config.gateways.len() > 1)
        }
        None => tokio::select! {
            result = dialer.connect(config, *prefer_tcp) => match result {
                Ok(joined) => (joined.tunnel, joined.address, joined.candidates > 1),
                Err(reason) => return SessionEnd::Retry(reason),
            },
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
        },
    };
    let transport = connection.transport();

    let (mut control_send, mut control_recv, info) =
        match tokio::time::timeout(config.handshake_timeout, hello(&connection, shared)).await {
            Ok(Ok(joined)) => joined,
            Ok(Err(end)) => return end,
            Err(_) => return SessionEnd::Retry("no answer to Hello".into()),
        };
    shared.counters.connects.fetch_add(1, Ordering::Relaxed);
    if !*pin_proven {
        remember_pin(shared).await;
        *pin_proven = true;
    }
    if config.transport == crate::config::TransportChoice::Auto {
        *prefer_tcp = transport == Transport::Tcp;
        crate::connect::remember(shared, transport).await;
    }
    info!(exit = %info.exit_id, %gateway, %transport, observed = %info.observed_addr, country = info.country.as_deref().unwrap_or("??"), "connected to the gateway");
    let mut paused = shared.paused.subscribe();
    let mut exhausted = shared.meter.subscribe_exhausted();
    // The load once now, first on the control stream after the Hello, so a
    // pause or a quota change since the Hello reaches the gateway (the
    // watches see changes from here on); then restated every interval.
    if let Err(error) = send_load(&mut control_send, shared).await {
        return SessionEnd::Retry(format!("control stream: {error}"));
    }
    let mut load_timer = tokio::time::interval(LOAD_REPORT_INTERVAL);
    load_timer.reset();
    let observed = info.observed_addr.ip();
    // The own addresses are in the policy before the first stream is taken.
    refresh_own_addresses(shared, observed).await;
    shared.session.send_replace(Some(info));
    let mut interface_refresh = tokio::time::interval(config.interface_refresh);
    interface_refresh.reset();

    let streams = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.max_streams as usize));
    // Over TCP under `auto`, QUIC is tried again in the background.
    let probing =
        transport == Transport::Tcp && config.transport == crate::config::TransportChoice::Auto;
    let probe = quic_probe(dialer, config, gateway);
    tokio::pin!(probe);
    let mut silence = Silence::new(&connection);
    // A silent QUIC tunnel means UDP is degraded under `auto`; with other
    // gateways to go to, it may as well mean this one died (a crash sends no
    // close): either way, move on long before the idle timeout.
    let watch_silence = transport == Transport::Quic
        && (config.transport == crate::config::TransportChoice::Auto || several);
    let mut degraded_check = tokio::time::interval(config.keep_alive);
    // The first check one interval from now, not at once.
    degraded_check.reset();
    let end = loop {
        tokio::select! {
            accepted = connection.accept_stream() => match accepted {
                Ok((send, recv)) => {
                    let accepting = shared.accepting();
                    let policy = shared.policy.borrow().clone();
                    let stream = StreamContext { shared: shared.clone(), policy, slots: slots.clone(), accepting };
                    // Boxed so the wrappers on the way into the task move a
                    // pointer, not the stream's whole (KiB-sized) state; in the
                    // tunnel's span, as a span per stream would name nothing more.
                    streams.spawn(Box::pin(serve_stream(stream, send, recv)).in_current_span());
                }
                Err(_) if gateway_stopped(&connection) => break SessionEnd::GatewayStopped,
                Err(_) if transport == Transport::Quic
                    && connection.close_reason() == Some(CloseReason::TimedOut)
                    && config.transport == crate::config::TransportChoice::Auto =>
                {
                    break SessionEnd::Degraded
                }
                Err(error) => break SessionEnd::Retry(error.to_string()),
            },
            _ = degraded_check.tick(), if watch_silence => {
                if silence.degraded(&connection) {
                    if config.transport == crate::config::TransportChoice::Auto {
                        break SessionEnd::Degraded;
                    }
                    break SessionEnd::Retry("the gateway sent nothing for two keep-alive intervals".into());
                }
            }
            quic = &mut probe, if probing => break SessionEnd::Moved(quic),
            _ = interface_refresh.tick() => refresh_own_addresses(shared, observed).await,
            _ = load_timer.tick() => {
                if let Err(error) = send_load(&mut control_send, shared).await {
                    break SessionEnd::Retry(format!("control stream: {error}"));
                }
            }
            // Pausing, resuming and the quota running out or renewing are told to
            // the gateway at once, so it stops (or resumes) routing here.
            changed = paused.changed() => {
                if changed.is_err() || send_load(&mut control_send, shared).await.is_err() {
                    break SessionEnd::Retry("control stream closed".into());
                }
            }
            changed = exhausted.changed() => {
                if changed.is_err() || send_load(&mut control_send, shared).await.is_err() {
                    break SessionEnd::Retry("control stream closed".into());
                }
            }
            message = read_frame::<GatewayMessage, _>(&mut control_recv) => {
                break match message {
                    // A stopping gateway finishes the control stream before it
                    // closes: QUIC retransmits the finish, not the close.
                    Err(FrameError::Ended) => SessionEnd::GatewayStopped,
                    Err(_) if gateway_stopped(&connection) => SessionEnd::GatewayStopped,
                    Ok(message) => SessionEnd::Retry(format!("unexpected control message {message:?}")),
                    Err(error) => SessionEnd::Retry(format!("control stream: {error}")),
                };
            }
            () = shutdown.cancelled() => {
                drain(&connection, &mut control_send, &streams, config).await;
                break SessionEnd::Shutdown;
            }
        }
    };
    streams.close();
    match &end {
        SessionEnd::Shutdown => {}
        SessionEnd::Moved(_) => {
            tokio::spawn(
                drain_left_behind(
                    connection,
                    control_send,
                    streams,
                    shared.clone(),
                    shutdown.clone(),
                )
                .in_current_span(),
            );
        }
        _ => connection.close(close_code::AGENT_SHUTDOWN, b"agent reconnecting"),
    }
    end
}

/// Counts keep-alive intervals in which a QUIC tunnel received nothing: its
/// own keep-alives are acknowledged, so a working path always brings
/// something back.
struct Silence {
    received: u64,
    silent_intervals: u32,
}

impl Silence {
    fn new(connection: &Tunnel) -> Silence {
        Silence {
            received: Self::datagrams(connection),
            silent_intervals: 0,
        }
    }

    fn datagrams(connection: &Tunnel) -> u64 {
        match connection {
            Tunnel::Quic(quic) => quic.stats().udp_rx.datagrams,
            Tunnel::Tcp(_) => 0,
        }
    }

    /// Called once per keep-alive interval: whether this is the second
    /// silent interval in a row.
    fn degraded(&mut self, connection: &Tunnel) -> bool {
        let received = Self::datagrams(connection);
        if received == self.received {
            self.silent_intervals += 1;
        } else {
            self.silent_intervals = 0;
            self.received = received;
        }
        self.silent_intervals >= 2
    }
}

/// The TCP tunnel an agent left for QUIC: routes nothing new (`Draining`),
/// lets its live streams finish within [`AgentConfig::move_drain`], then
/// [`leave`]s. Customers' transfers on it are not cut.
async fn drain_left_behind(
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

/// Whether the gateway closed this tunnel because it is shutting down, or a
/// gateway that restarted without notice (a crash) reset it: either way every
/// agent hears it at about the same moment, so reconnects are spread out and
/// start from a fresh backoff.
fn gateway_stopped(connection: &Tunnel) -> bool {
    let connection = match connection {
        Tunnel::Quic(quic) => quic,
        // A stopping gateway's close stream says SHUTDOWN, as QUIC's close
        // does; any other code (replaced, unresponsive, rejected) is an
        // ordinary retry. One that crashes ends every TCP tunnel with no code
        // (a FIN or a reset from its host), the same moment for every agent.
        Tunnel::Tcp(tcp) => {
            return match tcp.close_reason() {
                Some(CloseReason::Peer(Some(code))) => code == close_code::SHUTDOWN,
                Some(CloseReason::Peer(None)) => true,
                Some(CloseReason::Lost(why)) => why.contains("reset"),
                _ => false,
            }
        }
    };
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            close.error_code == close_code::SHUTDOWN.into()
        }
        Some(quinn::ConnectionError::Reset) => true,
        _ => false,
    }
}

async fn hello(
    connection: &Tunnel,
    shared: &Shared,
) -> Result<(StreamSend, StreamRecv, SessionInfo), SessionEnd> {
    let config = &shared.config;
    let retry =
        |what: &str, error: &dyn std::fmt::Display| SessionEnd::Retry(format!("{what}: {error}"));
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
        }) => Err(SessionEnd::Retry(format!(
            "the gateway is full for now: {message}"
        ))),
        Ok(GatewayMessage::Reject { reason, message }) => Err(SessionEnd::Fatal(match reason {
            RejectReason::BadToken => AgentError::BadToken(message),
            RejectReason::UnsupportedVersion
            | RejectReason::BadAgentId
            | RejectReason::TooManyAgents => AgentError::Rejected(message),
        })),
        Err(error) => Err(retry("waiting for Welcome", &error)),
    }
}

async fn send_load(
    control: &mut StreamSend,
    shared: &Shared,
) -> Result<(), exitpool_protocol::FrameError> {
    let load = AgentMessage::Load {
        active_streams: shared.counters.active_streams.load(Ordering::Relaxed),
        accepting: shared.accepting(),
    };
    write_frame(control, &load).await
}

/// Tells the gateway to route nothing new here, lets live streams finish within
/// the drain grace, then [`leave`]s, so a lost close packet cannot leave the
/// gateway routing to, and customers waiting on, an agent that is gone.
async fn drain(
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

struct StreamContext {
    shared: Arc<Shared>,
    policy: Arc<ExitPolicy>,
    slots: Arc<Semaphore>,
    accepting: bool,
}

/// One relay stream: read `OpenRequest`, dial, answer, relay.
async fn serve_stream(context: StreamContext, mut send: StreamSend, mut recv: StreamRecv) {
    let config = &context.shared.config;
    let request: OpenRequest =
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
    let permit = match permit {
        Some(permit) => permit,
        None => {
            let detail = if context.accepting {
                "the exit is at its stream limit"
            } else {
                "the exit is paused or out of quota"
            };
            fail(
                &mut send,
                DialError {
                    code: FailureCode::AgentUnavailable,
                    detail: detail.into(),
                },
            )
            .await;
            return;
        }
    };
    // Counted live until dropped, whichever way this task ends.
    let _active = ActiveStream::start(&context.shared.counters);
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
                debug!(host = %request.host, port = request.port, up = transferred.quic_to_tcp, down = transferred.tcp_to_quic, ok = result.is_ok(), "stream done");
            }
        }
    }
    drop(permit);
}

async fn fail(send: &mut StreamSend, error: DialError) {
    let reply = OpenReply::Failed {
        code: error.code,
        detail: error.detail,
    };
    if write_frame(send, &reply).await.is_ok() {
        let _ = send.finish();
    }
}
