//! MASQUE CONNECT-UDP (RFC 9298) over HTTP/3 on `--listen-h3`, a UDP port
//! with the customer ports' certificate (ALPN `h3`): UDP, and so QUIC and
//! HTTP/3, through an exit. The port's QUIC side (settings, endpoint,
//! connections) is [`exitpool_transport::h3_endpoint`]; h3 serves HTTP/3 on
//! it.
//!
//! One request is one UDP flow to one target through one exit:
//!
//! 1. an extended CONNECT (RFC 9220; the gateway's SETTINGS enable it and
//!    HTTP Datagrams) with `:protocol connect-udp` and the path
//!    `/.well-known/masque/udp/{target_host}/{target_port}/`, read once
//!    the request has one of its connection's [`MAX_REQUESTS`] places;
//! 2. `Proxy-Authorization` on the request ([`session::authenticate_either`]:
//!    the credentials' targeting and sessions, as for HTTP CONNECT), a place
//!    under the UDP caps ([`Place`]), an exit ([`session::choose_for_flows`]),
//!    and the flow opened on the exit's tunnel ([`open_flow`]) before the
//!    answer: a refused target is answered as HTTP CONNECT answers it;
//! 3. `200` with the exit's headers and `Capsule-Protocol: ?1`, then HTTP
//!    Datagrams (RFC 9297: the request's quarter stream id, then context id
//!    0 and the UDP payload) both ways, relayed by [`OpenFlow::relay`];
//! 4. the flow ends when the client closes (or resets) the request stream,
//!    or the exit ends it (its idle timeout): then the gateway finishes the
//!    stream.
//!
//! Every refusal is an HTTP status with `Proxy-Status`, built by
//! [`response::refused`] as on the HTTP/1.1 and h2 paths. Usage counts
//! datagram payload bytes; quota, the live list and one access line per
//! request work as for a connection ([`Transfer`]).
//!
//! # Bounds
//!
//! | what | bound |
//! |---|---|
//! | QUIC handshakes per source address | `--max-tls-handshakes-per-ip` per second, shared with the HTTPS proxy port; past it the Initial is refused |
//! | QUIC connections open | `--max-connections` (this port's own count) |
//! | connections that have not authenticated | `--max-unauthenticated-per-ip` and `--max-unauthenticated` |
//! | handshake and first request | the head timeout from accept; a connection with no request for that long is closed |
//! | requests served at once on one connection | [`MAX_REQUESTS`]; a request past them waits (its head unread) until one ends; QUIC lets a client open [`quic_streams_for`]`(MAX_REQUESTS)` streams, an eighth more, so that quinn's batched stream credit never holds a client below `MAX_REQUESTS` |
//! | requests at once per customer and per source network | [`super::udp_flow::MAX_PER_CUSTOMER`], [`super::udp_flow::MAX_PER_NETWORK`] (with SOCKS5 associations); each also holds one of the account's `max_connections` |
//! | request head | [`http::MAX_HEAD_BYTES`] (`SETTINGS_MAX_FIELD_SECTION_SIZE`) |
//! | bytes in flight from the client | [`STREAM_WINDOW`] per stream, [`CONNECTION_WINDOW`] per connection, [`DATAGRAM_BUFFER`] of datagrams |
//!
//! Dropped datagrams are counted in `exitpool_udp_datagrams_dropped_total`:
//! context ids other than 0 (`unknown_context`), datagrams for no open
//! request (`unknown_flow`), a request's full queue (`queue_full`), and
//! datagrams from the exit too large for the customer's QUIC path
//! (`too_large`; RFC 9298 forbids fragmenting them).
//!
//! [`http::MAX_HEAD_BYTES`]: super::http::MAX_HEAD_BYTES
//! [`quic_streams_for`]: exitpool_transport::h3_endpoint::quic_streams_for

use super::response::{self, basic_credentials, exit_headers};
use super::session::{self, Arrival, Refusal};
use super::target;
use super::transfer::{AccessContext, Transfer};
use super::udp_flow::{open_flow, Drop, OpenFlow, Place, FLOW_QUEUE};
use crate::abuse::{AddressSlot, AddressSlots};
use crate::error::ProxyError;
use crate::shared::{Accounting, Shared};
use bytes::{BufMut, Bytes, BytesMut};
use exitpool_protocol::TargetHost;
use exitpool_transport::endpoint::ServerSettings;
use exitpool_transport::h3_endpoint::{
    datagram_prefix, h3_server_settings, take_varint, DatagramRefused, H3Bidi, H3DatagramsIn,
    H3Endpoint, H3Limits, H3Link, H3Quic,
};
use h3_datagram::datagram_handler::{DatagramReader, HandleDatagramsExt};
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, info_span, Instrument};

