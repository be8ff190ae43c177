//! soak: minutes of mixed traffic and faults against the real binaries, and
//! whether anything grows, panics or goes uncounted.
//!
//! For `--soak-duration` (10 minutes by default): customer loops on every
//! protocol the customer port serves (HTTP `CONNECT`, plain-HTTP forwarding,
//! SOCKS5, and `CONNECT` inside TLS, the HTTPS proxy), a tenth of their
//! requests to a target that refuses and, on the tunnel protocols, a tenth to
//! one that resets mid-transfer; agent processes joining and leaving every
//! [`CHURN_EVERY`] (every [`KILL_EVERY`]th leave a SIGKILL); one graceful
//! gateway restart; with `--fleet`, two gateways on one `redis-server` and
//! one Redis restart (SIGKILL, back empty).
//!
//! Two customers. `bench` is accounted exactly: its connections take turns
//! with the faults (a read guard per connection, a write guard per fault), so
//! no byte of it is in flight when a process stops, and every byte the target
//! servers (in this process) read or wrote for it must equal what the
//! gateways' `/stats` counted. `cut` downloads 4 MiB at a time through every
//! fault, so stops, kills and restarts cut its transfers: its bytes are shown,
//! not compared.
//!
//! At the end of the warm-up and at the end, with traffic paused, every churn
//! slot up and no stream open, it reads RSS, open descriptors and threads
//! (`/proc/PID/fd`, `/proc/PID/task`) of every gateway, every agent that lives
//! through and Redis; each may grow by at most [`GROWTH_LIMIT`] percent. A
//! restarted process (the gateway, and Redis in a fleet) has two windows: the
//! first process from the warm-up to just before its restart, the new one
//! from one warm-up after its restart to the end. The
//! gateway exposes no live task count of its own (neither `/stats` nor
//! `/metrics`), so threads are what is counted.

use crate::cli::Bench;
use crate::client::{basic, head_end, start_target, STEP};
use crate::launch::{pin_of, spawn_agent_process, wait_until, GatewayProcess, PASSWORD, USER};
use crate::measure::{fd_kinds, proc_entries, sockets, status_kib, MIB};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use exitpool_launcher::redis::RedisServer;
use exitpool_launcher::Process;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

const SCENARIO: &str = "soak";
/// Most a process's RSS, descriptors or threads may grow from the end of the
/// warm-up to the end, in percent.
const GROWTH_LIMIT: f64 = 5.0;
/// Agent processes that run from start to end (measured).
const STABLE_AGENTS: usize = 4;
/// Agent processes that join and leave.
const CHURN_SLOTS: usize = 4;
/// How often one churn slot changes (joins or leaves).
const CHURN_EVERY: Duration = Duration::from_secs(3);
/// Every this many leaves is a SIGKILL rather than a SIGTERM.
const KILL_EVERY: usize = 3;
/// Accounted customer loops per protocol.
const LOOPS_PER_PROTOCOL: usize = 2;
/// Customer loops of the `cut` customer.
const CUT_LOOPS: usize = 2;
/// The customer whose transfers faults cut.
const CUT_USER: &str = "cut";
const CUT_PASSWORD: &str = "cutpass";
/// Each cut-customer transfer.
const CUT_DOWNLOAD: u64 = 4 * MIB;
/// Largest accounted exchange, each way.
const MAX_EXCHANGE: u64 = 64 * 1024;
/// Longest one customer request may take: a SIGKILLed QUIC agent is only
/// found out when an open sent to it times out, then the open is retried.
const REQUEST_BOUND: Duration = Duration::from_secs(45);
/// Longest the quiet points and faults wait for what they wait on.
const SETTLE_BOUND: Duration = Duration::from_secs(90);
/// The Redis server's name in the readings.
const REDIS: &str = "redis-server";
/// What a gateway's state directory shares with its fleet (as in `fleet`).
const SHARED_STATE: [&str; 3] = ["gateway-cert.der", "gateway-key.der", "exit-id.key"];

/// The customer protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protocol {
    Connect,
    Http,
    Socks,
    Https,
}

impl Protocol {
    const ALL: [Protocol; 4] = [
        Protocol::Connect,
        Protocol::Http,
        Protocol::Socks,
        Protocol::Https,
    ];

    fn name(self) -> &'static str {
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
enum Aim {
    /// The working target: an echo (tunnels) or a sized answer (HTTP).
    Good,
    /// A port where nothing listens.
    Refused,
    /// A target that sends half and resets.
    Reset,
}

/// Bytes a target server read and wrote.
#[derive(Debug, Default)]
struct Counted {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counted {
    fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::SeqCst),
            self.written.load(Ordering::SeqCst),
        )
    }
}

/// Reads into `buf`, counting what came.
async fn read_counted(
    stream: &mut TcpStream,
    buf: &mut [u8],
    counted: &Counted,
) -> std::io::Result<usize> {
    let n = stream.read(buf).await?;
    counted.read.fetch_add(n as u64, Ordering::SeqCst);
    Ok(n)
}

/// Writes `len` filler bytes, counting them once written.
async fn write_counted(stream: &mut TcpStream, len: u64, counted: &Counted) -> std::io::Result<()> {
    let chunk = [0x5au8; 16 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        counted.written.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
    }
    Ok(())
}

/// Accepts connections on `listener` and serves each with `serve`, bounded.
fn accept_loop<F, Fut>(listener: TcpListener, counted: Arc<Counted>, serve: F)
where
    F: Fn(TcpStream, Arc<Counted>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let work = serve(stream, counted.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_BOUND, work).await;
            });
        }
    });
}

