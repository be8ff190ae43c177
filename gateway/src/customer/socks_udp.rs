//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7) on the customer port: [`super::socks`]
//! hands an authenticated `UDP ASSOCIATE` request here.
//!
//! One association: one exit, chosen once from the credentials' targeting and
//! session ([`session::choose_for_flows`]); one UDP relay socket bound on the
//! address the client reached, in `--socks-udp-ports` (ephemeral by default),
//! told to the client in the reply; it lives as long as its TCP control
//! connection. Each datagram names its own destination: the first datagram to
//! a destination opens a UDP flow to it on the exit's tunnel
//! ([`exitpool_protocol::udp`]), later ones reuse it. Over QUIC a flow's
//! datagrams travel as DATAGRAM frames with its flow id ([`TunnelFrames`]
//! routes those arriving to their flow), over TLS/TCP (and when too large for
//! a frame) on the flow's stream. Datagrams coming back are sent to the client
//! with the SOCKS5 UDP header naming the address the exit reached.
//!
//! Bounds and drops (UDP is lossy by contract, so nothing here queues without
//! a bound; every drop is counted in `exitpool_udp_datagrams_dropped_total`
//! by cause and in the association's closing log line):
//!
//! | datagram | fate (cause) |
//! |---|---|
//! | from any address but the client's (the TCP peer's IP; its port once seen, or as the request named it) | dropped (`foreign_source`) |
//! | malformed header, fragment (`FRAG` ≠ 0), port 0 | dropped (`malformed`) |
//! | to a new destination past [`GatewayConfig::socks_udp_max_flows`] | dropped (`flow_cap`) |
//! | to a destination the exit refused (policy, DNS, its own flow cap) | dropped (`refused`) |
//! | while its flow's queue of [`FLOW_QUEUE`] is full | dropped (`queue_full`) |
//! | a DATAGRAM frame from the exit for no flow open here | dropped (`unknown_flow`) |
//!
//! Associations are bounded per customer ([`MAX_PER_CUSTOMER`], and each holds
//! one of the account's concurrent-connection slots) and per source network
//! ([`MAX_PER_NETWORK`] per /24 or /48), counted with MASQUE's requests.
//! Opening flows, relaying them and counting drops is [`super::udp_flow`]'s,
//! shared with MASQUE CONNECT-UDP. Usage counts datagram payload bytes;
//! quota and the live list work as for a connection (one `Transfer` per
//! association), and one access line is written per association.
//!
//! [`GatewayConfig::socks_udp_max_flows`]: crate::config::GatewayConfig::socks_udp_max_flows
//! [`TunnelFrames`]: super::udp_flow
//! [`FLOW_QUEUE`]: super::udp_flow::FLOW_QUEUE
//! [`MAX_PER_CUSTOMER`]: super::udp_flow::MAX_PER_CUSTOMER
//! [`MAX_PER_NETWORK`]: super::udp_flow::MAX_PER_NETWORK

use super::session::{self, Arrival, Grant};
use super::socks_wire::{domain, reply, send, ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6};
use super::transfer::{AccessContext, Transfer};
use super::udp_flow::{open_flow, Drop, Drops, Place, FLOW_QUEUE};
use crate::directory::{Agent, StreamGuard};
use crate::error::socks_reply;
use crate::limits::Slot;
use crate::shared::Shared;
use bytes::{BufMut, Bytes, BytesMut};
use exitpool_protocol::udp::MAX_DATAGRAM_LEN;
use exitpool_protocol::TargetHost;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info};

/// Serves an authenticated `UDP ASSOCIATE`: `declared` is the client's
/// `DST.ADDR:DST.PORT`, the address it will send from (zeros when unknown).
pub(super) async fn serve(
    mut control: TcpStream,
    grant: Grant,
    arrival: Arrival,
    declared: (TargetHost, u16),
    started: Instant,
    shared: Arc<Shared>,
) {
    let Some(relay) = open_relay(&mut control, &grant, &arrival, &shared).await else {
        return;
    };
    let OpenRelay {
        place,
        chosen,
        socket,
        bound,
    } = relay;
    let context = AccessContext {
        user: grant.user.clone(),
        peer: arrival.peer,
        target: format!("udp:{bound}"),
        started,
        protocol: "socks5-udp",
    };
    let (agent, load, slot) = chosen;
    let mut transfer =
        Transfer::start_flows(agent.clone(), load, slot, context, &shared.accounting);
    let client = Client::new(arrival.peer.ip(), declared);
    let association = Association {
        user: grant.user.clone(),
        socket: Arc::new(socket),
        client,
        tunnel: agent.key,
        counters: transfer.counters().clone(),
        drops: Drops::default(),
        shared: shared.clone(),
    };
    let span = tracing::info_span!("udp", exit = %agent.exit_id, relay = %bound);
    let work = async {
        let mut association = association;
        let result = association.run(&mut control).await;
        (association.drops, result)
    };
    let mut drops = Drops::default();
    let result = transfer
        .supervise(
            async {
                let (counted, result) = tracing::Instrument::instrument(work, span).await;
                drops = counted;
                result
            },
            &shared,
        )
        .await;
    let dropped = drops.total();
    info!(
        user = %grant.user,
        peer = %arrival.peer,
        relay = %bound,
        bytes = transfer.total(),
        dropped,
        dropped_by_cause = ?drops.by_cause(),
        "SOCKS5 UDP association ended"
    );
    transfer.finish(&result, None, &shared.accounting);
    drop(place);
}

