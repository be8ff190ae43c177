//! The target server and the clients: how a client reaches the target (direct,
//! through an HTTP proxy with CONNECT, through the bare relay), the target's
//! tiny protocol (download, upload, a request/response exchange), and one timed
//! transfer with the CPU it cost.

use crate::measure::{cpu_of, GIB};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every single network step (connect, handshake, one small reply).
pub const STEP: Duration = Duration::from_secs(20);
/// Size of the buffers the client and target read and write with.
const CHUNK: usize = 256 * 1024;

/// A target speaking a tiny request/response protocol: the client sends one
/// command byte and a big-endian u64 length. `D`: the target sends that many
/// bytes and closes. `U`: it reads that many bytes and answers with the count.
/// `E`: it reads that many bytes, sends as many back and closes.
pub async fn start_target() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = serve_target(stream).await;
            });
        }
    });
    Ok(addr)
}

async fn serve_target(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut head = [0u8; 9];
    tokio::time::timeout(STEP, stream.read_exact(&mut head)).await??;
    let len = u64::from_be_bytes(head[1..].try_into().expect("8 bytes"));
    match head[0] {
        b'D' => write_bytes(&mut stream, len).await?,
        b'U' => {
            let got = read_bytes(&mut stream, len).await?;
            stream.write_all(&got.to_be_bytes()).await?;
        }
        b'E' => {
            let got = read_bytes(&mut stream, len).await?;
            write_bytes(&mut stream, got).await?;
        }
        other => bail!("unknown command {other}"),
    }
    // The target closes first, so the client does not hold the TIME_WAIT.
    stream.shutdown().await?;
    Ok(())
}

static PAYLOAD: [u8; CHUNK] = [0x5a; CHUNK];

async fn write_bytes(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    mut len: u64,
) -> std::io::Result<()> {
    while len > 0 {
        let n = len.min(CHUNK as u64) as usize;
        stream.write_all(&PAYLOAD[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

/// Reads `len` bytes (or until EOF, whichever first) and returns how many came.
async fn read_bytes(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    len: u64,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(buf.len() as u64) as usize;
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    Ok(got)
}

/// Sends one command head.
async fn command(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    command: u8,
    len: u64,
) -> std::io::Result<()> {
    let mut head = [command; 9];
    head[1..].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&head).await
}

/// How a client reaches the target.
#[derive(Debug, Clone)]
pub enum Route {
    Direct,
    /// A relay that carries the target protocol as it is (the bare QUIC relay).
    Relay(SocketAddr),
    /// An HTTP proxy taking CONNECT, with an optional `Proxy-Authorization` value.
    Proxy {
        addr: SocketAddr,
        auth: Option<String>,
    },
    /// Like `Proxy`, from a given local address (many customers, many addresses).
    ProxyFrom {
        addr: SocketAddr,
        auth: Option<String>,
        source: IpAddr,
    },
}

impl Route {
    /// This route with a proxy reached from `source`: a proxy rightly caps how
    /// many unauthenticated connections one address may hold, so many clients
    /// come from many addresses. Direct and relay routes stay as they are.
    pub fn with_source(&self, source: IpAddr) -> Route {
        match self {
            Route::Proxy { addr, auth } | Route::ProxyFrom { addr, auth, .. } => Route::ProxyFrom {
                addr: *addr,
                auth: auth.clone(),
                source,
            },
            other => other.clone(),
        }
    }
}

/// A `Proxy-Authorization` value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Why a connection to the target could not be opened, by kind, so the rate
/// scenario can count each.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("CONNECT answer timed out")]
    AnswerTimeout,
    /// A non-200 answer; `code` is exitpool's `X-Exitpool-Error`, if any.
    #[error("CONNECT answered {line:?} {body:?}")]
    Refused {
        line: String,
        code: Option<String>,
        body: String,
    },
    #[error("proxy closed before answering: {0:?}")]
    Closed(String),
    #[error("{0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl OpenError {
    /// A short name for counting failures of the same kind: exitpool's error
    /// code (`exits_busy`, …), another proxy's status, or the I/O error's kind.
    pub fn kind(&self) -> String {
        match self {
            OpenError::ConnectTimeout => "connect timeout".into(),
            OpenError::Connect(error) => format!("connect: {}", error.kind()),
            OpenError::AnswerTimeout => "CONNECT answer timeout".into(),
            OpenError::Refused {
                code: Some(code), ..
            } => code.clone(),
            OpenError::Refused { line, .. } => {
                let status = line.split(' ').nth(1).unwrap_or("?");
                format!("HTTP {status}")
            }
            OpenError::Closed(_) => "closed before answering".into(),
            OpenError::Protocol(what) => (*what).into(),
            OpenError::Io(error) => error.kind().to_string(),
        }
    }
}

/// Opens a connection to `target` along `path`, ready for the target protocol.
pub async fn open(path: &Route, target: SocketAddr) -> Result<TcpStream, OpenError> {
    let (to, proxy) = match path {
        Route::Direct => (target, None),
        Route::Relay(relay) => (*relay, None),
        Route::Proxy { addr, auth } => (*addr, Some((auth, None))),
        Route::ProxyFrom { addr, auth, source } => (*addr, Some((auth, Some(*source)))),
    };
    let connecting = async {
        match proxy.and_then(|(_, source)| source) {
            None => TcpStream::connect(to).await,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(to).await
            }
        }
    };
    let mut stream = tokio::time::timeout(STEP, connecting)
        .await
        .map_err(|_| OpenError::ConnectTimeout)?
        .map_err(OpenError::Connect)?;
    stream.set_nodelay(true)?;
    let Some((auth, _)) = proxy else {
        return Ok(stream);
    };
    let auth = auth
        .as_ref()
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await?;
    tokio::time::timeout(STEP, read_head(&mut stream))
        .await
        .map_err(|_| OpenError::AnswerTimeout)??;
    Ok(stream)
}

/// Where an HTTP head that `bytes` starts with ends: the index just past its
/// blank line, once it has arrived.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Reads a CONNECT answer's head and fails unless it is a 200. The target never
/// speaks first, so nothing after the head can arrive before we send a command;
/// reading in chunks is safe.
pub(crate) async fn read_head(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> Result<(), OpenError> {
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(OpenError::Closed(
                String::from_utf8_lossy(&raw).into_owned(),
            ));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&raw) {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let line = head.lines().next().unwrap_or("").to_owned();
            if line.split(' ').nth(1) == Some("200") {
                if end != raw.len() {
                    return Err(OpenError::Protocol(
                        "unexpected bytes after the CONNECT answer",
                    ));
                }
                return Ok(());
            }
            // An error answer may carry a body; keep its start for the report.
            let body = String::from_utf8_lossy(&raw[end..])
                .chars()
                .take(160)
                .collect();
            let code = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-exitpool-error")
                    .then(|| value.trim().to_owned())
            });
            return Err(OpenError::Refused { line, code, body });
        }
        if raw.len() > 64 * 1024 {
            return Err(OpenError::Protocol("CONNECT answer head too long"));
        }
    }
}

