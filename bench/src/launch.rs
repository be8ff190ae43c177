//! The product as it is deployed, in child processes started through
//! `exitpool-launcher`: the `gateway` binary (started, queried, stopped,
//! restarted) and `agent` binaries, found next to this program or built first.

use crate::client::{basic, Route, STEP};
use anyhow::{bail, Context, Result};
use exitpool_launcher::binaries::GATEWAY_READY;
use exitpool_launcher::ports::{free_port, TunnelPort};
use exitpool_launcher::{Launch, Process, Ready};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The agent token the benchmark gateways accept.
pub const TOKEN: &str = "loadtest-token-5e9a2c7f1b3d8e4a6c0f2b7d9e1a3c5f";
/// The benchmark customer.
pub const USER: &str = "bench";
pub const PASSWORD: &str = "benchpass";

/// The gateways' `RUST_LOG`, set once from `--gateway-log`.
static GATEWAY_LOG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the `RUST_LOG` every gateway of this run starts with.
pub fn set_gateway_log(level: &str) {
    let _ = GATEWAY_LOG.set(level.to_owned());
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Polls `check` every 50 ms until it holds, at most `bound`.
pub async fn wait_until<F, Fut>(bound: Duration, what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > bound {
            bail!("timed out after {bound:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the `gateway` and `agent` binaries are.
pub struct Binaries {
    pub gateway: PathBuf,
    pub agent: PathBuf,
}

/// The binaries in `bin_dir`, or else next to this program, built first there
/// when `build` (with this program's profile).
pub async fn binaries(bin_dir: Option<&Path>, build: bool) -> Result<Binaries> {
    let dir = match bin_dir {
        Some(dir) => dir.to_owned(),
        None => {
            // target/<profile>/loadtest -> target/<profile>
            let exe = std::env::current_exe()?;
            exe.parent()
                .context("locating target directory")?
                .to_owned()
        }
    };
    if build && bin_dir.is_none() {
        let profile = if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        };
        eprintln!("== building the gateway and agent binaries ({profile})");
        // Not through the launcher: cargo's progress goes to the terminal.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = tokio::process::Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build", "-p", "exitpool", "--bin", "gateway", "--bin", "agent",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status =
            tokio::time::timeout(Duration::from_secs(1800), cmd.kill_on_drop(true).status())
                .await
                .context("cargo build timed out")??;
        if !status.success() {
            bail!("cargo build --bin gateway --bin agent failed ({status})");
        }
    }
    let bins = Binaries {
        gateway: dir.join("gateway"),
        agent: dir.join("agent"),
    };
    for bin in [&bins.gateway, &bins.agent] {
        if !bin.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release --workspace --bins` or pass --bin-dir",
                bin.display()
            );
        }
    }
    Ok(bins)
}

/// `gateway pin --init`: the pin agents of a gateway on `state` need (the
/// identity made now if the directory is new).
pub async fn pin_of(binary: &Path, state: &Path) -> Result<String> {
    let out = Launch::new(binary)
        .args(["pin", "--init"])
        .arg("--state-dir")
        .arg(state)
        .run(STEP)
        .await?;
    if !out.status.success() {
        bail!("`gateway pin` failed: {}", out.stderr);
    }
    Ok(out.stdout.trim().to_owned())
}

/// How a `gateway` child process is started; a restart reuses it.
#[derive(Debug, Clone)]
struct GatewayLaunch {
    binary: PathBuf,
    state: PathBuf,
    listen: SocketAddr,
    tunnel: SocketAddr,
    admin: SocketAddr,
    max_connections: usize,
    threads: usize,
    /// More flags, as given.
    extra: Vec<String>,
}

/// The real `gateway` binary in a child process.
pub struct GatewayProcess {
    process: Process,
    launch: GatewayLaunch,
}

impl GatewayProcess {
    pub async fn start(
        binary: &Path,
        state: &Path,
        max_connections: usize,
        threads: usize,
    ) -> Result<GatewayProcess> {
        Self::start_with(binary, state, max_connections, threads, &[]).await
    }

    /// Like [`GatewayProcess::start`], with `extra` flags.
    pub async fn start_with(
        binary: &Path,
        state: &Path,
        max_connections: usize,
        threads: usize,
        extra: &[&str],
    ) -> Result<GatewayProcess> {
        // Held while the other ports are drawn, let go just before the start.
        let tunnel = TunnelPort::hold()?;
        let launch = GatewayLaunch {
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            binary: binary.to_owned(),
            state: state.to_owned(),
            listen: free_port()?,
            tunnel: tunnel.addr(),
            admin: free_port()?,
            max_connections,
            threads,
        };
        tunnel.release();
        Self::spawn(launch, Duration::from_secs(20)).await
    }

    /// Starts the binary and waits for its ready line, printed once all its
    /// ports (admin included) are bound.
    async fn spawn(launch: GatewayLaunch, ready_bound: Duration) -> Result<GatewayProcess> {
        let GatewayLaunch {
            binary,
            state,
            listen,
            tunnel,
            admin,
            max_connections,
            threads,
            extra,
        } = &launch;
        let process = Launch::new(binary)
            .args(["--listen", &listen.to_string()])
            .args(["--tunnel", &tunnel.to_string()])
            .args(["--admin", &admin.to_string()])
            .arg("--state-dir")
            .arg(state)
            .args(["--max-connections", &max_connections.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(extra)
            .env("EXITPOOL_AGENT_TOKEN", TOKEN)
            .env("EXITPOOL_USERS", format!("{USER}:{PASSWORD}"))
            .env("RUST_LOG", GATEWAY_LOG.get().map_or("info", String::as_str))
            .start(Ready::line(GATEWAY_READY), ready_bound)
            .await?;
        Ok(GatewayProcess { process, launch })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn tunnel(&self) -> SocketAddr {
        self.launch.tunnel
    }

    /// The gateway's last lines of output, for failure messages.
    pub fn tail(&self) -> String {
        self.process.tail()
    }

    /// Every line of output kept so far (the soak scans them for panics).
    pub fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    /// The admin port (`/stats`, `/metrics`).
    pub fn admin(&self) -> SocketAddr {
        self.launch.admin
    }

    /// The customer port, with the benchmark customer's credentials.
    pub fn path(&self) -> Route {
        Route::Proxy {
            addr: self.launch.listen,
            auth: Some(basic(USER, PASSWORD)),
        }
    }

    /// The gateway's `/stats` document.
    pub async fn stats(&self) -> Result<Value> {
        let url = format!("http://{}/stats", self.launch.admin);
        Ok(reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Agents in the gateway's directory, from `/metrics`: the fleet's pool
    /// (`exitpool_fleet_agents`) in a fleet, else the gateway's own
    /// (`exitpool_agents`); the same count as `/stats`, without a document
    /// that lists every agent (megabytes at 10,000, too heavy to poll).
    pub async fn directory_size(&self) -> Result<u64> {
        let url = format!("http://{}/metrics", self.launch.admin);
        let text = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?;
        let gauge = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        };
        gauge("exitpool_fleet_agents")
            .or_else(|| gauge("exitpool_agents"))
            .context("/metrics has no exitpool_agents gauge")
    }

    pub async fn agents(&self) -> Result<u64> {
        self.stats().await?["agents"]
            .as_u64()
            .context("/stats has no \"agents\" count")
    }

    /// Streams each agent has served, from `/stats`.
    pub async fn streams_per_agent(&self) -> Result<Vec<u64>> {
        self.stats().await?["per_agent"]
            .as_array()
            .context("/stats has no \"per_agent\" list")?
            .iter()
            .map(|a| a["streams_total"].as_u64().context("no streams_total"))
            .collect()
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after `grace`).
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        self.process.stop(grace).await?;
        Ok(())
    }

    /// Stops and starts again on the same ports and state (so the same pin);
    /// returns how long the stop took and when the new process answered.
    pub async fn restart(&mut self, crash: bool) -> Result<(Duration, Instant)> {
        let t0 = Instant::now();
        if crash {
            self.process.kill().await?;
        } else {
            self.stop(Duration::from_secs(30)).await?;
        }
        let stopped = t0.elapsed();
        // A restart meets every agent reconnecting at once.
        let next = Self::spawn(self.launch.clone(), Duration::from_secs(300)).await?;
        *self = next;
        Ok((stopped, Instant::now()))
    }

    /// Waits at most `bound` until `n` agents are connected.
    pub async fn wait_agents(&self, n: u64, bound: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = 0;
        loop {
            // The `/metrics` gauge, not `/stats`: polled every 250 ms, a
            // document listing every agent would load the gateway it measures.
            if let Ok(count) = self.directory_size().await {
                last = count;
                if count >= n {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > bound {
                bail!(
                    "only {last} of {n} agents joined within {bound:?}; gateway log: {}",
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Starts the real `agent` binary against `tunnel`, bound to `bind`, allowed to
/// reach loopback targets, with its state in `dir`, on `transport` (`quic`,
/// `tcp` or `auto`).
pub fn spawn_agent_process(
    binary: &Path,
    tunnel: SocketAddr,
    pin: &str,
    bind: IpAddr,
    dir: &Path,
    max_streams: Option<u32>,
    transport: &str,
) -> Result<Process> {
    Ok(Launch::new(binary)
        .args(["--gateway", &tunnel.to_string(), "--pin", pin])
        .args(["--transport", transport])
        .args(["--bind", &bind.to_string(), "--allow-private"])
        .args(max_streams.map(|n| format!("--max-streams={n}")))
        .arg("--state-dir")
        .arg(dir)
        .env("EXITPOOL_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .spawn()?)
}

/// How the gateway process runs: its worker threads for the headline figures,
/// and another setting to measure next to them.
pub struct Runs {
    pub gateway_threads: usize,
    pub also_threads: Option<usize>,
    /// fleet: each process's CPU share in the capped bulk pass; 0 for none.
    pub fleet_cpu_share: f64,
}

/// The product as it is deployed: the real `gateway` binary and `agents` real
/// `agent` binaries (on 127.0.1.1, .2, ...), each in its own process.
pub struct Processes {
    pub gateway: GatewayProcess,
    agents: Vec<Process>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Processes {
    pub async fn start(
        bins: &Binaries,
        gateway_threads: usize,
        agents: usize,
        max_connections: usize,
        max_streams: Option<u32>,
        transport: &str,
    ) -> Result<Processes> {
        let (threads, connections) = (gateway_threads, max_connections);
        Self::start_with(
            bins,
            threads,
            agents,
            connections,
            max_streams,
            transport,
            &[],
        )
        .await
    }

    /// Like [`Processes::start`], with `extra` flags for the gateway.
    pub async fn start_with(
        bins: &Binaries,
        gateway_threads: usize,
        agents: usize,
        max_connections: usize,
        max_streams: Option<u32>,
        transport: &str,
        extra: &[&str],
    ) -> Result<Processes> {
        let state = tempfile::tempdir()?;
        let pin = pin_of(&bins.gateway, state.path()).await?;
        let gateway = GatewayProcess::start_with(
            &bins.gateway,
            state.path(),
            max_connections,
            gateway_threads,
            extra,
        )
        .await?;
        let mut dirs = vec![state];
        let mut children = Vec::with_capacity(agents);
        for i in 0..agents {
            let dir = tempfile::tempdir()?;
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1) as u8));
            children.push(spawn_agent_process(
                &bins.agent,
                gateway.tunnel(),
                &pin,
                bind,
                dir.path(),
                max_streams,
                transport,
            )?);
            dirs.push(dir);
        }
        let joined = wait_until(STEP * 3, "every agent process joined", || async {
            gateway.agents().await.ok() == Some(agents as u64)
        })
        .await;
        if let Err(error) = joined {
            let logs: Vec<String> = children.iter().map(Process::tail).collect();
            bail!(
                "{error}; gateway log: {}; agent logs: {logs:?}",
                gateway.tail()
            );
        }
        Ok(Processes {
            gateway,
            agents: children,
            _dirs: dirs,
        })
    }

    pub fn path(&self) -> Route {
        self.gateway.path()
    }

    /// The gateway's and the agents' process ids, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.gateway.pid())
            .chain(self.agents.iter().map(Process::pid))
            .collect()
    }

    pub async fn stop(mut self) {
        // Dropping an agent process kills and reaps it.
        self.agents.clear();
        let _ = self.gateway.stop(Duration::from_secs(10)).await;
    }
}
