//! Everything the soak starts and stops: the gateways (and Redis in a fleet),
//! the agent processes that live through the run and the churn slots that join
//! and leave, and what the gateways say about them (agents listed, streams
//! open, usage counted).

use super::rest::Measured;
use super::settings::{
    CHURN_SLOTS, CUT_PASSWORD, CUT_USER, KILL_EVERY, REDIS, SETTLE_BOUND, SHARED_STATE,
    STABLE_AGENTS,
};
use crate::cli::Bench;
use crate::client::STEP;
use crate::launch::{pin_of, spawn_agent_process, wait_until, GatewayProcess, PASSWORD, USER};
use anyhow::{bail, Context, Result};
use exitpool_launcher::redis::RedisServer;
use exitpool_launcher::Process;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An agent process of the run, started again in the same state directory
/// (the same device) after it left.
pub struct AgentSlot {
    pub name: String,
    bind: IpAddr,
    gateway: usize,
    transport: &'static str,
    dir: tempfile::TempDir,
    pub process: Option<Process>,
}

impl AgentSlot {
    fn new(
        name: String,
        bind: IpAddr,
        gateway: usize,
        transport: &'static str,
    ) -> Result<AgentSlot> {
        Ok(AgentSlot {
            name,
            bind,
            gateway,
            transport,
            dir: tempfile::tempdir()?,
            process: None,
        })
    }
}

/// The pid of the `redis-server` listening on `socket` (the launcher keeps
/// its process to itself).
fn redis_pid(socket: &Path) -> Option<u32> {
    let needle = socket.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("redis-server") && cmdline.contains(&needle)).then_some(pid)
        })
}

/// What a gateway's `/stats` lists: "N listed (M held by gw-a, ...)", a fleet
/// gateway's own agents under its own id.
fn listed_by_holder(stats: &serde_json::Value) -> String {
    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    let agents = stats["per_agent"].as_array().map_or(&[][..], Vec::as_slice);
    for agent in agents {
        let holder = agent["gateway"].as_str().unwrap_or("this gateway");
        *holders.entry(holder.to_owned()).or_default() += 1;
    }
    let held: Vec<String> = holders
        .iter()
        .map(|(holder, n)| format!("{n} held by {holder}"))
        .collect();
    format!("{} listed ({})", agents.len(), held.join(", "))
}

/// Lines of a process's output that report a panic.
pub fn panics_in(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|line| line.contains("panicked at"))
        .count()
}

/// Everything the soak started.
pub struct Rig {
    pub gateways: Vec<GatewayProcess>,
    _states: Vec<tempfile::TempDir>,
    pin: String,
    pub redis: Option<RedisServer>,
    pub stable: Vec<AgentSlot>,
    pub churn: Vec<AgentSlot>,
    agent_binary: PathBuf,
    /// The HTTPS proxy's certificates (DER), one per gateway.
    pub tls_roots: Vec<Vec<u8>>,
    /// Panic lines by process, from processes that ended and, at the end, the
    /// ones still running.
    pub panics: BTreeMap<String, usize>,
    /// Joins, graceful leaves, SIGKILLs.
    pub events: BTreeMap<&'static str, u64>,
    /// Churn leaves so far (every KILL_EVERY-th is a SIGKILL).
    leaves: usize,
    /// A gateway's runtime workers, named like tokio's blocking pool.
    gateway_workers: u64,
}

