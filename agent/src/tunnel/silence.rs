//! A QUIC tunnel that has gone quiet: its own keep-alives are acknowledged, so
//! a working path always brings something back within a keep-alive interval.
//! Two silent intervals in a row mean UDP is degraded here (under `auto` the
//! agent falls back to TLS/TCP) or the gateway died without a close.
//!
//! The count is the transport's ([`TunnelConnection::packets_received`]).

use exitpool_transport::{Tunnel, TunnelConnection};

/// Counts keep-alive intervals in which a tunnel received nothing.
pub(super) struct Silence {
    received: u64,
    silent_intervals: u32,
}

impl Silence {
    pub(super) fn new(connection: &Tunnel) -> Silence {
        Silence {
            received: connection.packets_received(),
            silent_intervals: 0,
        }
    }

    /// Called once per keep-alive interval: whether this is the second
    /// silent interval in a row.
    pub(super) fn degraded(&mut self, connection: &Tunnel) -> bool {
        let received = connection.packets_received();
        if received == self.received {
            self.silent_intervals += 1;
        } else {
            self.silent_intervals = 0;
            self.received = received;
        }
        self.silent_intervals >= 2
    }
}
