//! Live connections in a fleet (docs/control.md): each gateway's
//! `/api/v1/connections` lists its own, every row naming the gateway that
//! holds it; a close sent to another gateway with that row's `gateway` is
//! refused (`409`) naming the holder, and the holder closes it. Two in-process
//! gateways share a real `redis-server`.

mod common;

use common::fleet::{fleet_with, RedisServer};
use common::{connect, targets, within, TestGateway, PASSWORD, USER, WAIT};
use exitpool::gateway::auth::{Customer, Users};
use serde_json::Value;
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-for-fleet-connection-tests-71be";

/// `method path` on `net`'s admin port with the admin token: status and JSON.
async fn api(net: &TestGateway, method: &str, path: &str) -> (u16, Value) {
    let url = format!("http://{}/api/v1{path}", net.admin());
    let request = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(ADMIN);
    let answer = within("API call", request.send()).await.expect("answers");
    let status = answer.status().as_u16();
    let body = within("API body", answer.text()).await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON: {body}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_name_their_gateway_and_a_close_sent_elsewhere_names_the_holder() {
    let redis = RedisServer::start().await;
    let gateways = fleet_with(&redis, &["gw-a", "gw-b"], |config| {
        config.admin_token = Some(exitpool::protocol::Secret(ADMIN.into()));
        config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}")).unwrap()]);
    })
    .await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let _agent = a.agent("127.0.0.2").await;
    let target = targets::echo_target().await;
    let (head, _stream) = connect(a.proxy(), &target.to_string(), Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 200, "{head:?}");

    let start = Instant::now();
    let listed = loop {
        let (status, listed) = api(a, "GET", "/connections").await;
        assert_eq!(status, 200, "{listed}");
        if listed["total"] == 1 {
            break listed;
        }
        assert!(start.elapsed() < WAIT, "{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = &listed["items"][0];
    assert_eq!(row["gateway"], "gw-a", "{listed}");
    assert_eq!(listed["gateway"], "gw-a", "{listed}");
    let id = row["id"].as_u64().unwrap();
    // The other gateway holds none of it.
    let (_, elsewhere) = api(b, "GET", "/connections").await;
    assert_eq!(elsewhere["total"], 0, "{elsewhere}");
    assert_eq!(elsewhere["gateway"], "gw-b", "{elsewhere}");

    let (status, refused) = api(b, "DELETE", &format!("/connections/{id}?gateway=gw-a")).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["field"], "gateway", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("gateway gw-a") && message.contains("this is gw-b"),
        "{message}"
    );
    // Without the row's gateway, the other gateway says where to look.
    let (status, missing) = api(b, "DELETE", &format!("/connections/{id}")).await;
    assert_eq!(status, 404, "{missing}");
    assert!(
        missing["message"].as_str().unwrap().contains("gw-b"),
        "{missing}"
    );

    let (status, closed) = api(a, "DELETE", &format!("/connections/{id}?gateway=gw-a")).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["closed"], 1, "{closed}");
}
