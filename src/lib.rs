//! exitpool: a residential, rotating exit-node proxy network.
//!
//! This package ties the workspace together for applications and for the
//! end-to-end tests in `tests/` and the programs in `examples/`:
//!
//! - [`protocol`]: wire messages, framing, close codes and the target-host
//!   grammar between gateway and agent;
//! - [`transport`]: what moves bytes: the relay loop over the tunnel stream
//!   interface, UDP socket set-up, the leave sequence;
//! - [`geoip`]: IP to country / ASN / city lookups;
//! - [`gateway`]: the customer-facing proxy, agent registry, routing and stats;
//! - [`agent`]: the exit node, embeddable in an app as an SDK;
//! - [`cli`]: what the binaries share (runtime, exit codes, stop signals);
//! - [`logs`]: their log set-up (text lines cannot be forged by what they quote).

#![forbid(unsafe_code)]

pub use exitpool_agent as agent;
pub use exitpool_gateway as gateway;
pub use exitpool_geoip as geoip;
pub use exitpool_protocol as protocol;
pub use exitpool_transport as transport;

pub mod cli;
pub mod logs;
