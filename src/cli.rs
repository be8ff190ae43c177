//! What the `gateway` and `agent` binaries share: running their async main on a
//! tokio runtime with one way of reporting failure, the signals that stop them,
//! and flag values parsed the same way the library parses them in files.

use std::future::Future;
use std::process::ExitCode;

/// Runs `main` on a tokio runtime with `threads` workers: 1 is a current-thread
/// runtime (no cross-thread wake-ups, the fastest for a few flows), 0 is one
/// worker per core. An error is printed as `NAME: error` (with its causes) and
/// the process exits non-zero.
pub fn run(name: &str, threads: usize, main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    let built = builder.enable_all().build();
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// A network flag value (`--proxy-protocol-from`): an address or a network in
/// CIDR form with no host bits set, as `allow_ips` in the users file.
pub fn network(text: &str) -> Result<ipnet::IpNet, String> {
    exitpool_gateway::accounts::parse_network(text)
}
