//! PROXY protocol v2 on the customer ports, from trusted balancers only
//! (`--proxy-protocol-from CIDR`). A connection from a trusted address must
//! open with a v2 header; its source address then stands for the customer
//! everywhere after (per-address caps, auth failures, `allow_ips`, the access
//! log). Anyone else's bytes go to the HTTP/SOCKS5 parsers untouched, so a
//! header sent by an untrusted client is just bad input there.
//!
//! The header is read exactly (16 fixed bytes, then the length they announce),
//! never past it, so the first byte after it is still there for the listener's
//! protocol sniffing. The `ppp` crate checks and decodes it.

use ppp::v2::{Addresses, Command, Header};
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The fixed part of a v2 header: signature, version/command, family, length.
const FIXED: usize = 16;

/// Longest address-and-TLV part accepted. HAProxy's `send-proxy-v2` sends 12
/// (IPv4) or 36 (IPv6) bytes plus a few TLVs; the protocol allows 64 KiB, which
/// nothing here needs, so a larger announced length is refused unread.
pub const MAX_BODY: usize = 512;

/// What a trusted balancer's header said.
#[derive(Debug, PartialEq, Eq)]
pub enum Proxied {
    /// A customer connection relayed from this source.
    Customer(SocketAddr),
    /// The balancer's own connection (a health check): close it quietly.
    Local,
}

/// Why a trusted source's connection was closed before serving it.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection failed or ended before a whole header arrived.
    #[error("the connection ended before a whole PROXY v2 header: {0}")]
    Read(#[from] std::io::Error),
    /// The announced header is longer than [`MAX_BODY`].
    #[error("the PROXY v2 header announces {0} bytes of addresses and TLVs (at most {MAX_BODY})")]
    TooLong(usize),
    /// The bytes are not a valid v2 header.
    #[error("not a PROXY v2 header ({0}); is the balancer set to send-proxy-v2?")]
    Invalid(ppp::v2::ParseError),
    /// A PROXY command whose source is not an IP address (UNIX or unspecified).
    #[error("the PROXY v2 header carries no IP source address")]
    NoAddress,
}

/// Reads and decodes one PROXY v2 header from `stream`, consuming exactly its
/// bytes. The caller bounds the wait.
pub async fn read_header(stream: &mut TcpStream) -> Result<Proxied, HeaderError> {
    let mut buffer = [0u8; FIXED + MAX_BODY];
    stream.read_exact(&mut buffer[..FIXED]).await?;
    // Checked before the length is trusted, so garbage is named as such.
    if let Err(error) = Header::try_from(&buffer[..FIXED]) {
        if !matches!(error, ppp::v2::ParseError::Partial(..)) {
            return Err(HeaderError::Invalid(error));
        }
    }
    let body = usize::from(u16::from_be_bytes([buffer[14], buffer[15]]));
    if body > MAX_BODY {
        return Err(HeaderError::TooLong(body));
    }
    stream.read_exact(&mut buffer[FIXED..FIXED + body]).await?;
    decode(&buffer[..FIXED + body])
}

/// Decodes a whole header (exactly its bytes).
pub fn decode(bytes: &[u8]) -> Result<Proxied, HeaderError> {
    let header = Header::try_from(bytes).map_err(HeaderError::Invalid)?;
    if header.command == Command::Local {
        return Ok(Proxied::Local);
    }
    match header.addresses {
        Addresses::IPv4(ip) => Ok(Proxied::Customer(SocketAddr::new(
            ip.source_address.into(),
            ip.source_port,
        ))),
        Addresses::IPv6(ip) => Ok(Proxied::Customer(SocketAddr::new(
            ip.source_address.into(),
            ip.source_port,
        ))),
        Addresses::Unspecified | Addresses::Unix(_) => Err(HeaderError::NoAddress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};

    fn header(command: Command, addresses: impl Into<Addresses>) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .build()
            .expect("a valid header")
    }

    #[test]
    fn proxy_ipv4_and_ipv6_give_the_source() {
        let v4: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        let to: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let bytes = header(Command::Proxy, (v4, to));
        assert_eq!(decode(&bytes).unwrap(), Proxied::Customer(v4));
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let to6: SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        let bytes = header(Command::Proxy, (v6, to6));
        assert_eq!(decode(&bytes).unwrap(), Proxied::Customer(v6));
    }

    #[test]
    fn local_is_a_health_check() {
        let bytes = header(Command::Local, Addresses::Unspecified);
        assert_eq!(decode(&bytes).unwrap(), Proxied::Local);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(matches!(
            decode(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(HeaderError::Invalid(_))
        ));
        let v4: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        let bytes = header(Command::Proxy, (v4, v4));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let bytes = header(Command::Proxy, Addresses::Unspecified);
        assert!(matches!(decode(&bytes), Err(HeaderError::NoAddress)));
    }
}
