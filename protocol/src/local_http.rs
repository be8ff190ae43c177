//! What a local HTTP endpoint (the gateway's admin port, the agent's status
//! port) refuses so a web page in the owner's browser cannot use it: a `Host`
//! that is not this machine's (DNS rebinding: a page's own name pointed at
//! 127.0.0.1) and any request that says it comes from a page (`Origin`, or
//! `Sec-Fetch-Site: cross-site`). Pure: callers pass header values.

/// Whether `host` (a `Host` header: name or IP, optional port) names this
/// endpoint: an IP literal, `localhost`, or one of `names`.
pub fn is_own_host(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((literal, _)) => return literal.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// Whether a request carries what browsers add on a web page's behalf: an
/// `Origin` header (`has_origin`), or `Sec-Fetch-Site: cross-site`.
pub fn from_a_web_page(has_origin: bool, sec_fetch_site: Option<&[u8]>) -> bool {
    has_origin || sec_fetch_site.is_some_and(|site| site.eq_ignore_ascii_case(b"cross-site"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machines_names_are_its_own() {
        let names = ["gw.example.net".to_owned()];
        for own in [
            "127.0.0.1:9090",
            "[::1]:9090",
            "localhost",
            "LOCALHOST:1",
            "gw.example.net",
        ] {
            assert!(is_own_host(own, &names), "{own}");
        }
        for foreign in [
            "evil.example",
            "evil.example:9090",
            "[evil]",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_own_host(foreign, &names), "{foreign}");
        }
    }

    #[test]
    fn origin_or_a_cross_site_fetch_is_a_web_page() {
        assert!(from_a_web_page(true, None));
        assert!(from_a_web_page(false, Some(b"Cross-Site")));
        assert!(!from_a_web_page(false, Some(b"none")));
        assert!(!from_a_web_page(false, None));
    }
}
