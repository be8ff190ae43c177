//! Starts the `gateway` and `agent` binaries (and any other program) for the
//! end-to-end tests and the load test, the one way both do it:
//!
//! - [`Launch`]: the program, its arguments and environment; [`Launch::start`]
//!   waits for a [`Ready`] event (a line of output or a port that accepts),
//!   [`Launch::run`] runs a one-shot command to its end.
//! - [`Process`]: the running child. Its stdout and stderr are captured line by
//!   line; every wait has a bound; dropping it kills the child and reaps it, so
//!   no test leaves processes behind.
//! - [`binaries`]: what the exitpool binaries print when they are ready.
//! - [`haproxy`]: HAProxy on the `deploy/` configuration, for the balancer tests.
//! - [`masque`]: a MASQUE CONNECT-UDP client (HTTP/3), for the gateway's
//!   `--listen-h3` in the tests and the load test.
//! - [`redis`]: a `redis-server` of the caller's own, for fleet mode.
//! - [`postgres`]: a throwaway PostgreSQL cluster, for the control plane's store.
//! - [`ports`]: free port numbers for programs that cannot be given port 0.
//! - [`LaunchError`]: each failure names the process and ends with its last output.
//!
//! Linux only: a child's exit is awaited on a pidfd.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod binaries;
mod error;
pub mod haproxy;
mod launch;
pub mod masque;
mod output;
pub mod ports;
pub mod postgres;
mod process;
pub mod redis;

pub use binaries::GatewayBanner;
pub use error::LaunchError;
pub use launch::{Finished, Launch, Ready};
pub use process::{Process, Signal};
