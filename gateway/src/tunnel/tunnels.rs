//! The tunnels this gateway holds, by the directory's connection key, and opening a
//! relay stream through one: `OpenRequest` out, `OpenReply` back, and only then
//! does the customer get an answer.
//!
//! The directory ([`crate::directory`]) says who an agent is and where; this table
//! says how to reach the ones connected here. The two change together (a join
//! adds the tunnel before the directory entry, and a leave removes it after).

use crate::error::ProxyError;
use dashmap::DashMap;
use exitpool_protocol::udp::{RelayOpen, UdpOpen};
use exitpool_protocol::{OpenRequest, TargetHost};
use exitpool_transport::{StreamRecv, StreamSend, Transport, Tunnel, TunnelConnection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A relay stream whose target the exit has dialled.
#[derive(Debug)]
pub struct ExitStream {
    /// Towards the target.
    pub send: StreamSend,
    /// From the target.
    pub recv: StreamRecv,
    /// The address the exit dialled.
    pub peer: SocketAddr,
}

/// The live tunnels, by connection key.
#[derive(Debug)]
pub struct Tunnels {
    tunnels: DashMap<u64, Tunnel>,
    next_key: AtomicU64,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            tunnels: DashMap::new(),
            next_key: AtomicU64::new(1),
        }
    }
}

impl Tunnels {
    /// Holds `connection` under a new key, unique for the life of the process (a
    /// reconnecting agent gets a new one).
    pub fn add(&self, connection: Tunnel) -> u64 {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.tunnels.insert(key, connection);
        key
    }

    /// A key no tunnel here will ever have, for a directory entry of an agent
    /// whose tunnel another fleet gateway holds.
    pub fn reserve_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets the tunnel under `key`.
    pub fn remove(&self, key: u64) {
        self.tunnels.remove(&key);
    }

    /// Closes the tunnel under `key` with `code`, if it is still held.
    pub fn close(&self, key: u64, code: u32, reason: &[u8]) {
        if let Some((_, connection)) = self.tunnels.remove(&key) {
            connection.close(code, reason);
        }
    }

    /// Whether tunnel `key` proves alive within `within`: the transport's
    /// probe ([`TunnelConnection::probe`]). Used only while a customer waits
    /// on the tunnel, so idle agents see no extra traffic.
    pub async fn is_alive(&self, key: u64, within: Duration) -> bool {
        let Some(tunnel) = self.tunnels.get(&key).map(|entry| entry.value().clone()) else {
            return false;
        };
        tunnel.probe(within).await
    }

    /// The tunnel under `key`, while it is held: for UDP flows' DATAGRAM
    /// frames (`customer::socks_udp`), held no longer than their flows.
    pub fn get(&self, key: u64) -> Option<Tunnel> {
        self.tunnels.get(&key).map(|entry| entry.value().clone())
    }

    /// Whether the tunnel under `key` is still held and not closing.
    pub fn is_open(&self, key: u64) -> bool {
        self.tunnels
            .get(&key)
            .is_some_and(|entry| entry.value().close_reason().is_none())
    }

    /// The transport of the tunnel under `key`, while it is held.
    pub fn transport(&self, key: u64) -> Option<Transport> {
        self.tunnels
            .get(&key)
            .map(|entry| entry.value().transport())
    }

    /// How many tunnels are held on each transport: (QUIC, TCP).
    pub fn count_by_transport(&self) -> (usize, usize) {
        self.tunnels.iter().fold((0, 0), |(quic, tcp), entry| {
            match entry.value().transport() {
                Transport::Quic => (quic + 1, tcp),
                Transport::Tcp => (quic, tcp + 1),
            }
        })
    }

    /// Opens a relay stream on tunnel `key` to `host:port` and waits up to
    /// `timeout` for the exit's answer.
    pub async fn open(
        &self,
        key: u64,
        host: TargetHost,
        port: u16,
        timeout: Duration,
    ) -> Result<ExitStream, ProxyError> {
        self.exchange(key, &OpenRequest { host, port }, timeout)
            .await
    }

    /// Opens a UDP flow on tunnel `key` ([`exitpool_protocol::udp`]): the same
    /// exchange as [`Tunnels::open`], with the same answers; datagrams follow
    /// on the stream.
    pub async fn open_udp(
        &self,
        key: u64,
        open: UdpOpen,
        timeout: Duration,
    ) -> Result<ExitStream, ProxyError> {
        self.exchange(key, &RelayOpen::Udp(open), timeout).await
    }

    /// A relay stream on tunnel `key` opened with `request`, once the exit has
    /// answered within `timeout`.
    async fn exchange<T: serde::Serialize + Sync>(
        &self,
        key: u64,
        request: &T,
        timeout: Duration,
    ) -> Result<ExitStream, ProxyError> {
        // Cloned out so no map guard is held across the awaits below.
        let connection = self
            .tunnels
            .get(&key)
            .map(|entry| entry.value().clone())
            .ok_or_else(|| ProxyError::ExitLost("the exit's tunnel has closed".into()))?;
        open_exchange(&connection, request, timeout, ProxyError::ExitLost).await
    }
}

/// The exchange that opens a relay stream on `connection`, an agent's tunnel
/// or a peer link alike: `request` out, an `OpenReply` back within
/// `timeout`. A tunnel that fails on the way is `lost` (the caller says
/// which kind of loss that is for the customer).
pub async fn open_exchange<T: serde::Serialize + Sync>(
    connection: &Tunnel,
    request: &T,
    timeout: Duration,
    lost: impl Fn(String) -> ProxyError + Sync,
) -> Result<ExitStream, ProxyError> {
    use exitpool_protocol::{read_frame, write_frame, FrameError, OpenReply};
    let exchange = async {
        let (mut send, mut recv) = connection
            .open_stream()
            .await
            .map_err(|e| lost(e.to_string()))?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let reply: OpenReply = read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::TooLong(_) | FrameError::Malformed(_) => {
                lost(format!("answered garbage: {e}"))
            }
            _ => lost(e.to_string()),
        })?;
        Ok((send, recv, reply))
    };
    let (send, recv, reply) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProxyError::ExitTimeout(timeout.as_secs()))??;
    match reply {
        OpenReply::Opened { peer } => Ok(ExitStream { send, recv, peer }),
        OpenReply::Failed { code, detail } => Err(ProxyError::Exit { code, detail }),
    }
}
