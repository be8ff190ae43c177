//! Log set-up for both binaries: `RUST_LOG` filtering, text or JSON lines on
//! stderr, written by logging threads so a slow terminal or pipe never stalls
//! the runtime (the gateway logs one access line per connection).
//!
//! What a stranger can make us write is bounded, whatever they send:
//! - dependencies (h2, hyper, quinn, rustls, redis) log only errors by default:
//!   their warnings are about what a peer sent (h2 warns of every unsolicited
//!   PING acknowledgement), so a peer could otherwise write a line per frame;
//! - every call site writes at most [`BURST`] lines per [`WINDOW`]; what is
//!   held back is counted and summarised in one line per call site at the end
//!   of the window ([`Throttle`]);
//! - only access lines are never dropped: they have a queue of their own that
//!   makes the logging task wait when full. Other lines go through a queue that
//!   drops when full, so a pipe read slowly (journald, a container runtime)
//!   never blocks a runtime worker on a diagnostic line.
//!
//! Text lines escape control characters and the Unicode line and paragraph
//! separators in every field and message, so nothing that came off the network
//! (a user name, a targeting key, an agent's software string, a failure detail)
//! can start a forged line or move the terminal's cursor. JSON strings are
//! escaped by the format itself, and the separators (which JSON allows raw but
//! many log viewers break lines at) are written as `\u2028`-style escapes.

use std::collections::HashMap;
use std::fmt::{self, Write};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::Field;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text, control characters escaped.
    Text,
    /// One JSON object per line, event fields under `fields`.
    Json,
}

/// Keeps the logging threads running; dropping it writes out what is queued.
/// Hold it for the life of `main`. It also changes the filter while running
/// ([`LogGuard::set_filter`], the gateway's SIGHUP).
#[must_use = "dropping the guard stops the logging threads"]
pub struct LogGuard {
    _access: tracing_appender::non_blocking::WorkerGuard,
    _other: tracing_appender::non_blocking::WorkerGuard,
    filter: FilterHandle,
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

impl LogGuard {
    /// Replaces the filter (`RUST_LOG` syntax) for every line from now on.
    pub fn set_filter(&self, filter: &str) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Checks a filter written in `RUST_LOG` syntax (a flag's value parser).
pub fn check_filter(filter: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| filter.to_owned())
        .map_err(|e| {
            format!("not a log filter ({e}); write e.g. info or warn,exitpool_gateway=debug")
        })
}

/// The filter when `RUST_LOG` is not set: our own `info` lines, and only
/// errors from the libraries that log what peers send them.
pub const DEFAULT_FILTER: &str = "info,h2=error,hyper=error,hyper_util=error,quinn=error,\
quinn_proto=error,quinn_udp=error,rustls=error,tokio_rustls=error,redis=error";

/// Most lines one call site writes per [`WINDOW`] before the rest are counted
/// instead of written.
pub const BURST: u32 = 20;

/// The period over which [`BURST`] applies, and after which held-back lines
/// are summarised.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The target of the summaries of held-back lines.
pub const SUMMARY_TARGET: &str = "exitpool::logs";

/// What each logging thread gathers lines in: it flushes once it has taken
/// every queued line, so a burst of lines (a batch of access lines) is one
/// `write` rather than one per line, and no line waits for a later one.
const LOG_BUFFER: usize = 64 * 1024;

/// Lines each logging queue holds by default (tracing-appender's default):
/// room for the gateway's bursts of access lines. Every slot costs 32 bytes
/// up front, so two such queues hold 8 MiB.
pub const QUEUE_LINES: usize = 128_000;

/// Installs the global subscriber: level from `RUST_LOG` (default
/// [`DEFAULT_FILTER`]). Access lines queue for a thread of their own
/// ([`QUEUE_LINES`]; a full queue makes the logging task wait rather than
/// drop one); other lines for another, which drops them when full.
pub fn init(format: LogFormat) -> LogGuard {
    init_with_queue(format, QUEUE_LINES)
}

/// As [`init`], with queues of `queue_lines` lines: the agent, which writes
/// a few lines a minute and no access lines, keeps its memory for relaying.
pub fn init_with_queue(format: LogFormat, queue_lines: usize) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    install(format, queue_lines, filter)
}

/// As [`init`], with `filter` (checked by [`check_filter`]; an invalid one
/// falls back to [`DEFAULT_FILTER`]) instead of `RUST_LOG`.
pub fn init_with_filter(format: LogFormat, filter: &str) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    install(format, QUEUE_LINES, filter)
}

