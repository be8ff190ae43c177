//! A fleet of gateways sharing one pool through a real Redis: an exit on
//! another gateway serves a customer over the peer link, sessions agree across
//! gateways (even when two pin one at the same moment), usage is counted once,
//! and a Redis outage loses nothing.

mod common;

use common::fleet::{
    fleet, fleet_with, place_agents, wait_for_customer, wait_for_gateways, wait_for_pool,
    RedisServer,
};
use common::targets::{echo_target, http_target};
use common::*;
use exitpool::gateway::auth::{Customer, Limits, Users};
use exitpool::gateway::config::PeerTransport;
use exitpool::gateway::error::ProxyError;
use exitpool::gateway::fleet::peer::{PeerAddress, Peers};
use exitpool::protocol::peer::{PEER_ALPN, PEER_TCP_ALPN};
use exitpool::transport::pin::PinVerifier;
use exitpool::transport::{tcp, TunnelConnection, TunnelRecv};
use redis::AsyncCommands;
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn an_exit_held_by_another_gateway_serves_the_customer() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b", "gw-c"]).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    // The US only on B, Germany only on C; customers reach A.
    let _agents = place_agents(&gateways, &[(1, "127.0.0.2"), (2, "127.0.0.4")]).await;
    let target = http_target("127.0.0.1").await;
    let (head, seen) = exit_ip(a.proxy(), target, "-country-us").await;
    assert_eq!(seen, "127.0.0.2", "{head:?}");
    let (_, seen) = exit_ip(a.proxy(), target, "-country-de").await;
    assert_eq!(seen, "127.0.0.4");
    // A country no gateway serves is the usual answer.
    let (head, _) = connect_as(a.proxy(), target, "-country-jp").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("no_exit"));

    wait_for_gateways(a, 3).await;
    // A gateway's record counts its agents from its next heartbeat on.
    within("every record counts its agents", async {
        while a.stats().await["fleet"]["totals"]["agents"] != 2 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let stats = a.stats().await;
    assert_eq!(stats["agents"], 2, "{stats}");
    let fleet_stats = &stats["fleet"];
    assert_eq!(fleet_stats["local_agents"], 0, "{fleet_stats}");
    assert_eq!(fleet_stats["totals"]["gateways"], 3, "{fleet_stats}");
    assert_eq!(fleet_stats["totals"]["agents"], 2, "{fleet_stats}");
    assert_eq!(fleet_stats["peer_streams_out"], 2, "{fleet_stats}");
    assert_eq!(b.stats().await["fleet"]["peer_streams_in"], 1);
    // Peer links are TLS over TCP unless a gateway asks for QUIC.
    for linked in ["gw-b", "gw-c"] {
        assert_eq!(
            fleet_stats["gateways"][linked]["peer_link"], "tcp",
            "{fleet_stats}"
        );
    }
    assert_eq!(
        fleet_stats["gateways"]["gw-a"]["peer_link"],
        serde_json::Value::Null
    );
    // No Redis round trip for a rotation request: two opens cost none
    // beyond the heartbeat's own.
    assert_eq!(fleet_stats["session_round_trips"], 0);
    // A reload checks this gateway's own agents' tokens, not the fleet's.
    a.gateway.reload().unwrap();
    assert_eq!(a.gateway.directory().len(), 2);
}

#[tokio::test]
async fn a_gateway_dialling_over_quic_carries_its_customers_as_well() {
    let redis = RedisServer::start().await;
    let gateways = fleet_with(&redis, &["gw-a", "gw-b"], |config| {
        config.fleet.as_mut().unwrap().peer_transport = PeerTransport::Quic;
    })
    .await;
    let a = &gateways[0];
    let _agents = place_agents(&gateways, &[(1, "127.0.0.2")]).await;
    let target = echo_target().await;
    // Both directions and the half-close, a megabyte each way.
    echo_through(a.proxy(), target, "", 1 << 20).await;
    wait_for_gateways(a, 2).await;
    let stats = a.stats().await["fleet"].clone();
    assert_eq!(stats["peer_streams_out"], 1, "{stats}");
    assert_eq!(stats["gateways"]["gw-b"]["peer_link"], "quic", "{stats}");
}

/// Dials gateway `to`'s peer port as gateway `own_id` proving membership with
/// `key`, and opens a stream to its exit `agent_id`.
async fn open_peer_stream(
    to: &TestGateway,
    transport: PeerTransport,
    key: &[u8; 32],
    agent_id: &str,
    target: std::net::SocketAddr,
) -> Result<(), ProxyError> {
    let endpoint =
        exitpool::transport::endpoint::QuicEndpoint::client("127.0.0.1:0".parse().unwrap())
            .unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let peers = Peers::new(
        endpoint,
        transport,
        "stranger".into(),
        key,
        timeout,
        timeout,
    );
    let stats = to.stats().await["fleet"].clone();
    let id: std::sync::Arc<str> = stats["gateway_id"].as_str().unwrap().into();
    let addr = stats["gateways"][&*id]["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pin = to.gateway.pin().parse().unwrap();
    peers.set_address(
        &id,
        PeerAddress {
            addr,
            tcp: true,
            pin,
        },
    );
    let host = exitpool::protocol::TargetHost::Ip(target.ip());
    within(
        "peer stream",
        peers.open(&id, agent_id, host, target.port(), timeout),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn a_peer_link_without_the_fleet_key_is_refused_on_both_transports() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let b = &gateways[1];
    let _agents = place_agents(&gateways, &[(1, "127.0.0.2")]).await;
    wait_for_gateways(b, 2).await;
    let agent_id = b.gateway.directory().agents()[0].agent_id.clone();
    let target = echo_target().await;
    let fleet_key = exitpool::gateway::fleet::peer::fleet_key(
        &exitpool::gateway::tls::Identity::load_or_create(b.state.path()).unwrap(),
    );
    for transport in [PeerTransport::Tcp, PeerTransport::Quic] {
        // Same certificate pin, so TLS succeeds; only the proof is wrong.
        let refused = open_peer_stream(b, transport, &[7; 32], &agent_id, target).await;
        let Err(ProxyError::PeerUnavailable(reason)) = refused else {
            panic!("{transport:?}: a stranger's link was not refused: {refused:?}");
        };
        assert!(
            reason.contains("the fleet proof does not verify"),
            "{transport:?}: {reason}"
        );
        // With the fleet's key the same dial is a peer link.
        open_peer_stream(b, transport, &fleet_key, &agent_id, target)
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
    }
    assert_eq!(b.stats().await["fleet"]["peer_streams_in"], 2);
}

/// Whether `future` is ready at its first poll.
fn ready_at_once<F: std::future::Future>(future: F) -> bool {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    future.as_mut().poll(&mut context).is_ready()
}

/// A stranger's raw way onto gateway `to`'s peer port: TLS/TCP or QUIC
/// handshakes with the fleet's pin, and nothing more.
struct PeerPort {
    addr: std::net::SocketAddr,
    verifier: std::sync::Arc<PinVerifier>,
    endpoint: quinn::Endpoint,
}

impl PeerPort {
    async fn of(to: &TestGateway) -> PeerPort {
        // Its own record (with the peer port) is there once it has heard itself.
        wait_for_gateways(to, 1).await;
        let stats = to.stats().await["fleet"].clone();
        let id = stats["gateway_id"].as_str().unwrap();
        PeerPort {
            addr: stats["gateways"][id]["peer"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            verifier: PinVerifier::ring(to.gateway.pin().parse().unwrap()),
            endpoint: quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap(),
        }
    }

    /// A TLS handshake on the TCP peer port.
    async fn tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tls = self.verifier.client_config(PEER_TCP_ALPN).unwrap();
        let name = rustls::pki_types::ServerName::try_from("exitpool-gateway").unwrap();
        let tcp = within("TCP connect", tokio::net::TcpStream::connect(self.addr)).await?;
        within(
            "TLS handshake",
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp),
        )
        .await
    }

    /// A QUIC handshake on the UDP peer port.
    async fn quic(&self) -> Result<quinn::Connection, quinn::ConnectionError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
            self.verifier.client_config(PEER_ALPN).unwrap(),
        )
        .unwrap();
        let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        let connecting = self
            .endpoint
            .connect_with(config, self.addr, "exitpool-gateway")
            .unwrap();
        within("QUIC handshake", connecting).await
    }
}

