//! The exitpool gateway: customers connect here, agents keep their tunnels here.
//!
//! - [`config`]: what the operator configures ([`GatewayConfig`]);
//! - [`tls`]: the gateway's certificate and the pin agents check;
//! - [`tunnel`]: the QUIC endpoint, agent handshakes and their control streams;
//! - [`registry`]: connected agents and per-filter pools for routing;
//! - [`customer`]: the customer port, which hands connections to [`http`];
//! - [`socks`]: SOCKS5 with username/password on the customer port;
//! - [`target`]: validation of the `host:port` customers ask for;
//! - [`connect`]: authenticate, route and open: the steps every protocol shares;
//! - [`credentials`]: the `user-country-us:pass` targeting grammar;
//! - [`sessions`]: sticky-session pins behind a store interface;
//! - [`exit`]: opening a relay stream through a chosen exit;
//! - [`relay`]: the customer half of the byte path, with the access log;
//! - [`forward`]: plain HTTP proxying, each request routed through its own exit;
//! - [`error`]: every customer-visible failure and how it is presented;
//! - [`abuse`]: rate limiting failed authentications per source address;
//! - [`auth`]: customer accounts and agent tokens;
//! - [`accounts`]: the live account set from flags and files, reloaded on SIGHUP;
//! - [`limits`]: per-customer quota, rate and concurrency checks;
//! - [`usage`]: usage accounting per customer and per agent, persisted;
//! - [`metrics`]: Prometheus metrics;
//! - [`admin`]: `/healthz`, `/stats`, `/metrics`, usage reset and reload for operators;
//! - [`state`]: the state directory.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abuse;
pub mod accounts;
pub mod admin;
pub mod auth;
pub mod config;
pub mod connect;
pub mod credentials;
pub mod customer;
pub mod error;
pub mod exit;
pub mod forward;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod relay;
pub mod sessions;
pub mod socks;
pub mod state;
pub mod target;
pub mod tls;
pub mod tunnel;
pub mod usage;

pub use config::GatewayConfig;
pub use error::ProxyError;
pub use registry::Registry;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

/// State every task of a running gateway shares.
pub struct Shared {
    /// The configuration it was started with.
    pub config: GatewayConfig,
    /// Connected agents.
    pub registry: Registry,
    /// Sticky-session pins.
    pub sessions: Box<dyn sessions::SessionStore>,
    /// Failed authentications per source address.
    pub auth_failures: abuse::AuthFailures,
    /// Fires when the gateway stops.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// When the gateway started.
    pub started: Instant,
    /// Customers and agent tokens in force (reloadable).
    pub accounts: accounts::Accounts,
    /// Per-customer limit state.
    pub limits: limits::Limiter,
    /// Usage per customer and per agent.
    pub usage: Box<dyn usage::UsageSink>,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
}

impl Shared {
    /// Where an agent at `ip` is.
    pub fn locate(&self, ip: IpAddr) -> registry::Location {
        let found = self.config.geoip.lookup(ip);
        registry::Location {
            country: found.country,
            asn: found.asn,
            city: found.city.as_deref().map(credentials::normalize_city),
        }
    }

    /// Accounts bytes moved for `customer` through `agent`: usage (quotas, billing,
    /// payouts) and metrics. Call it when a connection or request ends, and about
    /// once a second while a long one runs, with the bytes since the last call.
    /// (It does not touch `agent.bytes_up`/`bytes_down`, the live per-connection
    /// figures on `/stats`.)
    pub fn record_transfer(&self, customer: &str, agent: &registry::Agent, up: u64, down: u64) {
        self.usage.record_transfer(customer, agent, up, down);
        self.metrics.bytes_up.inc_by(up);
        self.metrics.bytes_down.inc_by(down);
    }

    /// Counts a failure answered to (or suffered by) a customer, by its product
    /// code, for whichever of the customer and the agent are known.
    pub fn record_error(
        &self,
        customer: Option<&str>,
        agent: Option<&registry::Agent>,
        error: &ProxyError,
    ) {
        self.record_error_code(customer, agent, error.presentation().code);
    }

