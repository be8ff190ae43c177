//! The exitpool gateway: customers connect here, agents keep their tunnels here.
//!
//! - [`config`]: what the operator configures ([`GatewayConfig`]);
//! - [`tls`]: the gateway's certificate and the pin agents check;
//! - [`tunnel`]: the QUIC endpoint, agent handshakes and their control streams;
//! - [`registry`]: connected agents and per-filter pools for routing;
//! - [`customer`]: the customer port, which hands connections to [`http`];
//! - [`target`]: validation of the `host:port` customers ask for;
//! - [`connect`]: authenticate, route and open: the steps every protocol shares;
//! - [`credentials`]: the `user-country-us:pass` targeting grammar;
//! - [`sessions`]: sticky-session pins behind a store interface;
//! - [`exit`]: opening a relay stream through a chosen exit;
//! - [`relay`]: the customer half of the byte path, with the access log;
//! - [`error`]: every customer-visible failure and how it is presented;
//! - [`auth`]: customer accounts and agent tokens;
//! - [`admin`]: `/healthz` and `/stats` for operators;
//! - [`state`]: the state directory.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod connect;
pub mod credentials;
pub mod customer;
pub mod error;
pub mod exit;
pub mod http;
pub mod registry;
pub mod relay;
pub mod sessions;
pub mod state;
pub mod target;
pub mod tls;
pub mod tunnel;

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
    /// Fires when the gateway stops.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// When the gateway started.
    pub started: Instant,
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
}

/// Drops expired session pins every [`sessions::SWEEP_INTERVAL`].
async fn sweep_sessions(shared: Arc<Shared>) {
    let mut timer = tokio::time::interval(sessions::SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = timer.tick() => {
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

        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| StartError::Bind { what, addr, source }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(bind("the customer port", config.listen))?;
        let endpoint = quinn::Endpoint::server(identity.quic_server_config()?, config.tunnel)
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
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
        });
        shared
            .tasks
            .spawn(customer::serve(listener, shared.clone()));
        shared.tasks.spawn(tunnel::serve(endpoint, shared.clone()));
        if let Some(admin) = admin {
            shared.tasks.spawn(admin::serve(admin, shared.clone()));
        }
        shared.tasks.spawn(sweep_sessions(shared.clone()));
        for line in shared.config.geoip.describe() {
            info!("geoip: {line}");
        }
        let pin = identity.pin();
        info!(%listen_addr, %tunnel_addr, admin = ?admin_addr, %pin, "gateway started");
        Ok(Gateway {
            shared,
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

    /// Stops accepting, gives live connections the configured grace period, then
    /// closes every tunnel.
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
        }
    }
}
