//! Exit bans fleet-wide (docs/control.md): two `gateway` processes of one
//! fleet (a real `redis-server`) on one throwaway PostgreSQL. A ban made
//! through one gateway disconnects the exit connected to the other with that
//! gateway's next snapshot (how soon is printed, for docs/control.md), the
//! other refuses it at join and lists the ban, and an unban through the other
//! lifts it everywhere. A customer created through one gateway works through
//! the other, and a disable through that one is in force on the first (how
//! soon is printed too).

mod common;

use common::processes::GatewayProcess;
use common::{within, TransportChoice, TOKEN};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-for-fleet-ban-tests-4a8c02";

/// An agent on `ip` with its device key in `device`, joined to `gateway`.
fn agent_on(
    gateway: &GatewayProcess,
    ip: &str,
    device: &std::path::Path,
) -> exitpool::agent::AgentHandle {
    exitpool::agent::Agent::builder(
        gateway.banner.tunnel.to_string(),
        gateway.banner.pin.parse().unwrap(),
        TOKEN,
    )
    .bind(ip.parse().unwrap())
    .state_dir(device)
    .allow_private(true)
    .transport(TransportChoice::Quic)
    .spawn()
    .expect("agent spawns")
}

/// `method path` on `admin`'s API: status and JSON.
async fn api(admin: SocketAddr, method: reqwest::Method, path: &str) -> (u16, Value) {
    api_with(admin, method, path, None).await
}

/// `method path` with a JSON `body` on `admin`'s API: status and JSON.
async fn api_with(
    admin: SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{admin}/api/v1{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = within("an API call", request.send()).await.unwrap();
    let status = answer.status().as_u16();
    (status, within("its JSON", answer.json()).await.unwrap())
}

/// How long until a `CONNECT` as the test's customer through `proxy`
/// answers `want` (tried every 100 ms, under the failed-login budget),
/// within the fixtures' bound.
async fn until_status(proxy: SocketAddr, target: SocketAddr, want: u16) -> Duration {
    let start = Instant::now();
    within("the change reaches the other gateway", async {
        loop {
            let (head, _) = common::connect(proxy, &target.to_string(), Some(("fay", "pw9"))).await;
            if head.status == want {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_through_one_gateway_disconnects_the_exit_on_the_other() {
    let mut postgres = exitpool_launcher::postgres::PostgresServer::start(Duration::from_secs(60))
        .await
        .expect("PostgreSQL starts (scripts/test installs Debian's postgresql)");
    let url = postgres.create_database("bans").await.expect("createdb");
    let redis = common::fleet::RedisServer::start().await;
    let (gateways, _states) =
        common::fleet::gateway_processes(&redis, 2, &["--database", &url, "--admin-token", ADMIN])
            .await;
    let (one, two) = (&gateways[0], &gateways[1]);
    let device = tempfile::tempdir().unwrap();
    let mut banned = agent_on(two, "127.0.0.3", device.path());
    let exit_id = within("the agent joins gw-2", banned.connected())
        .await
        .exit_id;

    let (status, outcome) = api(
        one.admin,
        reqwest::Method::POST,
        &format!("/exits/{exit_id}/ban"),
    )
    .await;
    let banned_at = Instant::now();
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["changed"], true, "{outcome}");
    // gw-1 does not hold the tunnel; gw-2 drops it with the next snapshot.
    assert_eq!(outcome["disconnected"], false, "{outcome}");
    let ended = within("the banned agent is dropped", banned.finished()).await;
    let took = banned_at.elapsed();
    eprintln!("banned through gw-1, disconnected by gw-2 after {took:?}");
    let why = ended.expect_err("a banned agent is refused").to_string();
    assert!(why.contains("banned"), "{why}");
    // How soon is a figure for docs/control.md, not an assertion (a loaded
    // machine moves it): the store's notice, the snapshot, the close
    // reaching the agent.

    // gw-2 lists the ban and refuses the device at join.
    let (_, bans) = api(two.admin, reqwest::Method::GET, "/exits?banned=true").await;
    assert_eq!(bans["banned"][0]["id"], exit_id, "{bans}");
    let mut again = agent_on(two, "127.0.0.3", device.path());
    let why = within("refused again", again.finished())
        .await
        .expect_err("still banned")
        .to_string();
    assert!(why.contains("banned"), "{why}");

    // An unban through gw-2 lifts it on gw-1 too.
    let (status, lifted) = api(
        two.admin,
        reqwest::Method::POST,
        &format!("/exits/{exit_id}/unban"),
    )
    .await;
    assert_eq!(
        (status, &lifted["changed"]),
        (200, &Value::from(true)),
        "{lifted}"
    );
    within("the unban reaches gw-1", async {
        loop {
            let (_, bans) = api(one.admin, reqwest::Method::GET, "/exits?banned=true").await;
            if bans["banned"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let back = agent_on(one, "127.0.0.3", device.path());
    assert_eq!(
        within("rejoins gw-1", back.connected()).await.exit_id,
        exit_id
    );

    // A customer change crosses the fleet the same way: created through
    // gw-1, it works through gw-2 (carried to gw-1's exit); disabled through
    // gw-2, gw-1 refuses it. How soon is printed, for docs/control.md.
    let target = common::targets::http_target("127.0.0.1").await;
    let (status, made) = api_with(
        one.admin,
        reqwest::Method::POST,
        "/customers",
        Some(serde_json::json!({"name": "fay", "password": "pw9"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let took = until_status(two.banner.listen, target, 200).await;
    eprintln!("created through gw-1, working through gw-2 after {took:?}");
    let (status, disabled) = api(two.admin, reqwest::Method::POST, "/customers/fay/disable").await;
    assert_eq!(status, 200, "{disabled}");
    let took = until_status(one.banner.listen, target, 407).await;
    eprintln!("disabled through gw-2, refused by gw-1 after {took:?}");
    drop(gateways);
    postgres.stop().await.expect("PostgreSQL stops");
}
