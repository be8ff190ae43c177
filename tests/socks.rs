//! Issue: SOCKS5 (RFC 1928 + RFC 1929 username/password) on the customer port,
//! end to end: real gateway, agents on loopback addresses, real clients (reqwest,
//! curl) and a raw socket client for every refusal and its reply code.

mod common;

use common::targets::{closed_port, echo_target, http_target};
use common::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reqwest client that goes through the gateway's SOCKS5 port as `user`.
/// `scheme` is `socks5h` (the exit resolves names) or `socks5` (the client does).
/// No pooling, so every request is a new proxied connection.
fn socks_client(net: &TestGateway, scheme: &str, user: &str, password: &str) -> reqwest::Client {
    let proxy = reqwest::Proxy::all(format!("{scheme}://{user}:{password}@{}", net.proxy()))
        .expect("proxy URL");
    reqwest::Client::builder()
        .proxy(proxy)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client builds")
}

/// `GET url` through `client`, returning the body.
async fn get(client: &reqwest::Client, url: &str) -> String {
    let response = within("GET through SOCKS5", client.get(url).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    assert_eq!(response.status(), 200);
    within("body", response.text()).await.unwrap()
}

/// Greeting offering `methods`; returns the stream and the method the gateway chose.
async fn greet(proxy: SocketAddr, methods: &[u8]) -> (TcpStream, u8) {
    let mut stream = within("connect to proxy", TcpStream::connect(proxy))
        .await
        .unwrap();
    let mut greeting = vec![0x05, methods.len() as u8];
    greeting.extend_from_slice(methods);
    within("send greeting", stream.write_all(&greeting))
        .await
        .unwrap();
    let mut answer = [0u8; 2];
    within("method selection", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer[0], 0x05, "method selection version");
    (stream, answer[1])
}

/// Greeting plus RFC 1929 login; returns the stream and the auth status.
async fn login(proxy: SocketAddr, user: &str, password: &str) -> (TcpStream, u8) {
    let (mut stream, method) = greet(proxy, &[0x00, 0x02]).await;
    assert_eq!(method, 0x02, "username/password chosen");
    within(
        "send credentials",
        stream.write_all(&auth_message(user, password)),
    )
    .await
    .unwrap();
    let mut status = [0u8; 2];
    within("auth status", stream.read_exact(&mut status))
        .await
        .unwrap();
    assert_eq!(status[0], 0x01, "auth status version");
    (stream, status[1])
}

fn auth_message(user: &str, password: &str) -> Vec<u8> {
    let mut out = vec![0x01, user.len() as u8];
    out.extend_from_slice(user.as_bytes());
    out.push(password.len() as u8);
    out.extend_from_slice(password.as_bytes());
    out
}

/// `VER CMD RSV` followed by `address` (ATYP and address bytes) and `port`.
fn request(command: u8, address: &[u8], port: u16) -> Vec<u8> {
    let mut out = vec![0x05, command, 0x00];
    out.extend_from_slice(address);
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// ATYP and address bytes for an IP.
fn ip_address(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => [&[0x01][..], &ip.octets()].concat(),
        IpAddr::V6(ip) => [&[0x04][..], &ip.octets()].concat(),
    }
}

const CONNECT: u8 = 0x01;

/// Reads a request reply: its code and bound address.
async fn read_reply(stream: &mut TcpStream) -> (u8, SocketAddr) {
    let mut head = [0u8; 4];
    within("reply head", stream.read_exact(&mut head))
        .await
        .expect("a reply, not a close");
    assert_eq!(head[0], 0x05, "reply version");
    assert_eq!(head[2], 0x00, "reply reserved byte");
    let ip = match head[3] {
        0x01 => {
            let mut octets = [0u8; 4];
            within("bound IPv4", stream.read_exact(&mut octets))
                .await
                .unwrap();
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        0x04 => {
            let mut octets = [0u8; 16];
            within("bound IPv6", stream.read_exact(&mut octets))
                .await
                .unwrap();
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        other => panic!("reply address type {other:#04x}"),
    };
    let port = within("bound port", stream.read_u16()).await.unwrap();
    (head[1], SocketAddr::new(ip, port))
}

/// Logs in as `user`, sends `message` as the request and reads the reply code.
async fn request_as(proxy: SocketAddr, user: &str, message: &[u8]) -> (TcpStream, u8) {
    let (mut stream, status) = login(proxy, user, PASSWORD).await;
    assert_eq!(status, 0x00, "login as {user}");
    within("send request", stream.write_all(message))
        .await
        .unwrap();
    let (code, _) = read_reply(&mut stream).await;
    (stream, code)
}

/// After a refusal the gateway closes: the next read is EOF (or a reset).
async fn assert_closed(mut stream: TcpStream) {
    let mut byte = [0u8; 1];
    let read = within("close after refusal", stream.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
}

#[tokio::test]
async fn socks5h_reaches_a_target_the_exit_resolves() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    let client = socks_client(&net, "socks5h", USER, PASSWORD);
    // `localhost` travels as a name (ATYP 0x03) and is resolved by the exit.
    let url = format!("http://localhost:{}/ip", target.port());
    assert_eq!(get(&client, &url).await, "127.0.0.2");
    let url = format!("http://127.0.0.1:{}/ip", target.port());
    assert_eq!(get(&client, &url).await, "127.0.0.2");
}

#[tokio::test]
async fn socks5_with_a_client_resolved_ipv4_reaches_the_target() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    let client = socks_client(&net, "socks5", USER, PASSWORD);
    let url = format!("http://127.0.0.1:{}/ip", target.port());
    assert_eq!(get(&client, &url).await, "127.0.0.2");
}

#[tokio::test]
async fn country_targeting_in_the_user_or_password_picks_that_country() {
    let net = TestGateway::start().await;
    let _us = net.agent("127.0.0.2").await;
    let _de = net.agent("127.0.0.4").await;
    let target = http_target("127.0.0.1").await;
    let url = format!("http://127.0.0.1:{}/ip", target.port());
    let by_user = socks_client(&net, "socks5h", "alice-country-de", PASSWORD);
    let by_password = socks_client(&net, "socks5h", USER, "s3cret-country-DE");
    for _ in 0..4 {
        assert_eq!(get(&by_user, &url).await, "127.0.0.4");
        assert_eq!(get(&by_password, &url).await, "127.0.0.4");
    }
    let us = socks_client(&net, "socks5h", "alice-country-us", PASSWORD);
    for _ in 0..4 {
        assert_eq!(get(&us, &url).await, "127.0.0.2");
    }
}

#[tokio::test]
async fn a_session_keeps_one_exit_across_connections() {
    let net = TestGateway::start().await;
    let _agents = [
        net.agent("127.0.0.2").await,
        net.agent("127.0.0.3").await,
        net.agent("127.0.0.4").await,
    ];
    let target = http_target("127.0.0.1").await;
    let url = format!("http://127.0.0.1:{}/ip", target.port());
    let mut seen = Vec::new();
    for _ in 0..6 {
        let client = socks_client(&net, "socks5h", "alice-session-s1", PASSWORD);
        seen.push(get(&client, &url).await);
    }
    assert!(seen.iter().all(|ip| *ip == seen[0]), "{seen:?}");
}

#[tokio::test]
async fn an_ipv6_target_is_reached_with_address_type_4() {
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(listener) => listener,
        Err(error) => {
            println!("skipped: cannot bind [::1] ({error})");
            return;
        }
    };
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
    });
    let net = TestGateway::start().await;
    // An agent bound to 127.0.0.x only dials IPv4, so this one binds nothing.
    let agent = exitpool::agent::Agent::builder(
        net.gateway.tunnel_addr().to_string(),
        net.gateway.pin().parse().unwrap(),
        common::TOKEN,
    )
    .allow_private(true)
    .spawn()
    .expect("agent spawns");
    within("agent connects", agent.connected()).await;
    let (mut stream, status) = login(net.proxy(), USER, PASSWORD).await;
    assert_eq!(status, 0x00);
    let message = request(CONNECT, &ip_address(target.ip()), target.port());
    within("send request", stream.write_all(&message))
        .await
        .unwrap();
    let (code, bound) = read_reply(&mut stream).await;
    assert_eq!(code, 0x00);
    assert_eq!(bound, target, "BND.ADDR is the address the exit dialled");
    within("send", stream.write_all(b"ping")).await.unwrap();
    let mut echoed = [0u8; 4];
    within("echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"ping");
}

