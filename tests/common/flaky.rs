//! Exits that fail in the ways home devices do, for the health, retry and
//! dead-exit tests: raw QUIC agents built from the agent's own TLS and transport
//! configuration (so they pass the pin check and ALPN, over real QUIC on
//! loopback) that join with a valid `Hello`, then serve relay streams as an echo
//! for their first `good_opens`, and fail every later one as `mode` says.
//!
//! (tests/misbehaving.rs has raw agents of its own that break the handshake; this
//! one joins properly and breaks the relay opens.)

use super::{within, TestGateway, TOKEN};
use exitpool::protocol::{
    read_frame, write_frame, AgentMessage, Capacity, DeviceKey, FailureCode, GatewayMessage,
    OpenReply, OpenRequest, PROTOCOL_VERSION,
};
use exitpool::transport::tunnel::identity_material;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The name the gateway's certificate carries; the pin is what is checked.
const SERVER_NAME: &str = "exitpool-gateway";

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
}

/// A joined raw agent; dropping it leaves abruptly (its endpoint goes).
pub struct FlakyExit {
    /// The id customers see for it.
    pub exit_id: String,
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    /// Opens it has been asked for so far.
    pub opens: Arc<AtomicU32>,
    /// Its control stream, held so the gateway keeps it joined.
    _control: (quinn::SendStream, quinn::RecvStream),
    _serving: tokio::task::JoinHandle<()>,
}

impl FlakyExit {
    /// Joins `net`'s gateway from `ip` with the device key named `agent_id`; echoes its first
    /// `good_opens` streams, then fails each open by `mode`.
    pub async fn join(
        net: &TestGateway,
        ip: &str,
        agent_id: &str,
        good_opens: u32,
        mode: FailMode,
    ) -> FlakyExit {
        let endpoint = quinn::Endpoint::client(format!("{ip}:0").parse().unwrap())
            .expect("client endpoint binds");
        let config = exitpool::agent::tls::client_configs(
            net.gateway.pin().parse().unwrap(),
            exitpool::agent::tunnel::transport_config(64, exitpool::protocol::KEEP_ALIVE_INTERVAL),
        )
        .expect("client config")
        .quic;
        let connecting = endpoint
            .connect_with(config, net.gateway.tunnel_addr(), SERVER_NAME)
            .expect("connect starts");
        let connection = within("QUIC handshake", connecting)
            .await
            .expect("QUIC handshake succeeds");
        let (mut send, mut recv) = within("control stream", connection.open_bi())
            .await
            .expect("control stream opens");
        // A stable device key per name, proved on this connection.
        let mut seed = [0u8; 32];
        for (slot, byte) in seed.iter_mut().zip(agent_id.bytes()) {
            *slot = byte;
        }
        let material = identity_material(&connection).expect("keying material");
        let hello = AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            identity: DeviceKey::from_seed(&seed).prove(&material),
            token: TOKEN.into(),
            software: "flaky-test-exit".into(),
            capacity: Capacity { max_streams: 64 },
            accepting: true,
        };
        within("send Hello", write_frame(&mut send, &hello))
            .await
            .expect("Hello is sent");
        let answer: GatewayMessage = within("Welcome", read_frame(&mut recv))
            .await
            .expect("the gateway answers Hello");
        let GatewayMessage::Welcome { exit_id, .. } = answer else {
            panic!("expected Welcome, got {answer:?}");
        };
        let opens = Arc::new(AtomicU32::new(0));
        let serving = tokio::spawn(serve(connection.clone(), opens.clone(), good_opens, mode));
        FlakyExit {
            exit_id,
            endpoint,
            connection,
            opens,
            _control: (send, recv),
            _serving: serving,
        }
    }
}

async fn serve(connection: quinn::Connection, opens: Arc<AtomicU32>, good: u32, mode: FailMode) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let connection = connection.clone();
        let opens = opens.clone();
        tokio::spawn(async move {
            let Ok(_open) = read_frame::<OpenRequest, _>(&mut recv).await else {
                return;
            };
            let n = opens.fetch_add(1, Ordering::Relaxed);
            if n < good {
                let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
                if write_frame(&mut send, &OpenReply::Opened { peer })
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy(&mut recv, &mut send).await;
                    let _ = send.finish();
                }
                return;
            }
            let code = match mode {
                FailMode::NoAnswer => {
                    // Hold the stream open and silent until the gateway gives up.
                    let _ = recv.read_to_end(1024).await;
                    return;
                }
                FailMode::DropTunnel => {
                    connection.close(0u32.into(), b"gone");
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
            let _ = send.finish();
        });
    }
}
