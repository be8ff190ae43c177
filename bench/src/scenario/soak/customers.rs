//! The soak's two customers. `bench` loops on every protocol (a tenth of its
//! requests to a refused port, on tunnels a tenth to a target that resets) and
//! takes turns with the faults, so its bytes can be compared exactly; `cut`
//! downloads through every fault. Both tally what they saw.

use super::drivers::{connect_head, echo, http_get, io_kind, reset, socks5, Failure, Moved};
use super::settings::{
    CUT_DOWNLOAD, CUT_LOOPS, CUT_PASSWORD, CUT_USER, LOOPS_PER_PROTOCOL, MAX_EXCHANGE,
    REQUEST_BOUND,
};
use super::targets::{refused_target, start_http_target, start_tunnel_target, Counted};
use crate::client::{basic, start_target};
use crate::launch::{PASSWORD, USER};
use anyhow::Result;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

/// The customer protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Connect,
    Http,
    Socks,
    Https,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Connect,
        Protocol::Http,
        Protocol::Socks,
        Protocol::Https,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Connect => "HTTP CONNECT",
            Protocol::Http => "plain HTTP",
            Protocol::Socks => "SOCKS5",
            Protocol::Https => "HTTPS proxy CONNECT",
        }
    }

    fn is_tunnel(self) -> bool {
        self != Protocol::Http
    }
}

/// Which target a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    /// The working target: an echo (tunnels) or a sized answer (HTTP).
    Good,
    /// A port where nothing listens.
    Refused,
    /// A target that sends half and resets.
    Reset,
}

/// How customers reach the gateways, and the targets.
pub struct Customers {
    /// Each gateway's customer port.
    proxies: Vec<SocketAddr>,
    tunnel_target: SocketAddr,
    http_target: SocketAddr,
    refused: SocketAddr,
    /// The `cut` customer's download target (`client::start_target`).
    download_target: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    /// What the tunnel and HTTP targets read and wrote (all of it `bench`'s).
    pub tunnel_counted: Arc<Counted>,
    pub http_counted: Arc<Counted>,
    /// `bench` takes a read guard per connection, faults the write guard.
    pub gate: Arc<RwLock<()>>,
    /// `cut` takes a read guard per connection; only the quiet points wait on it.
    pub cut_gate: Arc<RwLock<()>>,
    stop: AtomicBool,
    pub tally: Mutex<Tally>,
}

/// What the customer loops saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// (protocol, aim) -> requests that went as expected.
    pub ok: BTreeMap<(Protocol, &'static str), u64>,
    /// (protocol, why) -> requests that did not.
    pub failed: BTreeMap<(Protocol, String), u64>,
    /// Tunnel bytes as the `bench` clients saw them.
    pub tunnel_moved: Moved,
    pub cut_completed: u64,
    pub cut_cut: u64,
    pub cut_failed_to_open: u64,
    pub cut_bytes_down: u64,
}

impl Tally {
    /// Files one `bench` request's outcome.
    fn record(&mut self, protocol: Protocol, aim: Aim, outcome: Result<Moved, Failure>) {
        match (aim, outcome) {
            (Aim::Refused, Err(_)) => {
                *self
                    .ok
                    .entry((protocol, "refused target answered with an error"))
                    .or_default() += 1
            }
            (Aim::Refused, Ok(_)) => {
                *self
                    .failed
                    .entry((protocol, "refused target reached".into()))
                    .or_default() += 1
            }
            (aim, Ok(moved)) => {
                let what = if aim == Aim::Reset {
                    "reset mid-transfer, seen by the client"
                } else {
                    "exchanges"
                };
                *self.ok.entry((protocol, what)).or_default() += 1;
                self.tunnel_moved.up += moved.up;
                self.tunnel_moved.down += moved.down;
            }
            (aim, Err(why)) => {
                let why = if aim == Aim::Reset {
                    format!("reset target: {why}")
                } else {
                    why
                };
                *self.failed.entry((protocol, why)).or_default() += 1;
            }
        }
    }
}