#[tokio::test]
async fn bytes_pipelined_behind_the_request_reach_the_target() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let mut stream = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    // Greeting, login, request and payload in one write, before any answer.
    let mut all = vec![0x05, 0x01, 0x02];
    all.extend(auth_message(USER, PASSWORD));
    all.extend(request(CONNECT, &ip_address(target.ip()), target.port()));
    all.extend_from_slice(b"hello");
    within("send everything", stream.write_all(&all))
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answers = [0u8; 4];
    within("method and auth", stream.read_exact(&mut answers))
        .await
        .unwrap();
    assert_eq!(answers, [0x05, 0x02, 0x01, 0x00]);
    let (code, bound) = read_reply(&mut stream).await;
    assert_eq!(code, 0x00);
    assert_eq!(bound, target);
    let mut rest = String::new();
    within("echo", stream.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(
        rest, "hello\n5 bytes\n",
        "every byte after the request arrived"
    );
}

#[tokio::test]
async fn curl_socks5_hostname_reaches_the_target() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    let proxy = net.proxy().to_string();
    let url = format!("http://127.0.0.1:{}/ip", target.port());
    let output = within(
        "curl",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "15", "--socks5-hostname", &proxy])
                .args(["--proxy-user", &format!("{USER}:{PASSWORD}"), &url])
                .output()
        }),
    )
    .await
    .unwrap();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: curl is not on PATH");
            return;
        }
        Err(error) => panic!("curl: {error}"),
    };
    assert!(output.status.success(), "curl failed: {output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "127.0.0.2");
}

