//! The exit policy's verdicts: every special-purpose range at its edges (the
//! table and [`ExitPolicy::check_ip`] must agree), the own-network rule, the
//! test switch, and the port rules.

use super::ranges::{OUTSIDE_GLOBAL_UNICAST, OWN_V4_NAME, OWN_V4_NETWORK_NAME, OWN_V6_NAME};
use super::*;
use exitpool_protocol::host::parse_host;
use exitpool_protocol::TargetHost;

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
        ("100:0:0:1::", Some("100:0:0:1::/64 dummy")),
        ("100::1:ffff:ffff:ffff:ffff", Some("100:0:0:1::/64 ")),
        ("100:0:0:2::", outside),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", outside),
        ("2000::", None),
        ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001::", Some("2001::/32 Teredo")),
        ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some("2001::/32 ")),
        ("2001:1::", Some("2001::/23 IETF")),
        ("2001:1::1", Some("2001:1::1/128 port control")),
        ("2001:1::2", Some("2001:1::2/128 TURN")),
        ("2001:1::3", Some("2001:1::3/128 DNS-SD")),
        ("2001:1::4", Some("2001::/23 ")),
        ("2001:2::", Some("2001:2::/48 ")),
        ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some("2001:2::/48 ")),
        ("2001:2:1::", Some("2001::/23 ")),
        ("2001:3::", Some("2001:3::/32 AMT")),
        ("2001:3:ffff:ffff:ffff:ffff:ffff:ffff", Some("2001:3::/32 ")),
        ("2001:4:111:ffff:ffff:ffff:ffff:ffff", Some("2001::/23 ")),
        ("2001:4:112::", Some("2001:4:112::/48 AS112")),
        (
            "2001:4:112:ffff:ffff:ffff:ffff:ffff",
            Some("2001:4:112::/48 "),
        ),
        ("2001:4:113::", Some("2001::/23 ")),
        ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", Some("2001::/23 ")),
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
        ("2001:30::", Some("2001:30::/28 drone")),
        (
            "2001:3f:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("2001:30::/28 "),
        ),
        ("2001:40::", Some("2001::/23 ")),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", Some("2001::/23 ")),
        ("2001:200::", None),
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
        ("2620:4f:7fff:ffff:ffff:ffff:ffff:ffff", None),
        ("2620:4f:8000::", Some("2620:4f:8000::/48 AS112")),
        (
            "2620:4f:8000:ffff:ffff:ffff:ffff:ffff",
            Some("2620:4f:8000::/48 "),
        ),
        ("2620:4f:8001::", None),
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("3fff::", Some("3fff::/20 ")),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Some("3fff::/20 ")),
        ("3fff:1000::", None),
        ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("4000::", outside),
        ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", outside),
        ("5f00::", Some("5f00::/16 SRv6")),
        (
            "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("5f00::/16 "),
        ),
        ("5f01::", outside),
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

/// The shared host parser returns mapped literals as written; the policy
/// canonicalises them, so `::ffff:127.0.0.1` is loopback here.
#[test]
fn mapped_literals_parse_as_written_and_are_checked_as_ipv4() {
    let Ok(TargetHost::Ip(mapped)) = parse_host("::ffff:127.0.0.1") else {
        panic!("mapped literal did not parse");
    };
    assert!(ExitPolicy::new().check_ip(mapped).is_err());
}