pub use exitpool_transport::h3_endpoint::ALPN_H3;
/// The URI template's path prefix (RFC 9298 §3, the default template).
pub const PATH_PREFIX: &str = "/.well-known/masque/udp/";
/// CONNECT-UDP requests served at once on one QUIC connection.
pub const MAX_REQUESTS: u32 = 16;
/// Bytes a client may send on one request stream before the gateway read
/// them (capsules, which are read and ignored).
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// Bytes a client may have in flight on all its streams together.
pub const CONNECTION_WINDOW: u32 = 256 * 1024;
/// HTTP Datagrams buffered per connection each way; past it the oldest are
/// dropped, which UDP allows.
pub const DATAGRAM_BUFFER: usize = 256 * 1024;
/// The first UDP payload size the gateway's QUIC packets may use. 1,452
/// (a 1,500-byte Ethernet path less IPv6 and UDP headers) lets an HTTP
/// Datagram carry a 1,200-byte QUIC Initial, so QUIC fits inside MASQUE;
/// quinn falls back to 1,200 on a path that loses such packets.
pub const INITIAL_MTU: u16 = 1452;
/// A connection idle this long (no packet either way) is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The context id of UDP payloads (RFC 9298 §4).
const UDP_CONTEXT: u64 = 0;
/// HTTP/3's "no error" (RFC 9114 §8.1): a connection closed on purpose.
const H3_NO_ERROR: u64 = 0x100;

/// The h3 connection type served here.
type H3Connection = h3::server::Connection<H3Quic, Bytes>;
/// A request before its head is read.
type Resolver = h3::server::RequestResolver<H3Quic, Bytes>;
/// A request stream's type.
type RequestStream = h3::server::RequestStream<H3Bidi, Bytes>;
/// The open requests of one connection, by stream id: where their datagrams go.
type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>;

/// The port's limits on one client connection.
fn limits() -> H3Limits {
    H3Limits {
        requests: MAX_REQUESTS,
        // The client's control and QPACK streams, and a grease stream.
        uni_streams: 8,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        datagram_buffer: DATAGRAM_BUFFER,
        initial_mtu: INITIAL_MTU,
        idle_timeout: IDLE_TIMEOUT,
    }
}

/// Binds `--listen-h3` and serves it until shutdown; `None` when it is not
/// configured. Needs the customer ports' TLS.
pub(crate) fn start(shared: &Arc<Shared>) -> std::io::Result<Option<SocketAddr>> {
    let Some(addr) = shared.config.listen_h3 else {
        return Ok(None);
    };
    if shared.walls.customer_tls.is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--listen-h3 needs --tls-cert and --tls-key",
        ));
    }
    // The endpoint starts with the certificate in force now; each
    // connection is accepted with the one in force then.
    let mut configs = ServerConfigs { current: None };
    let first = configs.get(shared).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the customer certificate cannot serve QUIC (TLS 1.3)",
        )
    })?;
    let endpoint = H3Endpoint::serve(addr, first)?;
    let bound = endpoint.local_addr()?;
    shared
        .lifecycle
        .tasks
        .spawn(serve(endpoint, configs, shared.clone()));
    info!(%bound, "MASQUE CONNECT-UDP over HTTP/3");
    Ok(Some(bound))
}

/// The listener's QUIC server settings for the customer certificate in force,
/// rebuilt only when a reload changed it.
struct ServerConfigs {
    current: Option<(Arc<rustls::ServerConfig>, ServerSettings)>,
}

impl ServerConfigs {
    fn get(&mut self, shared: &Shared) -> Option<ServerSettings> {
        let tls = shared
            .walls
            .customer_tls
            .as_ref()?
            .acceptor()
            .config()
            .clone();
        if let Some((seen, config)) = &self.current {
            if Arc::ptr_eq(seen, &tls) {
                return Some(config.clone());
            }
        }
        let config = match h3_server_settings(&tls, &limits()) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%error, "the customer certificate cannot serve QUIC");
                return None;
            }
        };
        self.current = Some((tls, config.clone()));
        Some(config)
    }
}

