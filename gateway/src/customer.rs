//! The customer port: accepts TCP connections, bounds them (globally, and per
//! source address while unauthenticated), tells SOCKS5 from HTTP by the first
//! byte, and hands each to its protocol handler.

use crate::error::ProxyError;
use crate::Shared;
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

/// First byte of a SOCKS5 greeting.
const SOCKS5_VERSION: u8 = 0x05;

/// Counts, per source address, the connections that have not authenticated yet,
/// so one address cannot hold the port with idle or credential-guessing
/// connections.
#[derive(Debug)]
pub struct PendingAuth {
    counts: DashMap<IpAddr, usize>,
    limit: usize,
}

impl PendingAuth {
    /// At most `limit` unauthenticated connections per address.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PendingAuth {
            counts: DashMap::new(),
            limit,
        })
    }

    /// A slot for one more connection from `ip`, unless it is at the limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        let mut count = self.counts.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            table: self.clone(),
            ip,
            released: AtomicBool::new(false),
        })
    }
}

/// One unauthenticated connection's place in [`PendingAuth`]; freed when the
/// connection authenticates or ends.
#[derive(Debug)]
pub struct PendingSlot {
    table: Arc<PendingAuth>,
    ip: IpAddr,
    released: AtomicBool,
}

impl PendingSlot {
    fn release(&self) {
        if self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        // Decrement, and drop the entry at zero so the map only holds addresses
        // with connections pending.
        self.table.counts.remove_if_mut(&self.ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

tokio::task_local! {
    /// The slot of the customer connection this task serves.
    static PENDING: Arc<PendingSlot>;
}

/// The source address of the customer connection the current task serves.
pub fn peer_ip() -> Option<IpAddr> {
    PENDING.try_with(|slot| slot.ip).ok()
}

/// Marks the connection the current task serves as authenticated, freeing its
/// per-address slot. Called by `connect::authenticate` on success.
pub fn authenticated() {
    let _ = PENDING.try_with(|slot| slot.release());
}

/// Accepts customer connections until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.config.max_connections));
    let pending = PendingAuth::new(shared.config.max_unauthenticated_per_ip);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly instead of
                // spinning; the listener itself stays up.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            shared.tasks.spawn(refuse(stream, ProxyError::GatewayBusy));
            continue;
        };
        let Some(slot) = pending.try_acquire(peer.ip()) else {
            let limit = shared.config.max_unauthenticated_per_ip;
            shared
                .tasks
                .spawn(refuse(stream, ProxyError::TooManyUnauthenticated(limit)));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let span = info_span!("customer", %peer, user = tracing::field::Empty);
        shared.tasks.clone().spawn(
            PENDING
                .scope(Arc::new(slot), async move {
                    handle(stream, peer, shared).await;
                    drop(permit);
                })
                .instrument(span),
        );
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // One deadline from accept for the whole first head (or SOCKS5 negotiation).
    let deadline = tokio::time::Instant::now() + shared.config.head_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == SOCKS5_VERSION => {
            crate::socks::serve(stream, peer, deadline, shared).await
        }
        Ok(Ok(1)) => crate::http::serve(stream, peer, deadline, shared).await,
        Ok(Ok(_)) => debug!("closed before sending anything"),
        Ok(Err(error)) => debug!(%error, "read failed"),
        Err(_) => debug!("sent nothing within the head timeout"),
    }
}

/// Refuses a connection before serving it, in its own protocol: a SOCKS5 client
/// hears "no acceptable method" (RFC 1928 has no "busy"), anyone else the HTTP
/// answer for `error`. Never a silent drop.
async fn refuse(mut stream: TcpStream, error: ProxyError) {
    use tokio::io::AsyncWriteExt;
    debug!(%error, "refused before serving");
    let mut first = [0u8; 1];
    let socks = matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == SOCKS5_VERSION
    );
    let answer = if socks {
        vec![SOCKS5_VERSION, 0xFF]
    } else {
        crate::http::raw_error_response(&error)
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&answer)).await;
}
