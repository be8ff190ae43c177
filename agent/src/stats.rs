//! What an agent has done and where it is: [`AgentStats`] for the app and the
//! owner, [`SessionInfo`] from the gateway's `Welcome`, and the live counters
//! behind them, with [`ActiveStream`], the guard that keeps the live-stream
//! count right.

use exitpool_protocol::FailureCode;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tokio::sync::Notify;

/// What the gateway told the agent when it joined.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// The agent's address as the gateway sees it.
    pub observed_addr: SocketAddr,
    /// The country the gateway placed it in.
    pub country: Option<String>,
    /// The id customers see for this exit.
    pub exit_id: String,
    /// The tunnel's transport: `quic` or `tcp`.
    pub transport: String,
}

/// Live counters the tunnel bumps and [`AgentStats`] reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub streams_served: AtomicU64,
    pub active_streams: AtomicU32,
    pub connects: AtomicU64,
    /// Destinations refused for their address, since start.
    pub refused_address: AtomicU64,
    /// Destinations refused for their port, since start.
    pub refused_port: AtomicU64,
    /// Handshakes refused for a certificate that did not match a pin this
    /// agent had connected with before, since start.
    pub pin_mismatches: AtomicU64,
    /// Woken at each refusal, so the summary task sleeps while there are none.
    pub refusal_seen: Notify,
}

impl Counters {
    /// Counts `code` if it is a policy refusal; returns whether it was one.
    pub(crate) fn count_refusal(&self, code: FailureCode) -> bool {
        let counter = match code {
            FailureCode::DestinationIpProhibited => &self.refused_address,
            FailureCode::DestinationPortProhibited => &self.refused_port,
            _ => return false,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.refusal_seen.notify_one();
        true
    }

    /// Refusals since start: (by address, by port).
    pub(crate) fn refusals(&self) -> (u64, u64) {
        (
            self.refused_address.load(Ordering::Relaxed),
            self.refused_port.load(Ordering::Relaxed),
        )
    }
}

/// What an agent has done, for the app or the owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentStats {
    /// The agent's id (kept on the device).
    pub agent_id: String,
    /// The current tunnel, if connected.
    pub session: Option<SessionInfo>,
    /// Whether sharing is paused.
    pub paused: bool,
    /// Relay streams served since start.
    pub streams_served: u64,
    /// Relay streams open now.
    pub active_streams: u32,
    /// Bytes sent to targets.
    pub bytes_up: u64,
    /// Bytes received from targets.
    pub bytes_down: u64,
    /// Successful tunnel connections since start (1 + reconnects).
    pub connects: u64,
    /// The device's own addresses the policy refuses now (the observed public
    /// one and every interface address; IPv6 ones with their /48).
    pub own_addresses: Vec<IpAddr>,
    /// The network's own NAT64 prefixes found by RFC 7050 discovery
    /// (`prefix/length`), refused like the well-known ones.
    pub nat64_prefixes: Vec<String>,
    /// The gateway the agent is connected to, whose address it refuses to dial.
    pub gateway_addresses: Vec<IpAddr>,
    /// Destinations refused by the exit policy since start (address or port).
    pub refused_by_policy: u64,
    /// Gateway certificates that did not match the pin this agent has
    /// connected with before (each retried later), since start.
    pub pin_mismatches: u64,
    /// The quota period now (`2026-11-23` or `2026-11`).
    pub period: String,
    /// Bytes relayed (up + down) in this period.
    pub period_bytes: u64,
    /// The quota per period, if any.
    pub quota_bytes: Option<u64>,
    /// Whether the quota is used up (sharing stops until the next period).
    pub quota_exhausted: bool,
    /// The bandwidth cap per direction in force now, bytes per second, if
    /// any: the owner's, or the schedule window's where that is lower.
    pub max_rate: Option<u32>,
    /// Whether the owner paused sharing ([`crate::AgentHandle::pause`]);
    /// `paused` also holds while the schedule pauses it.
    pub paused_by_owner: bool,
    /// The schedule in force and what is left of its monthly cap, if the
    /// agent has a schedule.
    pub schedule: Option<crate::schedule::ScheduleStatus>,
    /// Whether this agent waits for the owner's consent before it connects
    /// (every agent started through the SDK does).
    pub consent_required: bool,
    /// The owner's consent as recorded in the state directory, if any.
    pub consent: Option<crate::consent::Consent>,
    /// Why the agent stopped (`shut down`, `consent revoked`, or the fatal
    /// error), once it has; `None` while it runs.
    pub stopped: Option<String>,
    /// The host report: what was shared per UTC day, oldest first, the last
    /// [`crate::report::REPORT_DAYS`] days.
    pub report: Vec<crate::report::ReportDay>,
}

/// Counts one relay stream as live for as long as it is held: the count goes up
/// when it is taken and down when it is dropped, on every path out of the
/// stream's task, a panic included. The gateway routes on this count (`Load`),
/// so a leaked increment would keep an agent looking busier than it is.
#[derive(Debug)]
pub(crate) struct ActiveStream<'a> {
    active: &'a AtomicU32,
}

impl<'a> ActiveStream<'a> {
    /// Counts a stream in `counters` as live (and as served).
    pub(crate) fn start(counters: &'a Counters) -> Self {
        counters.active_streams.fetch_add(1, Ordering::Relaxed);
        counters.streams_served.fetch_add(1, Ordering::Relaxed);
        ActiveStream {
            active: &counters.active_streams,
        }
    }
}

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_count_falls_back_even_when_a_stream_panics() {
        let counters = Counters::default();
        let first = ActiveStream::start(&counters);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _second = ActiveStream::start(&counters);
            assert_eq!(counters.active_streams.load(Ordering::Relaxed), 2);
            panic!("a bug between increment and decrement");
        }));
        assert!(result.is_err());
        assert_eq!(counters.active_streams.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(counters.active_streams.load(Ordering::Relaxed), 0);
        assert_eq!(counters.streams_served.load(Ordering::Relaxed), 2);
    }
}
