//! A running gateway: binding its ports, starting its tasks, and stopping them in
//! two steps (ask, then enforce a deadline).

use crate::abuse::{AuthFailures, PasswordChecks, TlsHandshakes};
use crate::access::AccessLog;
use crate::accounts::{self, Accounts, AccountsError};
use crate::config::{GatewayConfig, TunnelTcp};
use crate::control_link::{ControlLink, ControlOptions};
use crate::directory::{AgentDirectory, LocalDirectory};
use crate::entry_ports::LiveEntryPorts;
use crate::fleet::sessions::FleetSessions;
use crate::fleet::{self, Fleet};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::sessions::{MemorySessions, SessionStore};
use crate::shared::{Accounting, Lifecycle, Routing, Shared, Walls};
use crate::tunnel::{self, tcp, Exits, Liveness};
use crate::usage::{self, MemoryUsage};
use crate::{admin, customer, housekeeping, state, tls};
use exitpool_protocol::close_code;
use exitpool_transport::endpoint::QuicEndpoint;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

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
    Accounts(#[from] AccountsError),
    /// The customer ports' certificate or key is unusable.
    #[error(transparent)]
    CustomerTls(#[from] crate::customer_tls::CustomerTlsError),
    /// The admin port would be reachable beyond loopback without a token.
    #[error("the admin port {0} is not on loopback: set --admin-token (EXITPOOL_ADMIN_TOKEN) or bind it to 127.0.0.1")]
    AdminTokenRequired(SocketAddr),
    /// The access-log thread could not be started.
    #[error("starting the access-log thread: {0}")]
    AccessLog(std::io::Error),
    /// Fleet mode could not be set up.
    #[error("fleet: {0}")]
    Fleet(String),
    /// The control plane's store could not be opened, or does not fit the
    /// configuration (a SQLite store beside `--redis`).
    #[error("{0}")]
    Control(String),
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
    /// Fleet membership (`--redis`): held here and by the admin port only.
    fleet: Option<Arc<Fleet>>,
    endpoint: QuicEndpoint,
    listen_addr: SocketAddr,
    tunnel_addr: SocketAddr,
    tunnel_tcp_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    h3_addr: Option<SocketAddr>,
    pin: String,
}

impl Gateway {
    /// Binds every listener and starts serving, without a control-plane store.
    pub async fn start(config: GatewayConfig) -> Result<Gateway, StartError> {
        Gateway::start_with_control(config, ControlOptions::default()).await
    }

    /// Binds every listener and starts serving, with the control plane's
    /// store when `control` names one ([`crate::control_link`]).
    pub async fn start_with_control(
        config: GatewayConfig,
        control: ControlOptions,
    ) -> Result<Gateway, StartError> {
        let mut loaded = load_state(&config)?;
        let link = ControlLink::open(&config, &control)
            .await
            .map_err(StartError::Control)?;
        loaded.accounts = loaded.accounts.with_control(link.clone());
        let bound = bind_ports(&config, &loaded.identity).await?;
        let pin = loaded.identity.pin();
        let (shared, fleet, fleet_tasks) = assemble(config, loaded).await?;
        let Bound {
            entrances,
            quic,
            tunnel_tcp,
            tcp_tls,
            admin: admin_listener,
            listen_addr,
            tunnel_addr,
            tunnel_tcp_addr,
            admin_addr,
        } = bound;
        spawn_tasks(&shared, entrances, &quic, tunnel_tcp, tcp_tls);
        if let Some(admin) = admin_listener {
            let view = admin::AdminView {
                shared: shared.clone(),
                fleet: fleet.clone(),
            };
            shared
                .lifecycle
                .tasks
                .spawn(admin::serve(admin, Arc::new(view)));
        }
        let h3_addr = customer::masque::start(&shared).map_err(|source| StartError::Bind {
            what: "the MASQUE port (--listen-h3)",
            addr: shared.config.listen_h3.unwrap_or(listen_addr),
            source,
        })?;
        if let Some(link) = link {
            let accounts = shared.clone();
            shared.lifecycle.tasks.spawn(crate::control_link::run(
                link,
                shared.lifecycle.tasks.clone(),
                shared.lifecycle.shutdown.clone(),
                move || {
                    accounts.accounting.accounts.store_changed();
                    crate::admin::exits::enforce_store_bans(&accounts);
                },
            ));
        }
        if let Some((joined, feed)) = fleet_tasks {
            spawn_fleet_tasks(&shared, joined, feed);
        }
        for line in shared.config.geoip.describe() {
            info!("geoip: {line}");
        }
        info!(%listen_addr, %tunnel_addr, tunnel_tcp = ?tunnel_tcp_addr, admin = ?admin_addr, %pin, "gateway started");
        Ok(Gateway {
            shared,
            fleet,
            endpoint: quic,
            listen_addr,
            tunnel_addr,
            tunnel_tcp_addr,
            admin_addr,
            h3_addr,
            pin,
        })
    }

    /// The MASQUE CONNECT-UDP port (`--listen-h3`, UDP), if enabled.
    pub fn h3_addr(&self) -> Option<SocketAddr> {
        self.h3_addr
    }

    /// The TCP port agents dial where UDP is blocked, if enabled.
    pub fn tunnel_tcp_addr(&self) -> Option<SocketAddr> {
        self.tunnel_tcp_addr
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

    /// The agent directory.
    pub fn directory(&self) -> &dyn AgentDirectory {
        self.shared.routing.exits.directory()
    }

    /// Shared state, for the stats document and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Puts in force what a re-read config file (SIGHUP with `--config`)
    /// may change live: the per-connection settings
    /// ([`crate::config::LiveSettings`]) for the next connection, and the
    /// accounts and agent tokens given directly and the accounts files'
    /// paths, loaded at once (on error the accounts stay as they were).
    pub fn apply_live(&self, config: &GatewayConfig) -> Result<(), AccountsError> {
        let settings = crate::config::LiveSettings::of(config);
        self.shared.settings.store(Arc::new(settings));
        let sources = crate::accounts::Sources {
            users: config.users.clone(),
            agent_tokens: config.agent_tokens.clone(),
            users_file: config.users_file.clone(),
            agent_tokens_file: config.agent_tokens_file.clone(),
        };
        self.shared.accounting.accounts.replace_sources(sources)?;
        Ok(())
    }

    /// Re-reads the accounts files (what SIGHUP does); on error the running set
    /// stays.
    pub fn reload(&self) -> Result<(), AccountsError> {
        self.shared.reload()
    }

    /// Stops accepting, gives live connections the configured grace period, then
    /// closes every tunnel and writes usage to the state directory.
    pub async fn shutdown(self) {
        self.shared.lifecycle.shutdown.cancel();
        self.shared.lifecycle.tasks.close();
        let grace = self.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, self.shared.lifecycle.tasks.wait())
            .await
            .is_err()
        {
            info!(?grace, "grace period over; closing what is left");
        }
        self.shared.accounting.access_log.flush(grace).await;
        for agent in self.shared.routing.exits.directory().agents() {
            self.shared.routing.exits.disconnect(
                agent.key,
                close_code::SHUTDOWN,
                b"gateway shutting down",
            );
        }
        // Joined agents have had their finished control stream (see
        // `tunnel::join::serve_agent`); this closes what is left, such as handshakes.
        // quinn holds the port until closed connections have drained (three
        // probe timeouts, seconds after a reconnect stampede inflated the RTT
        // estimates); that only repeats closes nobody needs now, so the wait is
        // short, and the port is free soon after for a restart in this process.
        self.endpoint
            .close(close_code::SHUTDOWN, b"gateway shutting down");
        if let Some(fleet) = &self.fleet {
            fleet
                .peers
                .endpoint()
                .close(close_code::SHUTDOWN, b"gateway shutting down");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        drop(self.endpoint);
        // quinn's endpoint driver lets go of the socket on its next poll, with no
        // event to wait on; check (briefly) so the port is free when this returns.
        for _ in 0..100 {
            if std::net::UdpSocket::bind(self.tunnel_addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Relays cut short by the close fold their last bytes in as they end.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.lifecycle.tasks.wait()).await;
        let saver = self.shared.clone();
        match tokio::task::spawn_blocking(move || saver.save_usage()).await {
            Ok(Ok(())) => info!("usage written"),
            Ok(Err(error)) => tracing::error!(%error, "writing usage at shutdown failed"),
            Err(error) => tracing::error!(%error, "usage writer panicked"),
        }
        if let Some(link) = self.shared.accounting.accounts.control() {
            match link.flush(exitpool_control::period::now()).await {
                Ok(()) => info!("usage history written"),
                Err(error) => tracing::error!(%error, "writing usage history at shutdown failed"),
            }
        }
    }
}

/// What the gateway keeps on disk and in its accounts, loaded before any
/// port is bound.
struct Loaded {
    identity: tls::Identity,
    exit_key: [u8; 32],
    accounts: Accounts,
    customer_tls: Option<crate::customer_tls::CustomerTls>,
    used: usage::UsageSnapshot,
}

/// The state directory (created if missing), the certificate, the exit-id
/// key, the accounts, the customer TLS files and the usage of an earlier
/// run; and the admin port refused beyond loopback without a token.
fn load_state(config: &GatewayConfig) -> Result<Loaded, StartError> {
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
    let accounts = Accounts::load(accounts::Sources {
        users: config.users.clone(),
        agent_tokens: config.agent_tokens.clone(),
        users_file: config.users_file.clone(),
        agent_tokens_file: config.agent_tokens_file.clone(),
    })?;
    let customer_tls = config
        .customer_tls
        .clone()
        .map(crate::customer_tls::CustomerTls::load)
        .transpose()?;
    let usage_path = usage::path_in(&config.state_dir);
    let used = usage::load(&usage_path).map_err(|source| StartError::State {
        path: usage_path.clone(),
        source,
    })?;
    Ok(Loaded {
        identity,
        exit_key,
        accounts,
        customer_tls,
        used,
    })
}

/// Every listener, bound, and the addresses they got.
struct Bound {
    /// The customer port first, then the entry ports.
    entrances: Vec<customer::Entrance>,
    quic: QuicEndpoint,
    tunnel_tcp: Option<TcpListener>,
    tcp_tls: Arc<rustls::ServerConfig>,
    admin: Option<TcpListener>,
    listen_addr: SocketAddr,
    tunnel_addr: SocketAddr,
    tunnel_tcp_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
}

/// Binds the customer port, the entry ports, the tunnel ports and the admin
/// port.
async fn bind_ports(config: &GatewayConfig, identity: &tls::Identity) -> Result<Bound, StartError> {
    let bind = |what: &'static str, addr: SocketAddr| {
        move |source| StartError::Bind { what, addr, source }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(bind("the customer port", config.listen))?;
    let mut entrances: Vec<customer::Entrance> = Vec::new();
    for (port, _) in config.entry_ports.iter() {
        let addr = SocketAddr::new(config.listen.ip(), port);
        let entry = TcpListener::bind(addr)
            .await
            .map_err(bind("an entry port", addr))?;
        entrances.push((entry, Some(port)));
    }
    let (quic, tunnel_tcp) = bind_tunnels(config, identity).await?;
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
    let tunnel_addr = quic
        .local_addr()
        .map_err(bind("the tunnel port", config.tunnel))?;
    let tunnel_tcp_addr = match &tunnel_tcp {
        Some(listener) => Some(
            listener
                .local_addr()
                .map_err(bind("the TCP tunnel port", config.tunnel))?,
        ),
        None => None,
    };
    let tcp_tls = identity.tcp_server_config()?;
    let admin_addr = admin
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    entrances.insert(0, (listener, None));
    Ok(Bound {
        entrances,
        quic,
        tunnel_tcp,
        tcp_tls,
        admin,
        listen_addr,
        tunnel_addr,
        tunnel_tcp_addr,
        admin_addr,
    })
}

/// What joining the fleet leaves for the tasks to start: the membership and
/// the directory's change feed.
type FleetTasks = (
    FleetMembership,
    tokio::sync::mpsc::Receiver<crate::directory::Change>,
);

/// Where usage is counted: this gateway's count (from the last run's
/// `used`), teed into the fleet's journal in a fleet, and into the control
/// plane's history when there is a store.
fn usage_sink(
    used: &usage::UsageSnapshot,
    fleet: Option<&FleetMembership>,
    accounts: &crate::accounts::Accounts,
) -> Box<dyn usage::UsageSink> {
    let usage: Box<dyn usage::UsageSink> = match fleet {
        Some(joined) => Box::new(usage::Tee {
            own: MemoryUsage::from_snapshot(used),
            unflushed: joined.fleet.unflushed.clone(),
        }),
        None => Box::new(MemoryUsage::from_snapshot(used)),
    };
    match accounts.control() {
        Some(link) => Box::new(usage::WithHistory {
            inner: usage,
            history: link.history.clone(),
        }),
        None => usage,
    }
}

/// The state every task shares, with the fleet joined when configured.
async fn assemble(
    config: GatewayConfig,
    loaded: Loaded,
) -> Result<(Arc<Shared>, Option<Arc<Fleet>>, Option<FleetTasks>), StartError> {
    let Loaded {
        identity,
        exit_key,
        accounts,
        customer_tls,
        used,
    } = loaded;
    let password_checks =
        PasswordChecks::new(config.password_checks, config.password_queue_timeout);
    let mut directory = LocalDirectory::new(exit_key).with_health_policy(config.health);
    let metrics = Metrics::new();
    let fleet = match &config.fleet {
        Some(fleet_config) => {
            Some(join_fleet(&config, fleet_config, &identity, metrics.fleet.clone()).await?)
        }
        None => None,
    };
    let mut fleet_tasks = None;
    let usage = usage_sink(&used, fleet.as_ref(), &accounts);
    let fleet = match fleet {
        Some(joined) => {
            let (changes, feed) = tokio::sync::mpsc::channel(fleet::replica::FEED_CAPACITY);
            directory = directory.with_change_feed(changes);
            let fleet = joined.fleet.clone();
            fleet_tasks = Some((joined, feed));
            Some(fleet)
        }
        None => None,
    };
    let entry_ports =
        LiveEntryPorts::new(config.entry_ports.clone(), config.entry_ports_file.clone());
    let tls_handshakes = TlsHandshakes::new(config.tls_handshakes_per_ip);
    let bans = crate::bans::Bans::load(&config.state_dir).map_err(|source| StartError::State {
        path: config.state_dir.join(crate::bans::FILE_NAME),
        source,
    })?;
    let liveness = Liveness {
        every: config.silence_check,
        within: config.liveness_timeout,
        checks: metrics.liveness_checks.clone(),
        unresponsive: metrics.exits_unresponsive.clone(),
    };
    let exits = Exits::new(Box::new(directory), liveness);
    let limits = Limiter::default();
    // The fleet stands behind the exits, the session store and the limits:
    // nothing past start-up asks whether there is one.
    let sessions: Box<dyn SessionStore> = match &fleet {
        Some(fleet) => {
            exits.serve_remote(fleet.clone());
            limits.count_others(fleet.clone());
            Box::new(FleetSessions {
                local: MemorySessions::default(),
                fleet: fleet.clone(),
            })
        }
        None => Box::new(MemorySessions::default()),
    };
    let shared = Arc::new(Shared {
        settings: arc_swap::ArcSwap::from_pointee(crate::config::LiveSettings::of(&config)),
        config,
        routing: Routing {
            exits,
            sessions,
            entry_ports,
            places: Default::default(),
            bans,
        },
        accounting: Accounting {
            accounts,
            agent_tokens: Default::default(),
            limits,
            usage,
            metrics,
            access_log: AccessLog::start().map_err(StartError::AccessLog)?,
            live: Default::default(),
        },
        walls: Walls {
            auth_failures: AuthFailures::default(),
            tls_handshakes,
            password_checks,
            pending_handshakes: Default::default(),
            customer_tls,
        },
        lifecycle: Lifecycle {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
        },
    });
    Ok((shared, fleet, fleet_tasks))
}

/// The customer, tunnel and housekeeping tasks.
fn spawn_tasks(
    shared: &Arc<Shared>,
    entrances: Vec<customer::Entrance>,
    quic: &QuicEndpoint,
    tunnel_tcp: Option<TcpListener>,
    tcp_tls: Arc<rustls::ServerConfig>,
) {
    shared
        .lifecycle
        .tasks
        .spawn(customer::serve(entrances, shared.clone()));
    shared
        .lifecycle
        .tasks
        .spawn(crate::tunnel::revocations::run(shared.clone()));
    shared
        .lifecycle
        .tasks
        .spawn(tunnel::quic::serve(quic.quinn().clone(), shared.clone()));
    if let Some(listener) = tunnel_tcp {
        shared
            .lifecycle
            .tasks
            .spawn(tcp::serve(listener, tcp_tls, shared.clone()));
    }
    shared
        .lifecycle
        .tasks
        .spawn(housekeeping::sweep_sessions(shared.clone()));
    shared
        .lifecycle
        .tasks
        .spawn(housekeeping::flush_usage(shared.clone()));
}

/// The fleet's replica, peer-link and usage tasks.
fn spawn_fleet_tasks(
    shared: &Arc<Shared>,
    joined: FleetMembership,
    feed: tokio::sync::mpsc::Receiver<crate::directory::Change>,
) {
    let FleetMembership {
        fleet,
        journal,
        peer_tcp,
        peer_tls,
    } = joined;
    info!(gateway_id = %fleet.id, peer = %fleet.advertise, "fleet mode: sharing the pool through redis");
    shared
        .lifecycle
        .tasks
        .spawn(fleet::replica::run(shared.clone(), fleet.clone(), feed));
    shared.lifecycle.tasks.spawn(fleet::serve::serve(
        shared.clone(),
        fleet.clone(),
        peer_tcp,
        peer_tls,
    ));
    shared
        .lifecycle
        .tasks
        .spawn(fleet::usage::run(shared.clone(), fleet, journal));
}

/// What joining a fleet gives the gateway's start: the membership, the usage
/// an earlier run left, and the TLS/TCP peer port.
struct FleetMembership {
    fleet: Arc<Fleet>,
    /// Usage an earlier run could not flush.
    journal: fleet::usage::Journal,
    /// TLS-over-TCP peer links, on the QUIC peer port's number, and their
    /// TLS settings.
    peer_tcp: TcpListener,
    peer_tls: Arc<rustls::ServerConfig>,
}

/// Sets up fleet membership: the peer port (QUIC and TCP), the fleet key
/// (derived from the certificate's key, which every gateway of a fleet
/// shares), the Redis connections (made on first use), and the usage journal
/// of an earlier run.
async fn join_fleet(
    config: &GatewayConfig,
    fleet_config: &crate::config::FleetConfig,
    identity: &tls::Identity,
    counters: crate::metrics::FleetCounters,
) -> Result<FleetMembership, StartError> {
    let id: Arc<str> = fleet_config
        .gateway_id
        .clone()
        .unwrap_or_else(|| Fleet::default_id(&config.state_dir))
        .into();
    let addr = fleet_config.peer_listen;
    let quic = |addr| -> Result<QuicEndpoint, StartError> {
        let server = identity.quic_server_config_for(
            exitpool_protocol::peer::PEER_ALPN,
            fleet::peer::transport_config(fleet_config.gateway_timeout, true),
        )?;
        QuicEndpoint::serve(addr, tunnel::quic::endpoint_config(identity), server).map_err(
            |source| StartError::Bind {
                what: "the peer port",
                addr,
                source,
            },
        )
    };
    let (endpoint, tcp_listener) = bind_same_port(addr, quic, "the TCP peer port").await?;
    let bound = endpoint.local_addr().map_err(|source| StartError::Bind {
        what: "the peer port",
        addr,
        source,
    })?;
    let advertise = fleet_config.peer_advertise.unwrap_or(bound);
    if advertise.ip().is_unspecified() {
        return Err(StartError::Fleet(format!(
            "--peer-listen {addr} binds every address; set --peer-advertise to the address the other gateways dial"
        )));
    }
    let peers = fleet::peer::Peers::new(
        endpoint,
        fleet_config.peer_transport,
        id.clone(),
        &fleet::peer::fleet_key(identity),
        fleet_config.gateway_timeout,
        fleet_config.gateway_timeout,
    );
    let fleet = Fleet::new(
        fleet_config.clone(),
        id,
        advertise,
        identity.pin(),
        peers,
        counters,
    )
    .map_err(|error| StartError::Fleet(error.to_string()))?;
    fleet.check_membership().await.map_err(StartError::Fleet)?;
    let journal_path = fleet::usage::path_in(&config.state_dir);
    let journal = fleet::usage::load(&journal_path).map_err(|source| StartError::State {
        path: journal_path,
        source,
    })?;
    Ok(FleetMembership {
        fleet: Arc::new(fleet),
        journal,
        peer_tcp: tcp_listener,
        peer_tls: identity.tcp_server_config_for(exitpool_protocol::peer::PEER_TCP_ALPN)?,
    })
}

/// How many times an ephemeral port (port 0) of the tunnel or the peer link is
/// drawn again when its number is taken on TCP.
const SAME_PORT_ATTEMPTS: usize = 16;

/// The QUIC endpoint and, unless turned off, the TCP tunnel listener: by default
/// on the same port number, so one `--gateway HOST:PORT` serves both.
async fn bind_tunnels(
    config: &GatewayConfig,
    identity: &tls::Identity,
) -> Result<(QuicEndpoint, Option<TcpListener>), StartError> {
    let quic = |addr| -> Result<QuicEndpoint, StartError> {
        let server = identity
            .quic_server_config(tunnel::quic::transport_config(config.tunnel_idle_timeout))?;
        QuicEndpoint::serve(addr, tunnel::quic::endpoint_config(identity), server).map_err(
            |source| StartError::Bind {
                what: "the tunnel port",
                addr,
                source,
            },
        )
    };
    let tcp = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "the TCP tunnel port",
                addr,
                source,
            })
    };
    match config.tunnel_tcp {
        TunnelTcp::Off => Ok((quic(config.tunnel)?, None)),
        TunnelTcp::At(addr) => Ok((quic(config.tunnel)?, Some(tcp(addr).await?))),
        TunnelTcp::SamePort => {
            let (endpoint, listener) =
                bind_same_port(config.tunnel, quic, "the TCP tunnel port").await?;
            Ok((endpoint, Some(listener)))
        }
    }
}

/// A QUIC endpoint from `quic` on `addr` and a TCP listener on the port of the
/// same number, so one address serves both transports. An ephemeral UDP
/// port's number may be taken on TCP: port 0 draws again.
async fn bind_same_port(
    addr: SocketAddr,
    quic: impl Fn(SocketAddr) -> Result<QuicEndpoint, StartError>,
    what_tcp: &'static str,
) -> Result<(QuicEndpoint, TcpListener), StartError> {
    let attempts = if addr.port() == 0 {
        SAME_PORT_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let endpoint = quic(addr)?;
        let port = endpoint
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: what_tcp,
                addr,
                source,
            })?
            .port();
        let mut tcp_addr = addr;
        tcp_addr.set_port(port);
        match TcpListener::bind(tcp_addr).await {
            Ok(listener) => return Ok((endpoint, listener)),
            Err(source) if attempt >= attempts => {
                return Err(StartError::Bind {
                    what: what_tcp,
                    addr: tcp_addr,
                    source,
                })
            }
            Err(_) => endpoint.close(0, b""),
        }
    }
}
