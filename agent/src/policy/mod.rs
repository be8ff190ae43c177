//! Exit policy: which destinations this agent will dial for a customer.
//!
//! The agent runs on a volunteer's home device, so the one thing it must never do
//! is let a customer reach the volunteer's own network (the router, the NAS, the
//! cloud metadata service of a VPS, ...). The flow for every `Open{host, port}` is:
//!
//! 1. [`exitpool_protocol::host::parse_host`] (the grammar the gateway checked
//!    against too) turns the customer's text into an IP literal or a DNS name,
//!    strictly: numeric spellings such as `0177.0.0.1`, `127.1` or `0x7f000001`
//!    are errors, never names that a resolver might turn into an address.
//! 2. [`ExitPolicy::check_port`] refuses SMTP and anything outside an allow list.
//! 3. The agent resolves the name itself and runs [`ExitPolicy::check_ip`] on
//!    EVERY resolved address (a name that resolves to one public and one private
//!    address is a rebinding attempt, not a reason to pick the good one blindly).
//! 4. The agent dials exactly the address it checked, never the name again, so a
//!    second DNS answer cannot swap in a different destination.
//!
//! The policy is split by concern, none of it doing I/O or reading a clock:
//! this file holds [`ExitPolicy`] and its verdicts; `ranges` the special-purpose
//! address tables and the own-network rule; `ports` port ranges and the ports
//! refused by default.

mod ports;
mod ranges;

pub use ports::{PortRange, PortRangeError, DEFAULT_DENIED_PORTS};
pub use ranges::{special_purpose_range, OWN_IPV6_PREFIX_LEN};

use ranges::{canonical, own_network, own_v4_network};
use std::net::{IpAddr, SocketAddr};

/// Why a destination was refused. Each variant maps to RFC 9209
/// `destination_ip_prohibited` (address) or a port refusal at the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The address lies in a special-purpose range or the volunteer's own network.
    #[error("destination {ip} is refused by the exit policy: {range}")]
    AddressProhibited {
        /// The address as checked (IPv4-mapped IPv6 already turned into IPv4).
        ip: IpAddr,
        /// The refused range, e.g. `"127.0.0.0/8 loopback"`.
        range: &'static str,
    },
    /// The port is on the deny list or missing from the allow list.
    #[error("destination port {port} is refused by the exit policy")]
    PortProhibited {
        /// The refused port.
        port: u16,
    },
}

/// What the agent may dial. Build it once at start-up; the tunnel adds the
/// own addresses at every connection and every interface refresh. Checking is
/// cheap and allocation free, so it can run for every resolved address of
/// every stream.
#[derive(Debug, Clone)]
pub struct ExitPolicy {
    /// Test-only switch: when true no address rule applies (ports still do).
    allow_private: bool,
    /// Ports always refused, even when the allow list names them.
    denied_ports: Vec<PortRange>,
    /// When set, only these ports may be dialled. `None` means any port.
    allowed_ports: Option<Vec<PortRange>>,
    /// The agent's own addresses (public and interface), canonical (mapped
    /// IPv6 turned into IPv4).
    own_addresses: Vec<IpAddr>,
    /// The on-link IPv4 networks of its interfaces (network address, prefix
    /// length), beyond the addresses themselves.
    own_v4_networks: Vec<(u32, u8)>,
    /// The network's own NAT64 prefixes (RFC 7050 discovery), as (network,
    /// length).
    nat64_prefixes: Vec<(u128, u8)>,
    /// The gateways this agent is connected to: a customer must not make the
    /// agent connect to them (a loop through the pool, or a stranger's
    /// handshakes arriving from an address the gateway trusts as an agent's).
    gateway_addresses: Vec<IpAddr>,
}

impl Default for ExitPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl ExitPolicy {
    /// The strict policy every real agent runs: every special-purpose range is
    /// refused (see [`special_purpose_range`]) and so are the ports in
    /// [`DEFAULT_DENIED_PORTS`].
    pub fn new() -> Self {
        Self {
            allow_private: false,
            denied_ports: DEFAULT_DENIED_PORTS.to_vec(),
            allowed_ports: None,
            own_addresses: Vec::new(),
            own_v4_networks: Vec::new(),
            nat64_prefixes: Vec::new(),
            gateway_addresses: Vec::new(),
        }
    }

    /// The `--allow-private` switch, for tests on 127.0.0.0/8 only. When `allow`
    /// is true, NO address rule applies (special-purpose ranges and own
    /// addresses alike); port rules still do. Never enable it on a volunteer's
    /// device: it opens their whole network to customers.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// Whether the test-only `--allow-private` switch is on, so the agent can
    /// warn loudly at start-up.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Replaces the default deny list ([`DEFAULT_DENIED_PORTS`]). Pass an empty
    /// list to deny no port. The deny list wins over the allow list.
    pub fn with_denied_ports(mut self, ports: impl IntoIterator<Item = PortRange>) -> Self {
        self.denied_ports = ports.into_iter().collect();
        self
    }

    /// Restricts dialling to these ports (e.g. only 80 and 443). The deny list
    /// still applies on top. An empty list allows no port at all.
    pub fn with_allowed_ports(mut self, ports: impl IntoIterator<Item = PortRange>) -> Self {
        self.allowed_ports = Some(ports.into_iter().collect());
        self
    }

