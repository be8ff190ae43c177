//! Issue 32, `gateway.toml`: the real `gateway` binary reading its `--config`
//! file. A gateway started from a file serves a customer through an agent,
//! with a flag overriding a key of the file; `check-config` lists every error
//! with file, line and key and exits non-zero, and the gateway refuses to
//! start with the same lines; SIGHUP applies the live keys (a log filter, and
//! keys of [customers], [limits] and [admin] each seen in force by a real
//! client) and names a changed restart-only key with its old and new value; a secret in the file
//! never appears in any output; and the shipped example passes `check-config`
//! and has a key for every flag of `gateway --help`, in its heading's section.

mod common;

use common::*;
use exitpool_launcher::binaries::GATEWAY_READY;
use exitpool_launcher::{GatewayBanner, Launch, Process, Ready, Signal};
use std::path::{Path, PathBuf};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// A secret the files below hold: it must never be printed.
const ADMIN_SECRET: &str = "adm1n-secret-never-shown-7f3a";

/// The environment variables that would win over the file.
const OVERRIDING_ENV: [&str; 5] = [
    "RUST_LOG",
    "EXITPOOL_USERS",
    "EXITPOOL_AGENT_TOKEN",
    "EXITPOOL_ADMIN_TOKEN",
    "EXITPOOL_REDIS_URL",
];

fn gateway() -> Launch {
    OVERRIDING_ENV
        .iter()
        .fold(Launch::new(GATEWAY), |launch, name| launch.env_remove(name))
}

/// `gateway FLAG FILE` (`check-config` or `--config`), which must fail; its
/// output and its error lines, the ones naming the file.
async fn refused(flag: &str, file: &Path) -> (exitpool_launcher::Finished, Vec<String>) {
    let done = gateway().arg(flag).arg(file).run(WAIT).await.unwrap();
    assert!(!done.status.success(), "{done:?}");
    let name = file.display().to_string();
    let errors = done
        .stderr
        .lines()
        .filter(|line| line.starts_with(&name))
        .map(str::to_owned)
        .collect();
    (done, errors)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A complete file: every port on loopback, one customer, one agent token.
fn good_file(state: &Path, extra_routing: &str, log_filter: &str) -> String {
    format!(
        "[customers]\n\
         listen = \"127.0.0.1:0\"\n\
         user = [\"{USER}:{PASSWORD}\"]\n\
         [tunnel]\n\
         tunnel = \"127.0.0.1:0\"\n\
         agent_token = [\"{TOKEN}\"]\n\
         [admin]\n\
         admin = \"127.0.0.1:0\"\n\
         admin_token = \"{ADMIN_SECRET}\"\n\
         [routing]\n\
         {extra_routing}\n\
         [health]\n\
         silence_check_ms = \"1500ms\"\n\
         [logging]\n\
         log_filter = \"{log_filter}\"\n\
         [runtime]\n\
         state_dir = \"{}\"\n",
        state.display()
    )
}

fn banner(process: &Process) -> GatewayBanner {
    process
        .lines()
        .iter()
        .find_map(|line| GatewayBanner::parse(line))
        .expect("the ready line")
}

/// An agent at 127.0.0.2 joined to the gateway of `banner` with the files'
/// [`TOKEN`].
async fn join_agent(banner: &GatewayBanner) -> exitpool::agent::AgentHandle {
    let agent = exitpool::agent::Agent::builder(
        banner.tunnel.to_string(),
        banner.pin.parse().unwrap(),
        TOKEN,
    )
    .bind("127.0.0.2".parse().unwrap())
    .allow_private(true)
    .spawn()
    .unwrap();
    within("the agent joins", agent.connected()).await;
    agent
}

/// The first line of the gateway's `stderr` that names config key `key`.
fn line_naming_key(stderr: &str, key: &str) -> String {
    stderr
        .lines()
        .find(|line| {
            line.contains(&format!("key=\"{key}\"")) || line.contains(&format!("key={key}"))
        })
        .unwrap_or_else(|| panic!("no line names {key}: {stderr}"))
        .to_owned()
}

fn assert_no_secret(output: &str) {
    assert!(
        !output.contains(ADMIN_SECRET),
        "a secret was printed: {output}"
    );
}

#[tokio::test]
async fn a_gateway_from_its_file_serves_a_customer_and_a_flag_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The file's customer port is taken; the flag's port 0 must win, or the
    // gateway could not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = good_file(&dir.path().join("state"), "open_timeout = \"10s\"", "info").replace(
        "127.0.0.1:0\"\nuser",
        &format!("{}\"\nuser", taken.local_addr().unwrap()),
    );
    assert!(text.contains(&taken.local_addr().unwrap().to_string()));
    let file = write(dir.path(), "gateway.toml", &text);
    let mut process = gateway()
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0"])
        .start(Ready::line(GATEWAY_READY), WAIT)
        .await
        .expect("the gateway starts from its file");
    let banner = banner(&process);
    assert_ne!(banner.listen, taken.local_addr().unwrap(), "the flag wins");
    // An agent joins with the file's token; a customer of the file's gets
    // through it.
    let _agent = join_agent(&banner).await;
    let target = common::targets::http_target("127.0.0.1").await;
    let (head, ip) = exit_ip(banner.listen, target, "").await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(ip, "127.0.0.2");
    process.stop(WAIT).await.unwrap();
    assert_no_secret(&process.stdout());
    assert_no_secret(&process.stderr());
}

