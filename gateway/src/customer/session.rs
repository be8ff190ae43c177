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
use crate::directory::{Agent, Filter, PickError, StreamGuard};
use crate::error::ProxyError;
use crate::limits::Slot;
use crate::sessions::{Pinned, SessionKey};
use crate::shared::Shared;
use crate::tunnel::ExitStream;
use exitpool_protocol::TargetHost;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a request waits for a slot when every matching exit is busy, before
/// it is answered `exits_busy`: a moment for streams that are ending to end,
/// not a queue.
pub const EXITS_BUSY_GRACE: Duration = Duration::from_millis(100);

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
    shared.auth_failures.check(ip).inspect_err(|error| {
        shared.record_error(None, None, error);
    })?;
    let checked = shared
        .accounts
        .current()
        .users
        .check(bases.user, bases.password);
    let verified = match checked {
        Checked::Done(verified) => verified,
        Checked::NeedsHash(check) => {
            shared.metrics.password_hashes.inc();
            shared
                .password_checks
                .run(check)
                .await
                .inspect_err(|error| {
                    shared.record_error(None, None, error);
                })?
        }
    };
    let Some(customer) = verified else {
        shared.auth_failures.record_failure(ip);
        shared.record_error(None, None, &ProxyError::AuthRequired);
        return Err(ProxyError::AuthRequired);
    };
    tracing::Span::current().record("user", customer.name.as_str());
    pending.release();
    let checked = credentials::parse_targeting(user, password)
        .map_err(|e| ProxyError::BadTargeting {
            key: e.key,
            message: e.message,
        })
        .and_then(
            |targeting| match (&targeting.country, &customer.limits.countries) {
                (Some(country), Some(allowed)) if !customer.limits.allows_country(country) => {
                    Err(ProxyError::CountryNotAllowed {
                        country: country.clone(),
                        allowed: allowed.join(", "),
                    })
                }
                _ => Ok(targeting),
            },
        );
    match checked {
        Ok(targeting) => Ok(Grant {
            user: customer.name.clone(),
            targeting,
            customer,
        }),
        Err(error) => {
            shared.record_error(Some(&customer.name), None, &error);
            Err(error)
        }
    }
}

/// Checks the account's limits, chooses an exit for `grant` and opens
/// `host:port` through it. The answer holds one of the customer's
/// concurrent-connection slots until it is dropped.
pub async fn open(
    grant: &Grant,
    host: TargetHost,
    port: u16,
    shared: &Shared,
) -> Result<Authorized, ProxyError> {
    let started = Instant::now();
    let fail = |agent: Option<&Agent>, error: ProxyError| {
        shared.record_error(Some(&grant.user), agent, &error);
        error
    };
    // Limits as they are now, so a reload applies to connections already
    // authenticated (SOCKS5) too; an account removed since then is refused.
    let customer = shared
        .accounts
        .current()
        .users
        .get(&grant.user)
        .cloned()
        .ok_or_else(|| fail(None, ProxyError::AuthRequired))?;
    let used = shared.usage.customer_bytes(&grant.user);
    let slot = shared
        .limits
        .admit(&customer, used)
        .map_err(|e| fail(None, e))?;
    let (agent, session, pin) = choose_exit_or_wait(grant, &customer.limits, shared)
        .await
        .map_err(|e| fail(None, e))?;
    let load = StreamGuard::new(agent.clone());
    let stream = shared
        .links
        .open(agent.key, host, port, shared.config.open_timeout)
        .await
        .map_err(|e| fail(Some(&agent), e))?;
    // Pinned only once the exit has answered: refused targets leave no pins.
    if let Some((key, pinned)) = pin {
        // Room was checked before opening; losing a race for the last places
        // leaves this connection served, unpinned.
        let _ = shared
            .sessions
            .put(key, pinned, customer.limits.session_limit());
    }
    shared
        .metrics
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    shared.metrics.connections.inc();
    shared.usage.record_connection(&grant.user, &agent);
    Ok(Authorized {
        agent,
        stream,
        load,
        slot,
        session,
    })
}

/// [`choose_exit`], waiting up to [`EXITS_BUSY_GRACE`] for a stream to end
/// when every matching exit is busy. A customer that closes a connection and
/// opens the next at once can otherwise arrive a moment before the gateway has
/// seen its old stream end, and find its own slot still taken.
async fn choose_exit_or_wait(
    grant: &Grant,
    limits: &Limits,
    shared: &Shared,
) -> Result<Chosen, ProxyError> {
    let deadline = tokio::time::Instant::now() + EXITS_BUSY_GRACE;
    loop {
        // Registered before the pick, so a slot freed in between is not missed.
        let freed = shared.directory.slot_freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match choose_exit(grant, limits, shared) {
            Err(ProxyError::ExitsBusy(described)) => {
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    return Err(ProxyError::ExitsBusy(described));
                }
            }
            chosen => return chosen,
        }
    }
}

/// Routes within the account's countries: a request that names a country was
/// checked in [`authenticate`]; one that does not, from an account limited to
/// some countries, exits from one of them that has exits (a random one, or for a
/// session a stable one, so the session keeps its exit).
fn choose_exit(grant: &Grant, limits: &Limits, shared: &Shared) -> Result<Chosen, ProxyError> {
    let allowed = match (&grant.targeting.country, &limits.countries) {
        (None, Some(allowed)) => allowed,
        (country, _) => return choose_in(grant, country.clone(), limits, shared),
    };
    let mut order: Vec<&String> = allowed.iter().collect();
    match &grant.targeting.session {
        Some(session) => order.sort_by_key(|country| {
            shared
                .directory
                .ring_point(&format!("{}\0{}\0{country}", grant.user, session.id))
        }),
        None => rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng()),
    }
    let mut busy = false;
    for country in order {
        match choose_in(grant, Some(country.clone()), limits, shared) {
            Err(ProxyError::NoExit(_)) => {}
            Err(ProxyError::ExitsBusy(_)) => busy = true,
            chosen => return chosen,
        }
    }
    let described = format!("in the account's countries ({})", allowed.join(", "));
    Err(if busy {
        ProxyError::ExitsBusy(described)
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
    shared: &Shared,
) -> Result<Chosen, ProxyError> {
    let targeting = &grant.targeting;
    let filter = Filter {
        country,
        asn: targeting.asn,
        city: targeting.city.clone(),
    };
    let directory = &shared.directory;
    let Some(session) = &targeting.session else {
        let agent = directory.pick(&filter).map_err(unavailable)?;
        return Ok((agent, None, None));
    };
    let key = SessionKey {
        customer: grant.user.clone(),
        session: session.id.clone(),
    };
    let now = Instant::now();
    let point = directory.ring_point(&format!("{}\0{}", key.customer, key.session));
    let pin = shared.sessions.get(&key, now);
    let fresh = pin.is_none();
    let (expires_at, outcome) = match pin {
        None => (now + session.lifetime, SessionOutcome::New),
        Some(pin) => match directory.by_agent_id(&pin.agent_id) {
            Some(agent) if agent.is_accepting() && filter.matches(&agent.location) => {
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
        shared
            .sessions
            .has_room(&key.customer, limits.session_limit())
            .map_err(|full| ProxyError::TooManySessions(full.to_string()))?;
    }
    let agent = directory.pick_sticky(&filter, point).map_err(unavailable)?;
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
    }
}