/// What [`open_relay`] sets up for an association.
struct OpenRelay {
    /// The customer's and source network's place among associations.
    place: Place,
    /// The exit the association's flows go through.
    chosen: (Arc<Agent>, StreamGuard, Slot),
    /// The relay socket the client sends its datagrams to.
    socket: UdpSocket,
    /// Its address, as answered to the client.
    bound: SocketAddr,
}

/// The association's first steps: a place for it, an exit, a relay socket,
/// and the answer naming that socket. A refusal is answered (and logged)
/// here; `None` means the association ends.
async fn open_relay(
    control: &mut TcpStream,
    grant: &Grant,
    arrival: &Arrival,
    shared: &Shared,
) -> Option<OpenRelay> {
    let head_timeout = shared.config.head_timeout;
    let refuse = |code: u8, why: String| {
        info!(user = %grant.user, peer = %arrival.peer, "SOCKS5 UDP ASSOCIATE refused: {why}");
        reply(code, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    };
    let Some(place) = Place::take(&grant.user, arrival.peer.ip()) else {
        let answer = refuse(
            socks_reply::NOT_ALLOWED,
            "too many UDP associations for this customer or source network".into(),
        );
        let _ = send(control, &answer, head_timeout).await;
        return None;
    };
    let chosen = match session::choose_for_flows(grant, shared).await {
        Ok(chosen) => chosen,
        Err(refusal) => {
            let code = refusal.error.presentation().socks_reply;
            let answer = refuse(code, refusal.error.to_string());
            let _ = send(control, &answer, head_timeout).await;
            return None;
        }
    };
    let local = control.local_addr().ok()?.ip();
    let socket = match bind_relay(local, shared.config.socks_udp_ports.clone()).await {
        Ok(socket) => socket,
        Err(error) => {
            let answer = refuse(
                socks_reply::GENERAL_FAILURE,
                format!("no UDP relay port: {error}"),
            );
            let _ = send(control, &answer, head_timeout).await;
            return None;
        }
    };
    let bound = socket.local_addr().ok()?;
    send(control, &reply(0x00, bound), head_timeout)
        .await
        .ok()?;
    Some(OpenRelay {
        place,
        chosen,
        socket,
        bound,
    })
}

/// A UDP socket on `ip`, on the first free port of `ports` (tried from a random
/// start), or an ephemeral port.
async fn bind_relay(
    ip: IpAddr,
    ports: Option<std::ops::RangeInclusive<u16>>,
) -> std::io::Result<UdpSocket> {
    let Some(ports) = ports else {
        return UdpSocket::bind(SocketAddr::new(ip, 0)).await;
    };
    let (low, high) = (*ports.start(), *ports.end());
    let span = u32::from(high.saturating_sub(low)) + 1;
    let start = rand::random::<u32>() % span;
    for step in 0..span {
        let port = low + ((start + step) % span) as u16;
        if let Ok(socket) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
            return Ok(socket);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("every port of {low}-{high} is taken"),
    ))
}

/// Where the client's datagrams may come from: the control connection's IP,
/// and one port (the request's, or the first datagram's).
struct Client {
    ip: IpAddr,
    port: Option<u16>,
}

impl Client {
    fn new(ip: IpAddr, (host, port): (TargetHost, u16)) -> Client {
        // A declared address other than the control connection's is not
        // trusted (RFC 1928 lets the server restrict to the TCP peer).
        let port = match host {
            TargetHost::Ip(declared) if declared == ip && port != 0 => Some(port),
            _ => None,
        };
        Client { ip, port }
    }

    /// Whether `from` is the client; the first datagram fixes its port.
    fn accept(&mut self, from: SocketAddr) -> bool {
        if canonical(from.ip()) != canonical(self.ip) {
            return false;
        }
        *self.port.get_or_insert(from.port()) == from.port()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        ip => ip,
    }
}