/// The tunnel target: `E` + length echoes that many bytes and closes; `R` +
/// length sends that many, waits for one byte from the client (so everything
/// sent has arrived) and resets the connection.
async fn start_tunnel_target(counted: Arc<Counted>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    accept_loop(listener, counted, |mut stream, counted| async move {
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < head.len() {
            let n = read_counted(&mut stream, &mut head[got..], &counted).await?;
            if n == 0 {
                return Ok(());
            }
            got += n;
        }
        let len = u64::from_be_bytes(head[1..].try_into().expect("8 bytes"));
        match head[0] {
            b'E' => {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = 0u64;
                while got < len {
                    let want = (len - got).min(buf.len() as u64) as usize;
                    let n = read_counted(&mut stream, &mut buf[..want], &counted).await?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                write_counted(&mut stream, got, &counted).await?;
                stream.shutdown().await
            }
            b'R' => {
                write_counted(&mut stream, len, &counted).await?;
                let mut ack = [0u8; 1];
                if read_counted(&mut stream, &mut ack, &counted).await? == 1 {
                    stream.set_zero_linger()?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    });
    Ok(addr)
}

/// The HTTP target: `GET /N` is answered with an N-byte body, then closed.
async fn start_http_target(counted: Arc<Counted>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    accept_loop(listener, counted, |mut stream, counted| async move {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            let n = read_counted(&mut stream, &mut buf, &counted).await?;
            if n == 0 {
                return Ok(());
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = head_end(&raw) {
                break end;
            }
            if raw.len() > 64 * 1024 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&raw[..end]);
        let size: u64 = head
            .split(' ')
            .nth(1)
            .and_then(|path| path.trim_start_matches('/').parse().ok())
            .unwrap_or(0);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        stream.write_all(answer.as_bytes()).await?;
        counted
            .written
            .fetch_add(answer.len() as u64, Ordering::SeqCst);
        write_counted(&mut stream, size, &counted).await?;
        stream.shutdown().await
    });
    Ok(addr)
}

/// An address where nothing listens (taken and let go).
fn refused_target() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// What one customer connection moved, as the client saw it.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    up: u64,
    down: u64,
}

/// Why a request failed, by kind (counted, not fatal).
type Failure = String;

fn io_kind(what: &str, error: &std::io::Error) -> Failure {
    format!("{what}: {}", error.kind())
}

/// Sends `CONNECT target` on `stream` and reads the answer's head.
async fn connect_head<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: SocketAddr,
    auth: &str,
) -> Result<(), Failure> {
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_kind("CONNECT send", &e))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| io_kind("CONNECT answer", &e))?;
        if n == 0 {
            return Err("CONNECT: closed before answering".into());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&raw) {
            let head = String::from_utf8_lossy(&raw[..end]);
            let status = head.split(' ').nth(1).unwrap_or("?");
            if status != "200" {
                return Err(format!("CONNECT answered {status}"));
            }
            if end != raw.len() {
                return Err("CONNECT: bytes after the answer".into());
            }
            return Ok(());
        }
        if raw.len() > 64 * 1024 {
            return Err("CONNECT: answer head too long".into());
        }
    }
}

/// A SOCKS5 connection to `target` with user name and password.
async fn socks5(
    proxy: SocketAddr,
    target: SocketAddr,
    user: &str,
    password: &str,
) -> Result<TcpStream, Failure> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .map_err(|e| io_kind("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let step = async {
        stream.write_all(&[5, 1, 2]).await?;
        let mut choice = [0u8; 2];
        stream.read_exact(&mut choice).await?;
        if choice != [5, 2] {
            return Ok(Err(format!("SOCKS5 method {choice:?}")));
        }
        let mut login = vec![1, user.len() as u8];
        login.extend_from_slice(user.as_bytes());
        login.push(password.len() as u8);
        login.extend_from_slice(password.as_bytes());
        stream.write_all(&login).await?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await?;
        if status[1] != 0 {
            return Ok(Err("SOCKS5 login refused".to_owned()));
        }
        let SocketAddr::V4(v4) = target else {
            return Ok(Err("IPv4 targets only".to_owned()));
        };
        let mut request = vec![5, 1, 0, 1];
        request.extend_from_slice(&v4.ip().octets());
        request.extend_from_slice(&v4.port().to_be_bytes());
        stream.write_all(&request).await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        let rest = match reply[3] {
            4 => 18,
            _ => 6,
        };
        let mut bound = vec![0u8; rest];
        stream.read_exact(&mut bound).await?;
        if reply[1] != 0 {
            return Ok(Err(format!("SOCKS5 reply {}", reply[1])));
        }
        std::io::Result::Ok(Ok(()))
    };
    step.await.map_err(|e| io_kind("SOCKS5", &e))??;
    Ok(stream)
}

/// `E` + `len` bytes, then the `len`-byte echo and the target's close.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    len: u64,
) -> Result<Moved, Failure> {
    let mut request = vec![b'E'];
    request.extend_from_slice(&len.to_be_bytes());
    request.resize(9 + len as usize, 0x5a);
    stream
        .write_all(&request)
        .await
        .map_err(|e| io_kind("send", &e))?;
    let got = read_to_end(stream).await.map_err(|e| io_kind("echo", &e))?;
    if got != len {
        return Err(format!("echo of {got} bytes, not {len}"));
    }
    Ok(Moved {
        up: 9 + len,
        down: len,
    })
}

/// `R` + `len`: reads the `len` bytes, acknowledges with one byte, then sees
/// the target's reset carried to it (an error or an end, never more data).
async fn reset<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    len: u64,
) -> Result<Moved, Failure> {
    let mut head = vec![b'R'];
    head.extend_from_slice(&len.to_be_bytes());
    stream
        .write_all(&head)
        .await
        .map_err(|e| io_kind("send", &e))?;
    let mut buf = vec![0u8; len as usize];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| io_kind("reset target's half", &e))?;
    stream
        .write_all(&[0xac])
        .await
        .map_err(|e| io_kind("ack", &e))?;
    let mut more = [0u8; 1];
    match stream.read(&mut more).await {
        Ok(0) | Err(_) => Ok(Moved { up: 10, down: len }),
        Ok(_) => Err("data after the target's reset".into()),
    }
}