#[tokio::test]
async fn every_error_is_listed_by_check_config_and_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "gateway.toml",
        &format!(
            "[customers]\n\
             listen = \"127.0.0.1:0\"\n\
             [routing]\n\
             open_timeout = \"soon\"\n\
             open_timout = \"15s\"\n\
             [limits]\n\
             max_connections = \"many\"\n\
             [admin]\n\
             admin_token = \"{ADMIN_SECRET}\"\n\
             no_admin = \"yes\"\n\
             admin_host = [1, {{ a = 1 }}]\n\
             [health]\n\
             cooling = 5\n"
        ),
    );
    let name = file.display().to_string();
    let expected = [
        (4, "routing.open_timeout"),
        (5, "routing.open_timout"),
        (7, "limits.max_connections"),
        (10, "admin.no_admin"),
        (11, "admin.admin_host"),
        (13, "health.cooling"),
    ];
    let (check, errors) = refused("check-config", &file).await;
    assert_eq!(errors.len(), expected.len(), "{}", check.stderr);
    for (line, (number, key)) in errors.iter().zip(expected) {
        let prefix = format!("{name}:{number}: key `{key}`: ");
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start {prefix:?}"
        );
    }
    assert!(errors[0].contains("not a duration"), "{}", errors[0]);
    assert!(errors[1].contains("unknown key"), "{}", errors[1]);
    assert!(errors[5].contains("\"5s\""), "{}", errors[5]);
    assert_no_secret(&check.stdout);
    assert_no_secret(&check.stderr);
    // The gateway itself refuses the file with the same lines.
    let (start, start_errors) = refused("--config", &file).await;
    assert_eq!(start_errors, errors, "{}", start.stderr);
    assert!(!start.stdout.contains(GATEWAY_READY), "{start:?}");
    assert_no_secret(&start.stdout);
    assert_no_secret(&start.stderr);
}

#[tokio::test]
async fn a_secret_of_the_wrong_shape_or_in_a_rule_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    // A secret where a list is wanted, a secret that is not a string, and a
    // rule between flags (tls_cert needs tls_key) beside a secret.
    for text in [
        format!("[admin]\nadmin_token = [\"{ADMIN_SECRET}\"]\n"),
        "[admin]\nadmin_token = 98765432123456789\n".to_owned(),
        format!(
            "[customers]\ntls_cert = \"/nonexistent.pem\"\nuser = [\"alice:{ADMIN_SECRET}\"]\n"
        ),
        format!("[admin]\nadmin_token = \"{ADMIN_SECRET}\"\n[admin]\n"),
        format!("[admin]\nadmin_token = \"{ADMIN_SECRET}\n"),
    ] {
        let file = write(dir.path(), "gateway.toml", &text);
        let check = gateway()
            .arg("check-config")
            .arg(&file)
            .run(WAIT)
            .await
            .unwrap();
        assert!(!check.status.success(), "{text}: {check:?}");
        assert!(
            check.stderr.contains(&file.display().to_string()),
            "{check:?}"
        );
        assert_no_secret(&check.stderr);
        assert!(!check.stderr.contains("98765432123456789"), "{check:?}");
    }
}