/// A datagram's destination and payload, parsed from the SOCKS5 UDP header.
fn parse_datagram(datagram: &[u8]) -> Result<(TargetHost, u16, &[u8]), String> {
    let [0, 0, frag, atyp, rest @ ..] = datagram else {
        return Err("short or non-zero reserved field".into());
    };
    if *frag != 0 {
        return Err("fragments are not supported".into());
    }
    let (host, rest) = match *atyp {
        ATYP_IPV4 if rest.len() >= 4 => {
            let octets: [u8; 4] = rest[..4].try_into().unwrap_or_default();
            (
                TargetHost::Ip(IpAddr::V4(Ipv4Addr::from(octets))),
                &rest[4..],
            )
        }
        ATYP_IPV6 if rest.len() >= 16 => {
            let octets: [u8; 16] = rest[..16].try_into().unwrap_or_default();
            (
                TargetHost::Ip(IpAddr::V6(Ipv6Addr::from(octets))),
                &rest[16..],
            )
        }
        ATYP_DOMAIN if !rest.is_empty() && rest.len() > usize::from(rest[0]) => {
            let len = usize::from(rest[0]);
            let host = domain(&rest[1..=len]).map_err(|e| e.to_string())?;
            (host, &rest[1 + len..])
        }
        _ => return Err("bad address".into()),
    };
    let [high, low, data @ ..] = rest else {
        return Err("no port".into());
    };
    let port = u16::from_be_bytes([*high, *low]);
    if port == 0 {
        return Err("port 0".into());
    }
    Ok((host, port, data))
}