/// Reads until the end of data; how many bytes came.
async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}

/// `GET http://target/len` through the proxy; the answer must be a 200 with a
/// `len`-byte body.
async fn http_get(
    proxy: SocketAddr,
    target: SocketAddr,
    len: u64,
    auth: &str,
) -> Result<(), Failure> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .map_err(|e| io_kind("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET http://{target}/{len} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_kind("send", &e))?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| io_kind("answer", &e))?;
        if n == 0 {
            return Err("closed before the answer's head".into());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&raw) {
            break end;
        }
        if raw.len() > 64 * 1024 {
            return Err("answer head too long".into());
        }
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap_or("?").to_owned();
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    let length: u64 = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or("no Content-Length")?;
    let body = (raw.len() - end) as u64 + read_to_end(&mut stream).await.unwrap_or(0);
    if length != len || body != len {
        return Err(format!(
            "body of {body} bytes (Content-Length {length}), not {len}"
        ));
    }
    Ok(())
}

/// How customers reach the gateways, and the targets.
struct Customers {
    /// Each gateway's customer port.
    proxies: Vec<SocketAddr>,
    tunnel_target: SocketAddr,
    http_target: SocketAddr,
    refused: SocketAddr,
    /// The `cut` customer's download target (`client::start_target`).
    download_target: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    /// `bench` takes a read guard per connection, faults the write guard.
    gate: Arc<RwLock<()>>,
    /// `cut` takes a read guard per connection; only the quiet points wait on it.
    cut_gate: Arc<RwLock<()>>,
    stop: AtomicBool,
    tally: Mutex<Tally>,
}

/// What the customer loops saw.
#[derive(Debug, Default)]
struct Tally {
    /// (protocol, aim) -> requests that went as expected.
    ok: BTreeMap<(Protocol, &'static str), u64>,
    /// (protocol, why) -> requests that did not.
    failed: BTreeMap<(Protocol, String), u64>,
    /// Tunnel bytes as the `bench` clients saw them.
    tunnel_moved: Moved,
    cut_completed: u64,
    cut_cut: u64,
    cut_failed_to_open: u64,
    cut_bytes_down: u64,
}

impl Customers {
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
            let mut tally = self.tally.lock().expect("tally lock");
            match (aim, outcome) {
                (Aim::Refused, Err(_)) => {
                    *tally
                        .ok
                        .entry((protocol, "refused target answered with an error"))
                        .or_default() += 1
                }
                (Aim::Refused, Ok(_)) => {
                    *tally
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
                    *tally.ok.entry((protocol, what)).or_default() += 1;
                    tally.tunnel_moved.up += moved.up;
                    tally.tunnel_moved.down += moved.down;
                }
                (aim, Err(why)) => {
                    let why = if aim == Aim::Reset {
                        format!("reset target: {why}")
                    } else {
                        why
                    };
                    *tally.failed.entry((protocol, why)).or_default() += 1;
                }
            }
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

/// An agent process of the run, started again in the same state directory
/// (the same device) after it left.
struct AgentSlot {
    name: String,
    bind: IpAddr,
    gateway: usize,
    transport: &'static str,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl AgentSlot {
    fn new(
        name: String,
        bind: IpAddr,
        gateway: usize,
        transport: &'static str,
    ) -> Result<AgentSlot> {
        Ok(AgentSlot {
            name,
            bind,
            gateway,
            transport,
            dir: tempfile::tempdir()?,
            process: None,
        })
    }
}

/// One process's figures at one quiet point.
#[derive(Debug, Clone)]
struct Reading {
    name: String,
    at: Instant,
    pid: u32,
    rss_kib: u64,
    fds: u64,
    /// The descriptors by kind, shown when their number changed.
    fd_kinds: BTreeMap<String, u64>,
    /// Its sockets by inode, described.
    sockets: BTreeMap<u64, String>,
    threads: u64,
}

fn read_process(name: &str, pid: u32) -> Result<Reading> {
    Ok(Reading {
        name: name.to_owned(),
        at: Instant::now(),
        pid,
        rss_kib: status_kib(Some(pid), "VmRSS")?,
        fds: proc_entries(pid, "fd")?,
        fd_kinds: fd_kinds(pid)?,
        sockets: sockets(pid),
        threads: proc_entries(pid, "task")?,
    })
}

/// The pid of the `redis-server` listening on `socket` (the launcher keeps
/// its process to itself).
fn redis_pid(socket: &Path) -> Option<u32> {
    let needle = socket.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("redis-server") && cmdline.contains(&needle)).then_some(pid)
        })
}

/// Lines of a process's output that report a panic.
fn panics_in(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|line| line.contains("panicked at"))
        .count()
}

/// Everything the soak started.
struct Rig {
    gateways: Vec<GatewayProcess>,
    _states: Vec<tempfile::TempDir>,
    pin: String,
    redis: Option<RedisServer>,
    stable: Vec<AgentSlot>,
    churn: Vec<AgentSlot>,
    agent_binary: PathBuf,
    /// The HTTPS proxy's certificates (DER), one per gateway.
    tls_roots: Vec<Vec<u8>>,
    /// Panic lines by process, from processes that ended and, at the end, the
    /// ones still running.
    panics: BTreeMap<String, usize>,
    /// Joins, graceful leaves, SIGKILLs.
    events: BTreeMap<&'static str, u64>,
    /// Churn leaves so far (every KILL_EVERY-th is a SIGKILL).
    leaves: usize,
}