    /// Like [`Shared::record_error`], for failures that are not a [`ProxyError`]
    /// (e.g. `relay_failed` for a relay that ended abnormally).
    pub fn record_error_code(
        &self,
        customer: Option<&str>,
        agent: Option<&registry::Agent>,
        code: &str,
    ) {
        self.usage.record_error(customer, agent, code);
        self.metrics.error(code);
    }

    /// Re-reads the accounts files; on error the running set stays and the error
    /// is logged and returned.
    pub fn reload(&self) -> Result<(), accounts::AccountsError> {
        match self.accounts.reload() {
            Ok(set) => {
                info!(
                    customers = set.users.len(),
                    agent_tokens = set.agent_tokens.len(),
                    "accounts reloaded"
                );
                // A revoked token takes its agents out at once; they hear why
                // when they try to come back (a Reject with BadToken).
                for agent in self.registry.agents() {
                    if !set.agent_tokens.accepts(agent.token.expose()) {
                        info!(exit = %agent.exit_id, "agent token revoked; disconnecting");
                        self.registry.remove(agent.key);
                        agent
                            .connection
                            .close(tunnel::close_code::REJECTED.into(), b"agent token revoked");
                    }
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "accounts reload failed; keeping the running accounts");
                Err(error)
            }
        }
    }

    /// Writes usage to the state directory.
    pub fn save_usage(&self) -> std::io::Result<()> {
        usage::save(
            &usage::path_in(&self.config.state_dir),
            &self.usage.snapshot(),
        )
    }
}

/// Writes usage to the state directory every [`usage::FLUSH_INTERVAL`].
async fn flush_usage(shared: Arc<Shared>) {
    let mut timer = tokio::time::interval(usage::FLUSH_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {
                let saver = shared.clone();
                match tokio::task::spawn_blocking(move || saver.save_usage()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "writing usage failed"),
                    Err(error) => tracing::warn!(%error, "usage writer panicked"),
                }
            }
            () = shared.shutdown.cancelled() => break,
        }
    }
}

