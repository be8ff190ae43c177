//! One TLS/TCP tunnel's handle ([`TcpTunnel`]): the state its driver and its
//! clones share, opening and accepting streams, on-demand pings, and the
//! [`TunnelConnection`] interface.

use crate::tunnel::{CloseReason, ExportError, Transport, TunnelConnection};
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::gate::Admission;
use super::{h2_to_io, lock, Io, TcpRecv, TcpSend};

/// On-demand pings waiting for the driver; callers beyond this wait their turn.
const PING_QUEUE: usize = 64;

/// One TCP tunnel, either end. Cheap to clone; the tunnel lives while its
/// driver task does, and is closed (code 0) when the last clone is dropped,
/// as a QUIC connection is: a tunnel nobody holds must not live on answering
/// pings.
#[derive(Clone)]
pub struct TcpTunnel {
    inner: Arc<Inner>,
    _held: Arc<CloseWhenDropped>,
}

/// Dropped with the last [`TcpTunnel`] handle: asks the driver to close.
struct CloseWhenDropped(Arc<Inner>);

impl Drop for CloseWhenDropped {
    fn drop(&mut self) {
        self.0.request_close(0, b"");
    }
}

impl TcpTunnel {
    pub(super) fn new(inner: Arc<Inner>) -> TcpTunnel {
        TcpTunnel {
            _held: Arc::new(CloseWhenDropped(inner.clone())),
            inner,
        }
    }
}

impl std::fmt::Debug for TcpTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTunnel")
            .field("remote", &self.inner.remote)
            .field("closed", &self.inner.reason.get())
            .finish()
    }
}

pub(super) struct Inner {
    pub(super) remote: SocketAddr,
    /// The TLS connection, shared with h2's I/O only for keying-material export.
    pub(super) tls: Arc<Mutex<Io>>,
    pub(super) role: Role,
    /// Fires once the driver has ended.
    pub(super) closed: CancellationToken,
    pub(super) reason: OnceLock<CloseReason>,
    /// The peer's close reason text, when its close said one (agent side).
    pub(super) peer_reason: OnceLock<String>,
    /// A local close asked for (code, reason), picked up by the driver.
    pub(super) close_request: Mutex<Option<(u32, Bytes)>>,
    pub(super) close_notify: Notify,
    /// Asks the driver to open the connection window to the full size.
    pub(super) admit: Notify,
    /// Shared with the read side's [`FrameGate`].
    pub(super) admission: Arc<Admission>,
    /// On-demand pings for the driver, each answered once a PONG is back.
    pub(super) pings: mpsc::Sender<oneshot::Sender<()>>,
}

pub(super) enum Role {
    /// HTTP/2 client: opens the control stream and every relay stream.
    Opener {
        requests: h2::client::SendRequest<Bytes>,
    },
    /// HTTP/2 server: streams the opener opened, in order.
    Answerer {
        incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    },
}

pub(super) type Incoming = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
);

pub(super) type PingAsks = mpsc::Receiver<oneshot::Sender<()>>;

impl Inner {
    pub(super) fn new(
        remote: SocketAddr,
        tls: Arc<Mutex<Io>>,
        admission: Arc<Admission>,
        role: Role,
    ) -> (Arc<Inner>, PingAsks) {
        let (pings, asks) = mpsc::channel(PING_QUEUE);
        let inner = Arc::new(Inner {
            remote,
            tls,
            role,
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
            peer_reason: OnceLock::new(),
            close_request: Mutex::new(None),
            close_notify: Notify::new(),
            admit: Notify::new(),
            admission,
            pings,
        });
        (inner, asks)
    }

    pub(super) fn end(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.closed.cancel();
    }

    /// Asks the driver to close with `code` and `reason`; the first ask wins.
    pub(super) fn request_close(&self, code: u32, reason: &[u8]) {
        lock(&self.close_request).get_or_insert_with(|| (code, Bytes::copy_from_slice(reason)));
        self.close_notify.notify_one();
    }

    pub(super) async fn close_requested(&self) -> (u32, Bytes) {
        loop {
            let notified = self.close_notify.notified();
            if let Some(request) = lock(&self.close_request).clone() {
                return request;
            }
            notified.await;
        }
    }
}

