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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

/// State the agent's tasks and its handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: AgentConfig,
    /// Derived from `device_key`; kept for stats and logs.
    pub agent_id: String,
    /// Proves `agent_id` to the gateway at every connection.
    pub device_key: exitpool_protocol::DeviceKey,
    pub paused: watch::Sender<bool>,
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
            pin_mismatches: counters.pin_mismatches.load(Ordering::Relaxed),
            refused_by_policy: {
                let (address, port) = counters.refusals();
                address + port
            },
            period: self.meter.period_key(),
            period_bytes: self.meter.period_bytes(),
            quota_bytes: limits.quota_bytes,
            quota_exhausted: self.meter.is_exhausted(),
            max_rate: limits.max_rate.map(|rate| rate.get()),
            consent_required: self.require_consent,
            consent: self.consent.borrow().clone(),
            stopped: self.stopped.borrow().clone(),
            report: self.report.days(),
        }
    }
}
