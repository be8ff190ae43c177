//! Exit health: each exit's recent record of opens and relays that failed through
//! its own fault, and the cooling that keeps a failing exit out of routing.
//!
//! What counts against an exit: no answer to `Open` within the open timeout, a
//! tunnel lost while opening or relaying, the exit saying it is unavailable. A
//! target that refuses, times out or does not resolve is the target's doing: the
//! exit answered, so that counts as a success for the exit (without a latency
//! sample, since the time is the target's).
//!
//! [`Health`] keeps an exponentially weighted success rate and time to `Opened`,
//! which rotation weighs with load ([`Health::cost`]); after
//! [`HealthPolicy::cool_after`] failures in a row the exit is cooled: the
//! directory takes it out of routing for a period that doubles each time it is
//! cooled again while it keeps failing. It then comes back on probation: one more
//! failure cools it again at once, one success clears the record of coolings.
//!
//! An exit whose last [`SLOW_AFTER`] opens were all far slower than the pool's
//! typical open ([`TypicalLatency`], a running median over every exit's opens)
//! is marked slow for [`HealthPolicy::slow_memory`]: rotation passes it over
//! like a suspect one while faster exits are free. (One slow open is a hiccup,
//! or a device's first; two in a row are the device.) Weighing latency against load in
//! the two-choice comparison is not enough on its own: when both candidates
//! are slow (1 % of picks with a tenth of the pool slow) one of them must win,
//! and those requests are the p99. Once the mark lapses the exit competes on
//! cost again, so an exit that got faster is noticed at its next open.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How health is scored and how long failing exits are cooled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthPolicy {
    /// Weight of the newest outcome in the moving averages (0–1): 0.2 lets the
    /// last five or so outcomes dominate, so a recovered exit wins traffic back
    /// within a few requests.
    pub weight: f64,
    /// Failures in a row that cool an exit (0 turns cooling off).
    pub cool_after: u32,
    /// The first cooling period; each further one while the exit keeps failing
    /// doubles it.
    pub cooling: Duration,
    /// The longest cooling period.
    pub max_cooling: Duration,
    /// Whether rotation weighs health and latency at all (off: load alone, as
    /// before; for comparisons in the load test).
    pub enabled: bool,
    /// An exit that has had opens waiting this long without answering any is
    /// suspect: rotation all but avoids it until it answers. It catches an exit
    /// that went silent long before its failures are counted (an open fails
    /// only at its timeout), while a slow but answering exit keeps its turn.
    pub suspect_after: Duration,
    /// An open that takes this many times the pool's typical time to `Opened`
    /// (and more by [`slow_margin`](Self::slow_margin)) is a slow one; 0 never
    /// marks exits slow.
    pub slow_factor: f64,
    /// How far above the typical time to `Opened` an exit must also be to be
    /// slow, so a few milliseconds on a fast local pool are not "4× slower".
    pub slow_margin: Duration,
    /// How long a slow mark lasts after the sample that set it.
    pub slow_memory: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            weight: 0.2,
            cool_after: 3,
            cooling: Duration::from_secs(5),
            max_cooling: Duration::from_secs(300),
            enabled: true,
            suspect_after: Duration::from_secs(1),
            slow_factor: 4.0,
            slow_margin: Duration::from_millis(100),
            slow_memory: Duration::from_secs(10),
        }
    }
}

/// One outcome of an open or a relay through an exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The exit answered `Opened` after this long.
    Opened(Duration),
    /// The exit answered for the target (refused, timed out, no such name): not
    /// the exit's fault.
    Answered,
    /// The exit failed: no answer in time, its tunnel lost, or unavailable.
    ExitFailed,
}

