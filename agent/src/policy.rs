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
//! This file has no I/O and no clock; it depends only on `std` and `thiserror`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Ports refused by [`ExitPolicy::new`]: SMTP (25), SMTPS (465) and mail
/// submission (587). Residential exits that relay mail get their owners'
/// addresses onto spam block lists, so mail is off unless the operator says so.
pub const DEFAULT_DENIED_PORTS: [PortRange; 3] = [
    PortRange::single(25),
    PortRange::single(465),
    PortRange::single(587),
];

/// Prefix length refused around an own IPv6 address. A home gets a whole
/// prefix (/64 to /48) and every device in it has a global address that the
/// agent can reach from the inside, so refusing only the one observed address
/// would leave the rest of the house open. /48 is the largest common delegation
/// to one site, so it covers the owner's network and at most a few neighbours.
pub const OWN_IPV6_PREFIX_LEN: u8 = 48;

/// Range name reported when the target is the agent's own public IPv4 address.
const OWN_V4_NAME: &str = "own public address (the volunteer's network)";
/// Range name reported when the target shares the agent's own IPv6 /48.
const OWN_V6_NAME: &str = "own /48 prefix (the volunteer's network)";
/// Range name for IPv6 addresses outside global unicast that no table names.
const OUTSIDE_GLOBAL_UNICAST: &str = "outside 2000::/3 global unicast";

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

/// An inclusive range of TCP ports, `first..=last`. A single port has
/// `first == last`. A range built by hand with `first > last` matches nothing;
/// [`FromStr`] refuses such input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port in the range.
    pub first: u16,
    /// Highest port in the range, inclusive.
    pub last: u16,
}

impl PortRange {
    /// The range holding just `port`.
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// Whether `port` lies in `first..=last`.
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a port range (a command-line value such as `8000-8100`) did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// Nothing was given on one side (e.g. `""`, `"-80"`, `"80-"`).
    #[error("empty port: expected a port such as 25 or a range such as 8000-8100")]
    Empty,
    /// A side holds something other than decimal digits.
    #[error("{text:?} is not a port number: expected digits 0-65535, e.g. 25 or 8000-8100")]
    NotANumber {
        /// The offending side, as written.
        text: String,
    },
    /// A side is a number above 65535.
    #[error("port {text} is out of range: ports go from 0 to 65535")]
    OutOfRange {
        /// The offending side, as written.
        text: String,
    },
    /// The range runs backwards.
    #[error("port range {first}-{last} runs backwards: write the lower port first")]
    Reversed {
        /// Left side as parsed.
        first: u16,
        /// Right side as parsed.
        last: u16,
    },
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// Parses `"25"` or `"8000-8100"`. Whitespace around the whole value and
    /// around the `-` is ignored; signs, hex and anything else are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.split_once('-') {
            None => parse_port(s).map(Self::single),
            Some((first, last)) => {
                let first = parse_port(first.trim())?;
                let last = parse_port(last.trim())?;
                if first > last {
                    return Err(PortRangeError::Reversed { first, last });
                }
                Ok(Self { first, last })
            }
        }
    }
}

/// One side of a port range: decimal digits only (no `+`, which `u16::from_str`
/// would accept), at most 65535.
fn parse_port(text: &str) -> Result<u16, PortRangeError> {
    if text.is_empty() {
        return Err(PortRangeError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortRangeError::NotANumber {
            text: text.to_owned(),
        });
    }
    text.parse().map_err(|_| PortRangeError::OutOfRange {
        text: text.to_owned(),
    })
}

/// What the agent may dial. Build it once at start-up (and again when the
/// gateway reports a new observed address); checking is cheap and allocation
/// free, so it can run for every resolved address of every stream.
#[derive(Debug, Clone)]
pub struct ExitPolicy {
    /// Test-only switch: when true no address rule applies (ports still do).
    allow_private: bool,
    /// Ports always refused, even when the allow list names them.
    denied_ports: Vec<PortRange>,
    /// When set, only these ports may be dialled. `None` means any port.
    allowed_ports: Option<Vec<PortRange>>,
    /// The agent's own public addresses, canonical (mapped IPv6 turned into IPv4).
    own_addresses: Vec<IpAddr>,
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