impl Rig {
    pub async fn start(bench: &Bench, fleet: bool) -> Result<Rig> {
        let redis = if fleet {
            Some(RedisServer::start(STEP).await?)
        } else {
            None
        };
        let (gateways, states, tls_roots) = start_gateways(bench, redis.as_ref()).await?;
        let pin = pin_of(&bench.bins.gateway, states[0].path()).await?;
        let count = gateways.len();
        let transports = ["quic", "tcp"];
        let mut stable = Vec::new();
        for i in 0..STABLE_AGENTS {
            let transport = transports[i % 2];
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 4, (i + 1) as u8));
            let name = format!("agent {} ({transport})", i + 1);
            stable.push(AgentSlot::new(name, bind, i % count, transport)?);
        }
        let mut churn = Vec::new();
        for i in 0..CHURN_SLOTS {
            let transport = transports[(i + 1) % 2];
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 5, (i + 1) as u8));
            let name = format!("churn agent {} ({transport})", i + 1);
            churn.push(AgentSlot::new(name, bind, i % count, transport)?);
        }
        let mut rig = Rig {
            gateways,
            _states: states,
            pin,
            redis,
            stable,
            churn,
            agent_binary: bench.bins.agent.clone(),
            tls_roots,
            panics: BTreeMap::new(),
            events: BTreeMap::new(),
            leaves: 0,
            gateway_workers: runtime_workers(bench.runs.gateway_threads),
        };
        if fleet {
            rig.wait_fleet().await?;
        }
        for i in 0..STABLE_AGENTS {
            rig.join(true, i)?;
        }
        for i in 0..CHURN_SLOTS {
            rig.join(false, i)?;
        }
        rig.wait_agents().await?;
        Ok(rig)
    }

    fn slot(&mut self, stable: bool, i: usize) -> &mut AgentSlot {
        if stable {
            &mut self.stable[i]
        } else {
            &mut self.churn[i]
        }
    }

    /// Starts the agent of a slot.
    pub fn join(&mut self, stable: bool, i: usize) -> Result<()> {
        let tunnels: Vec<SocketAddr> = self.gateways.iter().map(GatewayProcess::tunnel).collect();
        let (binary, pin) = (self.agent_binary.clone(), self.pin.clone());
        let slot = self.slot(stable, i);
        let process = spawn_agent_process(
            &binary,
            tunnels[slot.gateway],
            &pin,
            slot.bind,
            slot.dir.path(),
            None,
            slot.transport,
        )?;
        slot.process = Some(process);
        *self.events.entry("agent joins").or_default() += 1;
        Ok(())
    }

    /// Stops a churn slot's agent: SIGTERM, or SIGKILL every KILL_EVERY-th time.
    pub async fn leave(&mut self, i: usize) -> Result<()> {
        let Some(mut process) = self.churn[i].process.take() else {
            return Ok(());
        };
        self.leaves += 1;
        let kill = self.leaves % KILL_EVERY == 0;
        let name = self.churn[i].name.clone();
        if kill {
            process.kill().await?;
        } else {
            let status = process.stop(Duration::from_secs(10)).await?;
            if !status.success() {
                bail!("{name} exited {status} on SIGTERM: {}", process.tail());
            }
        }
        *self.panics.entry(name).or_default() += panics_in(&process.lines());
        let event = if kill {
            "agent SIGKILLs"
        } else {
            "agent graceful leaves"
        };
        *self.events.entry(event).or_default() += 1;
        Ok(())
    }

    fn running_agents(&self) -> u64 {
        self.stable
            .iter()
            .chain(&self.churn)
            .filter(|slot| slot.process.is_some())
            .count() as u64
    }

    /// Waits until every gateway lists exactly the running agents (a
    /// SIGKILLed agent started again replaces its old tunnel).
    pub async fn wait_agents(&self) -> Result<()> {
        let want = self.running_agents();
        for (i, gateway) in self.gateways.iter().enumerate() {
            let listed = wait_until(
                SETTLE_BOUND,
                "every gateway lists the running agents",
                || async { gateway.agents().await.ok() == Some(want) },
            )
            .await;
            if let Err(error) = listed {
                // Which agents it lists, by the gateway holding each, says
                // whose directory view fell short.
                let listed = match gateway.stats().await {
                    Ok(stats) => listed_by_holder(&stats),
                    Err(error) => format!("/stats unreadable: {error:#}"),
                };
                return Err(error.context(format!(
                    "{}: {want} agents expected, {listed}; its log: {}",
                    self.gateway_name(i),
                    gateway.tail()
                )));
            }
        }
        Ok(())
    }

    /// Waits until every gateway of the fleet hears all of them.
    pub async fn wait_fleet(&self) -> Result<()> {
        let n = self.gateways.len() as u64;
        for gateway in &self.gateways {
            wait_until(SETTLE_BOUND, "every gateway hears the fleet", || async {
                let stats = gateway.stats().await.ok();
                stats.is_some_and(|s| s["fleet"]["totals"]["gateways"] == n)
            })
            .await
            .with_context(|| gateway.tail())?;
        }
        Ok(())
    }

    /// The `exitpool_live_streams` gauge of every gateway, summed.
    pub async fn live_streams(&self) -> Result<u64> {
        let mut sum = 0;
        for gateway in &self.gateways {
            let url = format!("http://{}/metrics", gateway.admin());
            let text = reqwest::Client::new()
                .get(url)
                .timeout(STEP)
                .send()
                .await?
                .text()
                .await?;
            sum += text
                .lines()
                .find_map(|line| line.strip_prefix("exitpool_live_streams "))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .context("/metrics has no exitpool_live_streams gauge")?;
        }
        Ok(sum)
    }

    /// `bench`'s bytes up and down as the gateways count them, summed.
    pub async fn counted(&self, user: &str) -> Result<(u64, u64)> {
        let (mut up, mut down) = (0, 0);
        for gateway in &self.gateways {
            let stats = gateway.stats().await?;
            let customer = &stats["customers"][user];
            up += customer["bytes_up"].as_u64().unwrap_or(0);
            down += customer["bytes_down"].as_u64().unwrap_or(0);
        }
        Ok((up, down))
    }

    /// Each gateway's customer port.
    pub fn proxies(&self) -> Vec<SocketAddr> {
        self.gateways
            .iter()
            .map(|g| match g.path() {
                crate::client::Route::Proxy { addr, .. } => addr,
                _ => unreachable!("a gateway's path is a proxy route"),
            })
            .collect()
    }

    /// "gateway", or "gateway A", "gateway B" in a fleet.
    pub fn gateway_name(&self, i: usize) -> String {
        if self.gateways.len() > 1 {
            format!("gateway {}", (b'A' + i as u8) as char)
        } else {
            "gateway".to_owned()
        }
    }

    /// Every measured process (gateways, the stable agents, Redis) by name
    /// and pid.
    pub fn measured(&self) -> Result<Vec<(String, u32)>> {
        Ok(self
            .measured_runtimes()?
            .into_iter()
            .map(|m| (m.name, m.pid))
            .collect())
    }

    /// Every measured process with its runtime workers named like tokio's
    /// blocking pool: a gateway's at more than one thread; none in an agent
    /// (a current-thread runtime: the soak gives it no `--threads`) or Redis.
    pub fn measured_runtimes(&self) -> Result<Vec<Measured>> {
        let mut out = Vec::new();
        for (i, gateway) in self.gateways.iter().enumerate() {
            out.push(Measured {
                name: self.gateway_name(i),
                pid: gateway.pid(),
                workers: self.gateway_workers,
            });
        }
        for slot in &self.stable {
            let process = slot
                .process
                .as_ref()
                .context("a stable agent is not running")?;
            out.push(Measured {
                name: slot.name.clone(),
                pid: process.pid(),
                workers: 0,
            });
        }
        if let Some(redis) = &self.redis {
            let pid = redis_pid(&redis.socket()).context("redis-server's pid not found")?;
            out.push(Measured {
                name: REDIS.to_owned(),
                pid,
                workers: 0,
            });
        }
        Ok(out)
    }

    /// Counts the panic lines of every process still running, then stops them.
    pub async fn stop(mut self) {
        for slot in self.stable.iter_mut().chain(self.churn.iter_mut()) {
            if let Some(mut process) = slot.process.take() {
                let _ = process.stop(Duration::from_secs(10)).await;
                *self.panics.entry(slot.name.clone()).or_default() += panics_in(&process.lines());
            }
        }
        for gateway in &mut self.gateways {
            let _ = gateway.stop(Duration::from_secs(10)).await;
        }
        if let Some(redis) = &mut self.redis {
            let _ = redis.stop(Duration::from_secs(10)).await;
        }
    }
}

