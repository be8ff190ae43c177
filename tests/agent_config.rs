//! Issue 34, `agent.toml`: the real `agent` binary reading its configuration
//! file. `check-config` reports every error at once with file, line and key,
//! and says `ok` to a good file; a world-readable file holding the token is
//! warned about; an agent runs from its file against a real gateway, with a
//! flag overriding the file and the file's schedule and consent in force; a
//! file without consent starts nothing; and every flag has a key, in the
//! packaged example and in docs/install.md.

mod common;

use common::*;
use exitpool_launcher::{Launch, Ready};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const AGENT: &str = env!("CARGO_BIN_EXE_agent");
const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

async fn check_config(file: &Path) -> exitpool_launcher::Finished {
    Launch::new(AGENT)
        .arg("check-config")
        .arg(file)
        .env_remove("EXITPOOL_AGENT_TOKEN")
        .run(WAIT)
        .await
        .expect("check-config runs")
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test]
async fn check_config_reports_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "agent.toml",
        "gateway = \"gw.example.net:4433\"\n\
         pin = \"sha256:beef\"\n\
         token = \"t\"\n\
         max_rat = \"2MB/s\"\n\
         keep_alive = \"soon\"\n\
         consent = true\n\
         [schedule]\n\
         monthly_cap = \"lots\"\n\
         [[schedule.window]]\n\
         days = \"funday\"\n\
         start = \"09:00\"\n\
         end = \"17:00\"\n",
        0o600,
    );
    let result = check_config(&file).await;
    assert!(!result.status.success(), "{result:?}");
    let name = file.display().to_string();
    let lines: Vec<&str> = result.stderr.lines().collect();
    let expected = [
        (2, "pin"),
        (4, "max_rat"),
        (5, "keep_alive"),
        (8, "schedule.monthly_cap"),
        (10, "schedule.window[1].days"),
    ];
    assert_eq!(lines.len(), expected.len(), "{}", result.stderr);
    for (line, (number, key)) in lines.iter().zip(expected) {
        let prefix = format!("{name}:{number}: key `{key}`: ");
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start {prefix:?}"
        );
    }
    assert!(result.stdout.trim().is_empty(), "{result:?}");
}

#[tokio::test]
async fn check_config_says_ok_to_a_good_file_and_warns_when_everyone_can_read_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "gateway = [\"gw1.example.net:4433\", \"gw2.example.net:4433\"]\n\
         pin = \"{PIN}\"\ntoken = \"t0ken-value\"\nconsent = true\nmax_rate = \"2MB/s\"\n"
    );
    let file = write(dir.path(), "agent.toml", &text, 0o600);
    let result = check_config(&file).await;
    assert!(result.status.success(), "{result:?}");
    assert_eq!(result.stdout.trim(), "ok");
    assert!(result.stderr.trim().is_empty(), "{result:?}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let result = check_config(&file).await;
    assert!(
        result.status.success(),
        "a warning, not an error: {result:?}"
    );
    assert!(
        result.stderr.contains("warning:") && result.stderr.contains("every user"),
        "{result:?}"
    );
    assert!(
        !result.stderr.contains("t0ken-value"),
        "the token is never printed"
    );

    // Without a token, pin, gateway and consent, it names each.
    let file = write(dir.path(), "empty.toml", "# nothing yet\n", 0o600);
    let result = check_config(&file).await;
    assert!(!result.status.success());
    for key in ["gateway", "pin", "token", "consent"] {
        assert!(
            result.stderr.contains(&format!("key `{key}`")),
            "{key}: {result:?}"
        );
    }
}

