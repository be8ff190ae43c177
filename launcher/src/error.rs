//! The launcher's one error type. Every variant that concerns a running
//! process carries its last lines of output, since that is where the reason is.

use std::time::Duration;

/// Why a launch, a wait or a signal failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program could not be started at all (not built, not executable).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program's path.
        program: String,
        /// What `spawn` said.
        source: std::io::Error,
    },
    /// The awaited event did not come within its bound.
    #[error("{name}: no {what} within {bound:?}; its last output: {tail}")]
    Timeout {
        /// The process (its program's file name).
        name: String,
        /// The event awaited.
        what: String,
        /// How long it was awaited.
        bound: Duration,
        /// The last lines of its output.
        tail: String,
    },
    /// The process ended, or closed its output, before the awaited event.
    #[error("{name} ended before {what}; its last output: {tail}")]
    Ended {
        /// The process (its program's file name).
        name: String,
        /// The event awaited.
        what: String,
        /// The last lines of its output.
        tail: String,
    },
    /// A signal or a wait on a process failed, or the process has been reaped.
    #[error("{name}: {source}")]
    Io {
        /// The process (its program's file name).
        name: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}
