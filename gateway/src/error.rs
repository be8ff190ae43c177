//! Every way a customer request can fail, and the one `match` that maps each to
//! its HTTP status, RFC 9209 `Proxy-Status` error, stable product code and SOCKS5
//! reply. The manual's error table (`docs/errors.md`) follows this file, and
//! `tests/docs.rs` checks it against [`ProxyError::examples`].

use exitpool_protocol::FailureCode;

/// `Retry-After` for a refused connection over `max_connections`: connections
/// end at unknown times, so the customer is told to retry soon.
pub const CONNECTION_RETRY_AFTER_SECS: u64 = 1;

/// A failure answered to a customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Missing or wrong credentials (the same answer for an unknown user and a wrong
    /// password).
    #[error("proxy authentication required")]
    AuthRequired,
    /// The request could not be parsed.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// The target is not a valid `host:port`.
    #[error("invalid target: {0}")]
    BadTarget(String),
    /// A targeting parameter in the credentials is unknown, repeated or invalid.
    #[error("bad targeting parameter `{key}`: {message}")]
    BadTargeting {
        /// The parameter at fault.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// No exit matches the customer's filters.
    #[error("no exit {0}")]
    NoExit(String),
    /// Matching exits exist but all are at capacity.
    #[error("every exit {0} is busy")]
    ExitsBusy(String),
    /// Matching exits exist but every one is cooled after failing.
    #[error("every exit {0} is cooling after failures; retry shortly")]
    ExitsCooling(String),
    /// The gateway, or this account, holds its maximum number of sticky sessions.
    #[error("{0}; retry later or reuse session ids")]
    TooManySessions(String),
    /// The session's pinned exit left and the session is strict.
    #[error("the exit pinned to session `{0}` is gone (sessmode strict)")]
    SessionExitGone(String),
    /// The exit reported a failure for the target.
    #[error("{detail}")]
    Exit {
        /// The agent's code.
        code: FailureCode,
        /// The agent's explanation.
        detail: String,
    },
    /// The exit's tunnel failed while opening the stream.
    #[error("the exit went away: {0}")]
    ExitLost(String),
    /// The exit did not answer in time.
    #[error("the exit did not answer within {0} s")]
    ExitTimeout(u64),
    /// The fleet gateway holding the exit's tunnel could not be reached over
    /// the peer link. The text says why, for the log and tests only: the
    /// customer's answer never names the fleet's gateways or addresses.
    #[error("the gateway holding the exit could not be reached")]
    PeerUnavailable(String),
    /// Too many failed authentications from this address.
    #[error("too many failed authentications from your address; retry in {retry_after} s")]
    AuthRateLimited {
        /// Seconds until the address may try again.
        retry_after: u64,
    },
    /// The gateway is at its global connection cap.
    #[error("the gateway is at its connection limit")]
    GatewayBusy,
    /// Password checks are queued past their deadline (a flood of logins).
    #[error("the gateway is checking too many passwords; retry in a second")]
    AuthBusy,
    /// Too many connections from one address have not authenticated yet.
    #[error("more than {0} connections from your address have not authenticated yet")]
    TooManyUnauthenticated(usize),
    /// The customer opened connections faster than their `requests_per_second`.
    #[error("more than {per_second} requests per second; retry in {retry_after} s")]
    RateLimited {
        /// The customer's limit.
        per_second: u32,
        /// Seconds until a request will be admitted (`Retry-After`).
        retry_after: u64,
    },
    /// The customer already has `max_connections` connections open.
    #[error("{0} connections already open, the most this account may hold")]
    TooManyConnections(u32),
    /// The customer has used up their byte quota.
    #[error("the account's quota of {0} bytes is used up")]
    QuotaExhausted(u64),
    /// One of the control plane's quota periods of the account (or of its
    /// customer) is used up: `period` is `daily`, `monthly` or `lifetime`,
    /// `resets_at` when it renews (Unix seconds; `None` for lifetime).
    #[error("the account's {period} quota is used up; {}", quota_renewal(*.resets_at))]
    QuotaPeriodExhausted {
        /// Which period ran out.
        period: &'static str,
        /// When it resets; `None` for a lifetime quota.
        resets_at: Option<i64>,
    },
    /// The customer asked for a country their account does not allow.
    #[error("country {country} is not allowed for this account (allowed: {allowed})")]
    CountryNotAllowed {
        /// The country asked for.
        country: String,
        /// The account's countries, comma-separated.
        allowed: String,
    },
    /// The account may not connect from this address (the control plane's
    /// `allow_ips`): credentials were right, the place is not.
    #[error("this account may not connect from {0}")]
    SourceNotAllowed(std::net::IpAddr),
    /// The target is one of the account's blocked domains or under one.
    #[error("{0} and its subdomains are blocked for this account")]
    DomainBlocked(String),
}

