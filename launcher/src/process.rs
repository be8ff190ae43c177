//! A running child process: its captured output, signals, bounded waits for
//! a line or for its exit, and kill-and-reap on drop.

use crate::output::{Log, Pipe};
use crate::LaunchError;
use rustix::process::{Pid, PidfdFlags};
use std::process::{Child, ExitStatus};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Lines of output quoted in error messages.
const TAIL_LINES: usize = 8;
/// How long a SIGKILLed process may take to be reaped.
const KILL_BOUND: Duration = Duration::from_secs(10);

/// The signals the tests and the load test send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: a graceful stop.
    Term,
    /// SIGHUP: the gateway reloads its accounts and tokens.
    Hup,
    /// SIGKILL: a crash.
    Kill,
    /// SIGSTOP: a frozen device. Its sockets stay open and nothing answers on
    /// them, so only a liveness check can tell it from a quiet one.
    Stop,
}

/// A running child. Dropping it kills the child (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: watch::Sender<Log>,
    /// Where the next [`Process::line_with`] starts looking: after the last match.
    cursor: usize,
    /// Set once the child has been reaped, after which its pid may be reused
    /// and must not be signalled.
    status: Option<ExitStatus>,
}

impl Process {
    pub(crate) fn new(name: String, child: Child, log: watch::Sender<Log>) -> Process {
        Process {
            name,
            child,
            log,
            cursor: 0,
            status: None,
        }
    }

    /// The program's file name, as used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line of output kept so far, stdout and stderr interleaved.
    pub fn lines(&self) -> Vec<String> {
        self.log.borrow().lines()
    }

    /// Everything the child wrote to stdout so far, lines joined with newlines.
    pub fn stdout(&self) -> String {
        self.log.borrow().text(Pipe::Stdout)
    }

    /// Everything the child wrote to stderr so far, lines joined with newlines.
    pub fn stderr(&self) -> String {
        self.log.borrow().text(Pipe::Stderr)
    }

    /// The last lines of output on one line, for messages.
    pub fn tail(&self) -> String {
        self.log.borrow().tail(TAIL_LINES)
    }

    /// Waits at most `bound` for a line containing `needle`, after the line the
    /// previous call matched (so successive calls read the output in order),
    /// and returns it.
    pub async fn line_with(
        &mut self,
        needle: &str,
        bound: Duration,
    ) -> Result<String, LaunchError> {
        let what = format!("line with {needle:?}");
        let mut scanned = self.cursor;
        let mut watching = self.log.subscribe();
        let wait = watching.wait_for(|log| {
            let hit = log.find(scanned, needle).is_some();
            scanned = log.end();
            hit || log.open == 0
        });
        let found = match tokio::time::timeout(bound, wait).await {
            Err(_) => return Err(self.timeout(what, bound)),
            // The sender lives in `self`, so the channel cannot close here.
            Ok(log) => log.ok().and_then(|log| log.find(self.cursor, needle)),
        };
        match found {
            Some((at, line)) => {
                self.cursor = at + 1;
                Ok(line)
            }
            None => Err(self.ended(what)),
        }
    }

    /// Sends `signal`, unless the child has already been reaped.
    pub fn signal(&self, signal: Signal) -> Result<(), LaunchError> {
        if self.status.is_some() {
            return Err(self.io(std::io::Error::other("it has already exited")));
        }
        let signal = match signal {
            Signal::Term => rustix::process::Signal::TERM,
            Signal::Hup => rustix::process::Signal::HUP,
            Signal::Kill => rustix::process::Signal::KILL,
            Signal::Stop => rustix::process::Signal::STOP,
        };
        rustix::process::kill_process(Pid::from_child(&self.child), signal)
            .map_err(|errno| self.io(errno.into()))
    }

    /// The child's exit status if it has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `bound` for the child to exit and for its output to be
    /// read to the end, then returns its status.
    pub async fn exited(&mut self, bound: Duration) -> Result<ExitStatus, LaunchError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let exit = async {
            // A pidfd turns readable when the process exits (zombies included).
            let pidfd =
                rustix::process::pidfd_open(Pid::from_child(&self.child), PidfdFlags::empty())?;
            // Deprecated as unsound for descriptors the AsyncFd does not own; it
            // owns this one (an OwnedFd moved in), and the sound replacement
            // is `unsafe`, which this crate forbids.
            #[allow(deprecated)]
            let pidfd = AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)?;
            drop(pidfd.readable().await?);
            let mut output = self.log.subscribe();
            let _closed = output.wait_for(|log| log.open == 0).await.is_ok();
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(bound, exit).await {
            Err(_) => Err(self.timeout("exit".to_owned(), bound)),
            Ok(Err(error)) => Err(self.io(error)),
            Ok(Ok(())) => match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    Ok(status)
                }
                Ok(None) => Err(self.io(std::io::Error::other("pidfd readable but not exited"))),
                Err(error) => Err(self.io(error)),
            },
        }
    }

    /// SIGTERM, then waits at most `grace` for the exit; SIGKILL after that.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, LaunchError> {
        if self.status.is_none() {
            self.signal(Signal::Term)?;
        }
        match self.exited(grace).await {
            Err(LaunchError::Timeout { .. }) => self.kill().await,
            other => other,
        }
    }

    /// SIGKILL, as a crash, and waits for the exit.
    pub async fn kill(&mut self) -> Result<ExitStatus, LaunchError> {
        if self.status.is_none() {
            self.signal(Signal::Kill)?;
        }
        self.exited(KILL_BOUND).await
    }

    fn timeout(&self, what: String, bound: Duration) -> LaunchError {
        LaunchError::Timeout {
            name: self.name.clone(),
            what,
            bound,
            tail: self.tail(),
        }
    }

    fn ended(&self, what: String) -> LaunchError {
        LaunchError::Ended {
            name: self.name.clone(),
            what,
            tail: self.tail(),
        }
    }

    fn io(&self, source: std::io::Error) -> LaunchError {
        LaunchError::Io {
            name: self.name.clone(),
            source,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SIGKILL is not blockable, so the wait returns at once.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
