//! Fleet fixtures: a real `redis-server` (the launcher's: no persistence, on a
//! Unix socket in a temp directory, so it can be stopped and started again at
//! the same address), and gateways that share it and one certificate.

use super::{within, TestGateway, WAIT};
use exitpool::gateway::config::FleetConfig;
use exitpool_launcher::redis as redis_server;
use std::time::Duration;

/// Files a gateway's state directory shares with the rest of its fleet: the
/// certificate and key (one `--pin` for every gateway) and the exit-id key
/// (the same exit ids everywhere).
pub const SHARED_STATE: [&str; 3] = ["gateway-cert.der", "gateway-key.der", "exit-id.key"];

/// A `redis-server` of the tests' own ([`exitpool_launcher::redis`]), with
/// the tests' bound on every wait.
pub struct RedisServer(redis_server::RedisServer);

impl RedisServer {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> RedisServer {
        Self::start_with(redis_server::RedisOptions::default()).await
    }

    /// Like [`RedisServer::start`], with a password or TLS.
    pub async fn start_with(options: redis_server::RedisOptions) -> RedisServer {
        let server = redis_server::RedisServer::start_with(options, WAIT)
            .await
            .expect("redis-server starts (scripts/test installs it)");
        RedisServer(server)
    }

    /// The URL gateways use.
    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Its URL with `password` in place of its own.
    pub fn url_with(&self, password: Option<&str>) -> String {
        self.0.url_with(password)
    }

    /// Starts it again after [`RedisServer::stop`] (empty: no persistence).
    pub async fn start_again(&mut self) {
        self.0
            .start_again(WAIT)
            .await
            .expect("redis-server starts again");
    }

    /// Stops it (SIGKILL: nothing is saved, connections drop).
    pub async fn stop(&mut self) {
        within("redis stops", self.0.kill()).await.expect("kill");
    }

    /// A connection for the test's own reads.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        within(
            "redis connection",
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("redis connects")
    }
}

/// Fleet settings with short heartbeats, so the tests wait on events of a
/// few hundred milliseconds rather than the seconds of the defaults.
pub fn fleet_config(redis: &RedisServer, id: &str) -> FleetConfig {
    let mut fleet = FleetConfig::new(&redis.url());
    fleet.gateway_id = Some(id.to_owned());
    fleet.peer_listen = "127.0.0.1:0".parse().unwrap();
    fleet.heartbeat = Duration::from_millis(100);
    fleet.gateway_timeout = Duration::from_millis(800);
    fleet.resync_interval = Duration::from_millis(500);
    fleet.redis_timeout = Duration::from_millis(500);
    fleet
}

/// `ids.len()` gateways in one fleet on `redis`, sharing the first one's
/// certificate, key and exit-id key as an operator would (copied files).
pub async fn fleet(redis: &RedisServer, ids: &[&str]) -> Vec<TestGateway> {
    fleet_with(redis, ids, |_| {}).await
}

/// Like [`fleet`], with `adjust` applied to every gateway's configuration.
pub async fn fleet_with(
    redis: &RedisServer,
    ids: &[&str],
    adjust: impl Fn(&mut exitpool::gateway::GatewayConfig),
) -> Vec<TestGateway> {
    let mut gateways: Vec<TestGateway> = Vec::new();
    for id in ids {
        let state = tempfile::tempdir().expect("temp dir");
        if let Some(first) = gateways.first() {
            for name in SHARED_STATE {
                std::fs::copy(first.state.path().join(name), state.path().join(name))
                    .expect("copy shared state");
            }
        }
        let config = TestGateway::config(state.path());
        let fleet = fleet_config(redis, id);
        gateways.push(
            TestGateway::start_in(state, config, |config| {
                config.fleet = Some(fleet);
                adjust(config);
            })
            .await,
        );
    }
    gateways
}

/// Waits until `gateway`'s directory lists `count` agents (its own and the
/// fleet's).
pub async fn wait_for_pool(gateway: &TestGateway, count: usize) {
    within(
        "the fleet's agents reach this gateway's directory",
        gateway.gateway.directory().wait_for_count(|n| *n == count),
    )
    .await;
}

/// Waits until `gateway` has heard from `count` gateways of its fleet
/// (itself included) in their heartbeats.
pub async fn wait_for_gateways(gateway: &TestGateway, count: u64) {
    within("every gateway's heartbeat reaches this one", async {
        loop {
            if gateway.stats().await["fleet"]["totals"]["gateways"] == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Waits until `gateway`'s `/stats` says `check` of the customer `name`'s
/// entry.
pub async fn wait_for_customer(
    gateway: &TestGateway,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    within(what, async {
        loop {
            if check(&gateway.stats().await["customers"][name]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Starts an agent on each `(gateway index, ip)` of `placement`, then waits
/// until every gateway's directory lists them all.
pub async fn place_agents(
    gateways: &[TestGateway],
    placement: &[(usize, &str)],
) -> Vec<exitpool::agent::AgentHandle> {
    let mut agents = Vec::new();
    for (index, ip) in placement {
        agents.push(gateways[*index].agent(ip).await);
    }
    for gateway in gateways {
        wait_for_pool(gateway, placement.len()).await;
    }
    agents
}

/// `count` gateway processes (`gw-1`, `gw-2`, ...) in one fleet on `redis`,
/// customers alice and the fixture token, the first's certificate, key and
/// exit-id key copied to the others; `extra` flags go to each.
pub async fn gateway_processes(
    redis: &RedisServer,
    count: usize,
    extra: &[&str],
) -> (
    Vec<super::processes::GatewayProcess>,
    Vec<tempfile::TempDir>,
) {
    let mut gateways = Vec::new();
    let mut states: Vec<tempfile::TempDir> = Vec::new();
    for n in 1..=count {
        let state = tempfile::tempdir().unwrap();
        if let Some(first) = states.first() {
            for name in SHARED_STATE {
                std::fs::copy(first.path().join(name), state.path().join(name)).unwrap();
            }
        }
        let mut args: Vec<String> = [
            "--user",
            &format!("{}:{}", super::USER, super::PASSWORD),
            "--agent-token",
            super::TOKEN,
            "--redis",
            &redis.url(),
            "--gateway-id",
            &format!("gw-{n}"),
            "--peer-listen",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        gateways.push(super::processes::GatewayProcess::start(state.path(), &args).await);
        states.push(state);
    }
    (gateways, states)
}
