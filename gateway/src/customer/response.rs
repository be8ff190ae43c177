//! What every HTTP answer on the customer port is built from: the error response
//! for a [`ProxyError`] (status, `Proxy-Status`, product code, JSON body), the
//! headers naming the exit that served a request, and the customer's Basic
//! credentials. The handlers use these; this module uses none of them.

use super::session::{Refusal, SessionOutcome};
use crate::directory::Agent;
use crate::error::ProxyError;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, RETRY_AFTER,
};
use hyper::{Request, Response, StatusCode};

/// Response body type for every answer on the customer port.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Header naming the exit that served a request.
pub const EXIT_HEADER: &str = "x-exitpool-exit";
/// Header naming the serving exit's country.
pub const COUNTRY_HEADER: &str = "x-exitpool-country";
/// Header saying whether a sticky session is `new`, `kept` or `moved`.
pub const SESSION_HEADER: &str = "x-exitpool-session";
/// Header naming the exit a moved session was pinned to before.
pub const MOVED_FROM_HEADER: &str = "x-exitpool-moved-from";
/// Header saying how many exits a request tried (more than one when an exit
/// failed and another took over before anything reached the customer).
pub const ATTEMPTS_HEADER: &str = "x-exitpool-attempts";
/// Header carrying the stable product error code.
pub const ERROR_HEADER: &str = "x-exitpool-error";

/// Decodes `Proxy-Authorization: Basic` into user name and password.
pub(crate) fn basic_credentials<B>(request: &Request<B>) -> Option<(String, String)> {
    basic_in(request, PROXY_AUTHORIZATION)
}

/// Decodes Basic credentials from `header` (`Authorization` for requests to
/// the gateway itself, such as `GET /inventory`).
pub(crate) fn basic_in<B>(request: &Request<B>, header: HeaderName) -> Option<(String, String)> {
    decode_basic(request.headers().get(header)?.as_bytes())
}

/// Decodes a `Basic` credentials header value into user and password.
pub(crate) fn decode_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Tells the customer which exit served them, and what became of their session.
pub(crate) fn exit_headers(
    agent: &Agent,
    session: Option<&SessionOutcome>,
    attempts: u32,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    if let Some(session) = session {
        headers.insert(SESSION_HEADER, HeaderValue::from_static(session.as_str()));
        if let SessionOutcome::Moved { from } = session {
            if let Ok(value) = HeaderValue::from_str(from) {
                headers.insert(MOVED_FROM_HEADER, value);
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&agent.exit_id) {
        headers.insert(EXIT_HEADER, value);
    }
    let country = agent.location.country.as_deref().unwrap_or("??");
    if let Ok(value) = HeaderValue::from_str(country) {
        headers.insert(COUNTRY_HEADER, value);
    }
    headers
}

/// The head of a `200` to `CONNECT` carrying `headers`, as raw HTTP/1.1
/// bytes, for tunnels answered before a connection reaches hyper.
pub(crate) fn raw_connected(headers: &HeaderMap) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 Connection established\r\n".to_vec();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// An empty body.
pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `414` for a request line over the limit, shaped like [`error`] (no
/// [`ProxyError`] variant carries 414).
pub(crate) fn uri_too_long(request_line: usize, limit: usize) -> Response<Body> {
    let message = format!("the request line is {request_line} bytes; the limit is {limit}");
    let mut response = error(&ProxyError::BadRequest(message.clone()));
    *response.status_mut() = StatusCode::URI_TOO_LONG;
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static("uri_too_long"));
    let body = serde_json::json!({"error": "uri_too_long", "status": 414, "message": message});
    *response.body_mut() = full(body.to_string());
    response
}

/// The same answer as [`refused`], as raw HTTP/1.1 bytes, for refusals written
/// before a connection reaches hyper.
pub(crate) fn raw_error(refusal: &Refusal) -> Vec<u8> {
    let response = refused(refusal);
    let status = response.status();
    let body = refusal.error.json_body();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    for (name, value) in response.headers() {
        head.push_str(&format!(
            "{name}: {}\r\n",
            value.to_str().unwrap_or_default()
        ));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

/// The answer to a refused request: [`error`], plus how many exits it tried
/// when it got as far as looking for one.
pub(crate) fn refused(refusal: &Refusal) -> Response<Body> {
    let mut response = error(&refusal.error);
    if let Some(attempts) = refusal.attempts {
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    }
    response
}

/// The HTTP answer for a failure: status, `Proxy-Status`, product code, JSON body,
/// and `Connection: close` (nothing more is read from a refused connection).
pub(crate) fn error(failure: &ProxyError) -> Response<Body> {
    let presentation = failure.presentation();
    let body = failure.json_body();
    let mut response = Response::new(full(body));
    *response.status_mut() =
        StatusCode::from_u16(presentation.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(presentation.code));
    if let Some(value) = failure
        .proxy_status_header()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert("proxy-status", value);
    }
    if let Some(seconds) = failure.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if *failure == ProxyError::AuthRequired {
        headers.insert(
            PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"exitpool\""),
        );
    }
    response
}

/// The log line of a refused request.
pub(crate) fn log_refusal(target: &str, refusal: &Refusal, started: std::time::Instant) {
    let error = &refusal.error;
    tracing::info!(
        %target,
        code = error.presentation().code,
        status = error.presentation().status,
        attempts = refusal.attempts,
        duration_ms = started.elapsed().as_millis() as u64,
        "refused: {error}"
    );
}
