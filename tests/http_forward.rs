//! Issue: plain HTTP proxying on the customer port. Absolute-form requests
//! (`GET http://host/path`) go through an exit, each request routed on its own, with
//! hop-by-hop headers and the customer's credentials stripped. Real gateway, real
//! agents, real clients (reqwest, curl, raw sockets).

mod common;

use bytes::Bytes;
use common::targets::{http_target, pattern};
use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reqwest client that sends `http://` URLs to the gateway as `user`.
fn client(proxy: SocketAddr, user: &str) -> reqwest::Client {
    let proxy = reqwest::Proxy::http(format!("http://{proxy}"))
        .unwrap()
        .basic_auth(user, PASSWORD);
    reqwest::Client::builder().proxy(proxy).build().unwrap()
}

/// What most tests here start from: a gateway, exits on 127.0.0.x (placed in
/// the US by the test GeoIP file) and an HTTP target on 127.0.0.1. It derefs to
/// the gateway; the exits run as long as it lives.
struct Forwarding {
    net: TestGateway,
    _exits: Vec<exitpool::agent::AgentHandle>,
    target: SocketAddr,
}

impl Forwarding {
    /// A gateway with an exit on each address of `exits`, and the target.
    async fn start(exits: &[&str]) -> Forwarding {
        let net = TestGateway::start().await;
        let mut agents = Vec::new();
        for ip in exits {
            agents.push(net.agent(ip).await);
        }
        let target = http_target("127.0.0.1").await;
        Forwarding {
            net,
            _exits: agents,
            target,
        }
    }

    /// One exit, on 127.0.0.2.
    async fn one_exit() -> Forwarding {
        Forwarding::start(&["127.0.0.2"]).await
    }
}

impl std::ops::Deref for Forwarding {
    type Target = TestGateway;

    fn deref(&self) -> &TestGateway {
        &self.net
    }
}

/// Sends `request` and returns the answer's head, within the tests' bound.
async fn send(what: &str, request: reqwest::RequestBuilder) -> reqwest::Response {
    within(what, request.send()).await.unwrap()
}

/// `GET url` through the gateway at `proxy` as the test customer.
async fn get(proxy: SocketAddr, url: String) -> reqwest::Response {
    send(&format!("GET {url}"), client(proxy, USER).get(url)).await
}

/// Sends `GET http://target/path` on an open connection and reads the whole answer
/// (the target's bodies here all carry `Content-Length`).
async fn get_absolute(stream: &mut TcpStream, target: SocketAddr, path: &str) -> (Head, String) {
    let head = absolute_get(
        stream,
        &format!("http://{target}{path}"),
        &target.to_string(),
    )
    .await;
    let length: usize = head
        .header("content-length")
        .unwrap_or_else(|| panic!("no content-length in {head:?}"))
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    within("read body", stream.read_exact(&mut body))
        .await
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn a_plain_get_goes_out_through_the_exit() {
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let response = get(net.proxy(), format!("http://{target}/ip")).await;
    assert_eq!(response.status(), 200);
    let exit = response.headers().get("x-exitpool-exit").unwrap();
    assert_eq!(exit.len(), 16);
    assert_eq!(response.headers()["x-exitpool-country"], "US");
    assert_eq!(within("body", response.text()).await.unwrap(), "127.0.0.2");
}

#[tokio::test]
async fn every_request_on_one_kept_alive_connection_is_routed_anew() {
    let net = Forwarding::start(&["127.0.0.2", "127.0.0.3"]).await;
    let target = net.target;
    let mut stream = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let mut exits = HashSet::new();
    for _ in 0..20 {
        let (head, body) = get_absolute(&mut stream, target, "/ip").await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_ne!(head.header("connection"), Some("close"));
        exits.insert(head.header("x-exitpool-exit").unwrap().to_owned());
        seen.insert(body);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        HashSet::from(["127.0.0.2".to_owned(), "127.0.0.3".to_owned()]),
        "both exits served requests on the same customer connection"
    );
    assert_eq!(exits.len(), 2);
}

#[tokio::test]
async fn a_session_keeps_its_exit_over_plain_http() {
    let net = Forwarding::start(&["127.0.0.2", "127.0.0.3"]).await;
    let target = net.target;
    let client = client(net.proxy(), &format!("{USER}-session-s1"));
    let mut seen = HashSet::new();
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        let response = send("GET /ip", client.get(format!("http://{target}/ip"))).await;
        assert_eq!(response.status(), 200);
        let session = response.headers()["x-exitpool-session"].to_str().unwrap();
        outcomes.push(session.to_owned());
        seen.insert(within("body", response.text()).await.unwrap());
    }
    assert_eq!(seen.len(), 1, "one exit for the whole session: {seen:?}");
    assert_eq!(outcomes[0], "new");
    assert!(outcomes[1..].iter().all(|outcome| outcome == "kept"));
}

