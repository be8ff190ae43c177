//! The control plane's per-account restrictions enforced by a real `gateway`
//! process (docs/control.md, docs/errors.md): `allow_ips` set through
//! `/api/v1` refuses connections from other addresses with `403
//! source_not_allowed`, and `blocked_domains` refuses those targets and their
//! subdomains with `403 domain_blocked` before any exit is chosen, on HTTP
//! `CONNECT`, plain HTTP and SOCKS5, for customers and their sub-users, as
//! soon as the change reaches the gateway's view (how soon is printed, the
//! wait bounded by `WAIT`). Clients bind distinct loopback addresses to
//! be different sources; the blocked name is `localhost`, so nothing leaves the
//! machine even if a refusal were missed. SOCKS5 UDP destinations are checked
//! per flow, by name.

mod common;

use common::processes::GatewayProcess;
use common::{connect_from_ip, targets, within, Head, TOKEN, WAIT};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "admin-token-for-restriction-tests-3c9a1f";
/// The source every account allows.
const ALLOWED: &str = "127.0.0.6";
/// A source no account allows.
const OTHER: &str = "127.0.0.5";

async fn gateway(state: &std::path::Path) -> GatewayProcess {
    let args = ["--agent-token", TOKEN, "--admin-token", ADMIN].map(String::from);
    GatewayProcess::start(state, &args).await
}

async fn agent(gateway: &GatewayProcess) -> exitpool::agent::AgentHandle {
    gateway.agent("127.0.0.2").await
}

/// `method path` with `body` on the admin API: status and JSON answer.
async fn api(admin: SocketAddr, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let request = reqwest::Client::new()
        .request(method, format!("http://{admin}/api/v1{path}"))
        .bearer_auth(ADMIN)
        .json(&body);
    let answer = within("an API call", request.send()).await.unwrap();
    let status = answer.status().as_u16();
    let body = within("an API answer", answer.json::<Value>())
        .await
        .unwrap();
    (status, body)
}

async fn post(admin: SocketAddr, path: &str, body: Value) {
    let (status, answer) = api(admin, reqwest::Method::POST, path, body).await;
    assert_eq!(status, 201, "{path}: {answer}");
}

async fn patch(admin: SocketAddr, path: &str, body: Value) {
    let (status, answer) = api(admin, reqwest::Method::PATCH, path, body).await;
    assert_eq!(status, 200, "{path}: {answer}");
}

/// One `CONNECT target` from `from` as `user`: the answer's head.
async fn connect_head(from: &str, proxy: SocketAddr, target: &str, user: &str) -> Head {
    connect_from_ip(from, proxy, target, Some((user, "pw1")))
        .await
        .0
}

/// The product code of a refusal (`X-Exitpool-Error`), or the status.
fn outcome(head: &Head) -> String {
    match head.header("x-exitpool-error") {
        Some(code) => format!("{} {code}", head.status),
        None => head.status.to_string(),
    }
}

