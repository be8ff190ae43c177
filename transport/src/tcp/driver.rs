//! The task that drives one TLS/TCP tunnel's HTTP/2 connection, for either
//! end ([`opening_end`], [`answering_end`]): the handshakes, keep-alive pings,
//! admission, and the close.

use crate::tunnel::CloseReason;
use bytes::Bytes;
use h2::Reason;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

use super::close::{close_from, close_trailers, CLOSE_PATH};
use super::connection::{stream_request, Inner, PingAsks, Role, TcpTunnel};
use super::gate::{gated, Admission};
use super::h2_to_io;
use super::{Io, TcpSettings, CLOSE_LINGER, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER};

pub(super) fn remote_of(io: &Io) -> io::Result<SocketAddr> {
    io.get_ref().0.peer_addr()
}

/// The end that opens the streams (the gateway of an agent tunnel, the dialling
/// gateway of a peer link), once the TLS handshake is done: the HTTP/2
/// handshake as client, then a driver task.
pub async fn opening_end(io: impl Into<Io>, settings: TcpSettings) -> io::Result<TcpTunnel> {
    let io = io.into();
    let remote = remote_of(&io)?;
    let tls = Arc::new(Mutex::new(io));
    let (io, admission) = gated(&tls, &settings, false);
    let (requests, mut connection) = h2::client::Builder::new()
        .initial_window_size(crate::udp::STREAM_WINDOW)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(settings.max_incoming_streams)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(h2_to_io)?;
    let ping = connection.ping_pong();
    // The close stream, first; its response is never needed.
    let mut close_stream = {
        let mut ready = requests.clone().ready().await.map_err(h2_to_io)?;
        let (_response, send) = ready
            .send_request(stream_request(CLOSE_PATH), false)
            .map_err(h2_to_io)?;
        send
    };
    let (inner, asks) = Inner::new(remote, tls, admission, Role::Opener { requests });
    let driver = inner.clone();
    tokio::spawn(async move {
        let keep_alive = keep_alive(ping, settings, asks, driver.admission.clone());
        tokio::pin!(keep_alive);
        let reason = loop {
            tokio::select! {
                result = &mut connection => break connection_end(result),
                reason = &mut keep_alive => break reason,
                () = driver.admit.notified() => {
                    connection.set_target_window_size(crate::udp::CONNECTION_WINDOW);
                }
                (code, reason) = driver.close_requested() => {
                    // Best effort: a peer already gone has no use for it.
                    let _ = close_stream.send_trailers(close_trailers(code, &reason));
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut connection).await;
                    break CloseReason::Local(code);
                }
            }
        };
        driver.end(reason);
    });
    Ok(TcpTunnel::new(inner))
}

