//! Local target servers the exits dial: an HTTP server that reports the address
//! it was reached from, a byte echo server, and a port nobody listens on.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// An HTTP/1.1 target on `ip`:
/// - `GET /ip`: the peer IP it saw (the exit's address);
/// - `GET /bytes/N`: N bytes of a known pattern, chunked;
/// - `GET /drip/N`: N bytes of the pattern at a steady [`DRIP_RATE`], chunked, so
///   a download lasts long enough for the gateway's per-second accounting to act;
/// - `POST /echo`: the request body back, streamed.
pub async fn http_target(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind target");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| async move {
                    Ok::<_, Infallible>(answer(request, peer).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The byte pattern targets and tests agree on.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn answer(request: Request<hyper::body::Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/ip" {
        return Response::new(full(peer.ip().to_string()));
    }
    if path == "/headers" {
        let text: String = request
            .headers()
            .iter()
            .map(|(key, value)| format!("{key}: {}\n", value.to_str().unwrap_or("?")))
            .collect();
        return Response::new(full(text));
    }
    if let Some(len) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let data = pattern(len);
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = data
            .chunks(16 * 1024)
            .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        let body = StreamBody::new(futures_stream(chunks));
        return Response::new(BodyExt::boxed(body));
    }
    if let Some(len) = path
        .strip_prefix("/drip/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let frames = pattern(len)
            .chunks(DRIP_CHUNK)
            .map(|chunk| Frame::data(Bytes::copy_from_slice(chunk)))
            .collect();
        let body = StreamBody::new(paced(frames));
        return Response::new(BodyExt::boxed(body));
    }
    if path == "/echo" {
        let body = request.into_body().map_err(std::io::Error::other).boxed();
        return Response::new(body);
    }
    let mut response = Response::new(full("not found"));
    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
    response
}

/// Bytes per piece of a paced body.
pub const DRIP_CHUNK: usize = 16 * 1024;
/// How often a paced body sends a piece.
pub const DRIP_EVERY: std::time::Duration = std::time::Duration::from_millis(8);
/// The pace of `/drip/N` and [`paced`] bodies in bytes per second (2 MB/s).
pub const DRIP_RATE: usize = DRIP_CHUNK * 1000 / 8;

/// A stream of `items`, one every [`DRIP_EVERY`], for bodies that must take time
/// (the pace is the target's or the client's behaviour, not a wait in the test).
/// It ends early if the consumer goes away.
pub fn paced<T: Send + 'static>(
    items: Vec<T>,
) -> impl futures_core::Stream<Item = Result<T, std::io::Error>> {
    struct Paced<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Paced<T> {
        type Item = Result<T, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx).map(|item| item.map(Ok))
        }
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(DRIP_EVERY);
        for item in items {
            every.tick().await;
            if sender.send(item).await.is_err() {
                return;
            }
        }
    });
    Paced(receiver)
}

fn futures_stream<T>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    impl<T> Unpin for Iter<T> {}
    Iter(items.into_iter())
}

/// A TCP echo server: echoes everything, then on the client's EOF writes
/// `\n<count> bytes\n` and closes (so half-close can be checked).
pub async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0usize;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            total += n;
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = stream
                    .write_all(format!("\n{total} bytes\n").as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A loopback port with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
