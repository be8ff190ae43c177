//! The exitpool agent: an exit node that keeps an outbound tunnel (QUIC, or
//! TLS over TCP where UDP is blocked) to a gateway and dials targets for the gateway's customers.
//!
//! Apps embed it as an SDK:
//!
//! ```no_run
//! # async fn example() -> Result<(), exitpool_agent::AgentError> {
//! use exitpool_agent::{Agent, Pin};
//! let pin: Pin = "sha256:...".parse().expect("pin from `gateway pin`");
//! let agent = Agent::builder("gw.example.net:4433", pin, "enrolment-token")
//!     .max_streams(32)
//!     .spawn()?;
//! agent.pause();          // e.g. on battery or mobile data
//! agent.resume();
//! println!("{:?}", agent.stats());
//! agent.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! - `builder`: [`Agent::builder`] and [`AgentBuilder`], which spawns the agent;
//! - `config`: [`AgentConfig`], everything an agent is configured with, and its
//!   defaults;
//! - `error`: [`AgentError`], why an agent stopped for good;
//! - `handle`: [`AgentHandle`], a running agent (pause, resume, stats, shutdown);
//! - `stats`: [`AgentStats`] and [`SessionInfo`], what the agent has done and
//!   what the gateway told it;
//! - `shared`: the state the agent's tasks and its handle share;
//! - [`tunnel`]: reaching the gateway over QUIC, TLS over TCP or a race of
//!   the two, the `Hello` handshake, serving relay streams, falling back from
//!   degraded QUIC, and reconnecting with backoff;
//! - [`dial`]: resolving and dialling targets under the exit policy;
//! - [`policy`]: which destinations are never dialled;
//! - [`interfaces`]: the device's own addresses, which the policy refuses;
//! - [`nat64`]: the network's own NAT64 prefix (RFC 7050), refused likewise;
//! - [`meter`]: the owner's bandwidth cap and byte quota;
//! - [`schedule`]: windows of local time with their own rate caps or a pause,
//!   and a monthly byte cap;
//! - `scheduler`: the task that applies the schedule (pauses, rate caps);
//! - [`file_config`]: `agent.toml`, the volunteer's configuration file;
//! - [`status`]: the periodic summary line and the optional local status endpoint;
//! - [`tls`]: trusting the gateway by its certificate pin;
//! - [`state`]: the agent's id, kept on the device;
//! - [`consent`]: the owner's consent, kept in the state directory;
//! - [`report`]: the host report, what was shared per day for 90 days.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod config;
mod error;
mod handle;
mod shared;
mod stats;

pub mod consent;
pub mod dial;
pub mod file_config;
pub mod interfaces;
pub mod meter;
pub mod nat64;
pub mod policy;
pub mod report;
pub mod schedule;
mod scheduler;
pub mod state;
pub mod status;
pub mod tls;
pub mod tunnel;
pub mod udp;

pub use builder::{Agent, AgentBuilder};
pub use config::{
    AgentConfig, TransportChoice, DEFAULT_DRAIN_GRACE, DEFAULT_INTERFACE_REFRESH,
    DEFAULT_MAX_STREAMS, DEFAULT_PIN_MISMATCH_RETRY, DEFAULT_QUIC_RETRY, DEFAULT_RACE_DELAY,
    DEFAULT_REFUSAL_SUMMARY_INTERVAL, DEFAULT_SUMMARY_INTERVAL,
};
pub use error::AgentError;
pub use handle::AgentHandle;
pub use interfaces::InterfaceSource;
pub use meter::{Limits, Period};
pub use nat64::Nat64Source;
pub use policy::ExitPolicy;
pub use stats::{AgentStats, SessionInfo};
pub use tls::Pin;
