//! A fleet's directory when Redis loses its data: two gateways on a real
//! `redis-server`, agents on both. Redis is SIGKILLed and started again at
//! once, empty (as the soak's fleet run does), or flushed without a
//! connection dropping; then one gateway restarts and so reads the other's
//! agent list whole from Redis. Both must list every agent again: each
//! gateway publishes its list anew once Redis no longer holds what it wrote.

mod common;

use common::fleet::{fleet, fleet_config, place_agents, RedisServer};
use common::*;

/// Where the agents sit: two on gateway A (index 0), one on gateway B.
const PLACEMENT: [(usize, &str); 3] = [(0, "127.0.0.2"), (0, "127.0.0.3"), (1, "127.0.0.4")];

/// Redis restarts in the first test. Whether a gateway's own commands meet
/// the dropped connection is a race, so more than one round.
const ROUNDS: usize = 3;

/// Restarts the last gateway of `gateways` gracefully on its own tunnel and
/// customer ports (its agents come back by themselves) and waits until every
/// gateway lists all of [`PLACEMENT`].
async fn restart_b_and_wait(gateways: &mut Vec<TestGateway>, redis: &RedisServer) {
    let b = gateways.pop().expect("two gateways");
    let (tunnel, listen) = (b.gateway.tunnel_addr(), b.proxy());
    let state = b.state;
    b.gateway.shutdown().await;
    let mut config = TestGateway::config(state.path());
    config.tunnel = tunnel;
    config.listen = listen;
    let fleet = fleet_config(redis, "gw-b");
    gateways.push(TestGateway::start_in(state, config, |config| config.fleet = Some(fleet)).await);
    for (name, gateway) in ["gateway A", "gateway B"].iter().zip(gateways.iter()) {
        let whole = gateway
            .gateway
            .directory()
            .wait_for_count(|n| *n == PLACEMENT.len());
        if tokio::time::timeout(WAIT, whole).await.is_err() {
            panic!(
                "{name} does not list the {} agents within {WAIT:?}: {}",
                PLACEMENT.len(),
                listed(gateway)
            );
        }
    }
}

/// What `gateway`'s directory lists: each agent's address or its home.
fn listed(gateway: &TestGateway) -> String {
    let agents = gateway.gateway.directory().agents();
    let named: Vec<String> = agents
        .iter()
        .map(|agent| match &agent.home {
            Some(home) => format!("one held by {home}"),
            None => format!("its own from {}", agent.observed.ip()),
        })
        .collect();
    format!("{} listed ({})", agents.len(), named.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_lists_every_agent_after_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let mut gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let _agents = place_agents(&gateways, &PLACEMENT).await;
    for _ in 0..ROUNDS {
        redis.stop().await;
        redis.start_again().await;
        restart_b_and_wait(&mut gateways, &redis).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_lists_every_agent_after_redis_is_flushed() {
    let redis = RedisServer::start().await;
    let mut gateways = fleet(&redis, &["gw-a", "gw-b"]).await;
    let _agents = place_agents(&gateways, &PLACEMENT).await;
    // The data goes, no connection drops: no command of a gateway fails.
    let mut connection = redis.client().await;
    let _: () = within(
        "FLUSHALL",
        redis::cmd("FLUSHALL").query_async(&mut connection),
    )
    .await
    .expect("FLUSHALL");
    restart_b_and_wait(&mut gateways, &redis).await;
}
