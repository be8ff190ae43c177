//! The agent side of the gateway: the QUIC endpoint agents dial
//! ([`endpoint`]: handshakes, control streams, joins and leaves) and the tunnels
//! held here ([`Links`]: opening a relay stream through one).

pub mod endpoint;
mod links;

pub use links::{ExitStream, Links};