#[tokio::test]
async fn a_wrong_password_gets_auth_status_1() {
    let net = TestGateway::start().await;
    let (stream, status) = login(net.proxy(), USER, "wrong").await;
    assert_eq!(status, 0x01);
    assert_closed(stream).await;
    let (stream, status) = login(net.proxy(), "mallory", PASSWORD).await;
    assert_eq!(status, 0x01);
    assert_closed(stream).await;
}

#[tokio::test]
async fn bad_targeting_gets_auth_status_2() {
    let net = TestGateway::start().await;
    let (stream, status) = login(net.proxy(), "alice-contry-us", PASSWORD).await;
    assert_eq!(status, 0x02);
    assert_closed(stream).await;
}

#[tokio::test]
async fn a_greeting_without_username_password_gets_no_acceptable_method() {
    let net = TestGateway::start().await;
    let (stream, method) = greet(net.proxy(), &[0x00]).await;
    assert_eq!(method, 0xFF);
    assert_closed(stream).await;
}

#[tokio::test]
async fn bind_and_unknown_commands_are_not_supported() {
    // UDP ASSOCIATE (0x03) is served: tests/udp.rs.
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    for command in [0x02, 0x09] {
        let message = request(command, &ip_address(target.ip()), target.port());
        let (stream, code) = request_as(net.proxy(), USER, &message).await;
        assert_eq!(code, 0x07, "command {command:#04x}");
        assert_closed(stream).await;
    }
}

#[tokio::test]
async fn an_unknown_address_type_is_not_supported() {
    let net = TestGateway::start().await;
    let (stream, code) = request_as(net.proxy(), USER, &[0x05, CONNECT, 0x00, 0x09]).await;
    assert_eq!(code, 0x08);
    assert_closed(stream).await;
}

#[tokio::test]
async fn a_closed_target_port_is_connection_refused() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = closed_port().await;
    let message = request(CONNECT, &ip_address(target.ip()), target.port());
    let (stream, code) = request_as(net.proxy(), USER, &message).await;
    assert_eq!(code, 0x05);
    assert_closed(stream).await;
}

#[tokio::test]
async fn no_exit_in_the_country_is_network_unreachable() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let message = request(CONNECT, &ip_address(target.ip()), target.port());
    let (stream, code) = request_as(net.proxy(), "alice-country-fr", &message).await;
    assert_eq!(code, 0x03);
    assert_closed(stream).await;
}

#[tokio::test]
async fn an_exit_policy_refusal_is_not_allowed_by_ruleset() {
    let net = TestGateway::start().await;
    let _agent = net.strict_agent("127.0.0.2").await;
    let target = echo_target().await;
    let message = request(CONNECT, &ip_address(target.ip()), target.port());
    let (stream, code) = request_as(net.proxy(), USER, &message).await;
    assert_eq!(code, 0x02);
    assert_closed(stream).await;
}

#[tokio::test]
async fn a_slow_handshake_is_closed_at_the_head_timeout() {
    let net = TestGateway::start_with(|c| c.head_timeout = Duration::from_millis(300)).await;
    let mut stream = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let started = Instant::now();
    within("send one byte", stream.write_all(&[0x05]))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = within("closed at the deadline", stream.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}
