//! Issue: an agent volunteers can trust and apps can embed — exit policy, the
//! owner's caps, reconnects, drain, pause/resume, the SDK example.

mod common;

use common::targets::{echo_target, http_target, pattern};
use common::*;
use exitpool::agent::Period;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_hostname_resolving_to_loopback_is_refused_and_never_dialled() {
    let net = TestGateway::start().await;
    let _agent = net.strict_agent("127.0.0.2").await;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let (head, _) = connect(
        net.proxy(),
        &format!("localhost:{port}"),
        Some((USER, PASSWORD)),
    )
    .await;
    assert_eq!(head.status, 403);
    assert!(head
        .header("proxy-status")
        .unwrap()
        .contains("destination_ip_prohibited"));
    assert_eq!(
        head.header("x-exitpool-error"),
        Some("destination_prohibited")
    );
    let (head, _) = connect(net.proxy(), "192.168.1.1:80", Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 403);
    let (head, _) = connect(net.proxy(), "[::ffff:127.0.0.1]:80", Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 403);
    let (head, _) = connect(net.proxy(), "8.8.8.8:25", Some((USER, PASSWORD))).await;
    assert_eq!(
        (head.status, head.header("x-exitpool-error")),
        (403, Some("port_prohibited"))
    );
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(200), target.accept()).await;
    assert!(accepted.is_err(), "a refused target was dialled");
}

#[tokio::test]
async fn the_bandwidth_cap_holds_in_both_directions() {
    const CAP: u32 = 1024 * 1024;
    const SIZE: usize = 3 * 1024 * 1024;
    let net = TestGateway::start().await;
    let agent = net
        .spawn(net.agent_builder("127.0.0.2").max_rate(CAP))
        .await;
    let target = echo_target().await;
    let (head, stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&pattern(SIZE)).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::new();
    within("capped echo", read.read_to_end(&mut received))
        .await
        .unwrap();
    within("writer", writer).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(received.starts_with(&pattern(SIZE)));
    // Each direction is capped separately and both run at once, so the echo takes
    // about SIZE / CAP seconds (less the quarter-second burst).
    let ratio = (SIZE as f64 / elapsed) / f64::from(CAP);
    assert!(
        (0.4..=1.25).contains(&ratio),
        "achieved {ratio:.2} x the cap"
    );
    let stats = agent.stats();
    assert_eq!(
        (stats.bytes_up, stats.bytes_down),
        (SIZE as u64, received.len() as u64)
    );
}