/// Accepts QUIC connections until shutdown.
async fn serve(endpoint: H3Endpoint, mut configs: ServerConfigs, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.config.max_connections));
    let pending = AddressSlots::with_total(
        shared.config.max_unauthenticated_per_ip,
        shared.config.max_unauthenticated,
    );
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            () = shared.lifecycle.shutdown.cancelled() => break,
        };
        let peer = incoming.remote_address();
        // Cheap checks first: no cryptography for a source over its budget.
        if !shared.walls.tls_handshakes.allow(peer.ip()) {
            shared
                .accounting
                .metrics
                .customer_tls_handshakes_refused
                .inc();
            incoming.refuse();
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP/3 connection refused: at --max-connections");
            incoming.refuse();
            continue;
        };
        let Ok(slot) = pending.acquire(peer.ip()) else {
            debug!(%peer, "HTTP/3 connection refused: too many unauthenticated");
            incoming.refuse();
            continue;
        };
        let Some(config) = configs.get(&shared) else {
            incoming.refuse();
            continue;
        };
        let connecting = match incoming.accept_with(config) {
            Ok(connecting) => connecting,
            Err(error) => {
                debug!(%peer, %error, "HTTP/3 handshake failed");
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + shared.config.head_timeout;
        let span = info_span!("h3", %peer);
        let task_shared = shared.clone();
        shared.lifecycle.tasks.spawn(
            async move {
                let link = match tokio::time::timeout_at(deadline, connecting.done()).await {
                    Ok(Ok(link)) => link,
                    Ok(Err(error)) => return debug!(%error, "HTTP/3 handshake failed"),
                    Err(_) => return debug!("HTTP/3 handshake past the head timeout"),
                };
                task_shared.accounting.metrics.customer_h3_connections.inc();
                let arrival = Arrival { peer, entry: None };
                serve_connection(link, arrival, Arc::new(slot), deadline, task_shared).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    endpoint.close(0, b"gateway shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// What every request of one connection shares.
struct OnConnection {
    link: H3Link,
    routes: Routes,
    arrival: Arrival,
    pending: Arc<AddressSlot>,
    /// [`MAX_REQUESTS`] places; closed when the connection ends, which ends
    /// the requests still waiting for one.
    places: Arc<Semaphore>,
    shared: Arc<Shared>,
}

/// Serves one HTTP/3 connection: its requests, each in a task, and its
/// datagrams, routed to them; closed when idle, at shutdown (after the
/// grace period), or when the client leaves.
async fn serve_connection(
    link: H3Link,
    arrival: Arrival,
    pending: Arc<AddressSlot>,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) {
    let mut builder = h3::server::builder();
    let built = builder
        .enable_extended_connect(true)
        .enable_datagram(true)
        .send_grease(false)
        .max_field_section_size(super::http::MAX_HEAD_BYTES as u64)
        .build(link.h3());
    let mut h3: H3Connection = match tokio::time::timeout_at(deadline, built).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(error)) => return debug!(%error, "HTTP/3 setup failed"),
        Err(_) => return debug!("no HTTP/3 SETTINGS within the head timeout"),
    };
    let on = Arc::new(OnConnection {
        link,
        routes: Arc::default(),
        arrival,
        pending,
        places: Arc::new(Semaphore::new(MAX_REQUESTS as usize)),
        shared: shared.clone(),
    });
    let reader = h3.get_datagram_reader();
    let datagrams = route_datagrams(reader, on.routes.clone(), shared.clone());
    tokio::pin!(datagrams);
    let live = tokio_util::task::TaskTracker::new();
    let idle_after = shared.config.head_timeout;
    // The first request is due by the head's deadline.
    let mut idle_check = deadline;
    let mut quiet_since = tokio::time::Instant::now();
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let cut_off = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    shared.accounting.metrics.customer_masque_requests.inc();
                    let task = serve_request(resolver, on.clone());
                    // A span per request: each authenticates on its own.
                    let span = info_span!("request", user = tracing::field::Empty);
                    shared.lifecycle.tasks.spawn(live.track_future(task.instrument(span)));
                }
                Ok(None) => break debug!("HTTP/3 connection closed"),
                Err(error) => break debug!(%error, "HTTP/3 connection ended"),
            },
            () = &mut datagrams => break debug!("HTTP/3 connection's datagrams ended"),
            () = tokio::time::sleep_until(idle_check), if closing.is_none() => {
                let now = tokio::time::Instant::now();
                if !live.is_empty() {
                    quiet_since = now;
                    idle_check = now + idle_after / 4;
                } else if quiet_since + idle_after <= now {
                    debug!("HTTP/3 connection without requests; closing");
                    break on.link.close(H3_NO_ERROR, b"idle");
                } else {
                    idle_check = quiet_since + idle_after;
                }
            }
            () = shared.lifecycle.shutdown.cancelled(), if closing.is_none() => {
                let _ = h3.shutdown(0).await;
                closing = Some(tokio::time::Instant::now() + shared.config.shutdown_grace);
            }
            () = cut_off => {
                break on.link.close(H3_NO_ERROR, b"gateway shutting down");
            }
        }
    }
    // Requests still waiting for a place end now; the others end with the
    // connection: wait for their access lines.
    on.places.close();
    live.close();
    let _ = tokio::time::timeout(shared.config.shutdown_grace, live.wait()).await;
}

