//! The soak's target servers, in the load-test process: an echo that can
//! reset mid-transfer (tunnels), a sized HTTP answer (plain HTTP), and a port
//! where nothing listens. Each counts every byte it reads and writes, which is
//! what the gateways' usage is compared against.

use super::settings::REQUEST_BOUND;
use crate::client::head_end;
use anyhow::Result;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes a target server read and wrote.
#[derive(Debug, Default)]
pub struct Counted {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counted {
    pub fn get(&self) -> (u64, u64) {
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
pub async fn start_tunnel_target(counted: Arc<Counted>) -> Result<SocketAddr> {
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
pub async fn start_http_target(counted: Arc<Counted>) -> Result<SocketAddr> {
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
pub fn refused_target() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
