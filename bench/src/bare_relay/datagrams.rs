//! The bare two-hop relay carrying UDP (`--bare-udp`), the floor under the
//! `udp` scenario's SOCKS5 path: the entry hop takes datagrams on a UDP
//! socket and sends each as a QUIC DATAGRAM frame to the exit hop, which
//! sends it from one UDP socket connected to its one target; answers come
//! back the same way to the client the entry last heard from. The same QUIC
//! transport settings (datagram buffers included), TLS provider and
//! one-thread runtimes as the gateway and the agent; nothing else: no
//! SOCKS5 header, authentication, flow ids, policy, rate or accounting.
//! Frames QUIC could not send (too large, or the connection gone) are
//! counted and printed when the hop ends; quinn itself drops the oldest
//! queued datagram when its send buffer is full, uncounted.

use super::hop::{client_config, connect, start_hop, BareExit, READY};
use crate::client::STEP;
use anyhow::{Context, Result};
use exitpool_launcher::Process;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;

/// The hidden flag that makes a hop carry datagrams.
pub const FLAG: &str = "--bare-udp";
/// What the bare UDP relay's column means, for the report's notes.
pub const NOTE: &str = "a bare two-hop relay of datagrams over quinn (entry and exit processes, one-thread runtimes, the gateway's and agent's QUIC transport settings; each datagram one DATAGRAM frame; no SOCKS5 header, authentication, flow ids, policy, rate or accounting): the floor for two QUIC hops carrying UDP on this machine";
/// Largest datagram the hops read.
const MAX_DATAGRAM: usize = 65_536;

/// The exit hop's work on one connection from the entry: one UDP socket
/// connected to `target`, frames to it and its datagrams back as frames,
/// until the connection ends.
pub(super) async fn exit_connection(connection: quinn::Connection, target: SocketAddr) {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return;
    };
    if socket.connect(target).await.is_err() {
        return;
    }
    let to_target = async {
        while let Ok(frame) = connection.read_datagram().await {
            let _ = socket.send(&frame).await;
        }
    };
    let from_target = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match socket.recv(&mut buf).await {
                Ok(len) => {
                    let frame = bytes::Bytes::copy_from_slice(&buf[..len]);
                    let _ = connection.send_datagram(frame);
                }
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = to_target => {},
        () = from_target => {},
    }
}

/// The entry hop: connects to the exit at `exit`, trusting `cert_hex`, binds
/// a UDP socket, prints `ready <udp address>`, then relays datagrams both
/// ways until the connection or the socket fails.
pub(super) async fn entry(exit: SocketAddr, cert_hex: &str) -> Result<()> {
    let local = IpAddr::from([127, 0, 0, 1]);
    let client = client_config(cert_hex)?;
    let (_endpoint, connection) = connect(exit, client, local).await?;
    let socket = Arc::new(UdpSocket::bind(SocketAddr::new(local, 0)).await?);
    println!("{READY}{}", socket.local_addr()?);
    // The client the entry last heard from gets the answers.
    let (client_tx, mut client_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    let from_client = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut unsent = 0u64;
        loop {
            let (len, from) = socket.recv_from(&mut buf).await?;
            client_tx.send_if_modified(|seen| seen.replace(from) != Some(from));
            let frame = bytes::Bytes::copy_from_slice(&buf[..len]);
            if connection.send_datagram(frame).is_err() {
                unsent += 1;
                eprintln!("bare relay entry: {unsent} datagrams QUIC could not send");
            }
        }
    };
    let to_client = async {
        loop {
            let frame = connection.read_datagram().await?;
            let to = *client_rx.borrow_and_update();
            if let Some(to) = to {
                let _ = socket.send_to(&frame, to).await;
            }
        }
    };
    tokio::select! {
        result = from_client => result,
        result = to_client => result,
    }
}

/// The bare relay's two processes carrying datagrams.
pub struct BareUdpRelay {
    entry: Process,
    exit: BareExit,
    /// Where the client sends its datagrams.
    pub listen: SocketAddr,
}

impl BareUdpRelay {
    /// Starts the exit hop towards the UDP `target`, then the entry hop.
    pub async fn start(target: SocketAddr) -> Result<BareUdpRelay> {
        let exit = BareExit::start_with(target, 1, &[FLAG]).await?;
        let exit_addr = exit.addr.to_string();
        let args = [
            "--bare-entry",
            &exit_addr,
            "--bare-cert",
            &exit.cert_hex,
            FLAG,
        ];
        let (entry, ready) = tokio::time::timeout(STEP, start_hop(&args))
            .await
            .context("bare UDP relay entry hop: timed out")?
            .context("bare UDP relay entry hop")?;
        Ok(BareUdpRelay {
            entry,
            exit,
            listen: ready.parse().context("the entry hop's address")?,
        })
    }

    /// The entry's and the exit's process ids: the entry stands where the
    /// gateway does, the exit where the agent does.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.entry.pid(), self.exit.pid()]
    }
}
