//! flaky: a pool of home devices that misbehave, and what customers see with
//! exit health and transparent retry on and off, next to an all-healthy pool,
//! in the same run.
//!
//! 50 agents (the agent library, in this process) each reach the gateway
//! process through their own UDP relay in this process, which plays the home
//! link: a fifth of them lose their link now and then (half for 6 s in every
//! 12 s, so opens sent to them go unanswered; half for 4 s in every 7 s, long
//! enough for the gateway to drop the tunnel, often with streams on it), a
//! tenth answer slowly (150 ms added each way), the rest are healthy. Client
//! loops make rotating requests (a fresh connection, `CONNECT`, a 1 KiB
//! exchange) until the count is reached; each records success and time to the
//! first byte of the answer.
//!
//! Three gateway processes, one after another, each with a fresh pool: all
//! healthy (the baseline), flaky with health and retry on (the defaults), and
//! flaky with them off (`--no-health --open-attempts 1`).

use crate::cli::Bench;
use crate::client::{join_all, open, start_target, Route};
use crate::launch::{pin_of, GatewayProcess, TOKEN};
use crate::measure::percentile;
use crate::report::Report;
use anyhow::{bail, Context, Result};
use exitpool_agent::{Agent, AgentHandle};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// Agents in the pool.
const AGENTS: usize = 50;
/// Bytes each way per request.
const EXCHANGE: usize = 1024;
/// Longest a request may take before it counts as failed: the gateway's
/// connect deadline (30 s) and a margin.
const REQUEST_BOUND: Duration = Duration::from_secs(35);
/// Extra one-way delay on a slow device's link.
const SLOW_DELAY: Duration = Duration::from_millis(150);

/// How a device's link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Healthy,
    /// Silent for `down` in every `period` (a random phase per device).
    Flapping {
        down: Duration,
        period: Duration,
    },
    /// Every packet delayed.
    Slow,
}

/// The pool's links: a fifth flapping (two kinds), a tenth slow.
fn flaky_links() -> Vec<Link> {
    let mut links = vec![Link::Healthy; AGENTS];
    let fifth = AGENTS / 5;
    for (i, link) in links.iter_mut().enumerate().take(fifth) {
        *link = if i < fifth / 2 {
            Link::Flapping {
                down: Duration::from_secs(6),
                period: Duration::from_secs(12),
            }
        } else {
            Link::Flapping {
                down: Duration::from_secs(4),
                period: Duration::from_secs(7),
            }
        };
    }
    for link in links.iter_mut().skip(fifth).take(AGENTS / 10) {
        *link = Link::Slow;
    }
    links
}

/// One device's home link: a UDP relay between its agent and the gateway.
struct HomeLink {
    /// Where the agent sends its tunnel.
    front: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HomeLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl HomeLink {
    /// A relay on 127.9.0.`n` towards `gateway`, seen by the gateway from
    /// 127.7.0.`n`.
    async fn start(n: usize, gateway: SocketAddr, link: Link) -> Result<HomeLink> {
        let octet = (n + 1) as u8;
        let front = Arc::new(UdpSocket::bind((Ipv4Addr::new(127, 9, 0, octet), 0)).await?);
        let back = Arc::new(UdpSocket::bind((Ipv4Addr::new(127, 7, 0, octet), 0)).await?);
        back.connect(gateway).await?;
        let front_addr = front.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let agent: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let delay = (link == Link::Slow).then_some(SLOW_DELAY);
        let mut tasks = Vec::new();
        // Agent -> gateway.
        tasks.push(tokio::spawn({
            let (front, back, down, agent) =
                (front.clone(), back.clone(), down.clone(), agent.clone());
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((len, from)) = front.recv_from(&mut buf).await {
                    *agent.lock().expect("relay lock") = Some(from);
                    if down.load(Ordering::Relaxed) {
                        continue;
                    }
                    forward(&back, None, buf[..len].to_vec(), delay);
                }
            }
        }));
        // Gateway -> agent.
        tasks.push(tokio::spawn({
            let (front, back, down, agent) =
                (front.clone(), back.clone(), down.clone(), agent.clone());
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(len) = back.recv(&mut buf).await {
                    let to = *agent.lock().expect("relay lock");
                    if down.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(to) = to {
                        forward(&front, Some(to), buf[..len].to_vec(), delay);
                    }
                }
            }
        }));
        if let Link::Flapping { down: off, period } = link {
            // Spread the outages: device n starts its cycle n/7 of a period late.
            let phase = period.mul_f64((n % 7) as f64 / 7.0);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                loop {
                    tokio::time::sleep(period - off).await;
                    down.store(true, Ordering::Relaxed);
                    tokio::time::sleep(off).await;
                    down.store(false, Ordering::Relaxed);
                }
            }));
        }
        Ok(HomeLink {
            front: front_addr,
            tasks,
        })
    }
}

