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

/// A reader of the device's interface addresses.
type Reader = dyn Fn() -> io::Result<Vec<IpAddr>> + Send + Sync;

/// Where the agent reads its own interface addresses from.
#[derive(Clone)]
pub struct InterfaceSource(Arc<Reader>);

impl InterfaceSource {
    /// The operating system's interfaces (`getifaddrs` on Unix), every
    /// address of every interface, loopback included.
    pub fn system() -> Self {
        InterfaceSource(Arc::new(|| {
            Ok(if_addrs::get_if_addrs()?
                .into_iter()
                .map(|interface| interface.ip())
                .collect())
        }))
    }

    /// A reader of the caller's choosing: an app that knows its addresses
    /// better, or a test injecting addresses.
    pub fn from_fn(read: impl Fn() -> io::Result<Vec<IpAddr>> + Send + Sync + 'static) -> Self {
        InterfaceSource(Arc::new(read))
    }

    /// Reads the addresses on the blocking pool, giving up after `within`.
    pub async fn read(&self, within: Duration) -> io::Result<Vec<IpAddr>> {
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
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }
}
