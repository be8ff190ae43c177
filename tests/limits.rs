//! Issue: a hardened customer port for HTTP. Hostile request heads over raw
//! sockets: each limit in `gateway/src/http.rs`'s table gets the status it
//! documents and the connection is closed afterwards; slow heads are cut off at
//! `head_timeout`; a refused request is the last one served on its connection.
//!
//! Oversized heads are sent so the gateway has read every byte before it closes
//! (an unread byte would turn its FIN into a reset that can destroy the answer
//! before the test reads it); see `a_head_of_17_kib_is_431`.

mod common;

use common::targets::http_target;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection to the customer port and writes `bytes`.
async fn send_raw(proxy: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = within("connect", TcpStream::connect(proxy)).await.unwrap();
    within("write", stream.write_all(bytes)).await.unwrap();
    stream
}

/// Reads until the gateway closes; a reset counts as closed too. Returns what
/// arrived before the end.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    match within("connection closes", stream.read_to_end(&mut rest)).await {
        Ok(_) => rest,
        Err(error) => {
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
            rest
        }
    }
}

/// Reads the answer's head, then asserts the connection closes.
async fn answer_then_close(stream: &mut TcpStream) -> (Head, String) {
    let head = read_head(stream).await;
    let rest = read_until_closed(stream).await;
    (head, String::from_utf8_lossy(&rest).into_owned())
}

/// A request head for `target` with `path`, `extra` header lines and no credentials.
fn head_with(path: &str, extra: &[String]) -> String {
    let mut head = format!("GET http://127.0.0.1:1{path} HTTP/1.1\r\nHost: 127.0.0.1:1\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

#[tokio::test]
async fn a_request_line_of_9_kib_is_414() {
    let net = TestGateway::start().await;
    let path = format!("/{}", "a".repeat(9 * 1024));
    let mut stream = send_raw(net.proxy(), head_with(&path, &[]).as_bytes()).await;
    let (head, body) = answer_then_close(&mut stream).await;
    assert_eq!(head.status, 414, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("uri_too_long"));
    assert_eq!(head.header("connection"), Some("close"));
    assert!(body.contains("\"status\":414"), "{body}");
}

#[tokio::test]
async fn heads_just_inside_the_limits_are_served() {
    let net = TestGateway::start().await;
    // An 8,000-byte request line and 100 header lines (Host plus 99).
    let path = format!("/{}", "a".repeat(8000 - 50));
    let extra: Vec<String> = (1..100).map(|i| format!("X-Header-{i}: v")).collect();
    let mut stream = send_raw(net.proxy(), head_with(&path, &extra).as_bytes()).await;
    let (head, _) = answer_then_close(&mut stream).await;
    assert_eq!(
        head.status, 407,
        "the gateway's own answer, not a limit: {head:?}"
    );
}

#[tokio::test]
async fn a_hundred_and_one_header_lines_are_431() {
    let net = TestGateway::start().await;
    let extra: Vec<String> = (1..101).map(|i| format!("X-Header-{i}: v")).collect();
    let mut stream = send_raw(net.proxy(), head_with("/", &extra).as_bytes()).await;
    let (head, _) = answer_then_close(&mut stream).await;
    assert_eq!(head.status, 431, "{head:?}");
}

#[tokio::test]
async fn a_head_of_17_kib_is_431() {
    let net = TestGateway::start().await;
    let full = head_with("/", &[format!("X-Big: {}", "b".repeat(17 * 1024))]);
    // The gateway stops reading at 16 KiB and answers; sending exactly that much
    // first keeps the answer from being lost to a reset (see the file header).
    let (first, rest) = full.as_bytes().split_at(16 * 1024);
    let mut stream = send_raw(net.proxy(), first).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 431, "{head:?}");
    // The rest of the head is never read: the connection is closed.
    let _ = stream.write_all(rest).await;
    let after = read_until_closed(&mut stream).await;
    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
}

#[tokio::test]
async fn garbage_is_400_then_closed() {
    let net = TestGateway::start().await;
    let mut stream = send_raw(net.proxy(), b"\x00\x01\x02\x03 not http at all\r\n\r\n").await;
    let (head, rest) = answer_then_close(&mut stream).await;
    assert_eq!(head.status, 400, "{head:?}");
    assert!(rest.is_empty(), "{rest}");
}

#[tokio::test]
async fn a_slow_head_is_cut_off_at_head_timeout() {
    let timeout = Duration::from_millis(300);
    let net = TestGateway::start_with(|config| config.head_timeout = timeout).await;
    let started = Instant::now();
    let mut stream = send_raw(
        net.proxy(),
        b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    // Trickle a byte every 50 ms: progress must not extend the deadline.
    let (mut read, mut write) = stream.split();
    let trickle = async {
        while write.write_all(b"X").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let closed = async {
        let mut answer = Vec::new();
        let result = read.read_to_end(&mut answer).await;
        (result, answer)
    };
    let (result, answer) = within("slow head cut off", async {
        tokio::select! {
            closed = closed => closed,
            () = trickle => panic!("writes failed before the read saw the close"),
        }
    })
    .await;
    let elapsed = started.elapsed();
    // hyper closes without an answer; a 408 would be acceptable too.
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    if let Err(error) = result {
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    }
    assert!(
        elapsed >= timeout,
        "closed after {elapsed:?}, before the deadline"
    );
    assert!(elapsed < timeout * 5, "closed only after {elapsed:?}");
}

#[tokio::test]
async fn nothing_is_served_after_a_refused_connect() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await.to_string();
    let (head, mut stream) = connect(net.proxy(), &target, None).await;
    assert_eq!(head.status, 407);
    assert_eq!(head.header("connection"), Some("close"));
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; length];
    within("407 body", stream.read_exact(&mut body))
        .await
        .unwrap();
    // A well-formed, authorised second request on the same connection.
    let second = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(USER, PASSWORD)
    );
    let _ = stream.write_all(second.as_bytes()).await;
    let after = read_until_closed(&mut stream).await;
    assert!(
        after.is_empty(),
        "a second answer arrived: {:?}",
        String::from_utf8_lossy(&after)
    );
}