/// The SOCKS5 UDP header naming `from`, then `payload`.
fn wrap(from: SocketAddr, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 22);
    out.put_slice(&[0, 0, 0]);
    match canonical(from.ip()) {
        IpAddr::V4(ip) => {
            out.put_u8(ATYP_IPV4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(ATYP_IPV6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(from.port());
    out.put_slice(payload);
    out.freeze()
}

/// What a flow's task tells its association.
enum FlowEvent {
    /// The exit refused the flow; `dropped` datagrams were waiting for it.
    Refused { key: String, dropped: u64 },
    /// The flow ended (the exit finished it, idle, or failed).
    Ended { key: String },
}

/// A destination's flow as the association sees it.
enum Flow {
    /// Opening or open: datagrams go into its queue.
    Live(mpsc::Sender<Bytes>),
    /// Refused by the exit: datagrams to it are dropped.
    Refused,
}

/// One association's state.
struct Association {
    /// The account whose flows these are (its blocked domains apply).
    user: String,
    socket: Arc<UdpSocket>,
    client: Client,
    tunnel: u64,
    counters: Arc<exitpool_transport::LiveCounters>,
    drops: Drops,
    shared: Arc<Shared>,
}

impl Association {
    fn drop_one(&mut self, cause: Drop) {
        self.drop_many(cause, 1);
    }

    fn drop_many(&mut self, cause: Drop, count: u64) {
        self.drops.add(cause, count, &self.shared.accounting);
    }

    /// Relays until the control connection closes (the association's end) or
    /// the relay socket fails.
    async fn run(&mut self, control: &mut TcpStream) -> Result<(), String> {
        let max_flows = self.shared.settings().socks_udp_max_flows as usize;
        let mut flows: HashMap<String, Flow> = HashMap::new();
        let mut tasks = JoinSet::new();
        let (events, mut event_rx) = mpsc::channel::<FlowEvent>(max_flows.max(1));
        let mut control_buf = [0u8; 512];
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN + 512];
        // Zero on purpose: the metric family shows every cause from the start.
        Drop::show_all(&self.shared.accounting);
        loop {
            tokio::select! {
                read = control.read(&mut control_buf) => match read {
                    // RFC 1928: the association ends with its TCP connection.
                    Ok(0) | Err(_) => return Ok(()),
                    // Nothing is expected on it; what comes is ignored.
                    Ok(_) => {}
                },
                received = self.socket.recv_from(&mut buf) => {
                    let (len, from) = received.map_err(|e| format!("UDP relay socket: {e}"))?;
                    if !self.client.accept(from) {
                        self.drop_one(Drop::ForeignSource);
                        continue;
                    }
                    let (host, port, payload) = match parse_datagram(&buf[..len]) {
                        Ok(parsed) => parsed,
                        Err(why) => {
                            debug!(%why, "malformed SOCKS5 UDP datagram");
                            self.drop_one(Drop::Malformed);
                            continue;
                        }
                    };
                    let key = format!("{host}:{port}");
                    let payload = Bytes::copy_from_slice(payload);
                    if !flows.contains_key(&key) {
                        if flows.len() >= max_flows {
                            self.drop_one(Drop::FlowCap);
                            continue;
                        }
                        let (queue, queued) = mpsc::channel(FLOW_QUEUE);
                        let flow = FlowTask {
                            user: self.user.clone(),
                            key: key.clone(),
                            host,
                            port,
                            tunnel: self.tunnel,
                            socket: self.socket.clone(),
                            client: SocketAddr::new(self.client.ip, from.port()),
                            counters: self.counters.clone(),
                            events: events.clone(),
                            shared: self.shared.clone(),
                        };
                        tasks.spawn(flow.run(queued));
                        flows.insert(key.clone(), Flow::Live(queue));
                    }
                    match flows.get(&key) {
                        Some(Flow::Live(queue)) => {
                            if queue.try_send(payload).is_err() {
                                self.drop_one(Drop::QueueFull);
                            }
                        }
                        _ => self.drop_one(Drop::Refused),
                    }
                }
                Some(event) = event_rx.recv() => match event {
                    FlowEvent::Refused { key, dropped } => {
                        self.drop_many(Drop::Refused, dropped);
                        flows.insert(key, Flow::Refused);
                    }
                    FlowEvent::Ended { key } => {
                        flows.remove(&key);
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
}

/// One flow: open it on the exit's tunnel, then datagrams both ways.
struct FlowTask {
    user: String,
    key: String,
    host: TargetHost,
    port: u16,
    tunnel: u64,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    counters: Arc<exitpool_transport::LiveCounters>,
    events: mpsc::Sender<FlowEvent>,
    shared: Arc<Shared>,
}

impl FlowTask {
    async fn run(self, mut queued: mpsc::Receiver<Bytes>) {
        let (host, port) = (self.host.clone(), self.port);
        let opened = open_flow(self.tunnel, host, port, &self.user, &self.shared).await;
        let flow = match opened {
            Ok(flow) => flow,
            Err(_) => {
                queued.close();
                let mut dropped = 0;
                while queued.recv().await.is_some() {
                    dropped += 1;
                }
                let event = FlowEvent::Refused {
                    key: self.key,
                    dropped,
                };
                let _ = self.events.send(event).await;
                return;
            }
        };
        // A datagram from the exit, to the client (one that cannot take it
        // loses it).
        let (socket, client, peer) = (&self.socket, self.client, flow.peer());
        let deliver = |payload: Bytes| async move {
            socket.send_to(&wrap(peer, &payload), client).await.is_ok()
        };
        flow.relay(queued, deliver, &self.counters, &self.shared.accounting)
            .await;
        let _ = self.events.send(FlowEvent::Ended { key: self.key }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_headers_parse_for_each_address_type() {
        let v4 = [0, 0, 0, 1, 127, 0, 0, 1, 0, 53, b'h', b'i'];
        let (host, port, data) = parse_datagram(&v4).unwrap();
        assert_eq!(host, TargetHost::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!((port, data), (53, &b"hi"[..]));
        let mut name = vec![0, 0, 0, 3, 11];
        name.extend_from_slice(b"example.com");
        name.extend_from_slice(&[0x01, 0xBB]);
        let (host, port, data) = parse_datagram(&name).unwrap();
        assert_eq!(host, TargetHost::Domain("example.com".into()));
        assert_eq!((port, data), (443, &b""[..]));
        let mut v6 = vec![0, 0, 0, 4];
        v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 7, 9]);
        let (host, port, data) = parse_datagram(&v6).unwrap();
        assert_eq!(host, TargetHost::Ip("::1".parse().unwrap()));
        assert_eq!((port, data), (7, &[9u8][..]));
    }

    #[test]
    fn bad_datagrams_are_refused() {
        for bad in [
            &[0u8, 0, 0][..],
            &[0, 1, 0, 1, 127, 0, 0, 1, 0, 53],
            &[0, 0, 1, 1, 127, 0, 0, 1, 0, 53],
            &[0, 0, 0, 9, 127, 0, 0, 1, 0, 53],
            &[0, 0, 0, 1, 127, 0, 0, 1, 0, 0],
            &[0, 0, 0, 1, 127, 0, 0],
            &[0, 0, 0, 3, 20, b'a'],
        ] {
            assert!(parse_datagram(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_wrap_the_source_address() {
        let wrapped = wrap("192.0.2.1:53".parse().unwrap(), b"ok");
        assert_eq!(&wrapped[..], &[0, 0, 0, 1, 192, 0, 2, 1, 0, 53, b'o', b'k']);
    }

    #[test]
    fn only_the_control_connections_address_is_the_client() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut client = Client::new(ip, (TargetHost::Ip(Ipv4Addr::UNSPECIFIED.into()), 0));
        assert!(!client.accept("127.0.0.2:5000".parse().unwrap()));
        assert!(client.accept("127.0.0.1:5000".parse().unwrap()));
        assert!(!client.accept("127.0.0.1:5001".parse().unwrap()));
        let mut declared = Client::new(ip, (TargetHost::Ip(ip), 6000));
        assert!(!declared.accept("127.0.0.1:5000".parse().unwrap()));
        assert!(declared.accept("127.0.0.1:6000".parse().unwrap()));
    }
}
