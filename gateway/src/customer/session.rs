//! The customer-session step every protocol shares once it has credentials and a
//! target: authenticate -> parse targeting -> choose an exit (rotation or sticky
//! session) -> open a relay stream and wait for the exit's answer. HTTP `CONNECT`, plain
//! HTTP and SOCKS5 all go through here, so they route and fail identically, and
//! meet the same account limits ([`crate::limits`]): the allowed countries here in
//! [`authenticate`] and routing, quota, rate and concurrency in [`open`]. Failures
//! are counted (usage and metrics) here too.

use crate::abuse::AddressSlot;
use crate::auth::{Checked, Customer, Limits};
use crate::credentials::{self, SessMode, Targeting};
use crate::directory::{Agent, Avoid, Filter, Outcome, PickError, StreamGuard};
use crate::entry_ports;
use crate::error::ProxyError;
use crate::limits::Slot;
use crate::metrics::CauseLabel;
use crate::sessions::{Pinned, SessionKey, Settle};
use crate::shared::{Accounting, Routing, Shared};
use crate::tunnel::ExitStream;
use exitpool_protocol::TargetHost;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a request waits for a slot when every matching exit is busy, before
/// it is answered `exits_busy`: a moment for streams that are ending to end,
/// not a queue.
pub const EXITS_BUSY_GRACE: Duration = Duration::from_millis(100);

/// Longest a request waits for exits to come back when every exit it could
/// use was on another gateway that stopped answering: that gateway's agents
/// rejoin the others within a few keep-alives (seconds at the defaults).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(10);

/// Where a customer connection arrived.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    /// The customer's address.
    pub peer: SocketAddr,
    /// On an entry port: the targeting its number selects.
    pub entry: Option<Arc<Targeting>>,
}

/// An authenticated customer and what they asked for.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The base user name (for logs and accounting; never the password).
    pub user: String,
    /// Targeting parameters from the credentials.
    pub targeting: Targeting,
    /// The account as it was when the customer authenticated.
    pub customer: Arc<Customer>,
}

/// What happened to a sticky session on this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// First use: pinned to the exit now serving.
    New,
    /// Served by its pinned exit.
    Kept,
    /// Its pinned exit went away; moved to the exit now serving.
    Moved {
        /// The exit id it was pinned to.
        from: String,
    },
}

impl SessionOutcome {
    /// Value of the `X-Exitpool-Session` header.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionOutcome::New => "new",
            SessionOutcome::Kept => "kept",
            SessionOutcome::Moved { .. } => "moved",
        }
    }
}

/// A request that got through to its target: the open relay stream and what it
/// holds until the transfer ends.
pub struct Authorized {
    /// The exit serving the stream.
    pub agent: Arc<Agent>,
    /// The relay stream, its target dialled.
    pub stream: ExitStream,
    /// Keeps the stream counted in the exit's live load.
    pub load: StreamGuard,
    /// One of the customer's concurrent connections.
    pub slot: Slot,
    /// Sticky-session outcome, when the request named a session.
    pub session: Option<SessionOutcome>,
    /// Exits tried, this one included (`X-Exitpool-Attempts`).
    pub attempts: u32,
}

/// A refused request, with how many exits it tried before the refusal
/// (`X-Exitpool-Attempts`); `None` when it was refused before any exit was
/// looked for (credentials, targeting, limits).
#[derive(Debug)]
pub struct Refusal {
    /// Why it was refused.
    pub error: ProxyError,
    /// Exits tried: 0 when none matched, more than one after retries.
    pub attempts: Option<u32>,
}

impl Refusal {
    /// The same refusal, after `exits` exits were tried.
    pub fn tried(self, exits: usize) -> Refusal {
        Refusal {
            attempts: Some(exits as u32),
            ..self
        }
    }
}

impl From<ProxyError> for Refusal {
    fn from(error: ProxyError) -> Self {
        Refusal {
            error,
            attempts: None,
        }
    }
}

