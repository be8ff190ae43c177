//! State every task of a running gateway shares ([`Shared`], the assembly
//! start-up builds) and its views by concern: [`Routing`] (where a stream
//! goes), [`Accounting`] (who may, what they used), [`Walls`] (the ports'
//! gates) and [`Lifecycle`] (tasks and stop). A room that works with one
//! concern takes that view; the few operations that span views (locating an
//! agent, scoring an exit, reloading, writing usage) stay on [`Shared`].

use crate::abuse::{AuthFailures, PasswordChecks, TlsHandshakes};
use crate::access::AccessLog;
use crate::accounts::{Accounts, AccountsError};
use crate::config::GatewayConfig;
use crate::customer_tls::CustomerTls;
use crate::directory::places::PlacesCache;
use crate::directory::{Agent, Location, Outcome};
use crate::entry_ports::LiveEntryPorts;
use crate::error::ProxyError;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::sessions::SessionStore;
use crate::tunnel::Exits;
use crate::usage::UsageSink;
use exitpool_protocol::close_code;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

/// State every task of a running gateway shares: the configuration and four
/// views, one per concern, so a room takes the view it works with (`&Routing`,
/// `&Accounting`) and a reader knows where each piece lives.
pub struct Shared {
    /// The configuration it was started with.
    pub config: GatewayConfig,
    /// The settings read per connection, as SIGHUP last left them
    /// ([`Shared::settings`]).
    pub settings: arc_swap::ArcSwap<crate::config::LiveSettings>,
    /// Where a customer's stream goes: exits, pins, entry ports, bans.
    pub routing: Routing,
    /// Who may use the gateway and what they used: accounts, limits, usage,
    /// metrics, the access log and the transfers carried now.
    pub accounting: Accounting,
    /// What the gates of the customer and tunnel ports spend and refuse.
    pub walls: Walls,
    /// Start, tasks and stop.
    pub lifecycle: Lifecycle,
}

/// Where a customer's stream goes: the exits and what chooses among them.
pub struct Routing {
    /// The exits: who is connected, where, with what load, and the one way
    /// to open a stream to any of them.
    pub exits: Exits,
    /// Sticky-session pins.
    pub sessions: Box<dyn SessionStore>,
    /// What each entry port selects (reloadable).
    pub entry_ports: LiveEntryPorts,
    /// The pool as `GET /inventory` shows it, counted at most every few seconds.
    pub places: PlacesCache,
    /// Exits refused at join until unbanned.
    pub bans: crate::bans::Bans,
}

/// Who may use the gateway and what they used.
pub struct Accounting {
    /// Customers and agent tokens in force (reloadable).
    pub accounts: Accounts,
    /// Agent tokens from the control plane's store, as last looked up.
    pub agent_tokens: crate::agent_tokens::StoreTokens,
    /// Per-customer limit state.
    pub limits: Limiter,
    /// Usage per customer and per agent.
    pub usage: Box<dyn UsageSink>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// One line per transfer, written off the runtime.
    pub access_log: AccessLog,
    /// The customer transfers carried now, to list and close.
    pub live: crate::live::LiveConnections,
}

/// The gates of the customer and tunnel ports: what each costs and how much
/// of it one address may spend.
pub struct Walls {
    /// Failed authentications per source address.
    pub auth_failures: AuthFailures,
    /// Per-address budget of TLS handshakes on the customer ports.
    pub tls_handshakes: TlsHandshakes,
    /// Where Argon2 runs: off the runtime, bounded.
    pub password_checks: PasswordChecks,
    /// Agent handshakes in progress on both tunnel transports.
    pub pending_handshakes: Arc<crate::tunnel::pending::PendingHandshakes>,
    /// The customer ports' certificate, when they speak TLS too (reloadable).
    pub customer_tls: Option<CustomerTls>,
}

/// Start, tasks and stop.
pub struct Lifecycle {
    /// Fires when the gateway stops.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// When the gateway started.
    pub started: Instant,
}