    /// Refuses the agent's own public address as a target: the address the
    /// gateway observed (`Welcome{observed address}`). Dialling it would reach
    /// the volunteer's router through hairpin NAT. For IPv6 the whole
    /// [`OWN_IPV6_PREFIX_LEN`] prefix around it is refused, because every device
    /// at home has a global address in that prefix.
    ///
    /// May be called more than once; every address given is refused. The agent
    /// should also pass each global IPv6 address of its own interfaces, since
    /// the gateway only sees the family the tunnel runs over. An IPv4-mapped
    /// IPv6 address is stored as its IPv4 address. Has no effect while
    /// [`allow_private`](Self::allow_private) is on.
    pub fn with_own_address(mut self, ip: IpAddr) -> Self {
        let ip = canonical(ip);
        if !self.own_addresses.contains(&ip) {
            self.own_addresses.push(ip);
        }
        self
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
        if let Some(range) = special_purpose_range(ip) {
            return Err(PolicyError::AddressProhibited { ip, range });
        }
        if let Some(range) = self.own_range(ip) {
            return Err(PolicyError::AddressProhibited { ip, range });
        }
        Ok(())
    }

    /// Checks the address and then the port of a socket address about to be
    /// dialled.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), PolicyError> {
        self.check_ip(addr.ip())?;
        self.check_port(addr.port())
    }

    /// The name of the own-network rule that `ip` (already canonical) hits, if any.
    fn own_range(&self, ip: IpAddr) -> Option<&'static str> {
        self.own_addresses.iter().find_map(|own| match (own, ip) {
            (IpAddr::V4(own), IpAddr::V4(ip)) if *own == ip => Some(OWN_V4_NAME),
            (IpAddr::V6(own), IpAddr::V6(ip))
                if v6_in(u128::from(ip), u128::from(*own), OWN_IPV6_PREFIX_LEN) =>
            {
                Some(OWN_V6_NAME)
            }
            _ => None,
        })
    }
}

/// The refused special-purpose range that contains `ip`, if any, as
/// `"<prefix> <what it is>"`. An IPv4-mapped IPv6 address is looked up as its
/// IPv4 address first, so `::ffff:127.0.0.1` is loopback and `::ffff:8.8.8.8`
/// is allowed. Every other IPv6 form that embeds IPv4 (IPv4-compatible, NAT64,
/// 6to4, Teredo) is refused as a whole: whatever it reaches is decided by some
/// translator, not by this check. The agent's own address is not considered
/// here; see [`ExitPolicy::check_ip`].
pub fn special_purpose_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            V4_REFUSED
                .iter()
                .find(|p| v4_in(bits, p.net, p.len))
                .map(|p| p.name)
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if let Some(p) = V6_REFUSED.iter().find(|p| v6_in(bits, p.net, p.len)) {
                return Some(p.name);
            }
            // Only 2000::/3 is global unicast; the rest is reserved or special.
            if !v6_in(bits, GLOBAL_UNICAST.net, GLOBAL_UNICAST.len) {
                return Some(OUTSIDE_GLOBAL_UNICAST);
            }
            None
        }
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it reaches; leaves
/// every other address alone. (IPv4-compatible `::a.b.c.d` is deliberately not
/// converted: it is deprecated and refused as a range.)
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// One refused IPv4 prefix.
struct V4Prefix {
    /// Network address, host bits zero.
    net: u32,
    /// Prefix length, 0-32.
    len: u8,
    /// `"<prefix> <purpose>"`, reported in [`PolicyError::AddressProhibited`].
    name: &'static str,
}

/// One refused IPv6 prefix.
struct V6Prefix {
    /// Network address, host bits zero.
    net: u128,
    /// Prefix length, 0-128.
    len: u8,
    /// `"<prefix> <purpose>"`, reported in [`PolicyError::AddressProhibited`].
    name: &'static str,
}

/// Builds a [`V4Prefix`] from dotted-quad parts, so the table reads like the RFCs.
const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, name: &'static str) -> V4Prefix {
    let net = (a as u32) << 24 | (b as u32) << 16 | (c as u32) << 8 | d as u32;
    V4Prefix { net, len, name }
}

/// Builds a [`V6Prefix`] from the eight 16-bit groups of the address.
const fn v6(groups: [u16; 8], len: u8, name: &'static str) -> V6Prefix {
    let mut net = 0u128;
    let mut i = 0;
    while i < groups.len() {
        net = net << 16 | groups[i] as u128;
        i += 1;
    }
    V6Prefix { net, len, name }
}