/// Checks the base credentials, then the targeting parameters. Unknown users and
/// wrong passwords get the same [`ProxyError::AuthRequired`]; only an
/// authenticated customer hears about grammar errors.
/// A targeted country outside the account's `countries` is refused here.
/// Success frees the connection's unauthenticated slot (`pending`), whose
/// address is also what failures are counted against.
pub async fn authenticate(
    user: &str,
    password: &str,
    pending: &AddressSlot,
    shared: &Shared,
) -> Result<Grant, ProxyError> {
    let bases = credentials::bases(user, password);
    let ip = pending.ip();
    shared.walls.auth_failures.check(ip).inspect_err(|error| {
        shared.accounting.record_error(None, None, error);
    })?;
    let checked = shared
        .accounting
        .accounts
        .current()
        .users
        .check(bases.user, bases.password);
    let verified = match checked {
        Checked::Done(verified) => verified,
        Checked::NeedsHash(check) => {
            shared.accounting.metrics.password_hashes.inc();
            shared
                .walls
                .password_checks
                .run(check)
                .await
                .inspect_err(|error| {
                    shared.accounting.record_error(None, None, error);
                })?
        }
    };
    let Some(customer) = verified else {
        shared.walls.auth_failures.record_failure(ip);
        shared
            .accounting
            .record_error(None, None, &ProxyError::AuthRequired);
        return Err(ProxyError::AuthRequired);
    };
    tracing::Span::current().record("user", customer.name.as_str());
    pending.release();
    let checked = credentials::parse_targeting(user, password)
        .map_err(|e| ProxyError::BadTargeting {
            key: e.key,
            message: e.message,
        })
        .and_then(|targeting| allowed_country(targeting, &customer));
    match checked {
        Ok(targeting) => Ok(Grant {
            user: customer.name.clone(),
            targeting,
            customer,
        }),
        Err(error) => {
            shared
                .accounting
                .record_error(Some(&customer.name), None, &error);
            Err(error)
        }
    }
}

/// Authenticates by `credentials` when the client sent some, else by where it
/// comes from ([`authenticate_source`]); on an entry port, the port's targeting
/// is merged under the credentials' parameters (a conflict is
/// [`ProxyError::BadTargeting`]).
pub(crate) async fn authenticate_either(
    credentials: Option<(&str, &str)>,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: &Shared,
) -> Result<Grant, ProxyError> {
    let mut grant = match credentials {
        Some((user, password)) => authenticate(user, password, pending, shared).await?,
        None => authenticate_source(arrival.peer.ip(), pending, &shared.accounting)?,
    };
    if let Some(entry) = &arrival.entry {
        let targeting = std::mem::take(&mut grant.targeting);
        grant.targeting = entry_ports::merge(entry, targeting)
            .map_err(|e| ProxyError::BadTargeting {
                key: e.key,
                message: e.message,
            })
            .and_then(|targeting| allowed_country(targeting, &grant.customer))
            .inspect_err(|error| {
                shared
                    .accounting
                    .record_error(Some(&grant.user), None, error)
            })?;
    }
    // Where the account may connect from (the control plane's `allow_ips`).
    grant
        .customer
        .limits
        .admits_source(arrival.peer.ip())
        .and_then(|()| servable(&grant.targeting, &shared.config.geoip))
        .inspect_err(|error| {
            shared
                .accounting
                .record_error(Some(&grant.user), None, error)
        })?;
    Ok(grant)
}

/// Refuses targeting by a field no loaded GeoIP database carries: no exit
/// could ever match it, and the customer should hear why rather than
/// `no_exit`.
fn servable(targeting: &Targeting, geoip: &exitpool_geoip::GeoIp) -> Result<(), ProxyError> {
    let missing = [
        (
            targeting.region.is_some() && !geoip.has_region(),
            "region",
            "regions (ISO 3166-2 subdivisions; a MaxMind City database has them)",
        ),
        (
            targeting.city.is_some() && !geoip.has_city(),
            "city",
            "cities",
        ),
        (targeting.asn.is_some() && !geoip.has_asn(), "asn", "ASNs"),
    ]
    .into_iter()
    .find(|(missing, _, _)| *missing);
    match missing {
        Some((_, key, what)) => Err(ProxyError::BadTargeting {
            key: key.to_owned(),
            message: format!("this gateway's GeoIP databases carry no {what}"),
        }),
        None => Ok(()),
    }
}

/// Refuses a targeted country outside the account's `countries`.
/// A named country outside them is refused; a continent is narrowed to them.
fn allowed_country(targeting: Targeting, customer: &Customer) -> Result<Targeting, ProxyError> {
    let limits = &customer.limits;
    let Some(allowed) = &limits.countries else {
        return Ok(targeting);
    };
    let refused = |country: String| ProxyError::CountryNotAllowed {
        country,
        allowed: allowed.join(", "),
    };
    if let Some(continent) = &targeting.continent {
        let countries: Vec<String> = targeting
            .countries
            .iter()
            .filter(|country| limits.allows_country(country))
            .cloned()
            .collect();
        if countries.is_empty() {
            return Err(refused(format!("continent {continent}")));
        }
        return Ok(Targeting {
            countries,
            ..targeting
        });
    }
    match targeting
        .countries
        .iter()
        .find(|country| !limits.allows_country(country))
    {
        Some(country) => Err(refused(country.clone())),
        None => Ok(targeting),
    }
}