#[tokio::test]
async fn a_peer_link_not_yet_proved_may_open_one_stream_only() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a"]).await;
    let port = PeerPort::of(&gateways[0]).await;

    // TLS/TCP: the first stream is taken, the next refused.
    let tls = port.tls().await.unwrap();
    let settings =
        exitpool::gateway::fleet::peer::tcp_settings(std::time::Duration::from_secs(5), false);
    let link = within("HTTP/2 handshake", tcp::opening_end(tls, settings))
        .await
        .unwrap();
    let (_proof_send, _proof_recv) = within("first stream", link.open_stream()).await.unwrap();
    let (mut send, mut recv) = within("second stream", link.open_stream()).await.unwrap();
    let _ = within("write", send.write_all(b"x")).await;
    let refused = within("refusal", TunnelRecv::read(&mut recv, &mut [0; 16])).await;
    let error = refused.expect_err("a second stream before the proof was taken");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");

    // QUIC: the link allows one stream until it has proved itself.
    let connection = port.quic().await.unwrap();
    let _first = within("first stream", connection.open_bi()).await.unwrap();
    assert!(
        !ready_at_once(connection.open_bi()),
        "a second stream before the proof was allowed"
    );
}

#[tokio::test]
async fn unproved_peer_links_from_one_network_take_four_places_on_both_transports() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a"]).await;
    let port = PeerPort::of(&gateways[0]).await;
    // Four silent links from 127.0.0.1 take its places for the handshake
    // timeout; the gateway takes them, one transport or the other.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(port.tls().await.expect("a place"));
    }
    let quic_held = port.quic().await.expect("the fourth place");
    // A fifth, on either transport, is turned away at once.
    let tls_refused = port.tls().await;
    assert!(
        tls_refused.is_err(),
        "a fifth link over TLS/TCP got a place"
    );
    let quic_refused = port.quic().await;
    assert!(
        matches!(
            quic_refused,
            Err(quinn::ConnectionError::ConnectionClosed(_))
        ),
        "{quic_refused:?}"
    );
    // Their places come back as they go.
    drop(held);
    quic_held.close(0u32.into(), b"");
    within("a place comes back", async {
        loop {
            if port.tls().await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_session_keeps_its_exit_on_every_gateway() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b", "gw-c"]).await;
    let _agents = place_agents(
        &gateways,
        &[
            (1, "127.0.0.2"),
            (1, "127.0.0.3"),
            (2, "127.0.0.4"),
            (2, "127.0.0.5"),
        ],
    )
    .await;
    let target = http_target("127.0.0.1").await;
    let (head, first) = exit_ip(gateways[0].proxy(), target, "-session-s1").await;
    assert_eq!(head.header("x-exitpool-session"), Some("new"));
    for gateway in gateways.iter().cycle().take(6) {
        let (head, seen) = exit_ip(gateway.proxy(), target, "-session-s1").await;
        assert_eq!(seen, first, "{head:?}");
        assert_eq!(head.header("x-exitpool-session"), Some("kept"), "{head:?}");
    }
    // One round trip per gateway for the session's first connection there,
    // none after.
    for gateway in &gateways {
        let trips = gateway.stats().await["fleet"]["session_round_trips"].clone();
        assert_eq!(trips, 1, "{}", gateway.stats().await["fleet"]);
    }
}

#[tokio::test]
async fn two_gateways_pinning_one_new_session_at_once_agree() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let _agents = place_agents(
        &gateways,
        &[
            (0, "127.0.0.2"),
            (0, "127.0.0.3"),
            (1, "127.0.0.4"),
            (1, "127.0.0.5"),
        ],
    )
    .await;
    let target = http_target("127.0.0.1").await;
    // Many new sessions, each opened on both gateways at the same moment.
    for n in 0..12 {
        let params = format!("-session-race{n}");
        let (on_a, on_b) = tokio::join!(
            exit_ip(gateways[0].proxy(), target, &params),
            exit_ip(gateways[1].proxy(), target, &params),
        );
        assert_eq!(
            on_a.1, on_b.1,
            "session race{n}: {:?} / {:?}",
            on_a.0, on_b.0
        );
        let mut redis = redis.client().await;
        let pin: String = redis
            .get(format!("exitpool:session:5:alice:race{n}"))
            .await
            .unwrap();
        assert!(!pin.is_empty());
    }
}

/// Sends `len` bytes through the echo target over `proxy` and reads them back.
async fn echo_through(
    proxy: std::net::SocketAddr,
    target: std::net::SocketAddr,
    params: &str,
    len: usize,
) {
    let (head, mut stream) = connect_as(proxy, target, params).await;
    assert_eq!(head.status, 200, "{head:?}");
    let payload = common::targets::pattern(len);
    within("send", stream.write_all(&payload)).await.unwrap();
    within("half-close", stream.shutdown()).await.unwrap();
    let mut back = Vec::new();
    within("read back", stream.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(&back[..len], &payload[..], "echoed intact");
}

/// A usage hash in Redis, as numbers.
async fn usage_in_redis(redis: &RedisServer, key: &str) -> HashMap<String, u64> {
    let mut connection = redis.client().await;
    let fields: HashMap<String, String> = connection.hgetall(key).await.unwrap();
    fields
        .into_iter()
        .filter_map(|(field, value)| Some((field, value.parse().ok()?)))
        .collect()
}

/// Waits until Redis holds `up` bytes up for alice.
async fn wait_for_customer_usage(redis: &RedisServer, up: u64) -> HashMap<String, u64> {
    within("usage reaches redis", async {
        loop {
            let usage = usage_in_redis(redis, "exitpool:usage:customer:alice").await;
            if usage.get("bytes_up").copied().unwrap_or(0) >= up {
                return usage;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn usage_is_counted_once_across_the_fleet() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let _agent = b.agent("127.0.0.2").await;
    wait_for_pool(a, 1).await;
    let echo = echo_target().await;
    let sizes = [10_000usize, 200_000, 1_000_000];
    for size in sizes {
        echo_through(a.proxy(), echo, "", size).await;
    }
    let sent: u64 = sizes.iter().map(|size| *size as u64).sum();
    let customer = wait_for_customer_usage(&redis, sent).await;
    assert_eq!(customer["bytes_up"], sent, "{customer:?}");
    assert_eq!(customer["connections"], 3, "{customer:?}");
    // The echo answers every byte plus its `\n<count> bytes\n` trailers.
    let trailers: u64 = sizes
        .iter()
        .map(|size| format!("\n{size} bytes\n").len() as u64)
        .sum();
    assert_eq!(customer["bytes_down"], sent + trailers, "{customer:?}");
    // The agent's side is B's to count, once.
    let exit_id = b.stats().await["per_agent"][0]["exit_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_key = within("agent usage reaches redis", async {
        loop {
            let mut connection = redis.client().await;
            let keys: Vec<String> = connection.keys("exitpool:usage:agent:*").await.unwrap();
            if let Some(key) = keys.first() {
                let usage = usage_in_redis(&redis, key).await;
                if usage.get("bytes_up").copied().unwrap_or(0) >= sent {
                    return key.clone();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let agent = usage_in_redis(&redis, &agent_key).await;
    assert_eq!(agent["bytes_up"], sent, "{agent:?}");
    assert_eq!(agent["bytes_down"], sent + trailers, "{agent:?}");
    // Locally too: A counted the customer and not B's agent, B the agent
    // and no customer.
    let a_stats = a.stats().await;
    assert_eq!(a_stats["customers"][USER]["bytes_up"], sent);
    assert!(
        a_stats["agent_usage"].as_object().unwrap().is_empty(),
        "{a_stats}"
    );
    let b_stats = b.stats().await;
    assert_eq!(b_stats["customers"][USER]["bytes_up"], 0, "{b_stats}");
    assert_eq!(b_stats["agent_usage"][&exit_id]["bytes_up"], sent);
}

#[tokio::test]
async fn a_redis_outage_keeps_gateways_serving_and_loses_no_usage() {
    let mut redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let _agents = place_agents(&gateways, &[(0, "127.0.0.2"), (1, "127.0.0.4")]).await;
    let echo = echo_target().await;

    redis.stop().await;
    let health = within("healthz says degraded", async {
        loop {
            let text = reqwest::get(format!("http://{}/healthz", a.admin()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.starts_with("degraded") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(health.contains("redis"), "{health}");
    // Redis stays away for 30 s, and each gateway keeps serving its own
    // agents all the while.
    let outage = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut sent = 0u64;
    while std::time::Instant::now() < outage {
        echo_through(a.proxy(), echo, "-country-us", 30_000).await;
        echo_through(b.proxy(), echo, "-country-de", 20_000).await;
        sent += 50_000;
    }
    let journal = a.state.path().join("fleet-usage.json");
    within("usage journalled", async {
        while !std::fs::read_to_string(&journal).is_ok_and(|text| text.contains("alice")) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;

    // Redis comes back empty (no persistence): the journals land whole, and
    // the fleet's directory is published again.
    redis.start_again().await;
    let customer = wait_for_customer_usage(&redis, sent).await;
    assert_eq!(customer["bytes_up"], sent, "{customer:?}");
    let ok = within("healthz ok again", async {
        loop {
            let text = reqwest::get(format!("http://{}/healthz", a.admin()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text == "ok\n" {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(ok, "ok\n");
    within("agent lists republished", async {
        loop {
            let mut connection = redis.client().await;
            let a_list: HashMap<String, String> =
                connection.hgetall("exitpool:agents:gw-a").await.unwrap();
            let b_list: HashMap<String, String> =
                connection.hgetall("exitpool:agents:gw-b").await.unwrap();
            // One agent each, plus the list's sequence number.
            if a_list.len() == 2 && b_list.len() == 2 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    // And the peer path works again: A reaches B's German exit.
    let target = http_target("127.0.0.1").await;
    let (_, seen) = exit_ip(a.proxy(), target, "-country-de").await;
    assert_eq!(seen, "127.0.0.4");
}

#[tokio::test]
async fn connection_and_quota_limits_hold_across_the_fleet() {
    let redis = RedisServer::start().await;
    let limited = Customer::parse(&format!("{USER}:{PASSWORD}"))
        .unwrap()
        .with_limits(Limits {
            max_connections: Some(2),
            quota_bytes: Some(400_000),
            ..Limits::default()
        });
    let gateways = fleet_with(&redis, &["gw-a", "gw-b"], |config| {
        config.users = Users::new([limited.clone()]);
    })
    .await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let _agents = place_agents(&gateways, &[(0, "127.0.0.2"), (1, "127.0.0.4")]).await;
    let echo = echo_target().await;

    // One connection held on each gateway: the account's two.
    let (head, held_a) = connect_as(a.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    let (head, held_b) = connect_as(b.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    for gateway in [a, b] {
        wait_for_customer(
            gateway,
            USER,
            "the other gateway's connection is known",
            |entry| entry["fleet"]["connections_elsewhere"] == 1,
        )
        .await;
        let (head, _) = connect_as(gateway.proxy(), echo, "").await;
        assert_eq!(head.status, 429, "{head:?}");
        assert_eq!(head.header("x-exitpool-error"), Some("connection_limit"));
    }
    drop((held_a, held_b));
    for gateway in [a, b] {
        wait_for_customer(gateway, USER, "the held connections are gone", |entry| {
            entry["fleet"]["connections_elsewhere"] == 0 && entry["live_connections"] == 0
        })
        .await;
    }

    // 300,000 bytes through A (up and down), then 100,000 through B once B
    // knows of A's: exactly what the quota has left, so B's leases let all of
    // it through (more would be cut: a race with the heartbeat before), and
    // the fleet's 400,000 reach the quota on both.
    echo_through(a.proxy(), echo, "", 150_000).await;
    wait_for_customer(b, USER, "A's bytes reach B", |entry| {
        entry["fleet"]["bytes"].as_u64().unwrap_or(0) >= 300_000
    })
    .await;
    echo_through(b.proxy(), echo, "", 50_000).await;
    wait_for_customer(a, USER, "B's bytes reach A", |entry| {
        entry["fleet"]["bytes"].as_u64().unwrap_or(0) >= 400_000
    })
    .await;
    for gateway in [a, b] {
        let (head, _) = connect_as(gateway.proxy(), echo, "").await;
        assert_eq!(head.status, 403, "{head:?}");
        assert_eq!(head.header("x-exitpool-error"), Some("quota_exhausted"));
    }
}

#[tokio::test]
async fn an_exit_busy_on_its_own_gateway_is_seen_busy_by_the_others() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let _agent = b.spawn(b.agent_builder("127.0.0.2").max_streams(4)).await;
    wait_for_pool(a, 1).await;
    let echo = echo_target().await;
    // Its four streams taken by customers on its own gateway.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (head, stream) = connect_as(b.proxy(), echo, "").await;
        assert_eq!(head.status, 200, "{head:?}");
        held.push(stream);
    }
    within("B's report of the load reaches A", async {
        while a.stats().await["per_agent"][0]["load"] != 4 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // A knows the exit is full without asking B.
    let (head, _) = connect_as(a.proxy(), echo, "").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("exits_busy"));
    assert_eq!(b.stats().await["fleet"]["peer_streams_in"], 0);
    drop(held);
    within("the freed load reaches A", async {
        while a.stats().await["per_agent"][0]["load"] != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    echo_through(a.proxy(), echo, "", 1000).await;
}

/// The metric families `gateway`'s `/metrics` exposes (from `# TYPE` lines).
async fn metric_families(gateway: &TestGateway) -> Vec<String> {
    let url = format!("http://{}/metrics", gateway.admin());
    let answer = within("GET /metrics", reqwest::get(url)).await.unwrap();
    let text = within("metrics body", answer.text()).await.unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn fleet_wide_series_say_so_and_the_others_add_up_over_the_gateways() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    // Two exits on A (both in the US), one on B (Germany).
    let _agents = place_agents(
        &gateways,
        &[(0, "127.0.0.2"), (0, "127.0.0.3"), (1, "127.0.0.4")],
    )
    .await;
    // A peer stream from A's customer to B's exit counts on B only (B's
    // record, with its peer address, is out before its agents are).
    let target = echo_target().await;
    let (head, _stream) = connect_as(a.proxy(), target, "-country-de").await;
    assert_eq!(head.status, 200, "{head:?}");

    let us = Some(("country", "US"));
    let de = Some(("country", "DE"));
    for (gateway, own, own_us, own_de, streams) in [
        (a, 2.0, Some(2.0), None, 0.0),
        (b, 1.0, None, Some(1.0), 1.0),
    ] {
        // Per gateway: what it holds, which adds up over the fleet.
        assert_eq!(
            gateway.metric_with("exitpool_agents", None).await,
            Some(own)
        );
        assert_eq!(
            gateway.metric_with("exitpool_agents_by_country", us).await,
            own_us
        );
        assert_eq!(
            gateway.metric_with("exitpool_agents_by_country", de).await,
            own_de
        );
        assert_eq!(
            gateway.metric_with("exitpool_live_streams", None).await,
            Some(streams)
        );
        // Fleet-wide: the whole pool, the same on every gateway.
        assert_eq!(
            gateway.metric_with("exitpool_fleet_agents", None).await,
            Some(3.0)
        );
        assert_eq!(
            gateway
                .metric_with("exitpool_fleet_agents_by_country", us)
                .await,
            Some(2.0)
        );
        assert_eq!(
            gateway
                .metric_with("exitpool_fleet_agents_by_country", de)
                .await,
            Some(1.0)
        );
    }

    // Every family that mentions the fleet is a fleet-wide one; the manual
    // names every family, and lists exactly the fleet-wide ones as such.
    let families = metric_families(a).await;
    assert!(families.len() > 20, "{families:?}");
    let manual =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operators.md")).unwrap();
    let named = |name: &str| {
        ["`", "_total`", "{", "_total{"]
            .iter()
            .any(|after| manual.contains(&format!("`{name}{after}")))
    };
    for family in &families {
        assert!(named(family), "{family} is not in docs/operators.md");
        if family.contains("fleet") {
            assert!(family.starts_with("exitpool_fleet_"), "{family}");
        }
    }
    let fleet_wide = manual
        .split("**Fleet-wide series**")
        .nth(1)
        .and_then(|rest| rest.split("**Per-gateway series**").next())
        .expect("docs/operators.md lists the fleet-wide series");
    let listed: Vec<&str> = fleet_wide
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| name.split('{').next().unwrap())
        .collect();
    let mut expected: Vec<&str> = families
        .iter()
        .map(String::as_str)
        .filter(|family| family.starts_with("exitpool_fleet_"))
        .collect();
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, expected);
}
