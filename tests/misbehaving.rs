//! Misbehaving peers on the tunnel port, end to end, each over both tunnel
//! transports unless it is about QUIC itself: raw agents ([`common::raw`],
//! built from the agent's own TLS config, so they pass the pin check and
//! ALPN) that stay silent, flood the handshake, send oversized, garbled or
//! repeated control messages, open streams the gateway does not allow, or
//! never answer relay streams. Each is refused or closed precisely, with the
//! close code on either transport, and never disturbs the real agents next to
//! it. The last test is churn under load: customers keep streaming while
//! agents leave and join, and every customer gets a whole echo or a
//! documented failure.
//!
//! Where this sits in the flow: the gateway's agent handshake
//! (`gateway/src/tunnel/endpoint.rs`: QUIC handshake -> control stream -> `Hello`
//! -> `Welcome`/`Reject`), its control loop after `Welcome`, and the relay open
//! (`gateway/src/tunnel/links.rs`: `Open` -> `Opened`/`Failed` within the
//! configured open timeout).

mod common;

use common::raw::{device_key, hello, send_first, DialError, Dialer, RawAgent};
use common::targets::echo_target;
use common::*;
use exitpool::protocol::{
    close_code, read_frame, write_frame, AgentMessage, Capacity, DeviceKey, FrameError,
    GatewayMessage, IdentityProof, OpenReply, OpenRequest, RejectReason, Secret,
};
use exitpool::transport::tunnel::identity_material;
use exitpool::transport::{CloseReason, Tunnel, TunnelConnection, TunnelSend};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for negative checks ("this does not happen"): long enough for a
/// loopback round trip many times over.
const NEVER: Duration = Duration::from_millis(300);

/// The handshake and open timeouts for the tests that wait one out: short, in
/// whole seconds because the 504's message counts seconds.
const SHORT_TIMEOUT: Duration = Duration::from_secs(2);

/// A raw tunnel from `ip` over `transport` that has said nothing yet, with
/// its dialer (keep it: over QUIC it holds the endpoint).
async fn raw_tunnel(net: &TestGateway, ip: &str, transport: TransportChoice) -> (Dialer, Tunnel) {
    let dialer = Dialer::new(net, ip, transport);
    let tunnel = dialer.dial().await;
    (dialer, tunnel)
}

/// Dials from `ip` over `transport`, says a valid `Hello` as the device
/// `name`, and waits for `Welcome`.
async fn join_over(
    net: &TestGateway,
    ip: &str,
    name: &str,
    transport: TransportChoice,
) -> RawAgent {
    RawAgent::join(net, ip, name, transport, |_| {}).await
}

/// Serves every relay stream the gateway opens as a plain echo: reads `Open`,
/// answers `Opened` without dialling anything, then copies bytes back.
fn serve_echo_streams(connection: Tunnel) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = connection.accept_stream().await {
            tokio::spawn(async move {
                let Ok(_open) = read_frame::<OpenRequest, _>(&mut recv).await else {
                    return;
                };
                let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
                if write_frame(&mut send, &OpenReply::Opened { peer })
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy(&mut recv, &mut send).await;
                let _ = send.finish();
            });
        }
    })
}

/// Asserts the gateway closed `connection` with `code`, within [`WAIT`]: an
/// application close over QUIC, the close stream's code over TCP.
async fn assert_closed_with<C: TunnelConnection>(connection: &C, code: u32, what: &str) {
    within(what, connection.closed()).await;
    assert_eq!(
        connection.close_reason(),
        Some(CloseReason::Peer(Some(code))),
        "{what}: expected the gateway's close code over {}",
        connection.transport()
    );
}

/// One CONNECT through the gateway with `params`, checked with a round trip.
async fn echo_once(net: &TestGateway, target: SocketAddr, params: &str) -> Head {
    let (head, mut stream) = connect_as(net.proxy(), target, params).await;
    assert_eq!(head.status, 200, "{head:?}");
    within("send through tunnel", stream.write_all(b"ping"))
        .await
        .unwrap();
    let mut echoed = [0u8; 4];
    within("echo through tunnel", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"ping");
    head
}

