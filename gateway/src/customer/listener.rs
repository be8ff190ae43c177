//! The customer ports: accepts TCP connections, bounds them (globally, and per
//! source address while unauthenticated, across every port), tells SOCKS5 from
//! HTTP by the first byte, and hands each to its protocol handler with its peer
//! address, its unauthenticated-connection slot and, on an entry port, the
//! targeting the port selects. A connection from a trusted balancer first
//! gives its PROXY v2 header ([`super::proxy_protocol`]), whose source address
//! is then the peer for all of that.

use super::proxy_protocol::{self, Proxied};
use super::session::Arrival;
use super::{http, http2, http_connect, response, socks};
use crate::abuse::{AddressSlot, AddressSlots, SlotRefusal};
use crate::credentials::Targeting;
use crate::error::ProxyError;
use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

/// First byte of a SOCKS5 greeting.
const SOCKS5_VERSION: u8 = 0x05;
/// First byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Most refused connections being answered at once. Each answer may wait up to
/// 3 s on a silent client; past this bound a refused connection is closed at
/// once, so a flood of refusals cannot hold descriptors or tasks.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// One customer port: the main one (no targeting of its own) or an entry port,
/// by its number in the entry ports file.
pub(crate) type Entrance = (TcpListener, Option<u16>);

/// The bounds every customer port shares.
struct Bounds {
    connections: Arc<Semaphore>,
    pending: Arc<AddressSlots>,
    refusals: Arc<Semaphore>,
}

/// Accepts customer connections on every port until shutdown.
pub(crate) async fn serve(entrances: Vec<Entrance>, shared: Arc<Shared>) {
    let bounds = Arc::new(Bounds {
        connections: Arc::new(Semaphore::new(shared.config.max_connections)),
        pending: AddressSlots::with_total(
            shared.config.max_unauthenticated_per_ip,
            shared.config.max_unauthenticated,
        ),
        refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
    });
    let accepting = tokio_util::task::TaskTracker::new();
    for (listener, entry) in entrances {
        accepting.spawn(accept(listener, entry, bounds.clone(), shared.clone()));
    }
    accepting.close();
    accepting.wait().await;
}