/// The end that answers the streams (the agent of an agent tunnel, the dialled
/// gateway of a peer link), once the TLS handshake is done: the HTTP/2
/// handshake as server, then a driver task.
pub async fn answering_end(io: impl Into<Io>, settings: TcpSettings) -> io::Result<TcpTunnel> {
    let io = io.into();
    let remote = remote_of(&io)?;
    let tls = Arc::new(Mutex::new(io));
    let (io, admission) = gated(&tls, &settings, true);
    let mut connection = h2::server::Builder::new()
        .initial_window_size(crate::udp::STREAM_WINDOW)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        // One more for the gateway's close stream.
        .max_concurrent_streams(settings.max_incoming_streams.saturating_add(1))
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_to_io)?;
    let ping = connection.ping_pong();
    // h2 admits no more than `max_incoming_streams` at once, so this bound is
    // never what refuses one.
    let (queue, incoming) = mpsc::channel(settings.max_incoming_streams.max(1) as usize);
    let (inner, asks) = Inner::new(
        remote,
        tls,
        admission,
        Role::Answerer {
            incoming: tokio::sync::Mutex::new(incoming),
        },
    );
    let driver = inner.clone();
    tokio::spawn(async move {
        let keep_alive = keep_alive(ping, settings, asks, driver.admission.clone());
        tokio::pin!(keep_alive);
        // The gateway's close stream, once it has arrived: its trailers carry
        // the close code. (Its answer half is held so h2 keeps it open.)
        let mut close_stream: Option<h2::RecvStream> = None;
        let mut _close_respond = None;
        // Streams the peer may still open before it is admitted.
        let mut unadmitted_room = settings.streams_before_admitted;
        let reason = loop {
            tokio::select! {
                accepted = connection.accept() => match accepted {
                    Some(Ok((request, respond))) if request.uri().path() == CLOSE_PATH => {
                        if close_stream.is_none() {
                            close_stream = Some(request.into_body());
                            _close_respond = Some(respond);
                        }
                    }
                    Some(Ok((_, mut respond))) if unadmitted_room == Some(0) => {
                        respond.send_reset(Reason::REFUSED_STREAM);
                    }
                    Some(Ok(stream)) => {
                        if let Some(room) = &mut unadmitted_room {
                            *room -= 1;
                        }
                        if let Err(mpsc::error::TrySendError::Full((_, mut respond))) = queue.try_send(stream) {
                            respond.send_reset(Reason::REFUSED_STREAM);
                        }
                    }
                    Some(Err(error)) => break connection_end(Err(error)),
                    None => break CloseReason::Peer(None),
                },
                closing = close_from(&mut close_stream), if close_stream.is_some() => {
                    close_stream = None;
                    let Some((code, reason)) = closing else { continue };
                    // The gateway waits for this side to end the connection;
                    // what it sent before (a `Reject`) stays readable.
                    let _ = driver.peer_reason.set(reason);
                    connection.abrupt_shutdown(Reason::NO_ERROR);
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        while let Some(Ok(_)) = connection.accept().await {}
                    })
                    .await;
                    break CloseReason::Peer(Some(code));
                }
                reason = &mut keep_alive => break reason,
                () = driver.admit.notified() => {
                    connection.set_target_window_size(crate::udp::CONNECTION_WINDOW);
                    unadmitted_room = None;
                }
                (code, _) = driver.close_requested() => {
                    connection.abrupt_shutdown(Reason::from(code));
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        while let Some(Ok(_)) = connection.accept().await {}
                    })
                    .await;
                    break CloseReason::Local(code);
                }
            }
        };
        driver.end(reason);
    });
    Ok(TcpTunnel::new(inner))
}

/// Pings every `keep_alive`, and at once when asked through `asks`; resolves
/// when a ping goes unanswered for the idle timeout (or pings can no longer be
/// sent). h2 allows one PING in flight, so asks that come while one is out
/// share its PONG.
pub(super) async fn keep_alive(
    ping: Option<h2::PingPong>,
    settings: TcpSettings,
    mut asks: PingAsks,
    admission: Arc<Admission>,
) -> CloseReason {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    let mut waiting = Vec::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.keep_alive) => {}
            Some(ask) = asks.recv() => waiting.push(ask),
        }
        // Counted before it leaves: its acknowledgement may be read first.
        admission.pings_sent.fetch_add(1, Ordering::Relaxed);
        let answered = tokio::time::timeout(settings.idle_timeout, async {
            let pong = ping.ping(h2::Ping::opaque());
            tokio::pin!(pong);
            loop {
                tokio::select! {
                    result = &mut pong => return result,
                    Some(ask) = asks.recv() => waiting.push(ask),
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(_pong)) => {
                for ask in waiting.drain(..) {
                    let _ = ask.send(());
                }
            }
            Ok(Err(error)) => return connection_end(Err(error)),
            Err(_) => return CloseReason::TimedOut,
        }
    }
}

pub(super) fn connection_end(result: Result<(), h2::Error>) -> CloseReason {
    match result {
        Ok(()) => CloseReason::Peer(None),
        Err(error) if error.is_go_away() && error.is_remote() => {
            CloseReason::Peer(error.reason().map(u32::from))
        }
        Err(error)
            if error
                .get_io()
                .is_some_and(|cause| cause.kind() == io::ErrorKind::ConnectionReset) =>
        {
            CloseReason::Reset(error.to_string())
        }
        Err(error) => CloseReason::Lost(error.to_string()),
    }
}