/// Authenticates a connection that sent no credentials by where it comes from:
/// the account whose `allow_ips` holds `source`. Anyone else is asked for
/// credentials ([`ProxyError::AuthRequired`]), as without the allow-list.
pub fn authenticate_source(
    source: IpAddr,
    pending: &AddressSlot,
    accounting: &Accounting,
) -> Result<Grant, ProxyError> {
    let accounts = accounting.accounts.current();
    let Some(customer) = accounts.users.by_source(source) else {
        return Err(ProxyError::AuthRequired);
    };
    tracing::Span::current().record("user", customer.name.as_str());
    pending.release();
    Ok(Grant {
        user: customer.name.clone(),
        targeting: Targeting::default(),
        customer: customer.clone(),
    })
}

/// Checks the account's limits, chooses an exit for `grant` and opens
/// `host:port` through it. The answer holds one of the customer's
/// concurrent-connection slots until it is dropped.
///
/// An exit that fails for its own reasons (its tunnel lost, no answer, it says
/// it is unavailable) is reported to its health, and the request moves to
/// another exit: up to [`GatewayConfig::open_attempts`] exits within
/// [`GatewayConfig::connect_deadline`], nothing having reached the customer
/// yet. A `strict` session fails at once instead; a `move` session moves.
///
/// [`GatewayConfig::open_attempts`]: crate::config::GatewayConfig::open_attempts
/// [`GatewayConfig::connect_deadline`]: crate::config::GatewayConfig::connect_deadline
pub async fn open(
    grant: &Grant,
    host: TargetHost,
    port: u16,
    shared: &Shared,
) -> Result<Authorized, Refusal> {
    let started = Instant::now();
    let fail = |agent: Option<&Agent>, error: ProxyError| {
        shared
            .accounting
            .record_error(Some(&grant.user), agent, &error);
        Refusal::from(error)
    };
    let (customer, slot) =
        within_limits(grant, Some(&host), &shared.accounting).map_err(|e| fail(None, e))?;
    let config = shared.settings();
    let deadline = started + config.connect_deadline;
    let strict = grant
        .targeting
        .session
        .as_ref()
        .is_some_and(|session| session.mode == SessMode::Strict);
    let mut avoid = Avoid::default();
    // The exit failure that sent this request to another exit.
    let mut last_failure: Option<(Arc<Agent>, ProxyError)> = None;
    // Pins settled for this request (a new pin, then perhaps a move).
    let mut settles = 0u8;
    let failover_until = deadline.min(started + FAILOVER_WAIT);
    loop {
        // Subscribed before choosing, so a join in between is not missed.
        let mut pool_changed = shared.routing.exits.directory().census();
        let chosen = choose_exit_or_wait(grant, &customer.limits, &shared.routing, &avoid).await;
        let (agent, mut session, mut pin) = match (chosen, last_failure.take()) {
            (Ok(chosen), failure) => {
                last_failure = failure;
                chosen
            }
            (Err(error), None) => return Err(fail(None, error).tried(avoid.exits.len())),
            (Err(_), Some((agent, error))) => {
                // Every exit left was on another gateway that has gone: its
                // agents are on their way to the others (within a few
                // keep-alives), so the request waits for the pool to change.
                // Otherwise there is no other exit: the last failure stands.
                let moving = matches!(error, ProxyError::PeerUnavailable(_))
                    && Instant::now() < failover_until;
                if !moving || !pool_changes(&mut pool_changed, failover_until).await {
                    return Err(fail(Some(&agent), error).tried(avoid.exits.len()));
                }
                last_failure = Some((agent, error));
                continue;
            }
        };
        if settle_pin(&mut pin, &mut settles, &mut session, &shared.routing).await {
            continue;
        }
        let attempt_started = Instant::now();
        let timeout = config
            .open_timeout
            .min(deadline.saturating_duration_since(attempt_started));
        let load = StreamGuard::new(agent.clone());
        let waiting = agent.health.open_started(attempt_started);
        let opened = shared
            .routing
            .exits
            .open(&agent, host.clone(), port, timeout)
            .await;
        drop(waiting);
        let error = match opened {
            Ok(stream) => {
                shared.report_outcome(&agent, Outcome::Opened(attempt_started.elapsed()));
                record_opened(grant, &customer, pin, &agent, started, shared);
                return Ok(Authorized {
                    agent,
                    stream,
                    load,
                    slot,
                    session,
                    attempts: avoid.exits.len() as u32 + 1,
                });
            }
            Err(error) => error,
        };
        drop(load);
        // A `strict` session tries no other exit.
        let attempts = if strict {
            0
        } else {
            config.open_attempts as usize
        };
        match next_exit(&agent, error, &mut avoid, attempts, deadline, shared) {
            Ok(failure) => last_failure = Some((agent, failure)),
            Err((error, tried)) => return Err(fail(Some(&agent), error).tried(tried)),
        }
    }
}

