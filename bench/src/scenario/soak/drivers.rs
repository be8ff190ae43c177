//! The soak's client side of each customer protocol: `CONNECT`'s head (plain
//! and inside TLS), SOCKS5's handshake, plain-HTTP forwarding, and the two
//! exchanges a tunnel carries (an echo, and a transfer the target resets).

use crate::client::head_end;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one customer connection moved, as the client saw it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub up: u64,
    pub down: u64,
}

/// Why a request failed, by kind (counted, not fatal).
pub type Failure = String;

pub fn io_kind(what: &str, error: &std::io::Error) -> Failure {
    format!("{what}: {}", error.kind())
}

/// Sends `CONNECT target` on `stream` and reads the answer's head.
pub async fn connect_head<S: AsyncRead + AsyncWrite + Unpin>(
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
pub async fn socks5(
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
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
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
pub async fn reset<S: AsyncRead + AsyncWrite + Unpin>(
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
pub async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<u64> {
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
pub async fn http_get(
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
