//! A `redis-server` of a test's or a benchmark run's own, for fleet mode: no
//! persistence and no TCP port, listening on a Unix socket in a temporary
//! directory, so it can be killed and started again at the same address
//! (empty, as a Redis that lost its data). Connecting is the caller's: this
//! crate starts programs and speaks no Redis.

use crate::{Launch, LaunchError, Process, Ready};
use std::path::PathBuf;
use std::time::Duration;

/// The program, found on `PATH` (Debian's `redis-server`; `scripts/test`
/// installs it).
pub const REDIS_SERVER: &str = "redis-server";

/// What `redis-server` prints once it accepts connections.
const READY: &str = "ready to accept connections";

/// A running (or stopped) `redis-server` on a socket of its own.
pub struct RedisServer {
    process: Option<Process>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one, waiting at most `bound` until it accepts connections.
    pub async fn start(bound: Duration) -> Result<RedisServer, LaunchError> {
        let dir = tempfile::tempdir().map_err(|source| LaunchError::Io {
            name: REDIS_SERVER.into(),
            source,
        })?;
        let mut server = RedisServer { process: None, dir };
        server.start_again(bound).await?;
        Ok(server)
    }

    /// The Unix socket it listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL gateways (and clients) use.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts it (again, after [`RedisServer::kill`]) at the same socket,
    /// empty.
    pub async fn start_again(&mut self, bound: Duration) -> Result<(), LaunchError> {
        let process = Launch::new(REDIS_SERVER)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(self.dir.path())
            .start(Ready::line(READY), bound)
            .await
            .map_err(|error| match error {
                LaunchError::Spawn { program, source } => LaunchError::Spawn {
                    program: format!("{program} (not installed? scripts/test installs it)"),
                    source,
                },
                other => other,
            })?;
        self.process = Some(process);
        Ok(())
    }

    /// Kills it (SIGKILL: nothing is saved, every connection drops at once).
    pub async fn kill(&mut self) -> Result<(), LaunchError> {
        if let Some(mut process) = self.process.take() {
            process.kill().await?;
        }
        Ok(())
    }

    /// Stops it (SIGTERM, SIGKILL after `grace`).
    pub async fn stop(&mut self, grace: Duration) -> Result<(), LaunchError> {
        if let Some(mut process) = self.process.take() {
            process.stop(grace).await?;
        }
        Ok(())
    }
}
