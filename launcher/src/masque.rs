//! A MASQUE CONNECT-UDP client (RFC 9298 over HTTP/3) for the end-to-end
//! tests and the load test: one QUIC connection to the gateway's
//! `--listen-h3` ([`MasqueClient::connect`]), a CONNECT-UDP request per UDP
//! target ([`MasqueClient::connect_udp`]), HTTP Datagrams both ways on the
//! [`UdpTunnel`] it opens, and [`UdpTunnel::into_socket`] to run QUIC (a
//! quinn endpoint) inside the tunnel.
//!
//! The request is an extended CONNECT (RFC 9220) with `:protocol
//! connect-udp` on `/.well-known/masque/udp/{host}/{port}/`; a datagram is
//! the request's quarter stream id, a context id (0 for UDP payloads), then
//! the payload (RFC 9297 §2.1, RFC 9298 §4). [`UdpTunnel::send_context`]
//! sends any context id, for tests of what the gateway drops. Every wait is
//! bounded by the client's timeout.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use exitpool_transport::h3_endpoint::{datagram_prefix, take_varint};
use quinn::udp::{RecvMeta, Transmit};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// The first UDP payload size of the client's QUIC packets: large enough for
/// an HTTP Datagram carrying a 1,200-byte QUIC Initial (QUIC inside MASQUE).
pub const INITIAL_MTU: u16 = 1452;
/// Datagrams waiting in one tunnel for [`UdpTunnel::recv`]; more are dropped.
pub const TUNNEL_QUEUE: usize = 256;

/// The request stream type of the h3 client.
type RequestStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
/// Open tunnels by request stream id: where arriving datagrams go.
type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum MasqueError {
    /// The QUIC or HTTP/3 layer failed.
    #[error("{0}")]
    Connection(String),
    /// A wait ran past the client's timeout.
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, &'static str),
    /// The gateway answered the request with a status other than 2xx.
    #[error("CONNECT-UDP refused with {status}: {body}")]
    Refused {
        /// The status.
        status: u16,
        /// The answer's headers (`Proxy-Status`, `X-Exitpool-Error`, ...).
        headers: http::HeaderMap,
        /// The answer's body (the gateway's JSON error).
        body: String,
    },
}

impl MasqueError {
    /// The answer's status and headers, if the gateway refused the request.
    pub fn refusal(&self) -> Option<(u16, &http::HeaderMap)> {
        match self {
            MasqueError::Refused {
                status, headers, ..
            } => Some((*status, headers)),
            _ => None,
        }
    }
}

fn failed(error: impl std::fmt::Display) -> MasqueError {
    MasqueError::Connection(error.to_string())
}

