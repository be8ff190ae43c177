//! The tunnel interface ([`crate::tunnel`]) for QUIC: one bidirectional quinn
//! stream per customer connection. Thin forwarding; quinn's errors become
//! `io::Error`s through quinn's own conversions, so their text is unchanged.

use crate::tunnel::{TunnelRecv, TunnelSend};
use bytes::Bytes;
use std::io;

impl TunnelSend for quinn::SendStream {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        quinn::SendStream::write_chunk(self, chunk)
            .await
            .map_err(io::Error::from)
    }

    fn finish(&mut self) -> io::Result<()> {
        quinn::SendStream::finish(self).map_err(io::Error::from)
    }

    fn reset(&mut self, code: u32) {
        let _ = quinn::SendStream::reset(self, code.into());
    }
}

impl TunnelRecv for quinn::RecvStream {
    /// quinn's `read` is cancel-safe, and gathers everything already received
    /// (many ~1.2 KB packets) into `buf` in one call.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        quinn::RecvStream::read(self, buf)
            .await
            .map_err(io::Error::from)
    }

    fn stop(&mut self, code: u32) {
        let _ = quinn::RecvStream::stop(self, code.into());
    }
}

/// This connection's TLS keying material for the agent's identity proof
/// ([`exitpool_protocol::identity`]): the same on both ends of one connection,
/// different on every other.
pub fn identity_material(
    connection: &quinn::Connection,
) -> io::Result<[u8; exitpool_protocol::identity::EXPORTER_LEN]> {
    use exitpool_protocol::identity::{EXPORTER_CONTEXT, EXPORTER_LABEL, EXPORTER_LEN};
    let mut material = [0u8; EXPORTER_LEN];
    connection
        .export_keying_material(&mut material, EXPORTER_LABEL, EXPORTER_CONTEXT)
        .map_err(|_| io::Error::other("TLS keying material export failed"))?;
    Ok(material)
}
