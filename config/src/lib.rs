//! The grammar of exitpool's configuration files (the agent's `agent.toml`,
//! the gateway's `gateway.toml`): what both read the same way, so an operator
//! who knows one knows the other. Each binary keeps its own keys; this crate
//! holds the machinery under them.
//!
//! - [`errors`]: one problem with its line and key ([`ConfigError`]), every
//!   problem of one file ([`ConfigErrors`], printed `FILE:LINE: key `K`: ...`),
//!   and [`Lines`], byte offsets to line numbers.
//! - [`document`]: reading a file ([`read`], at most [`MAX_FILE_BYTES`]),
//!   parsing it with every syntax error at once ([`parse_document`]), and
//!   deserializing it with every serde error at once ([`deserialize_all`]: the
//!   span-removal loop), at most [`MAX_ERRORS`] each.
//! - [`units`]: durations `15s`/`500ms`, sizes `10GB`/`1GiB`, rates `2MB/s`.
//!
//! Messages never repeat a source line: a line may hold a token.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod document;
pub mod errors;
pub mod units;

pub use document::{deserialize_all, parse_document, read, MAX_ERRORS, MAX_FILE_BYTES};
pub use errors::{sorted, ConfigError, ConfigErrors, Lines};
pub use units::{parse_duration, parse_rate, parse_size};