over_both_transports! {
async fn a_connection_that_never_sends_hello_is_closed_at_the_handshake_deadline(transport) {
    let net = TestGateway::start_with(|config| config.handshake_timeout = SHORT_TIMEOUT).await;
    let started = Instant::now();
    let (_dialer, silent) = raw_tunnel(&net, "127.0.0.7", transport).await;
    assert_closed_with(&silent, close_code::PROTOCOL, "silent connection closed").await;
    let waited = started.elapsed();
    assert!(
        waited + Duration::from_millis(500) >= SHORT_TIMEOUT,
        "closed after {waited:?}, before the {SHORT_TIMEOUT:?} deadline"
    );
    assert!(net.gateway.directory().is_empty());
}
}

over_both_transports! {
async fn two_hundred_silent_connections_do_not_keep_a_real_agent_out(transport) {
    use exitpool::gateway::tunnel::pending::MAX_PENDING_PER_ADDRESS;
    let net = TestGateway::start().await.over(transport);
    // 200 silent handshakes from 16 addresses, each within its per-address cap.
    let mut dialers = Vec::new();
    let mut silent = Vec::new();
    for host in 0..16 {
        let dialer = Dialer::new(&net, &format!("127.0.1.{}", host + 1), transport);
        for _ in 0..MAX_PENDING_PER_ADDRESS.min(13) {
            if silent.len() < 200 {
                silent.push(dialer.dial().await);
            }
        }
        dialers.push(dialer);
    }
    assert_eq!(silent.len(), 200);
    // While all of them are pending, a real agent joins and serves.
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    echo_once(&net, target, "").await;
    assert_eq!(net.gateway.directory().len(), 1);
    let still_pending = silent
        .iter()
        .filter(|connection| connection.close_reason().is_none())
        .count();
    assert_eq!(
        still_pending, 200,
        "the silent connections were still pending during the check"
    );
    for connection in &silent {
        connection.close(0, b"done");
    }
    dialers.iter().for_each(Dialer::close);
}
}

over_both_transports! {
async fn past_the_per_address_handshake_cap_new_connections_are_refused_until_it_frees(transport) {
    use exitpool::gateway::tunnel::pending::MAX_PENDING_PER_ADDRESS;
    let net = TestGateway::start().await.over(transport);
    let dialer = Dialer::new(&net, "127.0.0.7", transport);
    let mut silent = Vec::new();
    for _ in 0..MAX_PENDING_PER_ADDRESS {
        silent.push(dialer.dial().await);
    }
    // One more from the same address is refused at once rather than queued:
    // QUIC answers CONNECTION_REFUSED, the TCP port drops the connection
    // before TLS.
    let refused = dialer.try_dial().await;
    match &refused {
        Err(DialError::Quic(quinn::ConnectionError::ConnectionClosed(close)))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {}
        Err(DialError::Tcp(_)) if transport == TransportChoice::Tcp => {}
        other => panic!("the excess connection was not refused: {:?}", other.as_ref().map(|_| ())),
    }
    // Another address is unaffected while they are pending.
    let _agent = net.agent("127.0.0.2").await;
    echo_once(&net, echo_target().await, "").await;
    // Once the silent ones go, an agent from that address gets in (a real
    // agent retries by itself until the gateway has let go of the slots).
    for connection in &silent {
        connection.close(0, b"done");
    }
    let _again = net.agent("127.0.0.7").await;
}
}

