//! Faults end to end, each over both tunnel transports (QUIC and TLS over
//! TCP): an agent process killed mid-transfer, a gateway process
//! killed and restarted, a silent target, and a customer that never reads. Each must end precisely, never hang, and leave
//! the gateway's registry and sessions consistent.

mod common;

use common::targets::echo_target;
use common::*;
use exitpool_launcher::binaries::GATEWAY_READY;
use exitpool_launcher::{Launch, Process, Ready};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

over_both_transports! {
async fn an_agent_killed_mid_transfer_errors_the_customer_and_leaves_the_pool(transport) {
    // A short tunnel idle timeout stands in for the 30 s default.
    let net =
        TestGateway::start_with(|config| config.tunnel_idle_timeout = Duration::from_secs(1))
            .await
            .over(transport);
    let state = tempfile::tempdir().unwrap();
    let mut doomed = net.agent_process("127.0.0.2", state.path());
    within(
        "agent process joins",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let target = echo_target().await;

    // A sticky session lands on the doomed agent (the only one so far).
    let (head, _) = exit_ip_echo(&net, target, "-session-k1").await;
    let doomed_exit = head.header("x-exitpool-exit").unwrap().to_owned();
    let _survivor = net.agent("127.0.0.3").await;

    // Mid-transfer: find a tunnel through the doomed agent, move some bytes.
    let mut stream = loop {
        let (head, stream) = connect_as(net.proxy(), target, "").await;
        if head.header("x-exitpool-exit") == Some(doomed_exit.as_str()) {
            break stream;
        }
    };
    stream.write_all(b"before").await.unwrap();
    let mut echoed = [0u8; 6];
    within("echo before the kill", stream.read_exact(&mut echoed))
        .await
        .unwrap();

    doomed.kill().await.expect("SIGKILL the agent");
    // The customer sees an error, not a clean end of data.
    let mut rest = Vec::new();
    let ended = within("customer connection ends", stream.read_to_end(&mut rest)).await;
    assert!(
        ended.is_err(),
        "a vanished exit looked like a clean end: {ended:?} {rest:?}"
    );

    within(
        "registry drops the dead agent",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let stats = net.stats().await;
    assert_eq!(stats["agents"], 1);
    // The next requests go elsewhere, and the session moves and says so.
    let (head, _) = exit_ip_echo(&net, target, "").await;
    assert_ne!(head.header("x-exitpool-exit"), Some(doomed_exit.as_str()));
    let (head, _) = exit_ip_echo(&net, target, "-session-k1").await;
    assert_eq!(head.header("x-exitpool-session"), Some("moved"));
    assert_eq!(
        head.header("x-exitpool-moved-from"),
        Some(doomed_exit.as_str())
    );
}
}

/// A CONNECT through the gateway to the echo target, checked with one round trip.
async fn exit_ip_echo(
    net: &TestGateway,
    target: std::net::SocketAddr,
    params: &str,
) -> (Head, tokio::net::TcpStream) {
    let (head, mut stream) = connect_as(net.proxy(), target, params).await;
    assert_eq!(head.status, 200, "{head:?}");
    stream.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    within("echo", stream.read_exact(&mut byte)).await.unwrap();
    (head, stream)
}

over_both_transports! {
async fn a_target_that_never_answers_is_closed_at_the_idle_timeout_with_a_reset(transport) {
    let net =
        TestGateway::start_with(|config| config.idle_timeout = Duration::from_millis(500))
            .await
            .over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = silent.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let (held, _) = silent.accept().await.unwrap();
        // Keep the connection open and silent.
        std::future::pending::<()>().await;
        drop(held);
    });
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let mut rest = Vec::new();
    let ended = within("idle tunnel closed", stream.read_to_end(&mut rest)).await;
    assert!(
        ended.is_err(),
        "an idle-timed-out tunnel must end with a reset, got {ended:?}"
    );
    accepting.abort();
}
}