/// Whether `addr` lies in `net/len`.
fn v4_in(addr: u32, net: u32, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    addr & mask == net & mask
}

/// Whether `addr` lies in `net/len`.
fn v6_in(addr: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    addr & mask == net & mask
}

/// Refused IPv4 ranges (RFC 6890 and friends). The first match names the
/// error, so narrower entries come before the ranges that contain them.
#[rustfmt::skip]
const V4_REFUSED: &[V4Prefix] = &[
    v4(0, 0, 0, 0,           8, "0.0.0.0/8 this network"),
    v4(10, 0, 0, 0,          8, "10.0.0.0/8 private"),
    v4(100, 64, 0, 0,       10, "100.64.0.0/10 shared address space (CGNAT)"),
    v4(127, 0, 0, 0,         8, "127.0.0.0/8 loopback"),
    v4(169, 254, 169, 254,  32, "169.254.169.254/32 cloud metadata"),
    v4(169, 254, 0, 0,      16, "169.254.0.0/16 link-local"),
    v4(172, 16, 0, 0,       12, "172.16.0.0/12 private"),
    v4(192, 0, 0, 0,        24, "192.0.0.0/24 IETF protocol assignments"),
    v4(192, 0, 2, 0,        24, "192.0.2.0/24 documentation (TEST-NET-1)"),
    v4(192, 88, 99, 0,      24, "192.88.99.0/24 6to4 relay anycast"),
    v4(192, 168, 0, 0,      16, "192.168.0.0/16 private"),
    v4(198, 18, 0, 0,       15, "198.18.0.0/15 benchmarking"),
    v4(198, 51, 100, 0,     24, "198.51.100.0/24 documentation (TEST-NET-2)"),
    v4(203, 0, 113, 0,      24, "203.0.113.0/24 documentation (TEST-NET-3)"),
    v4(224, 0, 0, 0,         4, "224.0.0.0/4 multicast"),
    v4(255, 255, 255, 255,  32, "255.255.255.255/32 limited broadcast"),
    v4(240, 0, 0, 0,         4, "240.0.0.0/4 reserved"),
];

/// Refused IPv6 ranges (RFC 6890, the IANA special-purpose registry). Anything
/// outside [`GLOBAL_UNICAST`] is refused as well; the entries outside it are
/// listed only to give the error a precise name. IPv4-mapped `::ffff:0:0/96`
/// never reaches this table: it is checked as IPv4.
#[rustfmt::skip]
const V6_REFUSED: &[V6Prefix] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0],           128, "::/128 unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1],           128, "::1/128 loopback"),
    v6([0, 0, 0, 0, 0, 0, 0, 0],            96, "::/96 IPv4-compatible (deprecated)"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0],    96, "64:ff9b::/96 NAT64"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0],    48, "64:ff9b:1::/48 local NAT64"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0],        64, "100::/64 discard-only"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],       32, "2001::/32 Teredo"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0],       48, "2001:2::/48 benchmarking"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0],    28, "2001:10::/28 ORCHID (deprecated)"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0],    28, "2001:20::/28 ORCHIDv2"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],   32, "2001:db8::/32 documentation"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0],       16, "2002::/16 6to4"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0],       20, "3fff::/20 documentation"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0],        7, "fc00::/7 unique local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0],       10, "fe80::/10 link-local"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0],       10, "fec0::/10 site-local (deprecated)"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0],        8, "ff00::/8 multicast"),
];

/// The only IPv6 space the agent dials (minus [`V6_REFUSED`]).
const GLOBAL_UNICAST: V6Prefix = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3, "2000::/3");

#[cfg(test)]
mod tests {
    use super::*;
    use exitpool_protocol::host::parse_host;
    use exitpool_protocol::TargetHost;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Asserts which range `addr` falls in: `Some(prefix)` matches the start of
    /// the range name, `None` means allowed.
    fn assert_range(addr: &str, expected: Option<&str>) {
        let got = special_purpose_range(ip(addr));
        match (got, expected) {
            (None, None) => {}
            (Some(name), Some(prefix)) if name.starts_with(prefix) => {}
            _ => panic!("{addr}: expected {expected:?}, got {got:?}"),
        }
        // The strict policy must agree with the table.
        let checked = ExitPolicy::new().check_ip(ip(addr));
        assert_eq!(checked.is_ok(), expected.is_none(), "{addr}: {checked:?}");
    }