/// How a [`ProxyError`] is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presentation {
    /// HTTP status code.
    pub status: u16,
    /// RFC 9209 `Proxy-Status` error type, if one applies.
    pub proxy_status: Option<&'static str>,
    /// Stable product code, in `X-Exitpool-Error` and the JSON body.
    pub code: &'static str,
    /// SOCKS5 reply code (RFC 1928 section 6).
    pub socks_reply: u8,
}

/// SOCKS5 reply codes.
pub mod socks_reply {
    /// General SOCKS server failure.
    pub const GENERAL_FAILURE: u8 = 0x01;
    /// Connection not allowed by ruleset.
    pub const NOT_ALLOWED: u8 = 0x02;
    /// Network unreachable.
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    /// Host unreachable.
    pub const HOST_UNREACHABLE: u8 = 0x04;
    /// Connection refused.
    pub const CONNECTION_REFUSED: u8 = 0x05;
    /// TTL expired (used for timeouts).
    pub const TTL_EXPIRED: u8 = 0x06;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    /// Address type not supported.
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// One row of [`PRESENTATIONS`].
const fn row(
    status: u16,
    proxy_status: &'static str,
    code: &'static str,
    socks: u8,
) -> Presentation {
    Presentation {
        status,
        proxy_status: if proxy_status.is_empty() {
            None
        } else {
            Some(proxy_status)
        },
        code,
        socks_reply: socks,
    }
}

/// Every product code with its HTTP status, RFC 9209 `Proxy-Status` error
/// (empty: none) and SOCKS5 reply: the table `docs/errors.md` shows.
pub const PRESENTATIONS: &[Presentation] = {
    use socks_reply::*;
    const REQUEST_ERROR: &str = "http_request_error";
    const DENIED: &str = "http_request_denied";
    const UNAVAILABLE: &str = "destination_unavailable";
    const INTERNAL: &str = "proxy_internal_error";
    &[
        row(407, "", "auth_required", GENERAL_FAILURE),
        row(400, REQUEST_ERROR, "bad_request", GENERAL_FAILURE),
        row(400, REQUEST_ERROR, "bad_target", ADDRESS_TYPE_NOT_SUPPORTED),
        row(400, REQUEST_ERROR, "bad_targeting", GENERAL_FAILURE),
        row(502, UNAVAILABLE, "no_exit", NETWORK_UNREACHABLE),
        row(502, UNAVAILABLE, "exits_busy", GENERAL_FAILURE),
        row(502, UNAVAILABLE, "exits_cooling", GENERAL_FAILURE),
        row(429, INTERNAL, "session_limit", GENERAL_FAILURE),
        row(502, UNAVAILABLE, "session_exit_gone", NETWORK_UNREACHABLE),
        row(502, UNAVAILABLE, "exit_lost", GENERAL_FAILURE),
        row(502, UNAVAILABLE, "peer_unavailable", GENERAL_FAILURE),
        row(429, DENIED, "rate_limited", GENERAL_FAILURE),
        row(429, DENIED, "connection_limit", GENERAL_FAILURE),
        row(403, DENIED, "quota_exhausted", NOT_ALLOWED),
        row(403, DENIED, "country_not_allowed", NOT_ALLOWED),
        row(403, DENIED, "source_not_allowed", NOT_ALLOWED),
        row(403, DENIED, "domain_blocked", NOT_ALLOWED),
        row(504, "connection_timeout", "exit_timeout", TTL_EXPIRED),
        row(429, DENIED, "auth_rate_limited", GENERAL_FAILURE),
        row(503, INTERNAL, "gateway_busy", GENERAL_FAILURE),
        row(503, INTERNAL, "auth_busy", GENERAL_FAILURE),
        row(429, DENIED, "too_many_unauthenticated", GENERAL_FAILURE),
        // What the exit answered (`Failed{code}`).
        row(502, "dns_error", "dns_error", HOST_UNREACHABLE),
        row(
            403,
            "destination_ip_prohibited",
            "destination_prohibited",
            NOT_ALLOWED,
        ),
        row(
            403,
            "destination_ip_prohibited",
            "port_prohibited",
            NOT_ALLOWED,
        ),
        row(
            502,
            "connection_refused",
            "connection_refused",
            CONNECTION_REFUSED,
        ),
        row(504, "connection_timeout", "connection_timeout", TTL_EXPIRED),
        row(
            502,
            "destination_ip_unroutable",
            "network_unreachable",
            NETWORK_UNREACHABLE,
        ),
        row(502, UNAVAILABLE, "host_unreachable", HOST_UNREACHABLE),
        row(502, UNAVAILABLE, "exit_unavailable", GENERAL_FAILURE),
        row(502, INTERNAL, "exit_error", GENERAL_FAILURE),
    ]
};

impl ProxyError {
    /// The single mapping from failure to status, `Proxy-Status`, code and
    /// SOCKS reply: the failure's product code ([`ProxyError::code`]), looked
    /// up in [`PRESENTATIONS`].
    pub fn presentation(&self) -> Presentation {
        let code = self.code();
        PRESENTATIONS
            .iter()
            .find(|row| row.code == code)
            .copied()
            // Unreachable: a test checks every example's code has a row.
            .unwrap_or(Presentation {
                status: 502,
                proxy_status: Some("proxy_internal_error"),
                code,
                socks_reply: socks_reply::GENERAL_FAILURE,
            })
    }

