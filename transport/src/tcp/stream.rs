//! The two halves of one TLS/TCP tunnel stream ([`TcpSend`], [`TcpRecv`]):
//! an HTTP/2 stream under the tunnel interface's send and receive halves.

use crate::tunnel::{TunnelRecv, TunnelSend};
use bytes::{Bytes, BytesMut};
use h2::Reason;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_to_io;
use super::{FIRST_FRAME_UNRESERVED, MAX_SEND_BUFFER};

/// Sending half of a TCP tunnel stream.
#[derive(Debug)]
pub struct TcpSend {
    state: SendState,
    /// A stream this end opened, nothing sent on it yet
    /// ([`FIRST_FRAME_UNRESERVED`]).
    fresh: bool,
}

#[derive(Debug)]
enum SendState {
    /// Answering end: the stream's response headers wait for its first frame
    /// (the exit's `Opened`, usually), so both leave in one write and the
    /// opener wakes once, not twice.
    Unanswered(h2::server::SendResponse<Bytes>),
    Open(h2::SendStream<Bytes>),
    /// Answering failed, and said so.
    Failed,
}

impl TcpSend {
    /// A stream this end opened (its headers leave with its first frame),
    /// or one already answered (the HTTPS proxy's HTTP/2 `CONNECT` streams).
    pub fn opened(send: h2::SendStream<Bytes>) -> TcpSend {
        TcpSend {
            state: SendState::Open(send),
            fresh: true,
        }
    }

    /// A stream the peer opened, answered with the first write.
    pub(super) fn unanswered(respond: h2::server::SendResponse<Bytes>) -> TcpSend {
        TcpSend {
            state: SendState::Unanswered(respond),
            fresh: false,
        }
    }

    /// The stream, answering it first if that is still to do.
    fn stream(&mut self) -> io::Result<&mut h2::SendStream<Bytes>> {
        if matches!(self.state, SendState::Unanswered(_)) {
            let SendState::Unanswered(mut respond) =
                std::mem::replace(&mut self.state, SendState::Failed)
            else {
                unreachable!("checked above");
            };
            let stream = respond
                .send_response(http::Response::new(()), false)
                .map_err(h2_to_io)?;
            self.state = SendState::Open(stream);
        }
        match &mut self.state {
            SendState::Open(stream) => Ok(stream),
            _ => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")),
        }
    }

    /// Waits until the peer's windows let some bytes go: the capacity h2 has
    /// assigned, at most `wanted`.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
        if std::mem::take(&mut self.fresh) && wanted <= FIRST_FRAME_UNRESERVED {
            return Poll::Ready(Ok(wanted));
        }
        let stream = self.stream()?;
        loop {
            let available = stream.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(wanted)));
            }
            // h2 counts what is still buffered in the reservation: ask for a
            // send buffer's worth so chunks pipeline instead of taking turns.
            stream.reserve_capacity(wanted.max(MAX_SEND_BUFFER));
            match ready!(stream.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream closed",
                    )))
                }
            }
        }
    }
}

impl TunnelSend for TcpSend {
    async fn write_chunk(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            let len = chunk.len();
            let n = poll_fn(|cx| self.poll_capacity(cx, len)).await?;
            self.stream()?
                .send_data(chunk.split_to(n), false)
                .map_err(h2_to_io)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stream()?
            .send_data(Bytes::new(), true)
            .map_err(h2_to_io)
    }

    fn reset(&mut self, code: u32) {
        match &mut self.state {
            SendState::Unanswered(respond) => respond.send_reset(Reason::from(code)),
            SendState::Open(stream) => stream.send_reset(Reason::from(code)),
            SendState::Failed => {}
        }
    }

    async fn stopped(&mut self) {
        let _ = poll_fn(|cx| match &mut self.state {
            SendState::Unanswered(respond) => respond.poll_reset(cx),
            SendState::Open(stream) => stream.poll_reset(cx),
            SendState::Failed => Poll::Ready(Ok(Reason::CANCEL)),
        })
        .await;
    }
}

impl AsyncWrite for TcpSend {
    /// For the framed control messages: copies `buf` (a few bytes at a time).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_capacity(cx, buf.len()))?;
        this.stream()?
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    /// h2's connection task writes out what is queued by itself.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(TunnelSend::finish(self.get_mut()))
    }
}

/// Receiving half of a TCP tunnel stream.
#[derive(Debug)]
pub struct TcpRecv {
    state: RecvState,
    /// The part of the last DATA frame that did not fit the caller's buffer.
    pending: Bytes,
}

#[derive(Debug)]
enum RecvState {
    /// Gateway side: the agent's answer (headers) is on its way.
    Response(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    /// Stopped by us; nothing more will be read.
    Stopped,
}

impl TcpRecv {
    /// A stream this end opened: its bytes come once the peer answers.
    pub(super) fn response(response: h2::client::ResponseFuture) -> TcpRecv {
        TcpRecv {
            state: RecvState::Response(response),
            pending: Bytes::new(),
        }
    }

    /// A stream the peer opened.
    pub fn body(body: h2::RecvStream) -> TcpRecv {
        TcpRecv {
            state: RecvState::Body(body),
            pending: Bytes::new(),
        }
    }

    /// Waits until `pending` holds bytes; `false` once the stream has ended.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(true));
            }
            match &mut self.state {
                RecvState::Response(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_to_io)?;
                    if response.status() != http::StatusCode::OK {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("peer answered the stream with {}", response.status()),
                        )));
                    }
                    self.state = RecvState::Body(response.into_body());
                }
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        // Released as soon as it is ours: the caller's buffer
                        // (or `pending`, one frame at most) holds it, so the
                        // window tracks what the relay has taken.
                        let _ = body.flow_control().release_capacity(data.len());
                        self.pending = data;
                    }
                    Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                    None => return Poll::Ready(Ok(false)),
                },
                RecvState::Stopped => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream stopped",
                    )))
                }
            }
        }
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<Option<usize>>> {
        if !ready!(self.poll_pending(cx))? {
            return Poll::Ready(Ok(None));
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(Some(n)))
    }
}

impl TunnelRecv for TcpRecv {
    /// Cancel-safe: a frame taken from h2 but not yet copied stays in `pending`.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        poll_fn(|cx| self.poll_read_into(cx, buf)).await
    }

    /// The next DATA frame as h2 received it: no copy. Cancel-safe like `read`.
    async fn read_chunk(&mut self, _buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if !poll_fn(|cx| self.poll_pending(cx)).await? {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.pending)))
    }

    /// Dropping the body gives its buffered bytes back to the connection
    /// window; the reset the caller sends on the other half tells the peer.
    fn stop(&mut self, _code: u32) {
        self.pending = Bytes::new();
        self.state = RecvState::Stopped;
    }
}

impl AsyncRead for TcpRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = ready!(this.poll_read_into(cx, buf.initialize_unfilled()))?.unwrap_or(0);
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}
