//! Exits that fail in the ways home devices do, for the health, retry and
//! dead-exit tests: raw agents ([`super::raw`], over the fixture's transport)
//! that join with a valid `Hello`, then serve relay streams as an echo for
//! their first `good_opens`, and fail every later one as `mode` says.
//!
//! (tests/misbehaving.rs uses the same raw agents to break the handshake; this
//! one joins properly and breaks the relay opens.)

use super::raw::RawAgent;
use super::TestGateway;
use exitpool::protocol::{
    read_frame, write_frame, AgentMessage, Capacity, FailureCode, OpenReply, OpenRequest,
};
use exitpool::transport::{Tunnel, TunnelConnection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// How a flaky exit fails an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Reads `Open` and never answers (its tunnel stays alive).
    NoAnswer,
    /// Closes its whole tunnel on `Open`: a lost tunnel.
    DropTunnel,
    /// Answers `Failed` with `AgentUnavailable`.
    Unavailable,
    /// Answers `Failed` with `ConnectionRefused`: the target's fault, not its own.
    TargetRefused,
    /// Answers `Opened` only after this long, then echoes: slow, not failing.
    Slow(std::time::Duration),
    /// Answers `Opened`, takes the customer's first bytes, then closes its
    /// whole tunnel: an exit lost mid-relay.
    DropTunnelMidRelay,
    /// Answers `Opened`, takes the customer's first bytes, then resets the
    /// stream: passing on the target's reset, the exit itself fine.
    ResetMidRelay,
}

/// A joined raw agent; dropping it leaves abruptly (its tunnel goes).
pub struct FlakyExit {
    /// The id customers see for it.
    pub exit_id: String,
    /// Opens it has been asked for so far.
    pub opens: Arc<AtomicU32>,
    /// Its tunnel and control stream, held so the gateway keeps it joined.
    raw: RawAgent,
    _serving: tokio::task::JoinHandle<()>,
}

impl FlakyExit {
    /// Joins `net`'s gateway from `ip` over `net`'s transport with the device
    /// key named `agent_id`; echoes its first `good_opens` streams, then fails
    /// each open by `mode`.
    pub async fn join(
        net: &TestGateway,
        ip: &str,
        agent_id: &str,
        good_opens: u32,
        mode: FailMode,
    ) -> FlakyExit {
        let raw = RawAgent::join(net, ip, agent_id, net.transport, |hello| {
            if let AgentMessage::Hello {
                software, capacity, ..
            } = hello
            {
                *software = "flaky-test-exit".into();
                *capacity = Capacity { max_streams: 64 };
            }
        })
        .await;
        let opens = Arc::new(AtomicU32::new(0));
        let serving = tokio::spawn(serve(
            raw.connection.clone(),
            opens.clone(),
            good_opens,
            mode,
        ));
        FlakyExit {
            exit_id: raw.exit_id.clone(),
            opens,
            raw,
            _serving: serving,
        }
    }

    /// Closes its tunnel, as a device does before it reconnects.
    pub fn leave(&self) {
        self.raw.close();
    }
}

/// Answers `Opened` and echoes the stream.
async fn echo(
    mut send: exitpool::transport::StreamSend,
    mut recv: exitpool::transport::StreamRecv,
) {
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    if write_frame(&mut send, &OpenReply::Opened { peer })
        .await
        .is_ok()
    {
        let _ = tokio::io::copy(&mut recv, &mut send).await;
        let _ = exitpool::transport::TunnelSend::finish(&mut send);
    }
}

async fn serve(connection: Tunnel, opens: Arc<AtomicU32>, good: u32, mode: FailMode) {
    while let Ok((mut send, mut recv)) = connection.accept_stream().await {
        let connection = connection.clone();
        let opens = opens.clone();
        tokio::spawn(async move {
            let Ok(_open) = read_frame::<OpenRequest, _>(&mut recv).await else {
                return;
            };
            let n = opens.fetch_add(1, Ordering::Relaxed);
            if n < good {
                echo(send, recv).await;
                return;
            }
            let code = match mode {
                FailMode::DropTunnelMidRelay | FailMode::ResetMidRelay => {
                    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
                    if write_frame(&mut send, &OpenReply::Opened { peer })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut first = [0u8; 1];
                    if tokio::io::AsyncReadExt::read_exact(&mut recv, &mut first)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if mode == FailMode::DropTunnelMidRelay {
                        connection.close(0, b"gone");
                    } else {
                        exitpool::transport::TunnelSend::reset(&mut send, 0);
                        exitpool::transport::TunnelRecv::stop(&mut recv, 0);
                    }
                    return;
                }
                FailMode::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    echo(send, recv).await;
                    return;
                }
                FailMode::NoAnswer => {
                    // Hold the stream open and silent until the gateway gives up.
                    let _ = tokio::io::copy(&mut recv, &mut tokio::io::sink()).await;
                    return;
                }
                FailMode::DropTunnel => {
                    connection.close(0, b"gone");
                    return;
                }
                FailMode::Unavailable => FailureCode::AgentUnavailable,
                FailMode::TargetRefused => FailureCode::ConnectionRefused,
            };
            let reply = OpenReply::Failed {
                code,
                detail: "flaky test exit".into(),
            };
            let _ = write_frame(&mut send, &reply).await;
            let _ = exitpool::transport::TunnelSend::finish(&mut send);
        });
    }
}
