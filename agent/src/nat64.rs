//! The network's own NAT64 prefix (RFC 7050), which the exit policy refuses
//! like the well-known `64:ff9b::/96`: on an IPv6-only network with DNS64, an
//! address inside the operator's prefix reaches whatever IPv4 host it embeds,
//! the volunteer's own private ones included.
//!
//! Discovery asks the resolver for the AAAA records of `ipv4only.arpa`, a name
//! that has only the A records 192.0.0.170 and 192.0.0.171: any AAAA answer was
//! synthesized by DNS64, and where one of those two addresses sits inside it
//! gives the prefix and its length (RFC 6052 §2.2). The tunnel asks at every
//! connection and every interface refresh, on tokio's blocking pool (the system
//! resolver blocks); apps and tests can supply their own lookup
//! ([`Nat64Source::from_fn`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// The name whose AAAA records DNS64 synthesizes (RFC 7050 §2).
pub const IPV4ONLY_ARPA: &str = "ipv4only.arpa";

/// The two IPv4 addresses `ipv4only.arpa` has (RFC 7050 §2.1).
const WELL_KNOWN_IPV4: [Ipv4Addr; 2] =
    [Ipv4Addr::new(192, 0, 0, 170), Ipv4Addr::new(192, 0, 0, 171)];

/// The prefix lengths RFC 6052 §2.2 allows, longest first.
const PREFIX_LENGTHS: [u8; 6] = [96, 64, 56, 48, 40, 32];

/// A lookup of `ipv4only.arpa`'s IPv6 addresses.
type Lookup = dyn Fn() -> io::Result<Vec<Ipv6Addr>> + Send + Sync;

/// Where the agent learns the network's NAT64 prefixes from.
#[derive(Clone)]
pub struct Nat64Source(Option<Arc<Lookup>>);

impl std::fmt::Debug for Nat64Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "Nat64Source(lookup)",
            None => "Nat64Source(none)",
        })
    }
}

impl Nat64Source {
    /// The system resolver (`getaddrinfo`), as every other name the agent
    /// resolves: DNS64, when the network has it, answers there.
    pub fn system() -> Self {
        Nat64Source(Some(Arc::new(|| {
            Ok((IPV4ONLY_ARPA, 0)
                .to_socket_addrs()?
                .filter_map(|addr| match addr.ip() {
                    IpAddr::V6(v6) => Some(v6),
                    IpAddr::V4(_) => None,
                })
                .collect())
        })))
    }

    /// A lookup of the caller's choosing: an app that knows its network's
    /// prefix, or a test's DNS64 answer.
    pub fn from_fn(lookup: impl Fn() -> io::Result<Vec<Ipv6Addr>> + Send + Sync + 'static) -> Self {
        Nat64Source(Some(Arc::new(lookup)))
    }

    /// No discovery: only the well-known prefixes are refused.
    pub fn none() -> Self {
        Nat64Source(None)
    }

    /// The prefixes the answer reveals, looked up on the blocking pool within
    /// `within`. No answer (the usual case: no DNS64) is no prefix.
    pub async fn discover(&self, within: Duration) -> io::Result<Vec<(Ipv6Addr, u8)>> {
        let Some(lookup) = self.0.clone() else {
            return Ok(Vec::new());
        };
        let looked_up = tokio::time::timeout(within, tokio::task::spawn_blocking(move || lookup()));
        match looked_up.await {
            Ok(Ok(Ok(addresses))) => Ok(prefixes_in(&addresses)),
            // A name that does not resolve says there is no DNS64.
            Ok(Ok(Err(error))) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(error)) => Err(io::Error::other(error)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "looking up ipv4only.arpa timed out",
            )),
        }
    }
}

/// The NAT64 prefixes (network address, length) that `answers`, the AAAA
/// records of `ipv4only.arpa`, were synthesized with: every length at which a
/// well-known address sits in its RFC 6052 position, so a doubtful answer
/// refuses more, never less.
pub fn prefixes_in(answers: &[Ipv6Addr]) -> Vec<(Ipv6Addr, u8)> {
    let mut found = Vec::new();
    for answer in answers {
        for length in PREFIX_LENGTHS {
            if WELL_KNOWN_IPV4.contains(&embedded_ipv4(*answer, length)) {
                let mask = u128::MAX << (128 - u32::from(length));
                let prefix = (Ipv6Addr::from(u128::from(*answer) & mask), length);
                if !found.contains(&prefix) {
                    found.push(prefix);
                }
            }
        }
    }
    found
}

/// The IPv4 address RFC 6052 §2.2 places after a prefix of `length` bits:
/// its four octets follow the prefix, skipping octet 8 (bits 64-71, "u"), which
/// is always zero.
fn embedded_ipv4(address: Ipv6Addr, length: u8) -> Ipv4Addr {
    let octets = address.octets();
    let start = usize::from(length / 8);
    let mut ipv4 = [0u8; 4];
    let positions = (start..16).filter(|&index| index != 8).take(4);
    for (slot, index) in ipv4.iter_mut().zip(positions) {
        *slot = octets[index];
    }
    if length != 96 && octets[8] != 0 {
        // The "u" octet must be zero for every length but /96 (where the
        // embedded address lies past it).
        return Ipv4Addr::UNSPECIFIED;
    }
    Ipv4Addr::from(ipv4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn each_rfc_6052_length_is_found() {
        // RFC 6052 §2.4's examples of 192.0.2.33 with 2001:db8::/L, here
        // with 192.0.0.170 in the same places.
        let cases = [
            ("2001:db8:c000:aa::", 32),
            ("2001:db8:c0:0:aa::", 40),
            ("2001:db8:122:c000:0:aa00::", 48),
            ("2001:db8:122:3c0:0:aa::", 56),
            ("2001:db8:122:344:c0:0:aa00:0", 64),
            ("2001:db8:122:344::c000:aa", 96),
        ];
        for (answer, length) in cases {
            let found = prefixes_in(&[v6(answer)]);
            assert!(
                found.iter().any(|&(_, l)| l == length),
                "{answer}: {found:?}"
            );
        }
        assert_eq!(
            prefixes_in(&[v6("64:ff9b:1:abcd::c000:ab")]),
            vec![(v6("64:ff9b:1:abcd::"), 96)]
        );
    }

    #[test]
    fn answers_without_the_well_known_addresses_reveal_nothing() {
        assert!(prefixes_in(&[v6("2001:db8::1"), v6("2001:db8::c000:2")]).is_empty());
        // "u" octet set: not an RFC 6052 address at /64.
        assert!(prefixes_in(&[v6("2001:db8:122:344:1c0:0:aa00:0")]).is_empty());
        assert!(prefixes_in(&[]).is_empty());
    }

    #[tokio::test]
    async fn discovery_runs_the_lookup_and_none_asks_nothing() {
        let source = Nat64Source::from_fn(|| Ok(vec![v6("2001:db8:64::c000:aa")]));
        let found = source.discover(Duration::from_secs(5)).await.unwrap();
        assert_eq!(found, vec![(v6("2001:db8:64::"), 96)]);
        let none = Nat64Source::none();
        assert!(none
            .discover(Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty());
        let failing = Nat64Source::from_fn(|| Err(io::Error::other("resolver down")));
        assert!(failing.discover(Duration::from_secs(5)).await.is_err());
    }
}
