//! Validating the target a customer names (`host:port`) before anything is sent to
//! an exit. The agent checks again against its own policy after resolving.

use crate::error::ProxyError;
use exitpool_protocol::{TargetHost, MAX_HOST_LEN};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses `host:port` (IPv6 literals in brackets) into a target.
pub fn parse_authority(authority: &str) -> Result<(TargetHost, u16), ProxyError> {
    let bad = |why: &str| ProxyError::BadTarget(format!("{why} (got {:?})", truncate(authority)));
    if authority.is_empty() {
        return Err(bad("empty target"));
    }
    if let Some(c) = authority
        .chars()
        .find(|c| c.is_control() || matches!(c, ' ' | '@' | '%' | '/' | '\\' | '?' | '#'))
    {
        return Err(bad(&format!("character {c:?} is not allowed in a target")));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in IPv6 literal"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("only IPv6 literals go in brackets"));
        }
        (host, port)
    } else {
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if host.contains(':') {
            return Err(bad("IPv6 literals must be in brackets"));
        }
        (host, port)
    };
    let port = parse_port(port).ok_or_else(|| bad("port must be 1-65535"))?;
    Ok((parse_host(host).map_err(|why| bad(&why))?, port))
}

/// Parses a port, 1-65535, decimal digits only.
pub fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|port| *port != 0)
}

/// Parses a bare host: an IPv4 dotted quad, an IPv6 literal (no brackets), or a
/// DNS name. Numeric spellings other than a plain dotted quad (`127.1`,
/// `2130706433`, `0x7f.1`) are refused rather than passed on as names.
pub fn parse_host(host: &str) -> Result<TargetHost, String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.contains(':') {
        return host
            .parse::<Ipv6Addr>()
            .map(|ip| TargetHost::Ip(IpAddr::V6(ip)))
            .map_err(|_| "invalid IPv6 literal".into());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(TargetHost::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_HOST_LEN {
        return Err(format!("host name longer than {MAX_HOST_LEN} characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!("invalid host name label {label:?}"));
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.to_ascii_lowercase().starts_with("0x") {
        return Err("numeric host that is not a dotted-quad IPv4 address".into());
    }
    Ok(TargetHost::Domain(name.to_ascii_lowercase()))
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
