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
            eprintln!("{name}: {}", cause_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, each said once: many errors
/// repeat their source in their own message (`binding 127.0.0.1:8080: Address
/// already in use`), and printing the chain as well said the OS's words twice.
pub fn cause_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. On Unix both are listened for
/// from the moment this is called, not from the future's first poll, so a
/// signal sent right after a process says it is ready cannot meet the
/// default action (the process killed, exit status "signal").
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (terminate, interrupt) {
                (Some(mut terminate), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Some(mut terminate), None) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                (None, _) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A network flag value (`--proxy-protocol-from`): an address or a network in
/// CIDR form with no host bits set, as `allow_ips` in the users file.
pub fn network(text: &str) -> Result<ipnet::IpNet, String> {
    exitpool_gateway::accounts::parse_network(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding {addr}: {source}")]
    struct Bind {
        addr: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let os = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let error = anyhow::Error::new(Bind {
            addr: "127.0.0.1:8080",
            source: os,
        })
        .context("starting the gateway");
        let text = cause_chain(&error);
        assert_eq!(text.matches("address in use").count(), 1, "{text}");
        assert!(
            text.starts_with("starting the gateway: binding 127.0.0.1:8080"),
            "{text}"
        );
    }
}
