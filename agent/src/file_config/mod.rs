//! `agent.toml`, the volunteer's configuration file: every flag of the `agent`
//! binary has a key (and flags override the file), plus `consent` and a
//! `[schedule]` with `[[schedule.window]]`s. [`load`] reads a file into
//! [`Settings`] and reports every error at once, each with the file, line and
//! key; [`Settings::or`] lays flags over a file, and [`Settings::builder`]
//! turns the result into an [`AgentBuilder`](crate::AgentBuilder). The SDK can
//! read the same file.
//!
//! Values are written as people write them: durations `15s`, `500ms`, `2m`
//! (`humantime`); sizes `10GB`, `500KB`, `1GiB` and rates `2MB/s` (`bytesize`:
//! KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024; a plain integer is bytes).
//!
//! How every error is found at once: the document is parsed (all syntax errors
//! are reported together), then deserialized with `deny_unknown_fields`; each
//! serde error (an unknown key, a wrong type) names a span, the entry there is
//! removed and the rest is deserialized again, until it goes through. Values
//! serde cannot judge (a duration, a pin, a day name) are checked afterwards,
//! each with its own line. Messages never repeat a source line or the token.
//! That machinery (errors, the span-removal loop, units, the bounds) is the
//! `exitpool-config` crate's, shared with the gateway's `gateway.toml`.
//!
//! The files, in the order a file goes through them: `load` reads it (and
//! warns), `model` is the file as serde reads it, `check` turns that into
//! [`Settings`] (defined in `settings`), collecting every error, and `apply`
//! lays settings over others and makes the agent builder.

mod apply;
mod check;
mod load;
mod model;
mod settings;
#[cfg(test)]
mod tests;

pub use check::{parse_udp_idle_timeout, MAX_UDP_FLOWS};
pub use exitpool_config::{
    parse_duration, parse_rate, parse_size, ConfigError, ConfigErrors, MAX_ERRORS, MAX_FILE_BYTES,
};
pub use load::{load, load_complete, parse, Loaded, CONSENT_MISSING, TOKEN_ENV};
pub use settings::Settings;