#[tokio::test]
async fn max_streams_is_respected_and_the_gateway_routes_no_more() {
    let net = TestGateway::start().await;
    let agent = net
        .spawn(net.agent_builder("127.0.0.2").max_streams(2))
        .await;
    let target = echo_target().await;
    let (first, _keep1) = connect_as(net.proxy(), target, "").await;
    let (second, _keep2) = connect_as(net.proxy(), target, "").await;
    assert_eq!((first.status, second.status), (200, 200));
    let (third, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(third.status, 502);
    assert_eq!(third.header("x-exitpool-error"), Some("exits_busy"));
    assert_eq!(agent.stats().active_streams, 2);
}

#[tokio::test]
async fn the_quota_stops_sharing_and_survives_an_agent_restart() {
    let net = TestGateway::start().await;
    let state = tempfile::tempdir().unwrap();
    let builder = net
        .agent_builder("127.0.0.2")
        .state_dir(state.path())
        .quota(100_000, Period::Day);
    let agent = builder.clone().spawn().unwrap();
    within("agent connects", agent.connected()).await;
    let target = http_target("127.0.0.1").await;
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let body = get_in_tunnel(&mut stream, "/bytes/150000").await;
    assert!(body.len() >= 150_000);
    assert!(agent.stats().quota_exhausted);
    // The agent tells the gateway at once; it leaves the pool.
    within(
        "gateway stops routing",
        net.gateway
            .directory()
            .wait_for_census(|c| c.accepting == 0),
    )
    .await;
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 502);
    within("agent shutdown", agent.shutdown()).await.unwrap();
    within(
        "agent gone",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;

    // Restarted on the same state directory, it is still over quota and joins as
    // not accepting.
    let again = builder.spawn().unwrap();
    within("agent reconnects", again.connected()).await;
    let stats = again.stats();
    assert!(
        stats.quota_exhausted && stats.period_bytes >= 150_000,
        "{stats:?}"
    );
    let census = within(
        "census",
        net.gateway.directory().wait_for_census(|c| c.agents == 1),
    )
    .await;
    assert_eq!(census.accepting, 0);
}

#[tokio::test]
async fn agents_come_back_by_themselves_after_a_gateway_restart() {
    let net = TestGateway::start().await;
    let agents = [net.agent("127.0.0.2").await, net.agent("127.0.0.3").await];
    let tunnel = net.gateway.tunnel_addr();
    let listen = net.proxy();
    let pin = net.gateway.pin().to_owned();
    let state = net.state;
    net.gateway.shutdown().await;
    let mut config = TestGateway::config(state.path());
    config.tunnel = tunnel;
    config.listen = listen;
    let again = TestGateway::start_in(state, config, |_| {}).await;
    assert_eq!(again.gateway.pin(), pin);
    within(
        "both agents reconnect",
        again.gateway.directory().wait_for_count(|n| *n == 2),
    )
    .await;
    for agent in &agents {
        within("agent welcomed again", agent.connected()).await;
    }
    let target = http_target("127.0.0.1").await;
    let (head, _) = exit_ip(again.proxy(), target, "").await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn shutdown_drains_live_streams_and_takes_no_new_ones() {
    let net = TestGateway::start().await;
    let agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let (head, mut live) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let stopping = tokio::spawn(agent.shutdown());
    within(
        "gateway hears the drain",
        net.gateway
            .directory()
            .wait_for_census(|c| c.accepting == 0),
    )
    .await;
    let (refused, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(refused.status, 502, "no new streams while draining");
    // The live stream still works, and ends cleanly.
    live.write_all(b"still here").await.unwrap();
    live.shutdown().await.unwrap();
    let mut echoed = String::new();
    within("live stream finishes", live.read_to_string(&mut echoed))
        .await
        .unwrap();
    assert_eq!(echoed, "still here\n10 bytes\n");
    within("agent stops", stopping).await.unwrap().unwrap();
    within(
        "agent gone",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
}

#[tokio::test]
async fn pause_and_resume_take_the_agent_out_of_and_back_into_the_pool() {
    let net = TestGateway::start().await;
    let agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    agent.pause();
    within(
        "paused",
        net.gateway
            .directory()
            .wait_for_census(|c| c.accepting == 0),
    )
    .await;
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(
        (head.status, head.header("x-exitpool-error")),
        (502, Some("no_exit"))
    );
    agent.resume();
    within(
        "resumed",
        net.gateway
            .directory()
            .wait_for_census(|c| c.accepting == 1),
    )
    .await;
    let (_, ip) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(ip, "127.0.0.2");
    assert!(!agent.stats().paused);
}

#[tokio::test]
async fn the_status_endpoint_shows_what_was_shared() {
    let net = TestGateway::start().await;
    let agent = net
        .spawn(
            net.agent_builder("127.0.0.2")
                .status_listen("127.0.0.1:0".parse().unwrap()),
        )
        .await;
    let target = http_target("127.0.0.1").await;
    exit_ip(net.proxy(), target, "").await;
    let url = format!("http://{}/", agent.status_addr().unwrap());
    let status: serde_json::Value = within("status", async {
        reqwest::get(url).await.unwrap().json().await.unwrap()
    })
    .await;
    assert_eq!(status["streams_served"], 1);
    assert!(status["bytes_down"].as_u64().unwrap() > 0);
    assert_eq!(status["session"]["country"], "US");
}

#[tokio::test]
async fn the_embedded_agent_example_runs() {
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("embedded_agent"))
        .unwrap();
    assert!(
        example.exists(),
        "{} missing: run the suite with `cargo test`",
        example.display()
    );
    let output = within(
        "example runs",
        tokio::process::Command::new(&example).output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("through the agent: \"hello from the target\""),
        "{stdout}"
    );
    assert!(stdout.contains("streams_served: 1"), "{stdout}");
}

/// A connection close is sent once and can be lost; a stream's finish is
/// retransmitted until delivered. So a leaving agent says `Draining`, then
/// finishes its control stream, and closes only once the gateway has that.
/// Here a stand-in gateway (the real identity and transport, no routing) reads
/// what the real agent sends while it shuts down.
#[tokio::test]
async fn a_leaving_agent_finishes_its_control_stream_before_it_closes() {
    use exitpool::protocol::{read_frame, write_frame, AgentMessage, FrameError, GatewayMessage};
    let state = tempfile::tempdir().unwrap();
    let identity = exitpool::gateway::tls::Identity::load_or_create(state.path()).unwrap();
    let server = identity
        .quic_server_config(exitpool::gateway::tunnel::quic::transport_config(
            exitpool::protocol::IDLE_TIMEOUT,
        ))
        .unwrap();
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let agent = exitpool::agent::Agent::builder(
        endpoint.local_addr().unwrap().to_string(),
        identity.pin().parse().unwrap(),
        TOKEN,
    )
    .bind("127.0.0.2".parse().unwrap())
    .spawn()
    .unwrap();
    let incoming = within("agent dials", endpoint.accept()).await.unwrap();
    let connection = within("QUIC handshake", incoming.accept().unwrap())
        .await
        .unwrap();
    let (mut control_send, mut control_recv) = within("control stream", connection.accept_bi())
        .await
        .unwrap();
    let hello: AgentMessage = within("Hello", read_frame(&mut control_recv))
        .await
        .unwrap();
    assert!(matches!(hello, AgentMessage::Hello { .. }), "{hello:?}");
    let welcome = GatewayMessage::Welcome {
        observed_addr: connection.remote_address(),
        country: None,
        exit_id: "stand-in".into(),
    };
    write_frame(&mut control_send, &welcome).await.unwrap();
    within("agent welcomed", agent.connected()).await;

    let stopping = tokio::spawn(agent.shutdown());
    let mut said = Vec::new();
    let end = loop {
        match within(
            "control message",
            read_frame::<AgentMessage, _>(&mut control_recv),
        )
        .await
        {
            Ok(message) => said.push(message),
            Err(end) => break end,
        }
    };
    // Its load, said once on joining, then the notice.
    let joined = AgentMessage::Load {
        active_streams: 0,
        accepting: true,
    };
    assert_eq!(said, [joined, AgentMessage::Draining]);
    assert!(matches!(end, FrameError::Ended), "{end:?}");
    // The gateway closes on reading that end; the agent's shutdown then completes.
    connection.close(exitpool::protocol::close_code::LEFT.into(), b"agent left");
    within("agent stops", stopping).await.unwrap().unwrap();
}
