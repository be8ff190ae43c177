//! Fleet walls: Redis is not the fleet's membership list. Records written
//! into Redis by someone without the fleet's key (a fake gateway with its own
//! peer address and pin, and an exit in it) carry no customer and are
//! counted; a peer link whose answering end cannot prove membership carries
//! nothing; a gateway with another fleet's certificate refuses to start; and
//! no customer answer names an internal gateway id or address.

mod common;

use common::fleet::{fleet, fleet_config, wait_for_gateways, wait_for_pool, RedisServer};
use common::targets::{echo_target, http_target};
use common::*;
use exitpool::gateway::config::PeerTransport;
use exitpool::gateway::error::ProxyError;
use exitpool::gateway::fleet::peer::{self, PeerAddress, Peers};
use exitpool::protocol::peer::{PeerAnswer, PeerHello, PeerOpen, PEER_TCP_ALPN};
use exitpool::protocol::{read_frame, write_frame, OpenReply};
use exitpool::transport::{tcp, Tunnel, TunnelConnection, TunnelSend};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A cookie only the customer and its target may see.
const COOKIE: &str = "session=customer-secret-4711";

/// A stranger's gateway: a TLS/TCP peer port with a certificate of its own,
/// answering as the fleet's gateways did before the answering end had to
/// prove membership (it welcomes any dialler), taking every stream and keeping
/// what customers send through it.
struct FakeGateway {
    addr: SocketAddr,
    pin: String,
    /// TLS connections accepted.
    links: Arc<AtomicUsize>,
    /// Relay streams opened on it after the hello.
    streams: Arc<AtomicUsize>,
    /// Every byte customers sent through it.
    received: Arc<Mutex<Vec<u8>>>,
    _state: tempfile::TempDir,
}

impl FakeGateway {
    async fn start() -> FakeGateway {
        let state = tempfile::tempdir().unwrap();
        let identity = exitpool::gateway::tls::Identity::load_or_create(state.path()).unwrap();
        let tls =
            tokio_rustls::TlsAcceptor::from(identity.tcp_server_config_for(PEER_TCP_ALPN).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeGateway {
            addr: listener.local_addr().unwrap(),
            pin: identity.pin(),
            links: Arc::default(),
            streams: Arc::default(),
            received: Arc::default(),
            _state: state,
        };
        let (links, streams, received) = (
            fake.links.clone(),
            fake.streams.clone(),
            fake.received.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                links.fetch_add(1, Ordering::SeqCst);
                let (tls, streams, received) = (tls.clone(), streams.clone(), received.clone());
                tokio::spawn(async move {
                    let Ok(tls) = tls.accept(stream).await else {
                        return;
                    };
                    let settings = peer::tcp_settings(Duration::from_secs(5), true);
                    let Ok(link) = tcp::answering_end(tls, settings).await else {
                        return;
                    };
                    let link = Tunnel::from(link);
                    let Ok((mut send, mut recv)) = link.accept_stream().await else {
                        return;
                    };
                    if read_frame::<PeerHello, _>(&mut recv).await.is_err() {
                        return;
                    }
                    let _ = write_frame(&mut send, &PeerAnswer::Welcome).await;
                    let _ = TunnelSend::finish(&mut send);
                    peer::open_to_streams(&link);
                    while let Ok((mut send, mut recv)) = link.accept_stream().await {
                        streams.fetch_add(1, Ordering::SeqCst);
                        let received = received.clone();
                        tokio::spawn(async move {
                            if read_frame::<PeerOpen, _>(&mut recv).await.is_err() {
                                return;
                            }
                            let opened = OpenReply::Opened {
                                peer: "192.0.2.1:80".parse().unwrap(),
                            };
                            let _ = write_frame(&mut send, &opened).await;
                            // Keep the customer's request head, then answer it.
                            let mut head = Vec::new();
                            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                                let mut byte = [0u8; 1];
                                match recv.read(&mut byte).await {
                                    Ok(1) => head.push(byte[0]),
                                    _ => break,
                                }
                            }
                            received.lock().unwrap().extend_from_slice(&head);
                            let _ = send
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nowned!")
                                .await;
                            let _ = TunnelSend::finish(&mut send);
                        });
                    }
                    // Keep the link open while the test may use it.
                    let _ = link.closed().await;
                });
            }
        });
        fake
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// An exit's entry as a gateway publishes it.
fn agent_entry(country: &str) -> String {
    serde_json::json!({
        "country": country, "asn": null, "city": null,
        "max_streams": 64, "accepting": true, "software": "exitpool-agent/0",
    })
    .to_string()
}

