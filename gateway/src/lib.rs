//! The exitpool gateway: customers connect here, agents keep their tunnels here.
//!
//! Running it:
//! - [`config`]: what the operator configures ([`GatewayConfig`]);
//! - [`gateway`]: binding the ports, starting the tasks, stopping ([`Gateway`]);
//! - [`shared`]: the state every task shares ([`Shared`]) and its views by concern;
//! - [`housekeeping`]: periodic usage writes and session sweeps;
//! - [`state`]: the state directory; [`tls`]: the certificate and the pin agents check;
//!   [`customer_tls`]: the customer ports' own certificate (an HTTPS proxy).
//!
//! Customers (listener -> protocol -> session step -> transfer):
//! - [`customer`]: the customer port: SOCKS5, HTTP `CONNECT`, plain HTTP, the
//!   customer-session step and the one metered transfer;
//! - [`credentials`]: the `user-country-us:pass` targeting grammar;
//! - [`entry_ports`]: extra customer ports whose number selects targeting;
//! - [`error`]: every customer-visible failure and how it is presented.
//!
//! Exits:
//! - [`directory`]: who is connected, where, with what load ([`AgentDirectory`]);
//! - [`tunnel`]: the QUIC and TLS/TCP listeners agents dial, their join, and
//!   the tunnels held here;
//! - [`sessions`]: sticky-session pins behind a store interface;
//! - [`fleet`]: several gateways sharing one pool through Redis (`--redis`):
//!   the shared directory, peer links, fleet-wide sessions, usage and limits.
//!
//! Accounts and operators:
//! - [`auth`]: customer accounts and agent tokens; [`accounts`]: the live set,
//!   reloaded on SIGHUP; [`agent_tokens`]: agent tokens from the store;
//! - [`abuse`]: per-address defences; [`limits`]: per-customer quota, rate and
//!   concurrency; [`quota`]: byte leases that hold a transfer to its quota;
//! - [`control_link`]: the control plane's store (accounts, usage history,
//!   period quotas, `/api/v1`), off the hot path; [`webhooks`]: quota notices;
//! - [`usage`]: usage per customer and per agent, persisted; [`metrics`]:
//!   Prometheus; [`admin`]: `/healthz`, `/stats`, `/metrics`, reset and reload;
//! - [`live`]: the customer transfers carried now (list, close); [`bans`]:
//!   exits refused at join.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abuse;
pub mod access;
pub mod accounts;
pub mod admin;
pub mod agent_tokens;
pub mod auth;
pub mod bans;
pub mod config;
pub mod control_link;
mod counts;
pub mod credentials;
pub mod customer;
pub mod customer_tls;
pub mod directory;
pub mod entry_ports;
pub mod error;
pub mod fleet;
pub mod gateway;
mod housekeeping;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod quota;
pub mod sessions;
pub mod shared;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod usage;
pub mod webhooks;

pub use config::{GatewayConfig, TunnelTcp};
pub use directory::AgentDirectory;
pub use error::ProxyError;
pub use gateway::{Gateway, StartError};
pub use shared::{Accounting, Lifecycle, Routing, Shared, Walls};
