//! The `gateway` binary: flags, logging, `gateway pin`, `gateway hash-password`,
//! `--demo`, and signals (SIGTERM/Ctrl-C stop, SIGHUP reloads the accounts files
//! and the `--config` file); the flags themselves are in `gateway/flags.rs`,
//! the config file that gives them in `gateway/config_file.rs`, and what SIGHUP
//! does with that file in `gateway/reload.rs`.

use anyhow::{bail, Context};
use exitpool::gateway::{Gateway, GatewayConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "gateway/config_file.rs"]
mod config_file;
#[path = "gateway/flags.rs"]
mod flags;
#[path = "shared/malloc_trim.rs"]
mod malloc_trim;
#[path = "gateway/operators/mod.rs"]
mod operators;
#[path = "gateway/reload.rs"]
mod reload;

use flags::{Args, Command, LogFormat, TokenAction};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (args, config_file) = match config_file::args_with_file(&argv) {
        Ok(read) => read,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "gateway: not started: {} error(s) in {}",
                errors.errors.len(),
                errors.path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let logs = exitpool::logs::init_with_filter(
        match args.admin.log_format {
            LogFormat::Text => exitpool::logs::LogFormat::Text,
            LogFormat::Json => exitpool::logs::LogFormat::Json,
        },
        &args.admin.log_filter,
    );
    if let Err(error) = malloc_trim::start() {
        eprintln!("gateway: {error:#}");
        return ExitCode::FAILURE;
    }
    exitpool::cli::run(
        "gateway",
        args.runtime.threads,
        run(args, &logs, config_file),
    )
}

/// `gateway check-config FILE`: every error of the file, or a summary.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut command = Args::command();
    command.build();
    match config_file::check(&command, file) {
        Ok(read) => {
            println!("{}", read.summary());
            Ok(())
        }
        Err(errors) => {
            eprintln!("{errors}");
            bail!("{} error(s) in {}", errors.errors.len(), file.display())
        }
    }
}

/// `gateway pin`: the pin of `dir`'s identity. Without `init`, a directory
/// holding none is an error: a pin made up on the spot would match no gateway.
fn print_pin(dir: &std::path::Path, init: bool) -> anyhow::Result<()> {
    use exitpool::gateway::tls::Identity;
    let identity = match Identity::load(dir)? {
        Some(identity) => identity,
        None if init => {
            exitpool::gateway::state::ensure_dir(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            Identity::load_or_create(dir)?
        }
        None => bail!(
            "{} holds no gateway identity (no certificate and key): point --state-dir at the \
             gateway's state directory, or add --init to create a new identity there",
            dir.display()
        ),
    };
    println!("{}", identity.pin());
    Ok(())
}

/// `gateway hash-password`: the first line of standard input, hashed.
fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    let hash = exitpool::gateway::auth::hash_password(password).context("hashing")?;
    println!("{hash}");
    Ok(())
}

