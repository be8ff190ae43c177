//! A fleet behind one balancer, without Redis: a real HAProxy on the operator's
//! own `deploy/haproxy.cfg` (rendered with the test's addresses) in front of
//! two gateway processes that share one certificate and key, each with its own
//! agent. The gateways trust 127.0.0.1 (HAProxy) for PROXY v2 headers;
//! customers connect from 127.0.0.9 and .10, so what a gateway counts and logs
//! tells whether it saw the customer or the balancer.

mod common;

use common::processes::{customer, exit_of, free_port, GatewayProcess};
use common::targets::http_target;
use common::*;
use exitpool::agent::AgentHandle;
use exitpool::gateway::abuse::FAILURE_BURST;
use exitpool_launcher::binaries::AGENT_CONNECTED;
use exitpool_launcher::{haproxy, Launch, Process, Ready};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The network the gateways trust to send PROXY headers: where HAProxy
/// connects from.
const BALANCER: &str = "127.0.0.1/32";
/// A customer with credentials.
const CUSTOMER_IP: &str = "127.0.0.9";
/// Bob's `allow_ips`: no credentials needed from here.
const LISTED_IP: &str = "127.0.0.10";
/// Another customer address.
const OTHER_IP: &str = "127.0.0.11";
/// A client guessing passwords.
const GUESSER_IP: &str = "127.0.0.12";
/// The backend's name in deploy/haproxy.cfg.
const BACKEND: &str = "gateways";

/// Two gateways sharing one certificate and key, and their state directories.
struct Fleet {
    gateways: Vec<GatewayProcess>,
    _states: Vec<tempfile::TempDir>,
    _users: tempfile::TempDir,
}

/// Alice (a password) and bob (allow-listed from [`LISTED_IP`]).
fn write_users(dir: &Path) -> std::path::PathBuf {
    let hash = |password: &str| exitpool::gateway::auth::hash_password(password).unwrap();
    let text = format!(
        "[[customer]]\nname = \"{USER}\"\npassword_hash = \"{}\"\n\n\
         [[customer]]\nname = \"bob\"\npassword_hash = \"{}\"\nallow_ips = [\"{LISTED_IP}\"]\n",
        hash(PASSWORD),
        hash("unusedKp3x")
    );
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start_gateway(state: &Path, users: &Path) -> GatewayProcess {
    let mut args = vec!["--users".to_owned(), users.display().to_string()];
    args.extend(["--agent-token", TOKEN, "--proxy-protocol-from", BALANCER].map(String::from));
    GatewayProcess::start(state, &args).await
}

impl Fleet {
    /// Gateway 1 creates the certificate; gateway 2 starts on a copy of it,
    /// as an operator copies the state directory's cert files.
    async fn start() -> Fleet {
        init_tracing();
        let users_dir = tempfile::tempdir().unwrap();
        let users = write_users(users_dir.path());
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let a = start_gateway(first.path(), &users).await;
        for file in ["gateway-cert.der", "gateway-key.der"] {
            std::fs::copy(first.path().join(file), second.path().join(file)).unwrap();
        }
        let b = start_gateway(second.path(), &users).await;
        assert_eq!(a.banner.pin, b.banner.pin, "one pin for the fleet");
        Fleet {
            gateways: vec![a, b],
            _states: vec![first, second],
            _users: users_dir,
        }
    }

    /// An in-process agent on `ip` joined to gateway `index`.
    async fn agent(&self, index: usize, ip: &str) -> AgentHandle {
        let banner = &self.gateways[index].banner;
        let agent = exitpool::agent::Agent::builder(
            banner.tunnel.to_string(),
            banner.pin.parse().unwrap(),
            TOKEN,
        )
        .bind(ip.parse().unwrap())
        .allow_private(true)
        .transport(TransportChoice::Quic)
        .spawn()
        .unwrap();
        within("agent joins", agent.connected()).await;
        agent
    }

    /// The first line containing `needle` in either gateway's output.
    async fn line_in_either(&mut self, needle: &str) -> String {
        let [a, b] = &mut self.gateways[..] else {
            panic!("two gateways")
        };
        let found = tokio::select! {
            found = a.process.line_with(needle, WAIT) => found,
            found = b.process.line_with(needle, WAIT) => found,
        };
        found.unwrap_or_else(|error| panic!("{error}"))
    }
}

/// HAProxy on deploy/haproxy.cfg in front of `fleet`.
struct Balancer {
    process: Process,
    listen: SocketAddr,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Like [`balancer`], once `ready` gateways are up in the main backend.
async fn balancer(fleet: &Fleet) -> Balancer {
    balancer_with(fleet, 2).await
}

async fn balancer_with(fleet: &Fleet, ready: usize) -> Balancer {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .unwrap();
    let (listen, stats) = (free_port(), free_port());
    let backends: Vec<_> = fleet
        .gateways
        .iter()
        .map(|gateway| haproxy::Backend {
            listen: gateway.banner.listen,
            admin: gateway.admin,
        })
        .collect();
    let config = haproxy::render_for(&template, listen, stats, &backends).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut process = haproxy::start(&path, stats, WAIT)
        .await
        .expect("haproxy starts");
    haproxy::servers_up(&mut process, stats, BACKEND, ready, WAIT)
        .await
        .expect("the ready gateways up");
    Balancer {
        process,
        listen,
        stats,
        _dir: dir,
    }
}

/// A raw TCP connection from `from` to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    within("connect", socket.connect(to)).await.unwrap()
}

/// Everything `stream` sends until it closes.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = within("read to the end", stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) claiming `source`.
fn proxy_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(source), SocketAddr::V4(destination)) = (source, destination) else {
        panic!("IPv4 only")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source.ip().octets());
    header.extend(destination.ip().octets());
    header.extend(source.port().to_be_bytes());
    header.extend(destination.port().to_be_bytes());
    header
}

