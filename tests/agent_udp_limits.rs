//! The agent's UDP limits from its configuration file (issue 35): the real
//! `agent` binary runs from an agent.toml saying `udp_max_flows = 1` and
//! `udp_idle_timeout = "1s"`; a SOCKS5 UDP client (tests/common/udp.rs) sees
//! the second destination refused while the first flow is live, and a new
//! destination served once the first flow has been idle for the file's
//! second (the default would be 30 s).

mod common;

use common::udp::{associate, echoes_within, udp_echo};
use common::*;
use exitpool_launcher::{Launch, Ready};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const AGENT: &str = env!("CARGO_BIN_EXE_agent");
const DROPPED: &str = "exitpool_udp_datagrams_dropped_total";

#[tokio::test]
async fn the_files_udp_flow_cap_and_idle_timeout_take_effect() {
    let net = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let status = exitpool_launcher::ports::free_port().unwrap();
    let text = net.agent_toml(
        dir.path(),
        status,
        "udp_max_flows = 1\nudp_packets_per_second = 500\nudp_idle_timeout = \"1s\"\n",
    );
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let mut agent = Launch::new(AGENT)
        .arg("--config")
        .arg(&file)
        .env_remove("EXITPOOL_AGENT_TOKEN")
        .start(Ready::Listening(status), WAIT)
        .await
        .expect("the agent starts from its file");
    within(
        "agent joins",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let (first, _) = udp_echo().await;
    let (second, second_echoed) = udp_echo().await;
    let (third, _) = udp_echo().await;

    // The first flow takes the agent's one slot.
    let (_control, relay) = associate(net.proxy()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(echoes_within(&client, relay, first, b"one", WAIT).await);
    let last_echo = Instant::now();

    // A second destination while it is live: refused by the agent, dropped
    // and counted by the gateway.
    client
        .send_to(&common::udp::datagram(second, b"two"), relay)
        .await
        .unwrap();
    within("the refusal is counted", async {
        while net
            .metric_with(DROPPED, Some(("cause", "refused")))
            .await
            .unwrap_or(0.0)
            < 1.0
        {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert_eq!(second_echoed.load(Ordering::SeqCst), 0);

    // Once the first flow has been idle for the file's second, its slot is
    // free: a new destination, tried on a fresh association each time (a
    // refused destination stays refused for its association), gets through.
    let served = within("a flow once the first is idle", async {
        loop {
            let (_control, relay) = associate(net.proxy()).await;
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let wait = Duration::from_millis(300);
            if echoes_within(&client, relay, third, b"three", wait).await {
                return last_echo.elapsed();
            }
        }
    })
    .await;
    // The agent's clock started at the echo's arrival there, a little before
    // the client's: a few milliseconds' slack below the second.
    assert!(
        served >= Duration::from_millis(950),
        "served {served:?} after the first flow's last datagram, within the 1 s idle timeout"
    );
    assert!(
        served < Duration::from_secs(10),
        "took {served:?}: not the file's 1 s idle timeout"
    );
    agent.stop(Duration::from_secs(10)).await.unwrap();
}