/// How long a listener rests after a failed accept (out of descriptors,
/// usually) before trying again, rather than spinning.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Lifecycle {
    /// The next connection on `listener` (the `what` port, for the log), or
    /// `None` once the gateway stops. A failed accept is logged and retried
    /// after a pause; the listener stays up.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
        what: &'static str,
    ) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.shutdown.cancelled() => return None,
            };
            match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    tracing::warn!(%error, port = what, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

impl Shared {
    /// The settings in force now (a re-read config file may have changed
    /// them since start): read once per connection or request.
    pub fn settings(&self) -> Arc<crate::config::LiveSettings> {
        self.settings.load_full()
    }

    /// Where an agent at `ip` is.
    pub fn locate(&self, ip: IpAddr) -> Location {
        let found = self.config.geoip.lookup(ip);
        Location {
            country: found.country,
            asn: found.asn,
            city: found
                .city
                .as_deref()
                .map(crate::credentials::normalize_city),
            region: found.region,
        }
    }

    /// Records how an open or relay through `agent` went (its health), counting
    /// a cooling it causes.
    pub fn report_outcome(&self, agent: &Arc<Agent>, outcome: Outcome) {
        if self
            .routing
            .exits
            .directory()
            .report(agent, outcome)
            .is_some()
        {
            self.accounting.metrics.exit_coolings.inc();
        }
    }

    /// Scores a relay stream through `agent` that failed on the exit's side
    /// after it opened: the exit is to blame when its tunnel went
    /// (`NotConnected` on either transport, or the tunnel no longer open), not
    /// when it passed on the target's reset (`ConnectionReset`).
    pub fn report_relay_failure(&self, agent: &Arc<Agent>, error: &std::io::Error) {
        if !agent.is_local() {
            return;
        }
        if error.kind() == std::io::ErrorKind::NotConnected
            || !self.routing.exits.tunnels().is_open(agent.key)
        {
            tracing::debug!(exit = %agent.exit_id, %error, "relay lost with the exit's tunnel");
            self.report_outcome(agent, Outcome::ExitFailed);
        }
    }

    /// Re-reads the accounts files, the customer ports' certificate and the
    /// entry ports file; on error the running ones stay and the error is
    /// logged. (The accounts' error is returned; the others are logged only.)
    pub fn reload(&self) -> Result<(), AccountsError> {
        match self.routing.entry_ports.reload() {
            Ok(None) => {}
            Ok(Some(ports)) => info!(ports, "entry ports reloaded"),
            Err(error) => {
                tracing::error!(%error, "entry ports reload failed; keeping the running ones")
            }
        }
        if let Some(tls) = &self.walls.customer_tls {
            match tls.reload() {
                Ok(()) => info!("customer TLS certificate reloaded"),
                Err(error) => {
                    tracing::error!(%error, "customer TLS reload failed; keeping the running certificate")
                }
            }
        }
        match self.accounting.accounts.reload() {
            Ok(set) => {
                info!(
                    customers = set.users.len(),
                    agent_tokens = set.agent_tokens.len(),
                    "accounts reloaded"
                );
                // A revoked token takes its agents out at once; they hear why
                // when they try to come back (a Reject with BadToken).
                // Agents of other fleet gateways are theirs to check.
                for agent in self.routing.exits.directory().agents() {
                    if agent.is_local()
                        && !set.agent_tokens.accepts(agent.token.expose())
                        && !self
                            .accounting
                            .agent_tokens
                            .from_store(agent.token.expose())
                    {
                        info!(exit = %agent.exit_id, "agent token revoked; disconnecting");
                        self.routing.exits.disconnect(
                            agent.key,
                            close_code::REJECTED,
                            b"agent token revoked",
                        );
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
        crate::usage::save(
            &crate::usage::path_in(&self.config.state_dir),
            &self.accounting.usage.snapshot(),
        )
    }
}

impl Accounting {
    /// Accounts bytes moved for `customer` through `agent`: usage (quotas, billing,
    /// payouts) and metrics. Called by the customer transfer about once a second
    /// and when it ends, with the bytes since the last call. (It does not touch
    /// `agent.bytes_up`/`bytes_down`, the live per-connection figures on `/stats`.)
    /// `customer` is `None` for a stream another fleet gateway carried here:
    /// that gateway counts its customer.
    pub fn record_transfer(&self, customer: Option<&str>, agent: &Agent, up: u64, down: u64) {
        self.usage.record_transfer(customer, agent, up, down);
        self.metrics.bytes_up.inc_by(up);
        self.metrics.bytes_down.inc_by(down);
    }

    /// Bytes `customer` has used, for quotas: this gateway's count, or in a
    /// fleet the fleet's as of its last heartbeat plus what this gateway
    /// counted since.
    pub fn customer_bytes(&self, customer: &str) -> u64 {
        self.limits
            .customer_bytes(customer, self.usage.customer_bytes(customer))
    }

    /// The quota a transfer of `user` leases against, if it has one: the
    /// period quotas the control plane counted ([`crate::control_link`]: the
    /// least any daily, monthly or lifetime period of the account or its
    /// customer has left, as bytes this gateway may count), else the accounts
    /// file's lifetime `quota_bytes`. Read with [`Accounting::used_by`].
    pub fn quota_of(&self, user: &str) -> Option<u64> {
        if let Some(period) = self
            .accounts
            .control()
            .and_then(|link| link.period_quota(user))
        {
            return Some(period.effective());
        }
        self.accounts
            .current()
            .users
            .get(user)
            .and_then(|customer| customer.limits.quota_bytes)
    }

    /// What counts against [`Accounting::quota_of`]: for period quotas the bytes this
    /// gateway counted for `user` since it started (the store's count is in the
    /// quota already), else the account's usage total.
    pub fn used_by(&self, user: &str) -> u64 {
        match self.accounts.control() {
            Some(link) if link.period_quota(user).is_some() => link.history.local_bytes(user),
            _ => self.customer_bytes(user),
        }
    }

    /// Counts a failure answered to (or suffered by) a customer, by its product
    /// code, for whichever of the customer and the agent are known.
    pub fn record_error(&self, customer: Option<&str>, agent: Option<&Agent>, error: &ProxyError) {
        self.record_error_code(customer, agent, error.presentation().code);
    }

    /// Like [`Accounting::record_error`], for failures that are not a [`ProxyError`]
    /// (e.g. `relay_failed` for a relay that ended abnormally).
    pub fn record_error_code(&self, customer: Option<&str>, agent: Option<&Agent>, code: &str) {
        self.usage.record_error(customer, agent, code);
        self.metrics.error(code);
    }
}
