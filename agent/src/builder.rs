//! Configuring and starting an agent: [`Agent::builder`] gives an
//! [`AgentBuilder`] holding today's defaults; [`AgentBuilder::spawn`] loads the
//! state directory and starts the tunnel, status and summary tasks.

use crate::config::{
    AgentConfig, TransportChoice, DEFAULT_DRAIN_GRACE, DEFAULT_INTERFACE_REFRESH,
    DEFAULT_MAX_STREAMS, DEFAULT_MOVE_DRAIN, DEFAULT_PIN_MISMATCH_RETRY, DEFAULT_QUIC_RETRY,
    DEFAULT_RACE_DELAY, DEFAULT_REFUSAL_SUMMARY_INTERVAL, DEFAULT_SUMMARY_INTERVAL,
};
use crate::error::AgentError;
use crate::handle::AgentHandle;
use crate::interfaces::InterfaceSource;
use crate::meter::{Limits, Meter, Period};
use crate::nat64::Nat64Source;
use crate::policy::ExitPolicy;
use crate::report::Report;
use crate::schedule::{Clock, Schedule, ScheduleState};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::tls::Pin;
use crate::{consent, scheduler, state, status, tunnel};
use exitpool_protocol::{Secret, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
/// The entry point: [`Agent::builder`].
pub struct Agent;

impl Agent {
    /// Starts configuring an agent for `gateway` (`host:port`), trusting the
    /// certificate with `pin`, enrolling with `token`. More gateways of the same
    /// fleet: [`AgentBuilder::gateway`].
    pub fn builder(gateway: impl Into<String>, pin: Pin, token: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            config: AgentConfig {
                gateways: vec![gateway.into()],
                pin,
                token: Secret(token.into()),
                bind: None,
                policy: ExitPolicy::new(),
                state_dir: None,
                max_streams: DEFAULT_MAX_STREAMS,
                drain_grace: DEFAULT_DRAIN_GRACE,
                udp: crate::udp::UdpLimits::default(),
                handshake_timeout: HANDSHAKE_TIMEOUT,
                connect_timeout: CONNECT_TIMEOUT,
                software: format!("exitpool-agent/{}", env!("CARGO_PKG_VERSION")),
                limits: Limits::default(),
                status_listen: None,
                status_token: None,
                summary_interval: DEFAULT_SUMMARY_INTERVAL,
                refusal_summary_interval: DEFAULT_REFUSAL_SUMMARY_INTERVAL,
                pin_mismatch_retry: DEFAULT_PIN_MISMATCH_RETRY,
                interfaces: InterfaceSource::system(),
                nat64: Nat64Source::system(),
                interface_refresh: DEFAULT_INTERFACE_REFRESH,
                transport: TransportChoice::Auto,
                keep_alive: exitpool_protocol::KEEP_ALIVE_INTERVAL,
                race_delay: DEFAULT_RACE_DELAY,
                quic_retry: DEFAULT_QUIC_RETRY,
                move_drain: DEFAULT_MOVE_DRAIN,
                schedule: None,
                clock: Clock::System,
            },
            require_consent: false,
        }
    }
}

/// Configures and spawns an agent.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    config: AgentConfig,
    /// See [`AgentBuilder::require_consent`].
    require_consent: bool,
}

impl AgentBuilder {
    /// One more gateway (`host:port`) of the same fleet, trusted with the same
    /// pin: the agent prefers one of them by its id and fails over to the others.
    pub fn gateway(mut self, gateway: impl Into<String>) -> Self {
        self.config.gateways.push(gateway.into());
        self
    }