/// Routes the connection's HTTP Datagrams to their requests' flows until the
/// connection ends; drops (and counts) what no flow takes.
async fn route_datagrams(
    mut reader: DatagramReader<H3DatagramsIn>,
    routes: Routes,
    shared: Arc<Shared>,
) {
    while let Ok(datagram) = reader.read_datagram().await {
        let stream = datagram.stream_id().into_inner();
        let mut payload = datagram.payload().clone();
        let Some(context) = take_varint(&mut payload) else {
            Drop::Malformed.count(1, &shared.accounting);
            continue;
        };
        if context != UDP_CONTEXT {
            Drop::UnknownContext.count(1, &shared.accounting);
            continue;
        }
        let routed = routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&stream)
            .map(|queue| queue.try_send(payload));
        match routed {
            Some(Ok(())) => {}
            Some(Err(_)) => Drop::QueueFull.count(1, &shared.accounting),
            None => Drop::UnknownFlow.count(1, &shared.accounting),
        }
    }
}

/// One CONNECT-UDP request: a place among its connection's, its head,
/// then the refusal or the flow.
async fn serve_request(resolver: Resolver, on: Arc<OnConnection>) {
    // Waits while the connection has MAX_REQUESTS requests open.
    let Ok(turn) = on.places.clone().acquire_owned().await else {
        return debug!("HTTP/3 connection ended before the request's turn");
    };
    let started = Instant::now();
    let head_timeout = on.shared.config.head_timeout;
    let Some((request, mut stream)) = read_head(resolver, head_timeout).await else {
        return;
    };
    let path = request.uri().path().to_owned();
    match open(&request, &on.arrival, &on.pending, &on.shared).await {
        Ok(accepted) => {
            if answer_accepted(&mut stream, &accepted.flow.agent, head_timeout).await {
                carry(stream, accepted, started, &on).await;
            }
        }
        Err(refusal) => {
            response::log_refusal(&path, &refusal, started);
            answer_refusal(&mut stream, &refusal, head_timeout).await;
        }
    }
    drop(turn);
}

/// The request's head and its stream, or `None` (logged) if the head does
/// not come whole within `limit`.
async fn read_head(
    resolver: Resolver,
    limit: Duration,
) -> Option<(http::Request<()>, RequestStream)> {
    match tokio::time::timeout(limit, resolver.resolve_request()).await {
        Ok(Ok(resolved)) => Some(resolved),
        Ok(Err(error)) => {
            debug!(%error, "HTTP/3 request unreadable");
            None
        }
        Err(_) => {
            debug!("HTTP/3 request head past the head timeout");
            None
        }
    }
}

/// Sends `200` with the exit's headers and `Capsule-Protocol: ?1`; whether
/// it went.
async fn answer_accepted(
    stream: &mut RequestStream,
    agent: &crate::directory::Agent,
    limit: Duration,
) -> bool {
    let mut head = http::Response::new(());
    head.headers_mut().extend(exit_headers(agent, None, 1));
    head.headers_mut()
        .insert("capsule-protocol", HeaderValue::from_static("?1"));
    let sent = matches!(
        tokio::time::timeout(limit, stream.send_response(head)).await,
        Ok(Ok(()))
    );
    if !sent {
        debug!("client gone before the CONNECT-UDP answer");
    }
    sent
}

