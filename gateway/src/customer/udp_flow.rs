//! The UDP flow machinery both UDP front ends share: SOCKS5 UDP ASSOCIATE
//! ([`super::socks_udp`]) and MASQUE CONNECT-UDP over HTTP/3
//! ([`super::masque`]). One way to do each thing:
//!
//! - [`open_flow`]: open a UDP flow to one destination on an exit's tunnel
//!   ([`exitpool_protocol::udp`]), routed for DATAGRAM frames first when the
//!   tunnel carries them (QUIC), and count a refusal as a failed connection;
//! - [`OpenFlow::relay`]: datagrams both ways until the exit ends the flow (its
//!   idle timeout) or the front end stops feeding it: up as DATAGRAM frames
//!   (or on the flow's stream when too large or on TLS/TCP), down to a
//!   delivery function the front end gives (a SOCKS5 UDP header, an HTTP
//!   Datagram);
//! - [`Place`]: the caps per customer and per source network, which count a
//!   SOCKS5 association and a CONNECT-UDP request alike;
//! - [`Drop`]: every dropped datagram counted by cause in
//!   `exitpool_udp_datagrams_dropped_total`.

use crate::error::ProxyError;
use crate::shared::{Accounting, Shared};
use crate::tunnel::ExitStream;
use bytes::{BufMut, Bytes, BytesMut};
use exitpool_protocol::udp::{
    datagram_header, read_datagram, split_flow_datagram, UdpOpen, FLOW_ID_LEN,
};
use exitpool_protocol::TargetHost;
use exitpool_transport::{LiveCounters, Tunnel, TunnelConnection, TunnelRecv, TunnelSend};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tracing::debug;

/// Most UDP associations (SOCKS5) and CONNECT-UDP requests (MASQUE) one
/// customer holds at once on this gateway.
pub const MAX_PER_CUSTOMER: u32 = 64;
/// Most of them from one source network (/24 or /48) at once.
pub const MAX_PER_NETWORK: u32 = 32;
/// Datagrams waiting for one flow; more are dropped.
pub const FLOW_QUEUE: usize = 64;

/// Why a datagram was dropped: the `cause` label of the drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Drop {
    /// SOCKS5: from an address other than the client's.
    ForeignSource,
    /// SOCKS5: a bad UDP header.
    Malformed,
    /// SOCKS5: a new destination past the association's flow cap.
    FlowCap,
    /// To a destination the exit refused.
    Refused,
    /// Its flow's queue (or the tunnel's send buffer) was full.
    QueueFull,
    /// A datagram for no flow (tunnel frame) or no request (HTTP Datagram).
    UnknownFlow,
    /// MASQUE: an HTTP Datagram with a context id other than 0 (RFC 9298 §4).
    UnknownContext,
    /// MASQUE: larger than the customer's QUIC connection can carry.
    TooLarge,
}

impl Drop {
    const ALL: [Drop; 8] = [
        Drop::ForeignSource,
        Drop::Malformed,
        Drop::FlowCap,
        Drop::Refused,
        Drop::QueueFull,
        Drop::UnknownFlow,
        Drop::UnknownContext,
        Drop::TooLarge,
    ];

    /// The `cause` label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Drop::ForeignSource => "foreign_source",
            Drop::Malformed => "malformed",
            Drop::FlowCap => "flow_cap",
            Drop::Refused => "refused",
            Drop::QueueFull => "queue_full",
            Drop::UnknownFlow => "unknown_flow",
            Drop::UnknownContext => "unknown_context",
            Drop::TooLarge => "too_large",
        }
    }

    /// Counts `count` drops in the gateway's metrics.
    pub(super) fn count(self, count: u64, accounting: &Accounting) {
        accounting
            .metrics
            .udp_dropped
            .get_or_create(&crate::metrics::CauseLabel {
                cause: self.as_str().into(),
            })
            .inc_by(count);
    }

    /// Shows every cause in the metric family from the start, at zero.
    pub(super) fn show_all(accounting: &Accounting) {
        for cause in Drop::ALL {
            cause.count(0, accounting);
        }
    }
}