    #[test]
    fn ipv4_ranges_first_last_and_neighbours() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0.0.0.0", Some("0.0.0.0/8 ")),
            ("0.255.255.255", Some("0.0.0.0/8 ")),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some("10.0.0.0/8 private")),
            ("10.255.255.255", Some("10.0.0.0/8 ")),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some("100.64.0.0/10 ")),
            ("100.127.255.255", Some("100.64.0.0/10 ")),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.0", Some("127.0.0.0/8 loopback")),
            ("127.0.0.1", Some("127.0.0.0/8 ")),
            ("127.255.255.255", Some("127.0.0.0/8 ")),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.0", Some("169.254.0.0/16 link-local")),
            ("169.254.169.253", Some("169.254.0.0/16 ")),
            ("169.254.169.254", Some("169.254.169.254/32 cloud metadata")),
            ("169.254.169.255", Some("169.254.0.0/16 ")),
            ("169.254.255.255", Some("169.254.0.0/16 ")),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("172.16.0.0/12 ")),
            ("172.31.255.255", Some("172.16.0.0/12 ")),
            ("172.32.0.0", None),
            ("191.255.255.255", None),
            ("192.0.0.0", Some("192.0.0.0/24 ")),
            ("192.0.0.255", Some("192.0.0.0/24 ")),
            ("192.0.1.0", None),
            ("192.0.1.255", None),
            ("192.0.2.0", Some("192.0.2.0/24 ")),
            ("192.0.2.255", Some("192.0.2.0/24 ")),
            ("192.0.3.0", None),
            ("192.88.98.255", None),
            ("192.88.99.0", Some("192.88.99.0/24 ")),
            ("192.88.99.255", Some("192.88.99.0/24 ")),
            ("192.88.100.0", None),
            ("192.167.255.255", None),
            ("192.168.0.0", Some("192.168.0.0/16 ")),
            ("192.168.255.255", Some("192.168.0.0/16 ")),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some("198.18.0.0/15 ")),
            ("198.19.255.255", Some("198.18.0.0/15 ")),
            ("198.20.0.0", None),
            ("198.51.99.255", None),
            ("198.51.100.0", Some("198.51.100.0/24 ")),
            ("198.51.100.255", Some("198.51.100.0/24 ")),
            ("198.51.101.0", None),
            ("203.0.112.255", None),
            ("203.0.113.0", Some("203.0.113.0/24 ")),
            ("203.0.113.255", Some("203.0.113.0/24 ")),
            ("203.0.114.0", None),
            ("223.255.255.255", None),
            ("224.0.0.0", Some("224.0.0.0/4 multicast")),
            ("239.255.255.255", Some("224.0.0.0/4 ")),
            ("240.0.0.0", Some("240.0.0.0/4 ")),
            ("255.255.255.254", Some("240.0.0.0/4 ")),
            ("255.255.255.255", Some("255.255.255.255/32 ")),
        ];
        for &(addr, expected) in cases {
            assert_range(addr, expected);
        }
    }

    #[test]
    fn ipv6_ranges_first_last_and_neighbours() {
        let outside = Some(OUTSIDE_GLOBAL_UNICAST);
        let cases: &[(&str, Option<&str>)] = &[
            ("::", Some("::/128 unspecified")),
            ("::1", Some("::1/128 loopback")),
            ("::2", Some("::/96 ")),
            ("::ffff:ffff", Some("::/96 ")),
            ("::1:0:0", outside),
            ("::fffe:ffff:ffff", outside),
            ("::1:ffff:0:0", outside), // IPv4-translated (SIIT), not mapped
            ("64:ff9b::", Some("64:ff9b::/96 NAT64")),
            ("64:ff9b::ffff:ffff", Some("64:ff9b::/96 ")),
            ("64:ff9b::1:0:0", outside),
            ("64:ff9b:1::", Some("64:ff9b:1::/48 ")),
            (
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
                Some("64:ff9b:1::/48 "),
            ),
            ("64:ff9b:2::", outside),
            ("100::", Some("100::/64 ")),
            ("100::ffff:ffff:ffff:ffff", Some("100::/64 ")),
            ("100:0:0:1::", outside),
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", outside),
            ("2000::", None),
            ("2001::", Some("2001::/32 Teredo")),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some("2001::/32 ")),
            ("2001:1::1", None),
            ("2001:2::", Some("2001:2::/48 ")),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some("2001:2::/48 ")),
            ("2001:2:1::", None),
            ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2001:10::", Some("2001:10::/28 ")),
            (
                "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("2001:10::/28 "),
            ),
            ("2001:20::", Some("2001:20::/28 ")),
            (
                "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("2001:20::/28 "),
            ),
            ("2001:30::", None),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2001:db8::", Some("2001:db8::/32 ")),
            (
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("2001:db8::/32 "),
            ),
            ("2001:db9::", None),
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2002::", Some("2002::/16 6to4")),
            (
                "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("2002::/16 "),
            ),
            ("2003::", None),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("3fff::", Some("3fff::/20 ")),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Some("3fff::/20 ")),
            ("3fff:1000::", None),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("4000::", outside),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", outside),
            ("fc00::", Some("fc00::/7 unique local")),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("fc00::/7 ")),
            ("fe00::", outside),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", outside),
            ("fe80::", Some("fe80::/10 link-local")),
            (
                "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("fe80::/10 "),
            ),
            ("fec0::", Some("fec0::/10 ")),
            (
                "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("fec0::/10 "),
            ),
            ("ff00::", Some("ff00::/8 multicast")),
            ("ff02::1", Some("ff00::/8 ")),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("ff00::/8 ")),
        ];
        for &(addr, expected) in cases {
            assert_range(addr, expected);
        }
    }

    #[test]
    fn mapped_addresses_are_checked_as_ipv4() {
        assert_range("::ffff:8.8.8.8", None);
        assert_range("::ffff:1.1.1.1", None);
        assert_range("::ffff:127.0.0.1", Some("127.0.0.0/8 "));
        assert_range("::ffff:7f00:1", Some("127.0.0.0/8 "));
        assert_range("::ffff:10.1.2.3", Some("10.0.0.0/8 "));
        assert_range("::ffff:169.254.169.254", Some("169.254.169.254/32 "));
        assert_range("::ffff:0.0.0.0", Some("0.0.0.0/8 "));
        assert_range("::ffff:255.255.255.255", Some("255.255.255.255/32 "));
        // The error reports the canonical IPv4 form.
        let err = ExitPolicy::new()
            .check_ip(ip("::ffff:192.168.1.1"))
            .unwrap_err();
        assert_eq!(
            err,
            PolicyError::AddressProhibited {
                ip: ip("192.168.1.1"),
                range: "192.168.0.0/16 private",
            }
        );
    }

    #[test]
    fn compatible_and_translated_forms_are_refused() {
        // IPv4-compatible (deprecated) is not converted, even for public IPv4.
        assert_range("::8.8.8.8", Some("::/96 "));
        assert_range("::127.0.0.1", Some("::/96 "));
        // NAT64 of public and private IPv4 alike.
        assert_range("64:ff9b::8.8.8.8", Some("64:ff9b::/96 "));
        assert_range("64:ff9b::127.0.0.1", Some("64:ff9b::/96 "));
        assert_range("64:ff9b::a00:1", Some("64:ff9b::/96 "));
        assert_range("64:ff9b:1::c0a8:101", Some("64:ff9b:1::/48 "));
        // 6to4 and Teredo embedding loopback or private space.
        assert_range("2002:7f00:1::", Some("2002::/16 "));
        assert_range("2002:c0a8:101::1", Some("2002::/16 "));
        assert_range("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some("2001::/32 "));
    }

    #[test]
    fn global_addresses_are_allowed() {
        let policy = ExitPolicy::new();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:82a::200e",
        ] {
            assert_eq!(policy.check_ip(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn tables_match_their_names() {
        for p in V4_REFUSED {
            let (prefix, _) = p.name.split_once(' ').unwrap();
            let (net, len) = prefix.split_once('/').unwrap();
            assert_eq!(
                u32::from(net.parse::<Ipv4Addr>().unwrap()),
                p.net,
                "{}",
                p.name
            );
            assert_eq!(len.parse::<u8>().unwrap(), p.len, "{}", p.name);
            let mask = u32::MAX.checked_shl(32 - u32::from(p.len)).unwrap_or(0);
            assert_eq!(p.net & !mask, 0, "host bits set: {}", p.name);
            let last = p.net | !mask;
            assert!(special_purpose_range(IpAddr::V4(last.into())).is_some());
        }
        for p in V6_REFUSED {
            let (prefix, _) = p.name.split_once(' ').unwrap();
            let (net, len) = prefix.split_once('/').unwrap();
            assert_eq!(
                u128::from(net.parse::<Ipv6Addr>().unwrap()),
                p.net,
                "{}",
                p.name
            );
            assert_eq!(len.parse::<u8>().unwrap(), p.len, "{}", p.name);
            let mask = u128::MAX.checked_shl(128 - u32::from(p.len)).unwrap_or(0);
            assert_eq!(p.net & !mask, 0, "host bits set: {}", p.name);
        }
    }

    #[test]
    fn own_ipv4_address_is_refused() {
        let own = ip("81.2.69.142");
        let policy = ExitPolicy::new().with_own_address(own);
        assert_eq!(
            policy.check_ip(own),
            Err(PolicyError::AddressProhibited {
                ip: own,
                range: OWN_V4_NAME
            })
        );
        assert!(policy.check_ip(ip("::ffff:81.2.69.142")).is_err());
        assert_eq!(policy.check_ip(ip("81.2.69.143")), Ok(()));
        // Without the own address it is an ordinary public address.
        assert_eq!(ExitPolicy::new().check_ip(own), Ok(()));
        // Stored canonically when given in mapped form.
        let mapped = ExitPolicy::new().with_own_address(ip("::ffff:81.2.69.142"));
        assert!(mapped.check_ip(own).is_err());
        // The test switch turns the rule off.
        assert_eq!(policy.clone().allow_private(true).check_ip(own), Ok(()));
        // Not part of the global table.
        assert_eq!(special_purpose_range(own), None);
    }

    #[test]
    fn own_ipv6_prefix_is_refused() {
        let policy = ExitPolicy::new()
            .with_own_address(ip("81.2.69.142"))
            .with_own_address(ip("2a01:4f8:1:2::10"));
        for addr in ["2a01:4f8:1:2::10", "2a01:4f8:1:2::1", "2a01:4f8:1:ffff::1"] {
            assert_eq!(
                policy.check_ip(ip(addr)),
                Err(PolicyError::AddressProhibited {
                    ip: ip(addr),
                    range: OWN_V6_NAME
                }),
                "{addr}"
            );
        }
        assert_eq!(policy.check_ip(ip("2a01:4f8:2::1")), Ok(()));
        assert_eq!(policy.check_ip(ip("2a01:4f8:0:ffff::1")), Ok(()));
        // Both own addresses stay refused.
        assert!(policy.check_ip(ip("81.2.69.142")).is_err());
        assert!(policy
            .allow_private(true)
            .check_ip(ip("2a01:4f8:1:2::1"))
            .is_ok());
    }

    #[test]
    fn allow_private_disables_address_rules_only() {
        let policy = ExitPolicy::new().allow_private(true);
        assert!(policy.allows_private());
        assert!(!ExitPolicy::new().allows_private());
        assert!(!ExitPolicy::default().allows_private());
        for addr in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fe80::1"] {
            assert_eq!(policy.check_ip(ip(addr)), Ok(()), "{addr}");
        }
        assert_eq!(
            policy.check_port(25),
            Err(PolicyError::PortProhibited { port: 25 })
        );
        assert_eq!(
            policy.check_addr("127.0.0.1:587".parse().unwrap()),
            Err(PolicyError::PortProhibited { port: 587 })
        );
        assert_eq!(policy.check_addr("127.0.0.1:8080".parse().unwrap()), Ok(()));
        // And switching it back off restores the rules.
        assert!(policy
            .allow_private(false)
            .check_ip(ip("127.0.0.1"))
            .is_err());
    }

    #[test]
    fn default_ports() {
        let policy = ExitPolicy::new();
        for port in [25, 465, 587, 0] {
            assert_eq!(
                policy.check_port(port),
                Err(PolicyError::PortProhibited { port })
            );
        }
        for port in [1, 22, 24, 26, 80, 443, 464, 466, 586, 588, 8080, 65535] {
            assert_eq!(policy.check_port(port), Ok(()), "{port}");
        }
    }

    #[test]
    fn denied_ports_replace_the_default() {
        let policy = ExitPolicy::new().with_denied_ports([PortRange {
            first: 6660,
            last: 6669,
        }]);
        assert_eq!(policy.check_port(25), Ok(()));
        assert!(policy.check_port(6660).is_err());
        assert!(policy.check_port(6669).is_err());
        assert_eq!(policy.check_port(6670), Ok(()));
        let open = ExitPolicy::new().with_denied_ports([]);
        assert_eq!(open.check_port(587), Ok(()));
        assert!(open.check_port(0).is_err(), "port 0 is never dialled");
    }

    #[test]
    fn allowed_ports_restrict_and_deny_still_wins() {
        let policy = ExitPolicy::new().with_allowed_ports([
            PortRange::single(80),
            PortRange::single(443),
            PortRange::single(25),
            PortRange {
                first: 8000,
                last: 8100,
            },
        ]);
        for port in [80, 443, 8000, 8050, 8100] {
            assert_eq!(policy.check_port(port), Ok(()), "{port}");
        }
        for port in [22, 79, 81, 7999, 8101, 25] {
            assert!(policy.check_port(port).is_err(), "{port}");
        }
        let nothing = ExitPolicy::new().with_allowed_ports([]);
        assert!(nothing.check_port(443).is_err());
        // An inverted range built by hand matches nothing.
        let inverted = ExitPolicy::new().with_allowed_ports([PortRange {
            first: 90,
            last: 80,
        }]);
        assert!(inverted.check_port(85).is_err());
    }

    #[test]
    fn check_addr_checks_both() {
        let policy = ExitPolicy::new();
        assert_eq!(policy.check_addr("8.8.8.8:443".parse().unwrap()), Ok(()));
        assert!(policy.check_addr("8.8.8.8:25".parse().unwrap()).is_err());
        assert!(policy.check_addr("[::1]:443".parse().unwrap()).is_err());
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!("25".parse(), Ok(PortRange::single(25)));
        assert_eq!(" 0 ".parse(), Ok(PortRange::single(0)));
        assert_eq!("65535".parse(), Ok(PortRange::single(65535)));
        assert_eq!(
            "8000-8100".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8100
            })
        );
        assert_eq!(
            "8000 - 8100".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8100
            })
        );
        assert_eq!("443-443".parse(), Ok(PortRange::single(443)));
        let bad: &[(&str, PortRangeError)] = &[
            ("", PortRangeError::Empty),
            ("-80", PortRangeError::Empty),
            ("80-", PortRangeError::Empty),
            ("+25", PortRangeError::NotANumber { text: "+25".into() }),
            (
                "0x19",
                PortRangeError::NotANumber {
                    text: "0x19".into(),
                },
            ),
            (
                "smtp",
                PortRangeError::NotANumber {
                    text: "smtp".into(),
                },
            ),
            ("1-2-3", PortRangeError::NotANumber { text: "2-3".into() }),
            (
                "65536",
                PortRangeError::OutOfRange {
                    text: "65536".into(),
                },
            ),
            (
                "99999999999999999999",
                PortRangeError::OutOfRange {
                    text: "99999999999999999999".into(),
                },
            ),
            (
                "8100-8000",
                PortRangeError::Reversed {
                    first: 8100,
                    last: 8000,
                },
            ),
        ];
        for (text, expected) in bad {
            assert_eq!(
                text.parse::<PortRange>().as_ref(),
                Err(expected),
                "{text:?}"
            );
        }
        let msg = "8100-8000".parse::<PortRange>().unwrap_err().to_string();
        assert!(msg.contains("lower port first"), "{msg}");
        let msg = "smtp".parse::<PortRange>().unwrap_err().to_string();
        assert!(msg.contains("\"smtp\" is not a port number"), "{msg}");
        // Display round-trips.
        for text in ["25", "8000-8100"] {
            assert_eq!(text.parse::<PortRange>().unwrap().to_string(), text);
        }
    }

    /// The shared host parser returns mapped literals as written; the policy
    /// canonicalises them, so `::ffff:127.0.0.1` is loopback here.
    #[test]
    fn mapped_literals_parse_as_written_and_are_checked_as_ipv4() {
        let Ok(TargetHost::Ip(mapped)) = parse_host("::ffff:127.0.0.1") else {
            panic!("mapped literal did not parse");
        };
        assert!(ExitPolicy::new().check_ip(mapped).is_err());
    }
}