/// Relays the accepted request's flow until the client closes the stream or
/// the exit ends the flow; then ends the stream, logs the request's line
/// and accounts for it.
async fn carry(mut stream: RequestStream, accepted: Accepted, started: Instant, on: &OnConnection) {
    let Accepted {
        flow,
        user,
        target,
        place,
    } = accepted;
    let RequestFlow {
        flow,
        agent,
        load,
        slot,
    } = flow;
    let shared = &on.shared;
    let id = stream.id().into_inner();
    let (queue, queued) = mpsc::channel(FLOW_QUEUE);
    on.routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, queue);
    let context = AccessContext {
        user: user.clone(),
        peer: on.arrival.peer,
        target: target.clone(),
        started,
        protocol: "masque",
    };
    let mut transfer =
        Transfer::start_flows(agent.clone(), load, slot, context, &shared.accounting);
    let counters = transfer.counters().clone();
    let deliver = deliverer(
        &on.link,
        datagram_prefix(id, UDP_CONTEXT),
        &shared.accounting,
    );
    let work = async {
        tokio::select! {
            () = flow.relay(queued, deliver, &counters, &shared.accounting) => {}
            () = until_closed(&mut stream, &on.routes, id) => {}
        }
        Ok::<(), String>(())
    };
    let span = info_span!("masque", exit = %agent.exit_id, %target);
    let result = transfer.supervise(work.instrument(span), shared).await;
    on.routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    match &result {
        Ok(()) => {
            let _ = tokio::time::timeout(shared.config.head_timeout, stream.finish()).await;
        }
        Err(_) => stream.stop_stream(h3::error::Code::H3_CONNECT_ERROR),
    }
    info!(
        %user,
        peer = %on.arrival.peer,
        %target,
        bytes = transfer.total(),
        "MASQUE CONNECT-UDP request ended"
    );
    transfer.finish(&result, None, &shared.accounting);
    drop(place);
}

/// Sends each UDP payload from the exit to the client as an HTTP Datagram
/// behind `prefix`; whether it went. One too large for the client's path
/// is dropped and counted.
fn deliverer<'a>(
    link: &'a H3Link,
    prefix: Bytes,
    accounting: &'a Accounting,
) -> impl Fn(Bytes) -> std::future::Ready<bool> + 'a {
    move |payload: Bytes| {
        let mut datagram = BytesMut::with_capacity(prefix.len() + payload.len());
        datagram.put_slice(&prefix);
        datagram.put_slice(&payload);
        let sent = match link.send_datagram(datagram.freeze()) {
            Ok(()) => true,
            Err(DatagramRefused::TooLarge) => {
                Drop::TooLarge.count(1, accounting);
                false
            }
            Err(DatagramRefused::Closed) => false,
        };
        std::future::ready(sent)
    }
}

/// Resolves never; reads (and ignores, RFC 9297 §3.2) the capsules on the
/// request stream until the client ends it, then takes the request's route
/// away, so its relay ends once its queue is empty.
async fn until_closed(stream: &mut RequestStream, routes: &Routes, id: u64) {
    while let Ok(Some(_)) = stream.recv_data().await {}
    routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    std::future::pending::<()>().await
}

/// What an accepted request holds while its flow lasts.
struct Accepted {
    flow: RequestFlow,
    /// The customer, as authenticated.
    user: String,
    /// The target as `host:port`.
    target: String,
    place: Place,
}

/// The flow on the exit and what it holds there.
struct RequestFlow {
    flow: OpenFlow,
    agent: Arc<crate::directory::Agent>,
    load: crate::directory::StreamGuard,
    slot: crate::limits::Slot,
}

