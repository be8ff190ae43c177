//! The soak's events, each taken at a quiet point or a pause of the `bench`
//! customer: the readings that open and close growth windows, the gateway
//! restart, the Redis restart (fleet) and the churn of agents joining and
//! leaving; and the wait for usage to settle before bytes are compared.

use super::customers::Customers;
use super::rest::read_at_rest;
use super::rig::{panics_in, Rig};
use super::sampling::Reading;
use super::schedule::{Run, Window};
use super::settings::{CHURN_EVERY, CHURN_SLOTS, REDIS, REQUEST_BOUND, SETTLE_BOUND};
use crate::client::STEP;
use crate::launch::{wait_until, USER};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tokio::sync::OwnedRwLockWriteGuard;

/// Holds both gates: no customer connection is open until it is dropped.
pub struct Quiet {
    _bench: OwnedRwLockWriteGuard<()>,
    _cut: Option<OwnedRwLockWriteGuard<()>>,
}

/// Takes the `bench` gate (and the `cut` one when `all`), bounded.
async fn pause(customers: &Customers, all: bool) -> Result<Quiet> {
    let bench = tokio::time::timeout(2 * REQUEST_BOUND, customers.gate.clone().write_owned())
        .await
        .context("the bench customers did not pause")?;
    let cut = if all {
        Some(
            tokio::time::timeout(2 * REQUEST_BOUND, customers.cut_gate.clone().write_owned())
                .await
                .context("the cut customers did not pause")?,
        )
    } else {
        None
    };
    Ok(Quiet {
        _bench: bench,
        _cut: cut,
    })
}

/// Traffic paused, every churn slot up and joined, no stream open, and then
/// each measured process at rest ([`read_at_rest`]): the state every growth
/// window's readings are taken in.
pub async fn quiet_point(rig: &mut Rig, customers: &Customers) -> Result<(Quiet, Vec<Reading>)> {
    let quiet = pause(customers, true).await?;
    for i in 0..CHURN_SLOTS {
        if rig.churn[i].process.is_none() {
            rig.join(false, i)?;
        }
    }
    rig.wait_agents().await?;
    wait_until(SETTLE_BOUND, "no stream is open", || async {
        rig.live_streams().await.ok() == Some(0)
    })
    .await?;
    let readings = read_at_rest(rig.measured_runtimes()?).await?;
    Ok((quiet, readings))
}

/// Waits until the gateways' count for `bench` equals what the targets saw;
/// the bytes moved (up, down) and the gateways' last count.
pub async fn settle_usage(rig: &Rig, customers: &Customers) -> (u64, u64, (u64, u64)) {
    // Each relay folds its last bytes in as it ends, just after its client
    // saw the end; polled like `wait_until`, keeping the last count.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counted = rig.counted(USER).await.unwrap_or((0, 0));
        let (up, down) = customers.moved();
        if counted == (up, down) || Instant::now() > deadline {
            return (up, down, counted);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Run<'_> {
    /// Ends the growth window of process `name` with its reading in `readings`.
    fn close_window(&mut self, readings: &[Reading], name: &str) {
        let Some(at) = self.open.iter().position(|(_, s)| s.name == name) else {
            return;
        };
        let (label, start) = self.open.remove(at);
        if let Some(end) = readings.iter().find(|r| r.name == name) {
            self.windows.push(Window {
                label,
                start,
                end: end.clone(),
            });
        }
    }

    /// The reading at the end of the warm-up: every process's window opens.
    pub async fn warm_up(&mut self) -> Result<()> {
        let (quiet, readings) = quiet_point(self.rig, &self.customers)
            .await
            .context("warm-up reading")?;
        drop(quiet);
        eprintln!(
            "   warm-up reading at {:.0} s",
            self.t0.elapsed().as_secs_f64()
        );
        self.open
            .extend(readings.into_iter().map(|r| (r.name.clone(), r)));
        Ok(())
    }

    /// A restarted process's own warm-up reading: its new window opens.
    pub async fn rewarm(&mut self, name: &str, label: String) -> Result<()> {
        let (quiet, readings) = quiet_point(self.rig, &self.customers)
            .await
            .with_context(|| format!("{label}: warm-up reading"))?;
        drop(quiet);
        let reading = readings
            .into_iter()
            .find(|r| r.name == name)
            .with_context(|| format!("no reading of {name}"))?;
        self.open.push((label, reading));
        Ok(())
    }

    /// Restarts the last gateway gracefully at a quiet point; its usage
    /// before and after is kept for the verdict.
    pub async fn restart_gateway(&mut self) -> Result<()> {
        let which = self.rig.gateways.len() - 1;
        let name = self.rig.gateway_name(which);
        let (quiet, readings) = quiet_point(self.rig, &self.customers)
            .await
            .context("reading before the gateway restart")?;
        self.close_window(&readings, &name);
        let (_, _, before) = settle_usage(self.rig, &self.customers).await;
        *self
            .rig
            .panics
            .entry(format!("{name} (before its restart)"))
            .or_default() += panics_in(&self.rig.gateways[which].lines());
        self.rig.gateways[which]
            .restart(false)
            .await
            .context("restarting a gateway")?;
        let after = self.rig.counted(USER).await?;
        self.usage_kept.push((before, after));
        self.rig
            .wait_agents()
            .await
            .context("agents back after the gateway restart")?;
        self.sampler.watch(self.rig.measured()?);
        drop(quiet);
        let now = self.t0.elapsed();
        eprintln!("   {name} restarted at {:.0} s", now.as_secs_f64());
        self.rewarm.push((
            now + self.warmup,
            name.clone(),
            format!("{name} (after its restart)"),
        ));
        *self.rig.events.entry("gateway restarts").or_default() += 1;
        Ok(())
    }

    /// Kills Redis (it comes back empty) at a quiet point and waits for the
    /// fleet and its agents.
    pub async fn restart_redis(&mut self) -> Result<()> {
        let (quiet, readings) = quiet_point(self.rig, &self.customers)
            .await
            .context("reading before the Redis restart")?;
        self.close_window(&readings, REDIS);
        let redis = self
            .rig
            .redis
            .as_mut()
            .context("no Redis outside a fleet")?;
        redis.kill().await?;
        redis.start_again(STEP).await?;
        self.rig
            .wait_fleet()
            .await
            .context("the fleet after the Redis restart")?;
        self.rig
            .wait_agents()
            .await
            .context("agents listed after the Redis restart")?;
        self.sampler.watch(self.rig.measured()?);
        drop(quiet);
        let now = self.t0.elapsed();
        eprintln!("   Redis restarted at {:.0} s", now.as_secs_f64());
        self.rewarm.push((
            now + self.warmup,
            REDIS.to_owned(),
            format!("{REDIS} (after its restart)"),
        ));
        *self.rig.events.entry("Redis restarts").or_default() += 1;
        Ok(())
    }

    /// The next churn slot joins or leaves, with `bench` paused.
    pub async fn churn(&mut self) -> Result<()> {
        let quiet = pause(&self.customers, false).await?;
        let i = self.churned % CHURN_SLOTS;
        if self.rig.churn[i].process.is_some() {
            self.rig.leave(i).await?;
        } else {
            self.rig.join(false, i)?;
        }
        drop(quiet);
        self.churned += 1;
        self.next_churn += CHURN_EVERY;
        Ok(())
    }
}
