//! Log set-up for both binaries: `RUST_LOG` filtering, text or JSON lines on
//! stderr, written by a logging thread so a slow terminal or pipe never stalls
//! the runtime (the gateway logs one access line per connection). Text lines escape control characters in every field and message, so
//! nothing that came off the network (a user name, a targeting key, an agent's
//! software string, a failure detail) can start a forged line or move the
//! terminal's cursor. JSON strings are escaped by the format itself.

use std::fmt::{self, Write};
use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text, control characters escaped.
    Text,
    /// One JSON object per line, event fields under `fields`.
    Json,
}

/// Keeps the logging thread running; dropping it writes out what is queued.
/// Hold it for the life of `main`.
#[must_use = "dropping the guard stops the logging thread"]
pub struct LogGuard {
    _thread: tracing_appender::non_blocking::WorkerGuard,
}

/// What the logging thread gathers lines in: it flushes once it has taken
/// every queued line, so a burst of lines (a batch of access lines) is one
/// `write` rather than one per line, and no line waits for a later one.
const LOG_BUFFER: usize = 64 * 1024;

/// Installs the global subscriber: level from `RUST_LOG` (default `info`).
/// Lines queue for the logging thread; a full queue (128,000 lines) makes the
/// logging task wait rather than drop lines, so no line is ever lost.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("exitpool-logs")
        .finish(std::io::BufWriter::with_capacity(
            LOG_BUFFER,
            std::io::stderr(),
        ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Text => logs
            .fmt_fields(debug_fn(escaped_field).delimited(" "))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    LogGuard { _thread: guard }
}

/// Formats one field as the default text format does (`name=value`, the
/// message bare), with control characters escaped as they are written.
fn escaped_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    if field.name() != "message" {
        write!(writer, "{field}=")?;
    }
    write!(Escaping(writer), "{value:?}")
}

/// Passes text through, writing each control character as its Rust escape
/// (`\n`, `\u{1b}`, ...): one line per event, whatever the values hold.
struct Escaping<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().expect("found at this index");
            write!(self.0, "{}", control.escape_default())?;
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let mut out = String::new();
        write!(Escaping(&mut out), "a\nb\r\u{1b}[31mc ü").unwrap();
        assert_eq!(out, "a\\nb\\r\\u{1b}[31mc ü");
    }
}