/// A stream's request: `/` for control and relay streams, [`CLOSE_PATH`] for
/// the close stream.
pub(super) fn stream_request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://exitpool{path}"))
        .body(())
        .expect("static request")
}

impl TcpTunnel {
    async fn open(&self) -> io::Result<(TcpSend, TcpRecv)> {
        let Role::Opener { requests } = &self.inner.role else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only the opening end opens streams",
            ));
        };
        let mut requests = requests.clone().ready().await.map_err(h2_to_io)?;
        let (response, send) = requests
            .send_request(stream_request("/"), false)
            .map_err(h2_to_io)?;
        Ok((TcpSend::opened(send), TcpRecv::response(response)))
    }

    async fn accept(&self) -> io::Result<(TcpSend, TcpRecv)> {
        let Role::Answerer { incoming } = &self.inner.role else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only the answering end accepts streams",
            ));
        };
        let next = tokio::select! {
            next = async { incoming.lock().await.recv().await } => next,
            () = self.inner.closed.cancelled() => None,
        };
        let Some((request, respond)) = next else {
            // Worded as quinn words an application close, so agent logs read
            // the same on both transports.
            let message = match (self.close_reason(), self.inner.peer_reason.get()) {
                (Some(CloseReason::Peer(Some(code))), Some(why)) if !why.is_empty() => {
                    format!("closed by peer: {why} (code {code})")
                }
                (Some(reason), _) => reason.to_string(),
                (None, _) => "tunnel closed".to_owned(),
            };
            return Err(io::Error::new(io::ErrorKind::NotConnected, message));
        };
        Ok((
            TcpSend::unanswered(respond),
            TcpRecv::body(request.into_body()),
        ))
    }
}

impl TcpTunnel {
    /// Whether the peer answers an HTTP/2 PING: for a liveness check while a
    /// customer waits, since a frozen peer's kernel still acknowledges TCP.
    /// `false` once the tunnel has ended; the caller bounds the wait.
    pub async fn ping(&self) -> bool {
        let (answer, answered) = oneshot::channel();
        tokio::select! {
            asked = self.inner.pings.send(answer) => if asked.is_err() {
                return false;
            },
            () = self.inner.closed.cancelled() => return false,
        }
        tokio::select! {
            pong = answered => pong.is_ok(),
            () = self.inner.closed.cancelled() => false,
        }
    }
}

impl TunnelConnection for TcpTunnel {
    type Send = TcpSend;
    type Recv = TcpRecv;

    fn transport(&self) -> Transport {
        Transport::Tcp
    }

    async fn open_stream(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.open().await
    }

    async fn accept_stream(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.accept().await
    }

    /// The gateway's first stream.
    async fn open_control(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.accept().await
    }

    async fn accept_control(&self) -> io::Result<(TcpSend, TcpRecv)> {
        self.open().await
    }

    fn remote_address(&self) -> SocketAddr {
        self.inner.remote
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportError> {
        let tls = lock(&self.inner.tls);
        let result = match &*tls {
            Io::Client(stream) => {
                stream
                    .get_ref()
                    .1
                    .export_keying_material(&mut *output, label, Some(context))
            }
            Io::Server(stream) => {
                stream
                    .get_ref()
                    .1
                    .export_keying_material(&mut *output, label, Some(context))
            }
        };
        result.map(|_| ()).map_err(|e| ExportError(e.to_string()))
    }

    fn admitted(&self) {
        self.inner.admission.admitted.store(true, Ordering::Relaxed);
        self.inner.admit.notify_one();
    }

    fn packets_received(&self) -> u64 {
        self.inner.admission.received.load(Ordering::Relaxed)
    }

    /// An HTTP/2 PING, which only the peer process answers (a frozen one's
    /// kernel still acknowledges TCP segments).
    async fn probe(&self, within: Duration) -> bool {
        self.close_reason().is_none()
            && tokio::time::timeout(within, self.ping())
                .await
                .unwrap_or(false)
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.inner.request_close(code, reason);
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.inner.reason.get().cloned()
    }

    async fn closed(&self) {
        self.inner.closed.cancelled().await
    }
}