#[tokio::test]
async fn sighup_applies_live_keys_and_names_keys_that_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = write(
        dir.path(),
        "gateway.toml",
        &good_file(&state, "open_timeout = \"15s\"", "warn"),
    );
    let mut process = gateway()
        .arg("--config")
        .arg(&file)
        .start(Ready::line(GATEWAY_READY), WAIT)
        .await
        .expect("the gateway starts from its file");
    // A broken file changes nothing: every error is logged, the gateway
    // runs on (at `warn`, errors are written).
    write(
        dir.path(),
        "gateway.toml",
        "[routing]\nopen_timeout = \"later\"\n",
    );
    process.signal(Signal::Hup).unwrap();
    process
        .line_with("config file refused; running on as before", WAIT)
        .await
        .unwrap();
    // Two live keys (the filter, warn -> info; open_timeout), and a changed
    // secret, which needs a restart.
    write(
        dir.path(),
        "gateway.toml",
        &good_file(&state, "open_timeout = \"20s\"", "info")
            .replace(ADMIN_SECRET, "another-secret-value-9c1e"),
    );
    process.signal(Signal::Hup).unwrap();
    // An `info` line written only once the new filter is in force.
    process
        .line_with("config file re-read", WAIT)
        .await
        .expect("the new filter lets info lines through");
    let stderr = process.stderr();
    let before_reload = stderr.split("config key").next().unwrap();
    assert!(
        !before_reload.contains("gateway started"),
        "at `warn`, the start's info line is not written: {stderr}"
    );
    let line_of = |key: &str| line_naming_key(&stderr, key);
    let open_timeout = line_of("routing.open_timeout");
    assert!(
        open_timeout.contains("applied")
            && open_timeout.contains("15s")
            && open_timeout.contains("20s"),
        "{open_timeout}"
    );
    let filter = line_of("logging.log_filter");
    assert!(filter.contains("applied"), "{filter}");
    let secret = line_of("admin.admin_token");
    assert!(
        secret.contains("next restart") && secret.contains("<hidden>"),
        "{secret}"
    );
    // Untouched keys are not named.
    assert!(!stderr.contains("health.silence_check_ms"), "{stderr}");
    process.stop(WAIT).await.unwrap();
    for output in [process.stdout(), process.stderr()] {
        assert_no_secret(&output);
        assert!(!output.contains("another-secret-value-9c1e"), "{output}");
    }
}

/// The file of [`sighup_makes_keys_of_several_sections_live_for_real_clients`]:
/// `users` under [customers], `idle` and `max_connections` under [limits],
/// `hosts` under [admin].
fn live_file(state: &Path, users: &str, idle: &str, max_connections: u32, hosts: &str) -> String {
    let text = good_file(state, "", "info")
        .replace(
            &format!("user = [\"{USER}:{PASSWORD}\"]\n"),
            &format!("user = [{users}]\n"),
        )
        .replace("[admin]\n", &format!("[admin]\nadmin_host = [{hosts}]\n"));
    format!("{text}[limits]\nidle_timeout = \"{idle}\"\nmax_connections = {max_connections}\n")
}

