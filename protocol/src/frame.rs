//! Framing: a 4-byte big-endian body length, then a bincode 2 body.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before any buffer is allocated,
//! and decoding refuses trailing bytes, so a peer can neither pin memory nor smuggle
//! data behind a message.

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame body either side accepts. Control and open messages are tiny; the
/// limit only has to be far above them and far below anything that costs memory.
pub const MAX_FRAME_LEN: usize = 4096;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared or encoded length is above [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLong(usize),
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended before a whole frame arrived.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream ended cleanly where the next frame would start: the peer
    /// finished its side on purpose.
    #[error("stream ended")]
    Ended,
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` as one frame: length prefix plus body.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(message, &mut out, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let body_len = out.len() - HEADER_LEN;
    if body_len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(body_len));
    }
    out[..HEADER_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(out)
}

/// Checks a length prefix and returns the body length it announces.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    Ok(len)
}

/// Decodes one whole frame (prefix and body) from `bytes`, which must hold exactly
/// one frame.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated);
    };
    let len = body_len(*header)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated),
        std::cmp::Ordering::Greater => Err(FrameError::Malformed("trailing bytes".into())),
        std::cmp::Ordering::Equal => decode_body(body),
    }
}

/// Decodes a frame body whose length prefix was already checked.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (message, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Malformed("trailing bytes in frame body".into()));
    }
    Ok(message)
}

/// The version a `Hello` body declares, read from its first fields alone, so a
/// gateway can answer an agent of another protocol version with a clear refusal
/// even when the rest of its `Hello` no longer decodes. `None` when the body is
/// not a `Hello` at all.
pub fn hello_version(body: &[u8]) -> Option<u16> {
    /// `AgentMessage::Hello`'s variant index and first field: the part of the
    /// layout every version keeps.
    #[derive(serde::Deserialize)]
    enum HelloPrefix {
        Hello { version: u16 },
    }
    let (HelloPrefix::Hello { version }, _) =
        bincode::serde::decode_from_slice::<HelloPrefix, _>(body, config()).ok()?;
    Some(version)
}

/// Reads exactly one frame; reads nothing past it, so raw bytes that follow stay in
/// the stream for the relay. A stream that ends before the frame's first byte is
/// [`FrameError::Ended`]; one that ends inside it is [`FrameError::Truncated`].
#[cfg(feature = "tokio")]
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    decode_body(&read_frame_body(reader).await?)
}

/// Reads exactly one frame and returns its body undecoded, for a reader that
/// looks at it before decoding (the gateway checking a `Hello`'s version).
#[cfg(feature = "tokio")]
pub async fn read_frame_body<R>(reader: &mut R) -> Result<Vec<u8>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER_LEN];
    if reader.read(&mut header[..1]).await? == 0 {
        return Err(FrameError::Ended);
    }
    read_exact(reader, &mut header[1..]).await?;
    let mut body = vec![0u8; body_len(header)?];
    read_exact(reader, &mut body).await?;
    return Ok(body);

    async fn read_exact<R: tokio::io::AsyncRead + Unpin>(
        reader: &mut R,
        buf: &mut [u8],
    ) -> Result<(), FrameError> {
        match reader.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
            Err(e) => Err(FrameError::Io(e)),
        }
    }
}

/// Writes one frame.
#[cfg(feature = "tokio")]
pub async fn write_frame<T, W>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    writer.write_all(&encode(message)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn hello() -> AgentMessage {
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            identity: crate::DeviceKey::from_seed(&[3; 32]).prove(&[4; 32]),
            token: "tok".into(),
            software: "test".into(),
            capacity: Capacity { max_streams: 8 },
            accepting: true,
        }
    }

    #[test]
    fn round_trips_every_direction() {
        let bytes = encode(&hello()).unwrap();
        assert_eq!(decode::<AgentMessage>(&bytes).unwrap(), hello());
        let open = OpenRequest {
            host: TargetHost::Domain("example.com".into()),
            port: 443,
        };
        assert_eq!(
            decode::<OpenRequest>(&encode(&open).unwrap()).unwrap(),
            open
        );
        let reply = OpenReply::Failed {
            code: FailureCode::ConnectionRefused,
            detail: "refused".into(),
        };
        assert_eq!(
            decode::<OpenReply>(&encode(&reply).unwrap()).unwrap(),
            reply
        );
    }

    #[test]
    fn a_hello_of_any_version_shows_its_version() {
        let body = &encode(&hello()).unwrap()[HEADER_LEN..];
        assert_eq!(hello_version(body), Some(PROTOCOL_VERSION));
        /// Version 1's layout: a declared id where version 2 has its proof.
        #[derive(serde::Serialize)]
        enum HelloV1 {
            Hello {
                version: u16,
                agent_id: String,
                token: String,
            },
        }
        let old = encode(&HelloV1::Hello {
            version: 1,
            agent_id: "a1b2".into(),
            token: "tok".into(),
        })
        .unwrap();
        assert!(decode::<AgentMessage>(&old).is_err());
        assert_eq!(hello_version(&old[HEADER_LEN..]), Some(1));
        let load = encode(&AgentMessage::Draining).unwrap();
        assert_eq!(hello_version(&load[HEADER_LEN..]), None);
        assert_eq!(hello_version(&[]), None);
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decode::<AgentMessage>(&bytes),
            Err(FrameError::TooLong(len)) if len == u32::MAX as usize
        ));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let open = OpenRequest {
            host: TargetHost::Domain("x".repeat(MAX_FRAME_LEN + 1)),
            port: 1,
        };
        assert!(encode(&open).is_err());
    }

    #[test]
    fn truncated_and_trailing_input_is_refused() {
        let bytes = encode(&hello()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<AgentMessage>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<AgentMessage>(&long).is_err());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut bytes = 8u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        assert!(matches!(
            decode::<AgentMessage>(&bytes),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let text = format!("{:?}", hello());
        assert!(!text.contains("tok\""), "{text}");
        assert!(text.contains("Secret(***)"));
    }

    #[tokio::test]
    async fn async_read_stops_at_the_frame_boundary() {
        let mut bytes = encode(&hello()).unwrap();
        bytes.extend_from_slice(b"raw bytes");
        let mut reader = &bytes[..];
        let message: AgentMessage = read_frame(&mut reader).await.unwrap();
        assert_eq!(message, hello());
        assert_eq!(reader, b"raw bytes");
    }
}
