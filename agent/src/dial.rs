//! Dialling a target for the gateway: resolve the name here (so targeting is
//! honest), check every resolved address against the exit policy, and connect to
//! exactly an address that was checked (no second lookup, so no DNS rebinding).

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
    /// A short explanation.
    pub detail: String,
}

impl DialError {
    fn new(code: FailureCode, detail: impl Into<String>) -> Self {
        DialError {
            code,
            detail: detail.into(),
        }
    }
}

impl From<PolicyError> for DialError {
    fn from(error: PolicyError) -> Self {
        let code = match error {
            PolicyError::AddressProhibited { .. } => FailureCode::DestinationIpProhibited,
            PolicyError::PortProhibited { .. } => FailureCode::DestinationPortProhibited,
        };
        DialError::new(code, error.to_string())
    }
}

/// Resolves, checks and connects, within `connect_timeout` overall (the agent's
/// [`crate::AgentConfig::connect_timeout`]). `bind` is the local address for the
/// outgoing socket (`--bind`).
pub async fn dial(
    request: &OpenRequest,
    policy: &ExitPolicy,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + connect_timeout;
    policy.check_port(request.port)?;
    let addresses = resolve(&request.host, request.port, deadline, connect_timeout).await?;
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
            format!("{} has no address of this exit's IP family", request.host),
        ));
    }
    let mut last_error = None;
    for address in candidates {
        match timeout_at(deadline, connect(address, bind)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last_error = Some(map_io_error(address, &error)),
            Err(_) => {
                return Err(DialError::new(
                    FailureCode::ConnectionTimeout,
                    format!("{address} did not answer within {connect_timeout:?}"),
                ))
            }
        }
    }
    Err(last_error.expect("at least one candidate was tried"))
}

async fn resolve(
    host: &TargetHost,
    port: u16,
    deadline: Instant,
    connect_timeout: Duration,
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
        Err(error) => return Err(DialError::new(FailureCode::BadRequest, error.to_string())),
    };
    let lookup = tokio::net::lookup_host((name.clone(), port));
    match timeout_at(deadline, lookup).await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                Err(DialError::new(
                    FailureCode::DnsError,
                    format!("{name} has no addresses"),
                ))
            } else {
                Ok(addresses)
            }
        }
        Ok(Err(_)) => Err(DialError::new(
            FailureCode::DnsError,
            format!("{name} did not resolve"),
        )),
        Err(_) => Err(DialError::new(
            FailureCode::ConnectionTimeout,
            format!("resolving {name} took longer than {connect_timeout:?}"),
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

fn map_io_error(address: SocketAddr, error: &std::io::Error) -> DialError {
    let code = match error.kind() {
        ErrorKind::ConnectionRefused => FailureCode::ConnectionRefused,
        ErrorKind::TimedOut => FailureCode::ConnectionTimeout,
        ErrorKind::NetworkUnreachable | ErrorKind::AddrNotAvailable => {
            FailureCode::NetworkUnreachable
        }
        ErrorKind::HostUnreachable => FailureCode::HostUnreachable,
        _ => FailureCode::Other,
    };
    DialError::new(code, format!("{address}: {error}"))
}