/// Drops counted by cause for one association or request, for its closing
/// log line (and the metric as they happen).
#[derive(Debug, Default)]
pub(super) struct Drops(HashMap<&'static str, u64>);

impl Drops {
    /// Counts `count` drops for `cause` here and in the metrics.
    pub(super) fn add(&mut self, cause: Drop, count: u64, accounting: &Accounting) {
        if count == 0 {
            return;
        }
        *self.0.entry(cause.as_str()).or_insert(0) += count;
        cause.count(count, accounting);
    }

    /// All drops so far.
    pub(super) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Drops by cause.
    pub(super) fn by_cause(&self) -> &HashMap<&'static str, u64> {
        &self.0
    }
}

/// Flow ids, unique on every tunnel because unique in the process.
static NEXT_FLOW: AtomicU32 = AtomicU32::new(1);

/// A tunnel of one gateway in this process: its `Shared` (tests run several
/// gateways in one process) and its key in that gateway's tunnel table.
type TunnelId = (usize, u64);

/// The tunnels whose DATAGRAM frames are routed to flows now; an entry lives
/// as long as a flow on it (see [`FrameRoute`]'s drop).
fn framed_tunnels() -> &'static Mutex<HashMap<TunnelId, Arc<TunnelFrames>>> {
    static TUNNELS: OnceLock<Mutex<HashMap<TunnelId, Arc<TunnelFrames>>>> = OnceLock::new();
    TUNNELS.get_or_init(Mutex::default)
}

/// One tunnel's arriving DATAGRAM frames, routed to its flows by flow id by a
/// reader task that ends when the tunnel's last flow here does.
struct TunnelFrames {
    id: TunnelId,
    tunnel: Tunnel,
    routes: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl TunnelFrames {
    /// A route for `flow` on tunnel `key`, when the tunnel carries frames.
    fn route(
        key: u64,
        flow: u32,
        shared: &Arc<Shared>,
    ) -> Option<(FrameRoute, mpsc::Receiver<Bytes>)> {
        let tunnel = shared.routing.exits.tunnels().get(key)?;
        tunnel.max_datagram_size()?;
        let id = (Arc::as_ptr(shared) as usize, key);
        let mut tunnels = framed_tunnels().lock().unwrap_or_else(|e| e.into_inner());
        let frames = tunnels
            .entry(id)
            .or_insert_with(|| {
                let frames = Arc::new(TunnelFrames {
                    id,
                    tunnel,
                    routes: Mutex::default(),
                    reader: Mutex::default(),
                });
                let reader = tokio::spawn(frames.clone().read(shared.clone()));
                *frames.reader.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(reader.abort_handle());
                frames
            })
            .clone();
        let (queue, queued) = mpsc::channel(FLOW_QUEUE);
        frames
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(flow, queue);
        Some((FrameRoute { flow, frames }, queued))
    }

    /// Routes frames until the tunnel ends (or the task is aborted).
    async fn read(self: Arc<Self>, shared: Arc<Shared>) {
        while let Ok(frame) = self.tunnel.read_datagram().await {
            let routed = split_flow_datagram(&frame).and_then(|(flow, _)| {
                let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
                Some(routes.get(&flow)?.try_send(frame.slice(FLOW_ID_LEN..)))
            });
            match routed {
                Some(Ok(())) => {}
                Some(Err(_)) => Drop::QueueFull.count(1, &shared.accounting),
                None => Drop::UnknownFlow.count(1, &shared.accounting),
            }
        }
        let mut tunnels = framed_tunnels().lock().unwrap_or_else(|e| e.into_inner());
        if tunnels.get(&self.id).is_some_and(|t| Arc::ptr_eq(t, &self)) {
            tunnels.remove(&self.id);
        }
    }
}

/// One flow's place in its tunnel's frame routing; the last one to go stops
/// the tunnel's reader.
struct FrameRoute {
    flow: u32,
    frames: Arc<TunnelFrames>,
}

impl FrameRoute {
    /// Sends `payload` as a DATAGRAM frame if it fits one: `Ok(false)` if not
    /// (it goes on the stream), `Err` if the tunnel refused it.
    fn send(&self, payload: &[u8]) -> Result<bool, ()> {
        exitpool_transport::flows::send_frame(&self.frames.tunnel, self.flow, payload)
            .map_err(|_| ())
    }
}

impl std::ops::Drop for FrameRoute {
    fn drop(&mut self) {
        let mut tunnels = framed_tunnels().lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = self.frames.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.remove(&self.flow);
        if routes.is_empty() {
            if let Some(reader) = self
                .frames
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                reader.abort();
            }
            let id = self.frames.id;
            if tunnels
                .get(&id)
                .is_some_and(|t| Arc::ptr_eq(t, &self.frames))
            {
                tunnels.remove(&id);
            }
        }
    }
}