impl Customers {
    /// Starts the targets; `proxies` are the gateways' customer ports and
    /// `tls_roots` their HTTPS-proxy certificates (DER).
    pub async fn start(proxies: Vec<SocketAddr>, tls_roots: &[Vec<u8>]) -> Result<Arc<Customers>> {
        let mut roots = rustls::RootCertStore::empty();
        for der in tls_roots {
            roots.add(rustls::pki_types::CertificateDer::from(der.clone()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tunnel_counted = Arc::new(Counted::default());
        let http_counted = Arc::new(Counted::default());
        Ok(Arc::new(Customers {
            proxies,
            tunnel_target: start_tunnel_target(tunnel_counted.clone()).await?,
            http_target: start_http_target(http_counted.clone()).await?,
            refused: refused_target()?,
            download_target: start_target().await?,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            tunnel_counted,
            http_counted,
            gate: Arc::default(),
            cut_gate: Arc::default(),
            stop: AtomicBool::new(false),
            tally: Mutex::default(),
        }))
    }

    /// Starts every customer loop.
    pub fn spawn_loops(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut loops = Vec::new();
        for protocol in Protocol::ALL {
            for i in 0..LOOPS_PER_PROTOCOL {
                loops.push(tokio::spawn(self.clone().bench_loop(protocol, i)));
            }
        }
        for i in 0..CUT_LOOPS {
            loops.push(tokio::spawn(self.clone().cut_loop(i)));
        }
        loops
    }

    /// Tells the loops to end after their current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Bytes the targets read and wrote for `bench`, summed.
    pub fn moved(&self) -> (u64, u64) {
        let (tr, tw) = self.tunnel_counted.get();
        let (hr, hw) = self.http_counted.get();
        (tr + hr, tw + hw)
    }

    /// One `bench` request on `protocol` through `proxy` to `aim`.
    async fn request(
        &self,
        protocol: Protocol,
        proxy: SocketAddr,
        aim: Aim,
        len: u64,
    ) -> Result<Moved, Failure> {
        let auth = basic(USER, PASSWORD);
        if protocol == Protocol::Http {
            let target = match aim {
                Aim::Refused => self.refused,
                _ => self.http_target,
            };
            return http_get(proxy, target, len, &auth)
                .await
                .map(|()| Moved::default());
        }
        let target = match aim {
            Aim::Refused => self.refused,
            _ => self.tunnel_target,
        };
        match protocol {
            Protocol::Connect => {
                let mut stream = TcpStream::connect(proxy)
                    .await
                    .map_err(|e| io_kind("connect", &e))?;
                let _ = stream.set_nodelay(true);
                connect_head(&mut stream, target, &auth).await?;
                self.exchange(&mut stream, aim, len).await
            }
            Protocol::Socks => {
                let mut stream = socks5(proxy, target, USER, PASSWORD).await?;
                self.exchange(&mut stream, aim, len).await
            }
            Protocol::Https => {
                let tcp = TcpStream::connect(proxy)
                    .await
                    .map_err(|e| io_kind("connect", &e))?;
                let _ = tcp.set_nodelay(true);
                let name = rustls::pki_types::ServerName::IpAddress(proxy.ip().into());
                let mut stream = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| io_kind("TLS", &e))?;
                connect_head(&mut stream, target, &auth).await?;
                self.exchange(&mut stream, aim, len).await
            }
            Protocol::Http => unreachable!("handled above"),
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        aim: Aim,
        len: u64,
    ) -> Result<Moved, Failure> {
        match aim {
            Aim::Reset => reset(stream, len).await,
            _ => echo(stream, len).await,
        }
    }

    /// One accounted loop: requests one after another until told to stop.
    async fn bench_loop(self: Arc<Self>, protocol: Protocol, index: usize) {
        let proxy = self.proxies[index % self.proxies.len()];
        let mut n = index as u64;
        while !self.stop.load(Ordering::SeqCst) {
            let guard = self.gate.clone().read_owned().await;
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            n += 1;
            let aim = match n % 10 {
                0 => Aim::Refused,
                5 if protocol.is_tunnel() => Aim::Reset,
                _ => Aim::Good,
            };
            // Sizes spread over 1 byte to MAX_EXCHANGE, the same each run.
            let len = 1 + n.wrapping_mul(40_503) % MAX_EXCHANGE;
            let outcome =
                tokio::time::timeout(REQUEST_BOUND, self.request(protocol, proxy, aim, len))
                    .await
                    .unwrap_or_else(|_| Err("request timeout".into()));
            drop(guard);
            self.tally
                .lock()
                .expect("tally lock")
                .record(protocol, aim, outcome);
        }
    }

    /// One `cut` loop: [`CUT_DOWNLOAD`] downloads over CONNECT, through every fault.
    async fn cut_loop(self: Arc<Self>, index: usize) {
        let proxy = self.proxies[index % self.proxies.len()];
        let auth = basic(CUT_USER, CUT_PASSWORD);
        while !self.stop.load(Ordering::SeqCst) {
            let guard = self.cut_gate.clone().read_owned().await;
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let attempt = async {
                let mut stream = TcpStream::connect(proxy)
                    .await
                    .map_err(|e| io_kind("connect", &e))?;
                connect_head(&mut stream, self.download_target, &auth).await?;
                let mut head = vec![b'D'];
                head.extend_from_slice(&CUT_DOWNLOAD.to_be_bytes());
                stream
                    .write_all(&head)
                    .await
                    .map_err(|e| io_kind("send", &e))?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0u64;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return Ok::<u64, Failure>(got),
                        Ok(n) => got += n as u64,
                    }
                }
            };
            let outcome = tokio::time::timeout(REQUEST_BOUND, attempt).await;
            drop(guard);
            {
                let mut tally = self.tally.lock().expect("tally lock");
                match outcome {
                    Ok(Ok(got)) => {
                        tally.cut_bytes_down += got;
                        if got == CUT_DOWNLOAD {
                            tally.cut_completed += 1;
                        } else {
                            tally.cut_cut += 1;
                        }
                    }
                    _ => tally.cut_failed_to_open += 1,
                }
            }
            // Paced: the cut customer is a background, not a throughput test.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
