//! The operators' CLI (`gateway customers|tokens|connections|exits ...`) end
//! to end: the real `gateway` binary as the client, a real gateway with its
//! SQLite store serving `/api/v1`, real agents, raw proxy clients.

mod common;

use common::targets::echo_target;
use common::{connect, connect_as, within, TestGateway, WAIT};
use exitpool::gateway::control_link::ControlOptions;
use exitpool::gateway::Gateway;
use exitpool_launcher::{Finished, Launch};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "cli-test-admin-t0ken-5e8a13f0";
const READER: &str = "cli-test-read-only-t0ken-9b27c6d4";

/// A gateway with the admin token and a SQLite store in its state directory.
async fn gateway() -> TestGateway {
    let state = tempfile::tempdir().unwrap();
    let mut config = TestGateway::config(state.path());
    config.admin_token = Some(exitpool::protocol::Secret(ADMIN.into()));
    let control = ControlOptions {
        database: Some(state.path().join("control.sqlite3").display().to_string()),
        read_only_token: Some(READER.into()),
        ..Default::default()
    };
    let gateway = within(
        "gateway start",
        Gateway::start_with_control(config, control),
    )
    .await
    .expect("gateway starts");
    TestGateway {
        gateway,
        state,
        transport: common::TransportChoice::Quic,
    }
}

/// `gateway ARGS` against `net`'s admin port (address and token from the
/// environment, as an operator's shell has them).
async fn cli(net: &TestGateway, args: &[&str]) -> Finished {
    cli_at(net.admin(), args).await
}

/// [`cli`] against the admin port at `admin`.
async fn cli_at(admin: std::net::SocketAddr, args: &[&str]) -> Finished {
    Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env("EXITPOOL_ADMIN_URL", format!("http://{admin}"))
        .env("EXITPOOL_ADMIN_TOKEN", ADMIN)
        .run(WAIT)
        .await
        .expect("the CLI runs")
}

/// [`cli`], which must succeed; its stdout.
async fn ok(net: &TestGateway, args: &[&str]) -> String {
    let done = cli(net, args).await;
    assert!(
        done.status.success(),
        "gateway {args:?}: {}\n{}",
        done.stdout,
        done.stderr
    );
    done.stdout
}

/// [`cli`] with `--json`, which must succeed; its JSON.
async fn json(net: &TestGateway, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = ok(net, &args).await;
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("JSON from {args:?}: {out}"))
}

/// [`cli`], which must fail; its stderr.
async fn fails(net: &TestGateway, args: &[&str]) -> String {
    let done = cli(net, args).await;
    assert!(
        !done.status.success(),
        "gateway {args:?} succeeded: {}",
        done.stdout
    );
    done.stderr
}