over_both_transports! {
async fn an_oversized_first_message_closes_the_connection(transport) {
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let (_endpoint, connection) = raw_tunnel(&net, "127.0.0.7", transport).await;
    let (mut send, _recv) = within("open control stream", connection.open_control())
        .await
        .unwrap();
    let mut bytes = 1_000_000u32.to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0xa5u8, 64 * 1024));
    // The gateway may close while we are still writing; that is the point.
    let _ = within("send oversized frame", send.write_all(&bytes)).await;
    assert_closed_with(&connection, close_code::PROTOCOL, "oversized Hello").await;
    assert_eq!(net.gateway.directory().len(), 1, "only the real agent");
    echo_once(&net, echo_target().await, "").await;
}
}

over_both_transports! {
async fn an_oversized_control_message_after_welcome_closes_and_removes_the_agent(transport) {
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let mut raw = join_over(&net, "127.0.0.7", "raw-oversized", transport).await;
    within(
        "raw agent counted",
        net.gateway.directory().wait_for_count(|n| *n == 2),
    )
    .await;
    let mut bytes = 1_000_000u32.to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0xa5u8, 64 * 1024));
    let _ = within("send oversized frame", raw.control_send.write_all(&bytes)).await;
    assert_closed_with(
        &raw.connection,
        close_code::PROTOCOL,
        "oversized control message",
    )
    .await;
    within(
        "raw agent removed",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    echo_once(&net, echo_target().await, "").await;
    raw.close();
}
}

over_both_transports! {
async fn a_garbled_hello_closes_the_connection(transport) {
    let net = TestGateway::start().await.over(transport);
    let (_endpoint, connection) = raw_tunnel(&net, "127.0.0.7", transport).await;
    let (mut send, _recv) = within("open control stream", connection.open_control())
        .await
        .unwrap();
    let mut bytes = 16u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0xff; 16]);
    within("send garbage", send.write_all(&bytes))
        .await
        .unwrap();
    assert_closed_with(&connection, close_code::PROTOCOL, "garbled Hello").await;
    assert!(net.gateway.directory().is_empty());
}
}

/// Dials from `ip`, sends what `first` makes for the connection as the first
/// message, and returns the gateway's `Reject` reason, after checking the
/// connection is then closed as rejected.
async fn rejection<M: serde::Serialize>(
    net: &TestGateway,
    ip: &str,
    first: impl FnOnce(&Tunnel) -> M,
) -> RejectReason {
    let (_dialer, connection) = raw_tunnel(net, ip, net.transport).await;
    let (_send, mut recv) = send_first(&connection, &first(&connection)).await;
    let answer: GatewayMessage = within("gateway answers", read_frame(&mut recv))
        .await
        .expect("a Reject arrives before the close");
    let GatewayMessage::Reject { reason, message } = answer else {
        panic!("expected Reject, got {answer:?}");
    };
    assert!(!message.is_empty(), "a Reject says why");
    assert_closed_with(&connection, close_code::REJECTED, "rejected agent").await;
    reason
}

/// A `Hello` changed by `adjust`.
fn hello_with(
    connection: &Tunnel,
    key: &DeviceKey,
    adjust: impl FnOnce(&mut u16, &mut IdentityProof, &mut Secret),
) -> AgentMessage {
    let mut hello = hello(connection, key);
    if let AgentMessage::Hello {
        version,
        identity,
        token,
        ..
    } = &mut hello
    {
        adjust(version, identity, token);
    }
    hello
}

