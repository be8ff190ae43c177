//! Issue 35, UDP through the agents: SOCKS5 UDP ASSOCIATE on the customer
//! port, carried as UDP flows on the exit's tunnel, over each tunnel transport.
//! A real SOCKS5 client (Python's PySocks, installed by scripts/test) sends
//! datagrams to a local UDP echo and a DNS query to a local DNS responder;
//! a hand-rolled Rust client (the bytes of RFC 1928 §7) drives the bad input:
//! a refused destination, a foreign source, flows past the association's cap
//! and past the agent's, and the control connection closing. Everything stays on 127.0.0.0/8.

mod common;

use common::udp::{associate, datagram, udp_echo};
use common::*;
use exitpool::agent::TransportChoice;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::process::Command;

/// The drop counter the gateway exports, by cause.
const DROPPED: &str = "exitpool_udp_datagrams_dropped_total";

/// A DNS responder on 127.0.0.1 answering every A query with 192.0.2.53
/// (RFC 1035 §4: the query's header and question, then one answer pointing
/// at the question's name).
async fn dns_responder() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            if len < 12 {
                continue;
            }
            let mut answer = buf[..len].to_vec();
            answer[2] = 0x81; // QR, RD
            answer[3] = 0x80; // RA, NOERROR
            answer[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
            answer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53]);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    addr
}

/// The PySocks client: echoes three datagrams, then asks the DNS responder
/// for `exit.test`; prints what came back.
const PYSOCKS_CLIENT: &str = r#"
import socket, struct, sys, socks
proxy_port, user, password, echo_port, dns_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", int(proxy_port), username=user, password=password)
s.settimeout(10)
for payload in [b"first", b"second datagram", b"x" * 3000]:
    s.sendto(payload, ("127.0.0.1", echo_port))
    data, source = s.recvfrom(65535)
    assert data == payload, (data, payload)
    print("echo", len(data), source[1] == echo_port)
query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x04exit\x04test\x00" + struct.pack(">HH", 1, 1)
s.sendto(query, ("127.0.0.1", dns_port))
data, _ = s.recvfrom(65535)
ident, flags, qd, an = struct.unpack(">HHHH", data[:8])
assert ident == 0x1234 and an == 1, (ident, an)
print("dns", ".".join(str(b) for b in data[-4:]))
s.close()
"#;

