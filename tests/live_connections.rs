//! The gateway-state part of `/api/v1`: live connections (list with their
//! bytes, close one, close a customer's) and exits (list, ban, unban), against
//! a real gateway and real agents on loopback, with raw proxy clients.

mod common;

use common::targets::echo_target;
use common::{connect, connect_as, within, TestGateway, PASSWORD, USER};
use exitpool::gateway::auth::{Customer, Users};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "live-test-admin-t0ken-7d2e91c4";

/// A gateway with the admin token, alice and bob.
async fn gateway() -> TestGateway {
    TestGateway::start_with(|config| {
        config.admin_token = Some(exitpool::protocol::Secret(ADMIN.into()));
        config.users = Users::new([
            Customer::parse(&format!("{USER}:{PASSWORD}")).unwrap(),
            Customer::parse("bob:b0bpass").unwrap(),
        ]);
    })
    .await
}

/// `method path` on the admin port with the admin token: status and JSON.
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

/// Sends `len` bytes through an open tunnel to the echo target and reads them back.
async fn echo(stream: &mut TcpStream, len: usize) {
    let data = vec![b'x'; len];
    within("write", stream.write_all(&data)).await.unwrap();
    let mut back = vec![0u8; len];
    within("read echo", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, data);
}

/// Waits until the customer's side of `stream` ends abnormally (a reset) and
/// says so; a clean end of data fails the test.
async fn ends_with_reset(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let outcome = within("the closed transfer ends", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    let error = outcome.expect_err("a closed connection is reset, not ended cleanly");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}

/// Polls `GET path` until `done` holds for its JSON (every 20 ms, within `common::WAIT`).
async fn until(net: &TestGateway, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    within(&format!("GET {path} settles"), async {
        loop {
            let (status, json) = api(net, "GET", path).await;
            assert_eq!(status, 200, "{json}");
            if done(&json) {
                return json;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn open_tunnel(
    proxy: SocketAddr,
    target: SocketAddr,
    user: &str,
    password: &str,
) -> TcpStream {
    let (head, stream) = connect(proxy, &target.to_string(), Some((user, password))).await;
    assert_eq!(head.status, 200, "{head:?}");
    stream
}

#[tokio::test]
async fn the_list_shows_a_running_transfer_and_closing_it_resets_the_customer() {
    let net = gateway().await;
    let agent = net.agent("127.0.0.2").await;
    let exit_id = within("session", agent.connected()).await.exit_id;
    let target = echo_target().await;
    let (head, mut stream) = connect_as(net.proxy(), target, "-country-us").await;
    assert_eq!(head.status, 200, "{head:?}");
    echo(&mut stream, 100_000).await;

    // The relay counts as bytes move; the list reads those counters.
    let listed = until(&net, "/connections", |json| {
        json["items"][0]["bytes_down"].as_u64() >= Some(100_000)
    })
    .await;
    assert_eq!(listed["total"], 1, "{listed}");
    let item = &listed["items"][0];
    assert_eq!(item["customer"], USER);
    assert!(item.get("sub_user").is_none(), "{item}");
    assert_eq!(item["target"], target.to_string());
    assert_eq!(item["protocol"], "connect");
    assert_eq!(item["exit"], exit_id);
    assert_eq!(item["country"], "US");
    assert_eq!(item["bytes_up"], 100_000, "{item}");
    assert!(item["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(item["age_secs"].as_u64().is_some() && item["started"].as_u64() > Some(0));

    let id = item["id"].as_u64().unwrap();
    let (status, closed) = api(&net, "DELETE", &format!("/connections/{id}")).await;
    assert_eq!(
        (status, &closed["closed"]),
        (200, &Value::from(1)),
        "{closed}"
    );
    ends_with_reset(&mut stream).await;
    until(&net, "/connections", |json| json["total"] == 0).await;

    // Gone: a second close is a 404 naming it.
    let (status, error) = api(&net, "DELETE", &format!("/connections/{id}")).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"], "not_found");
    // Neither the exit nor the relay is blamed for the operator's close.
    let (_, exits) = api(&net, "GET", "/exits").await;
    assert_eq!(
        exits["items"][0]["health"]["consecutive_failures"], 0,
        "{exits}"
    );
    let stats = reqwest::Client::new()
        .get(format!("http://{}/stats", net.admin()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(stats["customers"][USER]["errors"], 0, "{stats}");
    assert!(
        stats["customers"][USER]["bytes_up"].as_u64() >= Some(100_000),
        "{stats}"
    );
}

#[tokio::test]
async fn closing_a_customers_connections_leaves_the_others() {
    let net = gateway().await;
    let _agents = net.agents(&["127.0.0.2", "127.0.0.4"]).await;
    let target = echo_target().await;
    let mut alice_us = open_tunnel(net.proxy(), target, "alice-country-us", PASSWORD).await;
    let mut alice_de = open_tunnel(net.proxy(), target, "alice-country-de", PASSWORD).await;
    let mut bob = open_tunnel(net.proxy(), target, "bob", "b0bpass").await;
    for stream in [&mut alice_us, &mut alice_de, &mut bob] {
        echo(stream, 1000).await;
    }
    let mine = until(&net, "/connections?customer=alice", |json| {
        json["total"] == 2
    })
    .await;
    let countries: std::collections::BTreeSet<_> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["country"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(countries, ["DE".to_owned(), "US".to_owned()].into());
    let (_, limited) = api(&net, "GET", "/connections?limit=1").await;
    assert_eq!(
        (
            limited["items"].as_array().unwrap().len(),
            &limited["total"]
        ),
        (1, &Value::from(3)),
        "{limited}"
    );

    let (status, closed) = api(&net, "DELETE", "/connections?customer=alice").await;
    assert_eq!(
        (status, &closed["closed"]),
        (200, &Value::from(2)),
        "{closed}"
    );
    ends_with_reset(&mut alice_us).await;
    ends_with_reset(&mut alice_de).await;
    // Bob's transfer goes on.
    echo(&mut bob, 5000).await;
    let left = until(&net, "/connections", |json| json["total"] == 1).await;
    assert_eq!(left["items"][0]["customer"], "bob", "{left}");
    let (status, closed) = api(&net, "DELETE", "/connections?customer=nobody").await;
    assert_eq!((status, &closed["closed"]), (200, &Value::from(0)));
}

#[tokio::test]
async fn bad_requests_get_a_field_and_a_rule() {
    let net = gateway().await;
    for (method, path, status, field) in [
        ("DELETE", "/connections", 422, Some("customer")),
        (
            "DELETE",
            "/connections?customer=a%20b",
            422,
            Some("customer"),
        ),
        ("GET", "/connections?limit=0", 422, Some("limit")),
        ("GET", "/connections?limit=x", 400, None),
        ("GET", "/connections?colour=red", 400, None),
        ("DELETE", "/connections/abc", 422, Some("id")),
        ("POST", "/exits/not-hex!/ban", 422, Some("id")),
        ("GET", "/exits?banned=maybe", 400, None),
        ("PUT", "/exits", 405, None),
        ("GET", "/exits/0a0b/nothing", 404, None),
    ] {
        let (got, json) = api(&net, method, path).await;
        assert_eq!(got, status, "{method} {path}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        if let Some(field) = field {
            assert_eq!(json["field"], field, "{method} {path}: {json}");
        }
    }
    // A ban's body is checked too.
    let url = format!("http://{}/api/v1/exits/0a0b0c0d0e0f0102/ban", net.admin());
    let answer = reqwest::Client::new()
        .post(&url)
        .bearer_auth(ADMIN)
        .body(r#"{"why":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422);
    // Without the admin token: 401, and nothing is listed.
    let answer = reqwest::get(format!("http://{}/api/v1/connections", net.admin()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let answer = reqwest::Client::new()
        .get(format!("http://{}/api/v1/connections", net.admin()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
}

#[tokio::test]
async fn a_banned_exit_leaves_the_pool_and_cannot_rejoin_until_unbanned() {
    let net = gateway().await;
    let device = tempfile::tempdir().unwrap();
    let builder = || net.agent_builder("127.0.0.4").state_dir(device.path());
    let mut agent = net.spawn(builder()).await;
    let exit_id = within("session", agent.connected()).await.exit_id;
    let _other = net.agent("127.0.0.2").await;

    let exits = until(&net, "/exits", |json| {
        json["items"].as_array().unwrap().len() == 2
    })
    .await;
    let listed = exits["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == exit_id)
        .unwrap_or_else(|| panic!("{exit_id} in {exits}"))
        .clone();
    assert_eq!(listed["country"], "DE");
    assert_eq!(listed["region"], "DE-BE");
    assert_eq!(listed["city"], "berlin");
    assert_eq!(listed["asn"], 3320);
    assert_eq!(listed["transport"], "quic");
    assert_eq!(listed["banned"], false);
    assert_eq!(listed["load"], 0);
    assert!(listed["connected_since"].as_u64() > Some(0));
    assert_eq!(listed["health"]["cooling"], false);

    let url = format!("http://{}/api/v1/exits/{exit_id}/ban", net.admin());
    let answer = reqwest::Client::new()
        .post(&url)
        .bearer_auth(ADMIN)
        .body(r#"{"reason":"abuse report 17"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let outcome: Value = answer.json().await.unwrap();
    assert_eq!(outcome["disconnected"], true, "{outcome}");
    assert_eq!(outcome["changed"], true, "{outcome}");

    // Out of the pool at once; the agent comes back, is told why, and stops.
    let exits = until(&net, "/exits", |json| {
        json["items"].as_array().unwrap().len() == 1
    })
    .await;
    assert_ne!(exits["items"][0]["id"], exit_id);
    let ended = within("the banned agent stops", agent.finished()).await;
    let why = ended.expect_err("a banned agent is refused").to_string();
    assert!(why.contains("banned"), "{why}");
    let target = echo_target().await;
    let (head, _) = connect_as(net.proxy(), target, "-country-de").await;
    assert_ne!(head.status, 200, "no exit in DE after the ban: {head:?}");

    // Again: refused at join, and the ban is listed with its reason.
    let mut again = builder().spawn().unwrap();
    let why = within("refused again", again.finished())
        .await
        .expect_err("still banned")
        .to_string();
    assert!(
        why.contains(&format!("exit {exit_id}")) && why.contains("banned"),
        "{why}"
    );
    let (_, bans) = api(&net, "GET", "/exits?banned=true").await;
    assert_eq!(bans["banned"][0]["id"], exit_id, "{bans}");
    assert_eq!(bans["banned"][0]["reason"], "abuse report 17");
    assert_eq!(bans["banned"][0]["connected"], false);
    assert!(net.state.path().join("bans.json").exists());

    let (status, lifted) = api(&net, "POST", &format!("/exits/{exit_id}/unban")).await;
    assert_eq!(
        (status, &lifted["changed"]),
        (200, &Value::from(true)),
        "{lifted}"
    );
    let back = net.spawn(builder()).await;
    assert_eq!(within("session", back.connected()).await.exit_id, exit_id);
    let exits = until(&net, "/exits", |json| {
        json["items"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(exits["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|item| item["banned"] == false));
    let (head, mut stream) = connect_as(net.proxy(), target, "-country-de").await;
    assert_eq!(head.status, 200, "{head:?}");
    echo(&mut stream, 10).await;
    let (status, again) = api(&net, "POST", &format!("/exits/{exit_id}/unban")).await;
    assert_eq!((status, &again["changed"]), (200, &Value::from(false)));
}

#[tokio::test]
async fn bans_survive_a_restart() {
    let net = gateway().await;
    let (status, _) = api(&net, "POST", "/exits/00112233445566ff/ban").await;
    assert_eq!(status, 200);
    let TestGateway { gateway, state, .. } = net;
    within("stop", gateway.shutdown()).await;
    let config = TestGateway::config(state.path());
    let net = TestGateway::start_in(state, config, |config| {
        config.admin_token = Some(exitpool::protocol::Secret(ADMIN.into()));
    })
    .await;
    let (_, bans) = api(&net, "GET", "/exits?banned=true").await;
    assert_eq!(bans["banned"][0]["id"], "00112233445566ff", "{bans}");
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let net = gateway().await;
    let (status, doc) = api(&net, "GET", "/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/api/v1/connections", &["get", "delete"][..]),
        ("/api/v1/connections/{id}", &["delete"]),
        ("/api/v1/exits", &["get"]),
        ("/api/v1/exits/{id}/ban", &["post"]),
        ("/api/v1/exits/{id}/unban", &["post"]),
        // The control plane's are merged in.
        ("/api/v1/customers", &["get", "post"]),
        ("/api/v1/exits/{id}/usage", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} missing from the document"
            );
        }
    }
}

/// A SOCKS5 `CONNECT` to `target` as `user:password` (RFC 1928/1929), its
/// success reply read.
async fn socks5(proxy: SocketAddr, target: SocketAddr, user: &str, password: &str) -> TcpStream {
    let mut stream = within("connect", TcpStream::connect(proxy)).await.unwrap();
    let mut reply = [0u8; 2];
    within("greet", stream.write_all(&[5, 1, 2])).await.unwrap();
    within("method", stream.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, [5, 2]);
    let mut login = vec![1, user.len() as u8];
    login.extend_from_slice(user.as_bytes());
    login.push(password.len() as u8);
    login.extend_from_slice(password.as_bytes());
    within("login", stream.write_all(&login)).await.unwrap();
    within("login reply", stream.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, [1, 0]);
    let SocketAddr::V4(target) = target else {
        panic!("an IPv4 target")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&target.ip().octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    within("request", stream.write_all(&request)).await.unwrap();
    let mut answer = [0u8; 10];
    within("reply", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer[..2], [5, 0], "{answer:?}");
    stream
}

#[tokio::test]
async fn socks5_and_plain_http_are_listed_as_they_came() {
    let net = gateway().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let mut socks = socks5(net.proxy(), target, USER, PASSWORD).await;
    echo(&mut socks, 2000).await;
    // A target that takes the request and never answers keeps the plain-HTTP
    // exchange in flight.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut http = within("connect", TcpStream::connect(net.proxy()))
        .await
        .unwrap();
    let request = format!(
        "GET http://{silent_addr}/slow HTTP/1.1\r\nHost: {silent_addr}\r\nProxy-Authorization: {}\r\n\r\n",
        common::basic(USER, PASSWORD)
    );
    within("send GET", http.write_all(request.as_bytes()))
        .await
        .unwrap();

    let listed = until(&net, "/connections?customer=alice", |json| {
        json["total"] == 2
    })
    .await;
    let by_protocol: std::collections::BTreeMap<String, String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["protocol"].as_str().unwrap().to_owned(),
                item["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        by_protocol.get("socks5"),
        Some(&target.to_string()),
        "{listed}"
    );
    assert_eq!(
        by_protocol.get("http"),
        Some(&silent_addr.to_string()),
        "{listed}"
    );

    let (status, closed) = api(&net, "DELETE", "/connections?customer=alice").await;
    assert_eq!(
        (status, &closed["closed"]),
        (200, &Value::from(2)),
        "{closed}"
    );
    ends_with_reset(&mut socks).await;
    // The plain-HTTP exchange ends too: no answer but a failure (never a 200).
    let mut answer = Vec::new();
    let _ = within("the exchange ends", http.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    until(&net, "/connections", |json| json["total"] == 0).await;
}