async fn run(
    args: Args,
    logs: &exitpool::logs::LogGuard,
    config_file: Option<config_file::FileSource>,
) -> anyhow::Result<()> {
    if let Some(command) = &args.command {
        return run_command(command, &args).await;
    }
    // The demo keeps its certificate and usage out of the default state
    // directory, where a real gateway started later would inherit them: in a
    // temporary directory removed on exit, unless --state-dir names one.
    let demo_state = match (args.runtime.demo, &args.ports.state_dir) {
        (true, None) => Some(
            tempfile::Builder::new()
                .prefix("exitpool-demo-")
                .tempdir()
                .context("creating the demo's temporary state directory")?,
        ),
        _ => None,
    };
    let state_dir = match (&demo_state, &args.ports.state_dir) {
        (Some(temporary), _) => temporary.path().to_owned(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => exitpool::gateway::state::default_dir(),
    };
    let demo = args.runtime.demo.then(|| {
        let password = hex::encode(rand::random::<[u8; 8]>());
        let token = hex::encode(rand::random::<[u8; 16]>());
        (password, token)
    });
    let config = gateway_config(&args, state_dir, demo.as_ref())?;
    // Every customer connection and agent tunnel is a descriptor; the usual soft
    // limit of 1,024 would cap the gateway long before its own limits do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    let control = args.database.options(&config);
    let gateway = Gateway::start_with_control(config, control).await?;
    // SIGHUP's default ends the process: listen for it before saying we serve.
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hangup = None::<()>;
    // SIGTERM's and Ctrl-C's too: a stop sent right after the ready line stops
    // the gateway cleanly.
    let stop = exitpool::cli::shutdown_signal();
    print_started(&gateway, demo_state.as_ref());
    let _demo = match &demo {
        Some((password, token)) => Some(start_demo(&gateway, password, token).await?),
        None => None,
    };
    let config_file = config_file.map(|file| reload::Reloader::new(file, demo.clone()));
    wait_for_shutdown(&gateway, logs, config_file, stop, hangup).await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

/// The subcommands: `hash-password`, `check-config`, `token new`, `pin`, and
/// the operators' (clients of a running gateway's API, [`operators`]).
async fn run_command(command: &Command, args: &Args) -> anyhow::Result<()> {
    match command {
        Command::HashPassword => hash_password(),
        Command::CheckConfig { file } => check_config(file),
        Command::Token {
            action: TokenAction::New,
        } => {
            println!("{}", exitpool::gateway::auth::generate_token());
            Ok(())
        }
        Command::Customers { action, api } => {
            operators::run(operators::Operation::Customers(action), api).await
        }
        Command::Tokens { action, api } => {
            operators::run(operators::Operation::Tokens(action), api).await
        }
        Command::Connections { action, api } => {
            operators::run(operators::Operation::Connections(action), api).await
        }
        Command::Exits { action, api } => {
            operators::run(operators::Operation::Exits(action), api).await
        }
        Command::Accounts { action, api } => {
            operators::run(operators::Operation::Accounts(action), api).await
        }
        Command::Pin { state_dir, init } => {
            let dir = state_dir
                .clone()
                .or(args.ports.state_dir.clone())
                .unwrap_or_else(exitpool::gateway::state::default_dir);
            print_pin(&dir, *init)
        }
    }
}

/// The configuration the flags give, each group filling its part, in the
/// order their errors are reported; `demo` is the demo's user password and
/// agent token.
fn gateway_config(
    args: &Args,
    state_dir: PathBuf,
    demo: Option<&(String, String)>,
) -> anyhow::Result<GatewayConfig> {
    let mut config = GatewayConfig::new(state_dir);
    args.ports.apply(&mut config);
    args.limits.apply(&mut config);
    args.customer_ports.apply(&mut config)?;
    args.routing.apply(&mut config)?;
    config.fleet = args.fleet.config();
    if args.runtime.demo {
        check_demo_alone(args)?;
        config.geoip = std::sync::Arc::new(demo_geoip()?);
    }
    let store_serves_accounts = args.accounts.users_file.is_none()
        && args
            .database
            .location(&config.state_dir, false, config.fleet.is_some())
            .is_some();
    args.accounts
        .apply(&mut config, demo, store_serves_accounts)?;
    args.admin.apply(&mut config);
    Ok(config)
}

/// Where the gateway listens, as the operator reads it on start.
fn print_started(gateway: &Gateway, demo_state: Option<&tempfile::TempDir>) {
    println!(
        "gateway: customers on {}, agents on {} (UDP), pin {}",
        gateway.listen_addr(),
        gateway.tunnel_addr(),
        gateway.pin()
    );
    if let Some(tcp) = gateway.tunnel_tcp_addr() {
        println!("gateway: agents also on {tcp} (TLS over TCP, where UDP is blocked)");
    }
    if let Some(admin) = gateway.admin_addr() {
        println!("gateway: stats on http://{admin}/stats");
    }
    if let Some(temporary) = demo_state {
        println!(
            "demo: state in {} (removed on exit; --state-dir keeps it)",
            temporary.path().display()
        );
    }
}

/// The demo's agent may reach this machine (`--allow-private`), so the demo never
/// serves anyone but this machine: its customer port stays on loopback and it
/// takes no real accounts.
fn check_demo_alone(args: &Args) -> anyhow::Result<()> {
    if !args.ports.listen.ip().is_loopback() {
        bail!(
            "--demo keeps its customer port on loopback (its agent may reach this machine's own networks); got --listen {}",
            args.ports.listen
        );
    }
    let accounts = &args.accounts;
    if !accounts.users.is_empty()
        || accounts.users_file.is_some()
        || !accounts.agent_tokens.is_empty()
        || accounts.agent_tokens_file.is_some()
    {
        bail!("--demo runs with its own demo user and agent only; drop --user, --users, --agent-token and --agent-tokens (or drop --demo)");
    }
    Ok(())
}

/// Where the demo's three agents are: each on its own loopback address, which
/// the demo's generated GeoIP database places in a country.
const DEMO_EXITS: [(&str, &str, &str); 3] = [
    ("127.0.0.2", "US", "New York"),
    ("127.0.0.3", "DE", "Berlin"),
    ("127.0.0.4", "JP", "Tokyo"),
];

/// The demo's GeoIP database: [`DEMO_EXITS`]' addresses in their countries,
/// generated in memory (the real lookup path, as the tests use).
fn demo_geoip() -> anyhow::Result<exitpool::geoip::GeoIp> {
    use exitpool::geoip::testdb::{build, Layout, TestEntry};
    let entries: Vec<TestEntry> = DEMO_EXITS
        .iter()
        .map(|(ip, country, city)| {
            TestEntry::host(ip.parse().expect("valid demo address"))
                .country(*country)
                .city(*city)
        })
        .collect();
    Ok(exitpool::geoip::GeoIp::from_bytes(vec![build(
        Layout::MaxMind,
        &entries,
    )])?)
}

/// The demo running: its agents and the little target that tells who called.
struct Demo {
    _agents: Vec<exitpool::agent::AgentHandle>,
    _target: tokio::task::JoinHandle<()>,
}

/// Starts three in-process agents in three countries and a local target that
/// answers with the address it was reached from, proves one request per
/// country, and prints curl lines for a country, a sticky session and SOCKS5.
async fn start_demo(gateway: &Gateway, password: &str, token: &str) -> anyhow::Result<Demo> {
    let mut tunnel = gateway.tunnel_addr();
    if tunnel.ip().is_unspecified() {
        tunnel.set_ip([127, 0, 0, 1].into());
    }
    let mut agents = Vec::new();
    for (ip, _, _) in DEMO_EXITS {
        let ip: std::net::IpAddr = ip.parse()?;
        std::net::UdpSocket::bind((ip, 0)).with_context(|| {
            format!(
                "the demo's agents need the loopback address {ip} (Linux has all of 127.0.0.0/8)"
            )
        })?;
        let agent =
            exitpool::agent::Agent::builder(tunnel.to_string(), gateway.pin().parse()?, token)
                .bind(ip)
                // The demo's only target is this machine; never use this in production.
                .allow_private(true)
                .spawn()?;
        tokio::time::timeout(Duration::from_secs(10), agent.connected())
            .await
            .with_context(|| format!("the demo agent on {ip} did not connect within 10 s"))?;
        agents.push(agent);
    }
    let (target, target_task) = whoami_target().await?;
    let proxy = gateway.listen_addr();
    for (_, country, _) in DEMO_EXITS {
        let user = format!("demo-country-{}", country.to_ascii_lowercase());
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            self_test(proxy, target, &user, password),
        )
        .await
        .context("the demo request timed out")??;
        println!("demo: {user}: {answer}");
    }
    println!("demo: three agents joined (US, DE, JP). Try it yourself:");
    println!("  curl -i -x http://demo-country-de:{password}@{proxy} http://{target}/            # an exit in Germany");
    println!("  curl -i -x http://demo-session-s1:{password}@{proxy} http://{target}/            # sticky: the same exit on every call");
    println!("  curl --socks5-hostname {proxy} --proxy-user demo-country-jp:{password} http://{target}/   # SOCKS5, an exit in Japan");
    println!("  curl -i -x http://demo:{password}@{proxy} http://{target}/                       # rotating: a new exit per request");
    println!("demo: the target answers with the exit address it saw; X-Exitpool-Exit and X-Exitpool-Country name the exit");
    if let Some(admin) = gateway.admin_addr() {
        let code = exitpool::gateway::admin::dashboard::mint_code();
        println!("demo: dashboard on http://{admin}/dashboard/ ; sign in once (within 15 min) with http://{admin}/dashboard/signin?once={code}");
    }
    println!("demo: Ctrl-C to stop");
    Ok(Demo {
        _agents: agents,
        _target: target_task,
    })
}

/// A local HTTP target that answers every request with the address it came
/// from (the exit's), then closes.
async fn whoami_target() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the request head (bounded), then answer.
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let body = format!("seen from {}\n", peer.ip());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}

