//! The customer half of the byte path: after a successful `CONNECT` (or SOCKS5
//! reply) the customer's TCP connection is relayed to the exit's stream, usage is
//! counted, and one access-log line is written.

use crate::exit::OpenedExit;
use crate::Shared;
use bytes::Bytes;
use exitpool_protocol::relay::{relay, LiveCounters};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// What the access log says about a relayed connection besides byte counts.
#[derive(Debug, Clone)]
pub struct AccessContext {
    /// Base user name (never the password or targeting parameters' secrets).
    pub user: String,
    /// Customer address.
    pub peer: SocketAddr,
    /// `host:port` as the customer named it.
    pub target: String,
    /// When the customer's request arrived.
    pub started: Instant,
}

/// Relays a hyper-upgraded `CONNECT` connection.
pub async fn run_upgraded(
    upgraded: hyper::upgrade::Upgraded,
    opened: OpenedExit,
    context: AccessContext,
    shared: &Shared,
) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        // Bytes the client sent right behind its CONNECT head (a TLS ClientHello,
        // say) are already in hyper's buffer: they go first.
        Ok(parts) => {
            run(
                parts.io.into_inner(),
                parts.read_buf,
                opened,
                context,
                shared,
            )
            .await
        }
        Err(_) => warn!("upgraded connection is not a TCP stream; closing"),
    }
}

/// Relays `stream` to the exit, after sending `already_read` towards the target.
/// On an abnormal end the customer sees a TCP reset, never a clean end of data.
pub async fn run(
    mut stream: TcpStream,
    already_read: Bytes,
    opened: OpenedExit,
    context: AccessContext,
    shared: &Shared,
) {
    let OpenedExit {
        agent,
        mut send,
        recv,
        peer: _,
        guard,
    } = opened;
    let counters = LiveCounters::default();
    counters
        .tcp_to_quic
        .fetch_add(already_read.len() as u64, Ordering::Relaxed);
    let (transferred, result) = match send.write_chunk(already_read).await {
        Err(error) => (Default::default(), Err(error.to_string())),
        Ok(()) => {
            let (read, write) = stream.split();
            let (transferred, result) = relay(
                read,
                write,
                send,
                recv,
                shared.config.idle_timeout,
                &counters,
            )
            .await;
            (transferred, result.map_err(|e| e.to_string()))
        }
    };
    drop(guard);
    agent
        .bytes_up
        .fetch_add(transferred.tcp_to_quic, Ordering::Relaxed);
    agent
        .bytes_down
        .fetch_add(transferred.quic_to_tcp, Ordering::Relaxed);
    if result.is_err() {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    } else {
        let _ = stream.shutdown().await;
    }
    info!(
        user = %context.user,
        peer = %context.peer,
        target = %context.target,
        exit = %agent.exit_id,
        country = agent.location.country.as_deref().unwrap_or("??"),
        bytes_up = transferred.tcp_to_quic,
        bytes_down = transferred.quic_to_tcp,
        duration_ms = context.started.elapsed().as_millis() as u64,
        result = result.as_ref().err().map(String::as_str).unwrap_or("ok"),
        "access"
    );
}
