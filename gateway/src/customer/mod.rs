//! The customer front end. Data flows one way through these files:
//!
//! 1. [`listener`]: accept, read a trusted balancer's PROXY v2 header
//!    ([`proxy_protocol`]), bound (globally and per address while
//!    unauthenticated), tell SOCKS5 from HTTP by the first byte;
//! 2. the protocol: [`socks`] (SOCKS5, with [`socks_udp`] for `UDP ASSOCIATE`), or [`http`] (request limits) dispatching to
//!    [`http_connect`] (HTTP `CONNECT`) or [`forward`] (plain HTTP); targets are read by
//!    [`target`]; on the HTTPS proxy port with ALPN `h2`, [`http2`] serves each
//!    stream the same way;
//! 3. [`session`]: the customer-session step every protocol shares: authenticate ->
//!    choose an exit -> open the relay stream;
//! 4. [`transfer`]: the one metered transfer (usage folded each second, cut at
//!    quota, one access line).
//!
//! On `--listen-h3` (UDP), [`masque`] serves MASQUE CONNECT-UDP over HTTP/3;
//! it and [`socks_udp`] carry UDP flows through an exit with [`udp_flow`].
//!
//! [`inventory`] answers `GET /inventory` (which places have exits, bucketed).
//! [`response`] builds what HTTP answers share (errors, exit headers, Basic
//! credentials) and imports none of the handlers.

mod forward;
mod http;
mod http2;
mod http_connect;
pub mod inventory;
mod listener;
pub mod masque;
pub mod proxy_protocol;
pub mod response;
pub mod session;
mod socks;
mod socks_udp;
mod socks_wire;
mod target;
mod transfer;
mod udp_flow;

pub use listener::MAX_REFUSALS_IN_FLIGHT;
pub(crate) use listener::{serve, Entrance};
pub use session::SessionOutcome;
pub use transfer::FOLD_INTERVAL;