/// Sends `packet` on `socket` (to `to`, or its connected peer), after `delay`.
/// Without a delay it goes at once (a full socket buffer drops it, as a home
/// router's would).
fn forward(
    socket: &Arc<UdpSocket>,
    to: Option<SocketAddr>,
    packet: Vec<u8>,
    delay: Option<Duration>,
) {
    let Some(delay) = delay else {
        let _ = match to {
            Some(to) => socket.try_send_to(&packet, to),
            None => socket.try_send(&packet),
        };
        return;
    };
    let socket = socket.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = match to {
            Some(to) => socket.send_to(&packet, to).await,
            None => socket.send(&packet).await,
        };
    });
}

/// One pool on one gateway process.
struct Pool {
    gateway: GatewayProcess,
    _agents: Vec<AgentHandle>,
    _links: Vec<HomeLink>,
    _state: tempfile::TempDir,
}

impl Pool {
    async fn start(bench: &Bench, links: &[Link], extra: &[&str]) -> Result<Pool> {
        let state = tempfile::tempdir()?;
        let pin = pin_of(&bench.bins.gateway, state.path()).await?;
        let gateway = GatewayProcess::start_with(
            &bench.bins.gateway,
            state.path(),
            10_000,
            bench.runs.gateway_threads,
            extra,
        )
        .await?;
        let mut homes = Vec::new();
        let mut agents = Vec::new();
        for (n, link) in links.iter().enumerate() {
            let home = HomeLink::start(n, gateway.tunnel(), *link).await?;
            let agent = Agent::builder(
                home.front.to_string(),
                pin.parse().expect("pin from `gateway pin` parses"),
                TOKEN,
            )
            .bind(IpAddr::V4(Ipv4Addr::new(127, 8, 0, (n + 1) as u8)))
            .allow_private(true)
            .spawn()?;
            homes.push(home);
            agents.push(agent);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while gateway.agents().await? < links.len() as u64 {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} agents joined within 30 s",
                    gateway.agents().await?,
                    links.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Pool {
            gateway,
            _agents: agents,
            _links: homes,
            _state: state,
        })
    }
}

/// What one pool's requests saw.
struct Outcome {
    ok: usize,
    /// Time to the first byte of each successful answer, sorted.
    ttfb: Vec<Duration>,
    failures: BTreeMap<String, usize>,
}

impl Outcome {
    fn total(&self) -> usize {
        self.ok + self.failures.values().sum::<usize>()
    }

    fn success_percent(&self) -> f64 {
        100.0 * self.ok as f64 / self.total().max(1) as f64
    }
}

/// One rotating request: its time to the first byte of the answer, or why it failed.
async fn one_request(route: &Route, target: SocketAddr) -> Result<Duration, String> {
    let t0 = Instant::now();
    let attempt = async {
        let mut stream = open(route, target).await.map_err(|e| e.kind())?;
        let mut request = Vec::with_capacity(9 + EXCHANGE);
        request.push(b'E');
        request.extend_from_slice(&(EXCHANGE as u64).to_be_bytes());
        request.resize(9 + EXCHANGE, 0x5a);
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("send: {}", e.kind()))?;
        let mut first = [0u8; 1];
        stream
            .read_exact(&mut first)
            .await
            .map_err(|e| format!("answer: {}", e.kind()))?;
        let ttfb = t0.elapsed();
        let mut rest = vec![0u8; EXCHANGE - 1];
        stream
            .read_exact(&mut rest)
            .await
            .map_err(|e| format!("answer: {}", e.kind()))?;
        Ok(ttfb)
    };
    tokio::time::timeout(REQUEST_BOUND, attempt)
        .await
        .unwrap_or_else(|_| Err("request timeout".into()))
}

