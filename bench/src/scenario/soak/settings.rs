//! What the soak is made of: its sizes, bounds and names, shared by every
//! room of the scenario (a leaf: it imports none of them).

use crate::measure::MIB;
use std::time::Duration;

pub(super) const SCENARIO: &str = "soak";
/// Most a process's memory, descriptors or threads may grow over its window,
/// in percent.
pub(super) const GROWTH_LIMIT: f64 = 5.0;
/// Agent processes that run from start to end (measured).
pub(super) const STABLE_AGENTS: usize = 4;
/// Agent processes that join and leave.
pub(super) const CHURN_SLOTS: usize = 4;
/// How often one churn slot changes (joins or leaves).
pub(super) const CHURN_EVERY: Duration = Duration::from_secs(3);
/// Every this many leaves is a SIGKILL rather than a SIGTERM.
pub(super) const KILL_EVERY: usize = 3;
/// Accounted customer loops per protocol.
pub(super) const LOOPS_PER_PROTOCOL: usize = 2;
/// Customer loops of the `cut` customer.
pub(super) const CUT_LOOPS: usize = 2;
/// The customer whose transfers faults cut.
pub(super) const CUT_USER: &str = "cut";
pub(super) const CUT_PASSWORD: &str = "cutpass";
/// Each cut-customer transfer.
pub(super) const CUT_DOWNLOAD: u64 = 4 * MIB;
/// Largest accounted exchange, each way.
pub(super) const MAX_EXCHANGE: u64 = 64 * 1024;
/// Longest one customer request may take: a SIGKILLed QUIC agent is only
/// found out when an open sent to it times out, then the open is retried.
pub(super) const REQUEST_BOUND: Duration = Duration::from_secs(45);
/// Longest the quiet points and faults wait for what they wait on.
pub(super) const SETTLE_BOUND: Duration = Duration::from_secs(90);
/// The Redis server's name in the readings.
pub(super) const REDIS: &str = "redis-server";
/// What a gateway's state directory shares with its fleet (as in `fleet`).
pub(super) const SHARED_STATE: [&str; 3] = ["gateway-cert.der", "gateway-key.der", "exit-id.key"];
