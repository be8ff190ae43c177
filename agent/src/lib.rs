//! The exitpool agent: an exit node that keeps an outbound QUIC tunnel to a
//! gateway and dials targets for the gateway's customers.
//!
//! Apps embed it as an SDK:
//!
//! ```no_run
//! # async fn example() -> Result<(), exitpool_agent::AgentError> {
//! use exitpool_agent::{Agent, Pin};
//! let pin: Pin = "sha256:...".parse().expect("pin from `gateway pin`");
//! let agent = Agent::builder("gw.example.net:4433", pin, "enrolment-token")
//!     .max_streams(32)
//!     .spawn()?;
//! agent.pause();          // e.g. on battery or mobile data
//! agent.resume();
//! println!("{:?}", agent.stats());
//! agent.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! - [`tunnel`]: connecting, the `Hello` handshake, serving relay streams, and
//!   reconnecting with backoff;
//! - [`dial`]: resolving and dialling targets under the exit policy;
//! - [`policy`]: which destinations are never dialled;
//! - [`meter`]: the owner's bandwidth cap and byte quota;
//! - [`status`]: the periodic summary line and the optional local status endpoint;
//! - [`tls`]: trusting the gateway by its certificate pin;
//! - [`state`]: the agent's id, kept on the device.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dial;
pub mod meter;
pub mod policy;
pub mod state;
pub mod status;
pub mod tls;
pub mod tunnel;

pub use meter::{Limits, Period};
pub use policy::ExitPolicy;
pub use tls::Pin;

use exitpool_protocol::Secret;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Default number of relay streams an agent serves at once.
pub const DEFAULT_MAX_STREAMS: u32 = 64;

/// Default period of the owner's one-line summary in the log.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Default time live streams get to finish after shutdown is asked for.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Why an agent stopped for good (network failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway refused the token.
    #[error("the gateway rejected the agent token: {0}")]
    BadToken(String),
    /// The gateway refused the agent for another reason (version, id).
    #[error("the gateway rejected the agent: {0}")]
    Rejected(String),
    /// The gateway's certificate does not match `--pin`.
    #[error("the gateway's certificate does not match the pin {0}; check --pin (run `gateway pin` on the gateway)")]
    PinMismatch(Pin),
    /// The local socket could not be bound.
    #[error("binding the tunnel socket to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    State {
        /// The path at fault.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The agent task panicked or was aborted.
    #[error("agent task failed: {0}")]
    Task(String),
}

/// Everything an agent is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Gateway `host:port` (UDP).
    pub gateway: String,
    /// Pin of the gateway's certificate.
    pub pin: Pin,
    /// Enrolment token.
    pub token: Secret,
    /// Local address for the tunnel socket and for target connections.
    pub bind: Option<IpAddr>,
    /// Which destinations may be dialled.
    pub policy: ExitPolicy,
    /// Where the agent id is kept; without it the id lasts one process.
    pub state_dir: Option<PathBuf>,
    /// Most relay streams served at once.
    pub max_streams: u32,
    /// How long live streams may finish on shutdown.
    pub drain_grace: Duration,
    /// Software name and version sent in `Hello`.
    pub software: String,
    /// Bandwidth cap and quota.
    pub limits: Limits,
    /// Local address for the JSON status endpoint, if wanted.
    pub status_listen: Option<SocketAddr>,
    /// How often the one-line summary is logged.
    pub summary_interval: Duration,
}

/// The entry point: [`Agent::builder`].
pub struct Agent;

impl Agent {
    /// Starts configuring an agent for `gateway` (`host:port`), trusting the
    /// certificate with `pin`, enrolling with `token`.
    pub fn builder(gateway: impl Into<String>, pin: Pin, token: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            config: AgentConfig {
                gateway: gateway.into(),
                pin,
                token: Secret(token.into()),
                bind: None,
                policy: ExitPolicy::new(),
                state_dir: None,
                max_streams: DEFAULT_MAX_STREAMS,
                drain_grace: DEFAULT_DRAIN_GRACE,
                software: format!("exitpool-agent/{}", env!("CARGO_PKG_VERSION")),
                limits: Limits::default(),
                status_listen: None,
                summary_interval: DEFAULT_SUMMARY_INTERVAL,
            },
        }
    }
}

/// Configures and spawns an agent.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    config: AgentConfig,
}

impl AgentBuilder {
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

    /// How long live streams may finish on shutdown.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.config.drain_grace = grace;
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

