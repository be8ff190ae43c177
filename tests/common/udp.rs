//! SOCKS5 UDP fixtures (RFC 1928 §7): a counting UDP echo on loopback, an
//! association opened by hand with the test user's credentials, the datagram
//! header, and one echo through the relay. Byte-level on purpose, so tests
//! can send what a well-behaved client would not.

use super::{within, PASSWORD, USER};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A UDP echo on 127.0.0.1 that counts what it received.
pub async fn udp_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    (addr, received)
}

/// A SOCKS5 UDP association on `proxy`: the control connection (the
/// association ends when it is dropped) and the relay address answered.
pub async fn associate(proxy: SocketAddr) -> (TcpStream, SocketAddr) {
    associate_as(proxy, USER, PASSWORD).await
}

/// [`associate`] with the account `user` and its `password`.
pub async fn associate_as(
    proxy: SocketAddr,
    user: &str,
    password: &str,
) -> (TcpStream, SocketAddr) {
    let mut control = within("connect", TcpStream::connect(proxy)).await.unwrap();
    control.write_all(&[5, 1, 2]).await.unwrap();
    let mut method = [0u8; 2];
    within("method", control.read_exact(&mut method))
        .await
        .unwrap();
    assert_eq!(method, [5, 2]);
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(password.len() as u8);
    auth.extend_from_slice(password.as_bytes());
    control.write_all(&auth).await.unwrap();
    let mut status = [0u8; 2];
    within("auth", control.read_exact(&mut status))
        .await
        .unwrap();
    assert_eq!(status, [1, 0]);
    // UDP ASSOCIATE, the client's address not yet known (0.0.0.0:0).
    control
        .write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut reply = [0u8; 10];
    within("reply", control.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply[..4], [5, 0, 0, 1], "association refused: {reply:?}");
    let ip = IpAddr::from([reply[4], reply[5], reply[6], reply[7]]);
    let port = u16::from_be_bytes([reply[8], reply[9]]);
    (control, SocketAddr::new(ip, port))
}

/// A SOCKS5 UDP datagram for the IPv4 `target`.
pub fn datagram(target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let IpAddr::V4(ip) = target.ip() else {
        panic!("IPv4 targets only")
    };
    let mut out = vec![0, 0, 0, 1];
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&target.port().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends `payload` to `target` through `relay`; waits up to `wait` for its
/// echo, which must come from the relay with the target's header. `false`
/// if none came.
pub async fn echoes_within(
    client: &UdpSocket,
    relay: SocketAddr,
    target: SocketAddr,
    payload: &[u8],
    wait: std::time::Duration,
) -> bool {
    let sent = datagram(target, payload);
    client.send_to(&sent, relay).await.unwrap();
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(wait, client.recv_from(&mut buf)).await {
        Ok(received) => {
            let (len, from) = received.unwrap();
            assert_eq!(from, relay);
            assert_eq!(&buf[..len], &sent[..], "the header names the target");
            true
        }
        Err(_) => false,
    }
}
