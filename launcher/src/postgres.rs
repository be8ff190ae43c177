//! A throwaway PostgreSQL cluster of a test run's own: `initdb` into a
//! temporary directory, then `postgres` listening on a Unix socket in that
//! directory and on a free loopback TCP port, trusting local connections
//! (nothing but this machine's loopback reaches it). Stopped and removed on
//! drop. Connecting is the caller's: this crate starts programs and speaks no
//! SQL; [`PostgresServer::create_database`] runs Debian's `createdb`.
//!
//! PostgreSQL refuses to run as root. Run as root (CI), the cluster's
//! directory is handed to the unprivileged `nobody` (or a system user
//! `exitpool-pg`, created with `useradd --system` where `nobody` is missing)
//! and every PostgreSQL program runs as that user through `setpriv`, which
//! execs the program in place: the child this crate waits on and signals is
//! the postmaster itself. Run as anyone else, the programs run as the caller.
//!
//! The programs are Debian's (`postgresql` package; `scripts/test` installs
//! it) under `/usr/lib/postgresql/NN/bin`, the newest NN; or on `PATH`.

use crate::{ports, Launch, LaunchError, Process, Ready};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Debian installs the server's programs, one directory per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// What the postmaster logs once it accepts connections.
const READY: &str = "database system is ready to accept connections";
/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";
/// The system user made when `nobody` is missing.
const FALLBACK_USER: &str = "exitpool-pg";
/// Bound on each one-shot helper (`id`, `useradd`, `initdb`, `createdb`).
const HELPER_BOUND: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running PostgreSQL cluster on a socket and a loopback port of its own.
pub struct PostgresServer {
    process: Option<Process>,
    bin: PathBuf,
    addr: SocketAddr,
    /// The unprivileged user the programs run as, when we are root.
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

fn io(name: &str, source: std::io::Error) -> LaunchError {
    LaunchError::Io {
        name: name.into(),
        source,
    }
}

/// The directory holding `initdb` and `postgres`.
fn bin_dir() -> Result<PathBuf, LaunchError> {
    let newest = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .ok_or_else(|| LaunchError::Spawn {
            program: "initdb (PostgreSQL not installed? scripts/test installs Debian's postgresql)"
                .into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

/// Runs a one-shot helper, failing with its output unless it exits 0.
async fn run_ok(launch: Launch, what: &str) -> Result<String, LaunchError> {
    let done = launch.run(HELPER_BOUND).await?;
    if !done.status.success() {
        return Err(LaunchError::Ended {
            name: what.into(),
            what: format!("success ({})", done.status),
            tail: format!("{}\n{}", done.stdout, done.stderr),
        });
    }
    Ok(done.stdout)
}

/// The uid and gid of `user`, if it exists.
async fn ids(user: &str) -> Result<Option<(u32, u32)>, LaunchError> {
    let uid = Launch::new("id")
        .args(["-u", user])
        .run(HELPER_BOUND)
        .await?;
    let gid = Launch::new("id")
        .args(["-g", user])
        .run(HELPER_BOUND)
        .await?;
    if !uid.status.success() || !gid.status.success() {
        return Ok(None);
    }
    let parse = |s: &str| s.trim().parse::<u32>().ok();
    Ok(parse(&uid.stdout).zip(parse(&gid.stdout)))
}

/// The unprivileged user to run as when we are root; `None` when we are not.
async fn unprivileged_user() -> Result<Option<(u32, u32)>, LaunchError> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(None);
    }
    if let Some(ids) = ids("nobody").await? {
        return Ok(Some(ids));
    }
    if ids(FALLBACK_USER).await?.is_none() {
        run_ok(
            Launch::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                FALLBACK_USER,
            ]),
            "useradd",
        )
        .await?;
    }
    ids(FALLBACK_USER).await?.map(Some).ok_or_else(|| {
        io(
            "useradd",
            std::io::Error::other(format!("user {FALLBACK_USER} still missing")),
        )
    })
}

impl PostgresServer {
    /// Creates a cluster and starts it, waiting at most `bound` for it to
    /// accept connections.
    pub async fn start(bound: Duration) -> Result<PostgresServer, LaunchError> {
        let bin = bin_dir()?;
        let user = unprivileged_user().await?;
        let dir = tempfile::tempdir().map_err(|e| io("postgres", e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| io("postgres", e))?;
        }
        let addr = ports::free_port().map_err(|e| io("postgres", e))?;
        let mut server = PostgresServer {
            process: None,
            bin,
            addr,
            user,
            dir,
        };
        let data = server.data_dir();
        run_ok(
            server.launch("initdb").arg("-D").arg(&data).args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        )
        .await?;
        let process = server
            .launch("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(addr.port().to_string())
            .arg("-c")
            .arg(format!("listen_addresses={}", addr.ip()))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                server.dir.path().display()
            ))
            // A throwaway cluster: its durability is not under test.
            .args(["-c", "fsync=off", "-c", "logging_collector=off"])
            .start(Ready::line(READY), bound)
            .await?;
        server.process = Some(process);
        Ok(server)
    }

    /// One of the server's programs, as the unprivileged user when we are root.
    fn launch(&self, program: &str) -> Launch {
        let path = self.bin.join(program);
        match self.user {
            Some((uid, gid)) => Launch::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(path),
            None => Launch::new(path),
        }
        // Some programs change to $HOME or read it; root's is not ours to use.
        .env("HOME", self.dir.path())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding its Unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its loopback TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of database `name` over TCP, as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@{}/{name}", self.addr)
    }

    /// Creates database `name` (`createdb`) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, LaunchError> {
        run_ok(
            self.launch("createdb")
                .arg("-h")
                .arg(self.dir.path())
                .arg("-p")
                .arg(self.addr.port().to_string())
                .args(["-U", SUPERUSER, name]),
            "createdb",
        )
        .await?;
        Ok(self.url(name))
    }

    /// Stops it with a fast shutdown (SIGINT: open sessions are ended),
    /// SIGKILL if that takes longer than 10 s.
    pub async fn stop(&mut self) -> Result<(), LaunchError> {
        if let Some(mut process) = self.process.take() {
            if process.exit_status().is_none() {
                signal(&process, rustix::process::Signal::INT);
            }
            match process.exited(STOP_GRACE).await {
                Err(LaunchError::Timeout { .. }) => {
                    process.kill().await?;
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}

/// Signals a live child by pid (the launcher's own [`crate::Signal`] has
/// no SIGINT or SIGQUIT, PostgreSQL's fast and immediate shutdowns).
fn signal(process: &Process, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(process.pid())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if process.exit_status().is_none() {
                // Immediate shutdown: the postmaster ends its backends and exits.
                // Dropping the process then SIGKILLs and reaps it; a backend
                // that outlives it sees the postmaster gone and exits too.
                signal(&process, rustix::process::Signal::QUIT);
            }
        }
    }
}