#[tokio::test]
async fn the_target_sees_nothing_about_the_customer() {
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let response = send(
        "GET /headers",
        client(net.proxy(), USER)
            .get(format!("http://{target}/headers"))
            .header("Connection", "x-hop")
            .header("X-Hop", "1")
            .header("Proxy-Connection", "keep-alive")
            .header("X-Kept", "yes"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let seen = within("body", response.text()).await.unwrap();
    let names: Vec<&str> = seen
        .lines()
        .map(|line| line.split_once(':').unwrap().0)
        .collect();
    for hidden in [
        "proxy-authorization",
        "proxy-connection",
        "x-forwarded-for",
        "forwarded",
        "via",
        "x-hop",
        "x-real-ip",
    ] {
        assert!(!names.contains(&hidden), "the target saw {hidden}: {seen}");
    }
    assert!(
        seen.contains(&format!("host: {target}")),
        "Host kept: {seen}"
    );
    assert!(
        seen.contains("x-kept: yes"),
        "end-to-end headers kept: {seen}"
    );
}

/// A body of unknown length (so it is sent chunked), in uneven pieces.
fn streamed(data: Vec<u8>) -> reqwest::Body {
    struct Chunks(Vec<Bytes>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(self.0.remove(0)))
            })
        }
    }
    let chunks = data.chunks(40_000).map(Bytes::copy_from_slice).collect();
    reqwest::Body::wrap_stream(Chunks(chunks))
}

#[tokio::test]
async fn chunked_bodies_stream_through_both_ways() {
    const UP: usize = 3_000_000;
    const DOWN: usize = 5_000_000;
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let client = client(net.proxy(), USER);

    let echoed = send(
        "chunked POST",
        client
            .post(format!("http://{target}/echo"))
            .body(streamed(pattern(UP))),
    )
    .await;
    assert_eq!(echoed.status(), 200);
    let body = within("echo body", echoed.bytes()).await.unwrap();
    assert!(
        body.len() == UP && body[..] == pattern(UP)[..],
        "upload intact"
    );

    let download = send(
        "chunked GET",
        client.get(format!("http://{target}/bytes/{DOWN}")),
    )
    .await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["transfer-encoding"], "chunked");
    let body = within("download body", download.bytes()).await.unwrap();
    assert!(
        body.len() == DOWN && body[..] == pattern(DOWN)[..],
        "download intact"
    );

    let agent = &net.gateway.directory().agents()[0];
    let down = agent.bytes_down.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        down as usize >= UP + DOWN,
        "bytes from the target counted: {down}"
    );
}

#[tokio::test]
async fn https_in_absolute_form_is_told_to_use_connect() {
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let mut stream = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let head = absolute_get(
        &mut stream,
        &format!("https://{target}/ip"),
        &target.to_string(),
    )
    .await;
    assert_eq!(head.status, 400);
    assert_eq!(head.header("x-exitpool-error"), Some("bad_request"));
    assert!(
        head.header("proxy-status").unwrap().contains("CONNECT"),
        "{head:?}"
    );
    assert_eq!(head.header("connection"), Some("close"));
}

#[tokio::test]
async fn no_credentials_get_407() {
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let proxy = reqwest::Proxy::http(format!("http://{}", net.proxy())).unwrap();
    let client = reqwest::Client::builder().proxy(proxy).build().unwrap();
    let response = send("GET", client.get(format!("http://{target}/ip"))).await;
    assert_eq!(response.status(), 407);
    assert_eq!(
        response.headers()["proxy-authenticate"],
        "Basic realm=\"exitpool\""
    );
    assert_eq!(response.headers()["x-exitpool-error"], "auth_required");
}

#[tokio::test]
async fn a_closed_target_is_502_connection_refused() {
    let net = Forwarding::one_exit().await;
    let closed = common::targets::closed_port().await;
    let response = get(net.proxy(), format!("http://{closed}/")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-exitpool-error"], "connection_refused");
}

#[tokio::test]
async fn curl_fetches_plain_http_through_the_gateway() {
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let proxy = format!("http://{USER}:{PASSWORD}@{}", net.proxy());
    let url = format!("http://{target}/ip");
    let output = within(
        "curl",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "15", "-x"])
                .args([&proxy, &url])
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .output()
        }),
    )
    .await
    .unwrap();
    let Ok(output) = output else {
        eprintln!("curl is not installed; skipping");
        return;
    };
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "127.0.0.2");
}