    /// The stable product code, in `X-Exitpool-Error`, the JSON body and the
    /// access line.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::AuthRequired => "auth_required",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadTarget(_) => "bad_target",
            ProxyError::BadTargeting { .. } => "bad_targeting",
            ProxyError::NoExit(_) => "no_exit",
            ProxyError::ExitsBusy(_) => "exits_busy",
            ProxyError::ExitsCooling(_) => "exits_cooling",
            ProxyError::TooManySessions(_) => "session_limit",
            ProxyError::SessionExitGone(_) => "session_exit_gone",
            ProxyError::ExitLost(_) => "exit_lost",
            ProxyError::PeerUnavailable(_) => "peer_unavailable",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::TooManyConnections(_) => "connection_limit",
            ProxyError::QuotaExhausted(_) | ProxyError::QuotaPeriodExhausted { .. } => {
                "quota_exhausted"
            }
            ProxyError::CountryNotAllowed { .. } => "country_not_allowed",
            ProxyError::SourceNotAllowed(_) => "source_not_allowed",
            ProxyError::DomainBlocked(_) => "domain_blocked",
            ProxyError::ExitTimeout(_) => "exit_timeout",
            ProxyError::AuthRateLimited { .. } => "auth_rate_limited",
            ProxyError::GatewayBusy => "gateway_busy",
            ProxyError::AuthBusy => "auth_busy",
            ProxyError::TooManyUnauthenticated(_) => "too_many_unauthenticated",
            ProxyError::Exit { code, .. } => match code {
                FailureCode::DnsError => "dns_error",
                FailureCode::DestinationIpProhibited => "destination_prohibited",
                FailureCode::DestinationPortProhibited => "port_prohibited",
                FailureCode::ConnectionRefused => "connection_refused",
                FailureCode::ConnectionTimeout => "connection_timeout",
                FailureCode::NetworkUnreachable => "network_unreachable",
                FailureCode::HostUnreachable => "host_unreachable",
                FailureCode::AgentUnavailable => "exit_unavailable",
                FailureCode::BadRequest => "bad_target",
                FailureCode::Other => "exit_error",
            },
        }
    }

    /// Why another exit may succeed where this one failed: the failure was the
    /// exit's own (its tunnel lost, no answer, unavailable), not the target's.
    /// The label of `exitpool_open_retries_total`.
    pub fn exit_fault(&self) -> Option<&'static str> {
        match self {
            ProxyError::ExitLost(_) => Some("exit_lost"),
            ProxyError::ExitTimeout(_) => Some("exit_timeout"),
            ProxyError::PeerUnavailable(_) => Some("peer_unavailable"),
            ProxyError::Exit {
                code: FailureCode::AgentUnavailable,
                ..
            } => Some("exit_unavailable"),
            _ => None,
        }
    }

    /// Seconds for a `Retry-After` header, for the limits a customer can wait out.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after, .. } => Some(*retry_after),
            ProxyError::TooManyConnections(_) => Some(CONNECTION_RETRY_AFTER_SECS),
            ProxyError::GatewayBusy
            | ProxyError::AuthBusy
            | ProxyError::TooManyUnauthenticated(_) => Some(1),
            ProxyError::AuthRateLimited { retry_after } => Some(*retry_after),
            ProxyError::QuotaPeriodExhausted {
                resets_at: Some(at),
                ..
            } => Some((at - exitpool_control::period::now()).max(1) as u64),
            _ => None,
        }
    }

    /// The `Proxy-Status` header value, e.g.
    /// `exitpool; error=connection_refused; details="..."`.
    pub fn proxy_status_header(&self) -> Option<String> {
        let kind = self.presentation().proxy_status?;
        Some(format!(
            "exitpool; error={kind}; details={}",
            quoted_string(&self.to_string())
        ))
    }

    /// JSON body for HTTP error responses.
    pub fn json_body(&self) -> String {
        let presentation = self.presentation();
        let mut body = serde_json::json!({
            "error": presentation.code,
            "status": presentation.status,
            "message": self.to_string(),
        });
        if let Some(seconds) = self.retry_after() {
            body["retry_after"] = seconds.into();
        }
        body.to_string()
    }
}

