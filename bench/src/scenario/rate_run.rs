//! rate's one path driven for a time ([`drive`]) and what it measured
//! ([`RateRun`]): the client loops, each a fresh connection and a 1 KiB
//! exchange, that `rate.rs` and `rate_history.rs` both run.

use crate::cli::Sizes;
use crate::client::{exchange, join_all, open, Route, STEP};
use crate::measure::cpu_of;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Bytes each way per connection.
pub(super) const EXCHANGE: u64 = 1024;
/// Sequential exchanges before the clock starts, to warm caches and windows.
const WARM_UP: usize = 20;

/// One path driven for the scenario's time.
pub(super) struct RateRun {
    /// Connections that completed their exchange.
    pub(super) done: usize,
    pub(super) secs: f64,
    /// Each completed connection's time, sorted.
    pub(super) times: Vec<Duration>,
    /// CPU seconds of this process (client and target), then of each proxy process.
    pub(super) cpu: Vec<f64>,
    /// Failed connections by kind.
    pub(super) errors: BTreeMap<String, usize>,
}

impl RateRun {
    pub(super) fn per_second(&self) -> f64 {
        self.done as f64 / self.secs
    }

    /// CPU-µs per completed connection of the CPU figures `cpu[range]`.
    pub(super) fn micros(&self, range: std::ops::Range<usize>) -> Option<f64> {
        let cpu = self.cpu.get(range)?;
        (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / self.done as f64 * 1e6)
    }

    /// Every proxy process together.
    pub(super) fn proxy_micros(&self) -> Option<f64> {
        self.micros(1..self.cpu.len())
    }

    /// Proxy process `i` of a two-process path (0: the gateway or the bare
    /// entry hop; 1: the agent or the bare exit hop); `None` for other paths.
    pub(super) fn process_micros(&self, i: usize) -> Option<f64> {
        if self.cpu.len() != 3 {
            return None;
        }
        self.micros(i + 1..i + 2)
    }

    pub(super) fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// One path's rounds as one run: their connections, time and CPU added up.
    pub(super) fn total(rounds: &[RateRun]) -> RateRun {
        let mut total = RateRun {
            done: 0,
            secs: 0.0,
            times: Vec::new(),
            cpu: Vec::new(),
            errors: BTreeMap::new(),
        };
        for round in rounds {
            total.done += round.done;
            total.secs += round.secs;
            total.times.extend(&round.times);
            total.cpu.resize(round.cpu.len(), 0.0);
            for (sum, cpu) in total.cpu.iter_mut().zip(&round.cpu) {
                *sum += cpu;
            }
            for (kind, n) in &round.errors {
                *total.errors.entry(kind.clone()).or_default() += n;
            }
        }
        total.times.sort();
        total
    }
}

/// One fresh connection and exchange; its time, or the kind of its failure.
async fn one_exchange(route: &Route, target: SocketAddr) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut stream = open(route, target).await.map_err(|e| e.kind())?;
    match tokio::time::timeout(STEP, exchange(&mut stream, EXCHANGE)).await {
        Ok(Ok(())) => Ok(t0.elapsed()),
        Ok(Err(error)) => Err(format!("exchange: {}", error.kind())),
        Err(_) => Err("exchange timeout".into()),
    }
}

/// Drives `route` with the scenario's client loops for its time; `pids` are the
/// proxy's processes.
pub(super) async fn drive(
    name: &str,
    route: &Route,
    pids: &[u32],
    target: SocketAddr,
    sizes: &Sizes,
) -> Result<RateRun> {
    for _ in 0..WARM_UP {
        if let Err(kind) = one_exchange(route, target).await {
            bail!("{name} warm-up: {kind}");
        }
    }
    let cpu0 = cpu_of(pids)?;
    let t0 = Instant::now();
    let deadline = t0 + sizes.rate_time;
    let loops = (0..sizes.rate_clients).map(|i| {
        // Clients from 127.0.3.1-250, as customers come from many addresses.
        let route = route.with_source(IpAddr::V4(Ipv4Addr::new(127, 0, 3, (i % 250 + 1) as u8)));
        async move {
            let mut times = Vec::new();
            let mut errors = BTreeMap::<String, usize>::new();
            while Instant::now() < deadline {
                match one_exchange(&route, target).await {
                    Ok(time) => times.push(time),
                    Err(kind) => *errors.entry(kind).or_default() += 1,
                }
            }
            (times, errors)
        }
    });
    let mut run = RateRun {
        done: 0,
        secs: 0.0,
        times: Vec::new(),
        cpu: Vec::new(),
        errors: BTreeMap::new(),
    };
    for (times, errors) in join_all(loops).await {
        run.times.extend(times);
        for (kind, n) in errors {
            *run.errors.entry(kind).or_default() += n;
        }
    }
    run.secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(pids)?;
    run.cpu = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).collect();
    run.done = run.times.len();
    run.times.sort();
    eprintln!(
        "   {name:<10} {:.0} conn/s, {:?} CPU-µs per connection in the proxy, {} errors {:?}",
        run.per_second(),
        run.proxy_micros(),
        run.error_count(),
        run.errors
    );
    if run.done == 0 {
        bail!("{name}: no connection completed; errors: {:?}", run.errors);
    }
    Ok(run)
}
