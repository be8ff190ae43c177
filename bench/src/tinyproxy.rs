//! tinyproxy, the single plaintext hop exitpool is compared with, when it is
//! installed: a throwaway configuration and one child process.

use crate::client::Route;
use crate::measure::is_root;
use anyhow::{Context, Result};
use exitpool_launcher::ports::free_port;
use exitpool_launcher::{Launch, Process, Ready};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub struct Tinyproxy {
    process: Process,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy when it was found, so its column can be filled.
    pub async fn start_if_installed(binary: Option<&Path>) -> Result<Option<Tinyproxy>> {
        match binary {
            Some(binary) => Ok(Some(Self::start(binary).await?)),
            None => Ok(None),
        }
    }

    async fn start(binary: &Path) -> Result<Tinyproxy> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?.port();
        // Clients may come from anywhere on 127.0.0.0/8 (see `Route::with_source`).
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 4096\nAllow 127.0.0.0/8\nLogLevel Critical\nDisableViaHeader Yes\n"
        );
        // Run as root, tinyproxy insists on dropping to a named user.
        if is_root() {
            conf.push_str("User nobody\nGroup nogroup\n");
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        // It prints nothing when ready (LogLevel Critical): wait for its port.
        let process = Launch::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .start(Ready::Listening(addr), Duration::from_secs(10))
            .await
            .context("starting tinyproxy")?;
        Ok(Tinyproxy {
            process,
            addr,
            _dir: dir,
        })
    }

    pub fn path(&self) -> Route {
        Route::Proxy {
            addr: self.addr,
            auth: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
