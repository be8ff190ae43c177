//! A fleet's faults end to end, with real processes: three gateway binaries
//! sharing a real Redis and one certificate, behind a real HAProxy on
//! deploy/haproxy.cfg, with agents that know all three gateways. One gateway
//! is SIGKILLed under load.

mod common;

use common::fleet::RedisServer;
use common::processes::{customer, exit_of, free_port, get_ip, GatewayProcess};
use common::targets::{echo_target, http_target};
use common::*;
use exitpool::agent::AgentHandle;
use exitpool_launcher::haproxy;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where customers connect from (the gateways trust only 127.0.0.1, HAProxy).
const CUSTOMER_IP: &str = "127.0.0.9";
/// The backend's name in deploy/haproxy.cfg.
const BACKEND: &str = "gateways";
/// How soon the issue asks a dead gateway's agents to be back in the pool.
const REJOIN_BOUND: Duration = Duration::from_secs(10);

/// `count` gateway processes in one fleet behind HAProxy, with heartbeats
/// and timeouts short enough to see a death in under a second.
async fn fleet(redis: &RedisServer, count: usize) -> (Vec<GatewayProcess>, Vec<tempfile::TempDir>) {
    common::fleet::gateway_processes(
        redis,
        count,
        &[
            "--proxy-protocol-from",
            "127.0.0.1/32",
            "--fleet-heartbeat-ms",
            "100",
            "--fleet-gateway-timeout-ms",
            "800",
            "--fleet-resync-ms",
            "500",
            "--redis-timeout-ms",
            "500",
        ],
    )
    .await
}

/// An agent on `ip` that knows every gateway, with keep-alives short enough
/// to notice a dead one in well under a second.
async fn agent(gateways: &[GatewayProcess], ip: &str) -> AgentHandle {
    let first = &gateways[0].banner;
    let mut builder = exitpool::agent::Agent::builder(
        first.tunnel.to_string(),
        first.pin.parse().unwrap(),
        TOKEN,
    );
    for gateway in &gateways[1..] {
        builder = builder.gateway(gateway.banner.tunnel.to_string());
    }
    let agent = builder
        .bind(ip.parse().unwrap())
        .allow_private(true)
        .transport(TransportChoice::Quic)
        .keep_alive(Duration::from_millis(200))
        .handshake_timeout(Duration::from_secs(1))
        .spawn()
        .unwrap();
    within("agent joins", agent.connected()).await;
    agent
}

