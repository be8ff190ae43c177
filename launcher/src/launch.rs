//! How a child is started: [`Launch`] (program, arguments, environment,
//! optional stdin), the [`Ready`] event [`Launch::start`] waits for, and
//! [`Launch::run`] for one-shot commands such as `gateway pin`.

use crate::output::capture;
use crate::{LaunchError, Process};
use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Between two attempts to connect to a port that is not listening yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// The event that says a started child serves.
#[derive(Debug, Clone)]
pub enum Ready {
    /// Nothing to wait for: the caller watches for readiness itself (for
    /// example the gateway's agent count).
    Spawned,
    /// A line of output containing this text.
    Line(String),
    /// This TCP address accepting a connection (a program that prints nothing
    /// when it is ready, such as tinyproxy).
    Listening(SocketAddr),
}

impl Ready {
    /// A line of output containing `needle`.
    pub fn line(needle: impl Into<String>) -> Ready {
        Ready::Line(needle.into())
    }
}

/// A one-shot command's result.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout, lines joined with newlines.
    pub stdout: String,
    /// Its stderr, lines joined with newlines.
    pub stderr: String,
}

/// A program to start, built like [`std::process::Command`].
#[derive(Debug)]
pub struct Launch {
    name: String,
    command: Command,
    input: Option<Vec<u8>>,
}

impl Launch {
    /// `program`, with no arguments yet and this process's environment.
    pub fn new(program: impl AsRef<Path>) -> Launch {
        let program = program.as_ref();
        let name = program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned();
        Launch {
            name,
            command: Command::new(program),
            input: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.command.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Launch {
        self.command.args(args);
        self
    }

    /// Sets an environment variable (secrets go here, out of `ps`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.command.env(key, value);
        self
    }

    /// Removes an environment variable this process has.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Launch {
        self.command.env_remove(key);
        self
    }

    /// Bytes written to the child's stdin, which is then closed (otherwise
    /// stdin is empty).
    pub fn input(mut self, bytes: impl Into<Vec<u8>>) -> Launch {
        self.input = Some(bytes.into());
        self
    }

    /// Starts the child with its output captured, without waiting for anything.
    pub fn spawn(self) -> Result<Process, LaunchError> {
        let Launch {
            name,
            mut command,
            input,
        } = self;
        let spawned = command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = spawned.map_err(|source| LaunchError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both pipes were requested");
        };
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            // On a thread: a child that does not read must not block us.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        Ok(Process::new(name, child, capture(stdout, stderr)))
    }

    /// Starts the child and waits at most `bound` for `ready`. On failure the
    /// child is stopped and the error quotes its last output.
    pub async fn start(self, ready: Ready, bound: Duration) -> Result<Process, LaunchError> {
        let mut process = self.spawn()?;
        match ready {
            Ready::Spawned => {}
            Ready::Line(needle) => {
                process.line_with(&needle, bound).await?;
            }
            Ready::Listening(addr) => listening(&mut process, addr, bound).await?,
        }
        Ok(process)
    }

    /// Runs a one-shot command to its end, at most `bound`.
    pub async fn run(self, bound: Duration) -> Result<Finished, LaunchError> {
        let mut process = self.spawn()?;
        let status = process.exited(bound).await?;
        Ok(Finished {
            status,
            stdout: process.stdout(),
            stderr: process.stderr(),
        })
    }
}

/// Waits until `addr` accepts a TCP connection, or the child exits.
async fn listening(
    process: &mut Process,
    addr: SocketAddr,
    bound: Duration,
) -> Result<(), LaunchError> {
    let what = format!("listener on {addr}");
    let deadline = Instant::now() + bound;
    loop {
        let attempt =
            tokio::time::timeout_at(deadline.into(), tokio::net::TcpStream::connect(addr));
        match attempt.await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(_)) => {}
            Err(_) => break,
        }
        // A child that has exited will never listen: say so at once.
        if let Some(status) = process.exit_status() {
            return Err(LaunchError::Ended {
                name: process.name().to_owned(),
                what: format!("{what} ({status})"),
                tail: process.tail(),
            });
        }
        if tokio::time::timeout_at(deadline.into(), tokio::time::sleep(CONNECT_RETRY))
            .await
            .is_err()
        {
            break;
        }
    }
    Err(LaunchError::Timeout {
        name: process.name().to_owned(),
        what,
        bound,
        tail: process.tail(),
    })
}