/// Associations and CONNECT-UDP requests held now, by customer and by source
/// network. A process-wide table, bounded by the two caps: an entry exists
/// only while one of them does.
fn held() -> &'static Mutex<HashMap<String, u32>> {
    static HELD: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    HELD.get_or_init(Mutex::default)
}

/// One association's (or request's) places in [`held`], given back when
/// dropped.
pub(super) struct Place {
    keys: [String; 2],
}

impl Place {
    /// A place for `user` from `source`, unless either cap is reached.
    pub(super) fn take(user: &str, source: IpAddr) -> Option<Place> {
        let network = match source {
            IpAddr::V4(ip) => format!("net:{}", u32::from(ip) >> 8),
            IpAddr::V6(ip) => format!("net:{}", u128::from(ip) >> 80),
        };
        let keys = [format!("user:{user}"), network];
        let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
        let full = held.get(&keys[0]).copied().unwrap_or(0) >= MAX_PER_CUSTOMER
            || held.get(&keys[1]).copied().unwrap_or(0) >= MAX_PER_NETWORK;
        if full {
            return None;
        }
        for key in &keys {
            *held.entry(key.clone()).or_insert(0) += 1;
        }
        Some(Place { keys })
    }
}

impl std::ops::Drop for Place {
    fn drop(&mut self) {
        let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(count) = held.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(key);
                }
            }
        }
    }
}

/// A flow the exit has opened: its stream, and its frame route when the
/// tunnel carries DATAGRAM frames.
pub(super) struct OpenFlow {
    flow: u32,
    stream: ExitStream,
    route: Option<(FrameRoute, mpsc::Receiver<Bytes>)>,
}

/// Opens a UDP flow of `user`'s to `host:port` on the exit's tunnel
/// `tunnel`, waiting for the exit's answer (at most `open_timeout`). A name
/// among the account's blocked domains is refused here, before the exit; a
/// refusal (that, exit policy, DNS, the exit's flow cap) is counted as a
/// failed connection is.
pub(super) async fn open_flow(
    tunnel: u64,
    host: TargetHost,
    port: u16,
    user: &str,
    shared: &Arc<Shared>,
) -> Result<OpenFlow, ProxyError> {
    super::session::target_allowed(user, &host, &shared.accounting)?;
    let flow = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
    // Frames when the exit's tunnel carries them (QUIC), routed before the
    // exit answers, so no early frame finds no flow.
    let route = TunnelFrames::route(tunnel, flow, shared);
    let open = UdpOpen {
        host,
        port,
        flow,
        datagrams: route.is_some(),
    };
    let timeout = shared.settings().open_timeout;
    match shared
        .routing
        .exits
        .tunnels()
        .open_udp(tunnel, open, timeout)
        .await
    {
        Ok(stream) => Ok(OpenFlow {
            flow,
            stream,
            route,
        }),
        Err(error) => {
            debug!(flow, %error, "UDP flow refused");
            shared.accounting.record_error(None, None, &error);
            Err(error)
        }
    }
}

