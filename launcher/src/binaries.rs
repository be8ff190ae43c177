//! What the exitpool binaries print when they are ready, so tests and the load
//! test wait on the same events and read the gateway's addresses one way.

use std::net::SocketAddr;

/// The start of the line the `gateway` binary prints on stdout once it serves:
/// `gateway: customers on A, agents on B (UDP), pin P`.
pub const GATEWAY_READY: &str = "gateway: customers on";

/// A log line of the `agent` binary (at `RUST_LOG=info`) once the gateway has
/// welcomed it.
pub const AGENT_CONNECTED: &str = "connected to the gateway";

/// `gateway` flags putting its customer, tunnel and admin ports on loopback,
/// each on a port the system picks (read them back from [`GatewayBanner`]).
pub const GATEWAY_ON_LOOPBACK: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--tunnel",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
];

/// The addresses and pin from the gateway's ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayBanner {
    /// The customer port (HTTP proxy and SOCKS5).
    pub listen: SocketAddr,
    /// The agents' QUIC port.
    pub tunnel: SocketAddr,
    /// `sha256:<64 hex>`.
    pub pin: String,
}

impl GatewayBanner {
    /// Reads a [`GATEWAY_READY`] line; `None` for any other line.
    pub fn parse(line: &str) -> Option<GatewayBanner> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["gateway:", "customers", "on", listen, "agents", "on", tunnel, "(UDP),", "pin", pin] => {
                Some(GatewayBanner {
                    listen: listen.trim_end_matches(',').parse().ok()?,
                    tunnel: tunnel.parse().ok()?,
                    pin: (*pin).to_owned(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateway_banner() {
        let line =
            "gateway: customers on 127.0.0.1:8080, agents on 0.0.0.0:4433 (UDP), pin sha256:ab";
        let banner = GatewayBanner::parse(line).unwrap();
        assert_eq!(banner.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(banner.tunnel, "0.0.0.0:4433".parse().unwrap());
        assert_eq!(banner.pin, "sha256:ab");
        assert_eq!(
            GatewayBanner::parse("gateway: stats on http://x/stats"),
            None
        );
    }
}
