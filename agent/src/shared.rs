//! The state an agent's tasks (tunnel, streams, status, summaries) and its
//! handle share, behind one `Arc`: the configuration, the pause switch, the
//! current session, the exit policy in force, the counters and the meter, the
//! owner's consent, why the agent stopped, and the host report.

use crate::config::AgentConfig;
use crate::consent::Consent;
use crate::meter::Meter;
use crate::policy::ExitPolicy;
use crate::report::Report;
use crate::stats::{AgentStats, Counters, SessionInfo};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Why sharing is paused; `Shared::paused` holds while any reason does, so
/// the owner's pause and the schedule's never undo each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PauseReason {
    /// [`crate::AgentHandle::pause`].
    User = 1,
    /// The schedule: outside its windows, or the monthly cap spent.
    Schedule = 2,
}

/// State the agent's tasks and its handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: AgentConfig,
    /// Derived from `device_key`; kept for stats and logs.
    pub agent_id: String,
    /// Proves `agent_id` to the gateway at every connection.
    pub device_key: exitpool_protocol::DeviceKey,
    /// What the tunnel sees: whether any [`PauseReason`] holds. Set it with
    /// [`Shared::set_paused`].
    pub paused: watch::Sender<bool>,
    /// The [`PauseReason`]s that hold, as bits.
    pub pause_reasons: AtomicU8,
    /// The schedule's status and monthly-cap ledger (see `schedule`).
    pub schedule: crate::schedule::ScheduleState,
    pub session: watch::Sender<Option<SessionInfo>>,
    /// The configured policy plus the own addresses as last read; each new
    /// stream takes the one in force when it starts.
    pub policy: watch::Sender<Arc<ExitPolicy>>,
    pub counters: Counters,
    pub meter: Meter,
    /// The owner's consent as recorded (see `consent`); the handle updates it.
    pub consent: watch::Sender<Option<Consent>>,
    /// Whether the tunnel waits for consent before it connects.
    pub require_consent: bool,
    /// Why the agent stopped, once it has (see [`AgentStats::stopped`]).
    pub stopped: watch::Sender<Option<String>>,
    /// What was shared per day (see `report`).
    pub report: Report,
}

impl Shared {
    /// Sets or clears one reason to pause, and `paused` to whether any holds.
    pub fn set_paused(&self, reason: PauseReason, on: bool) {
        let bit = reason as u8;
        if on {
            self.pause_reasons.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.pause_reasons.fetch_and(!bit, Ordering::SeqCst);
        }
        // Read under the watch's lock, so of two racing setters the last
        // one to take it publishes both reasons.
        self.paused.send_if_modified(|paused| {
            let any = self.pause_reasons.load(Ordering::SeqCst) != 0;
            let changed = *paused != any;
            *paused = any;
            changed
        });
    }

    /// Whether new streams are taken: not paused and not over quota.
    pub fn accepting(&self) -> bool {
        !*self.paused.borrow() && !self.meter.is_exhausted()
    }

    /// Folds the counters into the host report's day (cheap; see `report`).
    pub fn fold_report(&self) {
        self.report.fold(
            std::time::SystemTime::now(),
            self.meter.bytes_up.load(Ordering::Relaxed)
                + self.meter.bytes_down.load(Ordering::Relaxed),
            self.counters.streams_served.load(Ordering::Relaxed),
            self.session.borrow().is_some(),
        );
    }

    pub fn stats(&self) -> AgentStats {
        self.fold_report();
        let counters = &self.counters;
        let limits = self.meter.limits();
        AgentStats {
            agent_id: self.agent_id.clone(),
            session: self.session.borrow().clone(),
            paused: *self.paused.borrow(),
            streams_served: counters.streams_served.load(Ordering::Relaxed),
            active_streams: counters.active_streams.load(Ordering::Relaxed),
            bytes_up: self.meter.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.meter.bytes_down.load(Ordering::Relaxed),
            connects: counters.connects.load(Ordering::Relaxed),
            own_addresses: self.policy.borrow().own_addresses().to_vec(),
            nat64_prefixes: (self.policy.borrow().nat64_prefixes())
                .map(|(prefix, length)| format!("{prefix}/{length}"))
                .collect(),
            gateway_addresses: self.policy.borrow().gateway_addresses().to_vec(),
            pin_mismatches: counters.pin_mismatches.load(Ordering::Relaxed),
            refused_by_policy: {
                let (address, port) = counters.refusals();
                address + port
            },
            period: self.meter.period_key(),
            period_bytes: self.meter.period_bytes(),
            quota_bytes: limits.quota_bytes,
            quota_exhausted: self.meter.is_exhausted(),
            max_rate: self.meter.max_rate().map(|rate| rate.get()),
            paused_by_owner: self.pause_reasons.load(Ordering::SeqCst) & PauseReason::User as u8
                != 0,
            schedule: self.schedule.status.borrow().clone(),
            consent_required: self.require_consent,
            consent: self.consent.borrow().clone(),
            stopped: self.stopped.borrow().clone(),
            report: self.report.days(),
        }
    }
}