#[tokio::test]
async fn an_agent_runs_from_its_file_with_flags_overriding_it() {
    let net = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let status = exitpool_launcher::ports::free_port().unwrap();
    let text = net.agent_toml(
        dir.path(),
        status,
        "max_rate = \"1MB/s\"\n\
         [schedule]\n\
         timezone = \"UTC\"\n\
         [[schedule.window]]\n\
         name = \"always\"\n\
         start = \"00:00\"\n\
         end = \"24:00\"\n",
    );
    let file = write(dir.path(), "agent.toml", &text, 0o600);
    let mut agent = Launch::new(AGENT)
        .arg("--config")
        .arg(&file)
        .args(["--max-rate", "2MB/s"])
        .env_remove("EXITPOOL_AGENT_TOKEN")
        .start(Ready::Listening(status), WAIT)
        .await
        .expect("the agent starts from its file");
    within(
        "agent joins",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let url = format!("http://{status}/");
    let stats: serde_json::Value = within("status", async {
        reqwest::get(url).await.unwrap().json().await.unwrap()
    })
    .await;
    assert_eq!(stats["max_rate"], 2_000_000, "the flag wins: {stats}");
    assert_eq!(stats["schedule"]["window"], "always", "{stats}");
    assert_eq!(stats["schedule"]["paused"], false, "{stats}");
    assert!(stats["consent"]["granted_at"].as_u64().is_some(), "{stats}");
    let (_, ip) = exit_ip(net.proxy(), http_target().await, "").await;
    assert_eq!(ip, "127.0.0.2");
    agent.stop(Duration::from_secs(10)).await.unwrap();
}

async fn http_target() -> std::net::SocketAddr {
    common::targets::http_target("127.0.0.1").await
}

#[tokio::test]
async fn a_file_without_consent_starts_nothing() {
    let net = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "gateway = \"{}\"\npin = \"{}\"\ntoken = \"{TOKEN}\"\nconsent = false\nstate_dir = \"{}\"\n",
        net.gateway.tunnel_addr(),
        net.gateway.pin(),
        dir.path().join("state").display(),
    );
    let file = write(dir.path(), "agent.toml", &text, 0o600);
    let result = Launch::new(AGENT)
        .arg("--config")
        .arg(&file)
        .run(WAIT)
        .await
        .unwrap();
    // 78 (EX_CONFIG): the unit does not restart an agent on it.
    assert_eq!(result.status.code(), Some(78), "{result:?}");
    assert!(result.stderr.contains("key `consent`"), "{result:?}");
    assert_eq!(net.gateway.directory().census().borrow().agents, 0);
}

/// Every `--flag` of `agent --help` has its key in the packaged example and a
/// row in docs/install.md's reference.
#[tokio::test]
async fn every_flag_has_a_key_in_the_example_and_the_manual() {
    let help = Launch::new(AGENT).arg("--help").run(WAIT).await.unwrap();
    assert!(help.status.success());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("deploy/debian/agent.toml")).unwrap();
    let manual = std::fs::read_to_string(root.join("docs/install.md")).unwrap();
    let mut flags = 0;
    for word in help.stdout.split_whitespace() {
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let flag = flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        if ["help", "version", "config"].contains(&flag) || flag.is_empty() {
            continue;
        }
        flags += 1;
        let key = match flag {
            "summary-secs" => "summary_interval".to_owned(),
            "keep-alive-ms" => "keep_alive".to_owned(),
            "handshake-timeout-ms" => "handshake_timeout".to_owned(),
            other => other.replace('-', "_"),
        };
        let assignment = format!("{key} = ");
        assert!(
            example
                .lines()
                .any(|line| line.trim_start_matches('#').starts_with(&assignment)),
            "deploy/debian/agent.toml has no `{key}` for --{flag}"
        );
        assert!(
            manual.contains(&format!("| `{key}` |")),
            "docs/install.md has no row for `{key}` (--{flag})"
        );
    }
    assert!(flags >= 18, "read {flags} flags from --help");
}

/// A period for handing freed memory back that is not one stops the agent at
/// start with the variable named (78, as for any configuration it cannot
/// start with), instead of running with a guess.
#[tokio::test]
async fn a_bad_malloc_trim_period_refuses_the_start() {
    let state = tempfile::tempdir().unwrap();
    for bad in ["often", "-1", "7200"] {
        let result = Launch::new(AGENT)
            .env("EXITPOOL_MALLOC_TRIM_SECS", bad)
            .args(["--gateway", "127.0.0.1:9", "--pin", PIN])
            .args(["--token", "0123456789abcdef0123456789abcdef"])
            .arg("--state-dir")
            .arg(state.path())
            .run(WAIT)
            .await
            .unwrap();
        assert_eq!(result.status.code(), Some(78), "{bad}: {result:?}");
        assert!(
            result.stderr.contains("EXITPOOL_MALLOC_TRIM_SECS"),
            "{bad}: {result:?}"
        );
    }
}
