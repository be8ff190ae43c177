//! A child's stdout and stderr, read line by line on two threads into one
//! shared log that waiters watch. Threads rather than tasks, so capture works
//! the same under any runtime (or none, for a process started outside one).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use tokio::sync::watch;

/// How many lines the log keeps; older ones are dropped, so a chatty process
/// running for a long load test cannot grow this one's memory without end.
const MAX_LINES: usize = 100_000;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pipe {
    Stdout,
    Stderr,
}

/// Everything read so far.
#[derive(Debug)]
pub(crate) struct Log {
    /// Lines in arrival order, both pipes interleaved.
    lines: VecDeque<(Pipe, String)>,
    /// The number of lines ever dropped from the front: line `i` (counted from
    /// the first line the child wrote) is `lines[i - dropped]`.
    dropped: usize,
    /// Pipes not yet at end of file; 0 once the child has closed both.
    pub(crate) open: usize,
}

impl Log {
    /// The number of lines ever read.
    pub(crate) fn end(&self) -> usize {
        self.dropped + self.lines.len()
    }

    /// The first line at or after line `from` that contains `needle`, with its number.
    pub(crate) fn find(&self, from: usize, needle: &str) -> Option<(usize, String)> {
        let skip = from.saturating_sub(self.dropped);
        self.lines
            .iter()
            .enumerate()
            .skip(skip)
            .find(|(_, (_, line))| line.contains(needle))
            .map(|(i, (_, line))| (i + self.dropped, line.clone()))
    }

    /// The lines one pipe wrote, joined with newlines.
    pub(crate) fn text(&self, pipe: Pipe) -> String {
        let lines: Vec<&str> = self
            .lines
            .iter()
            .filter(|(from, _)| *from == pipe)
            .map(|(_, line)| line.as_str())
            .collect();
        lines.join("\n")
    }

    /// Every line kept, both pipes interleaved.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.iter().map(|(_, line)| line.clone()).collect()
    }

    /// The last `n` lines on one line, for error messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        let lines: Vec<&str> = self
            .lines
            .range(start..)
            .map(|(_, line)| line.as_str())
            .collect();
        if lines.is_empty() {
            "(none)".to_owned()
        } else {
            lines.join(" | ")
        }
    }

    fn push(&mut self, pipe: Pipe, line: String) {
        if self.lines.len() == MAX_LINES {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back((pipe, line));
    }
}

/// Starts reading both pipes; the returned sender holds the log.
pub(crate) fn capture(
    stdout: impl Read + Send + 'static,
    stderr: impl Read + Send + 'static,
) -> watch::Sender<Log> {
    let (log, _) = watch::channel(Log {
        lines: VecDeque::new(),
        dropped: 0,
        open: 2,
    });
    read_lines(Pipe::Stdout, stdout, log.clone());
    read_lines(Pipe::Stderr, stderr, log.clone());
    log
}

/// Reads `pipe` to its end on a thread of its own. Lines that are not UTF-8
/// are kept (lossily) rather than ending the capture.
fn read_lines(pipe: Pipe, from: impl Read + Send + 'static, log: watch::Sender<Log>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    log.send_modify(|log| log.push(pipe, line));
                }
            }
        }
        log.send_modify(|log| log.open -= 1);
    });
}
