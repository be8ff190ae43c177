//! Address ranges in the exit policy: the special-purpose tables (RFC 6890 and
//! the IANA registries) every agent refuses, the IPv4-mapped canonical form,
//! and the own-network rule (the volunteer's addresses and IPv6 prefixes).

use std::net::IpAddr;

/// Prefix length refused around an own IPv6 address (observed or on an
/// interface). A home gets a whole prefix (/64 to /48) and every device in it
/// has a global address that the agent can reach from the inside, so refusing
/// only the one address, or only its /64, would leave the rest of the house
/// (other VLANs, the guest network) open. /48 is the largest common delegation
/// to one site, so it covers the owner's network and at most a few neighbours.
pub const OWN_IPV6_PREFIX_LEN: u8 = 48;

/// Range name reported when the target is one of the agent's own IPv4
/// addresses (public, or on one of its interfaces).
pub(super) const OWN_V4_NAME: &str = "own address (the volunteer's network)";
/// Range name reported when the target shares the agent's own IPv6 /48.
pub(super) const OWN_V6_NAME: &str = "own /48 prefix (the volunteer's network)";
/// Range name reported when the target is on one of the agent's own IPv4
/// interfaces' on-link networks.
pub(super) const OWN_V4_NETWORK_NAME: &str = "own on-link network (the volunteer's network)";
/// Range name for IPv6 addresses outside global unicast that no table names.
pub(super) const OUTSIDE_GLOBAL_UNICAST: &str = "outside 2000::/3 global unicast";

/// The refused special-purpose range that contains `ip`, if any, as
/// `"<prefix> <what it is>"`. An IPv4-mapped IPv6 address is looked up as its
/// IPv4 address first, so `::ffff:127.0.0.1` is loopback and `::ffff:8.8.8.8`
/// is allowed. Every other IPv6 form that embeds IPv4 (IPv4-compatible, NAT64,
/// 6to4, Teredo) is refused as a whole: whatever it reaches is decided by some
/// translator, not by this check. The agent's own address is not considered
/// here; see [`ExitPolicy::check_ip`](super::ExitPolicy::check_ip).
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
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
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

/// Refused IPv6 ranges: every entry of the IANA IPv6 Special-Purpose Address
/// Registry (RFC 6890 and its updates, registry of 2025), whatever its
/// "globally reachable" flag: anycast services and overlay identifiers are not
/// what a customer of a residential exit should reach. Anything outside
/// [`GLOBAL_UNICAST`] is refused as well; the entries outside it are listed only
/// to give the error a precise name. The first match names the error, so the
/// entries inside 2001::/23 come before it. IPv4-mapped `::ffff:0:0/96` never
/// reaches this table: it is checked as IPv4.
#[rustfmt::skip]
const V6_REFUSED: &[V6Prefix] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0],           128, "::/128 unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1],           128, "::1/128 loopback"),
    v6([0, 0, 0, 0, 0, 0, 0, 0],            96, "::/96 IPv4-compatible (deprecated)"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0],    96, "64:ff9b::/96 NAT64"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0],    48, "64:ff9b:1::/48 local NAT64"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0],        64, "100::/64 discard-only"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0],        64, "100:0:0:1::/64 dummy prefix"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],       32, "2001::/32 Teredo"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1],      128, "2001:1::1/128 port control protocol anycast"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2],      128, "2001:1::2/128 TURN anycast"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3],      128, "2001:1::3/128 DNS-SD service registration anycast"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0],       48, "2001:2::/48 benchmarking"),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0],       32, "2001:3::/32 AMT"),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0],   48, "2001:4:112::/48 AS112-v6"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0],    28, "2001:10::/28 ORCHID (deprecated)"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0],    28, "2001:20::/28 ORCHIDv2"),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0],    28, "2001:30::/28 drone remote ID (DET)"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],       23, "2001::/23 IETF protocol assignments"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],   32, "2001:db8::/32 documentation"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0],       16, "2002::/16 6to4"),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "2620:4f:8000::/48 AS112 direct delegation"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0],       20, "3fff::/20 documentation"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0],       16, "5f00::/16 SRv6 segment identifiers"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0],        7, "fc00::/7 unique local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0],       10, "fe80::/10 link-local"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0],       10, "fec0::/10 site-local (deprecated)"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0],        8, "ff00::/8 multicast"),
];

/// The only IPv6 space the agent dials (minus [`V6_REFUSED`]).
const GLOBAL_UNICAST: V6Prefix = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3, "2000::/3");

/// The name of the own-network rule that `ip` (already canonical) hits, if any:
/// one of the agent's own IPv4 addresses, or the
/// [`OWN_IPV6_PREFIX_LEN`] prefix around one of its own IPv6 addresses.
/// `own` holds canonical addresses.
pub(super) fn own_network(own: &[IpAddr], ip: IpAddr) -> Option<&'static str> {
    own.iter().find_map(|own| match (own, ip) {
        (IpAddr::V4(own), IpAddr::V4(ip)) if *own == ip => Some(OWN_V4_NAME),
        (IpAddr::V6(own), IpAddr::V6(ip))
            if v6_in(u128::from(ip), u128::from(*own), OWN_IPV6_PREFIX_LEN) =>
        {
            Some(OWN_V6_NAME)
        }
        _ => None,
    })
}

/// [`OWN_V4_NETWORK_NAME`] if `ip` lies in one of `networks` (address,
/// prefix length).
pub(super) fn own_v4_network(networks: &[(u32, u8)], ip: IpAddr) -> Option<&'static str> {
    let IpAddr::V4(ip) = ip else { return None };
    networks
        .iter()
        .any(|&(net, len)| v4_in(u32::from(ip), net, len))
        .then_some(OWN_V4_NETWORK_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

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
}