/// The end of a quota-period refusal's message: when the period renews.
fn quota_renewal(resets_at: Option<i64>) -> String {
    match resets_at {
        Some(at) => format!("it resets at {}", exitpool_control::period::rfc3339(at)),
        None => "a lifetime quota does not reset".into(),
    }
}

impl ProxyError {
    /// One value of every variant, and of [`ProxyError::Exit`] with every exit
    /// [`FailureCode`]: what a check over every presentation iterates (the
    /// manual's error table, `tests/docs.rs`). A test below stops compiling
    /// when a variant is added without a place here.
    pub fn examples() -> Vec<ProxyError> {
        let text = || String::from("example");
        let mut all = vec![
            ProxyError::AuthRequired,
            ProxyError::BadRequest(text()),
            ProxyError::BadTarget(text()),
            ProxyError::BadTargeting {
                key: text(),
                message: text(),
            },
            ProxyError::NoExit(text()),
            ProxyError::ExitsBusy(text()),
            ProxyError::ExitsCooling(text()),
            ProxyError::TooManySessions(text()),
            ProxyError::SessionExitGone(text()),
            ProxyError::ExitLost(text()),
            ProxyError::ExitTimeout(15),
            ProxyError::PeerUnavailable(text()),
            ProxyError::AuthRateLimited { retry_after: 1 },
            ProxyError::GatewayBusy,
            ProxyError::AuthBusy,
            ProxyError::TooManyUnauthenticated(64),
            ProxyError::RateLimited {
                per_second: 1,
                retry_after: 1,
            },
            ProxyError::TooManyConnections(1),
            ProxyError::QuotaExhausted(1),
            ProxyError::QuotaPeriodExhausted {
                period: "lifetime",
                resets_at: None,
            },
            ProxyError::CountryNotAllowed {
                country: text(),
                allowed: text(),
            },
            ProxyError::SourceNotAllowed(std::net::Ipv4Addr::LOCALHOST.into()),
            ProxyError::DomainBlocked(text()),
        ];
        all.extend(
            [
                FailureCode::DnsError,
                FailureCode::DestinationIpProhibited,
                FailureCode::DestinationPortProhibited,
                FailureCode::ConnectionRefused,
                FailureCode::ConnectionTimeout,
                FailureCode::NetworkUnreachable,
                FailureCode::HostUnreachable,
                FailureCode::AgentUnavailable,
                FailureCode::BadRequest,
                FailureCode::Other,
            ]
            .map(|code| ProxyError::Exit {
                code,
                detail: text(),
            }),
        );
        all
    }
}

