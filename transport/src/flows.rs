//! A UDP flow's datagrams on a tunnel (docs/protocol.md, "UDP flows"): each
//! goes as one unreliable DATAGRAM frame, prefixed with the flow id, when the
//! tunnel carries frames that large; otherwise the flow's owner (the agent's
//! flows, the gateway's SOCKS5 associations) puts it on the flow's stream.

use crate::TunnelConnection;
use bytes::{BufMut, BytesMut};
use exitpool_protocol::udp::{flow_prefix, FLOW_ID_LEN};

/// Sends `payload` of `flow` as one DATAGRAM frame on `tunnel` if it fits:
/// `Ok(true)` when sent, `Ok(false)` when the tunnel carries no frame that
/// large (it goes on the stream), `Err` when the tunnel refused it.
pub fn send_frame(
    tunnel: &impl TunnelConnection,
    flow: u32,
    payload: &[u8],
) -> std::io::Result<bool> {
    match tunnel.max_datagram_size() {
        Some(max) if FLOW_ID_LEN + payload.len() <= max => {
            let mut frame = BytesMut::with_capacity(FLOW_ID_LEN + payload.len());
            frame.put_slice(&flow_prefix(flow));
            frame.put_slice(payload);
            tunnel.send_datagram(frame.freeze()).map(|()| true)
        }
        _ => Ok(false),
    }
}
