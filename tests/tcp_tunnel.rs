//! Issue 18: the TLS-over-TCP tunnel beside QUIC, end to end. An agent whose
//! UDP cannot reach the gateway races QUIC against TLS/TCP and joins over TCP;
//! an agent that started on TCP moves to QUIC without cutting a live transfer;
//! the TCP port refuses what is not a tunnel. (The byte-path and fault tests
//! in `tunnel.rs` and `faults.rs` run over both transports.)

mod common;

use common::targets::{echo_target, http_target};
use common::*;
use exitpool::agent::Agent;
use exitpool::gateway::TunnelTcp;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway whose TCP tunnel port is on 127.0.0.9, where its UDP socket
/// (on 127.0.0.1) is not: an agent pointed at 127.0.0.9 has its QUIC
/// packets go nowhere, as on a network that blocks UDP, and only TCP answers.
async fn gateway_with_udp_unreachable() -> (TestGateway, SocketAddr) {
    let net = TestGateway::start_with(|config| {
        config.tunnel_tcp = TunnelTcp::At("127.0.0.9:0".parse().unwrap());
    })
    .await;
    let tcp = net.gateway.tunnel_tcp_addr().expect("TCP tunnel port");
    (net, tcp)
}

/// The agent's transport as the gateway's `/stats` shows it, for its one agent.
async fn transport_in_stats(net: &TestGateway) -> String {
    let stats = net.stats().await;
    stats["per_agent"][0]["transport"]
        .as_str()
        .unwrap_or_else(|| panic!("no transport in {stats}"))
        .to_owned()
}

