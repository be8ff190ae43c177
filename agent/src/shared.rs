//! The state an agent's tasks (tunnel, streams, status, summaries) and its
//! handle share, behind one `Arc`: the configuration, the pause switch, the
//! current session, the exit policy in force, the counters and the meter.

use crate::config::AgentConfig;
use crate::meter::Meter;
use crate::policy::ExitPolicy;
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
}

impl Shared {
    /// Whether new streams are taken: not paused and not over quota.
    pub fn accepting(&self) -> bool {
        !*self.paused.borrow() && !self.meter.is_exhausted()
    }

    pub fn stats(&self) -> AgentStats {
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
        }
    }
}