/// Settles a new pin with the session store, at most twice a request (a
/// new pin, then perhaps a move); `true` when the session was pinned
/// elsewhere and the request routes again with that pin, now held here too.
async fn settle_pin(
    pin: &mut Option<(SessionKey, Pinned)>,
    settles: &mut u8,
    session: &mut Option<SessionOutcome>,
    routing: &Routing,
) -> bool {
    let Some((key, pinned)) = pin else {
        return false;
    };
    if *settles >= 2 {
        return false;
    }
    *settles += 1;
    match routing.sessions.settle(key, pinned).await {
        Settle::Ours => false,
        // Another gateway pinned it to this very exit first.
        Settle::Found => {
            *session = Some(SessionOutcome::Kept);
            false
        }
        Settle::Elsewhere => true,
    }
}

/// The exit for a SOCKS5 UDP association ([`super::socks_udp`]): the
/// account's limits and routing as for [`open`] (one of the customer's
/// connection slots, the exit's load while the association lasts), chosen once
/// for the association's life. Nothing is dialled here: each UDP flow is opened
/// on the exit's tunnel later. Only exits whose tunnel this gateway holds
/// qualify (UDP flows do not cross to other gateways).
pub(crate) async fn choose_for_flows(
    grant: &Grant,
    shared: &Shared,
) -> Result<(Arc<Agent>, StreamGuard, Slot), Refusal> {
    let started = Instant::now();
    let fail = |error: ProxyError| {
        shared
            .accounting
            .record_error(Some(&grant.user), None, &error);
        Refusal::from(error)
    };
    let (customer, slot) = within_limits(grant, None, &shared.accounting).map_err(fail)?;
    let (agent, _session, pin) =
        choose_exit_or_wait(grant, &customer.limits, &shared.routing, &Avoid::default())
            .await
            .map_err(fail)?;
    if agent.home.is_some() {
        return Err(fail(ProxyError::NoExit(
            "UDP is carried only through exits connected to this gateway".into(),
        )));
    }
    record_opened(grant, &customer, pin, &agent, started, shared);
    Ok((agent.clone(), StreamGuard::new(agent), slot))
}

/// The account's limits as they are now, so a reload applies to connections
/// already authenticated (SOCKS5) too; an account removed since then is
/// refused, and so is a `target` among its blocked domains. The customer and
/// one of its concurrent-connection slots.
fn within_limits(
    grant: &Grant,
    target: Option<&TargetHost>,
    accounting: &Accounting,
) -> Result<(Arc<Customer>, Slot), ProxyError> {
    let customer = accounting
        .accounts
        .current()
        .users
        .get(&grant.user)
        .cloned()
        .ok_or(ProxyError::AuthRequired)?;
    if let Some(target) = target {
        customer.limits.admits_target(target)?;
    }
    // A spent quota period is refused here, saying which and when it resets,
    // rather than found at the first byte.
    if let Some(period) = accounting
        .accounts
        .control()
        .and_then(|link| link.period_quota(&grant.user))
    {
        if accounting.used_by(&grant.user) >= period.effective() {
            return Err(ProxyError::QuotaPeriodExhausted {
                period: period.period,
                resets_at: period.resets_at,
            });
        }
    }
    let used = accounting.customer_bytes(&grant.user);
    let slot = accounting.limits.admit(&customer, used)?;
    Ok((customer, slot))
}

/// Refuses `host` when it is among the blocked domains of `user`'s account
/// as it is now: for each UDP flow's destination (a connection's target is
/// checked in [`open`]). The refusal is counted against the account.
pub(crate) fn target_allowed(
    user: &str,
    host: &TargetHost,
    accounting: &Accounting,
) -> Result<(), ProxyError> {
    let accounts = accounting.accounts.current();
    let allowed = match accounts.users.get(user) {
        Some(customer) => customer.limits.admits_target(host),
        None => Err(ProxyError::AuthRequired),
    };
    allowed.inspect_err(|error| accounting.record_error(Some(user), None, error))
}