impl OpenFlow {
    /// The address the exit reached.
    pub(super) fn peer(&self) -> SocketAddr {
        self.stream.peer
    }

    /// Relays until `queued` closes (the front end is done with the flow) or
    /// the exit ends the flow. Datagrams from the client come from `queued`;
    /// those from the exit go to `deliver`, which says whether the client
    /// took it (only those count as usage). Payload bytes both ways are
    /// added to `counters`.
    pub(super) async fn relay<F, Fut>(
        self,
        mut queued: mpsc::Receiver<Bytes>,
        deliver: F,
        counters: &LiveCounters,
        accounting: &Accounting,
    ) where
        F: Fn(Bytes) -> Fut,
        Fut: Future<Output = bool>,
    {
        let OpenFlow {
            flow,
            stream,
            route,
        } = self;
        let (mut send, mut recv) = (stream.send, stream.recv);
        let (route, mut arriving) = route.unzip();
        let up = async {
            while let Some(payload) = queued.recv().await {
                let len = payload.len() as u64;
                match route.as_ref().map(|route| route.send(&payload)) {
                    Some(Ok(true)) => {
                        counters.to_tunnel.fetch_add(len, Ordering::Relaxed);
                        accounting.metrics.udp_frames.inc();
                        continue;
                    }
                    Some(Err(())) => {
                        Drop::QueueFull.count(1, accounting);
                        continue;
                    }
                    // Too large for a frame, or no frames: on the stream.
                    Some(Ok(false)) | None => {}
                }
                let Ok(header) = datagram_header(payload.len()) else {
                    Drop::TooLarge.count(1, accounting);
                    continue;
                };
                let mut framed = BytesMut::with_capacity(payload.len() + 2);
                framed.put_slice(&header);
                framed.put_slice(&payload);
                if send.write_chunk(framed.freeze()).await.is_err() {
                    return;
                }
                counters.to_tunnel.fetch_add(len, Ordering::Relaxed);
                accounting.metrics.udp_stream_datagrams.inc();
            }
        };
        let deliver = &deliver;
        let to_client = |payload: Bytes| async move {
            let len = payload.len() as u64;
            if deliver(payload).await {
                counters.from_tunnel.fetch_add(len, Ordering::Relaxed);
            }
        };
        let to_client = &to_client;
        let metrics = &accounting.metrics;
        let down = async {
            let mut buf = Vec::with_capacity(2048);
            while let Ok(true) = read_datagram(&mut recv, &mut buf).await {
                metrics.udp_stream_datagrams.inc();
                to_client(Bytes::copy_from_slice(&buf)).await;
            }
        };
        let down_frames = async {
            match &mut arriving {
                Some(arriving) => {
                    while let Some(payload) = arriving.recv().await {
                        metrics.udp_frames.inc();
                        to_client(payload).await;
                    }
                    // The tunnel's frames ended; its stream ends too.
                    std::future::pending::<()>().await
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = up => {}
            () = down => {}
            () = down_frames => {}
        }
        debug!(flow, "UDP flow ended");
        drop(route);
        let _ = send.finish();
        recv.stop(exitpool_protocol::RESET_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_network_and_given_back() {
        let source: IpAddr = "198.51.100.7".parse().unwrap();
        let places: Vec<Place> = (0..MAX_PER_NETWORK)
            .map(|n| Place::take(&format!("user{n}"), source).unwrap())
            .collect();
        assert!(Place::take("another", "198.51.100.200".parse().unwrap()).is_none());
        assert!(Place::take("another", "198.51.101.1".parse().unwrap()).is_some());
        drop(places);
        assert!(Place::take("another", source).is_some());
    }
}
