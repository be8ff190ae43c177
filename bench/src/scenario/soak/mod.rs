//! soak: minutes of mixed traffic and faults against the real binaries, and
//! whether anything grows, panics or goes uncounted.
//!
//! For `--soak-duration` (10 minutes by default): customer loops on every
//! protocol the customer port serves (HTTP `CONNECT`, plain-HTTP forwarding,
//! SOCKS5, and `CONNECT` inside TLS, the HTTPS proxy), a tenth of their
//! requests to a target that refuses and, on the tunnel protocols, a tenth to
//! one that resets mid-transfer; agent processes joining and leaving every
//! [`CHURN_EVERY`] (every [`KILL_EVERY`]th leave a SIGKILL); one graceful
//! gateway restart; with `--fleet`, two gateways on one `redis-server` and
//! one Redis restart (SIGKILL, back empty).
//!
//! Two customers. `bench` is accounted exactly: its connections take turns
//! with the faults (a read guard per connection, a write guard per fault), so
//! no byte of it is in flight when a process stops, and every byte the target
//! servers (in this process) read or wrote for it must equal what the
//! gateways' `/stats` counted. `cut` downloads 4 MiB at a time through every
//! fault, so stops, kills and restarts cut its transfers: its bytes are shown,
//! not compared.
//!
//! Growth is judged per window: for every gateway, every agent that lives
//! through and Redis, from the end of the warm-up (the first fifth) to the
//! end; a restarted process (the gateway, and Redis in a fleet) has two, the
//! first process's until its restart and the new one's from one warm-up after
//! its restart to the end. Both ends of a window are quiet points (traffic
//! paused, every churn slot up, no stream open) at which each process is read
//! once it is at rest ([`rest`]): its RSS no longer falling a trim period
//! after traffic stopped, and its blocking pool's idle threads retired. RSS,
//! descriptors and threads (`/proc/PID/fd`, `task`) read there may each grow
//! by at most [`GROWTH_LIMIT`] percent; the gateway exposes no live task count
//! of its own, so threads are what is counted. Memory is also sampled through
//! the whole run (every 2 s at the default 600 s), traffic flowing
//! ([`sampling`]): the medians of each window's first and last fifth and the
//! trend over its second half are shown, not judged ([`verdict`]).
//!
//! The files: [`targets`] (the servers, counting bytes), [`drivers`] (the
//! client side of each protocol), [`customers`] (the two customers' loops),
//! [`rig`] (the processes), [`faults`] (restarts, churn, quiet points),
//! [`rest`] (a quiet point's wait for each process at rest and its readings),
//! [`sampling`] (what is read from /proc, and the statistics), [`verdict`]
//! (the checks and the report), [`settings`] (sizes, bounds and names) and
//! [`schedule`] (the run in progress); this file runs the schedule.

mod customers;
mod drivers;
mod faults;
mod rest;
mod rig;
mod sampling;
mod schedule;
mod settings;
mod targets;
mod verdict;

use crate::cli::Bench;
use crate::report::Report;
use anyhow::{bail, Context, Result};
use customers::Customers;
use rig::Rig;
use sampling::{Reading, Sampler};
use schedule::{Run, Window};
use settings::*;
use std::time::{Duration, Instant};

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let fleet = bench.sizes.soak_fleet;
    let mut rig = Rig::start(bench, fleet).await?;
    let result = soak(bench, &mut rig, report).await;
    rig.stop().await;
    result
}

async fn soak(bench: &Bench, rig: &mut Rig, report: &mut Report) -> Result<()> {
    let duration = bench.sizes.soak_duration;
    let customers = Customers::start(rig.proxies(), &rig.tls_roots).await?;
    let loops = customers.spawn_loops();
    let t0 = Instant::now();
    let sampler = Sampler::start(t0, duration, rig.measured()?);
    let mut run = Run {
        rig,
        customers,
        sampler,
        t0,
        duration,
        warmup: (duration / 5).max(Duration::from_secs(5)),
        churned: 0,
        next_churn: CHURN_EVERY,
        usage_kept: Vec::new(),
        open: Vec::new(),
        windows: Vec::new(),
        rewarm: Vec::new(),
    };
    run.schedule().await?;
    let (quiet, end) = faults::quiet_point(run.rig, &run.customers)
        .await
        .context("end reading")?;
    run.close_all(&end, report);
    run.customers.stop();
    drop(quiet);
    for handle in loops {
        let _ = tokio::time::timeout(2 * REQUEST_BOUND, handle).await;
    }
    verdict::judge(run, bench, report).await
}

impl Run<'_> {
    /// Runs the events in their order until the duration is over: the
    /// warm-up reading, the restarts (early enough that a restarted process
    /// gets a warm-up of its own and then a window as long as the first
    /// one's), the restarted processes' own warm-ups, and the churn.
    async fn schedule(&mut self) -> Result<()> {
        let (duration, warmup) = (self.duration, self.warmup);
        let restart_at = warmup + (duration - warmup) / 4;
        let redis_at = warmup + (duration - warmup) * 9 / 20;
        let mut warmed = false;
        let mut restarted = false;
        let mut redis_restarted = self.rig.redis.is_none();
        loop {
            let now = self.t0.elapsed();
            if now >= duration {
                break;
            }
            // A restarted process gets a window of its own only if half a
            // warm-up is left after its own warm-up.
            let rewarm = self
                .rewarm
                .iter()
                .position(|(when, _, _)| now >= *when && *when + warmup / 2 <= duration);
            if !warmed && now >= warmup {
                self.warm_up().await?;
                warmed = true;
            } else if let Some(at) = rewarm {
                let (_, name, label) = self.rewarm.remove(at);
                self.rewarm(&name, label).await?;
            } else if !restarted && now >= restart_at {
                self.restart_gateway().await?;
                restarted = true;
            } else if !redis_restarted && now >= redis_at {
                self.restart_redis().await?;
                redis_restarted = true;
            } else if now >= self.next_churn {
                self.churn().await?;
            } else {
                // The schedule's next event (not a readiness wait).
                let mut next = self.next_churn.min(duration);
                for (pending, at) in [
                    (!warmed, warmup),
                    (!restarted, restart_at),
                    (!redis_restarted, redis_at),
                ] {
                    if pending {
                        next = next.min(at);
                    }
                }
                for (when, _, _) in &self.rewarm {
                    if *when + warmup / 2 <= duration {
                        next = next.min(*when);
                    }
                }
                tokio::time::sleep_until((self.t0 + next).into()).await;
            }
        }
        if !warmed {
            bail!("the run ended before its warm-up reading");
        }
        Ok(())
    }

    /// Closes every window still open with the end readings.
    fn close_all(&mut self, end: &[Reading], report: &mut Report) {
        for (label, start) in std::mem::take(&mut self.open) {
            match end.iter().find(|r| r.name == start.name) {
                Some(reading) => self.windows.push(Window {
                    label,
                    start,
                    end: reading.clone(),
                }),
                None => report
                    .failures
                    .push(format!("soak: {label} has no end reading")),
            }
        }
        for (_, _, label) in &self.rewarm {
            report.notes.push(format!(
                "soak: {label}: the run ended too soon after its own warm-up, so it has no growth window"
            ));
        }
    }
}