async fn accept(
    listener: TcpListener,
    entry_port: Option<u16>,
    bounds: Arc<Bounds>,
    shared: Arc<Shared>,
) {
    let Bounds {
        connections,
        pending,
        refusals,
    } = &*bounds;
    let refuse_bounded = |stream: TcpStream, error: ProxyError| {
        // Beyond the bound the stream is dropped here: closed without an answer.
        if let Ok(permit) = refusals.clone().try_acquire_owned() {
            shared.lifecycle.tasks.spawn(async move {
                refuse(stream, error).await;
                drop(permit);
            });
        }
    };
    while let Some((stream, peer)) = shared.lifecycle.accept(&listener, "customer").await {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refuse_bounded(stream, ProxyError::GatewayBusy);
            continue;
        };
        let deadline = Instant::now() + shared.config.head_timeout;
        // Looked up per connection, so a reload applies to the next one.
        let entry = entry_port.and_then(|port| shared.routing.entry_ports.targeting(port));
        if is_trusted(&shared.config.proxy_protocol_from, peer) {
            // The balancer's own address is not capped: the header names the
            // customer, whose address the caps then count.
            let _ = stream.set_nodelay(true);
            let span = info_span!(
                "customer",
                peer = tracing::field::Empty,
                balancer = %peer,
                user = tracing::field::Empty
            );
            let (bounds, shared) = (bounds.clone(), shared.clone());
            shared.lifecycle.tasks.clone().spawn(
                async move {
                    Box::pin(proxied(stream, entry, deadline, &bounds, shared)).await;
                    drop(permit);
                }
                .instrument(span),
            );
            continue;
        }
        let slot = match pending.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                refuse_bounded(stream, unauthenticated_refusal(refusal, &shared));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let span = info_span!("customer", %peer, user = tracing::field::Empty);
        let arrival = Arrival { peer, entry };
        let places = connections.clone();
        // Boxed: a connection's future holds every protocol's state (several
        // KiB), and each wrapper on the way into the task would copy it whole.
        shared.lifecycle.tasks.clone().spawn(
            async move {
                let slot = Arc::new(slot);
                Box::pin(handle(stream, arrival, slot, deadline, places, shared)).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// The answer to a connection with no place among the unauthenticated: its
/// address's share is taken (`429`), or every place is (`503`, as for a full
/// gateway: strangers never fill `--max-connections`).
fn unauthenticated_refusal(refusal: SlotRefusal, shared: &Shared) -> ProxyError {
    match refusal {
        SlotRefusal::Address => {
            ProxyError::TooManyUnauthenticated(shared.config.max_unauthenticated_per_ip)
        }
        SlotRefusal::Total => ProxyError::GatewayBusy,
    }
}

/// Whether `peer` is a balancer trusted to send a PROXY v2 header.
fn is_trusted(trusted: &[ipnet::IpNet], peer: std::net::SocketAddr) -> bool {
    // An IPv4 balancer reaching a dual-stack listener arrives IPv4-mapped.
    let ip = peer.ip().to_canonical();
    trusted.iter().any(|network| network.contains(&ip))
}

/// A trusted balancer's connection: its PROXY v2 header first (within the
/// head's deadline), then the customer it names is served like any other,
/// counted against the customer's own address.
async fn proxied(
    mut stream: TcpStream,
    entry: Option<Arc<Targeting>>,
    deadline: Instant,
    bounds: &Bounds,
    shared: Arc<Shared>,
) {
    let read = tokio::time::timeout_at(deadline, proxy_protocol::read_header(&mut stream)).await;
    let peer = match read {
        Ok(Ok(Proxied::Customer(peer))) => peer,
        Ok(Ok(Proxied::Local)) => {
            debug!("the balancer's own connection (PROXY LOCAL, a health check); closed");
            return;
        }
        Ok(Err(error)) => {
            warn!(%error, "closed a connection from a trusted balancer: no valid PROXY v2 header");
            return;
        }
        Err(_) => {
            warn!("closed a connection from a trusted balancer: no PROXY v2 header within the head timeout");
            return;
        }
    };
    tracing::Span::current().record("peer", tracing::field::display(peer));
    let slot = match bounds.pending.acquire(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            refuse(stream, unauthenticated_refusal(refusal, &shared)).await;
            return;
        }
    };
    let arrival = Arrival { peer, entry };
    let places = bounds.connections.clone();
    handle(stream, arrival, Arc::new(slot), deadline, places, shared).await;
}

/// Serves one customer connection; `deadline` (from accept) bounds the whole
/// first head (or SOCKS5 negotiation). `places` is `--max-connections`, from
/// which each HTTP/2 stream also takes a place of its own.
async fn handle(
    stream: TcpStream,
    arrival: Arrival,
    slot: Arc<AddressSlot>,
    deadline: Instant,
    places: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    // One peek serves both the protocol's first byte and, for the common
    // plain `CONNECT`, its whole head (see `http_connect::serve_head`).
    let mut first = vec![0u8; http_connect::HEAD_PEEK];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
    if let Ok(Ok(n)) = peeked {
        first.truncate(n);
    }
    match peeked {
        Ok(Ok(1..)) if first[0] == SOCKS5_VERSION => {
            drop(first);
            socks::serve(stream, arrival, slot, deadline, shared).await
        }
        Ok(Ok(1..)) if first[0] == TLS_HANDSHAKE && shared.walls.customer_tls.is_some() => {
            drop(first);
            let Some(tls) = &shared.walls.customer_tls else {
                return;
            };
            if !shared.walls.tls_handshakes.allow(arrival.peer.ip()) {
                shared
                    .accounting
                    .metrics
                    .customer_tls_handshakes_refused
                    .inc();
                refuse_handshake(stream).await;
                return;
            }
            // The handshake shares the head's deadline, counted from accept.
            match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => {
                    shared.accounting.metrics.customer_tls_connections.inc();
                    if http2::negotiated(&stream) {
                        http2::serve(stream, arrival, slot, deadline, places, shared).await
                    } else {
                        http::serve(stream, arrival, slot, deadline, shared).await
                    }
                }
                Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake not finished within the head timeout"),
            }
        }
        Ok(Ok(1..)) => {
            if let Some(stream) =
                http_connect::serve_head(stream, first, &arrival, &slot, &shared).await
            {
                http::serve(stream, arrival, slot, deadline, shared).await
            }
        }
        Ok(Ok(_)) => debug!("closed before sending anything"),
        Ok(Err(error)) => debug!(%error, "read failed"),
        Err(_) => debug!("sent nothing within the head timeout"),
    }
}

/// A TLS record holding a fatal `internal_error` alert (RFC 8446 §6): what a
/// client over its handshake budget hears instead of a handshake, so it fails
/// at once rather than on a timeout. docs/errors.md says what it means.
const HANDSHAKE_REFUSED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// Answers a ClientHello over its address's handshake budget with a fatal
/// alert and closes, before any cryptography runs.
async fn refuse_handshake(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    debug!("TLS handshake refused: the address is over its handshake budget");
    // The ClientHello is read first (it is already here: it was peeked), so
    // closing does not turn into a reset that could overtake the alert.
    let mut hello = [0u8; 2048];
    let answer = async {
        let _ = stream.read(&mut hello).await;
        stream.write_all(&HANDSHAKE_REFUSED_ALERT).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Refuses a connection before serving it, in its own protocol: a SOCKS5 client
/// hears "no acceptable method" (RFC 1928 has no "busy"), anyone else the HTTP
/// answer for `error`. Never a silent drop.
async fn refuse(mut stream: TcpStream, error: ProxyError) {
    use tokio::io::AsyncWriteExt;
    debug!(%error, "refused before serving");
    let mut first = [0u8; 1];
    let socks = matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == SOCKS5_VERSION
    );
    let answer = if socks {
        vec![SOCKS5_VERSION, 0xFF]
    } else {
        response::raw_error(&error.into())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&answer)).await;
}
