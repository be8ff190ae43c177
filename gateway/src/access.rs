//! The access log: one line per customer transfer, formatted and written by a
//! thread of its own. A connection only hands its figures over (a bounded
//! queue); turning them into text, which cost a short connection about as much
//! CPU as the rest of the gateway's work on it, happens off the runtime.
//! The thread takes lines in batches, at most one every [`BATCH_WINDOW`]: a
//! thread woken for every line cost the runtime a wake-up (a futex call, and
//! on a busy machine a context switch) per connection, more than the line.
//!
//! Lines go out as `info` events with the target [`TARGET`], so
//! `RUST_LOG=info,exitpool_gateway::access=off` turns them off; nothing is
//! gathered for them then. When the queue is full the line is written in place,
//! more slowly: never dropped.

use crate::directory::Agent;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// The event target of access lines.
pub const TARGET: &str = "exitpool_gateway::access";

/// Lines waiting for the access-log thread; past this, lines are written in
/// place by the connection's own task.
pub const QUEUE: usize = 16 * 1024;

/// How long the access-log thread lets lines gather after writing a batch: the
/// most a line waits before it is written.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// One transfer's line, as its connection hands it over.
#[derive(Debug)]
pub struct AccessRecord {
    /// Base user name.
    pub user: String,
    /// Customer address.
    pub peer: SocketAddr,
    /// The plain-HTTP request's method, if any.
    pub method: Option<hyper::Method>,
    /// `host:port` as the customer named it.
    pub target: String,
    /// The exit that carried it.
    pub exit: Arc<Agent>,
    /// The plain-HTTP answer's status, if any.
    pub status: Option<u16>,
    /// Bytes from the customer.
    pub bytes_up: u64,
    /// Bytes to the customer.
    pub bytes_down: u64,
    /// From the customer's request to the end.
    pub duration: Duration,
    /// Why it ended abnormally; `None` for a clean end.
    pub failure: Option<String>,
}

impl AccessRecord {
    fn write(self) {
        info!(
            target: TARGET,
            user = %self.user,
            peer = %self.peer,
            method = self.method.as_ref().map(tracing::field::display),
            target = %self.target,
            exit = %self.exit.exit_id,
            country = self.exit.location.country.as_deref().unwrap_or("??"),
            status = self.status,
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = self.duration.as_millis() as u64,
            result = self.failure.as_deref().unwrap_or("ok"),
            "access"
        );
    }
}

/// What the access-log thread is asked to do.
enum Entry {
    Line(Box<AccessRecord>),
    /// Answer once every line queued before this one is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The handle connections write through.
pub struct AccessLog {
    queue: SyncSender<Entry>,
}

impl AccessLog {
    /// Starts the access-log thread.
    pub fn start() -> std::io::Result<AccessLog> {
        let (queue, lines) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("exitpool-access".into())
            .spawn(move || write_lines(lines))?;
        Ok(AccessLog { queue })
    }

    /// Whether access lines are wanted at all (the log filter lets them through).
    pub fn enabled() -> bool {
        tracing::enabled!(target: TARGET, tracing::Level::INFO)
    }

    /// Hands `record` to the thread, or writes it here when the queue is full.
    pub fn write(&self, record: AccessRecord) {
        match self.queue.try_send(Entry::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(Entry::Line(record)))
            | Err(TrySendError::Disconnected(Entry::Line(record))) => record.write(),
            Err(_) => {}
        }
    }

    /// Waits (at most `bound`) until every line handed over so far is written:
    /// at shutdown, so the last connections' lines are not lost with the process.
    pub async fn flush(&self, bound: Duration) {
        let (done, written) = tokio::sync::oneshot::channel();
        let queue = self.queue.clone();
        // A full queue makes the hand-over wait: off the runtime.
        let handed = tokio::task::spawn_blocking(move || queue.send(Entry::Flush(done)).is_ok());
        let _ = tokio::time::timeout(bound, async {
            if handed.await.unwrap_or(false) {
                let _ = written.await;
            }
        })
        .await;
    }
}

/// Writes what is queued, then lets the next lines gather for
/// [`BATCH_WINDOW`] before looking again, so senders find the thread awake
/// (no wake-up to pay) while a batch builds. Ends when every sender is gone.
fn write_lines(lines: Receiver<Entry>) {
    while let Ok(first) = lines.recv() {
        let mut entry = Some(first);
        while let Some(next) = entry {
            match next {
                Entry::Line(record) => record.write(),
                Entry::Flush(done) => {
                    let _ = done.send(());
                }
            }
            entry = lines.try_recv().ok();
        }
        std::thread::sleep(BATCH_WINDOW);
    }
}
