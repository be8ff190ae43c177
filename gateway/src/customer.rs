//! The customer port: accepts TCP connections, bounds them, tells SOCKS5 from
//! HTTP by the first byte, and hands each to its protocol handler.

use crate::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

/// First byte of a SOCKS5 greeting.
const SOCKS5_VERSION: u8 = 0x05;

/// Accepts customer connections until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly instead of
                // spinning; the listener itself stays up.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            shared.tasks.spawn(refuse_over_capacity(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let span = info_span!("customer", %peer, user = tracing::field::Empty);
        shared.tasks.clone().spawn(
            async move {
                handle(stream, peer, shared).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(shared.config.head_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == SOCKS5_VERSION => crate::socks::serve(stream, peer, shared).await,
        Ok(Ok(1)) => crate::http::serve(stream, peer, shared).await,
        Ok(Ok(_)) => debug!("closed before sending anything"),
        Ok(Err(error)) => debug!(%error, "read failed"),
        Err(_) => debug!("sent nothing within the head timeout"),
    }
}

/// Answers a connection over the global cap with a 503 (an HTTP client's most
/// likely shape) and closes it, rather than dropping it silently.
async fn refuse_over_capacity(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"gateway_busy","status":503,"message":"the gateway is at its connection limit"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nProxy-Status: exitpool; error=proxy_internal_error; details=\"connection limit\"\r\nX-Exitpool-Error: gateway_busy\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        stream.write_all(response.as_bytes()),
    )
    .await;
}
