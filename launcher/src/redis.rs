//! A `redis-server` of a test's or a benchmark run's own, for fleet mode: no
//! persistence and no TCP port, listening on a Unix socket in a temporary
//! directory, so it can be killed and started again at the same address
//! (empty, as a Redis that lost its data). Connecting is the caller's: this
//! crate starts programs and speaks no Redis.
//!
//! [`RedisOptions`] add a password (`requirepass`) or TLS: a TLS server
//! listens on a loopback TCP port of its own (`--tls-port`) with the caller's
//! certificate and key, clients presenting no certificate of their own.

use crate::{Launch, LaunchError, Process, Ready};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The program, found on `PATH` (Debian's `redis-server`; `scripts/test`
/// installs it).
pub const REDIS_SERVER: &str = "redis-server";

/// What `redis-server` prints once it accepts connections.
const READY: &str = "ready to accept connections";

/// How a [`RedisServer`] is started beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Clients must authenticate with this password (`requirepass`).
    pub password: Option<String>,
    /// Serve TLS only, on a TCP port.
    pub tls: Option<RedisTls>,
}

/// A TLS `redis-server`'s files (PEM) and port.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// Its certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA it names (`--tls-ca-cert-file`, which it requires even when
    /// clients present no certificate).
    pub ca: PathBuf,
    /// The loopback TCP port of its TLS listener ([`crate::ports::free_port`]).
    pub addr: SocketAddr,
}

/// A running (or stopped) `redis-server` on a socket of its own.
pub struct RedisServer {
    process: Option<Process>,
    dir: tempfile::TempDir,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts one, waiting at most `bound` until it accepts connections.
    pub async fn start(bound: Duration) -> Result<RedisServer, LaunchError> {
        RedisServer::start_with(RedisOptions::default(), bound).await
    }

    /// Starts one with `options`, waiting at most `bound` until it accepts
    /// connections.
    pub async fn start_with(
        options: RedisOptions,
        bound: Duration,
    ) -> Result<RedisServer, LaunchError> {
        let dir = tempfile::tempdir().map_err(|source| LaunchError::Io {
            name: REDIS_SERVER.into(),
            source,
        })?;
        let mut server = RedisServer {
            process: None,
            dir,
            options,
        };
        server.start_again(bound).await?;
        Ok(server)
    }

    /// The Unix socket it listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL gateways (and clients) use, with the password if it has one:
    /// `unix://…`, or `rediss://127.0.0.1:PORT` over TLS.
    pub fn url(&self) -> String {
        self.url_with(self.options.password.as_deref())
    }

    /// Its URL with `password` (a wrong one, say) in place of its own.
    pub fn url_with(&self, password: Option<&str>) -> String {
        match (&self.options.tls, password) {
            (Some(tls), None) => format!("rediss://{}", tls.addr),
            (Some(tls), Some(password)) => format!("rediss://:{password}@{}", tls.addr),
            (None, None) => format!("unix://{}", self.socket().display()),
            (None, Some(password)) => {
                format!("unix://{}?pass={password}", self.socket().display())
            }
        }
    }

    /// Starts it (again, after [`RedisServer::kill`]) at the same socket,
    /// empty.
    pub async fn start_again(&mut self, bound: Duration) -> Result<(), LaunchError> {
        let mut launch = Launch::new(REDIS_SERVER)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.options.password {
            launch = launch.arg("--requirepass").arg(password);
        }
        if let Some(tls) = &self.options.tls {
            launch = launch
                .arg("--bind")
                .arg(tls.addr.ip().to_string())
                .arg("--tls-port")
                .arg(tls.addr.port().to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]);
        }
        let process =
            launch
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