/// Latency that costs as much as one extra live stream in the pick's comparison:
/// customers judge a network by time to first byte, so an exit 150 ms slower
/// than another is weighed like four more streams on it.
const LATENCY_UNIT_MS: f64 = 50.0;
/// The floor of the success rate in the pick's comparison, so a poor exit is
/// weighed as very expensive rather than infinitely so.
const MIN_SUCCESS: f64 = 0.05;
/// How much more a suspect exit costs in the pick's comparison: chosen only
/// when the other candidate is as bad.
const SUSPECT_PENALTY: f64 = 1000.0;
/// How much more a slow exit costs: below a suspect one (a slow exit answers).
const SLOW_PENALTY: f64 = 30.0;
/// Slow opens in a row that mark an exit slow.
pub const SLOW_AFTER: u32 = 2;
/// The typical latency's step per sample, in natural-log units: about 5 %,
/// so it follows a change in the pool within a hundred opens.
const TYPICAL_STEP: f64 = 0.05;

/// The pool's typical time to `Opened`: a running median over every exit's
/// opens (each sample moves the estimate a small step towards it, in log
/// space), so the slow tenth of a pool does not drag it up the way it would an
/// average. Shared by every exit of a directory.
#[derive(Debug, Default)]
pub struct TypicalLatency {
    log_ms: Mutex<Option<f64>>,
}

impl TypicalLatency {
    /// Takes one open's latency into the estimate.
    pub fn record(&self, latency: Duration) {
        let sample = (latency.as_secs_f64() * 1000.0).max(0.01).ln();
        let mut estimate = self
            .log_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *estimate = Some(match *estimate {
            None => sample,
            Some(old) if sample > old => old + TYPICAL_STEP,
            Some(old) if sample < old => old - TYPICAL_STEP,
            Some(old) => old,
        });
    }

    /// The estimate, once there is one.
    pub fn get(&self) -> Option<Duration> {
        let log_ms = (*self
            .log_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        Some(Duration::from_secs_f64(log_ms.exp() / 1000.0))
    }
}

/// An exit's health; every method takes the lock for a few arithmetic steps only.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    success: f64,
    latency_ms: Option<f64>,
    streak: u32,
    cooled_until: Option<Instant>,
    /// Coolings in the current failing run: sets the next period.
    level: u32,
    probation: bool,
    coolings_total: u64,
    failures_total: u64,
    /// Opens waiting for this exit's answer now.
    waiting: u32,
    /// Since when the waiting opens have had no answer (reset by every answer).
    waiting_since: Option<Instant>,
    /// Until when it counts as slow, from its last opens' latency.
    slow_until: Option<Instant>,
    /// Slow opens in a row.
    slow_opens: u32,
}

impl Default for State {
    fn default() -> Self {
        State {
            success: 1.0,
            latency_ms: None,
            streak: 0,
            cooled_until: None,
            level: 0,
            probation: false,
            coolings_total: 0,
            failures_total: 0,
            waiting: 0,
            waiting_since: None,
            slow_until: None,
            slow_opens: 0,
        }
    }
}

/// One open waiting for an exit's answer; dropping it ends the wait.
#[derive(Debug)]
pub struct WaitingOpen(Arc<Health>);

impl Drop for WaitingOpen {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.waiting = state.waiting.saturating_sub(1);
        // Any answer is progress: the remaining waits count from now.
        state.waiting_since = (state.waiting > 0).then(Instant::now);
    }
}

/// A copy of an exit's health, for stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthView {
    /// Weighted success rate of recent opens and relays (1.0 = no exit failures).
    pub success_rate: f64,
    /// Weighted time to `Opened`, if the exit has opened anything.
    pub open_latency: Option<Duration>,
    /// Exit failures in a row.
    pub consecutive_failures: u32,
    /// Time left in the current cooling, if cooled now.
    pub cooling_left: Option<Duration>,
    /// Back from cooling and not yet proven: one failure cools it again.
    pub probation: bool,
    /// How often it has been cooled since it joined.
    pub coolings_total: u64,
    /// Exit failures since it joined.
    pub failures_total: u64,
    /// Opens waiting for its answer now.
    pub waiting: u32,
    /// Whether those have waited past [`HealthPolicy::suspect_after`].
    pub suspect: bool,
    /// Whether its opens are far slower than the pool's typical ones.
    pub slow: bool,
}

