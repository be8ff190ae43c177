//! Issue 16, "Volunteers' homes": what a customer can learn about, and do to, the
//! volunteer whose agent serves as the exit: refusals that name no address, a
//! log that is not a customer's megaphone, a pin check that one forged handshake
//! cannot turn into a permanent stop, state files only the owner can read, and
//! the device's own addresses as the policy sees them. Real gateways and agents
//! on 127.0.0.0/8; nothing is dialled off loopback.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// One formatted log event, as the test's subscriber wrote it.
struct LineSender(mpsc::UnboundedSender<String>);

impl std::io::Write for LineSender {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(bytes).into_owned());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the log of everything on this test's thread (a `#[tokio::test]`
/// runtime runs the gateway and agent tasks there too), one event per message.
fn capture_logs() -> (
    tracing::subscriber::DefaultGuard,
    mpsc::UnboundedReceiver<String>,
) {
    let (lines, receiver) = mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || LineSender(lines.clone()))
        .finish();
    (tracing::subscriber::set_default(subscriber), receiver)
}

/// Waits for the next captured line containing `needle`; returns it with every
/// line seen on the way.
async fn next_line_with(
    logs: &mut mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> (String, Vec<String>) {
    let mut passed = Vec::new();
    loop {
        let line = within(needle, logs.recv()).await.expect("logger alive");
        if line.contains(needle) {
            return (line, passed);
        }
        passed.push(line);
    }
}

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
    for file in ["device-key", "usage.json"] {
        assert_eq!(mode(&fresh.join(file)), 0o600, "{file}");
    }
    // A directory an older agent (or a careless copy) left readable by others
    // is tightened at the next start.
    loosen(&fresh, 0o755);
    loosen(&fresh.join("device-key"), 0o644);
    loosen(&fresh.join("usage.json"), 0o666);
    let agent = net
        .spawn(net.agent_builder("127.0.0.2").state_dir(&fresh))
        .await;
    assert_eq!(mode(&fresh), 0o700);
    for file in ["device-key", "usage.json"] {
        assert_eq!(mode(&fresh.join(file)), 0o600, "{file}");
    }
    within("agent stops", agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn refusals_are_counted_in_one_summary_line_not_logged_one_by_one() {
    let (_guard, mut logs) = capture_logs();
    let net = TestGateway::start().await;
    let agent = net
        .spawn(
            net.agent_builder("127.0.0.2")
                .allow_private(false)
                .refusal_summary_interval(Duration::from_secs(2)),
        )
        .await;
    let targets = [
        "10.9.8.7:80",
        "192.168.77.1:80",
        "[fd00:abcd::1]:443",
        "localhost:8080",
        "203.0.113.9:25",
    ];
    for target in targets {
        let (head, _) = refused_answer(net.proxy(), target).await;
        assert_eq!(head.status, 403, "{target}: {head:?}");
    }
    assert_eq!(agent.stats().refused_by_policy, 5);
    let (summary, before) = next_line_with(&mut logs, "refused by the exit policy").await;
    assert!(summary.contains("refused=5"), "{summary}");
    assert!(summary.contains("by_address=4 by_port=1"), "{summary}");
    // The agent wrote nothing about the single refusals: no customer text.
    for line in before.iter().filter(|line| line.contains("exitpool_agent")) {
        for target in ["10.9.8.7", "192.168.77.1", "fd00:abcd", "203.0.113.9"] {
            assert!(!line.contains(target), "{line}");
        }
    }
}

/// Stops `net` and starts, on the same tunnel port, a gateway with a fresh
/// state directory: another certificate, as a forger on the path would show.
async fn impostor_on_the_port_of(
    net: TestGateway,
) -> (TestGateway, tempfile::TempDir, std::net::SocketAddr) {
    let tunnel = net.gateway.tunnel_addr();
    let state = net.state;
    within("gateway stops", net.gateway.shutdown()).await;
    let other = tempfile::tempdir().unwrap();
    let mut config = TestGateway::config(other.path());
    config.tunnel = tunnel;
    let impostor = TestGateway::start_in(other, config, |_| {}).await;
    (impostor, state, tunnel)
}

#[tokio::test]
async fn a_pin_mismatch_after_a_first_connection_is_retried_not_fatal() {
    let (_guard, mut logs) = capture_logs();
    let net = TestGateway::start().await;
    let pin = net.gateway.pin().to_owned();
    let home = tempfile::tempdir().unwrap();
    let builder = net
        .agent_builder("127.0.0.2")
        .state_dir(home.path())
        .pin_mismatch_retry(Duration::from_millis(200));
    // Welcomed once with the pin: the state directory remembers it.
    let first = net.spawn(builder.clone()).await;
    within("agent stops", first.shutdown()).await.unwrap();

    let (impostor, state, tunnel) = impostor_on_the_port_of(net).await;
    assert_ne!(impostor.gateway.pin(), pin);
    // A restarted agent meets the other certificate: it warns and tries again
    // (twice here), and keeps running.
    let mut agent = builder.spawn().unwrap();
    for _ in 0..2 {
        next_line_with(&mut logs, "DOES NOT MATCH THE PIN").await;
    }
    assert!(agent.stats().pin_mismatches >= 2);
    assert_eq!(
        impostor.gateway.directory().len(),
        0,
        "nothing joined the impostor"
    );
    let still_running = tokio::time::timeout(Duration::from_millis(1), agent.finished()).await;
    assert!(
        still_running.is_err(),
        "the agent stopped: {still_running:?}"
    );

    // The real gateway comes back on its port: the agent rejoins by itself.
    within("impostor stops", impostor.gateway.shutdown()).await;
    let mut config = TestGateway::config(state.path());
    config.tunnel = tunnel;
    let real = TestGateway::start_in(state, config, |_| {}).await;
    assert_eq!(real.gateway.pin(), pin);
    within("agent rejoins", agent.connected()).await;
    within("agent stops", agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_pin_mismatch_on_a_pin_never_connected_with_stops_at_once() {
    let net = TestGateway::start().await;
    let pin = net.gateway.pin().to_owned();
    // This home has connected, but with another gateway's pin.
    let home = tempfile::tempdir().unwrap();
    let elsewhere = TestGateway::start().await;
    let other = elsewhere
        .spawn(elsewhere.agent_builder("127.0.0.3").state_dir(home.path()))
        .await;
    within("agent stops", other.shutdown()).await.unwrap();

    let (_impostor, _state, tunnel) = impostor_on_the_port_of(net).await;
    let mut agent =
        exitpool::agent::Agent::builder(tunnel.to_string(), pin.parse().unwrap(), TOKEN)
            .bind("127.0.0.2".parse().unwrap())
            .state_dir(home.path())
            .pin_mismatch_retry(Duration::from_millis(200))
            .spawn()
            .unwrap();
    let result = within("agent gives up", agent.finished()).await;
    assert!(
        matches!(result, Err(exitpool::agent::AgentError::PinMismatch(_))),
        "{result:?}"
    );
    assert!(result.unwrap_err().to_string().contains("check --pin"));
}

#[tokio::test]
async fn the_own_addresses_are_read_at_connection_and_again_while_connected() {
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};
    let net = TestGateway::start().await;
    // The "interfaces": a public IPv4 on one link and a global IPv6 address.
    let first: Vec<IpAddr> = vec![
        "81.2.69.160".parse().unwrap(),
        "2a02:8071:5c0:1d00::20".parse().unwrap(),
    ];
    let current = Arc::new(Mutex::new(first.clone()));
    let (reads, mut read) = mpsc::unbounded_channel();
    let source = {
        let current = current.clone();
        exitpool::agent::InterfaceSource::from_fn(move || {
            let _ = reads.send(());
            Ok(current.lock().unwrap().clone())
        })
    };
    let agent = net
        .spawn(
            net.agent_builder("127.0.0.2")
                .allow_private(false)
                .interfaces(source)
                .interface_refresh(Duration::from_millis(100)),
        )
        .await;
    // Read before the agent took its first stream, with the observed address.
    within("first read", read.recv()).await.unwrap();
    let own = agent.stats().own_addresses;
    assert!(own.contains(&"127.0.0.2".parse().unwrap()), "{own:?}");
    for address in &first {
        assert!(own.contains(address), "{own:?}");
    }
    // The router hands out a new prefix: refused from the next read on.
    let second: IpAddr = "2a02:8071:77::20".parse().unwrap();
    *current.lock().unwrap() = vec![second];
    // Reads run one after another, so once the third has started the second's
    // answer is in force.
    within("second read", read.recv()).await.unwrap();
    within("third read", read.recv()).await.unwrap();
    let own = agent.stats().own_addresses;
    assert!(own.contains(&second), "{own:?}");
    assert!(!own.contains(&first[1]), "{own:?}");
    assert!(own.contains(&"127.0.0.2".parse().unwrap()), "{own:?}");
}
