//! Issue: safe for volunteers, hard to knock over. What a stranger on the
//! customer port can and cannot do to the gateway: a password flood costs
//! logins, never relays; timing and work do not tell which user names exist.
//! Real gateway, real agents, raw sockets from distinct loopback addresses.

mod common;

use common::targets::echo_target;
use common::*;
use exitpool::gateway::auth::{hash_password, Customer, Users};
use exitpool_launcher::binaries::{GATEWAY_ON_LOOPBACK, GATEWAY_READY};
use exitpool_launcher::{GatewayBanner, Launch, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A customer whose password is an Argon2 hash, as the accounts file holds them.
const HASHED_USER: &str = "bob";
const HASHED_PASSWORD: &str = "b0bsecret";

/// A gateway with alice (plaintext password) and bob (Argon2 hash).
async fn with_hashed_account(
    adjust: impl FnOnce(&mut exitpool::gateway::GatewayConfig),
) -> TestGateway {
    let hash = hash_password(HASHED_PASSWORD).unwrap();
    TestGateway::start_with(|config| {
        config.users = Users::new([
            Customer::parse(&format!("{USER}:{PASSWORD}")).unwrap(),
            Customer::hashed(HASHED_USER, &hash).unwrap(),
        ]);
        adjust(config);
    })
    .await
}

/// `CONNECT target` with `user:password` from source address `source`.
async fn connect_from(
    source: &str,
    proxy: SocketAddr,
    target: SocketAddr,
    user: &str,
    password: &str,
) -> Head {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind a loopback source address");
    let mut stream = within("connect to proxy", socket.connect(proxy))
        .await
        .expect("proxy accepts");
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(user, password)
    );
    within("send CONNECT", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    read_head(&mut stream).await
}

/// One echo round trip through an open tunnel.
async fn echo_round_trip(stream: &mut TcpStream) {
    within("echo out", stream.write_all(b"ping")).await.unwrap();
    let mut back = [0u8; 4];
    within("echo back", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"ping");
}

#[tokio::test]
async fn a_password_flood_never_stalls_relays() {
    // One Argon2 check at a time, so the flood queues behind it.
    let net = with_hashed_account(|config| config.password_checks = 1).await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let (head, mut tunnel) = connect_as(net.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");

    // 30 wrong passwords for a hashed account, from 30 addresses (so the
    // per-address failure limit stays out of it): 30 Argon2 runs queued.
    const FLOOD: usize = 30;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for n in 1..=FLOOD {
        let answered = answered.clone();
        let proxy = net.proxy();
        flood.push(tokio::spawn(async move {
            let head =
                connect_from(&format!("127.0.1.{n}"), proxy, echo, HASHED_USER, "wrong").await;
            answered.fetch_add(1, Ordering::SeqCst);
            head
        }));
    }
    // Wait until the flood is being hashed.
    within("the flood reaches Argon2", async {
        while net.metric("exitpool_password_hashes_total").await == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Relays and the admin port keep going while the hashes queue.
    for _ in 0..20 {
        echo_round_trip(&mut tunnel).await;
    }
    let health = within(
        "GET /healthz",
        reqwest::get(format!("http://{}/healthz", net.admin())),
    )
    .await
    .unwrap();
    assert_eq!(health.status(), 200);
    let done_meanwhile = answered.load(Ordering::SeqCst);
    assert!(
        done_meanwhile < FLOOD,
        "the relay waited for all {FLOOD} password checks"
    );
    for attempt in flood {
        let head = within("flood answer", attempt).await.unwrap();
        assert!(
            matches!(head.status, 407 | 503),
            "a wrong password is refused or told to retry: {head:?}"
        );
    }
}

#[tokio::test]
async fn password_checks_past_their_queue_deadline_are_told_to_retry() {
    let net = with_hashed_account(|config| {
        config.password_checks = 1;
        config.password_queue_timeout = Duration::from_millis(1);
    })
    .await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let attempts: Vec<_> = (1..=10)
        .map(|n| {
            let proxy = net.proxy();
            tokio::spawn(async move {
                connect_from(&format!("127.0.2.{n}"), proxy, echo, HASHED_USER, "wrong").await
            })
        })
        .collect();
    let mut busy = 0;
    for attempt in attempts {
        let head = within("answer", attempt).await.unwrap();
        if head.status == 503 {
            assert_eq!(
                head.header("x-exitpool-error"),
                Some("auth_busy"),
                "{head:?}"
            );
            assert_eq!(head.header("retry-after"), Some("1"), "{head:?}");
            busy += 1;
        } else {
            assert_eq!(head.status, 407, "{head:?}");
        }
    }
    assert!(
        busy > 0,
        "ten checks at once on one place, none told to retry"
    );
}

#[tokio::test]
async fn an_unknown_name_costs_the_same_hash_as_a_wrong_password() {
    let net = with_hashed_account(|_| {}).await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let hashes = "exitpool_password_hashes_total";
    assert_eq!(net.metric(hashes).await, 0);

    let wrong = connect_from("127.0.3.1", net.proxy(), echo, HASHED_USER, "wrong").await;
    assert_eq!(net.metric(hashes).await, 1, "a wrong password runs Argon2");
    let unknown = connect_from("127.0.3.2", net.proxy(), echo, "mallory", "wrong").await;
    assert_eq!(
        net.metric(hashes).await,
        2,
        "an unknown name runs Argon2 too"
    );
    assert_eq!((wrong.status, unknown.status), (407, 407));
    let without_date = |head: &Head| -> Vec<(String, String)> {
        let mut headers = head.headers.clone();
        headers.retain(|(name, _)| name != "date");
        headers
    };
    assert_eq!(
        without_date(&wrong),
        without_date(&unknown),
        "the same answer"
    );

    // The right password runs Argon2 once, then is cached.
    for _ in 0..2 {
        let head = connect_from("127.0.3.3", net.proxy(), echo, HASHED_USER, HASHED_PASSWORD).await;
        assert_eq!(head.status, 200, "{head:?}");
    }
    assert_eq!(net.metric(hashes).await, 3);
}

#[tokio::test]
async fn plain_http_sends_the_uri_authority_as_host_not_the_clients() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = common::targets::http_target("127.0.0.1").await;
    let request = format!(
        "GET http://{target}/headers HTTP/1.1\r\nHost: victim.example\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(USER, PASSWORD)
    );
    let answer = exchange(net.proxy(), &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let hosts: Vec<&str> = answer
        .lines()
        .filter(|line| line.starts_with("host:"))
        .collect();
    assert_eq!(hosts, [format!("host: {target}")], "{answer}");
}

#[tokio::test]
async fn refusals_beyond_their_bound_are_closed_at_once() {
    use exitpool::gateway::customer::MAX_REFUSALS_IN_FLIGHT;
    let net = TestGateway::start_with(|config| config.max_unauthenticated_per_ip = 1).await;
    // The one unauthenticated slot of 127.0.4.1, held by a silent client.
    let _holder = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let flood = MAX_REFUSALS_IN_FLIGHT * 3;
    let mut silent = Vec::new();
    for _ in 0..flood {
        silent.push(
            within("connect", TcpStream::connect(net.proxy()))
                .await
                .unwrap(),
        );
    }
    // Each refused client either hears why (while the bound has room) or is
    // closed at once with nothing said; never held without a bound.
    let mut answered = 0;
    let mut closed = 0;
    for mut stream in silent {
        let mut buf = Vec::new();
        let _ = within("refusal", stream.read_to_end(&mut buf)).await;
        if buf.is_empty() {
            closed += 1;
        } else {
            assert!(
                String::from_utf8_lossy(&buf).contains("too_many_unauthenticated"),
                "{}",
                String::from_utf8_lossy(&buf)
            );
            answered += 1;
        }
    }
    assert!(
        answered <= MAX_REFUSALS_IN_FLIGHT,
        "{answered} answered at once"
    );
    assert!(answered > 0, "the first refusals are answered");
    assert_eq!(answered + closed, flood);
}

/// Runs the gateway binary with `args` and returns its exit status and stderr,
/// for start-ups that must fail before serving anything.
async fn refused_start(args: &[&str]) -> (std::process::ExitStatus, String) {
    let state = tempfile::tempdir().unwrap();
    let finished = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args(["--tunnel", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .run(WAIT)
        .await
        .expect("the gateway binary runs");
    (finished.status, finished.stderr)
}

#[tokio::test]
async fn the_demo_refuses_a_public_customer_port_and_real_accounts() {
    for (args, why) in [
        (
            &["--demo", "--listen", "0.0.0.0:0"][..],
            "--demo keeps its customer port on loopback",
        ),
        (
            &["--demo", "--listen", "127.0.0.1:0", "--user", "carol:pw"][..],
            "--demo runs with its own demo user",
        ),
        (
            &["--demo", "--listen", "127.0.0.1:0", "--agent-token", "t"][..],
            "drop --user, --users, --agent-token",
        ),
    ] {
        let (status, stderr) = refused_start(args).await;
        assert!(!status.success(), "{args:?} started");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

/// Sends `request` (a whole HTTP/1.1 request with `Connection: close`) to `addr`
/// and reads the answer to its end.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    within("send", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `request` to the admin port and returns the status code.
async fn admin_raw(net: &TestGateway, request: &str) -> u16 {
    let answer = exchange(net.admin(), request).await;
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test]
async fn a_web_page_cannot_drive_the_admin_port() {
    let net =
        TestGateway::start_with(|config| config.admin_hosts = vec!["gw.internal".into()]).await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let (head, mut tunnel) = connect_as(net.proxy(), echo, "").await;
    assert_eq!(head.status, 200);
    echo_round_trip(&mut tunnel).await;
    drop(tunnel);
    let used = || async {
        net.stats().await["customers"][USER]["bytes_up"]
            .as_u64()
            .unwrap()
    };
    within("usage folded", async {
        while used().await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // What a page on evil.example can make a browser send: a form POST (simple
    // content type) to a rebound name, or a fetch that carries its Origin.
    let rebound = "POST /usage/reset HTTP/1.1\r\nHost: evil.example:9090\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&net, rebound).await, 421);
    let cross_origin = "POST /usage/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&net, cross_origin).await, 403);
    let cross_site = "GET /stats HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&net, cross_site).await, 403);
    let form_post = "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&net, form_post).await, 415);
    let stats_rebound = "GET /stats HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&net, stats_rebound).await, 421);
    assert!(used().await > 0, "nothing was reset");

    // The operator's own requests: by IP, localhost, a configured name, JSON POSTs.
    for host in ["127.0.0.1:9090", "localhost", "[::1]:9090", "GW.internal"] {
        let get = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(admin_raw(&net, &get).await, 200, "Host: {host}");
    }
    let reset = "POST /usage/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&net, reset).await, 200);
    assert_eq!(used().await, 0, "the operator's reset went through");
}

#[tokio::test]
async fn sessions_cannot_be_hoarded() {
    use exitpool::gateway::auth::Limits;
    let net = TestGateway::start_with(|config| {
        config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}"))
            .unwrap()
            .with_limits(Limits {
                max_sessions: Some(3),
                ..Limits::default()
            })]);
    })
    .await;
    let _agent = net.agent("127.0.0.2").await;
    // Refused targets leave no pins behind.
    let closed = common::targets::closed_port().await;
    for n in 0..50 {
        let (head, _) = connect_as(net.proxy(), closed, &format!("-session-refused{n}")).await;
        assert_eq!(head.status, 502, "{head:?}");
    }
    assert_eq!(net.stats().await["sessions"], 0, "pins for refused targets");

    // The account holds at most 3; a reused id is always served.
    let echo = echo_target().await;
    for n in 0..3 {
        let (head, _) = connect_as(net.proxy(), echo, &format!("-session-s{n}")).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("x-exitpool-session"), Some("new"));
    }
    let (head, _) = connect_as(net.proxy(), echo, "-session-s3").await;
    assert_eq!(head.status, 429, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("session_limit"));
    let (head, _) = connect_as(net.proxy(), echo, "-session-s0").await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("x-exitpool-session"), Some("kept"));
    assert_eq!(net.stats().await["sessions"], 3);
}

#[tokio::test]
async fn what_customers_send_cannot_forge_a_log_line() {
    let state = tempfile::tempdir().unwrap();
    let mut gateway = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args(GATEWAY_ON_LOOPBACK)
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args([
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--agent-token",
            TOKEN,
        ])
        .env_remove("RUST_LOG")
        .start(Ready::line(GATEWAY_READY), WAIT)
        .await
        .expect("the gateway starts");
    let banner = gateway
        .lines()
        .iter()
        .find_map(|line| GatewayBanner::parse(line))
        .expect("the ready line");
    // A targeting key with a line break and a terminal escape in it (no colon,
    // where Basic credentials split, and no dash, where targeting keys do).
    let user = format!("{USER}-contry\nFORGED admin logged in\u{1b}[2K-us");
    let (head, _) = connect(banner.listen, "127.0.0.1:9", Some((&user, PASSWORD))).await;
    assert_eq!(head.status, 400, "{head:?}\n{}", gateway.lines().join("\n"));
    let refused = gateway
        .line_with("bad targeting parameter", WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        refused.contains("contry\\nFORGED admin logged in\\u{1b}["),
        "escaped on the refusal's own line: {refused}"
    );
    for line in gateway.lines() {
        assert!(!line.starts_with("FORGED"), "a forged line: {line}");
        assert!(!line.contains('\u{1b}'), "a raw escape: {line:?}");
    }
}

#[tokio::test]
async fn under_handshake_pressure_agents_prove_their_address_first() {
    // Pressure from the first handshake on: every agent meets a stateless Retry,
    // which a real agent answers by itself and a spoofed source cannot.
    let net = TestGateway::start_with(|config| config.handshake_retry_above = 0).await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let (head, mut tunnel) = connect_as(net.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    echo_round_trip(&mut tunnel).await;
    assert!(net.metric("exitpool_tunnel_retries_total").await >= 1);
}

/// Waits until the gateway has turned `n` agents away for a cap.
async fn turned_away(net: &TestGateway, n: u64) {
    within("an agent is turned away", async {
        while net.metric("exitpool_agents_turned_away_total").await < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn one_network_holds_a_bounded_number_of_agents() {
    let net = TestGateway::start_with(|config| config.max_agents_per_address = 2).await;
    let first = net.agent("127.0.0.2").await;
    let _second = net.agent("127.0.0.2").await;
    // A third from the same address is told to come back later, and does.
    let third = net.agent_builder("127.0.0.2").spawn().unwrap();
    turned_away(&net, 1).await;
    assert_eq!(net.gateway.directory().len(), 2);
    let _other_network = net.agent("127.0.0.3").await;
    within("first leaves", first.shutdown()).await.unwrap();
    within("the third joins once there is room", third.connected()).await;
    assert_eq!(net.gateway.directory().len(), 3);
}

/// An enrolment token for one device at a time.
const CAPPED: &str = "capped-token-0b7e3d9f2a4c6e8b1d3f5a7c9e2b4d6f";

#[tokio::test]
async fn an_enrolment_token_holds_at_most_its_max_agents() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("agent-tokens");
    std::fs::write(
        &tokens,
        format!("# one device only\n{CAPPED} max_agents=1\n"),
    )
    .unwrap();
    let net = TestGateway::start_with(|config| config.agent_tokens_file = Some(tokens)).await;
    let capped = |ip: &str| {
        exitpool::agent::Agent::builder(
            net.gateway.tunnel_addr().to_string(),
            net.gateway.pin().parse().unwrap(),
            CAPPED,
        )
        .bind(ip.parse::<std::net::IpAddr>().unwrap())
        .allow_private(true)
    };
    let first = net.spawn(capped("127.0.0.2")).await;
    let second = capped("127.0.0.3").spawn().unwrap();
    turned_away(&net, 1).await;
    assert_eq!(net.gateway.directory().len(), 1);
    // Other tokens are not affected.
    let _unlimited = net.agent("127.0.0.4").await;
    within("first leaves", first.shutdown()).await.unwrap();
    within("the second joins once there is room", second.connected()).await;
    assert_eq!(net.gateway.directory().len(), 2);
}
