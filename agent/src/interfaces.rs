//! The device's own interface addresses, which the exit policy refuses along
//! with the public address the gateway observed (see
//! [`ExitPolicy::with_own_addresses`](crate::ExitPolicy::with_own_addresses)).
//! The tunnel reads them at every connection and every
//! [`AgentConfig::interface_refresh`](crate::AgentConfig::interface_refresh),
//! on tokio's blocking pool since reading them is a system call. Tests and apps
//! can supply their own reader ([`InterfaceSource::from_fn`]).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A reader of the device's interface addresses, each with its on-link
/// prefix length.
type Reader = dyn Fn() -> io::Result<Vec<(IpAddr, u8)>> + Send + Sync;

/// Where the agent reads its own interface addresses from.
#[derive(Clone)]
pub struct InterfaceSource(Arc<Reader>);

impl InterfaceSource {
    /// The operating system's interfaces (`getifaddrs` on Unix), every
    /// address of every interface, loopback included, with its on-link prefix
    /// (so a device on a public IPv4 subnet refuses its neighbours too).
    pub fn system() -> Self {
        InterfaceSource(Arc::new(|| {
            Ok(if_addrs::get_if_addrs()?
                .into_iter()
                .map(|interface| match interface.addr {
                    if_addrs::IfAddr::V4(v4) => (IpAddr::V4(v4.ip), v4.prefixlen),
                    if_addrs::IfAddr::V6(v6) => (IpAddr::V6(v6.ip), v6.prefixlen),
                })
                .collect())
        }))
    }

    /// A reader of the caller's choosing: an app that knows its addresses
    /// better, or a test injecting addresses (each refused alone for IPv4;
    /// [`from_fn_with_prefixes`](Self::from_fn_with_prefixes) gives subnets).
    pub fn from_fn(read: impl Fn() -> io::Result<Vec<IpAddr>> + Send + Sync + 'static) -> Self {
        InterfaceSource(Arc::new(move || {
            Ok(read()?
                .into_iter()
                .map(|ip| (ip, full_length(ip)))
                .collect())
        }))
    }

    /// Like [`from_fn`](Self::from_fn), each address with its on-link prefix
    /// length (`(203.0.113.5, 24)`).
    pub fn from_fn_with_prefixes(
        read: impl Fn() -> io::Result<Vec<(IpAddr, u8)>> + Send + Sync + 'static,
    ) -> Self {
        InterfaceSource(Arc::new(read))
    }

    /// Reads the addresses and their prefix lengths on the blocking pool,
    /// giving up after `within`.
    pub async fn read(&self, within: Duration) -> io::Result<Vec<(IpAddr, u8)>> {
        let read = self.0.clone();
        match tokio::time::timeout(within, tokio::task::spawn_blocking(move || read())).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => Err(io::Error::other(error)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "reading the interface addresses timed out",
            )),
        }
    }
}

/// The prefix length of one address alone.
fn full_length(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl Default for InterfaceSource {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for InterfaceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InterfaceSource")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_system_reader_sees_the_loopback_interface() {
        let addresses = InterfaceSource::system()
            .read(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            addresses.contains(&(IpAddr::from([127, 0, 0, 1]), 8)),
            "loopback with its /8: {addresses:?}"
        );
    }
}