/// `requests` rotating requests from `clients` loops.
async fn drive(
    name: &str,
    pool: &Pool,
    target: SocketAddr,
    requests: usize,
    clients: usize,
) -> Outcome {
    let left = Arc::new(AtomicUsize::new(requests));
    let route = pool.gateway.path();
    let loops = (0..clients).map(|i| {
        let route = route.with_source(IpAddr::V4(Ipv4Addr::new(127, 0, 3, (i % 250 + 1) as u8)));
        let left = left.clone();
        async move {
            let mut times = Vec::new();
            let mut failures = BTreeMap::<String, usize>::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                match one_request(&route, target).await {
                    Ok(time) => times.push(time),
                    Err(kind) => *failures.entry(kind).or_default() += 1,
                }
            }
            (times, failures)
        }
    });
    let t0 = Instant::now();
    let mut outcome = Outcome {
        ok: 0,
        ttfb: Vec::new(),
        failures: BTreeMap::new(),
    };
    for (times, failures) in join_all(loops).await {
        outcome.ttfb.extend(times);
        for (kind, n) in failures {
            *outcome.failures.entry(kind).or_default() += n;
        }
    }
    outcome.ok = outcome.ttfb.len();
    outcome.ttfb.sort();
    eprintln!(
        "   {name:<28} {:.2} % of {} succeeded in {:.1} s, TTFB p50 {:.1} ms, p99 {:.1} ms, failures {:?}",
        outcome.success_percent(),
        outcome.total(),
        t0.elapsed().as_secs_f64(),
        percentile(&outcome.ttfb, 0.5),
        percentile(&outcome.ttfb, 0.99),
        outcome.failures
    );
    outcome
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let requests = bench.sizes.flaky_requests;
    let clients = bench.sizes.rate_clients;
    let target = start_target().await?;
    let variants: [(&str, Vec<Link>, &[&str]); 3] = [
        ("all healthy", vec![Link::Healthy; AGENTS], &[]),
        ("flaky, health + retry on", flaky_links(), &[]),
        (
            "flaky, health + retry off",
            flaky_links(),
            &["--no-health", "--open-attempts", "1"],
        ),
    ];
    let mut results = Vec::new();
    for (name, links, extra) in variants {
        let mut pool = Pool::start(bench, &links, extra)
            .await
            .with_context(|| format!("starting the {name} pool"))?;
        let outcome = drive(name, &pool, target, requests, clients).await;
        pool.gateway.stop(Duration::from_secs(10)).await?;
        drop(pool);
        results.push((name, outcome));
    }
    let healthy_p99 = percentile(&results[0].1.ttfb, 0.99);
    for (name, outcome) in &results {
        let figures = [
            ("success rate", "%", outcome.success_percent()),
            (
                "time to first byte, p50",
                "ms",
                percentile(&outcome.ttfb, 0.5),
            ),
            (
                "time to first byte, p99",
                "ms",
                percentile(&outcome.ttfb, 0.99),
            ),
            (
                "time to first byte, p99 / all-healthy pool's",
                "ratio",
                percentile(&outcome.ttfb, 0.99) / healthy_p99,
            ),
        ];
        for (metric, unit, value) in figures {
            report.row(
                "flaky",
                format!("{name}: {metric}"),
                unit,
                None,
                Some(value),
                None,
            );
        }
        for (kind, n) in &outcome.failures {
            report.row(
                "flaky",
                format!("{name}: failed, {kind}"),
                "count",
                None,
                Some(*n as f64),
                None,
            );
        }
    }
    report.notes.push(format!(
        "flaky: {AGENTS} agents (in this process), each behind its own UDP relay playing its home link: {} lose the link for 6 s in every 12 s, {} for 4 s in every 7 s, {} have {} ms added each way, the rest are healthy; {requests} rotating requests per pool from {clients} client loops (a fresh connection, CONNECT, a {EXCHANGE}-byte exchange), time to first byte from the start of the connection; one gateway process (--threads {}) per pool: all healthy, flaky with the defaults, flaky with --no-health --open-attempts 1",
        AGENTS / 10,
        AGENTS / 10,
        AGENTS / 10,
        SLOW_DELAY.as_millis(),
        bench.runs.gateway_threads
    ));
    Ok(())
}
