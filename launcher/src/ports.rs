//! Port numbers for programs that cannot be given port 0: a listener whose
//! number the caller must know before it starts (HAProxy's, a gateway's entry
//! ports, a proxy the benchmark points at) or must keep across a restart.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

/// Attempts before giving up on a free number.
const TRIES: usize = 64;

/// Below the kernel's ephemeral range (32768 and up by default), where no
/// port-0 listener or outgoing connection of another test can take the number
/// between this check and the real bind.
const BELOW_EPHEMERAL: std::ops::Range<u16> = 20_000..32_000;

/// A loopback TCP address (`127.0.0.1`) nothing listens on now.
pub fn free_port() -> io::Result<SocketAddr> {
    let mut last = None;
    for _ in 0..TRIES {
        let port = rand::random_range(BELOW_EPHEMERAL);
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener.local_addr(),
            Err(error) => last = Some(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free loopback TCP port in {TRIES} tries (last: {last:?})"),
    ))
}

/// A loopback port number free on both UDP (QUIC) and TCP (the TLS tunnel,
/// which a gateway binds on the same number), held until dropped so the caller
/// can draw its other ports without drawing this one.
pub struct TunnelPort {
    addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

impl TunnelPort {
    /// Finds one.
    pub fn hold() -> io::Result<TunnelPort> {
        for _ in 0..TRIES {
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            let addr = udp.local_addr()?;
            if let Ok(tcp) = TcpListener::bind(addr) {
                return Ok(TunnelPort {
                    addr,
                    _udp: udp,
                    _tcp: tcp,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no port number free on both UDP and TCP in {TRIES} tries"),
        ))
    }

    /// The address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the number go, just before the program that binds it starts.
    pub fn release(self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let addr = free_port().unwrap();
        assert!(BELOW_EPHEMERAL.contains(&addr.port()));
        TcpListener::bind(addr).unwrap();
    }

    #[test]
    fn a_tunnel_port_is_held_on_both_protocols_until_released() {
        let port = TunnelPort::hold().unwrap();
        let addr = port.addr();
        assert!(UdpSocket::bind(addr).is_err());
        assert!(TcpListener::bind(addr).is_err());
        assert_eq!(port.release(), addr);
        let _udp = UdpSocket::bind(addr).unwrap();
        let _tcp = TcpListener::bind(addr).unwrap();
    }
}
