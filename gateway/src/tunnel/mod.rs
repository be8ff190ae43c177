//! The agent side of the gateway: the QUIC endpoint agents dial
//! ([`endpoint`]: handshakes, control streams, joins and leaves, for both
//! transports), the TLS-over-TCP port beside it ([`tcp`]), the handshake budget
//! they share ([`pending`]), and the tunnels
//! held here ([`Links`]: opening a relay stream through one).

pub mod endpoint;
mod links;
pub mod pending;
pub mod tcp;

pub use links::{ExitStream, Links};