over_both_transports! {
async fn a_bad_version_identity_or_token_is_rejected_with_a_reason(transport) {
    let net = TestGateway::start().await.over(transport);
    let key = device_key("good");
    let ip = "127.0.0.7";
    let newer = rejection(&net, ip, |c| {
        hello_with(c, &key, |version, _, _| *version += 1)
    });
    assert_eq!(newer.await, RejectReason::UnsupportedVersion);
    // A version 1 agent's Hello does not even decode as today's; its version
    // still earns the clear refusal, not a protocol error.
    #[derive(serde::Serialize)]
    enum HelloV1 {
        Hello {
            version: u16,
            agent_id: String,
            token: Secret,
            software: String,
            capacity: Capacity,
            accepting: bool,
        },
    }
    let older = rejection(&net, ip, |_| HelloV1::Hello {
        version: 1,
        agent_id: "0123456789abcdef0123456789abcdef".into(),
        token: TOKEN.into(),
        software: "agent 0.1".into(),
        capacity: Capacity { max_streams: 8 },
        accepting: true,
    });
    assert_eq!(older.await, RejectReason::UnsupportedVersion);
    let no_key = rejection(&net, ip, |c| {
        hello_with(c, &key, |_, identity, _| identity.public_key = [0xff; 32])
    });
    assert_eq!(no_key.await, RejectReason::BadAgentId);
    let garbled = rejection(&net, ip, |c| {
        hello_with(c, &key, |_, identity, _| identity.signature[0][0] ^= 1)
    });
    assert_eq!(garbled.await, RejectReason::BadAgentId);
    let wrong_token = rejection(&net, ip, |c| {
        hello_with(c, &key, |_, _, token| *token = "not-the-token".into())
    });
    assert_eq!(wrong_token.await, RejectReason::BadToken);
    assert!(net.gateway.directory().is_empty());
    assert_eq!(
        net.metric("exitpool_agent_identity_refusals_total").await,
        2
    );
}
}

over_both_transports! {
async fn an_impostor_cannot_take_over_a_live_agent(transport) {
    let net = TestGateway::start().await.over(transport);
    let victim = join_over(&net, "127.0.0.7", "victim", transport).await;
    let _serving = serve_echo_streams(victim.connection.clone());
    let victim_key = device_key("victim");
    // What an impostor could have: the victim's public key and a proof the
    // victim made on its own connection (say, captured from an old one).
    let captured = victim_key.prove(&identity_material(&victim.connection).unwrap());
    let replayed = rejection(&net, "127.0.0.8", |c| {
        hello_with(c, &device_key("impostor"), |_, identity, _| {
            *identity = captured.clone()
        })
    });
    assert_eq!(replayed.await, RejectReason::BadAgentId);
    // The victim's key with the impostor's own signature for this connection.
    let forged = rejection(&net, "127.0.0.8", |c| {
        let own = device_key("impostor").prove(&identity_material(c).unwrap());
        hello_with(c, &device_key("impostor"), |_, identity, _| {
            *identity = IdentityProof {
                public_key: captured.public_key,
                signature: own.signature,
            }
        })
    });
    assert_eq!(forged.await, RejectReason::BadAgentId);
    // The live agent noticed nothing and still serves.
    assert!(victim.connection.close_reason().is_none());
    assert_eq!(net.gateway.directory().len(), 1);
    echo_once(&net, echo_target().await, "").await;
}
}

over_both_transports! {
async fn the_device_itself_reconnecting_replaces_its_old_tunnel(transport) {
    let net = TestGateway::start().await.over(transport);
    let old = join_over(&net, "127.0.0.7", "device", transport).await;
    let exit_before = net.stats().await["per_agent"][0]["exit_id"].clone();
    // Same key, new connection (a new network, say): the old tunnel goes.
    let new = join_over(&net, "127.0.0.8", "device", transport).await;
    assert_closed_with(&old.connection, close_code::REPLACED, "replaced tunnel").await;
    assert!(new.connection.close_reason().is_none());
    let stats = net.stats().await;
    assert_eq!(stats["agents"], 1, "{stats}");
    assert_eq!(stats["per_agent"][0]["exit_id"], exit_before);
}
}