/// Drops expired session pins every [`sessions::SWEEP_INTERVAL`].
async fn sweep_sessions(shared: Arc<Shared>) {
    let mut timer = tokio::time::interval(sessions::SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = timer.tick() => {
                shared.auth_failures.sweep();
                let swept = shared.sessions.sweep(Instant::now());
                if swept > 0 {
                    tracing::debug!(swept, "expired sessions swept");
                }
            }
            () = shared.shutdown.cancelled() => break,
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificate could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] tls::IdentityError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// An accounts file is invalid.
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    /// The admin port would be reachable beyond loopback without a token.
    #[error("the admin port {0} is not on loopback: set --admin-token (EXITPOOL_ADMIN_TOKEN) or bind it to 127.0.0.1")]
    AdminTokenRequired(SocketAddr),
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    State {
        /// The path at fault.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A running gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
pub struct Gateway {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    listen_addr: SocketAddr,
    tunnel_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    pin: String,
}

impl Gateway {
    /// Binds every listener and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Gateway, StartError> {
        state::ensure_dir(&config.state_dir).map_err(|source| StartError::State {
            path: config.state_dir.clone(),
            source,
        })?;
        let identity = tls::Identity::load_or_create(&config.state_dir)?;
        let exit_key_path = config.state_dir.join("exit-id.key");
        let exit_key =
            state::load_or_create_secret(&exit_key_path).map_err(|source| StartError::State {
                path: exit_key_path.clone(),
                source,
            })?;

        if let Some(addr) = config.admin {
            let has_token = config
                .admin_token
                .as_ref()
                .is_some_and(|token| !token.expose().is_empty());
            if !addr.ip().is_loopback() && !has_token {
                return Err(StartError::AdminTokenRequired(addr));
            }
        }
        let accounts = accounts::Accounts::load(accounts::Sources {
            users: config.users.clone(),
            agent_tokens: config.agent_tokens.clone(),
            users_file: config.users_file.clone(),
            agent_tokens_file: config.agent_tokens_file.clone(),
        })?;
        let usage_path = usage::path_in(&config.state_dir);
        let used = usage::load(&usage_path).map_err(|source| StartError::State {
            path: usage_path.clone(),
            source,
        })?;

        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| StartError::Bind { what, addr, source }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(bind("the customer port", config.listen))?;
        let endpoint = exitpool_transport::udp::endpoint(
            config.tunnel,
            tunnel::endpoint_config(&identity),
            Some(
                identity
                    .quic_server_config(tunnel::transport_config(config.tunnel_idle_timeout))?,
            ),
        )
        .map_err(bind("the tunnel port", config.tunnel))?;
        let admin = match config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind("the admin port", addr))?,
            ),
            None => None,
        };
        let listen_addr = listener
            .local_addr()
            .map_err(bind("the customer port", config.listen))?;
        let tunnel_addr = endpoint
            .local_addr()
            .map_err(bind("the tunnel port", config.tunnel))?;
        let admin_addr = admin
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());

        let shared = Arc::new(Shared {
            config,
            registry: Registry::new(exit_key),
            sessions: Box::new(sessions::MemorySessions::default()),
            auth_failures: abuse::AuthFailures::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            accounts,
            limits: limits::Limiter::default(),
            usage: Box::new(usage::MemoryUsage::from_snapshot(&used)),
            metrics: metrics::Metrics::new(),
        });
        shared
            .tasks
            .spawn(customer::serve(listener, shared.clone()));
        shared
            .tasks
            .spawn(tunnel::serve(endpoint.clone(), shared.clone()));
        if let Some(admin) = admin {
            shared.tasks.spawn(admin::serve(admin, shared.clone()));
        }
        shared.tasks.spawn(sweep_sessions(shared.clone()));
        shared.tasks.spawn(flush_usage(shared.clone()));
        for line in shared.config.geoip.describe() {
            info!("geoip: {line}");
        }
        let pin = identity.pin();
        info!(%listen_addr, %tunnel_addr, admin = ?admin_addr, %pin, "gateway started");
        Ok(Gateway {
            shared,
            endpoint,
            listen_addr,
            tunnel_addr,
            admin_addr,
            pin,
        })
    }

    /// The customer port (HTTP proxy and SOCKS5).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The QUIC port agents dial.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// The admin port, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The certificate pin agents pass as `--pin`.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The agent registry.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Shared state, for the stats document and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the accounts files (what SIGHUP does); on error the running set
    /// stays.
    pub fn reload(&self) -> Result<(), accounts::AccountsError> {
        self.shared.reload()
    }

    /// Stops accepting, gives live connections the configured grace period, then
    /// closes every tunnel and writes usage to the state directory.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let grace = self.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            info!(?grace, "grace period over; closing what is left");
        }
        for agent in self.shared.registry.agents() {
            agent.connection.close(
                tunnel::close_code::SHUTDOWN.into(),
                b"gateway shutting down",
            );
            self.shared.registry.remove(agent.key);
        }
        // Joined agents have had their finished control stream (see
        // `tunnel::serve_agent`); this closes what is left, such as handshakes.
        // quinn holds the port until closed connections have drained (three
        // probe timeouts, seconds after a reconnect stampede inflated the RTT
        // estimates); that only repeats closes nobody needs now, so the wait is
        // short, and the port is free soon after for a restart in this process.
        self.endpoint.close(
            tunnel::close_code::SHUTDOWN.into(),
            b"gateway shutting down",
        );
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
        drop(self.endpoint);
        // quinn's endpoint driver lets go of the socket on its next poll, with no
        // event to wait on; check (briefly) so the port is free when this returns.
        for _ in 0..100 {
            if std::net::UdpSocket::bind(self.tunnel_addr).is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Relays cut short by the close fold their last bytes in as they end.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), self.shared.tasks.wait()).await;
        let saver = self.shared.clone();
        match tokio::task::spawn_blocking(move || saver.save_usage()).await {
            Ok(Ok(())) => info!("usage written"),
            Ok(Err(error)) => tracing::error!(%error, "writing usage at shutdown failed"),
            Err(error) => tracing::error!(%error, "usage writer panicked"),
        }
    }
}
