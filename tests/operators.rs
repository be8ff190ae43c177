//! Issue: operators run it for real — accounts with limits, usage accounting that
//! survives restarts, Prometheus metrics, an admin token, and logs that never
//! carry a password.

mod common;

use common::targets::{echo_target, http_target};
use common::*;
use exitpool::gateway::auth::{Customer, Limits, Users};
use exitpool::gateway::{Gateway, StartError};
use exitpool_launcher::binaries::{GATEWAY_ON_LOOPBACK, GATEWAY_READY};
use exitpool_launcher::{GatewayBanner, Launch, Process, Signal};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway whose only customer is alice with `limits`, and one agent per `ips`.
async fn limited(limits: Limits, ips: &[&str]) -> (TestGateway, Vec<exitpool::agent::AgentHandle>) {
    let net = TestGateway::start_with(|config| {
        config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}"))
            .unwrap()
            .with_limits(limits)]);
    })
    .await;
    let mut agents = Vec::new();
    for ip in ips {
        agents.push(net.agent(ip).await);
    }
    (net, agents)
}

/// Polls `/stats` until `predicate` holds (usage is folded in asynchronously).
async fn stats_until(
    net: &TestGateway,
    what: &str,
    predicate: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    within(what, async {
        loop {
            let stats = net.stats().await;
            if predicate(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn refused_with(head: &Head, status: u16, code: &str) {
    assert_eq!(head.status, status, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some(code), "{head:?}");
}

/// A SOCKS5 CONNECT to `target` as alice; returns the reply code.
async fn socks5_reply(proxy: SocketAddr, target: SocketAddr) -> u8 {
    let mut stream = within("connect", TcpStream::connect(proxy)).await.unwrap();
    within("greeting", stream.write_all(&[5, 1, 2]))
        .await
        .unwrap();
    let mut choice = [0u8; 2];
    within("method", stream.read_exact(&mut choice))
        .await
        .unwrap();
    assert_eq!(choice, [5, 2]);
    let mut auth = vec![1, USER.len() as u8];
    auth.extend_from_slice(USER.as_bytes());
    auth.push(PASSWORD.len() as u8);
    auth.extend_from_slice(PASSWORD.as_bytes());
    within("auth", stream.write_all(&auth)).await.unwrap();
    let mut status = [0u8; 2];
    within("auth status", stream.read_exact(&mut status))
        .await
        .unwrap();
    assert_eq!(status, [1, 0]);
    let SocketAddr::V4(v4) = target else {
        panic!("IPv4 target")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.ip().octets());
    request.extend_from_slice(&v4.port().to_be_bytes());
    within("request", stream.write_all(&request)).await.unwrap();
    let mut reply = [0u8; 2];
    within("reply", stream.read_exact(&mut reply))
        .await
        .unwrap();
    reply[1]
}

#[tokio::test]
async fn requests_per_second_answers_429_with_retry_after() {
    let limits = Limits {
        requests_per_second: NonZeroU32::new(1),
        ..Limits::default()
    };
    let (net, _agents) = limited(limits, &["127.0.0.2"]).await;
    let target = http_target("127.0.0.1").await;
    let (first, _stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(first.status, 200, "{first:?}");
    let (second, _) = connect_as(net.proxy(), target, "").await;
    refused_with(&second, 429, "rate_limited");
    let retry: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let stats = net.stats().await;
    assert_eq!(
        stats["customers"][USER]["errors_by_code"]["rate_limited"],
        1
    );
}

#[tokio::test]
async fn max_connections_answers_429_until_a_connection_ends() {
    let limits = Limits {
        max_connections: Some(1),
        ..Limits::default()
    };
    let (net, _agents) = limited(limits, &["127.0.0.2"]).await;
    let target = http_target("127.0.0.1").await;
    let (first, mut held) = connect_as(net.proxy(), target, "").await;
    assert_eq!(first.status, 200, "{first:?}");
    let (second, _) = connect_as(net.proxy(), target, "").await;
    refused_with(&second, 429, "connection_limit");
    assert_eq!(second.header("retry-after"), Some("1"));
    // SOCKS5 meets the same limit: general failure.
    assert_eq!(socks5_reply(net.proxy(), target).await, 0x01);
    assert_eq!(net.stats().await["customers"][USER]["live_connections"], 1);
    // Ending the first connection frees the slot.
    let _ = get_in_tunnel(&mut held, "/ip").await;
    drop(held);
    stats_until(&net, "slot freed", |s| {
        s["customers"][USER]["live_connections"] == 0
    })
    .await;
    let (third, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(third.status, 200, "{third:?}");
}

/// Sends `up` bytes through an established tunnel to the echo target, closes the
/// sending side and reads everything back; returns the bytes received.
async fn echo_through(stream: &mut TcpStream, up: usize) -> usize {
    let payload = common::targets::pattern(up);
    let (mut read, mut write) = stream.split();
    let writing = async {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut received = Vec::new();
    let reading = read.read_to_end(&mut received);
    let ((), result) = within("echo", async { tokio::join!(writing, reading) }).await;
    result.unwrap();
    assert_eq!(&received[..up], &payload[..], "echoed bytes");
    received.len()
}

#[tokio::test]
async fn a_quota_refuses_new_connections_and_cuts_a_running_one() {
    let limits = Limits {
        quota_bytes: Some(150_000),
        ..Limits::default()
    };
    let (net, _agents) = limited(limits, &["127.0.0.2"]).await;
    let echo = echo_target().await;
    // 2 x 50,000 bytes: under the quota.
    let (head, mut stream) = connect_as(net.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    let down = echo_through(&mut stream, 50_000).await as u64;
    stats_until(&net, "usage folded", |s| {
        s["customers"][USER]["bytes_down"] == down
    })
    .await;
    // A second connection reaches the quota while it runs, and is cut off
    // there (a reset): 60,000 bytes up fit in the 50,000 left only as the
    // last chunk, so their echo never comes.
    let (head, mut stream) = connect_as(net.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    let payload = common::targets::pattern(60_000);
    within("send", stream.write_all(&payload)).await.unwrap();
    // Not closing our side: only the quota ends this connection.
    let mut echoed = Vec::new();
    let end = within("cut off", stream.read_to_end(&mut echoed)).await;
    assert!(
        end.is_err(),
        "a reset, not a clean end ({} echoed)",
        echoed.len()
    );
    assert!(echoed.len() < payload.len(), "{} echoed", echoed.len());
    // From now on, new connections are refused with the quota's own code.
    let (refused, _) = connect_as(net.proxy(), echo, "").await;
    refused_with(&refused, 403, "quota_exhausted");
    assert_eq!(refused.header("retry-after"), None);
    let stats = net.stats().await;
    assert_eq!(stats["customers"][USER]["quota_bytes"], 150_000);
    assert_eq!(stats["customers"][USER]["quota_remaining"], 0);
}

#[tokio::test]
async fn allowed_countries_bound_targeted_and_untargeted_requests() {
    let limits = Limits {
        countries: Some(vec!["DE".into()]),
        ..Limits::default()
    };
    let (net, _agents) = limited(limits, &["127.0.0.2", "127.0.0.4", "127.0.0.5"]).await;
    let target = http_target("127.0.0.1").await;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (head, ip) = exit_ip(net.proxy(), target, "").await;
        assert_eq!(head.header("x-exitpool-country"), Some("DE"));
        seen.insert(ip);
    }
    assert_eq!(
        seen,
        HashSet::from(["127.0.0.4".to_owned(), "127.0.0.5".to_owned()])
    );
    let (head, _) = connect_as(net.proxy(), target, "-country-us").await;
    refused_with(&head, 403, "country_not_allowed");
    let (head, _) = exit_ip(net.proxy(), target, "-country-de").await;
    assert_eq!(head.header("x-exitpool-country"), Some("DE"));
    // A session without a country stays on one allowed exit.
    let (first, a) = exit_ip(net.proxy(), target, "-session-s1").await;
    let (_, b) = exit_ip(net.proxy(), target, "-session-s1").await;
    assert_eq!(first.header("x-exitpool-country"), Some("DE"));
    assert_eq!(a, b);
}

#[tokio::test]
async fn usage_is_exact_and_survives_a_restart() {
    let (net, agents) = limited(Limits::default(), &["127.0.0.2"]).await;
    let echo = echo_target().await;
    let (head, mut stream) = connect_as(net.proxy(), echo, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    let down = echo_through(&mut stream, 100_000).await as u64;
    assert_eq!(down, 100_000 + "\n100000 bytes\n".len() as u64);
    drop(stream);
    // One failure too: no exit in JP.
    let (refused, _) = connect_as(net.proxy(), echo, "-country-jp").await;
    refused_with(&refused, 502, "no_exit");
    let stats = stats_until(&net, "usage folded", |s| {
        s["customers"][USER]["bytes_down"] == down
    })
    .await;
    let alice = &stats["customers"][USER];
    assert_eq!(alice["bytes_up"], 100_000);
    assert_eq!(alice["connections"], 1);
    assert_eq!(alice["errors_by_code"]["no_exit"], 1);
    let usage = stats["agent_usage"].as_object().unwrap();
    assert_eq!(usage.len(), 1);
    // Keyed by the exit id customers see; the device's own id never shows.
    let (exit_id, agent) = usage.iter().next().unwrap();
    assert_eq!(*exit_id, stats["per_agent"][0]["exit_id"]);
    let device_id = agents[0].stats().agent_id;
    assert!(!stats.to_string().contains(&device_id), "{stats}");
    assert_eq!(agent["bytes_up"], 100_000);
    assert_eq!(agent["bytes_down"], down);
    assert_eq!(agent["country"], "US");
    assert_eq!(stats["bytes_up"], 100_000);

    // Restart on the same state directory: nothing is lost.
    let TestGateway { gateway, state, .. } = net;
    within("shutdown", gateway.shutdown()).await;
    let config = TestGateway::config(state.path());
    let net = TestGateway::start_in(state, config, |_| {}).await;
    let stats = net.stats().await;
    assert_eq!(stats["customers"][USER]["bytes_up"], 100_000);
    assert_eq!(stats["customers"][USER]["bytes_down"], down);
    assert_eq!(stats["agent_usage"][exit_id]["bytes_down"], down);

    // The operator resets one customer, then everything.
    let client = reqwest::Client::new();
    let admin = net.admin();
    let reset = |query: &str| {
        client
            .post(format!("http://{admin}/usage/reset{query}"))
            .header("content-type", "application/json")
            .send()
    };
    let answer = within("reset", reset("?customer=alice")).await.unwrap();
    assert_eq!(answer.status(), 200);
    let stats = net.stats().await;
    assert_eq!(stats["customers"][USER]["bytes_up"], 0);
    assert_eq!(stats["agent_usage"][exit_id]["bytes_up"], 100_000);
    let answer = within("reset", reset("?customer=nobody")).await.unwrap();
    assert_eq!(answer.status(), 404);
    let answer = within("reset", reset("")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(net.stats().await["agent_usage"]
        .as_object()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn metrics_parse_and_carry_the_series() {
    let (net, _agents) = limited(Limits::default(), &["127.0.0.2", "127.0.0.4"]).await;
    let target = http_target("127.0.0.1").await;
    let (head, _held) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    let (refused, _) = connect_as(net.proxy(), target, "-country-jp").await;
    refused_with(&refused, 502, "no_exit");
    let (refused, _) = connect(net.proxy(), &target.to_string(), Some((USER, "wrong"))).await;
    assert_eq!(refused.status, 407);

    let url = format!("http://{}/metrics", net.admin());
    let answer = within("GET /metrics", reqwest::get(url)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let text = within("body", answer.text()).await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && label.is_none_or(|(key, value)| s.labels.get(key) == Some(value))
            })
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"));
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map(|b| b.count).unwrap_or_default()
            }
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("exitpool_agents", None), 2.0);
    assert_eq!(
        value("exitpool_agents_by_country", Some(("country", "US"))),
        1.0
    );
    assert_eq!(
        value("exitpool_agents_by_country", Some(("country", "DE"))),
        1.0
    );
    assert_eq!(value("exitpool_live_streams", None), 1.0);
    assert_eq!(value("exitpool_sessions", None), 0.0);
    assert_eq!(value("exitpool_connections_total", None), 1.0);
    assert_eq!(
        value("exitpool_errors_total", Some(("code", "no_exit"))),
        1.0
    );
    assert_eq!(
        value("exitpool_errors_total", Some(("code", "auth_required"))),
        1.0
    );
    value("exitpool_bytes_up_total", None);
    value("exitpool_bytes_down_total", None);
    assert_eq!(value("exitpool_connect_seconds", None), 1.0);
    assert_eq!(value("exitpool_tunnel_handshake_seconds", None), 2.0);
}

#[tokio::test]
async fn the_admin_token_is_required_when_set_and_off_loopback() {
    let net = TestGateway::start_with(|config| {
        config.admin_token = Some(exitpool::protocol::Secret("adm1n-t0ken".into()));
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/stats", net.admin());
    let answer = within("no token", client.get(&url).send()).await.unwrap();
    assert_eq!(answer.status(), 401);
    let answer = within("wrong token", client.get(&url).bearer_auth("nope").send())
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let answer = within("token", client.get(&url).bearer_auth("adm1n-t0ken").send())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // Beyond loopback without a token: the gateway does not start.
    let state = tempfile::tempdir().unwrap();
    let mut config = TestGateway::config(state.path());
    config.admin = Some("0.0.0.0:0".parse().unwrap());
    match within("start", Gateway::start(config)).await {
        Err(StartError::AdminTokenRequired(_)) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started with an open admin port"),
    }
}

// ---- the binary -------------------------------------------------------------

const ALICE_PASSWORD: &str = "Qz7uLp9Xw2";
const BOB_PASSWORD: &str = "Vh4kRt8Mn1";
const WRONG_PASSWORD: &str = "Jx3bNc6Yd5";

fn gateway_binary() -> Launch {
    Launch::new(env!("CARGO_BIN_EXE_gateway"))
}

async fn hash(password: &str) -> String {
    let output = gateway_binary()
        .arg("hash-password")
        .input(format!("{password}\n"))
        .run(WAIT)
        .await
        .expect("gateway hash-password runs");
    assert!(output.status.success());
    output.stdout.trim().to_owned()
}

fn write_users(path: &Path, users: &[(&str, &str)]) {
    let text: String = users
        .iter()
        .map(|(name, hash)| {
            format!("[[customer]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Waits for a line of the gateway's output containing `needle` and returns it.
async fn line_with(gateway: &mut Process, needle: &str) -> String {
    gateway
        .line_with(needle, WAIT)
        .await
        .unwrap_or_else(|error| panic!("{error}\nall of it:\n{}", gateway.lines().join("\n")))
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_and_never_logs_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let tokens = dir.path().join("agent-tokens");
    let alice_hash = hash(ALICE_PASSWORD).await;
    write_users(&users, &[("alice", &alice_hash)]);
    std::fs::write(&tokens, format!("# test fleet\n{TOKEN}\n")).unwrap();
    let state = dir.path().join("state");
    let mut gateway = gateway_binary()
        .args(GATEWAY_ON_LOOPBACK)
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--users",
            users.to_str().unwrap(),
            "--agent-tokens",
            tokens.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "debug")
        .spawn()
        .expect("the gateway binary starts");
    // "gateway: customers on A, agents on B (UDP), pin P"
    let banner = GatewayBanner::parse(&line_with(&mut gateway, GATEWAY_READY).await)
        .expect("a well-formed ready line");
    let (proxy, tunnel, pin) = (banner.listen, banner.tunnel, banner.pin.as_str());
    let agent = exitpool::agent::Agent::builder(tunnel.to_string(), pin.parse().unwrap(), TOKEN)
        .bind("127.0.0.2".parse().unwrap())
        .allow_private(true)
        .spawn()
        .unwrap();
    within("agent joins", agent.connected()).await;
    let target = http_target("127.0.0.1").await;
    let target_text = target.to_string();

    // Alice with targeting parameters on both halves, and a wrong password.
    let password = format!("{ALICE_PASSWORD}-sesstime-5");
    let (head, mut stream) =
        connect(proxy, &target_text, Some(("alice-session-s1", &password))).await;
    assert_eq!(head.status, 200, "{head:?}");
    let _ = get_in_tunnel(&mut stream, "/ip").await;
    drop(stream);
    line_with(&mut gateway, "\"access\"").await;
    let (head, _) = connect(proxy, &target_text, Some(("alice", WRONG_PASSWORD))).await;
    assert_eq!(head.status, 407);
    let (head, _) = connect(proxy, &target_text, Some(("bob", BOB_PASSWORD))).await;
    assert_eq!(head.status, 407);

    // SIGHUP with bob added: bob gets in.
    write_users(
        &users,
        &[("alice", &alice_hash), ("bob", &hash(BOB_PASSWORD).await)],
    );
    gateway.signal(Signal::Hup).unwrap();
    line_with(&mut gateway, "accounts reloaded").await;
    let (head, _) = connect(proxy, &target_text, Some(("bob", BOB_PASSWORD))).await;
    assert_eq!(head.status, 200, "{head:?}");

    // An invalid file is refused, the running accounts stay, the log says why.
    std::fs::write(&users, "[[customer]]\nname = \"carol\"\npasword = \"x\"\n").unwrap();
    gateway.signal(Signal::Hup).unwrap();
    let why = line_with(&mut gateway, "reload failed").await;
    assert!(why.contains("pasword"), "{why}");
    let (head, _) = connect(proxy, &target_text, Some(("bob", BOB_PASSWORD))).await;
    assert_eq!(head.status, 200, "{head:?}");

    // Stopped with SIGTERM, it exits cleanly; then every line it wrote is read.
    let status = gateway.stop(WAIT).await.expect("the gateway stops");
    assert!(status.success(), "{status:?}");
    let lines = gateway.lines();
    let _ = within("agent stops", agent.shutdown()).await;
    let everything = lines.join("\n");
    use base64::Engine;
    for secret in [ALICE_PASSWORD, BOB_PASSWORD, WRONG_PASSWORD] {
        assert!(!everything.contains(secret), "a password reached the log");
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"));
        assert!(
            !everything.contains(&encoded),
            "credentials reached the log"
        );
    }
    // Log lines are JSON (the banner on stdout is not), and the access line is
    // there with the base user name.
    let access = lines
        .iter()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON log line"))
        .find(|line| line["fields"]["message"] == "access")
        .expect("an access line");
    assert_eq!(access["fields"]["user"], "alice");
    assert_eq!(access["fields"]["target"], target_text);
}

#[tokio::test]
async fn the_binary_refuses_an_open_admin_port_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = gateway_binary()
        .args(["--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
        .args([
            "--admin",
            "0.0.0.0:0",
            "--user",
            "a:b",
            "--agent-token",
            TOKEN,
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .env_remove("EXITPOOL_ADMIN_TOKEN")
        .run(WAIT)
        .await
        .expect("gateway exits");
    assert!(!output.status.success());
    let stderr = &output.stderr;
    assert!(stderr.contains("--admin-token"), "{stderr}");
}

#[tokio::test]
async fn hash_password_output_verifies() {
    let hash = hash("S0meSecret").await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let users = Users::new([Customer::hashed("dave", &hash).unwrap()]);
    assert!(users.authenticate("dave", "S0meSecret").is_some());
    assert!(users.authenticate("dave", "other").is_none());
}

over_both_transports! {
/// The gateway closes the agent's tunnel with `REJECTED` ("agent token
/// revoked"); on either transport the agent takes it as a failure to retry,
/// is refused on its way back, and stops.
async fn revoking_an_agent_token_on_reload_disconnects_its_agents(transport) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("agent-tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let file = tokens.clone();
    let net = TestGateway::start_with(move |config| {
        config.agent_tokens = exitpool::gateway::auth::AgentTokens::default();
        config.agent_tokens_file = Some(file);
    })
    .await
    .over(transport);
    let mut agent = net.agent("127.0.0.2").await;
    std::fs::write(
        &tokens,
        format!("{}\n", exitpool::gateway::auth::generate_token()),
    )
    .unwrap();
    net.gateway.reload().unwrap();
    within(
        "revoked agent leaves",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
    // Trying to come back, it is rejected and stops with a clear error.
    let result = within("agent stops", agent.finished()).await;
    assert!(
        matches!(result, Err(exitpool::agent::AgentError::BadToken(_))),
        "{result:?}"
    );
}
}
