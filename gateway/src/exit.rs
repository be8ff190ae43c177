//! Opening a relay stream through a chosen exit: `OpenRequest` out, `OpenReply`
//! back, and only then does the customer get an answer.

use crate::error::ProxyError;
use crate::registry::{Agent, StreamGuard};
use exitpool_protocol::{
    read_frame, write_frame, FrameError, OpenReply, OpenRequest, TargetHost, CONNECT_TIMEOUT,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long the gateway waits for an agent's `OpenReply`: the agent's own connect
/// timeout plus a margin for the tunnel round trip, so the agent's more precise
/// answer normally arrives first.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(CONNECT_TIMEOUT.as_secs() + 5);

/// A relay stream whose target the exit has dialled.
pub struct OpenedExit {
    /// The exit serving the stream.
    pub agent: Arc<Agent>,
    /// Towards the target.
    pub send: quinn::SendStream,
    /// From the target.
    pub recv: quinn::RecvStream,
    /// The address the exit dialled.
    pub peer: SocketAddr,
    /// Keeps the stream counted in the exit's live load.
    pub guard: StreamGuard,
}

/// Opens a relay stream on `agent` to `host:port` and waits for the exit's answer.
pub async fn open(
    agent: Arc<Agent>,
    host: TargetHost,
    port: u16,
) -> Result<OpenedExit, ProxyError> {
    let guard = StreamGuard::new(agent.clone());
    let request = OpenRequest { host, port };
    let exchange = async {
        let (mut send, mut recv) = agent
            .connection
            .open_bi()
            .await
            .map_err(|e| ProxyError::ExitLost(e.to_string()))?;
        write_frame(&mut send, &request)
            .await
            .map_err(|e| ProxyError::ExitLost(e.to_string()))?;
        let reply: OpenReply = read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::TooLong(_) | FrameError::Malformed(_) => {
                ProxyError::ExitLost(format!("the exit answered garbage: {e}"))
            }
            _ => ProxyError::ExitLost(e.to_string()),
        })?;
        Ok((send, recv, reply))
    };
    let (send, recv, reply) = tokio::time::timeout(OPEN_TIMEOUT, exchange)
        .await
        .map_err(|_| ProxyError::ExitTimeout(OPEN_TIMEOUT.as_secs()))??;
    match reply {
        OpenReply::Opened { peer } => Ok(OpenedExit {
            agent,
            send,
            recv,
            peer,
            guard,
        }),
        OpenReply::Failed { code, detail } => Err(ProxyError::Exit { code, detail }),
    }
}
