//! HTTP `CONNECT`: authenticate (`Proxy-Authorization: Basic`) -> validate the
//! target -> choose an exit and open a relay stream, waiting for the exit's answer
//! ([`session`]) -> only then answer `200` with the exit's id and country (or the
//! mapped error) -> relay bytes until both sides are done ([`transfer`]).
//!
//! Two ways in, one way through: [`serve_head`] answers the common case, a
//! plain-TCP connection whose first head is a complete `CONNECT` already in
//! the socket, straight from that head (a scraper's connection is nothing
//! else, and hyper's server machinery costs it more than the rest of the
//! gateway; see the README's Performance section); everything else (TLS, a
//! head still arriving, other methods) is served by hyper and [`connect`].
//! Both run the same steps below.

use super::response::{self, basic_credentials, exit_headers, Body};
use super::session::{Arrival, Refusal};
use super::transfer::{self, AccessContext, CustomerStream};
use super::{session, target};
use crate::abuse::AddressSlot;
use crate::error::ProxyError;
use crate::shared::Shared;
use bytes::Bytes;
use hyper::{Request, Response};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, Instrument};

/// Bytes of the first head looked at by [`serve_head`]; a longer head (rare
/// for `CONNECT`) is hyper's.
pub(crate) const HEAD_PEEK: usize = 2048;
/// Header lines [`serve_head`] parses; more is hyper's (which allows
/// [`super::http::MAX_HEADERS`]).
const HEAD_HEADERS: usize = 24;

/// Serves `stream` if its first head, already received whole in `peeked`
/// (what the listener peeked, at most [`HEAD_PEEK`] bytes), is a `CONNECT`:
/// answers it and relays the tunnel on this task. Otherwise (or if the head is
/// not all there yet) nothing has been read, and the stream is handed back for
/// hyper to serve.
pub(crate) async fn serve_head(
    mut stream: TcpStream,
    mut peeked: Vec<u8>,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: &Arc<Shared>,
) -> Option<TcpStream> {
    let started = Instant::now();
    let mut headers = [httparse::EMPTY_HEADER; HEAD_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = request.parse(&peeked) else {
        return Some(stream);
    };
    if request.method != Some("CONNECT") {
        return Some(stream);
    }
    // Within HEAD_PEEK, the request line is well under the 8 KiB limit.
    let authority = request.path.unwrap_or_default().to_owned();
    let credentials = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("proxy-authorization"))
        .and_then(|header| response::decode_basic(header.value));
    // The head is ours now: take exactly its bytes, leaving what follows it
    // (a TLS ClientHello, say) for the relay.
    if stream.read_exact(&mut peeked[..head_len]).await.is_err() {
        return None;
    }
    drop(peeked);
    let opened = open_tunnel(credentials, &authority, arrival, pending, shared).await;
    let (authorized, user) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            response::log_refusal(&authority, &error, started);
            let _ = stream.write_all(&response::raw_error(&error)).await;
            return None;
        }
    };
    let head = response::raw_connected(&exit_headers(
        &authorized.agent,
        authorized.session.as_ref(),
        authorized.attempts,
    ));
    if let Err(error) = stream.write_all(&head).await {
        debug!(%error, "customer left before the tunnel's answer");
        return None;
    }
    let context = AccessContext {
        user,
        peer: arrival.peer,
        target: authority,
        started,
        protocol: "connect",
    };
    transfer::relay_tcp(stream, Bytes::new(), authorized, context, shared).await;
    None
}

/// What both ways in share: credentials (or the source's `allow_ips`) ->
/// the target -> an exit with the stream open. Returns it with the user.
pub(crate) async fn open_tunnel(
    credentials: Option<(String, String)>,
    authority: &str,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: &Arc<Shared>,
) -> Result<(session::Authorized, String), Refusal> {
    let (host, port) = target::parse_authority(authority)?;
    let credentials = credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()));
    let grant = session::authenticate_either(credentials, arrival, pending, shared).await?;
    let authorized = session::open(&grant, host, port, shared).await?;
    Ok((authorized, grant.user))
}

/// Answers one `CONNECT`; on success the relay runs in its own task once hyper
/// hands over the connection.
pub(crate) async fn connect<S: CustomerStream>(
    mut request: Request<hyper::body::Incoming>,
    arrival: &Arrival,
    pending: &AddressSlot,
    started: Instant,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, Refusal> {
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .ok_or_else(|| ProxyError::BadTarget("CONNECT needs host:port".into()))?;
    let (authorized, user) = open_tunnel(
        basic_credentials(&request),
        &authority,
        arrival,
        pending,
        shared,
    )
    .await?;
    let peer = arrival.peer;
    let mut answer = Response::new(response::empty());
    answer.headers_mut().extend(exit_headers(
        &authorized.agent,
        authorized.session.as_ref(),
        authorized.attempts,
    ));
    let upgrade = hyper::upgrade::on(&mut request);
    let shared = shared.clone();
    let context = AccessContext {
        user,
        peer,
        target: authority,
        started,
        protocol: "connect",
    };
    shared.lifecycle.tasks.clone().spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    transfer::relay_upgraded::<S>(upgraded, authorized, context, &shared).await
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