/// A stream opened through `agent`: the session pinned (only once the exit
/// has answered, so refused targets leave no pins), and the connection
/// counted.
fn record_opened(
    grant: &Grant,
    customer: &Customer,
    pin: Option<(SessionKey, Pinned)>,
    agent: &Agent,
    started: Instant,
    shared: &Shared,
) {
    if let Some((key, pinned)) = pin {
        // Room was checked before opening; losing a race for the last
        // places leaves this connection served, unpinned.
        let _ = shared
            .routing
            .sessions
            .put(key, pinned, customer.limits.session_limit());
    }
    shared
        .accounting
        .metrics
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    shared.accounting.metrics.connections.inc();
    shared
        .accounting
        .usage
        .record_connection(Some(&grant.user), agent);
}

/// After `agent` failed to open: `Ok` with the failure when the request
/// moves to another exit (the exit's own fault, fewer than `attempts` exits
/// tried, time left before `deadline`), else `Err` with the error that
/// stands and how many exits were tried.
fn next_exit(
    agent: &Arc<Agent>,
    error: ProxyError,
    avoid: &mut Avoid,
    attempts: usize,
    deadline: Instant,
    shared: &Shared,
) -> Result<ProxyError, (ProxyError, usize)> {
    let Some(cause) = error.exit_fault() else {
        // The target's answer, relayed by a working exit.
        if matches!(error, ProxyError::Exit { .. }) {
            shared.report_outcome(agent, Outcome::Answered);
        }
        return Err((error, avoid.exits.len() + 1));
    };
    shared.report_outcome(agent, Outcome::ExitFailed);
    avoid.exits.push(agent.key);
    if let (ProxyError::PeerUnavailable(_), Some(home)) = (&error, &agent.home) {
        avoid.homes.push(home.clone());
    }
    let time_left = deadline.saturating_duration_since(Instant::now());
    if avoid.exits.len() >= attempts || time_left.is_zero() {
        return Err((error, avoid.exits.len()));
    }
    tracing::debug!(exit = %agent.exit_id, cause, "open failed at the exit; trying another");
    shared
        .accounting
        .metrics
        .open_retries
        .get_or_create(&CauseLabel {
            cause: cause.into(),
        })
        .inc();
    Ok(error)
}

/// Waits until the pool changes (an agent joins or leaves) or `until`;
/// `false` when there is no pool to watch any more.
async fn pool_changes(
    pool: &mut tokio::sync::watch::Receiver<crate::directory::Census>,
    until: Instant,
) -> bool {
    let until = tokio::time::Instant::from_std(until);
    !matches!(
        tokio::time::timeout_at(until, pool.changed()).await,
        Ok(Err(_))
    )
}

/// [`choose_exit`], waiting up to [`EXITS_BUSY_GRACE`] for a stream to end
/// when every matching exit is busy. A customer that closes a connection and
/// opens the next at once can otherwise arrive a moment before the gateway has
/// seen its old stream end, and find its own slot still taken.
async fn choose_exit_or_wait(
    grant: &Grant,
    limits: &Limits,
    routing: &Routing,
    avoid: &Avoid,
) -> Result<Chosen, ProxyError> {
    let deadline = tokio::time::Instant::now() + EXITS_BUSY_GRACE;
    loop {
        // Registered before the pick, so a slot freed in between is not missed.
        let freed = routing.exits.directory().slot_freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match choose_exit(grant, limits, routing, avoid) {
            Err(ProxyError::ExitsBusy(described)) => {
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    return Err(ProxyError::ExitsBusy(described));
                }
            }
            chosen => return chosen,
        }
    }
}