over_both_transports! {
async fn a_second_hello_closes_the_connection_and_removes_the_agent(transport) {
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let mut raw = join_over(&net, "127.0.0.7", "raw-twice", transport).await;
    within(
        "raw agent counted",
        net.gateway.directory().wait_for_count(|n| *n == 2),
    )
    .await;
    within(
        "send second Hello",
        write_frame(
            &mut raw.control_send,
            &hello(&raw.connection, &device_key("raw-twice")),
        ),
    )
    .await
    .expect("second Hello is sent");
    assert_closed_with(&raw.connection, close_code::PROTOCOL, "second Hello").await;
    within(
        "raw agent removed",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    echo_once(&net, echo_target().await, "").await;
    raw.close();
}
}

over_both_transports! {
async fn an_exit_answering_open_with_garbage_gets_the_customer_a_502(transport) {
    let net = TestGateway::start().await.over(transport);
    let raw = join_over(&net, "127.0.0.2", "raw-garbage", transport).await; // US
    let _real = net.agent("127.0.0.4").await; // DE
    within(
        "both agents counted",
        net.gateway.directory().wait_for_count(|n| *n == 2),
    )
    .await;
    let answering = {
        let connection = raw.connection.clone();
        tokio::spawn(async move {
            while let Ok((mut send, _recv)) = connection.accept_stream().await {
                // An oversized length prefix, then junk.
                let mut bytes = 1_000_000u32.to_be_bytes().to_vec();
                bytes.extend_from_slice(&[0x5a; 1024]);
                let _ = send.write_all(&bytes).await;
            }
        })
    };
    let target = echo_target().await;
    let (head, _stream) = connect_as(net.proxy(), target, "-country-us").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("exit_lost"));
    echo_once(&net, target, "-country-de").await;
    answering.abort();
    raw.close();
}
}

over_both_transports! {
async fn an_exit_that_never_reads_pushes_back_on_the_customer(transport) {
    // The raw exit answers `Opened` and then reads nothing: QUIC flow control
    // (4 MiB per stream, 16 MiB per tunnel) must stop the customer's upload
    // instead of letting the gateway buffer it.
    let net = TestGateway::start().await.over(transport);
    let raw = join_over(&net, "127.0.0.2", "raw-deaf", transport).await;
    let deaf = {
        let connection = raw.connection.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut send, mut recv)) = connection.accept_stream().await {
                let Ok(_open) = read_frame::<OpenRequest, _>(&mut recv).await else {
                    continue;
                };
                let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
                let _ = write_frame(&mut send, &OpenReply::Opened { peer }).await;
                held.push((send, recv));
            }
        })
    };
    let (head, mut stream) = connect_as(net.proxy(), echo_target().await, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    let chunk = vec![7u8; 64 * 1024];
    let total = within("upload is pushed back", async {
        let mut total = 0usize;
        // A write that makes no progress for NEVER * 2 means flow control holds it.
        while let Ok(Ok(())) = tokio::time::timeout(NEVER * 2, stream.write_all(&chunk)).await {
            total += chunk.len();
        }
        total
    })
    .await;
    assert!(
        total < 64 * 1024 * 1024,
        "the customer wrote {total} bytes into an exit that reads nothing"
    );
    assert_eq!(net.gateway.directory().len(), 1);
    deaf.abort();
    raw.close();
}
}

/// What one customer connection in the churn test ended with.
#[derive(Debug)]
enum Outcome {
    /// The whole payload came back, followed by the echo's byte count.
    Echoed,
    /// A documented refusal: 502 or 504 with a product code.
    Refused(u16, String),
    /// The tunnel was cut mid-way and the customer saw a reset, not a clean end.
    Reset,
}

