//! The QUIC side of an HTTP/3 server port (the gateway's MASQUE listener,
//! `--listen-h3`), so the layer above names h3's types and not quinn's:
//! server settings for HTTP/3 with HTTP Datagrams ([`h3_server_settings`]:
//! ALPN `h3`, bounded windows and buffers, few streams), the endpoint and
//! the connections it is offered ([`H3Endpoint`], [`H3Incoming`]), a
//! connection as h3 and HTTP Datagrams use it ([`H3Link`]), and the
//! variable-length integers that head an HTTP Datagram (RFC 9297 §2.1,
//! RFC 9298 §4: [`datagram_prefix`], [`take_varint`]).
//!
//! The h3 server runs on [`H3Quic`] (h3-quinn's connection); its request
//! streams are [`H3Bidi`] and its datagrams arrive through [`H3DatagramsIn`].

use crate::endpoint::{server_settings, ServerSettings};
use bytes::{Bytes, BytesMut};
use quinn_proto::coding::Codec;
use std::net::SocketAddr;
use std::time::Duration;

/// The ALPN protocol id of HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";

/// The connection h3's server and client run on.
pub type H3Quic = h3_quinn::Connection;
/// A request stream under h3.
pub type H3Bidi = h3_quinn::BidiStream<Bytes>;
/// Where h3-datagram's reader takes a connection's HTTP Datagrams from.
pub type H3DatagramsIn = h3_quinn::datagram::RecvDatagramHandler;

/// What an HTTP/3 port allows one client connection.
#[derive(Debug, Clone)]
pub struct H3Limits {
    /// Requests (client bidirectional streams) served at once; QUIC's own
    /// limit is [`quic_streams_for`] this.
    pub requests: u32,
    /// Unidirectional streams at once: the client's control and QPACK
    /// streams, and room for a grease stream.
    pub uni_streams: u32,
    /// Bytes a client may send on one stream before the server read them.
    pub stream_window: u32,
    /// Bytes a client may have in flight on all its streams together (and
    /// the server towards it).
    pub connection_window: u32,
    /// HTTP Datagrams buffered each way, in bytes; past it the oldest are
    /// dropped, which UDP allows.
    pub datagram_buffer: usize,
    /// The first UDP payload size of the server's QUIC packets.
    pub initial_mtu: u16,
    /// A connection idle this long (no packet either way) is closed.
    pub idle_timeout: Duration,
}

/// QUIC's bidirectional stream limit that lets a client hold `requests`
/// requests at once. quinn announces the credit of ended streams
/// (MAX_STREAMS) only once more than an eighth of its limit has come back
/// (`queue_max_stream_id` in quinn-proto's streams/state.rs), so at a limit
/// of exactly `requests` a client with every request open whose one request
/// ended could not open the next one until two more ended. A limit `n` with
/// `n - n / 8 >= requests` always leaves a client below `requests` open
/// streams the credit for one more; the server bounds what it serves at
/// `requests` itself.
pub const fn quic_streams_for(requests: u32) -> u32 {
    let mut streams = requests;
    while streams - streams / 8 < requests {
        streams += 1;
    }
    streams
}

/// Server settings for HTTP/3 from the TLS configuration `tls` (its ALPN
/// replaced by `h3`) under `limits`; the error is the TLS configuration's
/// unsuitability for QUIC (TLS 1.3 only).
pub fn h3_server_settings(
    tls: &rustls::ServerConfig,
    limits: &H3Limits,
) -> Result<ServerSettings, String> {
    let mut crypto = tls.clone();
    crypto.alpn_protocols = vec![ALPN_H3.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quic_streams_for(limits.requests).into())
        .max_concurrent_uni_streams(limits.uni_streams.into())
        .stream_receive_window(limits.stream_window.into())
        .receive_window(limits.connection_window.into())
        .send_window(u64::from(limits.connection_window))
        .datagram_receive_buffer_size(Some(limits.datagram_buffer))
        .datagram_send_buffer_size(limits.datagram_buffer)
        .initial_mtu(limits.initial_mtu)
        .max_idle_timeout(limits.idle_timeout.try_into().ok());
    server_settings(crypto, transport)
}

/// A bound QUIC endpoint answering HTTP/3 clients.
#[derive(Debug)]
pub struct H3Endpoint(quinn::Endpoint);

impl H3Endpoint {
    /// Binds `addr` ([`crate::udp::bind`]'s socket). quinn ignores
    /// Initials on an endpoint without server settings, so it starts with
    /// `first`; each connection is accepted with the settings in force then
    /// ([`H3Incoming::accept_with`]).
    pub fn serve(addr: SocketAddr, first: ServerSettings) -> std::io::Result<H3Endpoint> {
        crate::udp::endpoint(addr, quinn::EndpointConfig::default(), Some(first)).map(H3Endpoint)
    }

    /// The address it is bound to (the port drawn for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// The next connection a client offers, before any handshake work;
    /// `None` once the endpoint is closed. Cancel safe.
    pub async fn accept(&self) -> Option<H3Incoming> {
        self.0.accept().await.map(H3Incoming)
    }

    /// Closes every connection on it with the HTTP/3 error `code` and
    /// `reason`, and takes no new ones.
    pub fn close(&self, code: u64, reason: &[u8]) {
        self.0.close(varint(code), reason);
    }