    /// How often the one-line summary is logged.
    pub fn summary_interval(mut self, interval: Duration) -> Self {
        self.config.summary_interval = interval;
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Starts the agent on the current tokio runtime. It connects, and reconnects
    /// after network failures, until [`AgentHandle::shutdown`] or a fatal error.
    pub fn spawn(self) -> Result<AgentHandle, AgentError> {
        let meter = meter::Meter::new(self.config.limits, self.config.state_dir.as_deref())
            .map_err(|source| AgentError::State {
                path: self.config.state_dir.clone().unwrap_or_default(),
                source,
            })?;
        let agent_id = match &self.config.state_dir {
            Some(dir) => {
                state::load_or_create_agent_id(dir).map_err(|source| AgentError::State {
                    path: dir.clone(),
                    source,
                })?
            }
            None => state::random_agent_id(),
        };
        if self.config.policy.allows_private() {
            tracing::warn!("--allow-private is on: this agent will dial loopback and private networks. Use it for local testing only.");
        }
        let shared = Arc::new(Shared {
            config: self.config,
            agent_id,
            paused: watch::Sender::new(false),
            session: watch::Sender::new(None),
            counters: Counters::default(),
            meter,
        });
        let shutdown = CancellationToken::new();
        let status_addr = match shared.config.status_listen {
            Some(addr) => Some(
                status::start(addr, shared.clone(), shutdown.clone())
                    .map_err(|source| AgentError::Bind { addr, source })?,
            ),
            None => None,
        };
        tokio::spawn(status::summaries(shared.clone(), shutdown.clone()));
        let task = tokio::spawn(tunnel::run(shared.clone(), shutdown.clone()));
        Ok(AgentHandle {
            shared,
            shutdown,
            task: Some(task),
            status_addr,
        })
    }
}

/// What the gateway told the agent when it joined.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// The agent's address as the gateway sees it.
    pub observed_addr: SocketAddr,
    /// The country the gateway placed it in.
    pub country: Option<String>,
    /// The id customers see for this exit.
    pub exit_id: String,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub streams_served: AtomicU64,
    pub active_streams: AtomicU32,
    pub connects: AtomicU64,
}

/// State the agent's tasks and its handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: AgentConfig,
    pub agent_id: String,
    pub paused: watch::Sender<bool>,
    pub session: watch::Sender<Option<SessionInfo>>,
    pub counters: Counters,
    pub meter: meter::Meter,
}

impl Shared {
    /// Whether new streams are taken: not paused and not over quota.
    pub fn accepting(&self) -> bool {
        !*self.paused.borrow() && !self.meter.is_exhausted()
    }

    pub fn stats(&self) -> AgentStats {
        let counters = &self.counters;
        let limits = self.meter.limits();
        AgentStats {
            agent_id: self.agent_id.clone(),
            session: self.session.borrow().clone(),
            paused: *self.paused.borrow(),
            streams_served: counters.streams_served.load(Ordering::Relaxed),
            active_streams: counters.active_streams.load(Ordering::Relaxed),
            bytes_up: self.meter.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.meter.bytes_down.load(Ordering::Relaxed),
            connects: counters.connects.load(Ordering::Relaxed),
            period: self.meter.period_key(),
            period_bytes: self.meter.period_bytes(),
            quota_bytes: limits.quota_bytes,
            quota_exhausted: self.meter.is_exhausted(),
            max_rate: limits.max_rate.map(|rate| rate.get()),
        }
    }
}

/// What an agent has done, for the app or the owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentStats {
    /// The agent's id (kept on the device).
    pub agent_id: String,
    /// The current tunnel, if connected.
    pub session: Option<SessionInfo>,
    /// Whether sharing is paused.
    pub paused: bool,
    /// Relay streams served since start.
    pub streams_served: u64,
    /// Relay streams open now.
    pub active_streams: u32,
    /// Bytes sent to targets.
    pub bytes_up: u64,
    /// Bytes received from targets.
    pub bytes_down: u64,
    /// Successful tunnel connections since start (1 + reconnects).
    pub connects: u64,
    /// The quota period now (`2026-11-23` or `2026-11`).
    pub period: String,
    /// Bytes relayed (up + down) in this period.
    pub period_bytes: u64,
    /// The quota per period, if any.
    pub quota_bytes: Option<u64>,
    /// Whether the quota is used up (sharing stops until the next period).
    pub quota_exhausted: bool,
    /// The bandwidth cap per direction, bytes per second, if any.
    pub max_rate: Option<u32>,
}

/// A running agent. Dropping the handle stops the agent.
#[derive(Debug)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), AgentError>>>,
    status_addr: Option<SocketAddr>,
}

impl AgentHandle {
    /// A snapshot of the agent's counters and connection.
    pub fn stats(&self) -> AgentStats {
        self.shared.stats()
    }

    /// Where the status endpoint listens, if enabled.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_addr
    }

    /// Stops taking new streams (live ones continue); the gateway stops routing here.
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Takes new streams again.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// The tunnel's state as it changes: `Some` while connected and welcomed,
    /// `None` from the moment the agent notices the tunnel is gone until it is
    /// welcomed again (for an app's "connected" indicator, say).
    pub fn session(&self) -> tokio::sync::watch::Receiver<Option<SessionInfo>> {
        self.shared.session.subscribe()
    }

    /// Waits until the agent is connected and welcomed, and returns what the
    /// gateway said.
    pub async fn connected(&self) -> SessionInfo {
        let mut session = self.shared.session.subscribe();
        let info = session
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in the handle");
        info.clone().expect("waited for Some")
    }

    /// Waits for the agent to stop by itself (which it only does on a fatal error).
    pub async fn finished(&mut self) -> Result<(), AgentError> {
        match self.task.as_mut() {
            Some(task) => {
                let result = task.await;
                self.task = None;
                result.map_err(|e| AgentError::Task(e.to_string()))?
            }
            None => Ok(()),
        }
    }

    /// Drains (tells the gateway, lets live streams finish within the grace
    /// period) and stops.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        self.finished().await
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