#[tokio::test]
async fn head_requests_keep_the_targets_length_and_have_no_body() {
    let net = Forwarding::one_exit().await;
    let target = net.target;
    let response = send(
        "HEAD /ip",
        client(net.proxy(), USER).head(format!("http://{target}/ip")),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        "9",
        "len of 127.0.0.2"
    );
    assert!(within("body", response.bytes()).await.unwrap().is_empty());
}

/// A target that reads a request head and answers with `reply`, then closes.
async fn scripted_target(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(reply).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_target_closing_before_its_answer_is_502() {
    let net = Forwarding::one_exit().await;
    let target = scripted_target(b"").await;
    let response = get(net.proxy(), format!("http://{target}/")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-exitpool-error"], "exit_error");
    assert_eq!(response.headers()["connection"], "close");
}

#[tokio::test]
async fn a_target_closing_mid_body_aborts_the_customers_response() {
    let net = Forwarding::one_exit().await;
    let target = scripted_target(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort").await;
    let response = get(net.proxy(), format!("http://{target}/")).await;
    assert_eq!(response.status(), 200);
    let body = within("truncated body", response.bytes()).await;
    assert!(
        body.is_err(),
        "a cut-off body must not look complete: {body:?}"
    );
}

/// Reads `response`'s body to its end; returns the bytes received and whether
/// the body ended cleanly.
async fn drain(mut response: reqwest::Response) -> (usize, bool) {
    let mut received = 0;
    loop {
        match within("body chunk", response.chunk()).await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => return (received, true),
            Err(_) => return (received, false),
        }
    }
}

/// After a cut, the account is over its quota: the next request is refused with
/// the quota's code, and usage counted at least the quota.
async fn assert_quota_used_up(net: &TestGateway, target: SocketAddr, quota: u64) {
    let refused = get(net.proxy(), format!("http://{target}/ip")).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["x-exitpool-error"], "quota_exhausted");
    let stats = net.stats().await;
    let customer = &stats["customers"][USER];
    let used = customer["bytes_up"].as_u64().unwrap() + customer["bytes_down"].as_u64().unwrap();
    assert!(used >= quota, "usage counted {used} of a {quota} quota");
}

/// The quota for the cut tests, and a body that would take about four seconds at
/// the paced rate: the quota runs out in the first half second, and the cut must
/// come at the next per-second fold, long before the body ends.
const QUOTA: u64 = 1_000_000;
const PACED_BODY: usize = 4 * common::targets::DRIP_RATE;

#[tokio::test]
async fn a_plain_http_download_is_cut_within_a_second_of_the_quota() {
    let (net, _agent) = TestGateway::with_quota(QUOTA).await;
    let target = http_target("127.0.0.1").await;
    let response = get(net.proxy(), format!("http://{target}/drip/{PACED_BODY}")).await;
    assert_eq!(response.status(), 200);
    let (received, clean) = drain(response).await;
    assert!(!clean, "the download ran to its end ({received} bytes)");
    // Quota at ~0.5 s, cut by the fold at ~1 s: about 2 MB of the 8 MB arrive.
    // Half the body means the cut came over a second late.
    assert!(
        received < PACED_BODY / 2,
        "{received} of {PACED_BODY} bytes arrived before the cut"
    );
    assert_quota_used_up(&net, target, QUOTA).await;
}

#[tokio::test]
async fn a_plain_http_upload_is_cut_within_a_second_of_the_quota() {
    let (net, _agent) = TestGateway::with_quota(QUOTA).await;
    let target = http_target("127.0.0.1").await;
    let pieces: Vec<Bytes> = pattern(PACED_BODY)
        .chunks(common::targets::DRIP_CHUNK)
        .map(Bytes::copy_from_slice)
        .collect();
    let sent = client(net.proxy(), USER)
        .post(format!("http://{target}/echo"))
        .body(reqwest::Body::wrap_stream(common::targets::paced(pieces)))
        .send();
    // The echo answers at once and streams back what arrives, so the cut lands
    // either before the answer (an error) or in its body (truncated).
    let echoed = match within("paced POST", sent).await {
        Ok(response) if response.status() == 200 => {
            let (received, clean) = drain(response).await;
            assert!(!clean, "the upload ran to its end ({received} bytes back)");
            received
        }
        Ok(refused) => {
            assert_eq!(refused.headers()["x-exitpool-error"], "quota_exhausted");
            0
        }
        Err(_) => 0,
    };
    assert!(
        echoed < PACED_BODY / 2,
        "{echoed} of {PACED_BODY} bytes came back before the cut"
    );
    assert_quota_used_up(&net, target, QUOTA).await;
}