/// The request checked, its customer authenticated, an exit chosen and the
/// flow opened on it.
async fn open(
    request: &http::Request<()>,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: &Arc<Shared>,
) -> Result<Accepted, Refusal> {
    let (host, port) = connect_udp_target(request)?;
    let target = match &host {
        TargetHost::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
        TargetHost::Domain(name) => format!("{name}:{port}"),
    };
    let credentials = basic_credentials(request);
    let credentials = credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()));
    let grant = session::authenticate_either(credentials, arrival, pending, shared).await?;
    let Some(place) = Place::take(&grant.user, arrival.peer.ip()) else {
        let error = ProxyError::TooManyConnections(super::udp_flow::MAX_PER_CUSTOMER);
        shared
            .accounting
            .record_error(Some(&grant.user), None, &error);
        return Err(error.into());
    };
    let (agent, load, slot) = session::choose_for_flows(&grant, shared).await?;
    let flow = open_flow(agent.key, host, port, &grant.user, shared)
        .await
        .map_err(|error| Refusal::from(error).tried(1))?;
    let flow = RequestFlow {
        flow,
        agent,
        load,
        slot,
    };
    Ok(Accepted {
        flow,
        user: grant.user,
        target,
        place,
    })
}

/// The target of a CONNECT-UDP request (RFC 9298 §3), or why it is not one.
fn connect_udp_target(request: &http::Request<()>) -> Result<(TargetHost, u16), ProxyError> {
    let protocol = request.extensions().get::<h3::ext::Protocol>();
    if request.method() != http::Method::CONNECT
        || protocol != Some(&h3::ext::Protocol::CONNECT_UDP)
    {
        return Err(ProxyError::BadRequest(
            "this port serves only MASQUE CONNECT-UDP (extended CONNECT, :protocol connect-udp)"
                .into(),
        ));
    }
    parse_path(request.uri().path())
}

/// `/.well-known/masque/udp/{target_host}/{target_port}/`, percent-decoded.
fn parse_path(path: &str) -> Result<(TargetHost, u16), ProxyError> {
    let bad = |why: &str| {
        let shown: String = path.chars().take(120).collect();
        ProxyError::BadTarget(format!(
            "{why}: expected {PATH_PREFIX}{{target_host}}/{{target_port}}/ (got {shown:?})"
        ))
    };
    let rest = path
        .strip_prefix(PATH_PREFIX)
        .ok_or_else(|| bad("not the CONNECT-UDP path"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.split_once('/').ok_or_else(|| bad("no target port"))?;
    let host = percent_decode(host).ok_or_else(|| bad("bad percent-encoding"))?;
    let host = target::parse_host(&host).map_err(|why| bad(&why.to_string()))?;
    let port = target::parse_port(port).ok_or_else(|| bad("bad target port"))?;
    Ok((host, port))
}

/// Decodes `%XX` escapes (an IPv6 literal's colons are sent as `%3A`).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sends the refusal's status and headers (less HTTP/1.1's connection-level
/// ones, which HTTP/3 forbids) and its JSON body, and ends the stream.
async fn answer_refusal(stream: &mut RequestStream, refusal: &Refusal, limit: Duration) {
    let (mut parts, body) = response::refused(refusal).into_parts();
    parts.headers.remove(hyper::header::CONNECTION);
    parts.version = http::Version::HTTP_3;
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let sent = async {
        stream
            .send_response(http::Response::from_parts(parts, ()))
            .await?;
        stream.send_data(body).await?;
        stream.finish().await
    };
    if let Ok(Err(error)) = tokio::time::timeout(limit, sent).await {
        debug!(%error, "refusal not sent: the stream is gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_host_and_port() {
        let (host, port) = parse_path("/.well-known/masque/udp/192.0.2.6/443/").unwrap();
        assert_eq!(
            (host, port),
            (TargetHost::Ip("192.0.2.6".parse().unwrap()), 443)
        );
        let (host, port) = parse_path("/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/").unwrap();
        assert_eq!(
            (host, port),
            (TargetHost::Ip("2001:db8::42".parse().unwrap()), 53)
        );
        let (host, _) = parse_path("/.well-known/masque/udp/example.com/53/").unwrap();
        assert_eq!(host, TargetHost::Domain("example.com".into()));
    }

    #[test]
    fn bad_paths_are_bad_targets() {
        for bad in [
            "/",
            "/.well-known/masque/udp/",
            "/.well-known/masque/udp/example.com/",
            "/.well-known/masque/udp/example.com/0/",
            "/.well-known/masque/udp/example.com/70000/",
            "/.well-known/masque/udp/exa%2/53/",
            "/.well-known/masque/ip/example.com/53/",
        ] {
            assert!(
                matches!(parse_path(bad), Err(ProxyError::BadTarget(_))),
                "{bad}"
            );
        }
    }
}
