//! The agent's tunnel: reach the gateway, say `Hello`, serve relay streams,
//! report load, and reconnect with capped exponential backoff and full jitter
//! after network failures. A rejected token stops the agent, and so does a pin
//! mismatch on a pin it has never connected with (a typo in `--pin`): retrying
//! cannot fix them. A mismatch on a pin it has connected with before is more
//! likely a forgery on the path, so it is retried after a long wait with a loud
//! warning: one forged handshake must not end a volunteer's sharing.
//!
//! In the order a tunnel lives:
//! - `reconnect`: `run`, one session after another, and the
//!   pause before the next ([`RESTART_SPREAD`], [`STABLE_AFTER`]);
//! - `backoff`: [`Backoff`], capped exponential backoff with full jitter;
//! - `reach_gateway`: reaching the gateway over QUIC, TLS over TCP or a race
//!   of the two, trying gateways in the agent's own order, remembering the
//!   winner, and probing QUIC again from TCP ([`transport_config`]);
//! - `reach_error`: why reaching a gateway failed, typed;
//! - `session`: one session, from reaching the gateway to its end, and the
//!   loop that serves it;
//! - `end`: how a session ended, which decides what follows;
//! - `control`: the control stream: `Hello` and its answer, load reports;
//! - `pins`: the gateway pins this agent has been welcomed with;
//! - `silence`: a QUIC tunnel that has gone quiet;
//! - `stream`: one relay stream: open request, stream slot, dial, relay
//!   ([`RELAY_IDLE_TIMEOUT`]);
//! - `drain`: ending a tunnel without cutting its customers (shutdown, and a
//!   TCP tunnel left for QUIC).

mod backoff;
mod control;
mod drain;
mod end;
mod pins;
mod reach_error;
mod reach_gateway;
mod reconnect;
mod session;
mod silence;
mod stream;

pub use backoff::{Backoff, BACKOFF_BASE, BACKOFF_MAX};
pub use reach_gateway::transport_config;
pub(crate) use reconnect::run;
pub use reconnect::{RESTART_SPREAD, STABLE_AFTER};
pub use stream::RELAY_IDLE_TIMEOUT;
