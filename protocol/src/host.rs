//! The one grammar for a target host, shared by both ends: the gateway checks
//! what a customer names (`CONNECT host:port`, a SOCKS5 name, an absolute URI)
//! before anything is sent to an exit, and the agent parses the name it is sent
//! again before its resolver sees it. One parser means the two can never
//! disagree about what is a name and what is an address.
//!
//! Pure text in, [`TargetHost`] out: no I/O, no resolver. What an address may
//! reach (loopback, private ranges, the volunteer's own network) is the agent's
//! exit policy, applied after resolving.

use crate::messages::{TargetHost, MAX_HOST_LEN};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS label accepted by [`parse_host`] (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a customer's target host was refused before any DNS lookup. The text is
/// safe to show to the customer: control characters are escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing was given.
    #[error("empty host")]
    Empty,
    /// Longer than any DNS name or IP literal can be.
    #[error("host is {len} characters long; a DNS name has at most 253")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// A character that belongs in no host name or IP literal.
    #[error(
        "invalid character {ch:?} at byte {position} in host: names use letters, digits, '-', '_' and '.'"
    )]
    BadCharacter {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        position: usize,
    },
    /// `[` without `]` or the other way round.
    #[error("unbalanced brackets in host: write an IPv6 address as [2001:db8::1] or 2001:db8::1")]
    UnbalancedBrackets,
    /// An IPv6 literal with a `%zone` suffix; zones name the exit's own links.
    #[error("IPv6 zone ids (the '%' part) are not allowed in a target host")]
    ZoneId,
    /// Contains ':' (or brackets) but is not an IPv6 address.
    #[error("host is not a valid IPv6 address (a port does not belong in the host)")]
    InvalidIpv6,
    /// Made of digits and dots but not exactly `a.b.c.d` with parts 0-255 and no
    /// leading zeros; resolvers read such spellings in surprising ways.
    #[error(
        "numeric host is not a strict IPv4 address: write four decimal parts 0-255 without leading zeros or a trailing dot, e.g. 192.0.2.1"
    )]
    NotDottedQuad,
    /// The last label is a number (`example.123`, `0x7f000001`); some
    /// resolvers and URL parsers would read the host as an IPv4 address.
    #[error(
        "host name ends in a numeric label, which may be read as an IPv4 address: write IPv4 as four decimal parts, e.g. 192.0.2.1"
    )]
    NumericLastLabel,
    /// Two dots in a row, a leading dot, or only a dot.
    #[error("host name has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    /// A label longer than 63 characters.
    #[error("host name has a label of {len} characters; the limit is 63")]
    LabelTooLong {
        /// Length of the offending label.
        len: usize,
    },
    /// A label that starts or ends with '-'.
    #[error("host name has a label that starts or ends with '-'")]
    HyphenAtLabelEdge,
}

/// Parses the host of a customer's target, strictly, so that what the policy
/// checks is what the resolver and the dialler see.
///
/// Accepted:
/// - IPv4 as exactly four decimal parts 0-255 without leading zeros (`192.0.2.1`).
/// - IPv6 in any form `std` parses, bare (`2001:db8::1`) or in brackets
///   (`[2001:db8::1]`), without a zone id. The address is returned as written;
///   the agent's exit policy handles the IPv4-mapped form.
/// - DNS names of letters, digits, `-` and `_`, labels of 1-63 characters not
///   starting or ending with `-`, at most 253 characters, an optional single
///   trailing dot (removed), returned lowercased. Non-ASCII names must come in
///   their `xn--` form.
///
/// Refused: anything else, and in particular every numeric spelling that is not
/// a strict dotted quad (`0177.0.0.1`, `127.1`, `2130706433`, `0x7f000001`,
/// `127.0.0.1.`) and every name whose last label is numeric: such text must
/// never reach a resolver that could turn it into an address.
///
/// Names that only resolve inside the volunteer's network (`localhost`,
/// `nas.local`, a single label completed by a search domain) are valid syntax
/// and pass here; what protects the owner is the agent's exit policy, run on
/// every address they resolve to.
pub fn parse_host(host: &str) -> Result<TargetHost, HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    // The input is customer-controlled: bound the work before looking further.
    // 254 leaves room for a trailing dot; IPv6 literals are far shorter.
    if host.len() > MAX_HOST_LEN + 1 {
        return Err(HostError::TooLong { len: host.len() });
    }
    check_characters(host)?;
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(inner) => parse_ipv6(inner),
            // "[::1]:443": a port glued on, not a missing bracket.
            None if inner.contains(']') => Err(HostError::InvalidIpv6),
            None => Err(HostError::UnbalancedBrackets),
        };
    }
    if host.contains(']') {
        return Err(HostError::UnbalancedBrackets);
    }
    if host.contains(':') {
        return parse_ipv6(host);
    }
    if let Some((position, ch)) = host
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(HostError::BadCharacter { ch, position });
    }
    if let Some(v4) = parse_dotted_quad(host) {
        return Ok(TargetHost::Ip(IpAddr::V4(v4)));
    }
    let has_digit = host.bytes().any(|b| b.is_ascii_digit());
    if has_digit && host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(HostError::NotDottedQuad);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong { len: name.len() });
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong { len: label.len() });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::HyphenAtLabelEdge);
        }
        last = label;
    }
    if is_numeric_label(last) {
        return Err(HostError::NumericLastLabel);
    }
    Ok(TargetHost::Domain(name.to_ascii_lowercase()))
}