/// `GET /healthz` on the admin port naming `host`: its status.
async fn admin_status(admin: std::net::SocketAddr, host: &str) -> u16 {
    let answer = reqwest::Client::new()
        .get(format!("http://{admin}/healthz"))
        .header("host", host)
        .bearer_auth(ADMIN_SECRET)
        .send();
    within("GET /healthz", answer)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_makes_keys_of_several_sections_live_for_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let me = format!("\"{USER}:{PASSWORD}\"");
    let file = write(
        dir.path(),
        "gateway.toml",
        &live_file(&state, &me, "300s", 1000, ""),
    );
    let mut process = gateway()
        .arg("--config")
        .arg(&file)
        .start(Ready::line(GATEWAY_READY), WAIT)
        .await
        .expect("the gateway starts from its file");
    let banner = banner(&process);
    let _agent = join_agent(&banner).await;
    let target = common::targets::http_target("127.0.0.1").await;
    let stats_line = process
        .line_with("gateway: stats on http://", WAIT)
        .await
        .unwrap();
    let admin: std::net::SocketAddr = stats_line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches("/stats").parse().ok())
        .unwrap_or_else(|| panic!("admin address in {stats_line:?}"));
    // Before: carol is no customer, gw.example is no admin host.
    let (head, _) = connect(banner.listen, &target.to_string(), Some(("carol", "pw2"))).await;
    assert_eq!(head.status, 407, "{head:?}");
    assert_eq!(admin_status(admin, "gw.example").await, 421);

    let both = format!("{me}, \"carol:pw2\"");
    write(
        dir.path(),
        "gateway.toml",
        &live_file(&state, &both, "1s", 2000, "\"gw.example\""),
    );
    process.signal(Signal::Hup).unwrap();
    process
        .line_with("config file re-read", WAIT)
        .await
        .expect("the file is re-read");

    // [customers] user: carol gets through at once.
    let (head, _) = connect(banner.listen, &target.to_string(), Some(("carol", "pw2"))).await;
    assert_eq!(head.status, 200, "{head:?}");
    // [admin] admin_host: the name reaches the admin port.
    assert_eq!(admin_status(admin, "gw.example").await, 200);
    // [limits] idle_timeout: a silent tunnel is closed after 1 s, not 300.
    let (head, mut tunnel) =
        connect(banner.listen, &target.to_string(), Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 200, "{head:?}");
    let opened = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = within("the idle tunnel is closed", async {
        use tokio::io::AsyncReadExt;
        tunnel.read(&mut buf).await
    })
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eprintln!(
        "an idle tunnel was closed {:?} after it opened (idle_timeout 1s after SIGHUP; 300s before)",
        opened.elapsed()
    );

    let stderr = process.stderr();
    let line_of = |key: &str| line_naming_key(&stderr, key);
    for key in ["customers.user", "limits.idle_timeout", "admin.admin_host"] {
        assert!(
            line_of(key).contains("config key applied"),
            "{key}: {stderr}"
        );
    }
    let restart = line_of("limits.max_connections");
    assert!(
        restart.contains("next restart") && restart.contains("1000") && restart.contains("2000"),
        "{restart}"
    );
    // The accounts' values are secret: named, never shown.
    assert!(!stderr.contains("carol:pw2"), "{stderr}");
    process.stop(WAIT).await.unwrap();
    for output in [process.stdout(), process.stderr()] {
        assert_no_secret(&output);
    }
}

/// The sections of `gateway --help` (each heading's first word, in lower
/// case) and the keys of the flags under each.
fn help_keys(help: &str) -> Vec<(String, String)> {
    let mut section = None;
    let mut keys = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            let first = line
                .split(|c: char| !c.is_ascii_alphanumeric())
                .find(|word| !word.is_empty())
                .unwrap_or_default()
                .to_ascii_lowercase();
            section = Some(first);
            continue;
        }
        let trimmed = line.trim_start();
        if !trimmed.starts_with('-') {
            continue;
        }
        let Some(flag) = trimmed
            .split([' ', ','])
            .find(|word| word.starts_with("--") && word.len() > 2)
        else {
            continue;
        };
        let flag = &flag[2..];
        if ["help", "version", "config"].contains(&flag) {
            continue;
        }
        let section = section.clone().expect("a heading before every flag");
        keys.push((section, flag.replace('-', "_")));
    }
    keys
}

#[tokio::test]
async fn the_shipped_example_passes_and_names_every_flag_in_its_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example_path = root.join("deploy/gateway.toml");
    let check = gateway()
        .arg("check-config")
        .arg(&example_path)
        .run(WAIT)
        .await
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(check.stdout.contains("OK"), "{check:?}");
    let help = gateway().arg("--help").run(WAIT).await.unwrap();
    assert!(help.status.success());
    let keys = help_keys(&help.stdout);
    assert!(keys.len() >= 40, "read {} flags from --help", keys.len());
    // Each key of the example, set or commented out, under its section.
    let example = std::fs::read_to_string(&example_path).unwrap();
    let mut written = Vec::new();
    let mut section = String::new();
    for line in example.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.trim_start_matches(['#', ' ']).split_once(" = ") {
            written.push((section.clone(), key.trim().to_owned()));
        }
    }
    let manual = std::fs::read_to_string(root.join("docs/operators.md")).unwrap();
    for (section, key) in &keys {
        assert!(
            written.contains(&(section.clone(), key.clone())),
            "deploy/gateway.toml has no `{key}` in [{section}]"
        );
        assert!(
            manual.contains(&format!("[{section}]")),
            "docs/operators.md does not name the [{section}] section"
        );
    }
    // The unit runs from the file.
    let unit = std::fs::read_to_string(root.join("deploy/exitpool-gateway.service")).unwrap();
    assert!(
        unit.contains("--config /etc/exitpool/gateway.toml"),
        "{unit}"
    );
}