    /// Refuses one of the agent's own addresses as a target: the public
    /// address the gateway observed (`Welcome{observed address}`; dialling it
    /// would reach the volunteer's router through hairpin NAT) or an address
    /// of one of the device's interfaces. An IPv4 address is refused exactly;
    /// for IPv6 the whole [`OWN_IPV6_PREFIX_LEN`] prefix around it, because
    /// every device at home has a global address in that prefix.
    ///
    /// May be called more than once; every address given is refused. An
    /// IPv4-mapped IPv6 address is stored as its IPv4 address. Has no effect
    /// while [`allow_private`](Self::allow_private) is on.
    pub fn with_own_address(mut self, ip: IpAddr) -> Self {
        let ip = canonical(ip);
        if !self.own_addresses.contains(&ip) {
            self.own_addresses.push(ip);
        }
        self
    }

    /// [`with_own_address`](Self::with_own_address) for each of `ips`: the
    /// agent passes the observed public address and every address of its
    /// interfaces this way.
    pub fn with_own_addresses(self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        ips.into_iter().fold(self, Self::with_own_address)
    }

    /// Refuses an interface's address and its whole on-link network
    /// (`prefix_len` from the interface): a device on a public IPv4 subnet
    /// reaches its neighbours directly, past any router. An IPv6 address keeps
    /// the wider [`OWN_IPV6_PREFIX_LEN`] rule.
    pub fn with_own_network(mut self, ip: IpAddr, prefix_len: u8) -> Self {
        let ip = canonical(ip);
        if let IpAddr::V4(v4) = ip {
            let len = prefix_len.min(32);
            // A /0 or /1 "subnet" is a misread, not a network to refuse whole.
            if (8..32).contains(&len) {
                let mask = u32::MAX << (32 - u32::from(len));
                let network = (u32::from(v4) & mask, len);
                if !self.own_v4_networks.contains(&network) {
                    self.own_v4_networks.push(network);
                }
            }
        }
        self.with_own_address(ip)
    }

    /// Refuses the network's own NAT64 prefix (`prefix/length`, found by
    /// [`crate::nat64`]), beside the well-known ones every policy refuses.
    pub fn with_nat64_prefix(mut self, prefix: std::net::Ipv6Addr, length: u8) -> Self {
        let length = length.min(128);
        let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
        let network = (u128::from(prefix) & mask, length);
        if length > 0 && !self.nat64_prefixes.contains(&network) {
            self.nat64_prefixes.push(network);
        }
        self
    }

    /// Refuses a gateway's address, every port: the agent never dials the
    /// gateways it is connected to.
    pub fn with_gateway_address(mut self, ip: IpAddr) -> Self {
        let ip = canonical(ip);
        if !self.gateway_addresses.contains(&ip) {
            self.gateway_addresses.push(ip);
        }
        self
    }

    /// The NAT64 prefixes refused beyond the well-known ones.
    pub fn nat64_prefixes(&self) -> impl Iterator<Item = (std::net::Ipv6Addr, u8)> + '_ {
        self.nat64_prefixes
            .iter()
            .map(|&(network, length)| (network.into(), length))
    }

    /// The gateways' addresses refused.
    pub fn gateway_addresses(&self) -> &[IpAddr] {
        &self.gateway_addresses
    }

    /// The own addresses refused so far (each IPv6 one with its prefix).
    pub fn own_addresses(&self) -> &[IpAddr] {
        &self.own_addresses
    }

    /// The on-link IPv4 networks refused so far, as (address, prefix length).
    pub fn own_v4_networks(&self) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        self.own_v4_networks
            .iter()
            .map(|&(net, len)| (IpAddr::V4(net.into()), len))
    }

    /// Checks a destination port. Port 0 is always refused: it cannot be dialled.
    pub fn check_port(&self, port: u16) -> Result<(), PolicyError> {
        let denied = port == 0 || self.denied_ports.iter().any(|r| r.contains(port));
        let allowed = match &self.allowed_ports {
            None => true,
            Some(list) => list.iter().any(|r| r.contains(port)),
        };
        if denied || !allowed {
            return Err(PolicyError::PortProhibited { port });
        }
        Ok(())
    }

    /// Checks one destination address. Call it for EVERY address DNS returned
    /// and dial only an address that passed. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is checked as the IPv4 address it reaches, and the
    /// error reports that canonical form; dialling either form reaches the same
    /// host.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), PolicyError> {
        if self.allow_private {
            return Ok(());
        }
        let ip = canonical(ip);
        if self.gateway_addresses.contains(&ip) {
            return Err(PolicyError::AddressProhibited {
                ip,
                range: "a gateway this agent is connected to",
            });
        }
        if let Some(range) = special_purpose_range(ip) {
            return Err(PolicyError::AddressProhibited { ip, range });
        }
        if let Some(range) = own_network(&self.own_addresses, ip) {
            return Err(PolicyError::AddressProhibited { ip, range });
        }
        if let Some(range) = own_v4_network(&self.own_v4_networks, ip) {
            return Err(PolicyError::AddressProhibited { ip, range });
        }
        if let IpAddr::V6(v6) = ip {
            let bits = u128::from(v6);
            let inside = |&(network, length): &(u128, u8)| {
                bits & (u128::MAX << (128 - u32::from(length))) == network
            };
            if self.nat64_prefixes.iter().any(inside) {
                return Err(PolicyError::AddressProhibited {
                    ip,
                    range: "the network's NAT64 prefix (RFC 7050)",
                });
            }
        }
        Ok(())
    }

    /// Checks the address and then the port of a socket address about to be
    /// dialled.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), PolicyError> {
        self.check_ip(addr.ip())?;
        self.check_port(addr.port())
    }
}

#[cfg(test)]
mod tests;