/// The workers of a runtime started with `--threads threads` (`src/cli.rs`):
/// 1 is a current-thread runtime (the main thread works), 0 one per core.
fn runtime_workers(threads: usize) -> u64 {
    match threads {
        1 => 0,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        n => n as u64,
    }
}

/// The gateways (two on `redis` in a fleet, one otherwise), each with its
/// state directory and its HTTPS proxy's certificate (DER).
async fn start_gateways(
    bench: &Bench,
    redis: Option<&RedisServer>,
) -> Result<(Vec<GatewayProcess>, Vec<tempfile::TempDir>, Vec<Vec<u8>>)> {
    let names: &[&str] = if redis.is_some() {
        &["gw-a", "gw-b"]
    } else {
        &["gw"]
    };
    let mut gateways = Vec::new();
    let mut states: Vec<tempfile::TempDir> = Vec::new();
    let mut tls_roots = Vec::new();
    for id in names {
        let state = tempfile::tempdir()?;
        if let Some(first) = states.first() {
            for name in SHARED_STATE {
                std::fs::copy(first.path().join(name), state.path().join(name))
                    .with_context(|| format!("copying {name} from the first gateway"))?;
            }
        }
        // The HTTPS proxy's certificate, for 127.0.0.1.
        let tls = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        let cert = state.path().join("customer-tls.pem");
        let key = state.path().join("customer-tls-key.pem");
        std::fs::write(&cert, tls.cert.pem())?;
        std::fs::write(&key, tls.signing_key.serialize_pem())?;
        tls_roots.push(tls.cert.der().to_vec());
        let mut flags = vec![
            "--user".to_owned(),
            format!("{USER}:{PASSWORD}"),
            "--user".to_owned(),
            format!("{CUT_USER}:{CUT_PASSWORD}"),
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
            // Every customer of the soak comes from 127.0.0.1, where a real
            // deployment's come from many addresses: at the default budget
            // of TLS handshakes per address the HTTPS proxy's loops (a
            // handshake per exchange) were refused by the dozen a second.
            "--max-tls-handshakes-per-ip".to_owned(),
            "1000000".to_owned(),
        ];
        if let Some(redis) = redis {
            flags.extend([
                "--redis".to_owned(),
                redis.url(),
                "--gateway-id".to_owned(),
                id.to_string(),
                "--peer-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
            ]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        gateways.push(
            GatewayProcess::start_with(
                &bench.bins.gateway,
                state.path(),
                4096,
                bench.runs.gateway_threads,
                &flags,
            )
            .await
            .with_context(|| format!("starting gateway {id}"))?,
        );
        states.push(state);
    }
    Ok((gateways, states, tls_roots))
}

#[cfg(test)]
mod tests {
    use super::listed_by_holder;

    #[test]
    fn a_short_listing_names_who_holds_what() {
        let stats = serde_json::json!({"per_agent": [
            {"gateway": "gw-b"}, {"gateway": "gw-a"}, {"gateway": "gw-b"}
        ]});
        assert_eq!(
            listed_by_holder(&stats),
            "3 listed (1 held by gw-a, 2 held by gw-b)"
        );
        let alone = serde_json::json!({"per_agent": [{"gateway": null}]});
        assert_eq!(
            listed_by_holder(&alone),
            "1 listed (1 held by this gateway)"
        );
        assert_eq!(listed_by_holder(&serde_json::json!({})), "0 listed ()");
    }
}