/// The value after `key: ` on a line of `out`.
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("{key} in {out}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Repeats `check` (every 20 ms, within [`WAIT`]) until it holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// `exitpool_agents_turned_away_total` from `/metrics` (with the token).
async fn turned_away(net: &TestGateway) -> u64 {
    let answer = reqwest::Client::new()
        .get(format!("http://{}/metrics", net.admin()))
        .bearer_auth(ADMIN)
        .send();
    let text = within("GET /metrics", answer)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("exitpool_agents_turned_away_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("the counter in {text}")) as u64
}

/// The status a `CONNECT` to `target` as `user:password` gets.
async fn status_as(net: &TestGateway, target: &str, user: &str, password: &str) -> u16 {
    connect(net.proxy(), target, Some((user, password)))
        .await
        .0
        .status
}

#[tokio::test]
async fn the_cli_manages_customers_through_the_api() {
    let net = gateway().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await.to_string();

    let added = ok(
        &net,
        &[
            "customers",
            "add",
            "carol",
            "--quota-daily",
            "1GB",
            "--countries",
            "US,DE",
        ],
    )
    .await;
    let password = field(&added, "password");
    assert!(added.contains("quota_daily=1000000000"), "{added}");
    // In force on the proxy without a reload.
    until("carol may connect", || async {
        status_as(&net, &target, "carol", &password).await == 200
    })
    .await;

    let listed = ok(&net, &["customers", "list"]).await;
    let carol = listed
        .lines()
        .find(|line| line.starts_with("carol "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        carol.contains("yes") && carol.contains("countries=US,DE"),
        "{listed}"
    );

    // A sub-user above its customer's quota: the API's 422 names the field.
    let refused = fails(
        &net,
        &["customers", "add", "ops.carol", "--quota-daily", "2GB"],
    )
    .await;
    assert!(
        refused.contains("422 invalid: limits.quota_daily"),
        "{refused}"
    );
    let sub = json(
        &net,
        &[
            "customers",
            "add",
            "ops.carol",
            "--quota-daily",
            "100MB",
            "--countries",
            "DE",
        ],
    )
    .await;
    assert_eq!(sub["account"]["customer"], "carol", "{sub}");
    let subs = ok(&net, &["customers", "list", "--of", "carol"]).await;
    assert!(subs.contains("ops.carol"), "{subs}");

    ok(
        &net,
        &[
            "customers",
            "set",
            "carol",
            "--max-connections",
            "5",
            "--quota-daily",
            "none",
        ],
    )
    .await;
    let shown = json(&net, &["customers", "show", "carol"]).await;
    assert_eq!(shown["limits"]["max_connections"], 5, "{shown}");
    assert!(shown["limits"]["quota_daily"].is_null(), "{shown}");
    let nothing = fails(&net, &["customers", "set", "carol"]).await;
    assert!(nothing.contains("nothing to change"), "{nothing}");

    ok(&net, &["customers", "disable", "carol"]).await;
    until("disabled carol is refused", || async {
        status_as(&net, &target, "carol", &password).await != 200
    })
    .await;
    ok(&net, &["customers", "enable", "carol"]).await;
    let rotated = ok(&net, &["customers", "passwd", "carol"]).await;
    let new_password = rotated
        .split("new password: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    until("the new password works", || async {
        status_as(&net, &target, "carol", &new_password).await == 200
    })
    .await;
    assert_ne!(status_as(&net, &target, "carol", &password).await, 200);

    ok(&net, &["customers", "delete", "carol"]).await;
    let gone = fails(&net, &["customers", "show", "carol"]).await;
    assert!(gone.contains("404 not_found"), "{gone}");
    let bad = fails(&net, &["customers", "show", "no/such"]).await;
    assert!(bad.contains("a customer name"), "{bad}");
}

#[tokio::test]
async fn the_cli_makes_and_revokes_agent_tokens() {
    let net = gateway().await;
    let made = ok(
        &net,
        &[
            "tokens",
            "new",
            "--label",
            "volunteers",
            "--max-agents",
            "1",
        ],
    )
    .await;
    let (id, secret) = (field(&made, "id"), field(&made, "secret"));
    assert!(secret.len() >= 32, "{made}");
    let listed = ok(&net, &["tokens", "list"]).await;
    assert!(
        listed.contains(&id) && listed.contains("volunteers"),
        "{listed}"
    );

    // An agent with the store's token joins; a second one is over max_agents.
    let builder = |ip: &str| {
        exitpool::agent::Agent::builder(
            net.gateway.tunnel_addr().to_string(),
            net.gateway.pin().parse().unwrap(),
            secret.clone(),
        )
        .bind(ip.parse().unwrap())
        .allow_private(true)
    };
    let mut agent = net.spawn(builder("127.0.0.2")).await;
    let second = builder("127.0.0.3").spawn().unwrap();
    until("the second agent is turned away", || async {
        turned_away(&net).await >= 1
    })
    .await;
    // Last used is marked (in a batch, within a second or so).
    until("last used marked", || async {
        let tokens = json(&net, &["tokens", "list"]).await;
        tokens["items"][0]["last_used_at"].is_string()
    })
    .await;
    drop(second);

    ok(&net, &["tokens", "revoke", &id]).await;
    let ended = within("the agent is disconnected and refused", agent.finished()).await;
    let why = ended
        .expect_err("a revoked token's agent stops")
        .to_string();
    assert!(why.contains("revoked"), "{why}");
    let exits = json(&net, &["exits", "list"]).await;
    assert_eq!(exits["items"].as_array().unwrap().len(), 0, "{exits}");
    let mut again = builder("127.0.0.2").spawn().unwrap();
    let why = within("refused at join", again.finished())
        .await
        .expect_err("refused")
        .to_string();
    assert!(why.contains("revoked"), "{why}");
    let listed = json(&net, &["tokens", "list"]).await;
    assert!(listed["items"][0]["revoked_at"].is_string(), "{listed}");
}

#[tokio::test]
async fn the_cli_lists_and_closes_connections_and_bans_exits() {
    let net = gateway().await;
    let agent = net.agent("127.0.0.4").await;
    let exit_id = within("session", agent.connected()).await.exit_id;
    let target = echo_target().await;
    let (head, mut stream) = connect_as(net.proxy(), target, "-country-de").await;
    assert_eq!(head.status, 200, "{head:?}");
    within("write", stream.write_all(&[7u8; 4096]))
        .await
        .unwrap();
    let mut back = [0u8; 4096];
    within("echo", stream.read_exact(&mut back)).await.unwrap();

    let listed = ok(&net, &["connections", "list", "--customer", "alice"]).await;
    let row = listed
        .lines()
        .find(|line| line.contains(&target.to_string()))
        .unwrap_or_else(|| panic!("{listed}"));
    for cell in ["alice", "connect", "DE", exit_id.as_str(), "4096"] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    assert!(
        listed.contains("1 of 1 shown (this gateway's connections"),
        "{listed}"
    );
    let id = json(&net, &["connections", "list"]).await["items"][0]["id"].to_string();
    assert_eq!(
        ok(&net, &["connections", "close", &id]).await.trim(),
        "closed 1"
    );
    let mut buf = [0u8; 64];
    let read = within("the closed transfer ends", stream.read(&mut buf)).await;
    assert!(read.is_err(), "a reset, not {read:?}");
    let missing = fails(&net, &["connections", "close", &id]).await;
    assert!(missing.contains("404 not_found"), "{missing}");

    let (_, _second) = connect_as(net.proxy(), target, "").await;
    assert_eq!(
        ok(&net, &["connections", "close", "--customer", "alice"])
            .await
            .trim(),
        "closed 1"
    );
    let neither = fails(&net, &["connections", "close"]).await;
    assert!(neither.contains("required"), "{neither}");

    let exits = ok(&net, &["exits", "list"]).await;
    let row = exits
        .lines()
        .find(|line| line.starts_with(&exit_id))
        .unwrap_or_else(|| panic!("{exits}"));
    assert!(
        row.contains("DE") && row.contains("berlin") && row.contains("quic") && row.contains("ok"),
        "{row}"
    );
    let banned = ok(&net, &["exits", "ban", &exit_id, "--reason", "test"]).await;
    assert_eq!(
        banned.trim(),
        format!("exit {exit_id}: banned; disconnected")
    );
    let bans = ok(&net, &["exits", "list", "--banned"]).await;
    assert!(bans.contains(&exit_id) && bans.contains("test"), "{bans}");
    let unbanned = ok(&net, &["exits", "unban", &exit_id]).await;
    assert_eq!(unbanned.trim(), format!("exit {exit_id}: unbanned"));
    let bad = fails(&net, &["exits", "ban", "zz"]).await;
    assert!(bad.contains("422 invalid: id"), "{bad}");

    // Without the token: the API's 401, non-zero.
    let done = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "exits",
            "list",
            "--admin-url",
            &format!("http://{}", net.admin()),
        ])
        .env_remove("EXITPOOL_ADMIN_TOKEN")
        .run(WAIT)
        .await
        .unwrap();
    assert!(!done.status.success());
    assert!(done.stderr.contains("401 unauthorized"), "{}", done.stderr);
}