impl Rig {
    async fn start(bench: &Bench, fleet: bool) -> Result<Rig> {
        let redis = if fleet {
            Some(RedisServer::start(STEP).await?)
        } else {
            None
        };
        let names: &[&str] = if fleet { &["gw-a", "gw-b"] } else { &["gw"] };
        let mut gateways = Vec::new();
        let mut states: Vec<tempfile::TempDir> = Vec::new();
        let mut tls_roots = Vec::new();
        for id in names {
            let state = tempfile::tempdir()?;
            if let Some(first) = states.first() {
                for name in SHARED_STATE {
                    std::fs::copy(first.path().join(name), state.path().join(name))
                        .with_context(|| format!("copying {name} from the first gateway"))?;
                }
            }
            // The HTTPS proxy's certificate, for 127.0.0.1.
            let tls = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
            let cert = state.path().join("customer-tls.pem");
            let key = state.path().join("customer-tls-key.pem");
            std::fs::write(&cert, tls.cert.pem())?;
            std::fs::write(&key, tls.signing_key.serialize_pem())?;
            tls_roots.push(tls.cert.der().to_vec());
            let mut flags = vec![
                "--user".to_owned(),
                format!("{USER}:{PASSWORD}"),
                "--user".to_owned(),
                format!("{CUT_USER}:{CUT_PASSWORD}"),
                "--tls-cert".to_owned(),
                cert.display().to_string(),
                "--tls-key".to_owned(),
                key.display().to_string(),
            ];
            if let Some(redis) = &redis {
                flags.extend([
                    "--redis".to_owned(),
                    redis.url(),
                    "--gateway-id".to_owned(),
                    id.to_string(),
                    "--peer-listen".to_owned(),
                    "127.0.0.1:0".to_owned(),
                ]);
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            gateways.push(
                GatewayProcess::start_with(
                    &bench.bins.gateway,
                    state.path(),
                    4096,
                    bench.runs.gateway_threads,
                    &flags,
                )
                .await
                .with_context(|| format!("starting gateway {id}"))?,
            );
            states.push(state);
        }
        let pin = pin_of(&bench.bins.gateway, states[0].path()).await?;
        let count = gateways.len();
        let transports = ["quic", "tcp"];
        let mut stable = Vec::new();
        for i in 0..STABLE_AGENTS {
            let transport = transports[i % 2];
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 4, (i + 1) as u8));
            let name = format!("agent {} ({transport})", i + 1);
            stable.push(AgentSlot::new(name, bind, i % count, transport)?);
        }
        let mut churn = Vec::new();
        for i in 0..CHURN_SLOTS {
            let transport = transports[(i + 1) % 2];
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 5, (i + 1) as u8));
            let name = format!("churn agent {} ({transport})", i + 1);
            churn.push(AgentSlot::new(name, bind, i % count, transport)?);
        }
        let mut rig = Rig {
            gateways,
            _states: states,
            pin,
            redis,
            stable,
            churn,
            agent_binary: bench.bins.agent.clone(),
            tls_roots,
            panics: BTreeMap::new(),
            events: BTreeMap::new(),
            leaves: 0,
        };
        if fleet {
            rig.wait_fleet().await?;
        }
        for i in 0..STABLE_AGENTS {
            rig.join(true, i)?;
        }
        for i in 0..CHURN_SLOTS {
            rig.join(false, i)?;
        }
        rig.wait_agents().await?;
        Ok(rig)
    }

    fn slot(&mut self, stable: bool, i: usize) -> &mut AgentSlot {
        if stable {
            &mut self.stable[i]
        } else {
            &mut self.churn[i]
        }
    }

    /// Starts the agent of a slot.
    fn join(&mut self, stable: bool, i: usize) -> Result<()> {
        let tunnels: Vec<SocketAddr> = self.gateways.iter().map(GatewayProcess::tunnel).collect();
        let (binary, pin) = (self.agent_binary.clone(), self.pin.clone());
        let slot = self.slot(stable, i);
        let process = spawn_agent_process(
            &binary,
            tunnels[slot.gateway],
            &pin,
            slot.bind,
            slot.dir.path(),
            None,
            slot.transport,
        )?;
        slot.process = Some(process);
        *self.events.entry("agent joins").or_default() += 1;
        Ok(())
    }

    /// Stops a churn slot's agent: SIGTERM, or SIGKILL every KILL_EVERY-th time.
    async fn leave(&mut self, i: usize) -> Result<()> {
        let Some(mut process) = self.churn[i].process.take() else {
            return Ok(());
        };
        self.leaves += 1;
        let kill = self.leaves % KILL_EVERY == 0;
        let name = self.churn[i].name.clone();
        if kill {
            process.kill().await?;
        } else {
            let status = process.stop(Duration::from_secs(10)).await?;
            if !status.success() {
                bail!("{name} exited {status} on SIGTERM: {}", process.tail());
            }
        }
        *self.panics.entry(name).or_default() += panics_in(&process.lines());
        let event = if kill {
            "agent SIGKILLs"
        } else {
            "agent graceful leaves"
        };
        *self.events.entry(event).or_default() += 1;
        Ok(())
    }

    fn running_agents(&self) -> u64 {
        self.stable
            .iter()
            .chain(&self.churn)
            .filter(|slot| slot.process.is_some())
            .count() as u64
    }

    /// Waits until every gateway lists exactly the running agents (a
    /// SIGKILLed agent started again replaces its old tunnel).
    async fn wait_agents(&self) -> Result<()> {
        let want = self.running_agents();
        for gateway in &self.gateways {
            wait_until(
                SETTLE_BOUND,
                "every gateway lists the running agents",
                || async { gateway.agents().await.ok() == Some(want) },
            )
            .await
            .with_context(|| format!("{want} agents expected; gateway log: {}", gateway.tail()))?;
        }
        Ok(())
    }

    /// Waits until every gateway of the fleet hears all of them.
    async fn wait_fleet(&self) -> Result<()> {
        let n = self.gateways.len() as u64;
        for gateway in &self.gateways {
            wait_until(SETTLE_BOUND, "every gateway hears the fleet", || async {
                let stats = gateway.stats().await.ok();
                stats.is_some_and(|s| s["fleet"]["totals"]["gateways"] == n)
            })
            .await
            .with_context(|| gateway.tail())?;
        }
        Ok(())
    }

    /// The `exitpool_live_streams` gauge of every gateway, summed.
    async fn live_streams(&self) -> Result<u64> {
        let mut sum = 0;
        for gateway in &self.gateways {
            let url = format!("http://{}/metrics", gateway.admin());
            let text = reqwest::Client::new()
                .get(url)
                .timeout(STEP)
                .send()
                .await?
                .text()
                .await?;
            sum += text
                .lines()
                .find_map(|line| line.strip_prefix("exitpool_live_streams "))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .context("/metrics has no exitpool_live_streams gauge")?;
        }
        Ok(sum)
    }

    /// `bench`'s bytes up and down as the gateways count them, summed.
    async fn counted(&self, user: &str) -> Result<(u64, u64)> {
        let (mut up, mut down) = (0, 0);
        for gateway in &self.gateways {
            let stats = gateway.stats().await?;
            let customer = &stats["customers"][user];
            up += customer["bytes_up"].as_u64().unwrap_or(0);
            down += customer["bytes_down"].as_u64().unwrap_or(0);
        }
        Ok((up, down))
    }

    /// "gateway", or "gateway A", "gateway B" in a fleet.
    fn gateway_name(&self, i: usize) -> String {
        if self.gateways.len() > 1 {
            format!("gateway {}", (b'A' + i as u8) as char)
        } else {
            "gateway".to_owned()
        }
    }

    /// Every measured process's figures now.
    fn readings(&self) -> Result<Vec<Reading>> {
        let mut out = Vec::new();
        for (i, gateway) in self.gateways.iter().enumerate() {
            out.push(read_process(&self.gateway_name(i), gateway.pid())?);
        }
        for slot in &self.stable {
            let process = slot
                .process
                .as_ref()
                .context("a stable agent is not running")?;
            out.push(read_process(&slot.name, process.pid())?);
        }
        if let Some(redis) = &self.redis {
            let pid = redis_pid(&redis.socket()).context("redis-server's pid not found")?;
            out.push(read_process(REDIS, pid)?);
        }
        Ok(out)
    }

    /// Counts the panic lines of every process still running, then stops them.
    async fn stop(mut self) {
        for slot in self.stable.iter_mut().chain(self.churn.iter_mut()) {
            if let Some(mut process) = slot.process.take() {
                let _ = process.stop(Duration::from_secs(10)).await;
                *self.panics.entry(slot.name.clone()).or_default() += panics_in(&process.lines());
            }
        }
        for gateway in &mut self.gateways {
            let _ = gateway.stop(Duration::from_secs(10)).await;
        }
        if let Some(redis) = &mut self.redis {
            let _ = redis.stop(Duration::from_secs(10)).await;
        }
    }
}

