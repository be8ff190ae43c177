//! The close stream: how the stream-opening end of a TLS/TCP tunnel, which as
//! HTTP/2 client has no GOAWAY of its own, tells the answering end its close
//! code and reason (see the module doc of [`super`]): trailers on a stream
//! opened first, read back by the answering end's driver.

use std::future::poll_fn;

/// Path of the gateway's close stream (see the module doc); relay and control
/// streams use `/`.
pub const CLOSE_PATH: &str = "/close";

/// Trailer of the close stream with the gateway's close code, in decimal.
pub const CLOSE_CODE_HEADER: &str = "exitpool-close-code";

/// Trailer of the close stream with the close reason, printable ASCII.
pub const CLOSE_REASON_HEADER: &str = "exitpool-close-reason";

/// Longest close reason sent or kept; ours are a few words.
pub const MAX_CLOSE_REASON: usize = 256;

/// The close stream's trailers: `code`, and `reason` cut to printable ASCII.
pub(super) fn close_trailers(code: u32, reason: &[u8]) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert(CLOSE_CODE_HEADER, http::HeaderValue::from(code));
    let printable: Vec<u8> = reason
        .iter()
        .take(MAX_CLOSE_REASON)
        .map(|&byte| {
            if (b' '..=b'~').contains(&byte) {
                byte
            } else {
                b'?'
            }
        })
        .collect();
    if let Ok(value) = http::HeaderValue::from_bytes(&printable) {
        trailers.insert(CLOSE_REASON_HEADER, value);
    }
    trailers
}

/// The code and reason in a close stream's trailers; `None` for anything else
/// (a garbled code is no close code).
pub(super) fn parse_close(trailers: &http::HeaderMap) -> Option<(u32, String)> {
    let code = trailers
        .get(CLOSE_CODE_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let reason = trailers
        .get(CLOSE_REASON_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(MAX_CLOSE_REASON)
        .collect();
    Some((code, reason))
}

/// Resolves with the gateway's close once the close stream's trailers arrive;
/// `None` when the stream ends without one (it is then no longer watched).
/// Cancel-safe: it only polls.
pub(super) async fn close_from(body: &mut Option<h2::RecvStream>) -> Option<(u32, String)> {
    let stream = body.as_mut()?;
    match poll_fn(|cx| stream.poll_trailers(cx)).await {
        Ok(Some(trailers)) => parse_close(&trailers),
        _ => None,
    }
}
