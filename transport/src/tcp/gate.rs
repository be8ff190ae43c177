//! h2's I/O over the TLS stream ([`SharedIo`]) and the [`FrameGate`] a peer's
//! HTTP/2 frames pass before it is admitted.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::lock;
use super::{Io, TcpSettings};

/// h2's I/O: the TLS stream behind a mutex that only keying-material export
/// contends for, so export works while h2 owns the connection; until the peer
/// is admitted, its bytes pass a [`FrameGate`] first.
pub(super) struct SharedIo {
    tls: Arc<Mutex<Io>>,
    gate: Option<FrameGate>,
    /// Where reads that brought bytes are counted.
    admission: Arc<Admission>,
}

impl AsyncRead for SharedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut *lock(&self.tls)).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.admission.received.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(gate) = &mut self.gate {
            if gate.ended() {
                self.gate = None;
            } else if let Err(abuse) = gate.inspect(&buf.filled()[before..]) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, abuse)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.tls)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.tls)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.tls).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.tls)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.tls)).poll_shutdown(cx)
    }
}

/// What a gated end and its driver share: whether the peer has been admitted,
/// and how many PINGs this end has sent (each may be acknowledged once); and
/// how many reads brought bytes from the peer (the tunnel's
/// `packets_received`).
#[derive(Debug, Default)]
pub(super) struct Admission {
    pub(super) admitted: AtomicBool,
    pub(super) pings_sent: AtomicU32,
    pub(super) received: AtomicU64,
}

/// Reads the HTTP/2 frame headers a peer sends before it is admitted, as the
/// bytes pass on to h2, and refuses what an honest peer never sends there:
/// more than its frame budget (a WINDOW_UPDATE or stream-open flood costs CPU
/// per frame) or a PING acknowledgement this end did not ask for (h2 would log
/// each one). A refusal is a read error, so h2 never sees the frame and the
/// connection ends. Once the peer is admitted the gate steps aside.
#[derive(Debug)]
pub(super) struct FrameGate {
    admission: Arc<Admission>,
    /// Bytes of the client connection preface still to pass (answering end).
    preface_left: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    payload_left: usize,
    frames_left: u32,
    acks_seen: u32,
}

/// An HTTP/2 frame header: length (3), type, flags, stream id (4).
pub(super) const FRAME_HEADER: usize = 9;
/// RFC 9113 §3.4: the client's 24-byte preface before its first frame.
pub(super) const CLIENT_PREFACE: usize = 24;
pub(super) const PING: u8 = 0x6;
pub(super) const ACK: u8 = 0x1;

impl FrameGate {
    fn new(admission: Arc<Admission>, frames: u32, answering: bool) -> FrameGate {
        FrameGate {
            admission,
            preface_left: if answering { CLIENT_PREFACE } else { 0 },
            header: [0; FRAME_HEADER],
            header_len: 0,
            payload_left: 0,
            frames_left: frames,
            acks_seen: 0,
        }
    }

    fn ended(&self) -> bool {
        self.admission.admitted.load(Ordering::Relaxed)
    }

    /// Follows the frame boundaries through `bytes`.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while !bytes.is_empty() {
            if self.preface_left > 0 || self.payload_left > 0 {
                let skipped = if self.preface_left > 0 {
                    let n = self.preface_left.min(bytes.len());
                    self.preface_left -= n;
                    n
                } else {
                    let n = self.payload_left.min(bytes.len());
                    self.payload_left -= n;
                    n
                };
                bytes = &bytes[skipped..];
                continue;
            }
            let n = (FRAME_HEADER - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER {
                self.header_len = 0;
                self.frame()?;
            }
        }
        Ok(())
    }

    /// One whole frame header.
    fn frame(&mut self) -> Result<(), &'static str> {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.frames_left = self
            .frames_left
            .checked_sub(1)
            .ok_or("too many HTTP/2 frames before the peer proved itself")?;
        if kind == PING && flags & ACK != 0 {
            self.acks_seen += 1;
            if self.acks_seen > self.admission.pings_sent.load(Ordering::Relaxed) {
                return Err("a PING acknowledgement that was never asked for");
            }
        }
        Ok(())
    }
}

/// h2's I/O for `tls`, behind a [`FrameGate`] when `settings` ask for one.
pub(super) fn gated(
    tls: &Arc<Mutex<Io>>,
    settings: &TcpSettings,
    answering: bool,
) -> (SharedIo, Arc<Admission>) {
    let admission = Arc::new(Admission::default());
    let gate = settings
        .frames_before_admitted
        .map(|frames| FrameGate::new(admission.clone(), frames, answering));
    let io = SharedIo {
        tls: tls.clone(),
        gate,
        admission: admission.clone(),
    };
    (io, admission)
}