/// Ends the growth window of process `name` with its reading in `readings`.
fn close_window(
    open: &mut Vec<(String, Reading)>,
    windows: &mut Vec<(String, Reading, Reading)>,
    readings: &[Reading],
    name: &str,
) {
    let Some(at) = open.iter().position(|(_, start)| start.name == name) else {
        return;
    };
    let (label, start) = open.remove(at);
    if let Some(end) = readings.iter().find(|r| r.name == name) {
        windows.push((label, start, end.clone()));
    }
}

/// Holds both gates: no customer connection is open until it is dropped.
struct Quiet {
    _bench: OwnedRwLockWriteGuard<()>,
    _cut: Option<OwnedRwLockWriteGuard<()>>,
}

/// Takes the `bench` gate (and the `cut` one when `all`), bounded.
async fn pause(customers: &Customers, all: bool) -> Result<Quiet> {
    let bench = tokio::time::timeout(2 * REQUEST_BOUND, customers.gate.clone().write_owned())
        .await
        .context("the bench customers did not pause")?;
    let cut = if all {
        Some(
            tokio::time::timeout(2 * REQUEST_BOUND, customers.cut_gate.clone().write_owned())
                .await
                .context("the cut customers did not pause")?,
        )
    } else {
        None
    };
    Ok(Quiet {
        _bench: bench,
        _cut: cut,
    })
}

/// Traffic paused, every churn slot up and joined, no stream open: the state
/// both readings are taken in.
async fn quiet_point(rig: &mut Rig, customers: &Customers) -> Result<(Quiet, Vec<Reading>)> {
    let quiet = pause(customers, true).await?;
    for i in 0..CHURN_SLOTS {
        if rig.churn[i].process.is_none() {
            rig.join(false, i)?;
        }
    }
    rig.wait_agents().await?;
    wait_until(SETTLE_BOUND, "no stream is open", || async {
        rig.live_streams().await.ok() == Some(0)
    })
    .await?;
    Ok((quiet, rig.readings()?))
}