/// Asks for `len` bytes and reads them all.
pub async fn download(stream: &mut TcpStream, len: u64) -> Result<()> {
    command(stream, b'D', len).await?;
    let got = read_bytes(stream, len).await?;
    if got != len {
        bail!("download cut short: {got} of {len} bytes");
    }
    Ok(())
}

/// Sends `len` bytes and waits for the target to confirm it got them.
pub async fn upload(stream: &mut TcpStream, len: u64) -> Result<()> {
    command(stream, b'U', len).await?;
    write_bytes(stream, len).await?;
    let mut answer = [0u8; 8];
    tokio::time::timeout(STEP, stream.read_exact(&mut answer))
        .await
        .context("upload ack timed out")??;
    let got = u64::from_be_bytes(answer);
    if got != len {
        bail!("upload cut short: target got {got} of {len} bytes");
    }
    Ok(())
}

/// Sends a `len`-byte request, reads the `len`-byte answer, then waits for the
/// target to close, so the connection ends from the target's side.
pub async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    len: u64,
) -> std::io::Result<()> {
    command(stream, b'E', len).await?;
    write_bytes(stream, len).await?;
    let got = read_bytes(stream, len + 1).await?;
    if got != len {
        let what = format!("answer of {got} bytes, not {len}");
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what));
    }
    Ok(())
}

/// A generous bound for moving `bytes`: 5 MB/s at least, 60 s minimum.
pub fn transfer_bound(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 5_000_000)
}

/// Runs every future as its own task and collects the outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task does not panic"));
    }
    out
}

/// One transfer's speed and cost.
pub struct Transfer {
    pub mb_per_s: f64,
    /// This process (client and target) plus every process in `pids`.
    pub cpu_per_gib: f64,
    /// Each process of `pids` on its own, in the same order.
    pub cpu_per_gib_of: Vec<f64>,
}

/// One fresh connection along `path` moving `bytes` down (or up).
pub async fn one_transfer(
    path: &Route,
    target: SocketAddr,
    bytes: u64,
    up: bool,
    pids: &[u32],
) -> Result<Transfer> {
    let cpu0 = cpu_of(pids)?;
    let t0 = Instant::now();
    let mut stream = open(path, target).await?;
    let work = async {
        if up {
            upload(&mut stream, bytes).await
        } else {
            download(&mut stream, bytes).await
        }
    };
    tokio::time::timeout(transfer_bound(bytes), work)
        .await
        .context("transfer timed out")??;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(pids)?;
    let per_gib: Vec<f64> = cpu1
        .iter()
        .zip(&cpu0)
        .map(|(after, before)| (after - before) / (bytes as f64 / GIB))
        .collect();
    Ok(Transfer {
        mb_per_s: bytes as f64 / secs / 1e6,
        cpu_per_gib: per_gib.iter().sum(),
        cpu_per_gib_of: per_gib[1..].to_vec(),
    })
}
