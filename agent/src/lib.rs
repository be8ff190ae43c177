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
//! - [`tls`]: trusting the gateway by its certificate pin;
//! - [`state`]: the agent's id, kept on the device.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dial;
pub mod policy;
pub mod state;
pub mod tls;
pub mod tunnel;

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

    /// The configuration so far.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Starts the agent on the current tokio runtime. It connects, and reconnects
    /// after network failures, until [`AgentHandle::shutdown`] or a fatal error.
    pub fn spawn(self) -> Result<AgentHandle, AgentError> {
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
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tunnel::run(shared.clone(), shutdown.clone()));
        Ok(AgentHandle {
            shared,
            shutdown,
            task: Some(task),
        })
    }
}

/// What the gateway told the agent when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
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
}

/// What an agent has done, for the app or the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A running agent. Dropping the handle stops the agent.
#[derive(Debug)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), AgentError>>>,
}

impl AgentHandle {
    /// A snapshot of the agent's counters and connection.
    pub fn stats(&self) -> AgentStats {
        let counters = &self.shared.counters;
        AgentStats {
            agent_id: self.shared.agent_id.clone(),
            session: self.shared.session.borrow().clone(),
            paused: *self.shared.paused.borrow(),
            streams_served: counters.streams_served.load(Ordering::Relaxed),
            active_streams: counters.active_streams.load(Ordering::Relaxed),
            bytes_up: counters.bytes_up.load(Ordering::Relaxed),
            bytes_down: counters.bytes_down.load(Ordering::Relaxed),
            connects: counters.connects.load(Ordering::Relaxed),
        }
    }

    /// Stops taking new streams (live ones continue); the gateway stops routing here.
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Takes new streams again.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
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
