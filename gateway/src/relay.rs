//! The customer half of the byte path: after a successful `CONNECT` (or SOCKS5
//! reply) the customer's TCP connection is relayed to the exit's stream, usage is
//! counted, and one access-log line is written.
//!
//! Usage: the relay bumps its own [`LiveCounters`] per chunk; every
//! [`FOLD_INTERVAL`] and at the end, the bytes since the last fold go to
//! [`Shared::record_transfer`]. A customer whose quota runs out mid-connection is
//! cut off at the next fold (with a reset, like any abnormal end).

use crate::exit::OpenedExit;
use crate::registry::Agent;
use crate::Shared;
use bytes::Bytes;
use exitpool_transport::relay::{relay, LiveCounters, Unlimited};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a live relay folds its byte counts into usage and checks the quota.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// What a relay has already folded into usage.
#[derive(Default)]
struct Folded {
    up: u64,
    down: u64,
}

impl Folded {
    /// Records the bytes counted since the last fold.
    fn fold(&mut self, counters: &LiveCounters, user: &str, agent: &Agent, shared: &Shared) {
        let up = counters.tcp_to_quic.load(Ordering::Relaxed);
        let down = counters.quic_to_tcp.load(Ordering::Relaxed);
        shared.record_transfer(
            user,
            agent,
            up.saturating_sub(self.up),
            down.saturating_sub(self.down),
        );
        self.up = self.up.max(up);
        self.down = self.down.max(down);
    }
}

/// Whether `user` has used up a byte quota (as the accounts stand now).
fn over_quota(user: &str, shared: &Shared) -> bool {
    let quota = shared
        .accounts
        .current()
        .users
        .get(user)
        .and_then(|customer| customer.limits.quota_bytes);
    quota.is_some_and(|quota| shared.usage.customer_bytes(user) >= quota)
}
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
    let mut folded = Folded::default();
    let result = match send.write_chunk(already_read).await {
        Err(error) => Err(error.to_string()),
        Ok(()) => {
            let (read, write) = stream.split();
            let relaying = relay(
                read,
                write,
                send,
                recv,
                shared.config.idle_timeout,
                &counters,
                &Unlimited,
            );
            tokio::pin!(relaying);
            let mut fold_timer = tokio::time::interval_at(
                tokio::time::Instant::now() + FOLD_INTERVAL,
                FOLD_INTERVAL,
            );
            loop {
                tokio::select! {
                    (_, result) = &mut relaying => break result.map_err(|e| e.to_string()),
                    _ = fold_timer.tick() => {
                        folded.fold(&counters, &context.user, &agent, shared);
                        if over_quota(&context.user, shared) {
                            break Err("quota exhausted".to_owned());
                        }
                    }
                }
            }
        }
    };
    drop(guard);
    folded.fold(&counters, &context.user, &agent, shared);
    if result.is_err() {
        shared.record_error_code(Some(&context.user), Some(&agent), "relay_failed");
    }
    let transferred = exitpool_transport::relay::Transferred {
        tcp_to_quic: counters.tcp_to_quic.load(Ordering::Relaxed),
        quic_to_tcp: counters.quic_to_tcp.load(Ordering::Relaxed),
    };
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