#[tokio::test]
async fn an_agent_whose_udp_is_blocked_joins_over_tcp_and_serves_every_protocol() {
    let (net, tcp) = gateway_with_udp_unreachable().await;
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::builder(tcp.to_string(), net.gateway.pin().parse().unwrap(), TOKEN)
        .bind("127.0.0.2".parse().unwrap())
        .allow_private(true)
        .state_dir(state.path())
        .transport(TransportChoice::Auto)
        .spawn()
        .unwrap();
    let session = within("agent joins over TCP", agent.connected()).await;
    assert_eq!(session.transport, "tcp");
    assert_eq!(session.country.as_deref(), Some("US"));
    assert_eq!(transport_in_stats(&net).await, "tcp");
    let stats = net.stats().await;
    assert_eq!(stats["transports"]["tcp"], 1, "{stats}");
    assert_eq!(stats["transports"]["quic"], 0, "{stats}");
    // The winner is remembered for the next start.
    assert_eq!(
        exitpool::agent::state::remembered_transport(state.path()).as_deref(),
        Some("tcp")
    );

    let target = http_target("127.0.0.1").await;
    // CONNECT.
    let (head, body) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    assert_eq!(body, "127.0.0.2");
    // SOCKS5, the exit resolving the name.
    let socks = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("socks5h://{USER}:{PASSWORD}@{}", net.proxy())).unwrap())
        .build()
        .unwrap();
    let url = format!("http://localhost:{}/ip", target.port());
    let response = within("SOCKS5 request", socks.get(&url).send())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        within("SOCKS5 body", response.text()).await.unwrap(),
        "127.0.0.2"
    );
    // Plain HTTP (absolute form).
    let http = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(format!("http://{}", net.proxy()))
                .unwrap()
                .basic_auth(USER, PASSWORD),
        )
        .build()
        .unwrap();
    let response = within(
        "plain HTTP request",
        http.get(format!("http://{target}/ip")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-exitpool-exit"));
    assert_eq!(
        within("HTTP body", response.text()).await.unwrap(),
        "127.0.0.2"
    );

    let metrics = within(
        "GET /metrics",
        reqwest::get(format!("http://{}/metrics", net.admin())),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("exitpool_agents_by_transport{transport=\"tcp\"} 1"),
        "{metrics}"
    );
    within("agent shutdown", agent.shutdown()).await.unwrap();
    within(
        "the gateway drops the TCP agent",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
}

#[tokio::test]
async fn a_quic_capable_agent_that_started_on_tcp_moves_to_quic_without_breaking_a_transfer() {
    let net = TestGateway::start().await;
    let state = tempfile::tempdir().unwrap();
    // TCP won last time (say, on another network): the agent starts there.
    exitpool::agent::state::remember_transport(state.path(), "tcp").unwrap();
    let agent = net
        .spawn(
            net.agent_builder("127.0.0.2")
                .transport(TransportChoice::Auto)
                .state_dir(state.path())
                .quic_retry(Duration::from_millis(300)),
        )
        .await;
    let mut session = agent.session();
    assert_eq!(
        session.borrow_and_update().as_ref().unwrap().transport,
        "tcp"
    );

    // A live transfer through the TCP tunnel.
    let target = echo_target().await;
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    stream.write_all(b"before").await.unwrap();
    let mut echoed = [0u8; 6];
    within("echo before the move", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"before");

    // QUIC works here, so the background retry moves the agent over.
    within(
        "agent moves to QUIC",
        session.wait_for(|info| info.as_ref().is_some_and(|info| info.transport == "quic")),
    )
    .await
    .unwrap();
    within(
        "the gateway routes to the QUIC tunnel",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    assert_eq!(transport_in_stats(&net).await, "quic");
    // The TCP tunnel is still held for the transfer on it, not closed as a
    // replaced one: the agent drains it.
    let stats = net.stats().await;
    assert_eq!(stats["transports"]["tcp"], 1, "{stats}");
    assert_eq!(stats["transports"]["quic"], 1, "{stats}");

    // The transfer on the old tunnel still runs, both ways, to a clean end.
    stream.write_all(b"after").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = String::new();
    within(
        "the old transfer ends cleanly",
        stream.read_to_string(&mut rest),
    )
    .await
    .unwrap();
    assert_eq!(rest, "after\n11 bytes\n");
    // New customers go through the QUIC tunnel.
    let (head, mut fresh) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    fresh.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    within("echo over QUIC", fresh.read_exact(&mut byte))
        .await
        .unwrap();
    assert_eq!(
        exitpool::agent::state::remembered_transport(state.path()).as_deref(),
        Some("quic")
    );
}

/// A UDP forwarder on 127.0.0.9 towards `gateway`'s QUIC port that the test
/// can make drop everything, as a network that throttles UDP after the
/// handshake does. Returns its address and the switch.
async fn udp_forwarder(
    gateway: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let outside = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.9:0").await.unwrap());
    let inside = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.9:0").await.unwrap());
    let address = outside.local_addr().unwrap();
    let dropping = std::sync::Arc::new(AtomicBool::new(false));
    let (client_tx, client_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    let (o, i, d) = (outside.clone(), inside.clone(), dropping.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = o.recv_from(&mut buf).await {
            client_tx.send_replace(Some(from));
            if !d.load(Ordering::Relaxed) {
                let _ = i.send_to(&buf[..n], gateway).await;
            }
        }
    });
    let d = dropping.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = inside.recv_from(&mut buf).await {
            let client = *client_rx.borrow();
            if let (Some(client), false) = (client, d.load(Ordering::Relaxed)) {
                let _ = outside.send_to(&buf[..n], client).await;
            }
        }
    });
    (address, dropping)
}

#[tokio::test]
async fn a_quic_tunnel_that_goes_silent_counts_as_blocked_and_the_agent_falls_back_to_tcp() {
    let gateway_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic_port = gateway_udp.local_addr().unwrap();
    drop(gateway_udp);
    let (forwarder, dropping) = udp_forwarder(quic_port).await;
    // The TCP port has the forwarder's port number on 127.0.0.9, so the agent
    // needs one HOST:PORT for both, as in production.
    let net = TestGateway::start_with(|config| {
        config.tunnel = quic_port;
        config.tunnel_tcp = TunnelTcp::At(forwarder);
    })
    .await;
    let keep_alive = Duration::from_millis(300);
    let agent = Agent::builder(
        forwarder.to_string(),
        net.gateway.pin().parse().unwrap(),
        TOKEN,
    )
    .bind("127.0.0.2".parse().unwrap())
    .allow_private(true)
    .transport(TransportChoice::Auto)
    .keep_alive(keep_alive)
    // QUIC surely wins the first race, however busy the machine.
    .race_delay(Duration::from_secs(5))
    .spawn()
    .unwrap();
    let mut session = agent.session();
    let joined = within("agent joins over QUIC", agent.connected()).await;
    assert_eq!(joined.transport, "quic");
    // UDP goes quiet after the handshake: no error, just nothing.
    dropping.store(true, std::sync::atomic::Ordering::Relaxed);
    let fell_back = std::time::Instant::now();
    within(
        "agent falls back to TCP",
        session.wait_for(|info| info.as_ref().is_some_and(|info| info.transport == "tcp")),
    )
    .await
    .unwrap();
    assert!(
        fell_back.elapsed() < exitpool::protocol::IDLE_TIMEOUT,
        "fell back after {:?}, not within a few keep-alives",
        fell_back.elapsed()
    );
    let target = http_target("127.0.0.1").await;
    let (head, body) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    assert_eq!(body, "127.0.0.2");
}

#[tokio::test]
async fn the_tcp_port_closes_a_silent_connection_at_the_handshake_deadline() {
    let net =
        TestGateway::start_with(|config| config.handshake_timeout = Duration::from_millis(500))
            .await;
    let tcp = net.gateway.tunnel_tcp_addr().unwrap();
    assert_eq!(
        tcp.port(),
        net.gateway.tunnel_addr().port(),
        "same port number"
    );
    // Says nothing at all: no TLS ClientHello.
    let mut silent = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let read = within("the gateway hangs up", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Garbage instead of TLS is refused too, and a real agent still joins.
    let mut garbage = tokio::net::TcpStream::connect(tcp).await.unwrap();
    garbage
        .write_all(&[0x16, 3, 1, 0xff, 0xff, 0, 0, 0])
        .await
        .unwrap();
    let read = within("the gateway refuses garbage", garbage.read(&mut buf)).await;
    assert!(
        !matches!(read, Ok(n) if n > 0 && buf[0] == 0x17),
        "{read:?}"
    );
    let _agent = net.over(TransportChoice::Tcp).agent("127.0.0.2").await;
}

#[tokio::test]
async fn no_tunnel_tcp_turns_the_tcp_port_off() {
    let net = TestGateway::start_with(|config| config.tunnel_tcp = TunnelTcp::Off).await;
    assert_eq!(net.gateway.tunnel_tcp_addr(), None);
    let refused = tokio::net::TcpStream::connect(net.gateway.tunnel_addr()).await;
    assert!(refused.is_err(), "nothing listens on TCP");
}

/// The two ends of a TCP tunnel made in this process, over 127.0.0.1. With
/// `records`, the opening end dials through [`count_tls_records`], which
/// counts the TLS records it sends there.
async fn tcp_tunnel_pair(
    records: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
) -> (
    exitpool::transport::tcp::TcpTunnel,
    exitpool::transport::tcp::TcpTunnel,
) {
    use exitpool::transport::pin::PinVerifier;
    use exitpool::transport::tcp::{self, TcpSettings};
    use std::sync::Arc;

    let state = tempfile::tempdir().unwrap();
    let identity = exitpool::gateway::tls::Identity::load_or_create(state.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dial = match records {
        Some(records) => {
            let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let relay_addr = relay.local_addr().unwrap();
            tokio::spawn(count_tls_records(relay, addr, records));
            relay_addr
        }
        None => addr,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.tcp_server_config().unwrap());
    let verifier = PinVerifier::ring(identity.pin().parse().unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(verifier.client_config(tcp::ALPN).unwrap()));
    let name = rustls::pki_types::ServerName::try_from("exitpool-gateway").unwrap();
    // Keep-alives far beyond the test: only a close can end the tunnel, and
    // no ping is sent unasked.
    let settings = TcpSettings {
        max_incoming_streams: 4,
        keep_alive: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        initial_connection_window: exitpool::transport::udp::CONNECTION_WINDOW,
        streams_before_admitted: None,
        frames_before_admitted: None,
    };
    let dialled = async {
        let stream = tokio::net::TcpStream::connect(dial).await.unwrap();
        let tls = connector.connect(name, stream).await.unwrap();
        tcp::opening_end(tls, settings).await.unwrap()
    };
    let accepted = async {
        let (stream, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(stream).await.unwrap();
        tcp::answering_end(tls, settings).await.unwrap()
    };
    within("both handshakes", async { tokio::join!(dialled, accepted) }).await
}

#[tokio::test]
async fn a_tcp_tunnel_is_closed_when_its_last_handle_is_dropped() {
    use exitpool::transport::tunnel::CloseReason;
    use exitpool::transport::TunnelConnection;

    let (opener, answerer) = tcp_tunnel_pair(None).await;

    // One handle dropped while a clone lives: the tunnel stays up.
    let clone = opener.clone();
    drop(opener);
    assert!(
        within("a ping", answerer.ping()).await,
        "the tunnel closed with a clone alive"
    );
    // The last one dropped: the other end hears a close, as from QUIC.
    drop(clone);
    within("the other end sees the close", answerer.closed()).await;
    assert_eq!(answerer.close_reason(), Some(CloseReason::Peer(Some(0))));
}

/// Relays one TCP connection from `listener` to `upstream` both ways, counting
/// the TLS records (5-byte headers, RFC 8446 section 5.1) the dialling side sends.
async fn count_tls_records(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    records: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (mut from_dialler, _) = listener.accept().await.unwrap();
    let mut to_upstream = tokio::net::TcpStream::connect(upstream).await.unwrap();
    let (mut down_read, mut down_write) = to_upstream.split();
    let (mut up_read, mut up_write) = from_dialler.split();
    let upward = async {
        let (mut chunk, mut unparsed) = (vec![0u8; 16 * 1024], Vec::new());
        while let Ok(n @ 1..) = up_read.read(&mut chunk).await {
            unparsed.extend_from_slice(&chunk[..n]);
            while unparsed.len() >= 5 {
                let length = u16::from_be_bytes([unparsed[3], unparsed[4]]) as usize;
                if unparsed.len() < 5 + length {
                    break;
                }
                unparsed.drain(..5 + length);
                records.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            if down_write.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
        let _ = down_write.shutdown().await;
    };
    let downward = async {
        let _ = tokio::io::copy(&mut down_read, &mut up_write).await;
        let _ = up_write.shutdown().await;
    };
    tokio::join!(upward, downward);
}

#[tokio::test]
async fn a_new_streams_headers_and_first_frame_leave_in_one_tls_record() {
    use exitpool::transport::{TunnelConnection, TunnelRecv};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let records = Arc::new(AtomicUsize::new(0));
    let (opener, answerer) = tcp_tunnel_pair(Some(records.clone())).await;
    // Two round trips settle the handshake's frames (SETTINGS and their
    // acknowledgements) before counting starts.
    for _ in 0..2 {
        assert!(within("a ping", opener.ping()).await);
    }
    let before = records.load(Ordering::SeqCst);

    let (mut send, _recv) = within("open", opener.open_stream()).await.unwrap();
    within("first frame", send.write_all(b"open: exit 7, port 443"))
        .await
        .unwrap();
    let (_send, mut recv) = within("accept", answerer.accept_stream()).await.unwrap();
    let mut frame = [0u8; 64];
    let n = within("read", TunnelRecv::read(&mut recv, &mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&frame[..n], b"open: exit 7, port 443");
    // The answering end has the frame, so every record carrying it has passed.
    assert_eq!(
        records.load(Ordering::SeqCst) - before,
        1,
        "the stream's HEADERS and its first DATA frame took separate writes"
    );
}