over_both_transports! {
    async fn pysocks_echoes_and_resolves_through_an_exit(transport) {
        let net = TestGateway::start().await.over(transport);
        let _agent = net.agent("127.0.0.2").await;
        let (echo, echoed) = udp_echo().await;
        let dns = dns_responder().await;
        let output = within(
            "the PySocks client",
            Command::new("python3")
                .arg("-c")
                .arg(PYSOCKS_CLIENT)
                .args([
                    net.proxy().port().to_string(),
                    USER.into(),
                    PASSWORD.into(),
                    echo.port().to_string(),
                    dns.port().to_string(),
                ])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "PySocks client failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            ["echo 5 True", "echo 15 True", "echo 3000 True", "dns 192.0.2.53"],
        );
        assert_eq!(echoed.load(Ordering::SeqCst), 3);
        // Usage counts datagram payload bytes, both ways, once the
        // association has ended with its control connection.
        let payload = 5 + 15 + 3000 + 27;
        within("usage folded", async {
            while net.metric("exitpool_bytes_up_total").await < payload {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert_eq!(net.metric("exitpool_bytes_up_total").await, payload);
        // Over QUIC the small datagrams ride DATAGRAM frames and the
        // 3,000-byte one (too large for any QUIC packet) its stream, both ways; over
        // TLS/TCP every one is on its stream. 4 datagrams each way.
        let frames = net.metric("exitpool_udp_frames_total").await;
        let streamed = net.metric("exitpool_udp_stream_datagrams_total").await;
        assert_eq!(frames + streamed, 8);
        match transport {
            TransportChoice::Quic => assert_eq!((frames, streamed), (6, 2)),
            _ => assert_eq!((frames, streamed), (0, 8)),
        }
    }
}

/// Sends `payload` to `target` through the relay and waits for its echo.
async fn echo_through(client: &UdpSocket, relay: SocketAddr, target: SocketAddr, payload: &[u8]) {
    client
        .send_to(&datagram(target, payload), relay)
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, from) = within("the echo", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(from, relay);
    assert_eq!(
        &buf[..len],
        &datagram(target, payload)[..],
        "header names the target"
    );
}

/// Waits until the drop counter for `cause` reaches `at_least`.
async fn dropped(net: &TestGateway, cause: &str, at_least: f64) -> f64 {
    within(&format!("{cause} drops counted"), async {
        loop {
            let count = net
                .metric_with(DROPPED, Some(("cause", cause)))
                .await
                .unwrap_or(0.0);
            if count >= at_least {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

over_both_transports! {
    async fn a_refused_destination_is_dropped_and_counted(transport) {
        // The default (strict) exit policy refuses loopback.
        let net = TestGateway::start().await.over(transport);
        let _agent = net.strict_agent("127.0.0.2").await;
        let (echo, echoed) = udp_echo().await;
        let (_control, relay) = associate(net.proxy()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..3 {
            client.send_to(&datagram(echo, b"refused"), relay).await.unwrap();
        }
        dropped(&net, "refused", 3.0).await;
        assert_eq!(echoed.load(Ordering::SeqCst), 0, "nothing reached the target");
    }
}

#[tokio::test]
async fn datagrams_from_another_source_are_dropped() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let (echo, echoed) = udp_echo().await;
    let (_control, relay) = associate(net.proxy()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    echo_through(&client, relay, echo, b"mine").await;
    // Another port of the client's address, and another address.
    let same_ip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other_ip = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    for stranger in [&same_ip, &other_ip] {
        stranger
            .send_to(&datagram(echo, b"not yours"), relay)
            .await
            .unwrap();
    }
    dropped(&net, "foreign_source", 2.0).await;
    // The client's own datagrams still go through, and only those arrived.
    echo_through(&client, relay, echo, b"still mine").await;
    assert_eq!(echoed.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn flows_past_the_association_cap_are_dropped() {
    let net = TestGateway::start_with(|config| config.socks_udp_max_flows = 2).await;
    let _agent = net.agent("127.0.0.2").await;
    let (first, _) = udp_echo().await;
    let (second, _) = udp_echo().await;
    let (third, third_echoed) = udp_echo().await;
    let (_control, relay) = associate(net.proxy()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    echo_through(&client, relay, first, b"one").await;
    echo_through(&client, relay, second, b"two").await;
    client
        .send_to(&datagram(third, b"three"), relay)
        .await
        .unwrap();
    dropped(&net, "flow_cap", 1.0).await;
    // The flows within the cap keep working.
    echo_through(&client, relay, first, b"one again").await;
    assert_eq!(third_echoed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_association_ends_with_its_control_connection() {
    let net = TestGateway::start().await.over(TransportChoice::Tcp);
    let _agent = net.agent("127.0.0.2").await;
    let (echo, echoed) = udp_echo().await;
    let (control, relay) = associate(net.proxy()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    echo_through(&client, relay, echo, b"before").await;
    drop(control);
    // Once the gateway has closed the relay socket, the kernel answers a
    // datagram to it with ICMP port unreachable: a connected socket reads
    // that as ConnectionRefused.
    client.connect(relay).await.unwrap();
    within("the relay socket closes", async {
        loop {
            client.send(&datagram(echo, b"after")).await.unwrap();
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(100), client.recv(&mut buf)).await {
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Still open: an echo of a datagram sent before the close.
                _ => continue,
            }
        }
    })
    .await;
    let live = net.metric("exitpool_connections_total").await;
    assert_eq!(live, 1, "one association, counted as one connection");
    assert!(echoed.load(Ordering::SeqCst) >= 1);
}

over_both_transports! {
    async fn flows_past_the_agents_cap_are_refused(transport) {
        // One UDP flow at a time on the agent's tunnel.
        let net = TestGateway::start().await.over(transport);
        let limits = exitpool::agent::udp::UdpLimits {
            max_flows: 1,
            ..Default::default()
        };
        let _agent = net.spawn(net.agent_builder("127.0.0.2").udp_limits(limits)).await;
        let (first, _) = udp_echo().await;
        let (second, second_echoed) = udp_echo().await;
        let (_control, relay) = associate(net.proxy()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        echo_through(&client, relay, first, b"one").await;
        client
            .send_to(&datagram(second, b"two"), relay)
            .await
            .unwrap();
        // The exit answered the second flow AgentUnavailable: its datagram is
        // dropped as refused, and the first flow carries on.
        dropped(&net, "refused", 1.0).await;
        echo_through(&client, relay, first, b"one again").await;
        assert_eq!(second_echoed.load(Ordering::SeqCst), 0);
    }
}