over_both_transports! {
/// An agent whose connection close is lost still leaves at once: the gateway
/// acts on its finished control stream (which QUIC retransmits), closes the
/// tunnel itself and cuts the customers on it, long before the idle timeout.
async fn an_agent_that_finishes_its_control_stream_is_closed_and_removed_at_once(transport) {
    let net = TestGateway::start().await.over(transport);
    let mut raw = join_over(&net, "127.0.0.7", "raw-leaving", transport).await;
    let _echo = serve_echo_streams(raw.connection.clone());
    within(
        "raw agent counted",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let (head, mut live) = connect_as(net.proxy(), echo_target().await, "").await;
    assert_eq!(head.status, 200, "{head:?}");

    // Finish the control stream and never close: as if the close were lost.
    raw.control_send.finish().expect("control stream finishes");
    assert_closed_with(
        &raw.connection,
        close_code::LEFT,
        "gateway closes on the finish",
    )
    .await;
    within(
        "raw agent removed",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
    let mut rest = Vec::new();
    let ended = within("customer cut", live.read_to_end(&mut rest)).await;
    assert!(
        ended.is_err() || rest.is_empty(),
        "the live customer connection ends: {ended:?}, {} bytes",
        rest.len()
    );
    raw.close();
}
}

over_both_transports! {
/// A stopping gateway finishes each agent's control stream before it closes, so
/// an agent hears of the shutdown (and spreads its reconnect) even when the
/// close itself is lost.
async fn a_stopping_gateway_finishes_the_control_stream_before_it_closes(transport) {
    let net = TestGateway::start().await.over(transport);
    let mut raw = join_over(&net, "127.0.0.7", "raw-staying", transport).await;
    within(
        "raw agent counted",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let stopping = tokio::spawn(net.gateway.shutdown());
    let end = within(
        "control stream ends",
        read_frame::<GatewayMessage, _>(&mut raw.control_recv),
    )
    .await;
    assert!(matches!(end, Err(FrameError::Ended)), "{end:?}");
    assert_closed_with(&raw.connection, close_code::SHUTDOWN, "gateway closes").await;
    within("gateway stops", stopping).await.unwrap();
    raw.close();
}
}

/// One CONNECT through the gateway to the echo target that sends `payload`,
/// half-closes, and reads everything back. Anything but a documented outcome is
/// returned as an error describing it.
async fn churn_customer(
    proxy: SocketAddr,
    target: SocketAddr,
    params: &str,
    payload: &[u8],
) -> Result<Outcome, String> {
    let mut stream = within("customer connects", TcpStream::connect(proxy))
        .await
        .map_err(|e| format!("proxy refused the TCP connection: {e}"))?;
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(&format!("{USER}{params}"), PASSWORD)
    );
    within("send CONNECT", stream.write_all(request.as_bytes()))
        .await
        .map_err(|e| format!("CONNECT not sent: {e}"))?;
    let mut raw_head = Vec::new();
    while !raw_head.ends_with(b"\r\n\r\n") {
        let byte = within("response head", stream.read_u8())
            .await
            .map_err(|e| {
                format!(
                    "no complete head: {e} after {:?}",
                    String::from_utf8_lossy(&raw_head)
                )
            })?;
        raw_head.push(byte);
    }
    let head = String::from_utf8_lossy(&raw_head).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    if status != 200 {
        let code = head
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("x-exitpool-error"))
            .map(|(_, value)| value.trim().to_owned());
        return match (status, code) {
            (502 | 504, Some(code)) => Ok(Outcome::Refused(status, code)),
            _ => Err(format!("undocumented answer {head:?}")),
        };
    }
    // Upload, then download, on one task: Linux reports a reset to only the first
    // call that meets it and answers later reads with 0, so a concurrent writer
    // could hide a reset from the reader and make it look like a clean end.
    // 64 KiB echoed back fits in the socket buffers and QUIC windows meanwhile.
    let uploaded = within("upload", async {
        stream.write_all(payload).await?;
        stream.shutdown().await
    })
    .await;
    if uploaded.is_err() {
        return Ok(Outcome::Reset);
    }
    let mut echoed = Vec::new();
    let downloaded = within("download", stream.read_to_end(&mut echoed)).await;
    let mut expected = payload.to_vec();
    expected.extend_from_slice(format!("\n{} bytes\n", payload.len()).as_bytes());
    match downloaded {
        Err(_) => Ok(Outcome::Reset),
        Ok(_) if echoed == expected => Ok(Outcome::Echoed),
        Ok(_) => Err(format!(
            "a clean end after {} of {} bytes",
            echoed.len(),
            expected.len()
        )),
    }
}

over_both_transports! {
#[runtime(flavor = "multi_thread", worker_threads = 2)]
async fn churn_under_load_every_customer_gets_an_echo_or_a_documented_failure(transport) {
    const CUSTOMERS: usize = 50;
    const ROUNDS: usize = 6;
    const SESSIONS: usize = 10;
    let net = Arc::new(TestGateway::start().await.over(transport));
    let target = echo_target().await;
    let spawn_agent = |ip: &'static str| {
        let net = net.clone();
        async move {
            // No drain grace: a leaving agent cuts its live streams mid-way.
            let handle = net
                .agent_builder(ip)
                .drain_grace(Duration::ZERO)
                .spawn()
                .expect("agent spawns");
            within("agent connects", handle.connected()).await;
            handle
        }
    };
    let mut agents = std::collections::VecDeque::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        agents.push_back(spawn_agent(ip).await);
    }

    // Customers report each finished connection, so churn steps fire while
    // traffic is in flight rather than at guessed times.
    let (done_tx, done_rx) = tokio::sync::watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let payload: Arc<Vec<u8>> = Arc::new(common::targets::pattern(64 * 1024));
    let mut customers = tokio::task::JoinSet::new();
    for customer in 0..CUSTOMERS {
        let (proxy, payload, done_tx) = (net.proxy(), payload.clone(), done_tx.clone());
        let params = if customer < SESSIONS {
            format!("-session-churn{customer}")
        } else {
            String::new()
        };
        customers.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..ROUNDS {
                outcomes.push(churn_customer(proxy, target, &params, &payload).await);
                done_tx.send_modify(|done| *done += 1);
            }
            outcomes
        });
    }

    // Churn: at each threshold one agent joins and the oldest leaves.
    let steps = [
        (10, Some("127.0.0.5")),
        (40, Some("127.0.0.6")),
        (70, Some("127.0.0.7")),
        (100, Some("127.0.0.8")),
        (130, Some("127.0.0.9")),
        (160, None),
    ];
    let mut done_rx = done_rx;
    for (threshold, joiner) in steps {
        within(
            "customers progress",
            done_rx.wait_for(|done| *done >= threshold),
        )
        .await
        .unwrap();
        if let Some(ip) = joiner {
            agents.push_back(spawn_agent(ip).await);
        }
        let leaving = agents.pop_front().expect("an agent to stop");
        within("agent stops", leaving.shutdown()).await.unwrap();
        let expected = agents.len();
        within(
            "registry follows the churn",
            net.gateway.directory().wait_for_count(|n| *n == expected),
        )
        .await;
    }

    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    while let Some(joined) = within("customers finish", customers.join_next()).await {
        for outcome in joined.expect("customer task does not panic") {
            match outcome {
                Ok(Outcome::Echoed) => *tally.entry("echoed".into()).or_default() += 1,
                Ok(Outcome::Reset) => *tally.entry("reset".into()).or_default() += 1,
                Ok(Outcome::Refused(status, code)) => {
                    *tally.entry(format!("{status} {code}")).or_default() += 1
                }
                Err(failure) => failures.push(failure),
            }
        }
    }
    eprintln!("churn outcomes: {tally:?}");
    assert!(failures.is_empty(), "undocumented outcomes: {failures:#?}");
    assert!(tally.get("echoed").copied().unwrap_or(0) > 0, "{tally:?}");

    // Every customer connection is closed; the survivors hold no streams.
    assert_eq!(net.gateway.directory().len(), agents.len());
    let stats = net.stats().await;
    assert_eq!(stats["agents"], agents.len(), "{stats}");
    assert_eq!(stats["live_streams"], 0, "leaked streams: {stats}");
    assert_eq!(stats["sessions"], SESSIONS, "{stats}");
}
}