/// Routes within the countries asked for (one, a list or a continent's, already
/// narrowed to the account's in [`authenticate`]), else within the account's
/// countries: a list exits from one of its countries that has exits (a random
/// one, or for a session a stable one, so the session keeps its exit).
/// Exits `avoid` covers have already failed this request, or would.
fn choose_exit(
    grant: &Grant,
    limits: &Limits,
    routing: &Routing,
    avoid: &Avoid,
) -> Result<Chosen, ProxyError> {
    let targeting = &grant.targeting;
    let (list, described) = match (targeting.countries.as_slice(), &limits.countries) {
        ([], None) => return choose_in(grant, None, limits, routing, avoid),
        ([one], _) => return choose_in(grant, Some(one.clone()), limits, routing, avoid),
        ([], Some(allowed)) => (
            allowed.as_slice(),
            format!("in the account's countries ({})", allowed.join(", ")),
        ),
        (list, _) => (
            list,
            match &targeting.continent {
                Some(continent) => format!("in continent {continent}"),
                None => format!("in countries {}", list.join(", ")),
            },
        ),
    };
    let mut order: Vec<&String> = list.iter().collect();
    match &grant.targeting.session {
        Some(session) => order.sort_by_key(|country| {
            routing
                .exits
                .directory()
                .ring_point(&format!("{}\0{}\0{country}", grant.user, session.id))
        }),
        None => rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng()),
    }
    let mut busy = false;
    let mut cooling = false;
    for country in order {
        match choose_in(grant, Some(country.clone()), limits, routing, avoid) {
            Err(ProxyError::NoExit(_)) => {}
            Err(ProxyError::ExitsBusy(_)) => busy = true,
            Err(ProxyError::ExitsCooling(_)) => cooling = true,
            chosen => return chosen,
        }
    }
    Err(if busy {
        ProxyError::ExitsBusy(described)
    } else if cooling {
        ProxyError::ExitsCooling(described)
    } else {
        ProxyError::NoExit(described)
    })
}

/// The exit chosen, what became of the session, and the pin to store once the
/// exit has opened the stream.
type Chosen = (
    Arc<Agent>,
    Option<SessionOutcome>,
    Option<(SessionKey, Pinned)>,
);

fn choose_in(
    grant: &Grant,
    country: Option<String>,
    limits: &Limits,
    routing: &Routing,
    avoid: &Avoid,
) -> Result<Chosen, ProxyError> {
    let targeting = &grant.targeting;
    let filter = Filter {
        country,
        asn: targeting.asn,
        city: targeting.city.clone(),
        region: targeting.region.clone(),
    };
    let directory = &routing.exits.directory();
    let Some(session) = &targeting.session else {
        let agent = directory.pick(&filter, avoid).map_err(unavailable)?;
        return Ok((agent, None, None));
    };
    let key = SessionKey {
        customer: grant.user.clone(),
        session: session.id.clone(),
    };
    let now = Instant::now();
    let point = directory.ring_point(&format!("{}\0{}", key.customer, key.session));
    let pin = routing.sessions.get(&key, now);
    let fresh = pin.is_none();
    let (expires_at, outcome) = match pin {
        None => (now + session.lifetime, SessionOutcome::New),
        Some(pin) => match directory.by_agent_id(&pin.agent_id) {
            // A strict session keeps even a cooled exit: the customer asked
            // for that exit or nothing.
            Some(agent)
                if (agent.is_routable()
                    || session.mode == SessMode::Strict && agent.is_accepting())
                    && filter.matches(&agent.location)
                    && !avoid.covers(&agent) =>
            {
                if !agent.has_capacity() {
                    return Err(ProxyError::ExitsBusy(format!(
                        "pinned to session `{}`",
                        session.id
                    )));
                }
                return Ok((agent, Some(SessionOutcome::Kept), None));
            }
            // Same session id with other targeting: a fresh pin for the new filter.
            Some(agent) if !filter.matches(&agent.location) => {
                (now + session.lifetime, SessionOutcome::New)
            }
            _ if session.mode == SessMode::Strict => {
                return Err(ProxyError::SessionExitGone(session.id.clone()));
            }
            _ => (
                pin.expires_at,
                SessionOutcome::Moved {
                    from: directory.exit_id(&pin.agent_id),
                },
            ),
        },
    };
    if fresh {
        routing
            .sessions
            .has_room(&key.customer, limits.session_limit())
            .map_err(|full| ProxyError::TooManySessions(full.to_string()))?;
    }
    let agent = directory
        .pick_sticky(&filter, point, avoid)
        .map_err(unavailable)?;
    let pinned = Pinned {
        agent_id: agent.agent_id.clone(),
        expires_at,
    };
    Ok((agent, Some(outcome), Some((key, pinned))))
}

/// The customer's answer when the directory has no exit to give.
fn unavailable(error: PickError) -> ProxyError {
    match error {
        PickError::NoExit(filter) => ProxyError::NoExit(filter),
        PickError::AllBusy(filter) => ProxyError::ExitsBusy(filter),
        PickError::AllCooling(filter) => ProxyError::ExitsCooling(filter),
    }
}