/// An RFC 8941 sf-string: printable ASCII, with `"` and `\` escaped.
fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_is_a_valid_structured_field() {
        let error = ProxyError::Exit {
            code: FailureCode::ConnectionRefused,
            detail: "refused \"x\"\n".into(),
        };
        assert_eq!(
            error.proxy_status_header().unwrap(),
            r#"exitpool; error=connection_refused; details="refused \"x\"?""#
        );
        assert_eq!(error.presentation().status, 502);
    }

    #[test]
    fn examples_hold_every_variant_and_exit_code_once() {
        // No wildcard arm: a new variant (or exit failure code) stops this
        // compiling until it has a place here. Give it the next number, raise
        // PLACES and add a value to `examples()` in the same order.
        const PLACES: usize = 33;
        fn place(error: &ProxyError) -> usize {
            match error {
                ProxyError::AuthRequired => 0,
                ProxyError::BadRequest(_) => 1,
                ProxyError::BadTarget(_) => 2,
                ProxyError::BadTargeting { .. } => 3,
                ProxyError::NoExit(_) => 4,
                ProxyError::ExitsBusy(_) => 5,
                ProxyError::ExitsCooling(_) => 6,
                ProxyError::TooManySessions(_) => 7,
                ProxyError::SessionExitGone(_) => 8,
                ProxyError::ExitLost(_) => 9,
                ProxyError::ExitTimeout(_) => 10,
                ProxyError::PeerUnavailable(_) => 11,
                ProxyError::AuthRateLimited { .. } => 12,
                ProxyError::GatewayBusy => 13,
                ProxyError::AuthBusy => 14,
                ProxyError::TooManyUnauthenticated(_) => 15,
                ProxyError::RateLimited { .. } => 16,
                ProxyError::TooManyConnections(_) => 17,
                ProxyError::QuotaExhausted(_) => 18,
                ProxyError::QuotaPeriodExhausted { .. } => 19,
                ProxyError::CountryNotAllowed { .. } => 20,
                ProxyError::SourceNotAllowed(_) => 21,
                ProxyError::DomainBlocked(_) => 22,
                ProxyError::Exit { code, .. } => {
                    23 + match code {
                        FailureCode::DnsError => 0,
                        FailureCode::DestinationIpProhibited => 1,
                        FailureCode::DestinationPortProhibited => 2,
                        FailureCode::ConnectionRefused => 3,
                        FailureCode::ConnectionTimeout => 4,
                        FailureCode::NetworkUnreachable => 5,
                        FailureCode::HostUnreachable => 6,
                        FailureCode::AgentUnavailable => 7,
                        FailureCode::BadRequest => 8,
                        FailureCode::Other => 9,
                    }
                }
            }
        }
        let places: Vec<usize> = ProxyError::examples().iter().map(place).collect();
        assert_eq!(places, (0..PLACES).collect::<Vec<_>>());
    }

    #[test]
    fn every_code_has_one_row_and_every_row_a_failure() {
        for (index, row) in PRESENTATIONS.iter().enumerate() {
            let rows = PRESENTATIONS.iter().filter(|other| other.code == row.code);
            assert_eq!(rows.count(), 1, "{} has more than one row", row.code);
            let shown = ProxyError::examples()
                .iter()
                .any(|error| error.code() == row.code);
            assert!(shown, "row {index} ({}) is no failure's", row.code);
        }
        for error in ProxyError::examples() {
            let found = PRESENTATIONS.iter().find(|row| row.code == error.code());
            assert_eq!(found, Some(&error.presentation()), "{error:?}");
        }
    }

    #[test]
    fn auth_has_no_proxy_status() {
        assert_eq!(ProxyError::AuthRequired.proxy_status_header(), None);
        assert_eq!(ProxyError::AuthRequired.presentation().status, 407);
    }
}