/// A plain-HTTP request through `proxy` as alice with `params`, carrying
/// [`COOKIE`]; the answer's head.
async fn get_with_cookie(proxy: SocketAddr, target: SocketAddr, params: &str) -> Head {
    let mut stream = within("connect to proxy", TcpStream::connect(proxy))
        .await
        .unwrap();
    let request = format!(
        "GET http://{target}/ip HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\nCookie: {COOKIE}\r\n\r\n",
        basic(&format!("{USER}{params}"), PASSWORD)
    );
    within("send GET", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    read_head(&mut stream).await
}

#[tokio::test]
async fn a_gateway_written_into_redis_without_the_fleet_key_never_gets_a_customer() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a"]).await;
    let a = &gateways[0];
    let _agent = a.agent("127.0.0.2").await;
    wait_for_pool(a, 1).await;
    wait_for_gateways(a, 1).await;
    let fake = FakeGateway::start().await;

    // What an attacker with write access to Redis does: four writes announce
    // a gateway (its own peer address and pin) holding one exit in France.
    let mut attacker = redis.client().await;
    let record = serde_json::json!({
        "id": "gw-evil", "peer": fake.addr.to_string(), "peer_tcp": true,
        "pin": fake.pin, "seq": 2, "agents": 1, "streams": 0, "connections": 0,
        "bytes_up": 0, "bytes_down": 0,
    })
    .to_string();
    let join = serde_json::json!({
        "op": "join", "id": "evil-exit",
        "agent": serde_json::from_str::<serde_json::Value>(&agent_entry("FR")).unwrap(),
    })
    .to_string();
    let () = redis::pipe()
        .cmd("SADD")
        .arg("exitpool:gateways")
        .arg("gw-evil")
        .ignore()
        .cmd("SET")
        .arg("exitpool:gateway:gw-evil")
        .arg(&record)
        .arg("PX")
        .arg(600_000)
        .ignore()
        .cmd("HSET")
        .arg("exitpool:agents:gw-evil")
        .arg("evil-exit")
        .arg(agent_entry("FR"))
        .arg("~seq")
        .arg(2)
        .ignore()
        .cmd("XADD")
        .arg("exitpool:directory")
        .arg("*")
        .arg("g")
        .arg("gw-evil")
        .arg("s")
        .arg(2)
        .arg("e")
        .arg(&join)
        .ignore()
        .query_async(&mut attacker)
        .await
        .unwrap();

    // The gateway reads them (several heartbeats) and refuses them; were they
    // taken, its directory would list the fake exit.
    within("the gateway reads the attacker's records", async {
        loop {
            let refused = a
                .metric_with("exitpool_redis_records_refused_total", None)
                .await
                .unwrap_or(0.0);
            if refused >= 3.0 || a.gateway.directory().len() > 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // A customer asks for France, then rotates: nothing reaches the fake.
    let target = http_target("127.0.0.1").await;
    let head = get_with_cookie(a.proxy(), target, "-country-fr").await;
    assert_eq!(
        fake.received(),
        "",
        "the attacker's gateway received a customer's request ({head:?})"
    );
    for _ in 0..5 {
        let (_, seen) = exit_ip(a.proxy(), target, "").await;
        assert_eq!(seen, "127.0.0.2");
    }
    assert_eq!(fake.links.load(Ordering::SeqCst), 0, "the fake was dialled");
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("no_exit"), "{head:?}");
    assert_eq!(a.gateway.directory().len(), 1);
    assert_eq!(a.stats().await["fleet"]["totals"]["gateways"], 1);
    assert!(a.metric("exitpool_redis_records_refused_total").await >= 3);
}

/// Dials `address` as a gateway of the fleet whose key is `key`, and opens a
/// stream to its exit `agent_id` towards `target`.
async fn dial_peer(
    key: &[u8; 32],
    address: PeerAddress,
    agent_id: &str,
    target: SocketAddr,
) -> Result<(), ProxyError> {
    let endpoint =
        exitpool::transport::endpoint::QuicEndpoint::client("127.0.0.1:0".parse().unwrap())
            .unwrap();
    let timeout = Duration::from_secs(5);
    let peers = Peers::new(
        endpoint,
        PeerTransport::Tcp,
        "gw-test".into(),
        key,
        timeout,
        timeout,
    );
    let home: Arc<str> = "gw-other".into();
    peers.set_address(&home, address);
    let host = exitpool::protocol::TargetHost::Ip(target.ip());
    within(
        "peer stream",
        peers.open(&home, agent_id, host, target.port(), timeout),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn a_peer_that_cannot_prove_membership_when_answering_carries_nothing() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a"]).await;
    let a = &gateways[0];
    let _agent = a.agent("127.0.0.2").await;
    wait_for_pool(a, 1).await;
    let agent_id = a.gateway.directory().agents()[0].agent_id.clone();
    let fleet_key =
        peer::fleet_key(&exitpool::gateway::tls::Identity::load_or_create(a.state.path()).unwrap());
    let target = echo_target().await;

    // A dialler of the fleet reaches the stranger (its address and pin as a
    // record would name them): the stranger welcomes it but cannot prove
    // membership, so the link is dropped before any customer stream.
    let fake = FakeGateway::start().await;
    let stranger = PeerAddress {
        addr: fake.addr,
        tcp: true,
        pin: fake.pin.parse().unwrap(),
    };
    let refused = dial_peer(&fleet_key, stranger, &agent_id, target).await;
    assert_eq!(fake.links.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.streams.load(Ordering::SeqCst),
        0,
        "a customer stream went to a peer that did not prove membership"
    );
    let Err(ProxyError::PeerUnavailable(reason)) = refused else {
        panic!("a peer that did not prove membership was used: {refused:?}");
    };
    assert!(reason.contains("answering end"), "{reason}");

    // The fleet's own gateway proves itself when answering: the same dial to
    // it carries the stream.
    wait_for_gateways(a, 1).await;
    let stats = a.stats().await["fleet"].clone();
    let member = PeerAddress {
        addr: stats["gateways"]["gw-a"]["peer"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        tcp: true,
        pin: a.gateway.pin().parse().unwrap(),
    };
    dial_peer(&fleet_key, member, &agent_id, target)
        .await
        .unwrap();
    assert_eq!(a.stats().await["fleet"]["peer_streams_in"], 1);
}

#[tokio::test]
async fn a_gateway_with_another_certificate_refuses_to_join_the_fleet() {
    let redis = RedisServer::start().await;
    let gateways = fleet(&redis, &["gw-a"]).await;
    wait_for_gateways(&gateways[0], 1).await;
    // A state directory of its own: a certificate that is not the fleet's.
    let state = tempfile::tempdir().unwrap();
    let mut config = TestGateway::config(state.path());
    config.state_dir = state.path().to_owned();
    config.fleet = Some(fleet_config(&redis, "gw-stranger"));
    let started = within(
        "a foreign gateway's start",
        exitpool::gateway::Gateway::start(config),
    )
    .await;
    let Err(error) = started else {
        panic!("a gateway with another certificate joined the fleet");
    };
    let message = error.to_string();
    for needle in [
        "certificate is not the fleet's",
        "gw-a",
        gateways[0].gateway.pin(),
        "gateway-key.der",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    // The fleet's own files make the same start a member.
    let state = tempfile::tempdir().unwrap();
    for name in common::fleet::SHARED_STATE {
        std::fs::copy(gateways[0].state.path().join(name), state.path().join(name)).unwrap();
    }
    let config = TestGateway::config(state.path());
    let member = TestGateway::start_in(state, config, |config| {
        config.fleet = Some(fleet_config(&redis, "gw-b"));
    })
    .await;
    wait_for_gateways(&member, 2).await;
}

#[tokio::test]
async fn no_customer_answer_names_a_gateway_of_the_fleet_or_its_address() {
    let redis = RedisServer::start().await;
    // Gateway B advertises a peer address where nothing listens: the link
    // to it fails, and the customer gets the fleet's 502.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let a = fleet(&redis, &["gw-a"]).await.remove(0);
    let state = tempfile::tempdir().unwrap();
    for name in common::fleet::SHARED_STATE {
        std::fs::copy(a.state.path().join(name), state.path().join(name)).unwrap();
    }
    let config = TestGateway::config(state.path());
    let b = TestGateway::start_in(state, config, |config| {
        let mut fleet = fleet_config(&redis, "gw-b-internal");
        fleet.peer_advertise = Some(dead);
        config.fleet = Some(fleet);
    })
    .await;
    let _agent = b.agent("127.0.0.2").await;
    wait_for_pool(&a, 1).await;
    let target = http_target("127.0.0.1").await;

    // Plain HTTP and CONNECT, the whole answer (head and body) each time.
    let mut stream = within("connect", TcpStream::connect(a.proxy()))
        .await
        .unwrap();
    let request = format!(
        "GET http://{target}/ip HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(&format!("{USER}-country-us"), PASSWORD)
    );
    within("send", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut plain = Vec::new();
    within("answer", stream.read_to_end(&mut plain))
        .await
        .unwrap();
    let mut stream = within("connect", TcpStream::connect(a.proxy()))
        .await
        .unwrap();
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(&format!("{USER}-country-us"), PASSWORD)
    );
    within("send", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut tunnel = Vec::new();
    within("answer", stream.read_to_end(&mut tunnel))
        .await
        .unwrap();
    for answer in [plain, tunnel] {
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert!(
            answer.contains("X-Exitpool-Error: peer_unavailable")
                || answer.contains("x-exitpool-error: peer_unavailable"),
            "{answer}"
        );
        for secret in ["gw-b-internal", &dead.to_string(), "gw-a"] {
            assert!(!answer.contains(secret), "{secret:?} in {answer}");
        }
    }
}

/// A CA, and a certificate for 127.0.0.1 signed by it with its key, as PEM
/// files in `dir`: (cert, key, ca).
fn redis_certificate(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "redis test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    let files = ["redis-cert.pem", "redis-key.pem", "redis-ca.pem"].map(|name| dir.join(name));
    std::fs::write(&files[0], cert.pem()).unwrap();
    std::fs::write(&files[1], key.serialize_pem()).unwrap();
    std::fs::write(&files[2], ca.pem()).unwrap();
    files
}

#[tokio::test]
async fn a_fleet_shares_its_pool_over_redis_with_tls() {
    use exitpool_launcher::redis::{RedisOptions, RedisTls};
    let dir = tempfile::tempdir().unwrap();
    let [cert, key, ca] = redis_certificate(dir.path());
    // TLS only (no plain TCP port), with a password that now crosses in TLS.
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("over-tls-3b7d1e".into()),
        tls: Some(RedisTls {
            cert,
            key,
            ca: ca.clone(),
            addr: exitpool_launcher::ports::free_port().unwrap(),
        }),
    })
    .await;
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let gateways = common::fleet::fleet_with(&redis, &["gw-a", "gw-b"], |config| {
        config.fleet.as_mut().unwrap().redis_ca = Some(ca.clone());
    })
    .await;
    let (a, b) = (&gateways[0], &gateways[1]);
    // B's exit reaches A's directory through Redis, and serves A's customer.
    let _agent = b.agent("127.0.0.2").await;
    wait_for_pool(a, 1).await;
    wait_for_gateways(a, 2).await;
    let target = http_target("127.0.0.1").await;
    let (_, seen) = exit_ip(a.proxy(), target, "").await;
    assert_eq!(seen, "127.0.0.2");
    assert_eq!(a.stats().await["fleet"]["redis"]["reachable"], true);

    // Without the CA (the system's roots) the server is not trusted: the
    // gateway starts, degraded, and says why.
    let stranger = common::fleet::fleet_with(&redis, &["gw-c"], |_| {})
        .await
        .remove(0);
    let reason = within("the untrusted Redis is reported", async {
        loop {
            let redis = stranger.stats().await["fleet"]["redis"].clone();
            if redis["reachable"] == false {
                return redis["reason"].as_str().unwrap_or_default().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(!reason.contains("over-tls-3b7d1e"), "{reason}");
}

/// An HTTP/2 frame on `stream`: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Issue 30 items 1 and 5 on the fleet's peer port: before a dialling peer
/// has proved membership, a flood of unsolicited PING acknowledgements, of
/// window updates or of stream opens (each refused) ends its connection at the
/// frame budget, and costs the log nothing per frame. Against a gate-less
/// answering end the window updates and refused streams were served for as
/// long as they came (the audit: 90 % CPU, up to 155 MiB).
#[tokio::test]
async fn floods_before_the_proof_on_the_peer_port_end_at_the_frame_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start().await;
    let (mut gateways, _states) = common::fleet::gateway_processes(&redis, 1, &[]).await;
    let gateway = &mut gateways[0];
    // Said around the gateway's ready banner, which start() waited for.
    let said = gateway
        .process
        .lines()
        .into_iter()
        .find(|line| line.contains("fleet mode"));
    let announced = match said {
        Some(line) => line,
        None => gateway
            .process
            .line_with("fleet mode", WAIT)
            .await
            .expect("the gateway says where its peer port is"),
    };
    let gateway = &gateways[0];
    let peer: SocketAddr = announced
        .split_whitespace()
        .find_map(|word| word.strip_prefix("peer="))
        .unwrap_or_else(|| panic!("no peer address in {announced:?}"))
        .parse()
        .unwrap();
    let tcp_tls = exitpool::agent::tls::client_configs(
        gateway.banner.pin.parse().unwrap(),
        exitpool::agent::tunnel::transport_config(8, exitpool::protocol::KEEP_ALIVE_INTERVAL),
    )
    .expect("client configs")
    .tcp;
    let mut tls = (*tcp_tls).clone();
    tls.alpn_protocols = vec![PEER_TCP_ALPN.to_vec()];
    let tls = Arc::new(tls);
    // A HEADERS frame that opens stream `id` (":method GET" and ":path /",
    // both from the static table), ended at once.
    let open = |id: u32| h2_frame(0x1, 0x4 | 0x1, id, &[0x82, 0x84]);
    let floods: [(&str, Vec<u8>); 3] = [
        (
            "PING acknowledgements",
            (0..10_000)
                .flat_map(|_| h2_frame(0x6, 0x1, 0, &[0; 8]))
                .collect(),
        ),
        (
            "window updates",
            (0..10_000)
                .flat_map(|_| h2_frame(0x8, 0, 0, &1u32.to_be_bytes()))
                .collect(),
        ),
        (
            "stream opens",
            (0..10_000).flat_map(|n| open(2 * n + 1)).collect(),
        ),
    ];
    let log_before = gateway.process.lines().len();
    for (what, flood) in floods {
        let tcp = within("connect", TcpStream::connect(peer)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(common::raw::SERVER_NAME).unwrap();
        let mut link = within(
            "TLS to the peer port",
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .expect("the peer port's TLS");
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(h2_frame(0x4, 0, 0, &[]));
        link.write_all(&start).await.unwrap();
        // The gateway may hang up while the flood is still being written.
        let _ = within("the flood is written", link.write_all(&flood)).await;
        // Whatever the gateway sent before it hung up, then the end.
        let mut sink = vec![0u8; 64 * 1024];
        let ending = format!("the gateway ends a link flooding {what}");
        within(&ending, async {
            loop {
                match link.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    // Each link was refused at the gate, none left to the proof's deadline.
    let refused_at_the_gate = |after: &[String], reason: &str| {
        after
            .iter()
            .any(|line| line.contains("peer link refused") && line.contains(reason))
    };
    // The gateway may log the last refusal a moment after the link ends.
    within("both refusals are logged", async {
        loop {
            let after = &gateway.process.lines()[log_before..];
            if refused_at_the_gate(after, "never asked for")
                && refused_at_the_gate(after, "too many HTTP/2 frames before")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let after = &gateway.process.lines()[log_before..];
    let grew: usize = after.iter().map(|line| line.len() + 1).sum();
    let refused_at_the_gate = |reason: &str| refused_at_the_gate(after, reason);
    assert!(
        refused_at_the_gate("never asked for")
            && refused_at_the_gate("too many HTTP/2 frames before the peer proved itself"),
        "{after:#?}"
    );
    assert!(
        !after.iter().any(|line| line.contains("in time")),
        "{after:#?}"
    );
    assert!(
        grew < 10 * 1024,
        "30,000 frames grew the log by {grew} bytes"
    );
}
