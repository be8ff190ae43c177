//! The agent's task that applies the owner's [`Schedule`](crate::schedule::Schedule)
//! every [`SCHEDULE_TICK`] (or at once when an injected
//! [`Clock`](crate::schedule::Clock) moves): a schedule pause is the same pause
//! as [`crate::AgentHandle::pause`], kept as a reason of its own so neither
//! undoes the other, and a window's rate cap replaces the meter's cap live.
//! Apart from the pure model in `schedule`, which the configuration names.

use crate::schedule::*;
use crate::shared::{PauseReason, Shared};
use jiff::civil::DateTime;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Applies the schedule in `shared.config` until shutdown: looks every
/// [`SCHEDULE_TICK`] and whenever a manual clock moves.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(schedule) = shared.config.schedule.clone() else {
        return;
    };
    let mut clock = shared.config.clock.clone();
    let mut tick = tokio::time::interval(SCHEDULE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = relayed(&shared);
    let mut last: Option<(Option<String>, bool)> = None;
    let mut until = Until::default();
    loop {
        let now = clock.now();
        let total = relayed(&shared);
        let status = apply(&shared, &schedule, now, total - counted, &mut until);
        counted = total;
        let shown = (status.window.clone(), status.paused);
        if last.as_ref() != Some(&shown) {
            info!(
                window = status.window.as_deref().unwrap_or("(outside every window)"),
                paused = status.paused,
                max_rate = status.window_max_rate,
                until = status.until.as_deref().unwrap_or("-"),
                cap_left = status.monthly_cap.as_ref().map(|cap| cap.left),
                "schedule"
            );
            last = Some(shown);
        }
        shared.schedule.status.send_if_modified(|shown| {
            let changed = shown.as_ref() != Some(&status);
            *shown = Some(status);
            changed
        });
        let moved = async {
            match &mut clock {
                Clock::Manual(time) => {
                    if time.changed().await.is_err() {
                        // The sender is gone: the time stays where it is.
                        std::future::pending::<()>().await;
                    }
                }
                Clock::System => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            // Shutdown first: a stopping agent's pause is never lifted by a
            // last look at the schedule.
            biased;
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            () = moved => {}
        }
    }
}

/// Bytes relayed since start, up and down.
fn relayed(shared: &Shared) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    shared.meter.bytes_up.load(Relaxed) + shared.meter.bytes_down.load(Relaxed)
}

/// The next change of window, kept until it passes, the window changes or
/// the clock goes back (it is a search over every window's start and end for
/// eight days, too much for every tick).
#[derive(Default)]
struct Until {
    found: Option<Found>,
}

struct Found {
    window: Option<String>,
    action: Action,
    /// When it was searched for.
    at: DateTime,
    next: Option<DateTime>,
}

impl Until {
    fn at(&mut self, schedule: &Schedule, local: DateTime, now: &InForce<'_>) -> Option<DateTime> {
        let window = now.window.map(|w| w.name.clone());
        let valid = self.found.as_ref().is_some_and(|found| {
            found.window == window
                && found.action == now.action
                && found.at <= local
                && found.next.is_none_or(|next| local < next)
        });
        if !valid {
            self.found = Some(Found {
                window,
                action: now.action,
                at: local,
                next: schedule.next_change(local),
            });
        }
        self.found.as_ref().and_then(|found| found.next)
    }
}

/// One look at the schedule at `now`, with `bytes` relayed since the last.
fn apply(
    shared: &Shared,
    schedule: &Schedule,
    now: SystemTime,
    bytes: u64,
    until: &mut Until,
) -> ScheduleStatus {
    let local = schedule.local(now);
    let in_force = schedule.in_force(local);
    let monthly_cap = schedule.monthly_cap.map(|cap| {
        let mut ledger = shared.schedule.ledger.lock().expect("ledger lock");
        let ledger = ledger.get_or_insert(CapLedger {
            cycle: cap.cycle_start(local.date()),
            used: 0,
        });
        let before = ledger.left(&cap);
        ledger.account(&cap, local.date(), bytes);
        if before > 0 && ledger.left(&cap) == 0 {
            warn!(cap = cap.bytes, next_reset = %cap.next_reset(local.date()), "the monthly cap is spent; sharing pauses until it resets");
        }
        CapStatus {
            bytes: cap.bytes,
            used: ledger.used,
            left: ledger.left(&cap),
            cycle_start: ledger.cycle.to_string(),
            next_reset: cap.next_reset(local.date()).to_string(),
        }
    });
    let cap_spent = monthly_cap.as_ref().is_some_and(|cap| cap.left == 0);
    let window_max_rate = match in_force.action {
        Action::Share { max_rate } => max_rate,
        Action::Pause => None,
    };
    let paused = in_force.action == Action::Pause || cap_spent;
    // The tighter of the owner's own cap and the window's.
    let configured = shared.config.limits.max_rate;
    let rate = match (configured, window_max_rate) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    shared.meter.set_max_rate(rate);
    shared.set_paused(PauseReason::Schedule, paused);
    ScheduleStatus {
        window: in_force.window.map(|w| w.name.clone()),
        paused,
        window_max_rate: window_max_rate.map(NonZeroU32::get),
        until: until
            .at(schedule, local, &in_force)
            .map(|at| at.strftime("%Y-%m-%d %H:%M").to_string()),
        monthly_cap,
    }
}
