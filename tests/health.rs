//! Exit health, transparent retry and dead-exit detection, end to end, each
//! over both tunnel transports: real agents next to raw exits that fail opens
//! in each way a home device does (no answer, a lost tunnel, "unavailable"),
//! real agent processes frozen without a word, and customers on real sockets.
//!
//! Where this sits in the flow: the session step (`gateway/src/customer/session.rs`:
//! choose -> open, retried on another exit for the exit's own failures), the
//! directory's health and cooling (`gateway/src/directory/health.rs`, `local.rs`),
//! the liveness check (`gateway/src/tunnel/links.rs`) and the transfer's watch on
//! a silent exit (`gateway/src/customer/transfer.rs`).

mod common;

use common::flaky::{FailMode, FlakyExit};
use common::targets::echo_target;
use common::*;
use exitpool_launcher::{Process, Signal};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How soon a dead exit must be noticed (the issue's bound), with the test's
/// short silence check; the tunnel idle timeout stays at its 30 s default.
const DEAD_WITHIN: Duration = Duration::from_secs(5);

/// A CONNECT with `params` that must succeed, checked with an echo round trip.
async fn echo_once(net: &TestGateway, target: SocketAddr, params: &str) -> Head {
    let (head, mut stream) = connect_as(net.proxy(), target, params).await;
    assert_eq!(head.status, 200, "{head:?}");
    within("send", stream.write_all(b"ping")).await.unwrap();
    let mut echoed = [0u8; 4];
    within("echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"ping");
    head
}

fn attempts(head: &Head) -> u32 {
    head.header("x-exitpool-attempts")
        .expect("every answer says how many exits it tried")
        .parse()
        .unwrap()
}

/// A gateway whose exits answer `Open` within 1 s or count as failed, its
/// agents on `transport`.
async fn gateway(transport: TransportChoice) -> TestGateway {
    TestGateway::start_with(|config| config.open_timeout = Duration::from_secs(1))
        .await
        .over(transport)
}

over_both_transports! {
async fn exits_that_fail_opens_are_retried_elsewhere_then_cooled(transport) {
    for (mode, cause) in [
        (FailMode::NoAnswer, "exit_timeout"),
        (FailMode::Unavailable, "exit_unavailable"),
    ] {
        let net = gateway(transport).await;
        let target = echo_target().await;
        let good = net.agent("127.0.0.4").await;
        let good_exit = good.stats().session.expect("joined").exit_id;
        let flaky = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-1", 0, mode).await;
        // Every request succeeds through the good exit, some after a retry,
        // until the flaky one is cooled (three failures in a row).
        let mut retried = 0;
        for _ in 0..200 {
            let head = echo_once(&net, target, "").await;
            assert_eq!(head.header("x-exitpool-exit"), Some(good_exit.as_str()));
            if attempts(&head) == 2 {
                retried += 1;
            }
            if net.exit_stats(&flaky.exit_id).await["health"]["cooling"] == true {
                break;
            }
        }
        let health = net.exit_stats(&flaky.exit_id).await["health"].clone();
        assert_eq!(health["cooling"], true, "{mode:?}: {health}");
        assert_eq!(health["coolings"], 1, "{mode:?}: {health}");
        assert_eq!(health["probation"], true, "{mode:?}: {health}");
        assert!(health["success_rate"].as_f64().unwrap() < 0.6, "{health}");
        assert_eq!(retried, 3, "{mode:?}: one retry per failure");
        assert_eq!(
            net.metric_with("exitpool_open_retries_total", Some(("cause", cause)))
                .await,
            Some(3.0),
            "{mode:?}"
        );
        assert_eq!(
            net.metric_with("exitpool_exit_coolings_total", None).await,
            Some(1.0)
        );
        assert_eq!(
            net.metric_with("exitpool_exits_by_health", Some(("band", "cooling")))
                .await,
            Some(1.0)
        );
        let good_health = net.exit_stats(&good_exit).await["health"].clone();
        assert_eq!(good_health["success_rate"], 1.0, "{good_health}");
        assert!(good_health["open_latency_ms"].is_u64(), "{good_health}");
        // Cooled: no longer asked at all.
        let asked = flaky.opens.load(Ordering::Relaxed);
        for _ in 0..10 {
            let head = echo_once(&net, target, "").await;
            assert_eq!(attempts(&head), 1);
        }
        assert_eq!(flaky.opens.load(Ordering::Relaxed), asked);
    }
}
}

over_both_transports! {
async fn an_exit_that_drops_its_tunnel_on_open_is_retried_elsewhere(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    let good = net.agent("127.0.0.4").await;
    let good_exit = good.stats().session.expect("joined").exit_id;
    let flaky = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-2", 0, FailMode::DropTunnel).await;
    loop {
        let head = echo_once(&net, target, "").await;
        assert_eq!(head.header("x-exitpool-exit"), Some(good_exit.as_str()));
        if flaky.opens.load(Ordering::Relaxed) > 0 {
            assert_eq!(attempts(&head), 2, "{head:?}");
            break;
        }
        assert_eq!(attempts(&head), 1, "{head:?}");
    }
    assert_eq!(
        net.metric_with("exitpool_open_retries_total", Some(("cause", "exit_lost")))
            .await,
        Some(1.0)
    );
    within(
        "the dropped exit leaves",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
}
}

over_both_transports! {
async fn when_every_matching_exit_is_cooling_the_answer_says_so(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    let flaky = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-3", 0, FailMode::Unavailable).await;
    // With no other exit to move to, each failure is the customer's answer.
    for _ in 0..3 {
        let (head, _) = connect_as(net.proxy(), target, "").await;
        assert_eq!(head.status, 502);
        assert_eq!(head.header("x-exitpool-error"), Some("exit_unavailable"));
        assert_eq!(attempts(&head), 1, "{head:?}");
    }
    let (head, _) = connect_as(net.proxy(), target, "-country-de").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("exits_cooling"));
    assert_eq!(attempts(&head), 0, "no exit was tried: {head:?}");
    assert!(head
        .header("proxy-status")
        .unwrap()
        .contains("destination_unavailable"));
    assert_eq!(flaky.opens.load(Ordering::Relaxed), 3);
    // A country with no exits at all is still `no_exit`.
    let (head, _) = connect_as(net.proxy(), target, "-country-jp").await;
    assert_eq!(head.header("x-exitpool-error"), Some("no_exit"));
}
}

/// Sends a plain-HTTP `GET` for `target` through the proxy as alice and
/// reads the answer's head, the connection left open.
async fn plain_get(net: &TestGateway, target: SocketAddr) -> (Head, tokio::net::TcpStream) {
    let mut stream = within(
        "connect to proxy",
        tokio::net::TcpStream::connect(net.proxy()),
    )
    .await
    .unwrap();
    let head = absolute_get(
        &mut stream,
        &format!("http://{target}/"),
        &target.to_string(),
    )
    .await;
    (head, stream)
}

over_both_transports! {
async fn failure_answers_say_how_many_exits_were_tried(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    let _first = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-a1", 0, FailMode::Unavailable).await;
    let _second = FlakyExit::join(&net, "127.0.0.6", "flaky-exit-a2", 0, FailMode::Unavailable).await;
    // Both exits fail the one request, CONNECT and plain HTTP alike.
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(attempts(&head), 2, "{head:?}");
    let (head, _) = plain_get(&net, target).await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(attempts(&head), 2, "{head:?}");
    // Refused before any exit was looked for: nothing to count.
    let (head, _) = connect(net.proxy(), &target.to_string(), Some((USER, "wrong"))).await;
    assert_eq!(head.status, 407, "{head:?}");
    assert_eq!(head.header("x-exitpool-attempts"), None, "{head:?}");
}
}

/// Waits until `net`'s directory is empty again.
async fn wait_empty(net: &TestGateway) {
    within(
        "the exit leaves",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
}

over_both_transports! {
async fn an_exit_lost_mid_relay_is_scored_for_it_and_a_passed_on_reset_is_not(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    for (round, plain) in [(1, false), (2, true)] {
        let _flaky =
            FlakyExit::join(&net, "127.0.0.5", "flaky-exit-m", 0, FailMode::DropTunnelMidRelay)
                .await;
        if plain {
            // The exit takes the request and goes: the answer says the
            // target's HTTP answer never came.
            let (head, _) = plain_get(&net, target).await;
            assert_eq!(head.status, 502, "{head:?}");
        } else {
            let (head, mut stream) = connect_as(net.proxy(), target, "").await;
            assert_eq!(head.status, 200, "{head:?}");
            within("send", stream.write_all(b"ping")).await.unwrap();
            let mut rest = Vec::new();
            let ended = within("the relay ends", stream.read_to_end(&mut rest)).await;
            assert!(ended.is_err() || rest.is_empty(), "{ended:?} {rest:?}");
        }
        wait_empty(&net).await;
        // The same device back: its health remembers the lost relay.
        let back = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-m", 0, FailMode::Unavailable).await;
        let health = net.exit_stats(&back.exit_id).await["health"].clone();
        assert_eq!(health["failures"], round, "plain HTTP {plain}: {health}");
        back.leave();
        wait_empty(&net).await;
    }
    // An exit passing on its target's reset mid-relay is not at fault.
    let resetting = FlakyExit::join(&net, "127.0.0.6", "flaky-exit-r", 0, FailMode::ResetMidRelay).await;
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    within("send", stream.write_all(b"ping")).await.unwrap();
    let mut rest = Vec::new();
    let _ = within("the relay ends", stream.read_to_end(&mut rest)).await;
    let (head, _) = plain_get(&net, target).await;
    assert_eq!(head.status, 502, "{head:?}");
    let health = net.exit_stats(&resetting.exit_id).await["health"].clone();
    assert_eq!(health["failures"], 0, "{health}");
    assert_eq!(resetting.opens.load(Ordering::Relaxed), 2);
}
}

over_both_transports! {
async fn a_target_that_refuses_does_not_count_against_the_exit(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    let _good = net.agent("127.0.0.4").await;
    let exit = FlakyExit::join(
        &net,
        "127.0.0.5",
        "flaky-exit-4",
        0,
        FailMode::TargetRefused,
    )
    .await;
    let mut refused = 0;
    while refused < 5 {
        let (head, _) = connect_as(net.proxy(), target, "").await;
        if head.status == 502 {
            assert_eq!(head.header("x-exitpool-error"), Some("connection_refused"));
            refused += 1;
        } else {
            assert_eq!(head.status, 200);
        }
    }
    let health = net.exit_stats(&exit.exit_id).await["health"].clone();
    assert_eq!(health["success_rate"], 1.0, "{health}");
    assert_eq!(health["cooling"], false, "{health}");
    assert_eq!(health["failures"], 0, "{health}");
    assert_eq!(
        net.metric_with(
            "exitpool_open_retries_total",
            Some(("cause", "exit_unavailable"))
        )
        .await,
        None,
        "a target's refusal is the customer's answer, never retried"
    );
}
}

over_both_transports! {
async fn a_strict_session_fails_as_before_and_a_move_session_moves(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    // Both sessions pin the flaky exit while it is the only one and still works.
    let flaky = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-5", 2, FailMode::Unavailable).await;
    let head = echo_once(&net, target, "-session-strict1-sessmode-strict").await;
    assert_eq!(head.header("x-exitpool-exit"), Some(flaky.exit_id.as_str()));
    let head = echo_once(&net, target, "-session-moving1").await;
    assert_eq!(head.header("x-exitpool-exit"), Some(flaky.exit_id.as_str()));
    let good = net.agent("127.0.0.4").await;
    let good_exit = good.stats().session.expect("joined").exit_id;

    let (head, _) = connect_as(net.proxy(), target, "-session-strict1-sessmode-strict").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("exit_unavailable"));

    let head = echo_once(&net, target, "-session-moving1").await;
    assert_eq!(head.header("x-exitpool-exit"), Some(good_exit.as_str()));
    assert_eq!(head.header("x-exitpool-session"), Some("moved"));
    assert_eq!(
        head.header("x-exitpool-moved-from"),
        Some(flaky.exit_id.as_str())
    );
    assert_eq!(attempts(&head), 2);
    // And it stays moved.
    let head = echo_once(&net, target, "-session-moving1").await;
    assert_eq!(head.header("x-exitpool-exit"), Some(good_exit.as_str()));
    assert_eq!(head.header("x-exitpool-session"), Some("kept"));
}
}

over_both_transports! {
async fn retry_can_be_turned_off(transport) {
    let net = TestGateway::start_with(|config| config.open_attempts = 1)
        .await
        .over(transport);
    let target = echo_target().await;
    let _good = net.agent("127.0.0.4").await;
    let flaky = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-6", 0, FailMode::Unavailable).await;
    loop {
        let (head, _) = connect_as(net.proxy(), target, "").await;
        if flaky.opens.load(Ordering::Relaxed) > 0 {
            assert_eq!(head.status, 502, "{head:?}");
            assert_eq!(head.header("x-exitpool-error"), Some("exit_unavailable"));
            break;
        }
        assert_eq!(attempts(&head), 1);
    }
}
}

/// An agent process on `ip` (with a state directory of its own, kept alive by
/// the returned guard), once the gateway counts it.
async fn joined_agent_process(net: &TestGateway, ip: &str) -> (Process, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let process = net.agent_process(ip, state.path());
    within(
        "agent process joins",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    (process, state)
}

/// A gateway that checks a silent exit after 1 s and waits 0.5 s for its
/// answer, its agents on `transport`; the tunnel idle timeout stays at its
/// 30 s default.
async fn watchful_gateway(transport: TransportChoice) -> TestGateway {
    TestGateway::start_with(|config| {
        config.silence_check = Duration::from_secs(1);
        config.liveness_timeout = Duration::from_millis(500);
    })
    .await
    .over(transport)
}

over_both_transports! {
/// Frozen (SIGSTOP), not killed: a killed process's host ends its TCP tunnel
/// at once, while a frozen one leaves both tunnels open and silent, so only
/// the liveness check (an ack-eliciting frame over QUIC, an HTTP/2 PING over
/// TCP) can find it.
async fn an_exit_frozen_mid_transfer_resets_its_customer_within_seconds(transport) {
    let net = watchful_gateway(transport).await;
    let (doomed, _state) = joined_agent_process(&net, "127.0.0.2").await;
    let target = echo_target().await;
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    stream.write_all(b"before").await.unwrap();
    let mut echoed = [0u8; 6];
    within("echo before the freeze", stream.read_exact(&mut echoed))
        .await
        .unwrap();

    doomed.signal(Signal::Stop).expect("SIGSTOP the agent");
    // The customer asks for more and waits on a dead exit: reset within 5 s,
    // not at the 30 s idle timeout.
    stream.write_all(b"after").await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(DEAD_WITHIN, stream.read_to_end(&mut rest))
        .await
        .expect("the dead exit is noticed within 5 s");
    assert!(
        ended.is_err(),
        "a dead exit looked like a clean end: {ended:?}"
    );
    within(
        "the directory drops the dead agent",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
    assert_eq!(
        net.metric_with("exitpool_exits_unresponsive_total", None)
            .await,
        Some(1.0)
    );
}
}

over_both_transports! {
async fn an_open_on_a_silently_dead_exit_moves_to_another_within_seconds(transport) {
    let net = watchful_gateway(transport).await;
    let (doomed, _state) = joined_agent_process(&net, "127.0.0.2").await;
    let target = echo_target().await;
    let head = echo_once(&net, target, "-session-k9").await;
    let doomed_exit = head.header("x-exitpool-exit").unwrap().to_owned();
    let survivor = net.agent("127.0.0.3").await;
    let survivor_exit = survivor.stats().session.expect("joined").exit_id;

    doomed.signal(Signal::Stop).expect("SIGSTOP the agent");
    // The gateway has not noticed (the tunnel is open, just silent); the session's next open waits on the dead
    // exit, which fails its liveness check, and the open moves.
    let head = tokio::time::timeout(DEAD_WITHIN, echo_once(&net, target, "-session-k9"))
        .await
        .expect("answered within 5 s");
    assert_eq!(head.header("x-exitpool-exit"), Some(survivor_exit.as_str()));
    assert_eq!(head.header("x-exitpool-session"), Some("moved"));
    assert_eq!(
        head.header("x-exitpool-moved-from"),
        Some(doomed_exit.as_str())
    );
    assert_eq!(attempts(&head), 2);
}
}

async fn liveness_checks(net: &TestGateway) -> f64 {
    net.metric_with("exitpool_liveness_checks_total", None)
        .await
        .unwrap_or(0.0)
}

over_both_transports! {
async fn idle_exits_are_never_checked(transport) {
    let net = TestGateway::start_with(|config| {
        config.silence_check = Duration::from_millis(100);
    })
    .await
    .over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    // An exchange that answers at once needs no check; a tunnel both sides
    // leave quiet is checked once, then left alone.
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    stream.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    within("echo", stream.read_exact(&mut byte)).await.unwrap();
    // Ten silence periods of an idle tunnel.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_idle = liveness_checks(&net).await;
    assert!(
        after_idle <= 1.0,
        "an idle tunnel was checked {after_idle} times"
    );
    drop(stream);
    // An agent with no streams at all: never checked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(liveness_checks(&net).await, after_idle);
}
}

over_both_transports! {
async fn a_cooled_exit_stays_cooled_when_it_reconnects(transport) {
    let net = gateway(transport).await;
    let target = echo_target().await;
    let flaky = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-7", 0, FailMode::Unavailable).await;
    for _ in 0..3 {
        let (head, _) = connect_as(net.proxy(), target, "").await;
        assert_eq!(head.header("x-exitpool-error"), Some("exit_unavailable"));
    }
    assert_eq!(
        net.exit_stats(&flaky.exit_id).await["health"]["cooling"],
        true
    );
    // The same device leaves and comes back on a new connection.
    flaky.leave();
    within(
        "the exit leaves",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
    let back = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-7", 0, FailMode::Unavailable).await;
    assert_eq!(back.exit_id, flaky.exit_id);
    let health = net.exit_stats(&back.exit_id).await["health"].clone();
    assert_eq!(health["cooling"], true, "{health}");
    assert_eq!(health["coolings"], 1, "{health}");
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.header("x-exitpool-error"), Some("exits_cooling"));
}
}

#[tokio::test]
async fn an_exit_far_slower_than_the_pool_is_passed_over() {
    let net = TestGateway::start().await;
    let target = echo_target().await;
    let _fast = net.agents(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    // The pool's typical open, from the fast exits.
    for _ in 0..20 {
        echo_once(&net, target, "").await;
    }
    let slow = FlakyExit::join(
        &net,
        "127.0.0.5",
        "slow-exit",
        0,
        FailMode::Slow(Duration::from_millis(300)),
    )
    .await;
    // A newcomer has no record yet, so rotation soon tries it; after one
    // slow open it still serves when both candidates drawn are it. Two slow
    // opens in a row mark it.
    within("two opens at the slow exit", async {
        while slow.opens.load(Ordering::Relaxed) < 2 {
            echo_once(&net, target, "").await;
        }
    })
    .await;
    let health = &net.exit_stats(&slow.exit_id).await["health"];
    assert_eq!(health["slow"], true, "{health}");
    // Marked slow, it is passed over while the fast exits are free.
    let asked = slow.opens.load(Ordering::Relaxed);
    for _ in 0..50 {
        let head = echo_once(&net, target, "").await;
        assert_ne!(head.header("x-exitpool-exit"), Some(slow.exit_id.as_str()));
    }
    assert_eq!(slow.opens.load(Ordering::Relaxed), asked);
}

over_both_transports! {
async fn an_exit_sitting_on_opens_is_passed_over_before_its_opens_time_out(transport) {
    // Opens wait up to 10 s; the silent exit is suspect after 1 s unanswered.
    let net = TestGateway::start_with(|config| config.open_timeout = Duration::from_secs(10))
        .await
        .over(transport);
    let target = echo_target().await;
    let good = net.agent("127.0.0.4").await;
    let good_exit = good.stats().session.expect("joined").exit_id;
    let silent = FlakyExit::join(&net, "127.0.0.5", "flaky-exit-8", 0, FailMode::NoAnswer).await;
    // Land one open on the silent exit and leave it waiting; tunnels through
    // the good exit stay open meanwhile, so rotation turns to the silent one.
    let mut held = Vec::new();
    let _waiting = loop {
        let proxy = net.proxy();
        let mut task = tokio::spawn(async move { connect_as(proxy, target, "").await });
        let landed_silent = within("an answer, or an open at the silent exit", async {
            loop {
                tokio::select! {
                    answered = &mut task => {
                        held.push(answered.expect("the CONNECT task"));
                        return false;
                    }
                    () = tokio::time::sleep(Duration::from_millis(10)) => {
                        if silent.opens.load(Ordering::Relaxed) > 0 {
                            return true;
                        }
                    }
                }
            }
        })
        .await;
        if landed_silent {
            break task;
        }
    };
    drop(held);
    within("the silent exit becomes suspect", async {
        while net.exit_stats(&silent.exit_id).await["health"]["suspect"] != true {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // From now on it is passed over, long before its first open times out.
    let asked = silent.opens.load(Ordering::Relaxed);
    for _ in 0..20 {
        let head = echo_once(&net, target, "").await;
        assert_eq!(head.header("x-exitpool-exit"), Some(good_exit.as_str()));
    }
    assert_eq!(silent.opens.load(Ordering::Relaxed), asked);
}
}
