//! HTTP `CONNECT`: authenticate (`Proxy-Authorization: Basic`) -> validate the
//! target -> choose an exit and open a relay stream, waiting for the exit's answer
//! ([`session`]) -> only then answer `200` with the exit's id and country (or the
//! mapped error) -> relay bytes until both sides are done ([`transfer`]).

use super::response::{self, basic_credentials, exit_headers, Body};
use super::transfer::{self, AccessContext};
use super::{session, target};
use crate::abuse::AddressSlot;
use crate::error::ProxyError;
use crate::shared::Shared;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, Instrument};

/// Answers one `CONNECT`; on success the relay runs in its own task once hyper
/// hands over the connection.
pub(crate) async fn connect(
    mut request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    pending: &AddressSlot,
    started: Instant,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, ProxyError> {
    let (user, password) = basic_credentials(&request).ok_or(ProxyError::AuthRequired)?;
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .ok_or_else(|| ProxyError::BadTarget("CONNECT needs host:port".into()))?;
    let (host, port) = target::parse_authority(&authority)?;
    let grant = session::authenticate(&user, &password, pending, shared).await?;
    let authorized = session::open(&grant, host, port, shared).await?;
    let mut answer = Response::new(response::empty());
    answer
        .headers_mut()
        .extend(exit_headers(&authorized.agent, authorized.session.as_ref()));
    let upgrade = hyper::upgrade::on(&mut request);
    let shared = shared.clone();
    let context = AccessContext {
        user: grant.user,
        peer,
        target: authority,
        started,
    };
    shared.tasks.clone().spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    transfer::relay_upgraded(upgraded, authorized, context, &shared).await
                }
                Err(error) => debug!(%error, "CONNECT upgrade failed"),
            }
        }
        // In the customer's span (peer, user): the access line names the exit
        // and target itself, so a span of its own per relay would be pure cost.
        .in_current_span(),
    );
    Ok(answer)
}