/// How long until a `CONNECT` answers `want` ("200", "403 domain_blocked"),
/// tried every 100 ms within [`WAIT`].
async fn until(from: &str, proxy: SocketAddr, target: &str, user: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = outcome(&connect_head(from, proxy, target, user).await);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "{user} from {from} to {target}: {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SOCKS5 login from `from` as `user` (`pw1`) asking for `host:port` by
/// name: the auth status, then (when that was 0) the request's reply code.
async fn socks5(
    from: &str,
    proxy: SocketAddr,
    user: &str,
    host: &str,
    port: u16,
) -> (u8, Option<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut stream: TcpStream = within("connect", socket.connect(proxy)).await.unwrap();
    let mut login = vec![0x05, 0x01, 0x02, 0x01, user.len() as u8];
    login.extend_from_slice(user.as_bytes());
    login.extend_from_slice(&[3, b'p', b'w', b'1']);
    within("greet and log in", stream.write_all(&login))
        .await
        .unwrap();
    let mut answers = [0u8; 4];
    within("method and auth status", stream.read_exact(&mut answers))
        .await
        .unwrap();
    assert_eq!(answers[..3], [0x05, 0x02, 0x01], "{answers:?}");
    if answers[3] != 0 {
        return (answers[3], None);
    }
    let mut request = vec![0x05, 0x01, 0x00, 0x03, host.len() as u8];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    within("request", stream.write_all(&request)).await.unwrap();
    let mut reply = [0u8; 2];
    within("reply", stream.read_exact(&mut reply))
        .await
        .unwrap();
    (0, Some(reply[1]))
}

/// A plain-HTTP `GET http://host:port/` through the proxy from `from`: the
/// status and `X-Exitpool-Error`.
async fn plain_get(from: &str, proxy: SocketAddr, user: &str, url: &str) -> String {
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{user}:pw1@{proxy}")).unwrap())
        .local_address(Some(from.parse().unwrap()))
        .build()
        .unwrap();
    let answer = within("a plain-HTTP GET", client.get(url).send())
        .await
        .unwrap();
    match answer.headers().get("x-exitpool-error") {
        Some(code) => format!("{} {}", answer.status().as_u16(), code.to_str().unwrap()),
        None => answer.status().as_u16().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_ips_refuse_other_sources_on_every_protocol() {
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(state.path()).await;
    let _agent = agent(&gw).await;
    let target = targets::http_target("127.0.0.1").await;
    let (proxy, admin, to) = (gw.banner.listen, gw.admin, target.to_string());

    post(
        admin,
        "/customers",
        json!({"name": "alice", "password": "pw1"}),
    )
    .await;
    until(OTHER, proxy, &to, "alice", "200").await;
    patch(
        admin,
        "/customers/alice",
        json!({"limits": {"allow_ips": [ALLOWED]}}),
    )
    .await;
    let took = until(OTHER, proxy, &to, "alice", "403 source_not_allowed").await;
    eprintln!("allow_ips was in force {took:?} after the PATCH's answer");
    let refused = connect_head(OTHER, proxy, &to, "alice").await;
    let details = refused.header("proxy-status").unwrap_or_default();
    assert!(details.contains(OTHER), "{refused:?}");
    assert_eq!(refused.header("x-exitpool-attempts"), None, "{refused:?}");
    assert_eq!(
        outcome(&connect_head(ALLOWED, proxy, &to, "alice").await),
        "200"
    );

    let url = format!("http://{target}/ip");
    assert_eq!(
        plain_get(OTHER, proxy, "alice", &url).await,
        "403 source_not_allowed"
    );
    assert_eq!(plain_get(ALLOWED, proxy, "alice", &url).await, "200");
    // SOCKS5 hears it at the login: auth status 2 (not allowed).
    assert_eq!(
        socks5(OTHER, proxy, "alice", "localhost", target.port()).await,
        (2, None)
    );
    assert_eq!(
        socks5(ALLOWED, proxy, "alice", "localhost", target.port()).await,
        (0, Some(0))
    );

    // A sub-user with no list of its own is held to its customer's.
    post(
        admin,
        "/customers/alice/sub-users",
        json!({"name": "ops", "password": "pw1"}),
    )
    .await;
    until(ALLOWED, proxy, &to, "ops.alice", "200").await;
    assert_eq!(
        outcome(&connect_head(OTHER, proxy, &to, "ops.alice").await),
        "403 source_not_allowed"
    );
    // Lifting the customer's list frees the sub-user too.
    patch(
        admin,
        "/customers/alice",
        json!({"limits": {"allow_ips": []}}),
    )
    .await;
    let took = until(OTHER, proxy, &to, "ops.alice", "200").await;
    eprintln!(
        "lifting the customer's allow_ips freed its sub-user {took:?} after the PATCH's answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_domains_are_refused_before_an_exit() {
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(state.path()).await;
    let _agent = agent(&gw).await;
    let target = targets::http_target("127.0.0.1").await;
    let (proxy, admin) = (gw.banner.listen, gw.admin);
    let by_name = format!("localhost:{}", target.port());

    post(
        admin,
        "/customers",
        json!({"name": "bob", "password": "pw1"}),
    )
    .await;
    post(
        admin,
        "/customers/bob/sub-users",
        json!({"name": "ops", "password": "pw1", "limits": {"blocked_domains": ["example.org"]}}),
    )
    .await;
    until(ALLOWED, proxy, &by_name, "bob", "200").await;
    until(ALLOWED, proxy, &by_name, "ops.bob", "200").await;
    patch(
        admin,
        "/customers/bob",
        json!({"limits": {"blocked_domains": ["LocalHost"]}}),
    )
    .await;
    let took = until(ALLOWED, proxy, &by_name, "bob", "403 domain_blocked").await;
    eprintln!("blocked_domains was in force {took:?} after the PATCH's answer");
    let refused = connect_head(ALLOWED, proxy, &by_name, "bob").await;
    assert_eq!(
        refused.header("x-exitpool-attempts"),
        None,
        "no exit chosen: {refused:?}"
    );
    // The sub-user is held to its customer's list beside its own.
    assert_eq!(
        outcome(&connect_head(ALLOWED, proxy, &by_name, "ops.bob").await),
        "403 domain_blocked"
    );
    // The list blocks names: the address is not a name.
    assert_eq!(
        outcome(&connect_head(ALLOWED, proxy, &target.to_string(), "bob").await),
        "200"
    );
    let url = format!("http://localhost:{}/ip", target.port());
    assert_eq!(
        plain_get(ALLOWED, proxy, "bob", &url).await,
        "403 domain_blocked"
    );
    // SOCKS5: the login passes, the request is refused, reply 2 (not allowed).
    assert_eq!(
        socks5(ALLOWED, proxy, "bob", "localhost", target.port()).await,
        (0, Some(2))
    );
    // Unblocked again: the name works.
    patch(
        admin,
        "/customers/bob",
        json!({"limits": {"blocked_domains": []}}),
    )
    .await;
    let took = until(ALLOWED, proxy, &by_name, "bob", "200").await;
    eprintln!("unblocking was in force {took:?} after the PATCH's answer");
}

/// The `domain_blocked` errors the gateway has counted, from `/metrics`.
async fn domain_blocked_count(admin: SocketAddr) -> u64 {
    let request = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(ADMIN);
    let answer = within("GET /metrics", request.send()).await.unwrap();
    let text = within("metrics body", answer.text()).await.unwrap();
    text.lines()
        .find(|line| line.starts_with("exitpool_errors_total{code=\"domain_blocked\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0, |count| count.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_domains_hold_for_each_socks5_udp_destination() {
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(state.path()).await;
    let _agent = agent(&gw).await;
    let (proxy, admin) = (gw.banner.listen, gw.admin);
    let tcp_target = targets::http_target("127.0.0.1").await.to_string();
    let (echo, received) = common::udp::udp_echo().await;
    post(
        admin,
        "/customers",
        json!({"name": "carol", "password": "pw1", "limits": {"blocked_domains": ["localhost"]}}),
    )
    .await;
    until(ALLOWED, proxy, &tcp_target, "carol", "200").await;
    let (_control, relay) = common::udp::associate_as(proxy, "carol", "pw1").await;
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // By address the destination is no name: carried.
    assert!(common::udp::echoes_within(&client, relay, echo, b"by address", WAIT).await);
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
    // By a blocked name: refused before the exit is asked, counted.
    let before = domain_blocked_count(admin).await;
    let mut by_name = vec![0, 0, 0, 3, b"localhost".len() as u8];
    by_name.extend_from_slice(b"localhost");
    by_name.extend_from_slice(&echo.port().to_be_bytes());
    by_name.extend_from_slice(b"by name");
    client.send_to(&by_name, relay).await.unwrap();
    within("the blocked destination is counted", async {
        while domain_blocked_count(admin).await <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing reached the echo by name"
    );
}