/// (a) through HAProxy, the gateways count and log the customer's address;
/// (b) `allow_ips` holds through it; (c) a header from an untrusted source is
/// not believed, and a trusted source without one is closed with a log line;
/// (d) with one gateway SIGKILLed, new connections succeed at once on the other.
#[tokio::test]
async fn the_balancer_passes_the_customer_address_and_survives_a_dead_gateway() {
    let mut fleet = Fleet::start().await;
    let _agent_a = fleet.agent(0, "127.0.0.2").await;
    let _agent_b = fleet.agent(1, "127.0.0.3").await;
    let mut balancer = balancer(&fleet).await;
    let target = http_target("127.0.0.1").await;

    // (a) A request through HAProxy is served and logged as 127.0.0.9's.
    let alice = customer(CUSTOMER_IP, balancer.listen, Some((USER, PASSWORD)));
    let (status, exit) = exit_of(&alice, target).await;
    assert_eq!(status, 200);
    assert!(
        ["127.0.0.2", "127.0.0.3"].contains(&exit.as_str()),
        "{exit}"
    );
    let line = fleet.line_in_either(&format!("peer={CUSTOMER_IP}:")).await;
    assert!(
        line.contains("access") && line.contains("user=alice"),
        "{line}"
    );

    // Failed authentications count against the customer's address: past its
    // burst on a gateway, 127.0.0.12 is refused there (429), while another
    // address is still served (were HAProxy's address counted, it would not be).
    let guesser = customer(GUESSER_IP, balancer.listen, Some((USER, "wrongpass")));
    let mut failures = 0;
    loop {
        let (status, _) = exit_of(&guesser, target).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 407);
        failures += 1;
        // Each gateway allows a burst, refilled a few per second while this runs.
        assert!(
            failures <= 10 * FAILURE_BURST,
            "127.0.0.12 was never refused"
        );
    }
    let other = customer(OTHER_IP, balancer.listen, Some((USER, PASSWORD)));
    for _ in 0..4 {
        assert_eq!(exit_of(&other, target).await.0, 200);
    }

    // (b) Bob's allow-listed address needs no credentials through the balancer.
    let bob = customer(LISTED_IP, balancer.listen, None);
    assert_eq!(exit_of(&bob, target).await.0, 200);
    let line = fleet.line_in_either(&format!("peer={LISTED_IP}:")).await;
    assert!(line.contains("user=bob"), "{line}");
    // Nothing was ever logged as HAProxy's address.
    for gateway in &fleet.gateways {
        let lines = gateway.process.lines();
        let balancer_peer = lines
            .iter()
            .find(|line| line.contains(" access ") && line.contains("peer=127.0.0.1:"));
        assert!(balancer_peer.is_none(), "{balancer_peer:?}");
    }

    // (c) An untrusted client's PROXY header claiming bob's address is just
    // bad input: no exit, no bob.
    let gateway_a = fleet.gateways[0].banner.listen;
    let mut forged = connect_from(CUSTOMER_IP, gateway_a).await;
    let mut bytes = proxy_header(format!("{LISTED_IP}:4000").parse().unwrap(), gateway_a);
    bytes.extend(format!("GET http://{target}/ip HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    within("send", forged.write_all(&bytes)).await.unwrap();
    let answer = read_all(&mut forged).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(!answer.contains("127.0.0.2"), "{answer:?}");
    // A trusted source that sends no header is closed, unanswered, and logged.
    let mut bare = connect_from("127.0.0.1", gateway_a).await;
    let request = format!("GET http://{target}/ip HTTP/1.1\r\nHost: {target}\r\n\r\n");
    within("send", bare.write_all(request.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_all(&mut bare).await, "");
    fleet.gateways[0]
        .process
        .line_with("no valid PROXY v2 header", WAIT)
        .await
        .unwrap();

    // (d) Gateway 1 crashes: new connections through HAProxy succeed at once,
    // on gateway 2's exit, before and after its checks mark gateway 1 down.
    fleet.gateways[0].process.kill().await.unwrap();
    let killed = Instant::now();
    // A new client each time: a new connection through HAProxy.
    let fresh = || customer(CUSTOMER_IP, balancer.listen, Some((USER, PASSWORD)));
    for _ in 0..5 {
        let (status, exit) = exit_of(&fresh(), target).await;
        assert_eq!((status, exit.as_str()), (200, "127.0.0.3"));
    }
    let served = killed.elapsed();
    assert!(served < Duration::from_secs(5), "took {served:?}");
    haproxy::servers_up(&mut balancer.process, balancer.stats, BACKEND, 1, WAIT)
        .await
        .unwrap();
    assert_eq!(
        exit_of(&fresh(), target).await,
        (200, "127.0.0.3".to_owned())
    );
}

/// The `agent` binary joined to both gateways of `fleet`.
fn agent_process(fleet: &Fleet, order: [usize; 2], transport: &str, state: &Path) -> Launch {
    let mut launch = Launch::new(env!("CARGO_BIN_EXE_agent"));
    for index in order {
        launch = launch.args([
            "--gateway",
            &fleet.gateways[index].banner.tunnel.to_string(),
        ]);
    }
    launch
        .args(["--pin", &fleet.gateways[0].banner.pin])
        .args(["--bind", "127.0.0.4", "--allow-private"])
        .args(["--transport", transport])
        // Short, so a dead gateway is noticed and skipped in about 2 s.
        .args(["--keep-alive-ms", "500", "--handshake-timeout-ms", "1000"])
        .arg("--state-dir")
        .arg(state)
        .env("EXITPOOL_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
}

/// Which of `fleet`'s gateways an agent's "connected" line names.
fn joined(fleet: &Fleet, line: &str) -> usize {
    (0..2)
        .find(|&index| line.contains(&format!(" gateway={}", fleet.gateways[index].banner.tunnel)))
        .unwrap_or_else(|| panic!("no gateway of the fleet in {line:?}"))
}

/// The agent's first "connected" line (the one its start waited for).
fn connected_line(agent: &Process) -> String {
    agent
        .lines()
        .into_iter()
        .find(|line| line.contains(AGENT_CONNECTED))
        .expect("a connected line")
}

over_both_transports! {
/// (e) An agent given both gateways prefers the same one on every start, in
/// whatever order they are given, and is in the other's pool within 10 s of
/// the preferred one being SIGKILLed.
async fn an_agent_prefers_one_gateway_and_fails_over_to_the_other(transport) {
    let mut fleet = Fleet::start().await;
    let flag = match transport {
        TransportChoice::Tcp => "tcp",
        _ => "quic",
    };
    let state = tempfile::tempdir().unwrap();
    let mut first = agent_process(&fleet, [0, 1], flag, state.path())
        .start(Ready::line(AGENT_CONNECTED), WAIT)
        .await
        .expect("the agent joins");
    let preferred = joined(&fleet, &connected_line(&first));
    first.stop(WAIT).await.unwrap();
    let mut agent = agent_process(&fleet, [1, 0], flag, state.path())
        .start(Ready::line(AGENT_CONNECTED), WAIT)
        .await
        .expect("the agent joins again");
    assert_eq!(joined(&fleet, &connected_line(&agent)), preferred, "the same gateway on every start");

    let other = 1 - preferred;
    fleet.gateways[preferred].process.kill().await.unwrap();
    let killed = Instant::now();
    let line = agent
        .line_with(AGENT_CONNECTED, Duration::from_secs(10))
        .await
        .expect("the agent joins the other gateway within 10 s");
    assert_eq!(joined(&fleet, &line), other, "{line}");
    let stats = fleet.gateways[other].stats().await;
    assert_eq!(stats["agents"], 1, "{stats}");
    assert!(killed.elapsed() < Duration::from_secs(10));
}
}

/// Like [`start_gateway`], in a fleet on `redis_url` as `id`.
async fn start_fleet_gateway(
    state: &Path,
    users: &Path,
    redis_url: String,
    id: &str,
) -> GatewayProcess {
    let mut args = vec!["--users".to_owned(), users.display().to_string()];
    args.extend(["--agent-token", TOKEN, "--proxy-protocol-from", BALANCER].map(String::from));
    args.extend(["--redis".to_owned(), redis_url]);
    args.extend(["--gateway-id", id, "--peer-listen", "127.0.0.1:0"].map(String::from));
    GatewayProcess::start(state, &args).await
}

/// `GET /readyz` on `gateway`'s admin port: status and body.
async fn readyz(gateway: &GatewayProcess) -> (u16, String) {
    let url = format!("http://{}/readyz", gateway.admin);
    let answer = within("GET /readyz", reqwest::get(url)).await.unwrap();
    let status = answer.status().as_u16();
    (status, within("readyz body", answer.text()).await.unwrap())
}

#[tokio::test]
async fn a_gateway_that_cannot_do_its_fleet_work_is_not_ready_and_gets_no_customers() {
    use common::fleet::RedisServer;
    use exitpool_launcher::redis::RedisOptions;
    init_tracing();
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("right-password-5c1e9a".into()),
        tls: None,
    })
    .await;
    let users_dir = tempfile::tempdir().unwrap();
    let users = write_users(users_dir.path());
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Gateway 1 has the right password; gateway 2, on the fleet's certificate,
    // a wrong one: it runs, degraded.
    let good = start_fleet_gateway(states[0].path(), &users, redis.url(), "gw-good").await;
    for file in common::fleet::SHARED_STATE {
        std::fs::copy(states[0].path().join(file), states[1].path().join(file)).unwrap();
    }
    let bad = start_fleet_gateway(
        states[1].path(),
        &users,
        redis.url_with(Some("wrong-password")),
        "gw-bad",
    )
    .await;
    let (status, body) = readyz(&bad).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    within("the good gateway is ready", async {
        while readyz(&good).await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(readyz(&good).await.1, "ready\n");

    let fleet = Fleet {
        gateways: vec![good, bad],
        _states: states.into(),
        _users: users_dir,
    };
    let _agent_good = fleet.agent(0, "127.0.0.2").await;
    let _agent_bad = fleet.agent(1, "127.0.0.3").await;
    // HAProxy on deploy/haproxy.cfg takes only the ready gateway: every new
    // customer lands there (its exit), none on the degraded one.
    let mut balancer = balancer_with(&fleet, 1).await;
    haproxy::servers_in(
        &mut balancer.process,
        balancer.stats,
        BACKEND,
        "DOWN",
        1,
        WAIT,
    )
    .await
    .expect("the degraded gateway is out");
    let target = http_target("127.0.0.1").await;
    let fresh = || customer(CUSTOMER_IP, balancer.listen, Some((USER, PASSWORD)));
    for _ in 0..6 {
        assert_eq!(
            exit_of(&fresh(), target).await,
            (200, "127.0.0.2".to_owned())
        );
    }

    // Redis away for the whole fleet: no gateway is ready, and the live ones
    // serve degraded rather than nobody.
    let mut redis = redis;
    redis.stop().await;
    haproxy::servers_in(
        &mut balancer.process,
        balancer.stats,
        BACKEND,
        "DOWN",
        2,
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(readyz(&fleet.gateways[0]).await.0, 503);
    for _ in 0..4 {
        assert_eq!(exit_of(&fresh(), target).await.0, 200);
    }
}