impl HealthView {
    /// The band `/metrics` (`exitpool_exits_by_health`) and the dashboard
    /// count the exit in: `cooling`, else `healthy` (success rate ≥ 0.9),
    /// `degraded` (≥ 0.5) or `failing`.
    pub fn band(&self) -> &'static str {
        if self.cooling_left.is_some() {
            "cooling"
        } else if self.success_rate >= 0.9 {
            "healthy"
        } else if self.success_rate >= 0.5 {
            "degraded"
        } else {
            "failing"
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `outcome`, judging its latency against the pool's `typical`
    /// one; answers the cooling period when this outcome cools the exit (the
    /// caller takes it out of routing until then).
    pub fn record(
        &self,
        outcome: Outcome,
        policy: &HealthPolicy,
        now: Instant,
        typical: Option<Duration>,
    ) -> Option<Duration> {
        let mut state = self.lock();
        let weight = policy.weight.clamp(0.0, 1.0);
        let sample = if outcome == Outcome::ExitFailed {
            0.0
        } else {
            1.0
        };
        state.success += weight * (sample - state.success);
        if let Outcome::Opened(latency) = outcome {
            let ms = latency.as_secs_f64() * 1000.0;
            state.latency_ms = Some(match state.latency_ms {
                Some(old) => old + weight * (ms - old),
                None => ms,
            });
            let slow = typical.is_some_and(|typical| {
                let typical_ms = typical.as_secs_f64() * 1000.0;
                let margin_ms = policy.slow_margin.as_secs_f64() * 1000.0;
                policy.slow_factor > 0.0
                    && ms > typical_ms * policy.slow_factor
                    && ms > typical_ms + margin_ms
            });
            state.slow_opens = if slow { state.slow_opens + 1 } else { 0 };
            state.slow_until = (state.slow_opens >= SLOW_AFTER).then(|| now + policy.slow_memory);
        }
        if outcome != Outcome::ExitFailed {
            state.streak = 0;
            if state.probation {
                state.probation = false;
                state.level = 0;
            }
            return None;
        }
        state.failures_total += 1;
        state.streak += 1;
        // Already cooled (a failure from an open that started before): no change.
        if state.cooled_until.is_some_and(|until| until > now) {
            return None;
        }
        let due = policy.enabled
            && policy.cool_after > 0
            && (state.probation || state.streak >= policy.cool_after);
        if !due {
            return None;
        }
        let period = policy
            .cooling
            .saturating_mul(1u32 << state.level.min(16))
            .min(policy.max_cooling);
        state.level += 1;
        state.coolings_total += 1;
        state.cooled_until = Some(now + period);
        state.probation = true;
        state.streak = 0;
        Some(period)
    }

    /// Counts an open waiting for this exit's answer until the returned guard is
    /// dropped (answered, failed or abandoned).
    pub fn open_started(self: &Arc<Self>, now: Instant) -> WaitingOpen {
        let mut state = self.lock();
        if state.waiting == 0 {
            state.waiting_since = Some(now);
        }
        state.waiting += 1;
        WaitingOpen(self.clone())
    }

    /// Whether the exit has left opens unanswered for `policy.suspect_after`.
    pub fn is_suspect(&self, now: Instant, policy: &HealthPolicy) -> bool {
        let state = self.lock();
        state.waiting > 0
            && state
                .waiting_since
                .is_some_and(|since| now.saturating_duration_since(since) >= policy.suspect_after)
    }

    /// Whether the exit's recent opens were far slower than the pool's.
    pub fn is_slow(&self, now: Instant) -> bool {
        self.lock().slow_until.is_some_and(|until| until > now)
    }

    /// Whether the exit is cooled at `now`.
    pub fn is_cooled(&self, now: Instant) -> bool {
        self.lock().cooled_until.is_some_and(|until| until > now)
    }

    /// When the current cooling ends, if any.
    pub fn cooled_until(&self) -> Option<Instant> {
        self.lock().cooled_until
    }

    /// The exit's weight against `load` live streams in rotation's two-choice
    /// comparison: lower is better. Load alone when `policy` is off.
    pub fn cost(&self, load: u32, policy: &HealthPolicy, now: Instant) -> f64 {
        let load = f64::from(load) + 1.0;
        if !policy.enabled {
            return load;
        }
        let suspect = self.is_suspect(now, policy);
        let state = self.lock();
        let latency = 1.0 + state.latency_ms.unwrap_or(0.0) / LATENCY_UNIT_MS;
        let slow = state.slow_until.is_some_and(|until| until > now);
        let penalty = match (suspect, slow) {
            (true, _) => SUSPECT_PENALTY,
            (false, true) => SLOW_PENALTY,
            (false, false) => 1.0,
        };
        penalty * load * latency / state.success.max(MIN_SUCCESS)
    }

    /// A copy for stats.
    pub fn view(&self, now: Instant, policy: &HealthPolicy) -> HealthView {
        let suspect = self.is_suspect(now, policy);
        let state = *self.lock();
        HealthView {
            success_rate: state.success,
            open_latency: state
                .latency_ms
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            consecutive_failures: state.streak,
            cooling_left: state
                .cooled_until
                .and_then(|until| until.checked_duration_since(now))
                .filter(|left| !left.is_zero()),
            probation: state.probation,
            coolings_total: state.coolings_total,
            failures_total: state.failures_total,
            waiting: state.waiting,
            suspect,
            slow: state.slow_until.is_some_and(|until| until > now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn failures_in_a_row_cool_with_a_doubling_period_and_probation() {
        let policy = HealthPolicy::default();
        let health = Health::default();
        let now = Instant::now();
        assert_eq!(health.record(Outcome::ExitFailed, &policy, now, None), None);
        assert_eq!(health.record(Outcome::ExitFailed, &policy, now, None), None);
        assert_eq!(
            health.record(Outcome::ExitFailed, &policy, now, None),
            Some(Duration::from_secs(5))
        );
        assert!(health.is_cooled(now));
        let later = now + Duration::from_secs(6);
        assert!(!health.is_cooled(later));
        // On probation: one failure cools again, for twice as long.
        assert_eq!(
            health.record(Outcome::ExitFailed, &policy, later, None),
            Some(Duration::from_secs(10))
        );
        let much_later = later + Duration::from_secs(11);
        // A success clears probation and the back-off level.
        assert_eq!(
            health.record(Outcome::Opened(MS), &policy, much_later, None),
            None
        );
        assert!(!health.view(much_later, &policy).probation);
        for _ in 0..2 {
            assert_eq!(
                health.record(Outcome::ExitFailed, &policy, much_later, None),
                None
            );
        }
        assert_eq!(
            health.record(Outcome::ExitFailed, &policy, much_later, None),
            Some(Duration::from_secs(5))
        );
        assert_eq!(health.view(much_later, &policy).coolings_total, 3);
    }

    #[test]
    fn an_exit_sitting_on_opens_is_suspect_until_it_answers() {
        let policy = HealthPolicy::default();
        let health = Arc::new(Health::default());
        let start = Instant::now();
        let first = health.open_started(start);
        let _second = health.open_started(start);
        assert!(!health.is_suspect(start, &policy));
        let later = start + policy.suspect_after;
        assert!(health.is_suspect(later, &policy));
        assert!(health.cost(0, &policy, later) > Health::default().cost(50, &policy, later));
        // One answer is progress; the other wait counts from then.
        drop(first);
        assert!(!health.is_suspect(Instant::now(), &policy));
    }

    #[test]
    fn the_period_is_capped() {
        let policy = HealthPolicy {
            cool_after: 1,
            ..HealthPolicy::default()
        };
        let health = Health::default();
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..30 {
            if let Some(period) = health.record(Outcome::ExitFailed, &policy, now, None) {
                last = period;
                now += period + MS;
            }
        }
        assert_eq!(last, policy.max_cooling);
    }

    #[test]
    fn target_failures_do_not_count_against_the_exit() {
        let policy = HealthPolicy::default();
        let health = Health::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(health.record(Outcome::Answered, &policy, now, None), None);
        }
        let view = health.view(now, &policy);
        assert_eq!(view.success_rate, 1.0);
        assert_eq!(view.open_latency, None);
        assert_eq!(view.consecutive_failures, 0);
    }

    #[test]
    fn the_typical_latency_is_a_median_the_slow_tenth_does_not_move() {
        let typical = TypicalLatency::default();
        assert_eq!(typical.get(), None);
        for n in 0..2_000 {
            let ms = if n % 10 == 0 { 300 } else { 4 + n % 3 };
            typical.record(Duration::from_millis(ms));
        }
        let estimate = typical.get().unwrap();
        assert!(
            (Duration::from_millis(4)..Duration::from_millis(7)).contains(&estimate),
            "{estimate:?}"
        );
    }

    #[test]
    fn an_exit_far_slower_than_typical_twice_in_a_row_is_slow_for_a_while() {
        let policy = HealthPolicy::default();
        let now = Instant::now();
        let typical = Some(Duration::from_millis(5));
        let opened = |health: &Health, ms: u64| {
            health.record(
                Outcome::Opened(Duration::from_millis(ms)),
                &policy,
                now,
                typical,
            )
        };
        let slow = Health::default();
        opened(&slow, 300);
        assert!(!slow.is_slow(now), "one slow open is a hiccup");
        opened(&slow, 300);
        assert!(slow.is_slow(now) && slow.view(now, &policy).slow);
        let fast = Health::default();
        opened(&fast, 300);
        opened(&fast, 6);
        opened(&fast, 300);
        assert!(!fast.is_slow(now), "not in a row");
        // Slow costs more than a busy fast exit, less than a suspect one.
        assert!(slow.cost(0, &policy, now) > fast.cost(30, &policy, now));
        let sitting = Arc::new(Health::default());
        let _wait = sitting.open_started(now);
        let later = now + policy.suspect_after;
        assert!(slow.cost(0, &policy, later) < sitting.cost(0, &policy, later));
        // 90 ms over a 5 ms pool is within the margin: not slow.
        let near = Health::default();
        opened(&near, 95);
        opened(&near, 95);
        assert!(!near.is_slow(now));
        // The mark lapses; the next slow open renews it, a fast one clears it.
        let lapsed = now + policy.slow_memory;
        assert!(!slow.is_slow(lapsed));
        slow.record(
            Outcome::Opened(Duration::from_millis(300)),
            &policy,
            lapsed,
            typical,
        );
        assert!(slow.is_slow(lapsed));
        opened(&slow, 1);
        assert!(!slow.is_slow(now));
        // Nothing is slow before the pool has a typical latency.
        let early = Health::default();
        for _ in 0..3 {
            early.record(Outcome::Opened(Duration::from_secs(1)), &policy, now, None);
        }
        assert!(!early.is_slow(now));
    }

    #[test]
    fn cost_weighs_load_latency_and_success() {
        let policy = HealthPolicy::default();
        let now = Instant::now();
        let fast = Health::default();
        fast.record(Outcome::Opened(MS), &policy, now, None);
        let slow = Health::default();
        slow.record(Outcome::Opened(Duration::from_secs(1)), &policy, now, None);
        let failing = Health::default();
        failing.record(Outcome::Opened(MS), &policy, now, None);
        failing.record(Outcome::ExitFailed, &policy, now, None);
        failing.record(Outcome::ExitFailed, &policy, now, None);
        assert!(fast.cost(0, &policy, now) < slow.cost(0, &policy, now));
        assert!(fast.cost(0, &policy, now) < failing.cost(0, &policy, now));
        assert!(fast.cost(0, &policy, now) < fast.cost(1, &policy, now));
        // A slow exit still wins against a much busier fast one.
        assert!(slow.cost(0, &policy, now) < fast.cost(30, &policy, now));
        let off = HealthPolicy {
            enabled: false,
            ..policy
        };
        assert_eq!(slow.cost(2, &off, now), fast.cost(2, &off, now));
    }
}