    /// Local address for the tunnel and for target connections.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.config.bind = Some(ip);
        self
    }

    /// Permits private and loopback targets. For local testing only.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.config.policy = self.config.policy.allow_private(allow);
        self
    }

    /// Replaces the exit policy.
    pub fn policy(mut self, policy: ExitPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Keeps the agent id in `dir`, stable across restarts.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = Some(dir.into());
        self
    }

    /// Most relay streams served at once (at least 1).
    pub fn max_streams(mut self, streams: u32) -> Self {
        self.config.max_streams = streams.max(1);
        self
    }

    /// Bounds on UDP flows: flows per tunnel, packets per second per flow,
    /// idle timeout ([`crate::udp::UdpLimits`]).
    pub fn udp_limits(mut self, limits: crate::udp::UdpLimits) -> Self {
        self.config.udp = limits;
        self
    }

    /// How long live streams may finish on shutdown.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.config.drain_grace = grace;
        self
    }

    /// How long each handshake step with the gateway may take (see
    /// [`AgentConfig::handshake_timeout`]); also how long an unreachable
    /// gateway holds up failing over to the next. Tests set it short.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// How long resolving and dialling a target may take (see
    /// [`AgentConfig::connect_timeout`]). Keep it under the gateway's wait for
    /// the answer, or customers get the gateway's vaguer timeout instead.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Software name and version reported to the gateway.
    pub fn software(mut self, software: impl Into<String>) -> Self {
        self.config.software = software.into();
        self
    }

    /// Caps relayed bandwidth at `bytes_per_second` in each direction.
    pub fn max_rate(mut self, bytes_per_second: u32) -> Self {
        self.config.limits.max_rate = std::num::NonZeroU32::new(bytes_per_second);
        self
    }

    /// Stops sharing after `bytes` (up + down) per `period`; kept in the state
    /// directory across restarts.
    pub fn quota(mut self, bytes: u64, period: Period) -> Self {
        self.config.limits.quota_bytes = Some(bytes);
        self.config.limits.period = period;
        self
    }

    /// Serves the agent's stats as JSON on `addr` (keep it on loopback).
    pub fn status_listen(mut self, addr: SocketAddr) -> Self {
        self.config.status_listen = Some(addr);
        self
    }

    /// The bearer token that shows the device's id and addresses on the
    /// status endpoint (see [`status`](crate::status)).
    pub fn status_token(mut self, token: impl Into<String>) -> Self {
        self.config.status_token = Some(Secret(token.into()));
        self
    }

    /// How often the one-line summary is logged.
    pub fn summary_interval(mut self, interval: Duration) -> Self {
        self.config.summary_interval = interval;
        self
    }

    /// Shortest time between two log lines counting refused destinations (see
    /// [`AgentConfig::refusal_summary_interval`]); tests set it short.
    pub fn refusal_summary_interval(mut self, interval: Duration) -> Self {
        self.config.refusal_summary_interval = interval;
        self
    }

    /// Wait before retrying a pin mismatch on a pin this agent has connected
    /// with before (see [`AgentConfig::pin_mismatch_retry`]).
    pub fn pin_mismatch_retry(mut self, wait: Duration) -> Self {
        self.config.pin_mismatch_retry = wait;
        self
    }

    /// Where the device's interface addresses are read from (see
    /// [`AgentConfig::interfaces`]).
    pub fn interfaces(mut self, source: InterfaceSource) -> Self {
        self.config.interfaces = source;
        self
    }

    /// Where the network's NAT64 prefix is discovered (see
    /// [`AgentConfig::nat64`]).
    pub fn nat64(mut self, source: Nat64Source) -> Self {
        self.config.nat64 = source;
        self
    }

    /// How often the interface addresses are read again while connected (see
    /// [`AgentConfig::interface_refresh`]).
    pub fn interface_refresh(mut self, every: Duration) -> Self {
        self.config.interface_refresh = every;
        self
    }

    /// Which tunnel transport to use (see [`AgentConfig::transport`]).
    pub fn transport(mut self, transport: TransportChoice) -> Self {
        self.config.transport = transport;
        self
    }

    /// Keep-alive period and degraded-QUIC unit (see [`AgentConfig::keep_alive`]).
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.config.keep_alive = every;
        self
    }

    /// QUIC's head start in the race (see [`AgentConfig::race_delay`]).
    pub fn race_delay(mut self, delay: Duration) -> Self {
        self.config.race_delay = delay;
        self
    }

    /// How often QUIC is tried again while on TCP (see [`AgentConfig::quic_retry`]).
    pub fn quic_retry(mut self, every: Duration) -> Self {
        self.config.quic_retry = every;
        self
    }

    /// Connects only once the owner's consent is recorded in the state
    /// directory (see [`crate::consent`]; [`AgentHandle::record_consent`]), and
    /// needs a state directory to keep it in. Every agent an app starts
    /// through the SDK sets this.
    pub fn require_consent(mut self, require: bool) -> Self {
        self.require_consent = require;
        self
    }

    /// Shares by `schedule` (windows, rate caps, a monthly cap); see
    /// [`crate::schedule`].
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.config.schedule = Some(schedule);
        self
    }

    /// Reads the schedule's time from `time` instead of the system clock:
    /// every change is applied at once (tests; apps with a time source of
    /// their own).
    pub fn clock(mut self, time: watch::Receiver<std::time::SystemTime>) -> Self {
        self.config.clock = Clock::Manual(time);
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Starts the agent on the current tokio runtime. It connects, and reconnects
    /// after network failures, until [`AgentHandle::shutdown`] or a fatal error.
    pub fn spawn(self) -> Result<AgentHandle, AgentError> {
        if let Some(dir) = &self.config.state_dir {
            state::prepare_dir(dir).map_err(|source| AgentError::State {
                path: dir.clone(),
                source,
            })?;
        }
        let meter =
            Meter::new(self.config.limits, self.config.state_dir.as_deref()).map_err(|source| {
                AgentError::State {
                    path: self.config.state_dir.clone().unwrap_or_default(),
                    source,
                }
            })?;
        let device_key = match &self.config.state_dir {
            Some(dir) => state::load_or_create_device_key(dir),
            None => state::ephemeral_device_key(),
        }
        .map_err(|source| AgentError::State {
            path: self.config.state_dir.clone().unwrap_or_default(),
            source,
        })?;
        let consent = match &self.config.state_dir {
            Some(dir) => consent::load(dir).map_err(|error| AgentError::State {
                path: dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()),
            })?,
            None if self.require_consent => {
                return Err(AgentError::State {
                    path: PathBuf::new(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "an agent that needs consent needs a state directory to keep it in",
                    ),
                })
            }
            None => None,
        };
        let report =
            Report::new(self.config.state_dir.as_deref()).map_err(|source| AgentError::State {
                path: self.config.state_dir.clone().unwrap_or_default(),
                source,
            })?;
        let schedule = ScheduleState::load(
            self.config.schedule.as_ref(),
            self.config.state_dir.as_deref(),
        )
        .map_err(|source| AgentError::State {
            path: self.config.state_dir.clone().unwrap_or_default(),
            source,
        })?;
        if self.config.policy.allows_private() {
            tracing::warn!("--allow-private is on: this agent will dial loopback and private networks. Use it for local testing only.");
        }
        let shared = Arc::new(Shared {
            policy: watch::Sender::new(Arc::new(self.config.policy.clone())),
            config: self.config,
            agent_id: device_key.agent_id(),
            device_key,
            paused: watch::Sender::new(false),
            pause_reasons: Default::default(),
            schedule,
            session: watch::Sender::new(None),
            counters: Counters::default(),
            meter,
            consent: watch::Sender::new(consent),
            require_consent: self.require_consent,
            stopped: watch::Sender::new(None),
            report,
        });
        let shutdown = CancellationToken::new();
        let status_addr = match shared.config.status_listen {
            Some(addr) => Some(
                status::start(addr, shared.clone(), shutdown.clone())
                    .map_err(|source| AgentError::Bind { addr, source })?,
            ),
            None => None,
        };
        let summaries = tokio::spawn(status::summaries(shared.clone(), shutdown.clone()));
        // Ends with the shutdown token; its ledger is saved with the usage.
        tokio::spawn(scheduler::run(shared.clone(), shutdown.clone()));
        // Ends with the shutdown token; nothing to save, so nothing to await.
        tokio::spawn(status::refusal_summaries(shared.clone(), shutdown.clone()));
        let tunnel = tokio::spawn(run(shared.clone(), shutdown.clone()));
        Ok(AgentHandle::new(
            shared,
            shutdown,
            tunnel,
            summaries,
            status_addr,
        ))
    }
}

/// The agent's main task: waits for consent where it is required, runs the
/// tunnel, and records why the agent stopped.
async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<(), AgentError> {
    if shared.require_consent {
        let mut consent = shared.consent.subscribe();
        tokio::select! {
            // The sender lives in `shared`, which this task holds.
            _ = consent.wait_for(Option::is_some) => {}
            () = shutdown.cancelled() => {
                stopped_because(&shared, "shut down".to_owned());
                return Ok(());
            }
        }
    }
    let result = tunnel::run(shared.clone(), shutdown).await;
    stopped_because(
        &shared,
        match &result {
            Ok(()) => "shut down".to_owned(),
            Err(error) => error.to_string(),
        },
    );
    result
}

/// Records why the agent stopped, unless a reason (a revoked consent, say)
/// was recorded first.
fn stopped_because(shared: &Shared, reason: String) {
    shared.stopped.send_if_modified(|stopped| {
        let first = stopped.is_none();
        if first {
            *stopped = Some(reason);
        }
        first
    });
}