fn install(
    format: LogFormat,
    queue_lines: usize,
    filter: tracing_subscriber::EnvFilter,
) -> LogGuard {
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = format == LogFormat::Json;
    let (access, access_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(queue_lines)
        .thread_name("exitpool-access")
        .finish(StderrLines::new(json));
    let (other, other_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(queue_lines)
        .thread_name("exitpool-logs")
        .finish(StderrLines::new(json));
    let writer = access
        .with_filter(|meta: &Metadata<'_>| is_access(meta))
        .or_else(other);
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let lines = match format {
        LogFormat::Text => lines
            .fmt_fields(debug_fn(escaped_field).delimited(" "))
            .boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    let throttle = Throttle::default();
    throttle.summarise_every(WINDOW);
    tracing_subscriber::registry()
        .with(filter)
        .with(throttle)
        .with(lines)
        .init();
    LogGuard {
        _access: access_guard,
        _other: other_guard,
        filter: filter_handle,
    }
}

fn is_access(meta: &Metadata<'_>) -> bool {
    meta.target() == exitpool_gateway::access::TARGET
}

/// Holds each call site to [`BURST`] lines per window and counts the rest.
/// Access lines are never held back. The table has one entry per call site
/// that logged, a set fixed when the binary was built.
#[derive(Clone, Default)]
pub struct Throttle {
    sites: Arc<Mutex<HashMap<usize, Site>>>,
}

struct Site {
    meta: &'static Metadata<'static>,
    written: u32,
    held_back: u64,
}

impl Throttle {
    /// Whether this event of `meta`'s call site may be written now.
    pub fn admit(&self, meta: &'static Metadata<'static>) -> bool {
        if is_access(meta) || meta.target() == SUMMARY_TARGET {
            return true;
        }
        let key = meta as *const Metadata<'static> as usize;
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let site = sites.entry(key).or_insert(Site {
            meta,
            written: 0,
            held_back: 0,
        });
        if site.written < BURST {
            site.written += 1;
            true
        } else {
            site.held_back += 1;
            false
        }
    }

    /// Ends the window: every call site's count starts again, and what each
    /// held back is returned as (call site, count).
    pub fn end_window(&self) -> Vec<(&'static Metadata<'static>, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = Vec::new();
        sites.retain(|_, site| {
            if site.held_back > 0 {
                held.push((site.meta, site.held_back));
            }
            let busy = site.written > 0;
            site.written = 0;
            site.held_back = 0;
            busy
        });
        held
    }

    /// Starts the thread that ends a window every `period` and writes one
    /// summary line per call site that held lines back. It is a thread, not a
    /// task, because an event emitted while another is being dispatched is
    /// dropped by `tracing`, and the runtime may not exist yet.
    fn summarise_every(&self, period: Duration) {
        let throttle = self.clone();
        let started = std::thread::Builder::new()
            .name("exitpool-log-summary".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                for (site, held_back) in throttle.end_window() {
                    tracing::warn!(
                        target: SUMMARY_TARGET,
                        held_back,
                        site = format_args!(
                            "{}:{}",
                            site.file().unwrap_or("?"),
                            site.line().unwrap_or(0)
                        ),
                        site_target = site.target(),
                        "log lines held back: this call site wrote {BURST} lines in {period:?}; \
                         the rest were counted, not written"
                    );
                }
            });
        if let Err(error) = started {
            eprintln!("cannot start the log summary thread ({error}): repeated lines are dropped without a summary");
        }
    }
}

/// A layer of its own rather than a per-layer filter on the lines: the lines
/// are the only output, so holding an event back globally is the same, and a
/// per-layer filter would add its bookkeeping to every span entered and left
/// (several per connection, on the hot path).
impl<S: Subscriber> Layer<S> for Throttle {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        self.admit(event.metadata())
    }
}

/// One logging thread's lines, gathered and written to stderr whole: the two
/// threads lock stderr for each write, so their lines never interleave
/// mid-line. JSON lines get the line separators escaped.
struct StderrLines {
    buffer: Vec<u8>,
    json: bool,
}

impl StderrLines {
    fn new(json: bool) -> StderrLines {
        StderrLines {
            buffer: Vec::with_capacity(LOG_BUFFER),
            json,
        }
    }
}

impl io::Write for StderrLines {
    /// Takes one whole line (the logging thread writes each event at once).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if !self.buffer.is_empty() && self.buffer.len() + line.len() > LOG_BUFFER {
            self.flush()?;
        }
        if self.json {
            escape_separators(line, &mut self.buffer);
        } else {
            self.buffer.extend_from_slice(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let written = io::stderr().lock().write_all(&self.buffer);
            self.buffer.clear();
            written?;
        }
        Ok(())
    }
}

/// Copies a JSON line with U+0085, U+2028 and U+2029 written as escapes. In a
/// JSON line these can only stand inside strings, where the escape means the
/// same character.
fn escape_separators(line: &[u8], out: &mut Vec<u8>) {
    let mut rest = line;
    while let Some(at) = rest.iter().position(|&b| b == 0xC2 || b == 0xE2) {
        let (escape, len) = match rest[at..] {
            [0xC2, 0x85, ..] => (&b"\\u0085"[..], 2),
            [0xE2, 0x80, 0xA8, ..] => (&b"\\u2028"[..], 3),
            [0xE2, 0x80, 0xA9, ..] => (&b"\\u2029"[..], 3),
            _ => {
                out.extend_from_slice(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
        };
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(escape);
        rest = &rest[at + len..];
    }
    out.extend_from_slice(rest);
}

/// Formats one field as the default text format does (`name=value`, the
/// message bare), with control characters escaped as they are written.
fn escaped_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    if field.name() != "message" {
        write!(writer, "{field}=")?;
    }
    write!(Escaping(writer), "{value:?}")
}

/// Whether a character could end or forge a line: control characters (NEL,
/// U+0085, is one) and the Unicode line and paragraph separators.
fn breaks_lines(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Passes text through, writing each character that could break a line as its
/// Rust escape (`\n`, `\u{1b}`, `\u{2028}`, ...): one line per event, whatever
/// the values hold.
struct Escaping<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(breaks_lines) {
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
    fn control_characters_and_separators_are_escaped_and_the_rest_kept() {
        let mut out = String::new();
        write!(
            Escaping(&mut out),
            "a\nb\r\u{1b}[31mc ü\u{85}d\u{2028}e\u{2029}f"
        )
        .unwrap();
        assert_eq!(out, "a\\nb\\r\\u{1b}[31mc ü\\u{85}d\\u{2028}e\\u{2029}f");
    }

    #[test]
    fn json_lines_get_the_separators_escaped_and_nothing_else_changes() {
        let line = "{\"m\":\"a\u{85}b\u{2028}c\u{2029}d é €\"}\n";
        let mut out = Vec::new();
        escape_separators(line.as_bytes(), &mut out);
        let out = String::from_utf8(out).expect("still UTF-8");
        assert_eq!(out, "{\"m\":\"a\\u0085b\\u2028c\\u2029d é €\"}\n");
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(parsed["m"], "a\u{85}b\u{2028}c\u{2029}d é €");
    }

    static SITE: tracing::callsite::DefaultCallsite =
        tracing::callsite::DefaultCallsite::new(&META);
    static META: Metadata<'static> = tracing::metadata!(
        name: "test event",
        target: "exitpool::test",
        level: tracing::Level::WARN,
        fields: &[],
        callsite: &SITE,
        kind: tracing::metadata::Kind::EVENT,
    );

    #[test]
    fn a_call_site_writes_its_burst_then_counts_until_the_window_ends() {
        let throttle = Throttle::default();
        let written = (0..1000).filter(|_| throttle.admit(&META)).count();
        assert_eq!(written, BURST as usize);
        let held = throttle.end_window();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1, 1000 - u64::from(BURST));
        assert!(throttle.admit(&META), "a new window writes again");
        assert!(throttle.end_window().is_empty(), "nothing held back");
    }
}
