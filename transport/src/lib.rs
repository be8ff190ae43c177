//! What moves exitpool's bytes between a TCP socket and the tunnel, below the
//! wire protocol (`exitpool_protocol`) and above the network.
//!
//! - [`tunnel`]: the stream-pair interface a tunnel transport implements, so the
//!   relay runs over any of them;
//! - [`quic`]: that interface for quinn's QUIC connections and streams;
//! - [`tcp`]: that interface for TLS 1.3 over TCP, with HTTP/2 (h2) as the
//!   stream multiplexer, where UDP is blocked;
//! - [`any`]: either transport behind one type, for the layers above;
//! - [`relay`](mod@relay): the byte path, one TCP connection to and from one tunnel stream;
//! - [`udp`]: the UDP socket under a QUIC endpoint and the transport settings
//!   both ends share;
//! - [`endpoint`]: a QUIC server endpoint and its settings, as the layers above
//!   hold them without naming quinn;
//! - [`h3_endpoint`]: an HTTP/3 server port's QUIC side (the gateway's
//!   MASQUE listener), as h3 runs on it;
//! - [`leave`]: ending a tunnel so the peer always hears of it;
//! - [`pin`]: trusting a peer by the SHA-256 pin of its certificate;
//! - [`state_dir`]: the owner-only state directory both ends keep on disk.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod any;
pub mod endpoint;
pub mod flows;
pub mod h3_endpoint;
pub mod leave;
pub mod pin;
pub mod quic;
pub mod relay;
pub mod state_dir;
pub mod tcp;
pub mod tunnel;
pub mod udp;

pub use any::{StreamRecv, StreamSend, Tunnel};
pub use relay::{relay, Direction, LiveCounters, RelayError, Throttle, Transferred, Unlimited};
pub use tunnel::{CloseReason, Transport, TunnelConnection, TunnelRecv, TunnelSend};
