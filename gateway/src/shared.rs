//! State every task of a running gateway shares, and the few operations on it that
//! more than one room needs: locating an agent, accounting a transfer or a
//! failure, reloading accounts, writing usage.

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

/// State every task of a running gateway shares.
pub struct Shared {
    /// The configuration it was started with.
    pub config: GatewayConfig,
    /// The exits: who is connected, where, with what load, and the one way
    /// to open a stream to any of them.
    pub exits: Exits,
    /// Agent handshakes in progress on both tunnel transports.
    pub pending_handshakes: std::sync::Arc<crate::tunnel::pending::PendingHandshakes>,
    /// Sticky-session pins.
    pub sessions: Box<dyn SessionStore>,
    /// Failed authentications per source address.
    pub auth_failures: AuthFailures,
    /// Per-address budget of TLS handshakes on the customer ports.
    pub tls_handshakes: TlsHandshakes,
    /// Where Argon2 runs: off the runtime, bounded.
    pub password_checks: PasswordChecks,
    /// Fires when the gateway stops.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// When the gateway started.
    pub started: Instant,
    /// Customers and agent tokens in force (reloadable).
    pub accounts: Accounts,
    /// Per-customer limit state.
    pub limits: Limiter,
    /// Usage per customer and per agent.
    pub usage: Box<dyn UsageSink>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// What each entry port selects (reloadable).
    pub entry_ports: LiveEntryPorts,
    /// The customer ports' certificate, when they speak TLS too.
    pub customer_tls: Option<CustomerTls>,
    /// The pool as `GET /inventory` shows it, counted at most every few seconds.
    pub places: PlacesCache,
    /// One line per transfer, written off the runtime.
    pub access_log: AccessLog,
    /// The customer transfers carried now, to list and close.
    pub live: crate::live::LiveConnections,
    /// Exits refused at join until unbanned.
    pub bans: crate::bans::Bans,
    /// Agent tokens from the control plane's store, as last looked up.
    pub agent_tokens: crate::agent_tokens::StoreTokens,
}

/// How long a listener rests after a failed accept (out of descriptors,
/// usually) before trying again, rather than spinning.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Shared {
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
        if self.exits.directory().report(agent, outcome).is_some() {
            self.metrics.exit_coolings.inc();
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
            || !self.exits.tunnels().is_open(agent.key)
        {
            tracing::debug!(exit = %agent.exit_id, %error, "relay lost with the exit's tunnel");
            self.report_outcome(agent, Outcome::ExitFailed);
        }
    }

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
    /// file's lifetime `quota_bytes`. Read with [`Shared::used_by`].
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

    /// What counts against [`Shared::quota_of`]: for period quotas the bytes this
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

    /// Like [`Shared::record_error`], for failures that are not a [`ProxyError`]
    /// (e.g. `relay_failed` for a relay that ended abnormally).
    pub fn record_error_code(&self, customer: Option<&str>, agent: Option<&Agent>, code: &str) {
        self.usage.record_error(customer, agent, code);
        self.metrics.error(code);
    }

    /// Re-reads the accounts files, the customer ports' certificate and the
    /// entry ports file; on error the running ones stay and the error is
    /// logged. (The accounts' error is returned; the others are logged only.)
    pub fn reload(&self) -> Result<(), AccountsError> {
        match self.entry_ports.reload() {
            Ok(None) => {}
            Ok(Some(ports)) => info!(ports, "entry ports reloaded"),
            Err(error) => {
                tracing::error!(%error, "entry ports reload failed; keeping the running ones")
            }
        }
        if let Some(tls) = &self.customer_tls {
            match tls.reload() {
                Ok(()) => info!("customer TLS certificate reloaded"),
                Err(error) => {
                    tracing::error!(%error, "customer TLS reload failed; keeping the running certificate")
                }
            }
        }
        match self.accounts.reload() {
            Ok(set) => {
                info!(
                    customers = set.users.len(),
                    agent_tokens = set.agent_tokens.len(),
                    "accounts reloaded"
                );
                // A revoked token takes its agents out at once; they hear why
                // when they try to come back (a Reject with BadToken).
                // Agents of other fleet gateways are theirs to check.
                for agent in self.exits.directory().agents() {
                    if agent.is_local()
                        && !set.agent_tokens.accepts(agent.token.expose())
                        && !self.agent_tokens.from_store(agent.token.expose())
                    {
                        info!(exit = %agent.exit_id, "agent token revoked; disconnecting");
                        self.exits.disconnect(
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
            &self.usage.snapshot(),
        )
    }
}