/// One real request through the proxy: CONNECT as `user`, then a GET inside
/// the tunnel; answers the exit's country and what the target saw.
async fn self_test(
    proxy: SocketAddr,
    target: SocketAddr,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    use base64::Engine;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n\r\nGET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let mut lines = text.lines();
    let connect_status = lines.next().unwrap_or_default().to_owned();
    if !connect_status.contains(" 200") {
        bail!("the proxy answered {connect_status:?}");
    }
    let country = text
        .lines()
        .find_map(|line| line.strip_prefix("x-exitpool-country: "))
        .unwrap_or("??")
        .to_owned();
    let seen = text
        .lines()
        .find(|line| line.starts_with("seen from"))
        .unwrap_or("no answer from the target")
        .to_owned();
    Ok(format!("exit in {country}, target {seen}"))
}

/// Waits for Ctrl-C or SIGTERM, reloading the config file (if any) and the
/// accounts files on every SIGHUP.
async fn wait_for_shutdown(
    gateway: &Gateway,
    logs: &exitpool::logs::LogGuard,
    mut config_file: Option<reload::Reloader>,
    stop: impl std::future::Future<Output = ()>,
    #[cfg(unix)] hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] hangup: Option<()>,
) {
    #[cfg(unix)]
    {
        tokio::pin!(stop);
        let Some(mut hangup) = hangup else {
            return stop.await;
        };
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = hangup.recv() => {
                    if let Some(file) = &mut config_file {
                        file.reload(logs, gateway).await;
                    }
                    // Success and failure are both logged by reload itself.
                    let _ = gateway.reload();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (gateway, logs, config_file, hangup);
        stop.await;
    }
}
