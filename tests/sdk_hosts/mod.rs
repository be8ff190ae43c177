//! What the SDK tests (tests/sdk_c.rs, sdk_python.rs, sdk_java.rs) share: where
//! the C library was built, the configuration JSON an app passes for an agent
//! against a fixture gateway, and a host program (the C example, a Python or
//! Java script) run as a child whose output lines the test waits on.

// Each test file uses some of these.
#![allow(dead_code)]

use crate::common::{within, TestGateway, TOKEN};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Longest a compiler (`cc` linking the 300 MB debug static library, `javac`)
/// may take on a busy machine: longer than [`crate::common::WAIT`], which
/// bounds network events.
pub const COMPILE_BOUND: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `command` to completion within [`COMPILE_BOUND`] and fails with its
/// error output unless it succeeds.
pub async fn compile(what: &str, mut command: Command) {
    let output = tokio::time::timeout(COMPILE_BOUND, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {COMPILE_BOUND:?}"))
        .unwrap_or_else(|error| panic!("{what} did not run: {error}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Where cargo put the SDK's C library (`libexitpool_agent_ffi.so` and `.a`):
/// it is a dev-dependency, so it is built beside this test's executable.
pub fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().expect("target/debug/deps").to_owned();
    assert!(
        dir.join("libexitpool_agent_ffi.so").exists()
            && dir.join("libexitpool_agent_ffi.a").exists(),
        "the SDK library is missing from {}",
        dir.display()
    );
    dir
}

/// The workspace root, where examples/ and bindings/ are.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An app's configuration for an agent on `ip` against `net`, keeping its
/// state in `state_dir`; loopback targets allowed, as every test agent is.
pub fn config_json(net: &TestGateway, ip: &str, state_dir: &Path) -> String {
    serde_json::json!({
        "gateways": [net.gateway.tunnel_addr().to_string()],
        "pin": net.gateway.pin(),
        "token": TOKEN,
        "state_dir": state_dir,
        "bind": ip,
        "allow_private": true,
        "transport": "quic",
        "max_streams": 8,
        "drain_grace_ms": 2000,
    })
    .to_string()
}

/// A host program running as a child, its output read line by line.
pub struct Host {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Host {
    /// Runs `command` with piped standard input and output (stderr passes
    /// through to the test's output); killed if the test ends first.
    pub fn spawn(mut command: Command) -> Host {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the host program starts");
        let stdout = child.stdout.take().expect("piped");
        Host {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Waits for the next line that starts with `prefix` and returns the rest.
    pub async fn expect(&mut self, prefix: &str) -> String {
        loop {
            let line = within(
                &format!("a line starting {prefix:?} (after {:?})", self.seen),
                self.lines.next_line(),
            )
            .await
            .expect("reading the host's output");
            let Some(line) = line else {
                panic!(
                    "the host ended before {prefix:?}; it printed {:?}",
                    self.seen
                );
            };
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Writes `line` to the host's standard input.
    pub async fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        within(
            "writing to the host",
            stdin.write_all(format!("{line}\n").as_bytes()),
        )
        .await
        .expect("the host reads its input");
    }

    /// Waits for the host to exit, and checks it succeeded.
    pub async fn succeeds(mut self) {
        let status = within("the host exits", self.child.wait())
            .await
            .expect("the host's status");
        assert!(status.success(), "{status}; it printed {:?}", self.seen);
    }
}

/// The customer's side of `serve_pause_resume` (the Python and Java hosts
/// run the same script): `host` runs an agent on 127.0.0.2 against `net`
/// with its state in `state`; this makes the customer's requests to `target`
/// and checks what the gateway does at each step.
pub async fn serve_pause_resume(
    mut host: Host,
    net: &TestGateway,
    target: std::net::SocketAddr,
    state: &Path,
) {
    use crate::common::processes::{customer, exit_of};
    use crate::common::{PASSWORD, USER};
    host.expect("bad config refused").await;
    let joined = host.expect("joined ").await;
    assert!(joined.contains("in US"), "{joined}");
    let client = customer("127.0.0.1", net.proxy(), Some((USER, PASSWORD)));
    assert_eq!(
        exit_of(&client, target).await,
        (200, "127.0.0.2".to_owned())
    );

    host.say("served").await;
    host.expect("paused").await;
    let directory = net.gateway.directory();
    within(
        "the gateway stops routing to the paused agent",
        directory.wait_for_census(|c| c.agents == 1 && c.accepting == 0),
    )
    .await;
    let (status, _) = exit_of(&client, target).await;
    assert_eq!(status, 502, "the only agent is paused");

    host.say("resume").await;
    host.expect("resumed").await;
    within(
        "the gateway routes to it again",
        directory.wait_for_census(|c| c.accepting == 1),
    )
    .await;
    assert_eq!(
        exit_of(&client, target).await,
        (200, "127.0.0.2".to_owned())
    );

    host.say("stop").await;
    assert_eq!(host.expect("stopped ").await, "shut down");
    within("the agent leaves", directory.wait_for_count(|n| *n == 0)).await;
    host.expect("done").await;
    host.succeeds().await;

    // Consent and key are gone; what was shared is still there to show.
    assert!(!state.join(exitpool::agent::consent::CONSENT_FILE).exists());
    assert!(!state.join("device-key").exists());
    let report = exitpool::agent::report::load(state).unwrap();
    assert_eq!(report.iter().map(|day| day.streams).sum::<u64>(), 2);
}