/// QUIC only: DATAGRAM frames are QUIC's; the TCP tunnel has nothing like them.
/// The tunnel offers them for UDP flows (docs/protocol.md), into a receive
/// buffer of 64 KiB (`transport::udp::DATAGRAM_BUFFER`, not quinn's 1.25 MB):
/// 10 MB of frames no flow asked for are dropped, the connection stays up,
/// and the gateway goes on serving.
#[tokio::test]
async fn datagram_frames_no_flow_asked_for_are_dropped() {
    let net = TestGateway::start().await;
    let config = exitpool::agent::tls::client_configs(
        net.gateway.pin().parse().unwrap(),
        quinn::TransportConfig::default(),
    )
    .expect("client config")
    .quic;
    let dialer = Dialer::new(&net, "127.0.0.7", TransportChoice::Quic).with_quic_config(config);
    let Tunnel::Quic(connection) = dialer.dial().await else {
        unreachable!("a QUIC dialer dials QUIC");
    };
    let largest = connection
        .max_datagram_size()
        .expect("the gateway offers DATAGRAM frames");
    let frame = bytes::Bytes::from(vec![0xA5; largest.min(1_000)]);
    for _ in 0..10_000 {
        // Sending never waits: quinn drops the oldest of its own queue.
        connection
            .send_datagram(frame.clone())
            .expect("a frame the peer offered to take");
    }
    // The flood's connection is still open (a frame nobody reads is no
    // protocol error) ...
    let (mut send, _recv) = within("a stream on the flooded connection", connection.open_bi())
        .await
        .expect("the connection is up");
    send.write_all(b"x").await.expect("the connection is up");
    assert!(connection.close_reason().is_none());
    // ... and the gateway serves an agent and its customer as before.
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let (head, _) = connect(net.proxy(), &target.to_string(), Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 200, "{head:?}");
}

