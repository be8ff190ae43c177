//! UDP flows through the tunnel: the first message of a relay stream that asks
//! for a UDP flow instead of a TCP connection, and how datagrams travel on that
//! stream once the agent answered `Opened`.
//!
//! A relay stream's first frame is a [`RelayOpen`]. Its first two variants
//! encode exactly as today's [`OpenRequest`] (bincode writes a struct as its
//! fields and an enum as a variant index, so `OpenRequest{host: Domain(h), port}`
//! and `RelayOpen::TcpDomain(h, port)` are the same bytes): a gateway that
//! never asks for UDP sends what it always sent, and an agent reads both with
//! one decode. An agent without UDP cannot decode [`RelayOpen::Udp`] and resets
//! the stream, which the gateway reports as a refused flow.
//!
//! The answer is the same [`OpenReply`] as for TCP (same refusal codes). After
//! `Opened`, each datagram travels one of two ways, in both directions:
//!
//! - on the flow's stream, as a 2-byte big-endian length and its payload:
//!   always over TLS/TCP, and over QUIC for a datagram too large for a
//!   DATAGRAM frame;
//! - over QUIC, when the open asked for it ([`UdpOpen::datagrams`]) and the
//!   peer takes DATAGRAM frames (RFC 9221): one frame per datagram, the flow
//!   id as 4 big-endian bytes ([`FLOW_ID_LEN`]) then the payload. A frame for
//!   a flow the receiver does not know is dropped.
//!
//! The stream's finish ends the flow.
//!
//! [`OpenReply`]: crate::OpenReply

use crate::{OpenRequest, TargetHost};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Largest UDP payload a flow carries: what fits an IPv4 UDP datagram
/// (65,535 less the IPv4 and UDP headers). Larger ones are refused, never cut.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// Length prefix of a datagram on a flow's stream.
pub const DATAGRAM_HEADER_LEN: usize = 2;

/// A UDP flow the gateway asks an agent to open: datagrams to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpOpen {
    /// Host to send to (a name the agent resolves itself, or an address).
    pub host: TargetHost,
    /// UDP port.
    pub port: u16,
    /// The gateway's id for this flow, unique within its tunnel: the prefix
    /// of its DATAGRAM frames.
    pub flow: u32,
    /// Whether the gateway sends and takes this flow's datagrams as QUIC
    /// DATAGRAM frames (it does when its tunnel carries them).
    pub datagrams: bool,
}

/// Length of the flow id that starts a DATAGRAM frame's payload.
pub const FLOW_ID_LEN: usize = 4;

/// The start of a DATAGRAM frame for `flow`; the payload follows.
pub fn flow_prefix(flow: u32) -> [u8; FLOW_ID_LEN] {
    flow.to_be_bytes()
}

/// A DATAGRAM frame's flow id and payload; `None` when it is too short to
/// carry an id.
pub fn split_flow_datagram(frame: &[u8]) -> Option<(u32, &[u8])> {
    let (id, payload) = frame.split_first_chunk::<FLOW_ID_LEN>()?;
    Some((u32::from_be_bytes(*id), payload))
}

/// The first frame of any relay stream (see the module doc for why its TCP
/// variants match [`OpenRequest`] byte for byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayOpen {
    /// A TCP connection to a host name ([`OpenRequest`] with a domain).
    TcpDomain(String, u16),
    /// A TCP connection to an address ([`OpenRequest`] with an IP).
    TcpIp(IpAddr, u16),
    /// A UDP flow.
    Udp(UdpOpen),
}

/// What a relay stream asks for, once decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// A TCP connection.
    Tcp(OpenRequest),
    /// A UDP flow.
    Udp(UdpOpen),
}

impl From<RelayOpen> for Relay {
    fn from(open: RelayOpen) -> Relay {
        match open {
            RelayOpen::TcpDomain(name, port) => Relay::Tcp(OpenRequest {
                host: TargetHost::Domain(name),
                port,
            }),
            RelayOpen::TcpIp(ip, port) => Relay::Tcp(OpenRequest {
                host: TargetHost::Ip(ip),
                port,
            }),
            RelayOpen::Udp(open) => Relay::Udp(open),
        }
    }
}

/// A datagram could not be put on or read from a flow's stream.
#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    /// Larger than [`MAX_DATAGRAM_LEN`].
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLong(usize),
    /// The stream failed.
    #[error("flow stream: {0}")]
    Io(#[from] std::io::Error),
}