#[test]
fn every_interface_address_and_each_ipv6_prefix_is_refused() {
    // What the agent of a dual-stack home tunnelling over IPv4 passes: the
    // observed public IPv4, and its interfaces (loopback, the LAN, the global
    // IPv6 address from the router's prefix, a public IPv4 on a second link).
    let interfaces = [
        "127.0.0.1",
        "::1",
        "192.168.1.20",
        "fe80::1c2d:3eff:fe4f:5a6b",
        "2a02:8071:5c0:1d00:1c2d:3eff:fe4f:5a6b",
        "81.2.69.160",
    ];
    let policy = ExitPolicy::new()
        .with_own_address(ip("81.2.69.142"))
        .with_own_addresses(interfaces.iter().map(|a| ip(a)));
    for refused in [
        "81.2.69.142",
        "81.2.69.160",
        "::ffff:81.2.69.160",
        // The router, the NAS and a printer share the device's /64 ...
        "2a02:8071:5c0:1d00::1",
        "2a02:8071:5c0:1d00:211:32ff:fe01:2345",
        // ... and the guest network another /64 of the same delegation.
        "2a02:8071:5c0:1d01::1",
    ] {
        assert!(
            matches!(
                policy.check_ip(ip(refused)),
                Err(PolicyError::AddressProhibited { range, .. })
                    if range == OWN_V4_NAME || range == OWN_V6_NAME
            ),
            "{refused}: {:?}",
            policy.check_ip(ip(refused))
        );
    }
    for allowed in ["81.2.69.141", "81.2.69.161", "2a02:8071:5c1::1", "8.8.8.8"] {
        assert_eq!(policy.check_ip(ip(allowed)), Ok(()), "{allowed}");
    }
    // Stored once each, in canonical form.
    assert_eq!(policy.own_addresses().len(), interfaces.len() + 1);
    let again = policy
        .clone()
        .with_own_addresses([ip("::ffff:81.2.69.160")]);
    assert_eq!(again.own_addresses(), policy.own_addresses());
}

#[test]
fn an_interfaces_whole_ipv4_subnet_is_refused() {
    // A device on a public /28 reaches its 15 neighbours directly.
    let policy = ExitPolicy::new()
        .with_own_network(ip("81.2.69.162"), 28)
        .with_own_network(ip("127.0.0.1"), 8)
        // A misread /0 refuses the address, not the internet.
        .with_own_network(ip("93.184.216.34"), 0);
    for refused in [
        "81.2.69.160",
        "81.2.69.162",
        "81.2.69.175",
        "::ffff:81.2.69.170",
    ] {
        assert!(
            matches!(
                policy.check_ip(ip(refused)),
                Err(PolicyError::AddressProhibited { range, .. })
                    if range == OWN_V4_NETWORK_NAME || range == OWN_V4_NAME
            ),
            "{refused}: {:?}",
            policy.check_ip(ip(refused))
        );
    }
    assert!(policy.check_ip(ip("93.184.216.34")).is_err());
    for allowed in ["81.2.69.159", "81.2.69.176", "93.184.216.35", "8.8.8.8"] {
        assert_eq!(policy.check_ip(ip(allowed)), Ok(()), "{allowed}");
    }
    let networks: Vec<(IpAddr, u8)> = policy.own_v4_networks().collect();
    assert_eq!(
        networks,
        [(ip("81.2.69.160"), 28), (ip("127.0.0.0"), 8)],
        "network addresses, each once"
    );
}

#[test]
fn a_discovered_nat64_prefix_is_refused_whole() {
    let policy = ExitPolicy::new().with_nat64_prefix("2a01:4f8:64::".parse().unwrap(), 96);
    for refused in ["2a01:4f8:64::c0a8:101", "2a01:4f8:64::808:808"] {
        assert!(
            matches!(
                policy.check_ip(ip(refused)),
                Err(PolicyError::AddressProhibited { range, .. }) if range.contains("NAT64")
            ),
            "{refused}"
        );
    }
    assert_eq!(policy.check_ip(ip("2a01:4f8:65::808:808")), Ok(()));
    assert_eq!(
        policy.nat64_prefixes().collect::<Vec<_>>(),
        [("2a01:4f8:64::".parse().unwrap(), 96)]
    );
}

#[test]
fn the_gateways_address_is_refused_on_every_port_before_any_other_rule() {
    let policy = ExitPolicy::new()
        .with_gateway_address(ip("81.2.69.7"))
        .with_gateway_address(ip("::ffff:127.0.0.1"));
    for refused in ["81.2.69.7", "::ffff:81.2.69.7", "127.0.0.1"] {
        assert!(
            matches!(
                policy.check_ip(ip(refused)),
                Err(PolicyError::AddressProhibited { range, .. }) if range.contains("gateway")
            ),
            "{refused}"
        );
    }
    assert_eq!(policy.check_ip(ip("81.2.69.8")), Ok(()));
    assert_eq!(policy.gateway_addresses().len(), 2);
}