/// Waits until every gateway in `gateways` lists `count` agents, none of them
/// held by `not_on` (a gateway id).
async fn wait_for_pool(gateways: &[&GatewayProcess], count: u64, not_on: Option<&str>) {
    within("the pool is whole on every gateway", async {
        'poll: loop {
            for gateway in gateways {
                let stats = gateway.stats().await;
                let stale = stats["per_agent"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|agent| not_on.is_some_and(|id| agent["gateway"] == id));
                if stats["agents"] != count || stale {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue 'poll;
                }
            }
            return;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_costs_only_its_own_connections() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (mut gateways, _states) = fleet(&redis, 3).await;
    let pins: Vec<&str> = gateways.iter().map(|g| g.banner.pin.as_str()).collect();
    assert!(pins.iter().all(|pin| *pin == pins[0]), "one pin: {pins:?}");

    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .unwrap();
    let (listen, stats) = (free_port(), free_port());
    let backends: Vec<_> = gateways
        .iter()
        .map(|g| haproxy::Backend {
            listen: g.banner.listen,
            admin: g.admin,
        })
        .collect();
    let config = haproxy::render_for(&template, listen, stats, &backends).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut balancer = haproxy::start(&path, stats, WAIT)
        .await
        .expect("haproxy starts");
    haproxy::servers_up(&mut balancer, stats, BACKEND, 3, WAIT)
        .await
        .unwrap();

    let mut agents = Vec::new();
    for ip in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ] {
        agents.push(agent(&gateways, ip).await);
    }
    wait_for_pool(&gateways.iter().collect::<Vec<_>>(), 5, None).await;
    let target = http_target("127.0.0.1").await;

    // A sticky session through the balancer, and the gateway holding its exit.
    let session = || {
        customer(
            CUSTOMER_IP,
            listen,
            Some((&format!("{USER}-session-s1"), PASSWORD)),
        )
    };
    let (status, headers, pinned_exit) = get_ip(&session(), target).await;
    assert_eq!(status, 200, "{headers:?}");
    let mut home = None;
    for (index, gateway) in gateways.iter().enumerate() {
        let stats = gateway.stats().await;
        let own_id = stats["fleet"]["gateway_id"].clone();
        let holds = stats["per_agent"].as_array().unwrap().iter().any(|agent| {
            agent["gateway"] == own_id
                && agent["observed_addr"]
                    .as_str()
                    .is_some_and(|addr| addr.starts_with(&format!("{pinned_exit}:")))
        });
        if holds {
            home = Some((index, own_id.as_str().unwrap().to_owned()));
        }
    }
    let (victim, victim_id) = home.expect("some gateway holds the session's exit");

    // Load on the victim: customers mid-transfer on its own port.
    let echo = echo_target().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (head, mut stream) = connect_from_ip(
            CUSTOMER_IP,
            gateways[victim].banner.listen,
            &echo.to_string(),
            Some((USER, PASSWORD)),
        )
        .await;
        assert_eq!(head.status, 200, "{head:?}");
        within("send", stream.write_all(&[7u8; 1000]))
            .await
            .unwrap();
        let mut echoed = [0u8; 1000];
        within("echo", stream.read_exact(&mut echoed))
            .await
            .unwrap();
        held.push(stream);
    }

    gateways[victim].process.kill().await.unwrap();
    let killed = Instant::now();

    // Its customers' connections end at once (the kernel resets them).
    for mut stream in held {
        let mut rest = Vec::new();
        let ended = within(
            "a dead gateway's connection ends",
            stream.read_to_end(&mut rest),
        )
        .await;
        assert!(ended.is_err() || rest.is_empty(), "{ended:?}");
    }
    // New connections through the balancer succeed at once, on the others.
    for _ in 0..6 {
        let fresh = customer(CUSTOMER_IP, listen, Some((USER, PASSWORD)));
        let (status, exit) = exit_of(&fresh, target).await;
        assert_eq!(status, 200, "{exit}");
    }
    // Its agents are back in the pool through the other gateways.
    let survivors: Vec<&GatewayProcess> = gateways
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != victim)
        .map(|(_, gateway)| gateway)
        .collect();
    wait_for_pool(&survivors, 5, Some(&victim_id)).await;
    let rejoined = killed.elapsed();
    eprintln!("a killed gateway's agents were back in the pool after {rejoined:?}");
    assert!(rejoined < REJOIN_BOUND, "agents back after {rejoined:?}");

    // The session's exit moved gateways; the session keeps it.
    let (status, headers, exit) = get_ip(&session(), target).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(exit, pinned_exit, "{headers:?}");
    assert_eq!(
        headers
            .get("x-exitpool-session")
            .and_then(|v| v.to_str().ok()),
        Some("kept"),
        "{headers:?}"
    );
    drop(agents);
    balancer.kill().await.unwrap();
}

/// A request that arrives just after a gateway died, at a gateway whose only
/// exits were the dead one's, waits for those agents to come back through the
/// survivor instead of failing with `peer_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_dead_gateways_agents_to_rejoin() {
    init_tracing();
    let redis = RedisServer::start().await;
    let (mut gateways, _states) = fleet(&redis, 2).await;
    let victim_id = gateways[0].stats().await["fleet"]["gateway_id"].clone();
    // An agent whose preferred gateway is the first: agents prefer one by
    // their id, so new ones are made until one does (half of them do).
    let mut exit = None;
    for _ in 0..20 {
        let candidate = agent(&gateways, "127.0.0.2").await;
        wait_for_pool(&gateways.iter().collect::<Vec<_>>(), 1, None).await;
        let stats = gateways[1].stats().await;
        if stats["per_agent"][0]["gateway"] == victim_id {
            exit = Some(candidate);
            break;
        }
        candidate.shutdown().await.expect("the agent stops");
        wait_for_pool(&gateways.iter().collect::<Vec<_>>(), 0, None).await;
    }
    let _exit = exit.expect("one of 20 agents prefers the first gateway");
    let target = http_target("127.0.0.1").await;

    gateways[0].process.kill().await.unwrap();
    // At once, before the survivor has noticed: its only exit is the dead
    // gateway's.
    let survivor = customer(
        CUSTOMER_IP,
        gateways[1].banner.listen,
        Some((USER, PASSWORD)),
    );
    let (status, answer) = exit_of(&survivor, target).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, "127.0.0.2");
}