#[tokio::test]
async fn unauthenticated_connections_per_address_are_capped_with_a_clear_answer() {
    let net = TestGateway::start_with(|config| config.max_unauthenticated_per_ip = 2).await;
    let _agent = net.agent("127.0.0.2").await;
    let target = common::targets::http_target("127.0.0.1").await;
    // Two connections that have not authenticated hold this address's slots.
    let _idle = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let mut first = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let third = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let answer = read_raw(third).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("x-exitpool-error: too_many_unauthenticated"),
        "{answer}"
    );
    assert!(answer.contains("retry-after: 1"), "{answer}");
    // A SOCKS5 client over the cap hears "no acceptable method".
    let mut socks = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    socks.write_all(&[5, 1, 2]).await.unwrap();
    let mut reply = [0u8; 2];
    within("socks refusal", socks.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, [5, 0xFF]);
    // Authenticating frees the slot: once `first` is through, a new connection
    // is served (and asked for credentials) instead of refused.
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        basic(USER, PASSWORD)
    );
    first.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut first).await.status, 200);
    let (head, _) = connect(net.proxy(), &target.to_string(), None).await;
    assert_eq!(head.status, 407);
}

async fn read_raw(mut stream: TcpStream) -> String {
    stream
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        .await
        .ok();
    let mut answer = Vec::new();
    let _ = within("refusal", stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_flood_of_bad_credentials_is_rate_limited_per_address() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await.to_string();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (head, _) = connect(net.proxy(), &target, Some((USER, "guess"))).await;
        statuses.push(head.status);
        if head.status == 429 {
            assert_eq!(head.header("x-exitpool-error"), Some("auth_rate_limited"));
            assert!(head.header("retry-after").is_some());
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "never limited: {statuses:?}");
    assert!(statuses.len() > 10, "limited too early: {statuses:?}");
    // While limited, even the right password from that address waits.
    let (head, _) = connect(net.proxy(), &target, Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 429);
    // Another address is unaffected.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let mut other = within("connect", socket.connect(net.proxy()))
        .await
        .unwrap();
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        basic(USER, PASSWORD)
    );
    other.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut other).await.status, 200);
}

#[tokio::test]
async fn the_head_deadline_counts_from_accept_not_from_the_first_byte() {
    let timeout = Duration::from_secs(2);
    let net = TestGateway::start_with(|config| config.head_timeout = timeout).await;
    let mut stream = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let accepted = Instant::now();
    // Silent for most of the deadline (pacing the client, not waiting for the
    // gateway), then the start of a head that never ends.
    tokio::time::sleep(timeout * 3 / 4).await;
    stream
        .write_all(b"GET http://example.com/ HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within("closed", stream.read_to_end(&mut rest)).await;
    let held = accepted.elapsed();
    assert!(
        held < timeout * 3 / 2,
        "held {held:?}, deadline {timeout:?}"
    );
}