/// Waits until the gateways' count for `bench` equals what the targets saw.
async fn settle_usage(rig: &Rig, customers_counted: &[&Counted]) -> (u64, u64, (u64, u64)) {
    let moved = || {
        customers_counted
            .iter()
            .map(|c| c.get())
            .fold((0, 0), |(r, w), (cr, cw)| (r + cr, w + cw))
    };
    // Each relay folds its last bytes in as it ends, just after its client
    // saw the end; polled like `wait_until`, keeping the last count.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counted = rig.counted(USER).await.unwrap_or((0, 0));
        let (up, down) = moved();
        if counted == (up, down) || Instant::now() > deadline {
            return (up, down, counted);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let fleet = bench.sizes.soak_fleet;
    let mut rig = Rig::start(bench, fleet).await?;
    let result = soak(bench, &mut rig, report).await;
    rig.stop().await;
    result
}

async fn soak(bench: &Bench, rig: &mut Rig, report: &mut Report) -> Result<()> {
    let duration = bench.sizes.soak_duration;
    let fleet = rig.redis.is_some();
    let tunnel_counted = Arc::new(Counted::default());
    let http_counted = Arc::new(Counted::default());
    let mut roots = rustls::RootCertStore::empty();
    for der in &rig.tls_roots {
        roots.add(rustls::pki_types::CertificateDer::from(der.clone()))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let customers = Arc::new(Customers {
        proxies: rig
            .gateways
            .iter()
            .map(|g| match g.path() {
                crate::client::Route::Proxy { addr, .. } => addr,
                _ => unreachable!("a gateway's path is a proxy route"),
            })
            .collect(),
        tunnel_target: start_tunnel_target(tunnel_counted.clone()).await?,
        http_target: start_http_target(http_counted.clone()).await?,
        refused: refused_target()?,
        download_target: start_target().await?,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        gate: Arc::default(),
        cut_gate: Arc::default(),
        stop: AtomicBool::new(false),
        tally: Mutex::default(),
    });
    let mut loops = Vec::new();
    for protocol in Protocol::ALL {
        for i in 0..LOOPS_PER_PROTOCOL {
            loops.push(tokio::spawn(customers.clone().bench_loop(protocol, i)));
        }
    }
    for i in 0..CUT_LOOPS {
        loops.push(tokio::spawn(customers.clone().cut_loop(i)));
    }

    let t0 = Instant::now();
    let warmup = (duration / 5).max(Duration::from_secs(5));
    // Both restarts early enough that a restarted process gets a warm-up of
    // its own and then a window as long as the first one's.
    let restart_at = warmup + (duration - warmup) / 4;
    let redis_at = warmup + (duration - warmup) * 9 / 20;
    let gateway_name = rig.gateway_name(rig.gateways.len() - 1);
    let mut warmed = false;
    let mut restarted = false;
    let mut redis_restarted = !fleet;
    let mut churned = 0usize;
    let mut next_churn = CHURN_EVERY;
    let mut usage_kept = Vec::new();
    // Growth windows: open ones (label, starting reading), closed ones, and
    // restarted processes waiting for their own warm-up (when, process, label).
    let mut open: Vec<(String, Reading)> = Vec::new();
    let mut windows: Vec<(String, Reading, Reading)> = Vec::new();
    let mut rewarm: Vec<(Duration, String, String)> = Vec::new();
    let both = [&*tunnel_counted, &*http_counted];
    loop {
        let now = t0.elapsed();
        if now >= duration {
            break;
        }
        if !warmed && now >= warmup {
            let (quiet, readings) = quiet_point(rig, &customers)
                .await
                .context("warm-up reading")?;
            drop(quiet);
            eprintln!("   warm-up reading at {:.0} s", t0.elapsed().as_secs_f64());
            open.extend(readings.into_iter().map(|r| (r.name.clone(), r)));
            warmed = true;
            continue;
        }
        // A restarted process gets a window of its own only if half a
        // warm-up is left after its own warm-up.
        if let Some(at) = rewarm
            .iter()
            .position(|(when, _, _)| now >= *when && *when + warmup / 2 <= duration)
        {
            let (_, name, label) = rewarm.remove(at);
            let (quiet, readings) = quiet_point(rig, &customers)
                .await
                .with_context(|| format!("{label}: warm-up reading"))?;
            drop(quiet);
            let reading = readings
                .into_iter()
                .find(|r| r.name == name)
                .with_context(|| format!("no reading of {name}"))?;
            open.push((label, reading));
            continue;
        }
        if !restarted && now >= restart_at {
            let (quiet, readings) = quiet_point(rig, &customers)
                .await
                .context("reading before the gateway restart")?;
            close_window(&mut open, &mut windows, &readings, &gateway_name);
            let (_, _, before) = settle_usage(rig, &both).await;
            let which = rig.gateways.len() - 1;
            *rig.panics
                .entry(format!("{gateway_name} (before its restart)"))
                .or_default() += panics_in(&rig.gateways[which].lines());
            rig.gateways[which]
                .restart(false)
                .await
                .context("restarting a gateway")?;
            let after = rig.counted(USER).await?;
            usage_kept.push((before, after));
            rig.wait_agents()
                .await
                .context("agents back after the gateway restart")?;
            drop(quiet);
            let now = t0.elapsed();
            eprintln!("   {gateway_name} restarted at {:.0} s", now.as_secs_f64());
            rewarm.push((
                now + warmup,
                gateway_name.clone(),
                format!("{gateway_name} (after its restart)"),
            ));
            *rig.events.entry("gateway restarts").or_default() += 1;
            restarted = true;
            continue;
        }
        if !redis_restarted && now >= redis_at {
            let (quiet, readings) = quiet_point(rig, &customers)
                .await
                .context("reading before the Redis restart")?;
            close_window(&mut open, &mut windows, &readings, REDIS);
            let redis = rig.redis.as_mut().expect("fleet");
            redis.kill().await?;
            redis.start_again(STEP).await?;
            rig.wait_fleet()
                .await
                .context("the fleet after the Redis restart")?;
            rig.wait_agents()
                .await
                .context("agents listed after the Redis restart")?;
            drop(quiet);
            let now = t0.elapsed();
            eprintln!("   Redis restarted at {:.0} s", now.as_secs_f64());
            rewarm.push((
                now + warmup,
                REDIS.to_owned(),
                format!("{REDIS} (after its restart)"),
            ));
            *rig.events.entry("Redis restarts").or_default() += 1;
            redis_restarted = true;
            continue;
        }
        if now >= next_churn {
            let quiet = pause(&customers, false).await?;
            let i = churned % CHURN_SLOTS;
            if rig.churn[i].process.is_some() {
                rig.leave(i).await?;
            } else {
                rig.join(false, i)?;
            }
            drop(quiet);
            churned += 1;
            next_churn += CHURN_EVERY;
            continue;
        }
        // The schedule's next event (not a readiness wait).
        let mut next = next_churn.min(duration);
        if !warmed {
            next = next.min(warmup);
        }
        if !restarted {
            next = next.min(restart_at);
        }
        if !redis_restarted {
            next = next.min(redis_at);
        }
        for (when, _, _) in &rewarm {
            if *when + warmup / 2 <= duration {
                next = next.min(*when);
            }
        }
        tokio::time::sleep_until((t0 + next).into()).await;
    }
    if !warmed {
        bail!("the run ended before its warm-up reading");
    }
    let (quiet, end) = quiet_point(rig, &customers).await.context("end reading")?;
    for (label, start) in open {
        match end.iter().find(|r| r.name == start.name) {
            Some(reading) => windows.push((label, start, reading.clone())),
            None => report
                .failures
                .push(format!("soak: {label} has no end reading")),
        }
    }
    for (_, _, label) in &rewarm {
        report.notes.push(format!(
            "soak: {label}: the run ended too soon after its own warm-up, so it has no growth window"
        ));
    }
    customers.stop.store(true, Ordering::SeqCst);
    drop(quiet);
    for handle in loops {
        let _ = tokio::time::timeout(2 * REQUEST_BOUND, handle).await;
    }
    let wall = t0.elapsed();
    for (i, gateway) in rig.gateways.iter().enumerate() {
        *rig.panics.entry(rig.gateway_name(i)).or_default() += panics_in(&gateway.lines());
    }
    for slot in rig.stable.iter().chain(&rig.churn) {
        if let Some(process) = &slot.process {
            *rig.panics.entry(slot.name.clone()).or_default() += panics_in(&process.lines());
        }
    }
    let (moved_up, moved_down, counted) = settle_usage(rig, &both).await;
    let cut_counted = rig.counted(CUT_USER).await?;
    let redis_usage = match &rig.redis {
        Some(redis) => Some(redis_usage(&redis.url()).await?),
        None => None,
    };

    // The growth checks.
    println!();
    println!("soak: every process, at the end of its warm-up and at the end of its window (growth at most {GROWTH_LIMIT} %)");
    println!(
        "   {:<34} {:<9} {:>7} {:>7} {:>10} {:>10} {:>9}",
        "process", "figure", "from s", "to s", "warm-up", "end", "growth"
    );
    for (label, before, after) in &windows {
        if after.pid != before.pid {
            report.failures.push(format!(
                "soak: {label}: pid {} at the start of its window, {} at its end",
                before.pid, after.pid
            ));
        }
        let (from, to) = (
            before.at.duration_since(t0).as_secs_f64(),
            after.at.duration_since(t0).as_secs_f64(),
        );
        report.row(
            SCENARIO,
            format!("{label}: window"),
            "s",
            None,
            Some(to - from),
            None,
        );
        for (figure, unit, a, b) in [
            ("RSS", "KiB", before.rss_kib, after.rss_kib),
            ("open fds", "count", before.fds, after.fds),
            ("threads", "count", before.threads, after.threads),
        ] {
            let growth = (b as f64 - a as f64) / (a.max(1) as f64) * 100.0;
            let pass = growth <= GROWTH_LIMIT;
            println!(
                "   {label:<34} {figure:<9} {from:>7.0} {to:>7.0} {a:>10} {b:>10} {growth:>+8.1}% {}",
                if pass { "PASS" } else { "FAIL" }
            );
            let metric = format!("{label}: {figure}");
            report.row(
                SCENARIO,
                format!("{metric} at warm-up"),
                unit,
                None,
                Some(a as f64),
                None,
            );
            report.row(
                SCENARIO,
                format!("{metric} at end"),
                unit,
                None,
                Some(b as f64),
                None,
            );
            report.row(
                SCENARIO,
                format!("{metric} growth (<= {GROWTH_LIMIT} %)"),
                "%",
                None,
                Some(growth),
                None,
            );
            if figure == "open fds" && a != b {
                let kinds = |r: &Reading| {
                    r.fd_kinds
                        .iter()
                        .map(|(kind, n)| format!("{kind} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let what = format!(
                    "soak: {label}'s descriptors by kind at {from:.0} s: {}; at {to:.0} s: {}",
                    kinds(before),
                    kinds(after)
                );
                println!("   {what}");
                report.notes.push(what);
                // Which sockets came and went: a tunnel of an agent that
                // rejoined is new, so the one too many is among the new ones.
                let differ = |a: &Reading, b: &Reading| {
                    a.sockets
                        .iter()
                        .filter(|(inode, _)| !b.sockets.contains_key(inode))
                        .map(|(_, what)| what.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let what = format!(
                    "soak: {label}'s sockets gone by {to:.0} s: {}; new since {from:.0} s: {}",
                    differ(before, after),
                    differ(after, before)
                );
                println!("   {what}");
                report.notes.push(what);
            }
            if !pass {
                report.failures.push(format!(
                    "soak: growth: {metric} grew {growth:.1} % ({a} -> {b} {unit}), more than {GROWTH_LIMIT} %"
                ));
            }
        }
    }

    // Panics.
    let panics: usize = rig.panics.values().sum();
    println!(
        "   panics in any process's output: {panics} {}",
        if panics == 0 { "PASS" } else { "FAIL" }
    );
    report.row(
        SCENARIO,
        "panics in any process's output",
        "count",
        None,
        Some(panics as f64),
        None,
    );
    if panics > 0 {
        let by: Vec<String> = rig
            .panics
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}: {n}"))
            .collect();
        report
            .failures
            .push(format!("soak: panics: {}", by.join(", ")));
    }

    // Bytes.
    let tally = customers.tally.lock().expect("tally lock");
    let equal = counted == (moved_up, moved_down);
    println!(
        "   bench bytes moved (at the targets) up {moved_up} down {moved_down}; counted (/stats) up {} down {}: {}",
        counted.0,
        counted.1,
        if equal { "equal PASS" } else { "FAIL" }
    );
    for (metric, value) in [
        ("bench: bytes up, moved (read by the targets)", moved_up),
        ("bench: bytes up, counted in usage (/stats)", counted.0),
        (
            "bench: bytes down, moved (written by the targets)",
            moved_down,
        ),
        ("bench: bytes down, counted in usage (/stats)", counted.1),
    ] {
        report.row(SCENARIO, metric, "bytes", None, Some(value as f64), None);
    }
    report.row(
        SCENARIO,
        "bench: bytes counted - moved",
        "bytes",
        None,
        Some((counted.0 + counted.1) as f64 - (moved_up + moved_down) as f64),
        None,
    );
    if !equal {
        report.failures.push(format!(
            "soak: bytes: bench moved up {moved_up} down {moved_down}, usage counted up {} down {}",
            counted.0, counted.1
        ));
    }
    // The tunnel clients' own count against the tunnel target's.
    let tunnel_target = tunnel_counted.get();
    report.row(
        SCENARIO,
        "bench: tunnel bytes up, clients' count",
        "bytes",
        None,
        Some(tally.tunnel_moved.up as f64),
        None,
    );
    report.row(
        SCENARIO,
        "bench: tunnel bytes down, clients' count",
        "bytes",
        None,
        Some(tally.tunnel_moved.down as f64),
        None,
    );
    if (tally.tunnel_moved.up, tally.tunnel_moved.down) != tunnel_target {
        report.failures.push(format!(
            "soak: bytes: the tunnel clients counted {:?} (up, down), the tunnel target {tunnel_target:?}",
            (tally.tunnel_moved.up, tally.tunnel_moved.down)
        ));
    }
    for (i, (before, after)) in usage_kept.iter().enumerate() {
        report.row(
            SCENARIO,
            format!("bench: usage before gateway restart {}", i + 1),
            "bytes",
            None,
            Some((before.0 + before.1) as f64),
            None,
        );
        report.row(
            SCENARIO,
            format!("bench: usage after gateway restart {}", i + 1),
            "bytes",
            None,
            Some((after.0 + after.1) as f64),
            None,
        );
        if before != after {
            report.failures.push(format!(
                "soak: bytes: usage {before:?} before the gateway restart, {after:?} after"
            ));
        }
    }
    if let Some((up, down)) = redis_usage {
        report.row(
            SCENARIO,
            "bench: bytes in Redis's fleet totals (since the Redis restart)",
            "bytes",
            None,
            Some((up + down) as f64),
            None,
        );
    }

    // What the customers did.
    for ((protocol, what), n) in &tally.ok {
        report.row(
            SCENARIO,
            format!("{}: {what}", protocol.name()),
            "count",
            None,
            Some(*n as f64),
            None,
        );
    }
    for ((protocol, why), n) in &tally.failed {
        report.row(
            SCENARIO,
            format!("{}: failed, {why}", protocol.name()),
            "count",
            None,
            Some(*n as f64),
            None,
        );
    }
    for protocol in Protocol::ALL {
        if !tally.ok.contains_key(&(protocol, "exchanges")) {
            report
                .failures
                .push(format!("soak: no {} exchange succeeded", protocol.name()));
        }
    }
    for (metric, unit, value) in [
        ("cut: downloads completed", "count", tally.cut_completed),
        ("cut: downloads cut by a fault", "count", tally.cut_cut),
        (
            "cut: downloads that did not open",
            "count",
            tally.cut_failed_to_open,
        ),
        (
            "cut: bytes down, clients' count",
            "bytes",
            tally.cut_bytes_down,
        ),
        ("cut: bytes down, counted in usage", "bytes", cut_counted.1),
    ] {
        report.row(SCENARIO, metric, unit, None, Some(value as f64), None);
    }
    for (event, n) in &rig.events {
        report.row(
            SCENARIO,
            format!("events: {event}"),
            "count",
            None,
            Some(*n as f64),
            None,
        );
    }
    report.row(
        SCENARIO,
        "run time",
        "s",
        None,
        Some(wall.as_secs_f64()),
        None,
    );
    report.notes.push(format!(
        "soak: {:.0} s{}; {} gateway process(es) (--threads {}), {STABLE_AGENTS} agent processes throughout (QUIC and TLS/TCP), {CHURN_SLOTS} more joining and leaving in turn every {} s (every {KILL_EVERY}rd leave a SIGKILL), one graceful gateway restart{}; customer `bench`: {LOOPS_PER_PROTOCOL} loops on each of HTTP CONNECT, plain HTTP, SOCKS5 and CONNECT over TLS (HTTPS proxy), echoes of 1 B to {} KiB, a tenth to a refused port, on tunnels a tenth to a target that resets after half; its connections take turns with the faults, so its bytes are compared exactly: the targets' reads and writes against the gateways' /stats (usage survives a restart in the state directory's usage.json); customer `cut`: {CUT_LOOPS} loops of {} MiB downloads cut by the faults, shown not compared; readings with traffic paused, every agent joined and no stream open, from the end of the first fifth (the warm-up) to the end, a restarted process's first one until its restart and its new one from one warm-up after the restart; threads are /proc/PID/task (the gateway exposes no task count)",
        wall.as_secs_f64(),
        if fleet { ", fleet: two gateways on one redis-server" } else { "" },
        rig.gateways.len(),
        bench.runs.gateway_threads,
        CHURN_EVERY.as_secs(),
        if fleet { ", one Redis restart (SIGKILL, back empty: its fleet totals start again from zero; each gateway's own totals, which /stats shows, are in its state directory)" } else { "" },
        MAX_EXCHANGE / 1024,
        CUT_DOWNLOAD / MIB,
    ));
    Ok(())
}

/// `bench`'s bytes up and down in the fleet's Redis totals.
async fn redis_usage(url: &str) -> Result<(u64, u64)> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(STEP, client.get_multiplexed_async_connection()).await??;
    let (up, down): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(format!("exitpool:usage:customer:{USER}"))
        .arg("bytes_up")
        .arg("bytes_down")
        .query_async(&mut conn)
        .await?;
    Ok((up.unwrap_or(0), down.unwrap_or(0)))
}