    /// Resolves once closed connections have drained; the caller bounds the
    /// wait.
    pub async fn wait_idle(&self) {
        self.0.wait_idle().await;
    }
}

/// A connection a client offers, not yet handshaken.
#[derive(Debug)]
pub struct H3Incoming(quinn::Incoming);

impl H3Incoming {
    /// The client's address (as the UDP packets came from it).
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Refuses it at once (a CONNECTION_REFUSED close), no cryptography spent.
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Starts its handshake with `settings`; the error says why it could
    /// not start.
    pub fn accept_with(self, settings: ServerSettings) -> Result<H3Handshake, String> {
        self.0
            .accept_with(std::sync::Arc::new(settings))
            .map(H3Handshake)
            .map_err(|error| error.to_string())
    }
}

/// A handshake under way; the caller bounds the wait.
#[derive(Debug)]
pub struct H3Handshake(quinn::Connecting);

impl H3Handshake {
    /// The connection once the handshake is done, or why it failed.
    pub async fn done(self) -> Result<H3Link, String> {
        self.0.await.map(H3Link).map_err(|error| error.to_string())
    }
}

/// Why an HTTP Datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramRefused {
    /// Larger than the path to the client carries (RFC 9298 forbids
    /// fragmenting it).
    #[error("larger than the client's path carries")]
    TooLarge,
    /// Datagrams are off for the connection, or the connection is gone.
    #[error("the connection takes no datagrams")]
    Closed,
}

/// One client's QUIC connection, as h3 and HTTP Datagrams use it.
#[derive(Debug, Clone)]
pub struct H3Link(quinn::Connection);

impl H3Link {
    /// The connection for h3's server (`h3::server::builder().build`).
    pub fn h3(&self) -> H3Quic {
        h3_quinn::Connection::new(self.0.clone())
    }

    /// Sends one QUIC DATAGRAM frame (an encoded HTTP Datagram), or drops
    /// the oldest queued one if the send buffer is full.
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramRefused> {
        match self.0.send_datagram(datagram) {
            Ok(()) => Ok(()),
            Err(quinn::SendDatagramError::TooLarge) => Err(DatagramRefused::TooLarge),
            Err(_) => Err(DatagramRefused::Closed),
        }
    }

    /// Closes it with the HTTP/3 error `code` and `reason`.
    pub fn close(&self, code: u64, reason: &[u8]) {
        self.0.close(varint(code), reason);
    }
}

/// `code` as QUIC carries it; one past QUIC's range becomes 0, which no
/// caller here sends (HTTP/3's codes are small).
fn varint(code: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(code).unwrap_or_default()
}

/// The bytes before each payload of an HTTP Datagram for request stream
/// `stream_id` with context id `context`: the quarter stream id (RFC 9297
/// §2.1), then the context id (RFC 9298 §4), each a QUIC variable-length
/// integer. Values past QUIC's range (2^62) are written as 0.
pub fn datagram_prefix(stream_id: u64, context: u64) -> Bytes {
    let mut prefix = BytesMut::with_capacity(16);
    quinn_proto::VarInt::from_u64(stream_id / 4)
        .unwrap_or_default()
        .encode(&mut prefix);
    quinn_proto::VarInt::from_u64(context)
        .unwrap_or_default()
        .encode(&mut prefix);
    prefix.freeze()
}

/// Takes one QUIC variable-length integer off the front of `buf` (an HTTP
/// Datagram's context id); `None` if `buf` ends inside it.
pub fn take_varint(buf: &mut Bytes) -> Option<u64> {
    quinn_proto::VarInt::decode(buf)
        .ok()
        .map(|value| value.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_allows_an_eighth_more_streams_than_requests() {
        assert_eq!(quic_streams_for(1), 1);
        assert_eq!(quic_streams_for(7), 7);
        // 8 - 8 / 8 = 7 < 8: one more.
        assert_eq!(quic_streams_for(8), 9);
        assert_eq!(quic_streams_for(16), 18);
        assert_eq!(quic_streams_for(100), 114);
        for requests in 1..1_000 {
            let streams = quic_streams_for(requests);
            assert!(streams - streams / 8 >= requests, "{requests}");
            let fewer = streams - 1;
            assert!(
                fewer - fewer / 8 < requests || fewer < requests,
                "{requests}"
            );
        }
    }

    #[test]
    fn the_prefix_is_the_quarter_stream_id_then_the_context() {
        assert_eq!(&datagram_prefix(0, 0)[..], &[0, 0]);
        assert_eq!(&datagram_prefix(8, 0)[..], &[2, 0]);
        // 400 / 4 = 100: a two-byte varint.
        assert_eq!(&datagram_prefix(400, 0)[..], &[0x40, 100, 0]);
        assert_eq!(&datagram_prefix(0, 64)[..], &[0, 0x40, 64]);
    }

    #[test]
    fn varints_come_off_the_front() {
        let mut buf = Bytes::from_static(&[0x40, 100, 7, 9]);
        assert_eq!(take_varint(&mut buf), Some(100));
        assert_eq!(take_varint(&mut buf), Some(7));
        assert_eq!(&buf[..], &[9]);
        let mut cut = Bytes::from_static(&[0x40]);
        assert_eq!(take_varint(&mut cut), None);
        assert_eq!(take_varint(&mut Bytes::new()), None);
    }
}
