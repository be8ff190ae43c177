//! The run in progress ([`Run`]) and the growth windows it keeps
//! ([`Window`]), which the faults, the schedule and the verdict share.

use super::customers::Customers;
use super::rig::Rig;
use super::sampling::{Reading, Sampler};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One process's growth window: its quiet-point readings at both ends (the
/// memory samples between them are in the sampler's).
pub struct Window {
    pub label: String,
    pub start: Reading,
    pub end: Reading,
}

/// `bench`'s usage (up, down) before and after a gateway restart.
pub type UsageKept = ((u64, u64), (u64, u64));

/// The run in progress: the rig, the customers, and the schedule's state.
pub struct Run<'a> {
    pub(super) rig: &'a mut Rig,
    pub(super) customers: Arc<Customers>,
    pub(super) sampler: Sampler,
    pub(super) t0: Instant,
    pub(super) duration: Duration,
    pub(super) warmup: Duration,
    pub(super) churned: usize,
    pub(super) next_churn: Duration,
    pub(super) usage_kept: Vec<UsageKept>,
    /// Growth windows opened (label, starting reading) and closed.
    pub(super) open: Vec<(String, Reading)>,
    pub(super) windows: Vec<Window>,
    /// Restarted processes waiting for their own warm-up (when, process, label).
    pub(super) rewarm: Vec<(Duration, String, String)>,
}