over_both_transports! {
async fn an_agent_cannot_claim_more_than_the_stream_ceiling(transport) {
    use exitpool::gateway::tunnel::join::MAX_AGENT_STREAMS;
    let net = TestGateway::start().await;
    let _joined = RawAgent::join(&net, "127.0.0.7", "greedy", transport, |hello| {
        if let AgentMessage::Hello { capacity, .. } = hello {
            capacity.max_streams = u32::MAX;
        }
    })
    .await;
    let stats = net.stats().await;
    let claimed = stats["per_agent"]
        .as_array()
        .and_then(|agents| agents.first())
        .map(|agent| agent["max_streams"].clone());
    assert_eq!(claimed, Some(MAX_AGENT_STREAMS.into()), "{stats}");
}
}

over_both_transports! {
async fn before_a_valid_hello_an_agent_gets_at_most_the_small_window(transport) {
    use exitpool::gateway::tunnel::join::PRE_HELLO_WINDOW;
    let net = TestGateway::start().await;
    let (_dialer, connection) = raw_tunnel(&net, "127.0.0.7", transport).await;
    let (mut send, _recv) = within("open control stream", connection.open_control())
        .await
        .unwrap();
    // The credit the gateway grants before any Hello bounds what a sender can
    // put in flight (and so what the gateway may have to buffer). Both
    // transports take writes at once up to that credit, well before the
    // gateway can read or answer, so the first stall (or the gateway's close)
    // marks its size.
    let chunk = vec![0u8; 4 * 1024];
    let mut written = 0;
    while let Ok(Ok(accepted)) = tokio::time::timeout(NEVER, send.write(&chunk)).await {
        written += accepted;
        assert!(
            written < 4 * 1024 * 1024,
            "no window holds this sender back"
        );
    }
    assert!(
        (4 * 1024..=PRE_HELLO_WINDOW as usize).contains(&written),
        "{written} bytes accepted before a valid Hello"
    );
}
}
