//! Dialling a target for the gateway: resolve the name here (so targeting is
//! honest), check every resolved address against the exit policy, and connect to
//! exactly an address that was checked (no second lookup, so no DNS rebinding).
//!
//! A failure's `detail` reaches the customer (the gateway puts it in
//! `Proxy-Status` and the error body), so it is one of a few fixed texts: never
//! a resolved address, a refused range or anything else the volunteer's DNS or
//! network said, which would turn the exit into a probe of the volunteer's home.

use crate::policy::{ExitPolicy, PolicyError};
use exitpool_protocol::host::parse_host;
use exitpool_protocol::{FailureCode, OpenRequest, TargetHost};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

/// A dial failure as it travels back to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError {
    /// The closed-set code the gateway maps to a customer answer.
    pub code: FailureCode,
    /// A short explanation for the customer: a fixed text that names no
    /// address (see the module doc).
    pub detail: String,
}

impl DialError {
    fn new(code: FailureCode, detail: &str) -> Self {
        DialError {
            code,
            detail: detail.to_owned(),
        }
    }
}

impl From<PolicyError> for DialError {
    fn from(error: PolicyError) -> Self {
        match error {
            PolicyError::AddressProhibited { .. } => DialError::new(
                FailureCode::DestinationIpProhibited,
                "the exit's policy refuses this destination address",
            ),
            PolicyError::PortProhibited { .. } => DialError::new(
                FailureCode::DestinationPortProhibited,
                "the exit's policy refuses this destination port",
            ),
        }
    }
}

/// Resolves, checks and connects, within `connect_timeout` overall (the agent's
/// [`crate::AgentConfig::connect_timeout`]). `bind` is the local address for the
/// outgoing socket (`--bind`). Returns the connection and the address it
/// reached (for `Opened`, without asking the socket again).
pub async fn dial(
    request: &OpenRequest,
    policy: &ExitPolicy,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let deadline = Instant::now() + connect_timeout;
    policy.check_port(request.port)?;
    let addresses = resolve(&request.host, request.port, deadline).await?;
    // Every address must pass: a name that resolves to one public and one private
    // address is refused whole, not dialled at its "good" half.
    for address in &addresses {
        policy.check_ip(address.ip())?;
    }
    let candidates: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|address| bind.is_none_or(|bind| bind.is_ipv4() == address.is_ipv4()))
        .collect();
    if candidates.is_empty() {
        return Err(DialError::new(
            FailureCode::NetworkUnreachable,
            "the target has no address of this exit's IP family",
        ));
    }
    let mut last_error = None;
    for address in candidates {
        match timeout_at(deadline, connect(address, bind)).await {
            Ok(Ok(stream)) => return Ok((stream, address)),
            Ok(Err(error)) => last_error = Some(map_io_error(&error)),
            Err(_) => {
                return Err(DialError::new(
                    FailureCode::ConnectionTimeout,
                    "the target did not answer in time",
                ))
            }
        }
    }
    Err(last_error.expect("at least one candidate was tried"))
}

pub(crate) async fn resolve(
    host: &TargetHost,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, DialError> {
    let name = match host {
        TargetHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        TargetHost::Domain(name) => name,
    };
    // Strict parsing first: odd numeric spellings must never reach the resolver,
    // which would turn `2130706433` into 127.0.0.1.
    let name = match parse_host(name) {
        Ok(TargetHost::Domain(name)) => name,
        Ok(TargetHost::Ip(ip)) => return Ok(vec![SocketAddr::new(ip, port)]),
        Err(_) => {
            return Err(DialError::new(
                FailureCode::BadRequest,
                "the target is not a valid host name",
            ))
        }
    };
    let lookup = tokio::net::lookup_host((name.clone(), port));
    match timeout_at(deadline, lookup).await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                Err(DialError::new(
                    FailureCode::DnsError,
                    "the target name has no addresses",
                ))
            } else {
                Ok(addresses)
            }
        }
        Ok(Err(_)) => Err(DialError::new(
            FailureCode::DnsError,
            "the target name did not resolve",
        )),
        Err(_) => Err(DialError::new(
            FailureCode::ConnectionTimeout,
            "resolving the target name took too long",
        )),
    }
}

async fn connect(address: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(bind) = bind {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The code and fixed text for a failed connect; the OS's own message is left
/// out, since it can carry the address.
fn map_io_error(error: &std::io::Error) -> DialError {
    let (code, detail) = match error.kind() {
        ErrorKind::ConnectionRefused => (
            FailureCode::ConnectionRefused,
            "the target refused the connection",
        ),
        ErrorKind::TimedOut => (
            FailureCode::ConnectionTimeout,
            "the target did not answer in time",
        ),
        ErrorKind::NetworkUnreachable | ErrorKind::AddrNotAvailable => (
            FailureCode::NetworkUnreachable,
            "the exit has no route to the target's network",
        ),
        ErrorKind::HostUnreachable => (
            FailureCode::HostUnreachable,
            "the target host is unreachable",
        ),
        _ => (FailureCode::Other, "connecting to the target failed"),
    };
    DialError::new(code, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text an address or a range name could show up in.
    fn assert_names_nothing(detail: &str) {
        for leak in ["127.", "::1", "loopback", "/8", "localhost"] {
            assert!(!detail.contains(leak), "{detail:?} names {leak:?}");
        }
    }

    #[test]
    fn a_policy_refusal_names_neither_the_address_nor_the_range() {
        let refused = ExitPolicy::new().check_ip("127.0.0.1".parse().unwrap());
        let error = DialError::from(refused.unwrap_err());
        assert_eq!(error.code, FailureCode::DestinationIpProhibited);
        assert_names_nothing(&error.detail);
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_refused_address_is_answered_without_it() {
        let request = OpenRequest {
            host: TargetHost::Domain("localhost".into()),
            port: 80,
        };
        let error = dial(&request, &ExitPolicy::new(), None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(error.code, FailureCode::DestinationIpProhibited);
        assert_names_nothing(&error.detail);
    }

    #[tokio::test]
    async fn a_refused_connection_is_answered_without_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let request = OpenRequest {
            host: TargetHost::Domain("localhost".into()),
            port,
        };
        let policy = ExitPolicy::new().allow_private(true);
        let error = dial(&request, &policy, None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(error.code, FailureCode::ConnectionRefused);
        assert_names_nothing(&error.detail);
    }
}
