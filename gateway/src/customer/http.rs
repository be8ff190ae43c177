//! HTTP proxy protocol on the customer port, served by hyper: each request head is
//! checked against the limits below, then `CONNECT` goes to [`super::http_connect`]
//! and anything else (absolute-form `GET http://host/path`, any method) to
//! [`super::forward`]. Plain HTTP routes every request on its own.
//!
//! # Limits on the customer port
//!
//! What a client gets for a request head the gateway will not serve:
//!
//! | the client sends | it gets |
//! |---|---|
//! | a request line (method, URI, version) over 8 KiB ([`MAX_REQUEST_LINE`]) in a head that fits the head limit | `414`, JSON body `uri_too_long`, `Connection: close` |
//! | 16 KiB ([`MAX_HEAD_BYTES`]) of head without the blank line that ends it (also a request line of 16 KiB or more) | `431` from hyper (empty body), connection closed |
//! | more than 100 header lines ([`MAX_HEADERS`]) | `431` from hyper (empty body), connection closed |
//! | a malformed head: bad method token, header or version, or bytes that are not HTTP | `400` from hyper (empty body), connection closed |
//! | no complete head within `head_timeout` (10 s) of the gateway starting to wait for one; on a kept-alive connection that is also the idle limit between requests | no response; the connection is closed |
//! | any refused request (`407`, `400`, `403`, `429`, `502`, `504`, ...) | the error with `Proxy-Status`, `X-Exitpool-Error`, a JSON body and `Connection: close`; nothing more is read |
//!
//! hyper answers the `431`/`400` cases itself, before our code sees a request, so
//! those answers carry no product headers. hyper only refuses URIs of 64 KiB and
//! more with `414`, which the 16 KiB head limit never lets through, so the 8 KiB
//! request-line check is ours (in `handle`, before credentials are looked at).
//!
//! The first head's deadline counts from accept (the first-byte sniff in
//! `listener.rs` shares it), so a silent client is closed after `head_timeout`.

use super::response::{self, Body};
use super::session::{Arrival, Refusal};
use super::transfer::CustomerStream;
use super::{forward, http_connect, inventory};
use crate::abuse::AddressSlot;
use crate::shared::Shared;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info};

/// Largest request head (request line and headers) hyper buffers: enough for any
/// real client's cookies, small enough that idle connections cost little memory.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in a request head; hyper's default, set explicitly so the
/// limit is ours.
pub const MAX_HEADERS: usize = 100;
/// Longest request line served; longer ones get `414`. Matches common servers'
/// 8 KiB so a URL that works through the gateway works at most targets.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Serves HTTP proxy requests on one customer connection.
pub(crate) async fn serve<S: CustomerStream>(
    stream: S,
    arrival: Arrival,
    pending: Arc<AddressSlot>,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) {
    // An answer cut short (the quota spent, the exit lost mid-body) must end
    // in a reset, never a clean end the customer could take for the whole
    // body. The socket itself is inside hyper by then; a duplicate of its
    // descriptor sets the option on the same socket, and is dropped after
    // hyper's, so the last close is the one that resets.
    let reset_on_cut = std::os::fd::AsFd::as_fd(stream.tcp())
        .try_clone_to_owned()
        .ok();
    let service_shared = shared.clone();
    // hyper's header timer starts when it starts reading; the first head must
    // also arrive by `deadline`, counted from accept, so time spent before the
    // first byte is not granted twice.
    let first_head_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = first_head_seen.clone();
    let service = hyper::service::service_fn(move |request| {
        seen.store(true, std::sync::atomic::Ordering::Relaxed);
        let shared = service_shared.clone();
        let pending = pending.clone();
        let arrival = arrival.clone();
        async move { Ok::<_, Infallible>(handle::<S>(request, &arrival, &pending, shared).await) }
    });
    let first_head_deadline = async {
        tokio::time::sleep_until(deadline).await;
        if first_head_seen.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.head_timeout)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "customer connection ended with an error");
                // A body that failed while being sent (not a malformed head,
                // whose answer must still be read).
                if error.is_user() {
                    if let Some(socket) = &reset_on_cut {
                        let _ = socket2::SockRef::from(socket)
                            .set_linger(Some(std::time::Duration::ZERO));
                    }
                }
            }
        }
        () = first_head_deadline => debug!("no request head by the deadline; closing"),
        () = shared.lifecycle.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(shared.config.shutdown_grace, connection).await;
        }
    }
}

/// Answers one request: the request-line limit first (before credentials, so an
/// oversized line costs nothing), then `CONNECT` or plain forwarding.
async fn handle<S: CustomerStream>(
    request: Request<hyper::body::Incoming>,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: Arc<Shared>,
) -> Response<Body> {
    let started = Instant::now();
    let target = request.uri().to_string();
    // `METHOD SP URI SP HTTP/1.1`, rebuilt from what hyper parsed.
    let request_line = request.method().as_str().len() + 1 + target.len() + 9;
    if request_line > MAX_REQUEST_LINE {
        info!(request_line, "refused: request line too long");
        return response::uri_too_long(request_line, MAX_REQUEST_LINE);
    }
    let origin_form = request.uri().authority().is_none();
    let result = if origin_form
        && request.method() == Method::GET
        && inventory::PATHS.contains(&request.uri().path())
    {
        inventory::inventory(&request, arrival, pending, &shared)
            .await
            .map_err(Refusal::from)
    } else if request.method() == Method::CONNECT {
        http_connect::connect::<S>(request, arrival, pending, started, &shared).await
    } else {
        forward::forward(request, arrival, pending, started, &shared).await
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            response::log_refusal(&target, &error, started);
            response::refused(&error)
        }
    }
}
