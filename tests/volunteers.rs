//! Issue 16, "Volunteers' homes": what a customer can learn about, and do to, the
//! volunteer whose agent serves as the exit: refusals that name no address, a
//! log that is not a customer's megaphone, a pin check that one forged handshake
//! cannot turn into a permanent stop, state files only the owner can read, and
//! the device's own addresses as the policy sees them. Real gateways and agents
//! on 127.0.0.0/8; nothing is dialled off loopback.

mod common;

use common::*;
use tokio::io::AsyncReadExt;

/// A refused CONNECT's head and body, as one text.
async fn refused_answer(proxy: std::net::SocketAddr, target: &str) -> (Head, String) {
    let (head, mut stream) = connect(proxy, target, Some((USER, PASSWORD))).await;
    let mut body = Vec::new();
    within("error body", stream.read_to_end(&mut body))
        .await
        .expect("the error body arrives");
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_refusal_names_neither_the_resolved_address_nor_the_range() {
    let net = TestGateway::start().await;
    let _agent = net.strict_agent("127.0.0.2").await;
    // `localhost` resolves (on the agent) to 127.0.0.1 and ::1; the customer
    // learns that it is refused, not what the volunteer's resolver said.
    let (head, body) = refused_answer(net.proxy(), "localhost:8080").await;
    assert_eq!(head.status, 403, "{head:?}");
    let status = head.header("proxy-status").expect("Proxy-Status");
    assert!(
        status.contains("error=destination_ip_prohibited"),
        "{status}"
    );
    assert_eq!(
        head.header("x-exitpool-error"),
        Some("destination_prohibited")
    );
    let everything = format!("{head:?}\n{body}");
    for leak in ["127.0.0.1", "::1", "loopback", "127.0.0.0/8"] {
        assert!(!everything.contains(leak), "{leak:?} leaked: {everything}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_state_directory_and_its_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let loosen = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let net = TestGateway::start().await;
    let root = tempfile::tempdir().unwrap();
    let fresh = root.path().join("fresh");
    let agent = net
        .spawn(net.agent_builder("127.0.0.2").state_dir(&fresh))
        .await;
    within("agent stops", agent.shutdown()).await.unwrap();
    assert_eq!(mode(&fresh), 0o700);
    for file in ["agent-id", "usage.json"] {
        assert_eq!(mode(&fresh.join(file)), 0o600, "{file}");
    }
    // A directory an older agent (or a careless copy) left readable by others
    // is tightened at the next start.
    loosen(&fresh, 0o755);
    loosen(&fresh.join("agent-id"), 0o644);
    loosen(&fresh.join("usage.json"), 0o666);
    let agent = net
        .spawn(net.agent_builder("127.0.0.2").state_dir(&fresh))
        .await;
    assert_eq!(mode(&fresh), 0o700);
    for file in ["agent-id", "usage.json"] {
        assert_eq!(mode(&fresh.join(file)), 0o600, "{file}");
    }
    within("agent stops", agent.shutdown()).await.unwrap();
}
