//! The exitpool control plane: what operators manage and what the gateway's
//! in-memory view is loaded from. Nothing here is on the hot path: a
//! connection reads the gateway's view, never a query.
//!
//! - [`store`]: the database (SQLite in the state directory by default,
//!   PostgreSQL for a fleet) behind one [`Store`]: customers and sub-users,
//!   agent tokens, usage history and quota periods; migrations applied at open.
//!   [`Store::snapshot`] and [`Store::revision`] are what a gateway swaps into
//!   its view; [`Store::record_batch`] is its usage sink.
//! - [`model`]: the accounts' fields and the rules each obeys.
//! - [`api`]: the `/api/v1` router (axum) and its generated OpenAPI document.
//! - [`error`]: the one error type, rendered as `{"error","field","message"}`.
//! - [`secret`]: generated passwords (Argon2id) and agent token secrets (SHA-256).
//! - [`period`]: UTC hour, day and month buckets.
//!
//! Storage goes through sqlx's `Any` driver rather than rusqlite plus
//! tokio-postgres: one async API and one set of queries for both databases,
//! with a migrator (and PostgreSQL's advisory lock around it) included. The
//! queries are checked at run time (no `macros` feature), so building needs no
//! database. See docs/control.md.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod error;
pub mod model;
pub mod period;
pub mod secret;
pub mod store;

pub use api::{router, router_with, ApiTokens};
pub use error::{Error, Result};
pub use store::{AccountRef, Backend, Retention, Store};