/// Whitespace, CR/LF, NUL, '@', '/' and friends belong in no host or port: say
/// which one it was before deciding between IPv6 and a name.
fn check_characters(text: &str) -> Result<(), HostError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:[]%".contains(c);
    match text.char_indices().find(|&(_, c)| !allowed(c)) {
        Some((position, ch)) => Err(HostError::BadCharacter { ch, position }),
        None => Ok(()),
    }
}

/// An IPv6 literal without brackets. Zone ids are refused: they select one of
/// the exit's own interfaces, which only makes sense for link-local targets.
fn parse_ipv6(text: &str) -> Result<TargetHost, HostError> {
    if text.contains('%') {
        return Err(HostError::ZoneId);
    }
    text.parse::<Ipv6Addr>()
        .map(|v6| TargetHost::Ip(IpAddr::V6(v6)))
        .map_err(|_| HostError::InvalidIpv6)
}

/// Exactly four decimal parts, each 0-255 with no leading zero. Written out by
/// hand rather than trusting any parser's idea of "IPv4", because the point is
/// to accept only the one spelling every resolver agrees on.
fn parse_dotted_quad(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let valid = (1..=3).contains(&part.len())
            && part.bytes().all(|b| b.is_ascii_digit())
            && !(part.len() > 1 && part.starts_with('0'));
        if !valid {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// A label that an IPv4 number parser (inet_aton, the WHATWG URL parser) would
/// take as a number: all decimal digits, or `0x` followed by hex digits.
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(rest) => rest.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Why a `host:port` target was refused. The text is safe to show to the
/// customer: control characters are escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No `:port` after the host (or something other than `:` after `]`).
    #[error("expected host:port")]
    MissingPort,
    /// An IPv6 literal outside brackets: its last group cannot be told from a port.
    #[error("IPv6 literals must be in brackets, e.g. [2001:db8::1]:443")]
    UnbracketedIpv6,
    /// The port is not a decimal number 1-65535.
    #[error("port must be 1-65535")]
    BadPort,
    /// The host part is refused.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// Parses `host:port` (IPv6 literals in brackets) into a target, with the host
/// grammar of [`parse_host`] and the port of [`parse_port`].
pub fn parse_authority(authority: &str) -> Result<(TargetHost, u16), AuthorityError> {
    if authority.is_empty() {
        return Err(HostError::Empty.into());
    }
    // A character that belongs in no authority is named first, wherever it is
    // (a CR/LF in the port is an injection attempt, not a bad port number).
    check_characters(authority)?;
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(HostError::UnbalancedBrackets)?;
        let (host, after) = authority.split_at(end + 1);
        let port = after.strip_prefix(':').ok_or(AuthorityError::MissingPort)?;
        (host, port)
    } else {
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or(AuthorityError::MissingPort)?;
        if host.contains(':') {
            return Err(AuthorityError::UnbracketedIpv6);
        }
        (host, port)
    };
    let port = parse_port(port).ok_or(AuthorityError::BadPort)?;
    Ok((parse_host(host)?, port))
}

/// Parses a port, 1-65535, decimal digits only (no sign, no spaces, no hex).
pub fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|port| *port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_names_and_literals() {
        assert_eq!(
            parse_authority("Example.COM:443").unwrap(),
            (TargetHost::Domain("example.com".into()), 443)
        );
        assert_eq!(
            parse_authority("[::1]:8080").unwrap(),
            (TargetHost::Ip("::1".parse().unwrap()), 8080)
        );
        assert_eq!(
            parse_authority("10.0.0.1:1").unwrap(),
            (TargetHost::Ip("10.0.0.1".parse().unwrap()), 1)
        );
    }

    #[test]
    fn refuses_malformed_targets() {
        for bad in [
            "",
            "example.com",
            "example.com:0",
            "example.com:65536",
            "example.com:+1",
            "[1.2.3.4]:80",
            "[example.com]:80",
            "::1:80",
            "[::1]80",
            "[::1",
            "exa mple.com:80",
            "a@b.com:80",
            "a%0d.com:80",
            "a\r\nb:80",
            "a\0b:80",
            "127.1:80",
            "2130706433:80",
            "0x7f000001:80",
            "-a.com:80",
            "a..com:80",
            "[fe80::1%eth0]:80",
            "host/path:80",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// The gateway and the agent once had a grammar each, and they disagreed on
    /// a last label that starts with `0x` but is no hex number (the gateway
    /// refused `0xg`, the agent accepted it). One parser now decides for both:
    /// a label is numeric only when an IPv4 number parser (inet_aton, the WHATWG
    /// URL parser) would read it as a number, and `0x` alone is such a number.
    #[test]
    fn a_last_label_starting_with_0x_is_numeric_only_when_it_is_hex() {
        for text in ["0x", "0X", "foo.0x", "foo.0x7f", "foo.0XfF"] {
            assert_eq!(
                parse_host(text),
                Err(HostError::NumericLastLabel),
                "{text:?}"
            );
            assert_eq!(
                parse_authority(&format!("{text}:80")),
                Err(AuthorityError::Host(HostError::NumericLastLabel)),
                "{text:?}"
            );
        }
        for text in ["0xg", "foo.0xg", "foo.0x7g", "foo.0x-a"] {
            let expected = TargetHost::Domain(text.to_owned());
            assert_eq!(parse_host(text), Ok(expected.clone()), "{text:?}");
            assert_eq!(
                parse_authority(&format!("{text}:80")),
                Ok((expected, 80)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn authority_errors_say_what_is_wrong() {
        let cases: &[(&str, AuthorityError)] = &[
            ("example.com", AuthorityError::MissingPort),
            ("[::1]80", AuthorityError::MissingPort),
            ("[::1]", AuthorityError::MissingPort),
            ("::1:80", AuthorityError::UnbracketedIpv6),
            ("example.com:0", AuthorityError::BadPort),
            ("example.com:65536", AuthorityError::BadPort),
            ("example.com:", AuthorityError::BadPort),
            ("", AuthorityError::Host(HostError::Empty)),
            (":80", AuthorityError::Host(HostError::Empty)),
            ("[::1", AuthorityError::Host(HostError::UnbalancedBrackets)),
            ("[1.2.3.4]:80", AuthorityError::Host(HostError::InvalidIpv6)),
            ("[fe80::1%eth0]:80", AuthorityError::Host(HostError::ZoneId)),
            (
                "example.com:443\r\n",
                AuthorityError::Host(HostError::BadCharacter {
                    ch: '\r',
                    position: 15,
                }),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_authority(text).as_ref(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn ports_are_decimal_1_to_65535() {
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["", "0", "00000", "65536", "+80", " 80", "0x50", "999999"] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    fn name(s: &str) -> Result<TargetHost, HostError> {
        Ok(TargetHost::Domain(s.to_owned()))
    }

    #[test]
    fn parse_host_accepts_ip_literals() {
        for text in [
            "192.0.2.1",
            "8.8.8.8",
            "0.0.0.0",
            "255.255.255.255",
            "127.0.0.1",
        ] {
            assert_eq!(parse_host(text), Ok(TargetHost::Ip(ip(text))), "{text}");
        }
        for text in ["::1", "2001:db8::1", "::ffff:127.0.0.1", "2606:4700::1111"] {
            assert_eq!(parse_host(text), Ok(TargetHost::Ip(ip(text))), "{text}");
            let bracketed = format!("[{text}]");
            assert_eq!(parse_host(&bracketed), Ok(TargetHost::Ip(ip(text))));
        }
    }

    #[test]
    fn parse_host_refuses_odd_numeric_spellings() {
        for text in [
            "0177.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "127.0.0.1.",
            "127.0.0.01",
            "127.000.0.1",
            "256.0.0.1",
            "1.2.3.4.5",
            "1.2.3",
            "999.999.999.999",
            "0",
            "1..2.3",
            "01.02.03.04",
        ] {
            assert_eq!(parse_host(text), Err(HostError::NotDottedQuad), "{text:?}");
        }
        for text in [
            "0x7f000001",
            "0X7F000001",
            "0x7f.0.0.1",
            "0x7f.0x0.0x0.0x1",
            "127.0.0.0x1",
            "0x",
            "example.123",
            "example.com.1",
            "1.2.3.4a.5",
            "foo.0x7f.",
        ] {
            assert_eq!(
                parse_host(text),
                Err(HostError::NumericLastLabel),
                "{text:?}"
            );
        }
    }

    #[test]
    fn parse_host_refuses_bad_ipv6() {
        assert_eq!(parse_host("fe80::1%eth0"), Err(HostError::ZoneId));
        assert_eq!(parse_host("[fe80::1%25eth0]"), Err(HostError::ZoneId));
        assert_eq!(parse_host("[::1"), Err(HostError::UnbalancedBrackets));
        assert_eq!(parse_host("::1]"), Err(HostError::UnbalancedBrackets));
        assert_eq!(parse_host("[example.com]"), Err(HostError::InvalidIpv6));
        assert_eq!(parse_host("[127.0.0.1]"), Err(HostError::InvalidIpv6));
        assert_eq!(parse_host("[]"), Err(HostError::InvalidIpv6));
        for text in [
            "1::2::3",
            "example.com:443",
            "127.0.0.1:80",
            "::ffff:0177.0.0.1",
            "::ffff:127.1",
            ":::",
            "[::1]:443",
        ] {
            assert_eq!(parse_host(text), Err(HostError::InvalidIpv6), "{text:?}");
        }
    }

    #[test]
    fn parse_host_accepts_names() {
        assert_eq!(parse_host("example.com"), name("example.com"));
        assert_eq!(parse_host("Example.COM"), name("example.com"));
        assert_eq!(parse_host("example.com."), name("example.com"));
        assert_eq!(parse_host("localhost"), name("localhost"));
        assert_eq!(parse_host("_dmarc.example.com"), name("_dmarc.example.com"));
        assert_eq!(parse_host("a-b.c_d.e"), name("a-b.c_d.e"));
        assert_eq!(
            parse_host("xn--bcher-kva.example"),
            name("xn--bcher-kva.example")
        );
        assert_eq!(parse_host("123.example.com"), name("123.example.com"));
        assert_eq!(parse_host("0x7f.example.com"), name("0x7f.example.com"));
        assert_eq!(parse_host("1.2.3.4a"), name("1.2.3.4a"));
        assert_eq!(parse_host("0xg"), name("0xg"));
        assert_eq!(parse_host("1e100.net"), name("1e100.net"));
        let label63 = "a".repeat(63);
        assert_eq!(parse_host(&label63), name(&label63));
        // 253 characters: four labels of 63 and dots, minus one.
        let long = format!("{l}.{l}.{l}.{}", "a".repeat(61), l = label63);
        assert_eq!(long.len(), 253);
        assert_eq!(parse_host(&long), name(&long));
        assert_eq!(parse_host(&format!("{long}.")), name(&long));
    }

    #[test]
    fn parse_host_refuses_bad_names() {
        assert_eq!(parse_host(""), Err(HostError::Empty));
        assert_eq!(parse_host("."), Err(HostError::EmptyLabel));
        assert_eq!(parse_host(".."), Err(HostError::EmptyLabel));
        assert_eq!(parse_host(".example.com"), Err(HostError::EmptyLabel));
        assert_eq!(parse_host("example..com"), Err(HostError::EmptyLabel));
        assert_eq!(parse_host("example.com.."), Err(HostError::EmptyLabel));
        assert_eq!(
            parse_host("-example.com"),
            Err(HostError::HyphenAtLabelEdge)
        );
        assert_eq!(
            parse_host("example-.com"),
            Err(HostError::HyphenAtLabelEdge)
        );
        assert_eq!(
            parse_host("example.-com"),
            Err(HostError::HyphenAtLabelEdge)
        );
        assert_eq!(
            parse_host(&format!("{}.com", "a".repeat(64))),
            Err(HostError::LabelTooLong { len: 64 })
        );
        let label63 = "a".repeat(63);
        let too_long = format!("{l}.{l}.{l}.{}", "a".repeat(62), l = label63);
        assert_eq!(parse_host(&too_long), Err(HostError::TooLong { len: 254 }));
        assert_eq!(
            parse_host(&format!("{too_long}.")),
            Err(HostError::TooLong { len: 255 })
        );
        assert_eq!(
            parse_host(&"a".repeat(10_000)),
            Err(HostError::TooLong { len: 10_000 })
        );
        let bad: &[(&str, char, usize)] = &[
            (" example.com", ' ', 0),
            ("example.com ", ' ', 11),
            ("exa mple.com", ' ', 3),
            ("example.com\r\nHost: evil", '\r', 11),
            ("example.com\n", '\n', 11),
            ("example.com\0.evil", '\0', 11),
            ("user@example.com", '@', 4),
            ("example.com%00", '%', 11),
            ("example.com/path", '/', 11),
            ("example.com\\", '\\', 11),
            ("exam*ple.com", '*', 4),
            ("bücher.example", 'ü', 1),
            ("example.com\t", '\t', 11),
            ("::1\n", '\n', 3),
            (" ::1", ' ', 0),
            ("[::1] ", ' ', 5),
            ("example.com:443\r\n", '\r', 15),
        ];
        for &(text, ch, position) in bad {
            assert_eq!(
                parse_host(text),
                Err(HostError::BadCharacter { ch, position }),
                "{text:?}"
            );
        }
        let msg = parse_host("a\r\nb").unwrap_err().to_string();
        assert!(msg.contains("'\\r'"), "control characters escaped: {msg}");
        assert!(!msg.contains('\r'), "{msg}");
    }
}