/// The length prefix for a payload of `len` bytes.
pub fn datagram_header(len: usize) -> Result<[u8; DATAGRAM_HEADER_LEN], DatagramError> {
    if len > MAX_DATAGRAM_LEN {
        return Err(DatagramError::TooLong(len));
    }
    Ok((len as u16).to_be_bytes())
}

/// Reads one datagram from a flow's stream into `buf` (resized to fit):
/// `Ok(false)` when the stream finished cleanly between datagrams. Not
/// cancel-safe: run it in the flow's own reading task.
#[cfg(feature = "tokio")]
pub async fn read_datagram<R>(reader: &mut R, buf: &mut Vec<u8>) -> Result<bool, DatagramError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; DATAGRAM_HEADER_LEN];
    if reader.read(&mut header[..1]).await? == 0 {
        return Ok(false);
    }
    reader.read_exact(&mut header[1..]).await?;
    let len = usize::from(u16::from_be_bytes(header));
    if len > MAX_DATAGRAM_LEN {
        return Err(DatagramError::TooLong(len));
    }
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_body, encode, HEADER_LEN};

    #[test]
    fn tcp_opens_are_the_bytes_of_an_open_request() {
        for host in [
            TargetHost::Domain("example.com".into()),
            TargetHost::Ip("2001:db8::1".parse().unwrap()),
            TargetHost::Ip("192.0.2.7".parse().unwrap()),
        ] {
            let request = OpenRequest {
                host: host.clone(),
                port: 443,
            };
            let old = encode(&request).unwrap();
            let relay: RelayOpen = decode_body(&old[HEADER_LEN..]).unwrap();
            assert_eq!(Relay::from(relay.clone()), Relay::Tcp(request));
            assert_eq!(encode(&relay).unwrap(), old);
        }
    }

    #[test]
    fn a_udp_open_is_not_an_open_request() {
        let open = RelayOpen::Udp(UdpOpen {
            host: TargetHost::Domain("dns.example".into()),
            port: 53,
            flow: 7,
            datagrams: true,
        });
        let bytes = encode(&open).unwrap();
        assert!(decode_body::<OpenRequest>(&bytes[HEADER_LEN..]).is_err());
        let back: RelayOpen = decode_body(&bytes[HEADER_LEN..]).unwrap();
        assert_eq!(back, open);
    }

    #[test]
    fn datagram_frames_carry_their_flow_id() {
        let mut frame = flow_prefix(0x0102_0304).to_vec();
        frame.extend_from_slice(b"payload");
        assert_eq!(
            split_flow_datagram(&frame),
            Some((0x0102_0304, &b"payload"[..]))
        );
        assert_eq!(
            split_flow_datagram(&frame[..4]),
            Some((0x0102_0304, &b""[..]))
        );
        assert_eq!(split_flow_datagram(&frame[..3]), None);
    }

    #[test]
    fn oversize_datagrams_are_refused() {
        assert_eq!(datagram_header(5).unwrap(), [0, 5]);
        assert!(datagram_header(MAX_DATAGRAM_LEN).is_ok());
        assert!(matches!(
            datagram_header(MAX_DATAGRAM_LEN + 1),
            Err(DatagramError::TooLong(_))
        ));
    }

    #[tokio::test]
    async fn datagrams_read_back_one_by_one() {
        let mut wire = Vec::new();
        for payload in [&b"abc"[..], b"", b"xyz!"] {
            wire.extend_from_slice(&datagram_header(payload.len()).unwrap());
            wire.extend_from_slice(payload);
        }
        let mut reader = &wire[..];
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        while read_datagram(&mut reader, &mut buf).await.unwrap() {
            seen.push(buf.clone());
        }
        assert_eq!(seen, vec![b"abc".to_vec(), vec![], b"xyz!".to_vec()]);
    }

    #[tokio::test]
    async fn an_oversize_length_is_an_error_before_reading_the_body() {
        let wire = [0xFF, 0xFF, 1, 2, 3];
        let mut buf = Vec::new();
        let read = read_datagram(&mut &wire[..], &mut buf).await;
        assert!(matches!(read, Err(DatagramError::TooLong(65_535))));
        assert!(buf.is_empty());
    }
}
