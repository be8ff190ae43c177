//! The agent side of the gateway: the QUIC listener agents dial ([`quic`]),
//! the TLS-over-TCP port beside it ([`tcp`]), an agent's join and life for
//! both transports ([`join`]: handshake on the control stream, directory
//! entry, leave), agents' store tokens rechecked while they are connected
//! ([`revocations`]), the handshake budget they share ([`pending`]), and the
//! tunnels held here ([`Tunnels`]: opening a relay stream through one), and
//! [`Exits`], the one way to reach an exit, here or on another gateway.

mod exits;
pub mod join;
pub mod pending;
pub mod quic;
pub mod revocations;
pub mod tcp;
mod tunnels;

pub use exits::{Exits, Liveness, RemoteExits, RemoteOpen};
pub use tunnels::{open_exchange, ExitStream, Tunnels};