/// One HTTP/3 connection to a MASQUE proxy. Dropping it closes the
/// connection.
pub struct MasqueClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    requests: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    routes: Routes,
    timeout: Duration,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl MasqueClient {
    /// Connects to `proxy` (its certificate checked by `tls` for
    /// `server_name`; `tls` gets ALPN `h3`), waiting at most `timeout` here
    /// and in every later call.
    pub async fn connect(
        proxy: SocketAddr,
        server_name: &str,
        mut tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> Result<MasqueClient, MasqueError> {
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(failed)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .initial_mtu(INITIAL_MTU)
            .keep_alive_interval(Some(Duration::from_secs(5)));
        config.transport_config(Arc::new(transport));
        let local: SocketAddr = match proxy {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
        };
        let mut endpoint = quinn::Endpoint::client(local).map_err(failed)?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint.connect(proxy, server_name).map_err(failed)?;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| MasqueError::Timeout(timeout, "the QUIC handshake"))?
            .map_err(failed)?;
        let mut builder = h3::client::builder();
        let built = builder
            .enable_extended_connect(true)
            .enable_datagram(true)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(connection.clone()));
        let (mut driver, requests) = tokio::time::timeout(timeout, built)
            .await
            .map_err(|_| MasqueError::Timeout(timeout, "HTTP/3 setup"))?
            .map_err(failed)?;
        let drive = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        let routes: Routes = Arc::default();
        let read = tokio::spawn(route_datagrams(connection.clone(), routes.clone()));
        Ok(MasqueClient {
            endpoint,
            connection,
            requests,
            routes,
            timeout,
            tasks: vec![drive.abort_handle(), read.abort_handle()],
        })
    }

    /// The QUIC connection to the proxy.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Opens a CONNECT-UDP tunnel to `host:port` (an IPv6 literal without
    /// brackets), with Basic `credentials` if given; a refusal is
    /// [`MasqueError::Refused`].
    pub async fn connect_udp(
        &self,
        host: &str,
        port: u16,
        credentials: Option<(&str, &str)>,
    ) -> Result<UdpTunnel, MasqueError> {
        let host = host.replace(':', "%3A");
        let path = format!("/.well-known/masque/udp/{host}/{port}/");
        self.request(&path, credentials).await
    }

    /// Sends an extended CONNECT (`connect-udp`) for `path` as it is.
    pub async fn request(
        &self,
        path: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<UdpTunnel, MasqueError> {
        let uri = format!("https://masque-proxy{path}");
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(uri)
            .header("capsule-protocol", "?1");
        if let Some((user, password)) = credentials {
            request = request.header("proxy-authorization", basic(user, password));
        }
        let mut request = request.body(()).map_err(failed)?;
        request
            .extensions_mut()
            .insert(h3::ext::Protocol::CONNECT_UDP);
        let timeout = self.timeout;
        let mut requests = self.requests.clone();
        let exchange = async {
            let mut stream = requests.send_request(request).await.map_err(failed)?;
            let id = stream.id().into_inner();
            // Routed before the answer, so no early datagram is lost.
            let (queue, arriving) = mpsc::channel(TUNNEL_QUEUE);
            self.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, queue);
            let response = stream.recv_response().await.map_err(failed)?;
            Ok::<_, MasqueError>((stream, id, arriving, response))
        };
        let (mut stream, id, arriving, response) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| MasqueError::Timeout(timeout, "the CONNECT-UDP answer"))??;
        if !response.status().is_success() {
            self.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let mut body = Vec::new();
            let read = async {
                while let Ok(Some(mut chunk)) = stream.recv_data().await {
                    while chunk.has_remaining() && body.len() < 64 * 1024 {
                        let part = chunk.chunk();
                        body.extend_from_slice(part);
                        let len = part.len();
                        chunk.advance(len);
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, read).await;
            return Err(MasqueError::Refused {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(UdpTunnel {
            headers: response.headers().clone(),
            stream,
            id,
            connection: self.connection.clone(),
            arriving: tokio::sync::Mutex::new(arriving),
            _route: Route {
                id,
                routes: self.routes.clone(),
            },
            timeout,
        })
    }

    /// Closes the connection and waits (at most the timeout) for the close
    /// to reach the proxy.
    pub async fn close(self) {
        self.connection.close(0x100u32.into(), b"done");
        let _ = tokio::time::timeout(self.timeout, self.endpoint.wait_idle()).await;
    }
}

impl Drop for MasqueClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `Basic` credentials.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Reads the connection's datagrams until it ends, handing each UDP payload
/// (context id 0) to its tunnel; others are dropped.
async fn route_datagrams(connection: quinn::Connection, routes: Routes) {
    while let Ok(mut datagram) = connection.read_datagram().await {
        let (Some(quarter), Some(context)) =
            (take_varint(&mut datagram), take_varint(&mut datagram))
        else {
            continue;
        };
        if context != 0 {
            continue;
        }
        let id = quarter * 4;
        if let Some(queue) = routes.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            let _ = queue.try_send(datagram);
        }
    }
}

/// A tunnel's entry in [`Routes`], removed when the tunnel (or its socket)
/// goes.
struct Route {
    id: u64,
    routes: Routes,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("id", &self.id).finish()
    }
}

/// One CONNECT-UDP request the proxy accepted: a UDP flow to its target.
pub struct UdpTunnel {
    /// The answer's headers (`X-Exitpool-Exit`, `X-Exitpool-Country`, ...).
    pub headers: http::HeaderMap,
    stream: RequestStream,
    id: u64,
    connection: quinn::Connection,
    /// Behind a lock so one task can wait for datagrams while another sends.
    arriving: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    _route: Route,
    timeout: Duration,
}

impl UdpTunnel {
    /// Sends one UDP payload (context id 0).
    pub fn send(&self, payload: &[u8]) -> Result<(), quinn::SendDatagramError> {
        self.send_context(0, payload)
    }

    /// Sends `payload` with context id `context` (RFC 9298 defines only 0).
    pub fn send_context(
        &self,
        context: u64,
        payload: &[u8],
    ) -> Result<(), quinn::SendDatagramError> {
        send_datagram(&self.connection, self.id, context, payload)
    }

    /// The largest UDP payload the connection can carry in one datagram now.
    pub fn max_payload(&self) -> Option<usize> {
        Some(self.connection.max_datagram_size()?.saturating_sub(2 * 8))
    }

    /// The next UDP payload from the target, or `None` at the timeout or
    /// once the connection is gone. Cancel safe: a payload is taken only
    /// when it is returned.
    pub async fn recv(&self) -> Option<Bytes> {
        let next = async { self.arriving.lock().await.recv().await };
        tokio::time::timeout(self.timeout, next)
            .await
            .ok()
            .flatten()
    }

    /// Waits (at most the timeout) for the proxy to end the request stream;
    /// whether it did.
    pub async fn ended(&mut self) -> bool {
        let ended = async { while let Ok(Some(_)) = self.stream.recv_data().await {} };
        tokio::time::timeout(self.timeout, ended).await.is_ok()
    }

    /// Closes the request stream (the flow's end at the proxy).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.stream.finish()).await;
    }

    /// The tunnel as a UDP socket for a quinn endpoint
    /// ([`quinn::Endpoint::new_with_abstract_socket`]): what the endpoint
    /// sends goes to the tunnel's target, whatever address it names, and
    /// what arrives seems to come from `target`.
    pub fn into_socket(self, target: SocketAddr) -> Arc<MasqueSocket> {
        let local = self
            .connection
            .local_ip()
            .map(|ip| SocketAddr::new(ip, 0))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        Arc::new(MasqueSocket {
            target,
            local,
            arriving: Mutex::new(self.arriving.into_inner()),
            connection: self.connection,
            id: self.id,
            _stream: Mutex::new(self.stream),
            _route: self._route,
        })
    }
}

