//! The SOCKS5 wire pieces (RFC 1928) that the `CONNECT` side ([`super::socks`])
//! and the UDP ASSOCIATE side ([`super::socks_udp`]) both speak: the version
//! and address types, a request reply, a validated domain name, and a write
//! with a deadline.

use super::target;
use crate::error::ProxyError;
use exitpool_protocol::TargetHost;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Protocol version in the greeting and the request (RFC 1928).
pub(super) const VERSION: u8 = 0x05;
/// Address type: IPv4.
pub(super) const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name, resolved by the exit.
pub(super) const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6.
pub(super) const ATYP_IPV6: u8 = 0x04;

/// Writes `bytes`, giving up after `limit` (a client that never reads).
pub(super) async fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, stream.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

/// Validates a domain name from a request; dotted quads and IPv6 literals sent as
/// names become addresses.
pub(super) fn domain(name: &[u8]) -> Result<TargetHost, ProxyError> {
    let name = std::str::from_utf8(name)
        .map_err(|_| ProxyError::BadTarget("host name is not UTF-8".into()))?;
    target::parse_host(name)
        .map_err(|why| ProxyError::BadTarget(format!("{why} (got {:?})", truncate(name))))
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A request reply: `VER REP RSV ATYP BND.ADDR BND.PORT`.
pub(super) fn reply(code: u8, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, code, 0x00]);
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}