#[tokio::test]
async fn the_read_only_token_lists_but_changes_nothing() {
    let net = gateway().await;
    let agent = net.agent("127.0.0.2").await;
    let exit_id = within("session", agent.connected()).await.exit_id;
    let call = |method: &str, path: &str, token: &str| {
        reqwest::Client::new()
            .request(
                method.parse().unwrap(),
                format!("http://{}/api/v1{path}", net.admin()),
            )
            .bearer_auth(token)
            .send()
    };
    for path in [
        "/connections",
        "/exits",
        "/exits?banned=true",
        "/openapi.json",
    ] {
        let answer = within("GET", call("GET", path, READER)).await.unwrap();
        assert_eq!(answer.status(), 200, "GET {path}");
    }
    let ban = format!("/exits/{exit_id}/ban");
    for (method, path) in [
        ("POST", ban.as_str()),
        ("DELETE", "/connections?customer=alice"),
    ] {
        let answer = within("write", call(method, path, READER)).await.unwrap();
        assert_eq!(answer.status(), 403, "{method} {path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "forbidden", "{body}");
    }
    let answer = within("GET", call("GET", "/exits", "not-a-token"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    // The exit was not banned by the refused call.
    let exits = json(&net, &["exits", "list"]).await;
    assert_eq!(exits["items"][0]["banned"], false, "{exits}");
}

#[tokio::test]
async fn a_gateway_process_takes_agents_with_the_tokens_its_cli_makes() {
    use exitpool_launcher::binaries::AGENT_CONNECTED;
    use exitpool_launcher::Ready;
    // No --agent-token and no --users: the database (SQLite in the state
    // directory) holds accounts and tokens.
    let state = tempfile::tempdir().unwrap();
    let mut gateway = common::processes::GatewayProcess::start(
        state.path(),
        &["--admin-token".to_owned(), ADMIN.to_owned()],
    )
    .await;
    let made = cli_at(gateway.admin, &["tokens", "new", "--label", "process"]).await;
    assert!(made.status.success(), "{}", made.stderr);
    let (id, secret) = (field(&made.stdout, "id"), field(&made.stdout, "secret"));

    let device = tempfile::tempdir().unwrap();
    let mut agent = Launch::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--gateway", &gateway.banner.tunnel.to_string()])
        .args(["--pin", &gateway.banner.pin])
        .args(["--bind", "127.0.0.2", "--allow-private"])
        .arg("--state-dir")
        .arg(device.path())
        .env("EXITPOOL_AGENT_TOKEN", &secret)
        .env("RUST_LOG", "info")
        .start(Ready::line(AGENT_CONNECTED), WAIT)
        .await
        .expect("the agent joins with the database's token");
    let exits = cli_at(gateway.admin, &["exits", "list", "--json"]).await;
    let exits: Value = serde_json::from_str(&exits.stdout).unwrap();
    assert_eq!(exits["items"].as_array().unwrap().len(), 1, "{exits}");

    let revoked = cli_at(gateway.admin, &["tokens", "revoke", &id]).await;
    assert!(revoked.status.success(), "{}", revoked.stderr);
    let status = agent.exited(WAIT).await.expect("the agent stops");
    assert!(!status.success());
    assert!(agent.tail().contains("revoked"), "{}", agent.tail());
    gateway.process.stop(WAIT).await.unwrap();
}

/// `gateway accounts import FILE` moves a `--users` file's accounts into the
/// database with their password hashes as they are: the customer logs in
/// with the password the file's hash was made from, never sent anywhere; a
/// name already taken is named in the summary and the rest still land.
#[tokio::test]
async fn the_cli_imports_a_users_files_accounts_with_their_hashes() {
    let net = gateway().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = common::targets::echo_target().await.to_string();
    ok(&net, &["customers", "add", "taken"]).await;
    let hash = exitpool::gateway::auth::hash_password("fil3dPass9").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(
        &file,
        format!(
            "[[customer]]\nname = \"filed\"\npassword_hash = \"{hash}\"\nmax_connections = 3\n\n\
             [[customer]]\nname = \"taken\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let done = cli(&net, &["accounts", "import", file.to_str().unwrap()]).await;
    let said = format!("{}\n{}", done.stdout, done.stderr);
    assert!(said.contains("taken"), "{said}");
    // The gateway's view takes the store's accounts once a second; tried
    // every 250 ms so as not to spend the address's failed-login budget.
    within("the imported customer logs in", async {
        while status_as(&net, &target, "filed", "fil3dPass9").await != 200 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert_eq!(status_as(&net, &target, "filed", "wrong-pass").await, 407);
    // A hash that is no Argon2id PHC string is refused by the API, naming the field.
    let refused = reqwest::Client::new()
        .post(format!("http://{}/api/v1/customers", net.admin()))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "odd", "password_hash": "md5:abc"}))
        .send();
    let refused = within("POST /api/v1/customers", refused).await.unwrap();
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["field"], "password_hash", "{body}");
}