over_both_transports! {
async fn a_customer_that_never_reads_holds_bounded_memory(transport) {
    // The target sends as fast as it can; the customer reads nothing. QUIC and
    // TCP flow control must stop the target instead of buffering in the gateway
    // or the agent: the target manages to write only a bounded amount.
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (written_tx, mut written_rx) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut total = 0;
        while stream.write_all(&chunk).await.is_ok() {
            total += chunk.len();
            written_tx.send_replace(total);
        }
    });
    let (head, _never_read) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    // Wait until the target has been blocked: its count stops rising. Flow
    // control windows (4 MiB per stream each hop) plus socket buffers bound it.
    within("target is pushed back", async {
        loop {
            let before = *written_rx.borrow_and_update();
            if tokio::time::timeout(Duration::from_millis(500), written_rx.changed())
                .await
                .is_err()
            {
                return before;
            }
        }
    })
    .await;
    let total = *written_rx.borrow();
    assert!(
        total < 64 * 1024 * 1024,
        "the target wrote {total} bytes into a customer that reads nothing"
    );
}
}

over_both_transports! {
async fn a_target_that_never_accepts_is_504_after_the_connect_timeout(transport) {
    let net = TestGateway::start().await.over(transport);
    // A short connect timeout stands in for the agent's 10 s default.
    let _agent = net
        .spawn(
            net.agent_builder("127.0.0.2")
                .connect_timeout(Duration::from_millis(500)),
        )
        .await;
    // A listener whose accept queue is full: the kernel drops further SYNs, so
    // a new connection neither completes nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let target = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        let filler = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), filler.connect(target)).await
        {
            fillers.push(stream);
        }
    }
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 504, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("connection_timeout"));
    assert!(head
        .header("proxy-status")
        .unwrap()
        .contains("error=connection_timeout"));
    drop(listener);
}
}

/// The real `gateway` binary on `tunnel` with `state`; returns it once it prints
/// its ready line.
async fn start_gateway_process(state: &std::path::Path, tunnel: std::net::SocketAddr) -> Process {
    Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--state-dir")
        .arg(state)
        .args(["--tunnel", &tunnel.to_string()])
        .args(["--listen", "127.0.0.1:0", "--no-admin"])
        .args([
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--agent-token",
            TOKEN,
        ])
        .start(Ready::line(GATEWAY_READY), WAIT)
        .await
        .expect("the gateway binary starts and prints its ready line")
}

over_both_transports! {
/// A gateway that crashes sends no shutdown notice. Restarted on the same state
/// directory, it answers the old QUIC tunnel's next packet with a stateless
/// reset keyed from its identity (a TCP tunnel is reset by the host as the
/// process dies), so the agent reconnects at once instead of waiting out its
/// 30 s idle timeout.
async fn agents_notice_a_crashed_and_restarted_gateway_before_their_idle_timeout(transport) {
    let state = tempfile::tempdir().unwrap();
    // One number for the QUIC and TLS/TCP tunnels, kept across the restart.
    let tunnel = exitpool_launcher::ports::TunnelPort::hold()
        .expect("a port free on UDP and TCP")
        .release();
    let mut gateway = start_gateway_process(state.path(), tunnel).await;
    let identity = exitpool::gateway::tls::Identity::load_or_create(state.path()).unwrap();
    let agent =
        exitpool::agent::Agent::builder(tunnel.to_string(), identity.pin().parse().unwrap(), TOKEN)
            .bind("127.0.0.2".parse().unwrap())
            .transport(transport)
            .spawn()
            .unwrap();
    within("agent connects", agent.connected()).await;
    let mut session = agent.session();

    gateway.kill().await.expect("gateway killed");
    let crashed = std::time::Instant::now();
    let _restarted = start_gateway_process(state.path(), tunnel).await;
    within("agent notices the crash", session.wait_for(Option::is_none))
        .await
        .unwrap();
    let noticed = crashed.elapsed();
    assert!(
        noticed < exitpool::protocol::IDLE_TIMEOUT,
        "noticed after {noticed:?}, not before the idle timeout"
    );
    within("agent welcomed again", agent.connected()).await;
    assert_eq!(agent.stats().connects, 2);
}
}