/// Sends an HTTP Datagram for request stream `id` with `context`.
fn send_datagram(
    connection: &quinn::Connection,
    id: u64,
    context: u64,
    payload: &[u8],
) -> Result<(), quinn::SendDatagramError> {
    let prefix = datagram_prefix(id, context);
    let mut datagram = BytesMut::with_capacity(prefix.len() + payload.len());
    datagram.put_slice(&prefix);
    datagram.put_slice(payload);
    connection.send_datagram(datagram.freeze())
}

/// A [`UdpTunnel`] as quinn's UDP socket: QUIC inside MASQUE.
pub struct MasqueSocket {
    target: SocketAddr,
    local: SocketAddr,
    arriving: Mutex<mpsc::Receiver<Bytes>>,
    connection: quinn::Connection,
    id: u64,
    /// Held open: the tunnel lasts as long as the socket.
    _stream: Mutex<RequestStream>,
    _route: Route,
}

impl std::fmt::Debug for MasqueSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasqueSocket")
            .field("id", &self.id)
            .field("target", &self.target)
            .finish()
    }
}

impl std::fmt::Debug for UdpTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTunnel").field("id", &self.id).finish()
    }
}

/// Datagrams never wait: one the tunnel cannot take is lost, as on a path.
#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for MasqueSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        match send_datagram(&self.connection, self.id, 0, transmit.contents) {
            Ok(()) => Ok(()),
            // Too large, or datagrams off: lost, as a path loses it.
            Err(quinn::SendDatagramError::ConnectionLost(error)) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                error,
            )),
            Err(_) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let mut arriving = self.arriving.lock().unwrap_or_else(|e| e.into_inner());
        match arriving.poll_recv(cx) {
            Poll::Ready(Some(datagram)) => {
                let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
                    return Poll::Ready(Ok(0));
                };
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                *slot = RecvMeta {
                    addr: self.target,
                    len,
                    stride: len,
                    ecn: None,
                    dst_ip: None,
                };
                Poll::Ready(Ok(1))
            }
            Poll::Ready(None) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the MASQUE connection is gone",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
