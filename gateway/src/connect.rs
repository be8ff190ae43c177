//! The steps every customer protocol shares once it has credentials and a target:
//! authenticate -> parse targeting -> choose an exit (rotation or sticky session)
//! -> open a relay stream and wait for the exit's answer. HTTP `CONNECT`, plain
//! HTTP and SOCKS5 all go through here, so they route and fail identically.

use crate::credentials::{self, SessMode, Targeting};
use crate::error::ProxyError;
use crate::exit::OpenedExit;
use crate::registry::{Agent, Filter};
use crate::sessions::{Pinned, SessionKey};
use crate::Shared;
use exitpool_protocol::TargetHost;
use std::sync::Arc;
use std::time::Instant;

/// An authenticated customer and what they asked for.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The base user name (for logs and accounting; never the password).
    pub user: String,
    /// Targeting parameters from the credentials.
    pub targeting: Targeting,
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

/// A request that got through to its target.
pub struct Authorized {
    /// The open relay stream.
    pub opened: OpenedExit,
    /// Sticky-session outcome, when the request named a session.
    pub session: Option<SessionOutcome>,
}

/// Checks the base credentials, then the targeting parameters. Unknown users and
/// wrong passwords get the same [`ProxyError::AuthRequired`]; only an
/// authenticated customer hears about grammar errors.
pub fn authenticate(user: &str, password: &str, shared: &Shared) -> Result<Grant, ProxyError> {
    let bases = credentials::bases(user, password);
    let customer = shared
        .config
        .users
        .authenticate(bases.user, bases.password)
        .ok_or(ProxyError::AuthRequired)?;
    tracing::Span::current().record("user", customer.name.as_str());
    let targeting =
        credentials::parse_targeting(user, password).map_err(|e| ProxyError::BadTargeting {
            key: e.key,
            message: e.message,
        })?;
    Ok(Grant {
        user: customer.name.clone(),
        targeting,
    })
}

/// Chooses an exit for `grant` and opens `host:port` through it.
pub async fn open(
    grant: &Grant,
    host: TargetHost,
    port: u16,
    shared: &Shared,
) -> Result<Authorized, ProxyError> {
    let (agent, session) = choose_exit(grant, shared)?;
    let opened = crate::exit::open(agent, host, port).await?;
    Ok(Authorized { opened, session })
}

fn choose_exit(
    grant: &Grant,
    shared: &Shared,
) -> Result<(Arc<Agent>, Option<SessionOutcome>), ProxyError> {
    let targeting = &grant.targeting;
    let filter = Filter {
        country: targeting.country.clone(),
        asn: targeting.asn,
        city: targeting.city.clone(),
    };
    let registry = &shared.registry;
    let Some(session) = &targeting.session else {
        let agent = registry.pick(&filter).map_err(crate::error::from_pick)?;
        return Ok((agent, None));
    };
    let key = SessionKey {
        customer: grant.user.clone(),
        session: session.id.clone(),
    };
    let now = Instant::now();
    let point = registry.ring_point(&format!("{}\0{}", key.customer, key.session));
    let pin = shared.sessions.get(&key, now);
    let (expires_at, outcome) = match pin {
        None => (now + session.lifetime, SessionOutcome::New),
        Some(pin) => match registry.by_agent_id(&pin.agent_id) {
            Some(agent) if agent.is_accepting() && filter.matches(&agent.location) => {
                if !agent.has_capacity() {
                    return Err(ProxyError::ExitsBusy(format!(
                        "pinned to session `{}`",
                        session.id
                    )));
                }
                return Ok((agent, Some(SessionOutcome::Kept)));
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
                    from: registry.exit_id(&pin.agent_id),
                },
            ),
        },
    };
    let agent = registry
        .pick_sticky(&filter, point)
        .map_err(crate::error::from_pick)?;
    shared
        .sessions
        .put(
            key,
            Pinned {
                agent_id: agent.agent_id.clone(),
                expires_at,
            },
        )
        .map_err(|full| ProxyError::TooManySessions(full.0))?;
    Ok((agent, Some(outcome)))
}
