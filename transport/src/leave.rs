//! Ending a tunnel so the other side always hears of it.
//!
//! QUIC retransmits stream data and a stream's finish until they are acknowledged,
//! but sends a connection close only once (and again only in answer to packets
//! that arrive while closing). A close lost on its way, from an agent whose socket
//! is gone or a gateway that has restarted, would leave the peer waiting for the
//! idle timeout. So the side that leaves first finishes its control stream, lets
//! the peer acknowledge that (or close the tunnel itself on reading it), and only
//! then closes. Over TCP the finish is as reliable as the bytes before it, and
//! the same sequence lets the peer read it before the connection goes.

use crate::tunnel::{TunnelConnection, TunnelSend};
use std::time::Duration;

/// How long a leaving side waits for its peer to take the finished control
/// stream: several retransmissions even on a slow link, and still a bound, so
/// leaving never hangs on a peer that is gone.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Finishes `control`, waits (at most [`LEAVE_TIMEOUT`]) until the peer has
/// acknowledged it or closed the connection, then closes with `code`.
pub async fn leave<C: TunnelConnection>(
    connection: &C,
    control: &mut C::Send,
    code: u32,
    reason: &[u8],
) {
    if control.finish().is_ok() {
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            tokio::select! {
                () = control.stopped() => {}
                () = connection.closed() => {}
            }
        })
        .await;
    }
    connection.close(code, reason);
}
