//! Issue 34, the SDK for apps: the C example (examples/embedded_agent.c),
//! compiled with the system's C compiler against the SDK's static library,
//! joins a real gateway only after it records consent, serves a customer's
//! request (made here, through the proxy, to a loopback target), says it is
//! reconnecting when the gateway goes away, reports the request in its stats
//! and host report, turns bad input into an error code and a message, and
//! stops. Real processes and sockets on 127.0.0.0/8.

mod common;
mod sdk_hosts;

use common::processes::{customer, exit_of};
use common::targets::http_target;
use common::*;
use sdk_hosts::{compile, config_json, library_dir, workspace, Host};
use tokio::process::Command;

/// Compiles the C example against the static library into `dir`.
async fn compile_example(dir: &std::path::Path) -> std::path::PathBuf {
    let program = dir.join("embedded_agent");
    let mut cc = Command::new("cc");
    cc.arg(workspace().join("examples/embedded_agent.c"))
        .arg("-I")
        .arg(workspace().join("agent-ffi/include"))
        .arg(library_dir().join("libexitpool_agent_ffi.a"))
        .args(["-lpthread", "-ldl", "-lm", "-Wall", "-Werror", "-o"])
        .arg(&program);
    compile("cc compiling the C example", cc).await;
    program
}

#[tokio::test]
async fn the_c_example_serves_a_request_after_consent() {
    let net = TestGateway::start().await;
    let target = http_target("127.0.0.1").await;
    let build = tempfile::tempdir().unwrap();
    let program = compile_example(build.path()).await;
    let state = tempfile::tempdir().unwrap();

    let mut command = Command::new(&program);
    command.arg(config_json(&net, "127.0.0.2", state.path()));
    let mut host = Host::spawn(command);
    host.expect("state 0: ").await; // waiting for consent
    let consent: serde_json::Value = serde_json::from_str(&host.expect("consent: ").await).unwrap();
    assert_eq!(consent["text"], "example terms v1");
    let joined = host.expect("joined: ").await;
    assert!(joined.contains("in US over quic"), "{joined}");

    let client = customer("127.0.0.1", net.proxy(), Some((USER, PASSWORD)));
    assert_eq!(
        exit_of(&client, target).await,
        (200, "127.0.0.2".to_owned())
    );

    // The gateway goes away: the agent says it is reconnecting.
    within("gateway shutdown", net.gateway.shutdown()).await;
    host.expect("state 4: ").await;

    host.say("stop").await;
    let stats: serde_json::Value = serde_json::from_str(&host.expect("stats: ").await).unwrap();
    assert_eq!(stats["state"], "reconnecting", "{stats}");
    assert_eq!(stats["session"], serde_json::Value::Null, "{stats}");
    assert_eq!(stats["streams_served"], 1, "{stats}");
    assert_eq!(stats["consent"]["text"], "example terms v1", "{stats}");
    let today = &stats["report"][0];
    assert_eq!(today["streams"], 1, "{stats}");
    assert!(today["bytes"].as_u64().unwrap() > 0, "{stats}");
    let bad = host.expect("bad limits: ").await;
    assert!(
        bad.starts_with("error 2: ") && bad.contains("max_rate"),
        "{bad}"
    );
    host.expect("state 5: shut down").await;
    host.expect("done").await;
    host.succeeds().await;

    // The consent and the day's report stay in the state directory.
    let kept = exitpool::agent::consent::load(state.path())
        .unwrap()
        .unwrap();
    assert_eq!(kept.text.as_deref(), Some("example terms v1"));
    let report = exitpool::agent::report::load(state.path()).unwrap();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].streams, 1);
}
