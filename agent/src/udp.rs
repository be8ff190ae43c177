//! UDP flows at the exit: a relay stream whose first frame asked for UDP
//! ([`exitpool_protocol::udp`]) gets one UDP socket connected to its target,
//! dialled under the same exit policy as TCP, and datagrams move between the
//! socket and the gateway until either side ends, or nothing moves for the
//! idle timeout: as QUIC DATAGRAM frames with the flow id when the gateway
//! asked and the tunnel carries them (each tunnel's [`Flows`] routes arriving
//! frames to their flow), else (and for datagrams too large for a frame) on
//! the flow's stream with a 2-byte length.
//!
//! Bounds: flows per tunnel ([`UdpLimits::max_flows`]), packets per second
//! per flow, one queue of [`FLOW_QUEUE`] datagrams each way per flow. UDP is
//! lossy by contract, so a full queue, a packet over the rate or a frame for
//! no known flow is dropped and counted, never queued. The stream handling in
//! [`crate::tunnel`] dispatches here.

use crate::dial::{resolve, DialError};
use crate::policy::ExitPolicy;
use crate::shared::Shared;
use bytes::{BufMut, Bytes, BytesMut};
use exitpool_protocol::udp::{
    datagram_header, read_datagram, split_flow_datagram, UdpOpen, FLOW_ID_LEN, MAX_DATAGRAM_LEN,
};
use exitpool_protocol::{write_frame, FailureCode, OpenReply};
use exitpool_transport::relay::{Direction, Throttle};
use exitpool_transport::{
    StreamRecv, StreamSend, Tunnel, TunnelConnection, TunnelRecv, TunnelSend,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::debug;

pub use crate::config::{
    UdpLimits, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS, DEFAULT_PACKETS_PER_SECOND,
};

/// Datagrams from the target waiting for the stream towards the gateway, per
/// flow; more are dropped.
pub const FLOW_QUEUE: usize = 64;

/// One tunnel's UDP flows: the cap on how many are open, and where each
/// arriving DATAGRAM frame goes ([`Flows::route_datagrams`]).
#[derive(Debug)]
pub(crate) struct Flows {
    slots: Arc<Semaphore>,
    routes: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
    tunnel: Tunnel,
    /// Frames for no known flow, or for a flow whose queue was full.
    unrouted: AtomicU64,
}

impl Flows {
    /// The flows of `tunnel`, at most `limits.max_flows` at once.
    pub(crate) fn new(limits: &UdpLimits, tunnel: Tunnel) -> Arc<Flows> {
        Arc::new(Flows {
            slots: Arc::new(Semaphore::new(limits.max_flows as usize)),
            routes: Mutex::default(),
            tunnel,
            unrouted: AtomicU64::new(0),
        })
    }

    /// Hands each DATAGRAM frame from the gateway to its flow until the
    /// tunnel ends; a frame no flow takes is dropped and counted.
    pub(crate) async fn route_datagrams(self: Arc<Self>) {
        while let Ok(frame) = self.tunnel.read_datagram().await {
            let routed = split_flow_datagram(&frame).and_then(|(flow, _)| {
                let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
                let route = routes.get(&flow)?;
                route.try_send(frame.slice(FLOW_ID_LEN..)).ok()
            });
            if routed.is_none() {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let unrouted = self.unrouted.load(Ordering::Relaxed);
        debug!(unrouted, "UDP datagram routing ended with the tunnel");
    }

    /// A route for `flow`'s DATAGRAM frames and the queue they arrive on,
    /// when the tunnel carries them and the id is free.
    fn route(self: &Arc<Self>, flow: u32) -> Option<(Route, mpsc::Receiver<Bytes>)> {
        self.tunnel.max_datagram_size()?;
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.contains_key(&flow) {
            return None;
        }
        let (queue, queued) = mpsc::channel(FLOW_QUEUE);
        routes.insert(flow, queue);
        let route = Route {
            flow,
            flows: self.clone(),
        };
        Some((route, queued))
    }
}

/// One flow's place in its tunnel's routing table, and the tunnel to send its
/// DATAGRAM frames on. Leaves the table when dropped.
struct Route {
    flow: u32,
    flows: Arc<Flows>,
}

impl Route {
    /// Sends `payload` as a DATAGRAM frame if it fits one; `false` if not
    /// (the caller puts it on the stream).
    fn send(&self, payload: &[u8]) -> Result<bool, ()> {
        exitpool_transport::flows::send_frame(&self.flows.tunnel, self.flow, payload)
            .map_err(|_| ())
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut routes = self.flows.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.remove(&self.flow);
    }
}

/// Serves one UDP flow: a flow slot, the policy-checked dial, `Opened`, then
/// datagrams both ways. Refusals are answered with the same codes as TCP.
pub(crate) async fn serve_flow(
    shared: &Arc<Shared>,
    policy: &ExitPolicy,
    flows: &Arc<Flows>,
    open: UdpOpen,
    mut send: StreamSend,
    recv: StreamRecv,
) {
    let config = &shared.config;
    let Ok(_flow) = flows.slots.clone().try_acquire_owned() else {
        let refusal = DialError {
            code: FailureCode::AgentUnavailable,
            detail: "the exit is at its UDP flow limit".into(),
        };
        return refuse(&mut send, refusal).await;
    };
    let (socket, peer) = match connect(&open, policy, config.bind, config.connect_timeout).await {
        Ok(connected) => connected,
        Err(error) => {
            // Counted and summarised like TCP refusals (the target is the
            // customer's text, so no line each).
            if !shared.counters.count_refusal(error.code) {
                debug!(host = %open.host, port = open.port, code = ?error.code, "UDP flow refused");
            }
            return refuse(&mut send, error).await;
        }
    };
    // In the routing table before `Opened`: the gateway's first frame may
    // arrive right after it.
    let route = open.datagrams.then(|| flows.route(open.flow)).flatten();
    if write_frame(&mut send, &OpenReply::Opened { peer })
        .await
        .is_err()
    {
        return;
    }
    let limits = config.udp;
    let counts = relay_flow(socket, (send, recv), route, limits, &shared.meter).await;
    debug!(
        flow = open.flow,
        up = counts.up,
        down = counts.down,
        dropped = counts.dropped,
        "UDP flow done"
    );
}

/// Answers `Failed` and finishes the stream.
async fn refuse(send: &mut StreamSend, error: DialError) {
    let reply = OpenReply::Failed {
        code: error.code,
        detail: error.detail,
    };
    if write_frame(send, &reply).await.is_ok() {
        let _ = send.finish();
    }
}

/// Resolves and checks like a TCP dial (the port rule, then EVERY resolved
/// address), and connects a UDP socket to the first checked address of the
/// bind address's family, so the socket hears only its target.
async fn connect(
    open: &UdpOpen,
    policy: &ExitPolicy,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
) -> Result<(UdpSocket, SocketAddr), DialError> {
    let deadline = Instant::now() + connect_timeout;
    policy.check_port(open.port)?;
    let addresses = resolve(&open.host, open.port, deadline).await?;
    for address in &addresses {
        policy.check_ip(address.ip())?;
    }
    let target = addresses
        .into_iter()
        .find(|address| bind.is_none_or(|bind| bind.is_ipv4() == address.is_ipv4()))
        .ok_or_else(|| DialError {
            code: FailureCode::NetworkUnreachable,
            detail: "the target has no address of this exit's IP family".into(),
        })?;
    let local = bind.unwrap_or(match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let unreachable = |_| DialError {
        code: FailureCode::NetworkUnreachable,
        detail: "the exit has no route to the target's network".into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(unreachable)?;
    socket.connect(target).await.map_err(unreachable)?;
    Ok((socket, target))
}

/// Datagrams moved and dropped by one flow.
#[derive(Debug, Default, Clone, Copy)]
struct FlowCounts {
    up: u64,
    down: u64,
    dropped: u64,
}

/// A per-flow packet budget per one-second window.
struct Rate {
    per_second: u32,
    window: std::sync::Mutex<(Instant, u32)>,
}

impl Rate {
    fn new(per_second: u32) -> Rate {
        Rate {
            per_second,
            window: std::sync::Mutex::new((Instant::now(), 0)),
        }
    }

    /// Whether one more packet fits this second's budget.
    fn admit(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        if window.1 >= self.per_second {
            return false;
        }
        window.1 += 1;
        true
    }
}

/// Moves datagrams until the gateway finishes the stream, either side fails,
/// or the flow is idle for `limits.idle_timeout`. With a `route`, datagrams
/// also arrive as DATAGRAM frames, and go back as frames when they fit one.
/// Each direction is one step of [`Flow`]; the first to end ends the flow.
async fn relay_flow(
    socket: UdpSocket,
    (mut send, mut recv): (StreamSend, StreamRecv),
    route: Option<(Route, mpsc::Receiver<Bytes>)>,
    limits: UdpLimits,
    meter: &impl Throttle,
) -> FlowCounts {
    let flow = Flow::new(socket, limits.packets_per_second, meter);
    // The target's datagrams that go on the stream, towards the gateway.
    let (queue, mut queued) = mpsc::channel::<Bytes>(FLOW_QUEUE);
    let (route, mut arriving) = route.unzip();
    let clean = tokio::select! {
        () = flow.up_from_stream(&mut recv) => true,
        () = flow.up_from_frames(arriving.as_mut()) => true,
        () = flow.down_from_target(route.as_ref(), &queue) => false,
        ok = flow.down_on_stream(&mut send, &mut queued) => ok,
        () = flow.idle(limits.idle_timeout) => true,
    };
    if clean {
        let _ = send.finish();
    } else {
        send.reset(exitpool_protocol::RESET_CODE);
    }
    recv.stop(exitpool_protocol::RESET_CODE);
    flow.counts()
}

/// One flow while it relays: its socket, its packet budget, its counters and
/// when a datagram last moved, shared by the steps of [`relay_flow`].
struct Flow<'a, M> {
    socket: UdpSocket,
    rate: Rate,
    meter: &'a M,
    started: Instant,
    /// Milliseconds since `started` at the last datagram either way.
    last: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    dropped: AtomicU64,
}

impl<'a, M: Throttle> Flow<'a, M> {
    fn new(socket: UdpSocket, packets_per_second: u32, meter: &'a M) -> Self {
        Flow {
            socket,
            rate: Rate::new(packets_per_second),
            meter,
            started: Instant::now(),
            last: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Notes that a datagram moved, for the idle timeout.
    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// One datagram from the gateway (stream or frame) towards the target.
    async fn to_target(&self, payload: Bytes) {
        self.touch();
        if !self.rate.admit() {
            return self.drop_one();
        }
        self.meter.pass(Direction::FromTunnel, payload.len()).await;
        // A refused send (ICMP unreachable from an earlier datagram) loses
        // this datagram only: UDP's own contract.
        match self.socket.send(&payload).await {
            Ok(_) => self.up.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The gateway's length-prefixed datagrams on the flow's stream, until
    /// the gateway finishes it or it fails.
    async fn up_from_stream(&self, recv: &mut StreamRecv) {
        let mut buf = Vec::with_capacity(2048);
        loop {
            match read_datagram(recv, &mut buf).await {
                Ok(true) => self.to_target(Bytes::copy_from_slice(&buf)).await,
                Ok(false) => return,
                Err(error) => {
                    debug!(%error, "UDP flow stream failed");
                    return;
                }
            }
        }
    }

    /// The gateway's DATAGRAM frames routed to this flow, if it has a route.
    /// Never ends: when the tunnel's routing ends, the stream ends too.
    async fn up_from_frames(&self, arriving: Option<&mut mpsc::Receiver<Bytes>>) {
        if let Some(arriving) = arriving {
            while let Some(payload) = arriving.recv().await {
                self.to_target(payload).await;
            }
        }
        std::future::pending::<()>().await
    }

    /// The target's datagrams, each as a DATAGRAM frame when the route
    /// carries it, else onto `queue` for the stream; ends if the socket fails.
    async fn down_from_target(&self, route: Option<&Route>, queue: &mpsc::Sender<Bytes>) {
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        loop {
            let len = match self.socket.recv(&mut buf).await {
                Ok(len) => len,
                // The kernel reports an earlier ICMP unreachable here.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(error) => {
                    debug!(%error, "UDP flow socket failed");
                    return;
                }
            };
            self.touch();
            if !self.rate.admit() {
                self.drop_one();
                continue;
            }
            match route.map(|route| route.send(&buf[..len])) {
                Some(Ok(true)) => {
                    self.down.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Err(())) => {
                    self.drop_one();
                    continue;
                }
                // Too large for a frame, or no frames: on the stream.
                Some(Ok(false)) | None => {}
            }
            let mut framed = BytesMut::with_capacity(len + 2);
            // `len` fits: the buffer is MAX_DATAGRAM_LEN long.
            framed.put_slice(&datagram_header(len).unwrap_or_default());
            framed.put_slice(&buf[..len]);
            if queue.try_send(framed.freeze()).is_err() {
                self.drop_one();
            }
        }
    }

    /// Writes the queued datagrams on the stream; `false` if it failed.
    async fn down_on_stream(
        &self,
        send: &mut StreamSend,
        queued: &mut mpsc::Receiver<Bytes>,
    ) -> bool {
        while let Some(datagram) = queued.recv().await {
            let payload = datagram.len().saturating_sub(2);
            self.meter.pass(Direction::ToTunnel, payload).await;
            if send.write_chunk(datagram).await.is_err() {
                return false;
            }
            self.down.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Returns once no datagram has moved either way for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let seen = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let until = self.started + seen + timeout;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }

    fn counts(&self) -> FlowCounts {
        FlowCounts {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exitpool_protocol::TargetHost;

    fn open(host: &str, port: u16) -> UdpOpen {
        UdpOpen {
            host: TargetHost::Domain(host.into()),
            port,
            flow: 1,
            datagrams: false,
        }
    }

    #[tokio::test]
    async fn a_flow_to_a_refused_address_is_refused_by_the_policy() {
        let error = connect(
            &open("127.0.0.1", 5353),
            &ExitPolicy::new(),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(error.code, FailureCode::DestinationIpProhibited);
    }

    #[tokio::test]
    async fn a_flow_to_a_refused_port_is_refused_by_the_policy() {
        let policy = ExitPolicy::new().allow_private(true);
        let error = connect(
            &open("127.0.0.1", 25),
            &policy,
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(error.code, FailureCode::DestinationPortProhibited);
    }

    #[tokio::test]
    async fn an_allowed_flow_is_connected_to_its_target() {
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = target.local_addr().unwrap().port();
        let policy = ExitPolicy::new().allow_private(true);
        let (socket, peer) = connect(
            &open("127.0.0.1", port),
            &policy,
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(peer, target.local_addr().unwrap());
        assert_eq!(socket.peer_addr().unwrap(), peer);
    }

    #[test]
    fn the_rate_admits_its_budget_and_no_more_per_second() {
        let rate = Rate::new(3);
        assert!((0..3).all(|_| rate.admit()));
        assert!(!rate.admit());
    }
}
