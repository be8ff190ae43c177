//! SOCKS5 on the customer port (RFC 1928, with RFC 1929 username/password), chosen
//! by [`super::listener`] when the first byte is `0x05`.
//!
//! Per connection, top to bottom: greeting (method `0x02` must be offered, or
//! `0x00` from an allow-listed source) -> username/password (the same
//! credentials and targeting parameters as HTTP) ->
//! request (`CONNECT` to an IPv4, domain or IPv6 address; domains are resolved by
//! the exit, as `socks5h://` expects) -> open through an exit -> reply with the
//! address the exit dialled -> relay. Greeting, authentication and request must all
//! arrive within `head_timeout`; every field is read with its exact length (all
//! bounded by `u8` lengths), so bytes a client pipelines behind its request reach
//! the target untouched. `UDP ASSOCIATE` is authenticated the same way and then
//! served by [`super::socks_udp`].
//!
//! What the client hears when something fails (each answer is followed by a close):
//!
//! | condition | answer |
//! |---|---|
//! | greeting offers neither method `0x02` (username/password) nor, from a source in an account's `allow_ips`, `0x00` (no authentication) | method `0xFF` |
//! | greeting version is not 5, client silent or gone, handshake past `head_timeout` | nothing, close |
//! | wrong user name or password, or sub-negotiation version not `0x01`, or credentials not UTF-8 | auth status `0x01` |
//! | bad targeting parameter (`alice-contry-us`), or a country the account may not use | auth status `0x02` |
//! | too many failed authentications from this address, or password checks queued past their deadline | auth status `0x03` |
//! | request version not 5, or reserved byte not 0 | reply `0x01` general failure |
//! | `BIND` (`0x02`) or any other command | reply `0x07` command not supported |
//! | unknown address type, invalid domain name, port 0 | reply `0x08` address type not supported |
//! | anything [`session::open`] refuses | reply from [`ProxyError::presentation`]: no exit for the filters `0x03`, exit policy refusal `0x02`, connection refused `0x05`, DNS failure `0x04`, timeout `0x06`, ... |

use super::session::Arrival;
use super::session::{self, Grant, SessionOutcome};
use super::socks_wire::{domain, reply, send, ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, VERSION};
use super::transfer::{self, AccessContext};
use crate::abuse::AddressSlot;
use crate::error::{socks_reply, ProxyError};
use crate::shared::Shared;
use bytes::Bytes;
use exitpool_protocol::TargetHost;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, Instrument};

/// Version of the username/password sub-negotiation (RFC 1929).
const AUTH_VERSION: u8 = 0x01;
/// Method: username/password.
const METHOD_USER_PASSWORD: u8 = 0x02;
/// Method: no authentication, served only to sources in an account's
/// `allow_ips`.
const METHOD_NO_AUTH: u8 = 0x00;
/// Method reply: none of the offered methods is acceptable.
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// Auth status: success.
const AUTH_OK: u8 = 0x00;
/// Auth status: wrong credentials.
const AUTH_BAD_CREDENTIALS: u8 = 0x01;
/// Auth status: credentials accepted but their targeting parameters refused
/// (unknown key or bad value, or a country outside the account's list).
const AUTH_BAD_TARGETING: u8 = 0x02;
/// RFC 1929 status: too many failed authentications from this address.
const AUTH_RATE_LIMITED: u8 = 0x03;
/// Command: `CONNECT`, the only one served.
const CMD_CONNECT: u8 = 0x01;
/// Command: UDP ASSOCIATE (RFC 1928 §7), served by [`super::socks_udp`].
const CMD_UDP_ASSOCIATE: u8 = 0x03;
/// Reply: succeeded.
const REPLY_SUCCEEDED: u8 = 0x00;

/// Why a SOCKS5 connection ended before relaying; [`SocksError::answer`] says what
/// the client hears.
#[derive(Debug, thiserror::Error)]
enum SocksError {
    /// The client went away, sent a truncated message, or a write failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The greeting is not SOCKS version 5.
    #[error("greeting version {0:#04x} is not SOCKS5")]
    GreetingVersion(u8),
    /// The greeting does not offer username/password.
    #[error("no acceptable authentication method (offered {0:02x?})")]
    NoAcceptableMethod(Vec<u8>),
    /// The sub-negotiation is not RFC 1929 version 1.
    #[error("username/password version {0:#04x}, expected 0x01")]
    AuthVersion(u8),
    /// The user name or password is not UTF-8.
    #[error("credentials are not UTF-8")]
    CredentialsNotUtf8,
    /// [`session::authenticate`] refused the credentials.
    #[error("{0}")]
    Auth(ProxyError),
    /// The request is not SOCKS version 5.
    #[error("request version {0:#04x} is not SOCKS5")]
    RequestVersion(u8),
    /// The request's reserved byte is not zero.
    #[error("request reserved byte is {0:#04x}, expected 0")]
    Reserved(u8),
    /// A command other than `CONNECT`.
    #[error("command {0:#04x} is not supported (only CONNECT)")]
    Command(u8),
    /// An address type other than IPv4, domain or IPv6.
    #[error("address type {0:#04x} is not supported")]
    AddressType(u8),
    /// The target is invalid, or the exit could not reach it.
    #[error("{0}")]
    Refused(ProxyError),
}

/// What a client hears before the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Nothing: the peer does not speak SOCKS5 or is gone.
    Nothing,
    /// A method selection naming no method.
    NoMethod,
    /// A username/password status.
    AuthStatus(u8),
    /// A request reply code.
    Reply(u8),
}

impl SocksError {
    /// The one mapping from failure to SOCKS answer; the table at the top follows it.
    fn answer(&self) -> Answer {
        match self {
            SocksError::Io(_) | SocksError::GreetingVersion(_) => Answer::Nothing,
            SocksError::NoAcceptableMethod(_) => Answer::NoMethod,
            SocksError::AuthVersion(_) | SocksError::CredentialsNotUtf8 => {
                Answer::AuthStatus(AUTH_BAD_CREDENTIALS)
            }
            SocksError::Auth(ProxyError::AuthRequired) => Answer::AuthStatus(AUTH_BAD_CREDENTIALS),
            SocksError::Auth(ProxyError::AuthRateLimited { .. } | ProxyError::AuthBusy) => {
                Answer::AuthStatus(AUTH_RATE_LIMITED)
            }
            // Right password, but what the credentials ask for is refused.
            SocksError::Auth(_) => Answer::AuthStatus(AUTH_BAD_TARGETING),
            SocksError::RequestVersion(_) | SocksError::Reserved(_) => {
                Answer::Reply(socks_reply::GENERAL_FAILURE)
            }
            SocksError::Command(_) => Answer::Reply(socks_reply::COMMAND_NOT_SUPPORTED),
            SocksError::AddressType(_) => Answer::Reply(socks_reply::ADDRESS_TYPE_NOT_SUPPORTED),
            SocksError::Refused(error) => Answer::Reply(error.presentation().socks_reply),
        }
    }
}

/// The methods a client's greeting offers.
struct Greeting {
    methods: Vec<u8>,
}

/// Username and password from the sub-negotiation. No `Debug`: it holds a secret.
struct Credentials {
    user: String,
    password: String,
}

/// A `CONNECT` target, or a `UDP ASSOCIATE`'s client address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: TargetHost,
    port: u16,
    /// `UDP ASSOCIATE` rather than `CONNECT`.
    associate: bool,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Serves one SOCKS5 customer connection, from greeting to the end of the relay.
pub(crate) async fn serve(
    mut stream: TcpStream,
    arrival: Arrival,
    pending: Arc<AddressSlot>,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let head_timeout = shared.config.head_timeout;
    let negotiated = tokio::select! {
        negotiated = tokio::time::timeout_at(deadline, negotiate(&mut stream, &arrival, &pending, &shared)) => negotiated,
        () = shared.lifecycle.shutdown.cancelled() => return,
    };
    let (grant, target) = match negotiated {
        Ok(Ok(negotiated)) => negotiated,
        Ok(Err(error)) => return refuse(stream, error, None, started, &shared).await,
        Err(_) => {
            debug!(
                ?head_timeout,
                "SOCKS5 handshake not finished in time; closing"
            );
            return;
        }
    };
    if target.associate {
        let declared = (target.host, target.port);
        return super::socks_udp::serve(stream, grant, arrival, declared, started, shared).await;
    }
    let authorized = match session::open(&grant, target.host.clone(), target.port, &shared).await {
        Ok(authorized) => authorized,
        Err(error) => {
            // SOCKS5 replies have no room for the attempts: the log has them.
            debug!(attempts = error.attempts, "SOCKS5 request refused");
            let error = SocksError::Refused(error.error);
            return refuse(stream, error, Some(&target), started, &shared).await;
        }
    };
    if let Some(SessionOutcome::Moved { from }) = &authorized.session {
        // SOCKS5 has no place to say so, unlike HTTP's headers: the log does.
        info!(%from, to = %authorized.agent.exit_id, "session moved to a new exit");
    }
    let success = reply(REPLY_SUCCEEDED, authorized.stream.peer);
    if let Err(error) = send(&mut stream, &success, head_timeout).await {
        debug!(%error, "SOCKS5 reply could not be sent");
        return;
    }
    let span = tracing::info_span!("relay", exit = %authorized.agent.exit_id, %target);
    let context = AccessContext {
        user: grant.user,
        peer: arrival.peer,
        target: target.to_string(),
        started,
        protocol: "socks5",
    };
    transfer::relay_tcp(stream, Bytes::new(), authorized, context, &shared)
        .instrument(span)
        .await;
}

/// Greeting, authentication and request; answers each step that succeeds.
///
/// Username/password is chosen whenever the client offers it (credentials
/// win); "no authentication" only for a source in an account's `allow_ips`.
async fn negotiate<S>(
    stream: &mut S,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: &Shared,
) -> Result<(Grant, Target), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = read_greeting(stream).await?;
    let grant = if greeting.methods.contains(&METHOD_USER_PASSWORD) {
        stream.write_all(&[VERSION, METHOD_USER_PASSWORD]).await?;
        let credentials = read_credentials(stream).await?;
        let credentials = (credentials.user.as_str(), credentials.password.as_str());
        let grant = session::authenticate_either(Some(credentials), arrival, pending, shared)
            .await
            .map_err(SocksError::Auth)?;
        stream.write_all(&[AUTH_VERSION, AUTH_OK]).await?;
        grant
    } else if greeting.methods.contains(&METHOD_NO_AUTH) {
        let grant = session::authenticate_either(None, arrival, pending, shared)
            .await
            .map_err(|_| SocksError::NoAcceptableMethod(greeting.methods.clone()))?;
        stream.write_all(&[VERSION, METHOD_NO_AUTH]).await?;
        grant
    } else {
        return Err(SocksError::NoAcceptableMethod(greeting.methods));
    };
    let target = read_request(stream).await?;
    Ok((grant, target))
}

/// Logs why a connection is refused, sends its answer and closes.
async fn refuse(
    mut stream: TcpStream,
    error: SocksError,
    target: Option<&Target>,
    started: Instant,
    shared: &Shared,
) {
    let answer = error.answer();
    let duration_ms = started.elapsed().as_millis() as u64;
    let target = target.map(|target| target.to_string()).unwrap_or_default();
    match &error {
        SocksError::Io(io) => debug!(error = %io, "SOCKS5 client went away"),
        SocksError::Auth(ProxyError::BadTargeting { key, .. }) => {
            info!(%key, ?answer, duration_ms, "SOCKS5 refused: {error}")
        }
        _ => info!(%target, ?answer, duration_ms, "SOCKS5 refused: {error}"),
    }
    let bytes = match answer {
        Answer::Nothing => return,
        Answer::NoMethod => vec![VERSION, METHOD_NONE_ACCEPTABLE],
        Answer::AuthStatus(status) => vec![AUTH_VERSION, status],
        Answer::Reply(code) => reply(code, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
    };
    if send(&mut stream, &bytes, shared.config.head_timeout)
        .await
        .is_ok()
    {
        let _ = stream.shutdown().await;
    }
}

/// Reads `VER NMETHODS METHODS`.
async fn read_greeting<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Greeting, SocksError> {
    let version = reader.read_u8().await?;
    if version != VERSION {
        return Err(SocksError::GreetingVersion(version));
    }
    let methods = read_short(reader).await?;
    Ok(Greeting { methods })
}

/// Reads the RFC 1929 `VER ULEN UNAME PLEN PASSWD`.
async fn read_credentials<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Credentials, SocksError> {
    let version = reader.read_u8().await?;
    if version != AUTH_VERSION {
        return Err(SocksError::AuthVersion(version));
    }
    let user = read_short(reader).await?;
    let password = read_short(reader).await?;
    match (String::from_utf8(user), String::from_utf8(password)) {
        (Ok(user), Ok(password)) => Ok(Credentials { user, password }),
        _ => Err(SocksError::CredentialsNotUtf8),
    }
}

/// Reads `VER CMD RSV ATYP DST.ADDR DST.PORT` and checks it. The whole request is
/// read before any refusal (except a bad version or address type, whose length is
/// unknown), so nothing is left unread when the answer goes out.
async fn read_request<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Target, SocksError> {
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await?;
    let [version, command, reserved, address_type] = head;
    if version != VERSION {
        return Err(SocksError::RequestVersion(version));
    }
    let host = match address_type {
        ATYP_IPV4 => {
            let mut octets = [0u8; 4];
            reader.read_exact(&mut octets).await?;
            Ok(TargetHost::Ip(IpAddr::V4(Ipv4Addr::from(octets))))
        }
        ATYP_DOMAIN => {
            let name = read_short(reader).await?;
            domain(&name)
        }
        ATYP_IPV6 => {
            let mut octets = [0u8; 16];
            reader.read_exact(&mut octets).await?;
            Ok(TargetHost::Ip(IpAddr::V6(Ipv6Addr::from(octets))))
        }
        other => return Err(SocksError::AddressType(other)),
    };
    let port = reader.read_u16().await?;
    if command != CMD_CONNECT && command != CMD_UDP_ASSOCIATE {
        return Err(SocksError::Command(command));
    }
    if reserved != 0 {
        return Err(SocksError::Reserved(reserved));
    }
    let associate = command == CMD_UDP_ASSOCIATE;
    // An association's address is only a hint of where the client will send
    // from (PySocks sends the name "0"): one that is no valid host is taken
    // as unknown, and the first datagram from the client's IP tells its port.
    let host = match host {
        Err(_) if associate => TargetHost::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        host => host.map_err(SocksError::Refused)?,
    };
    // An association's address may be all zeros: the client does not know yet.
    if port == 0 && !associate {
        return Err(SocksError::Refused(ProxyError::BadTarget(format!(
            "port 0 (target {host})"
        ))));
    }
    Ok(Target {
        host,
        port,
        associate,
    })
}

/// Reads a `u8` length and that many bytes: at most 255, by construction.
async fn read_short<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let len = reader.read_u8().await?;
    let mut buf = [0u8; u8::MAX as usize];
    let field = &mut buf[..usize::from(len)];
    reader.read_exact(field).await?;
    Ok(field.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    /// Runs `parse` on the server half of an 8-byte duplex while the client half
    /// writes `input` and then closes, so parsing must cope with input that
    /// arrives a few bytes at a time. Returns the result and what was left unread.
    async fn feed<T, F, Fut>(input: &[u8], parse: F) -> (T, Vec<u8>)
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: std::future::Future<Output = (T, DuplexStream)>,
    {
        let (mut client, server) = duplex(8);
        let input = input.to_vec();
        let write = async move {
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            client
        };
        let read = async move {
            let (result, mut server) = parse(server).await;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (result, rest)
        };
        let (read, _client) = tokio::join!(read, write);
        read
    }

    async fn greeting(input: &[u8]) -> (Result<Greeting, SocksError>, Vec<u8>) {
        let parse = |mut s: DuplexStream| async move { (read_greeting(&mut s).await, s) };
        tokio::time::timeout(std::time::Duration::from_secs(5), feed(input, parse))
            .await
            .expect("no deadlock")
    }

    async fn credentials(input: &[u8]) -> (Result<Credentials, SocksError>, Vec<u8>) {
        let parse = |mut s: DuplexStream| async move { (read_credentials(&mut s).await, s) };
        tokio::time::timeout(std::time::Duration::from_secs(5), feed(input, parse))
            .await
            .expect("no deadlock")
    }

    async fn request(input: &[u8]) -> (Result<Target, SocksError>, Vec<u8>) {
        let parse = |mut s: DuplexStream| async move { (read_request(&mut s).await, s) };
        tokio::time::timeout(std::time::Duration::from_secs(5), feed(input, parse))
            .await
            .expect("no deadlock")
    }

    fn connect_request(address: &[u8], port: u16) -> Vec<u8> {
        let mut out = vec![VERSION, CMD_CONNECT, 0x00];
        out.extend_from_slice(address);
        out.extend_from_slice(&port.to_be_bytes());
        out
    }

    fn domain_address(name: &str) -> Vec<u8> {
        let mut out = vec![ATYP_DOMAIN, name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out
    }

    #[tokio::test]
    async fn greeting_lists_the_offered_methods() {
        let (parsed, rest) = greeting(&[0x05, 0x03, 0x00, 0x01, 0x02, 0xAA]).await;
        assert_eq!(parsed.unwrap().methods, [0x00, 0x01, 0x02]);
        assert_eq!(rest, [0xAA], "nothing past the greeting is consumed");
    }

    #[tokio::test]
    async fn greeting_without_user_password_is_answered_with_no_method() {
        let (parsed, _) = greeting(&[0x05, 0x01, 0x00]).await;
        let greeting = parsed.unwrap();
        assert!(!greeting.methods.contains(&METHOD_USER_PASSWORD));
        let error = SocksError::NoAcceptableMethod(greeting.methods);
        assert_eq!(error.answer(), Answer::NoMethod);
    }

    #[tokio::test]
    async fn greeting_with_another_version_is_refused_silently() {
        let (parsed, _) = greeting(&[0x04, 0x01, 0x00]).await;
        let error = parsed.err().unwrap();
        assert!(
            matches!(error, SocksError::GreetingVersion(0x04)),
            "{error}"
        );
        assert_eq!(error.answer(), Answer::Nothing);
    }

    #[tokio::test]
    async fn greeting_with_255_methods_is_read_whole() {
        let mut input = vec![0x05, 0xFF];
        input.extend(0..=0xFEu8);
        input.push(0xAA);
        let (parsed, rest) = greeting(&input).await;
        assert_eq!(parsed.unwrap().methods.len(), 255);
        assert_eq!(rest, [0xAA]);
    }

    #[tokio::test]
    async fn truncated_greeting_is_an_io_error() {
        for input in [&[][..], &[0x05], &[0x05, 0x02, 0x00]] {
            let (parsed, _) = greeting(input).await;
            let error = parsed.err().unwrap();
            assert!(matches!(error, SocksError::Io(_)), "{input:?}: {error}");
            assert_eq!(error.answer(), Answer::Nothing);
        }
    }

    #[tokio::test]
    async fn credentials_with_targeting_are_read_exactly() {
        let mut input = vec![0x01, 27];
        input.extend_from_slice(b"alice-country-us-session-a1");
        input.push(17);
        input.extend_from_slice(b"s3cret-country-us");
        input.extend_from_slice(b"next");
        let (parsed, rest) = credentials(&input).await;
        let credentials = parsed.unwrap();
        assert_eq!(credentials.user, "alice-country-us-session-a1");
        assert_eq!(credentials.password, "s3cret-country-us");
        assert_eq!(rest, b"next");
    }

    #[tokio::test]
    async fn credentials_of_255_bytes_each_are_accepted() {
        let mut input = vec![0x01, 255];
        input.extend_from_slice(&[b'u'; 255]);
        input.push(255);
        input.extend_from_slice(&[b'p'; 255]);
        let (parsed, rest) = credentials(&input).await;
        let credentials = parsed.unwrap();
        assert_eq!(credentials.user, "u".repeat(255));
        assert_eq!(credentials.password, "p".repeat(255));
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn credentials_errors_fail_authentication() {
        let (parsed, _) = credentials(&[0x05, 1, b'a', 1, b'b']).await;
        let error = parsed.err().unwrap();
        assert!(matches!(error, SocksError::AuthVersion(0x05)), "{error}");
        assert_eq!(error.answer(), Answer::AuthStatus(AUTH_BAD_CREDENTIALS));

        let (parsed, _) = credentials(&[0x01, 1, 0xFF, 1, b'b']).await;
        let error = parsed.err().unwrap();
        assert!(matches!(error, SocksError::CredentialsNotUtf8), "{error}");
        assert_eq!(error.answer(), Answer::AuthStatus(AUTH_BAD_CREDENTIALS));

        for truncated in [&[0x01][..], &[0x01, 5, b'a'], &[0x01, 1, b'a', 3, b'b']] {
            let (parsed, _) = credentials(truncated).await;
            assert!(matches!(parsed, Err(SocksError::Io(_))), "{truncated:?}");
        }
    }

    #[test]
    fn auth_failures_map_to_distinct_statuses() {
        let wrong = SocksError::Auth(ProxyError::AuthRequired);
        assert_eq!(wrong.answer(), Answer::AuthStatus(0x01));
        let targeting = SocksError::Auth(ProxyError::BadTargeting {
            key: "contry".into(),
            message: "unknown key".into(),
        });
        assert_eq!(targeting.answer(), Answer::AuthStatus(0x02));
        let country = SocksError::Auth(ProxyError::CountryNotAllowed {
            country: "FR".into(),
            allowed: "US, DE".into(),
        });
        assert_eq!(country.answer(), Answer::AuthStatus(0x02));
    }

    #[tokio::test]
    async fn requests_for_each_address_type_parse() {
        let cases = [
            (
                connect_request(&[ATYP_IPV4, 10, 0, 0, 1], 80),
                TargetHost::Ip("10.0.0.1".parse().unwrap()),
                80,
            ),
            (
                connect_request(&domain_address("Example.COM"), 443),
                TargetHost::Domain("example.com".into()),
                443,
            ),
            (
                connect_request(&domain_address("127.0.0.1"), 8080),
                TargetHost::Ip("127.0.0.1".parse().unwrap()),
                8080,
            ),
            (
                {
                    let mut address = vec![ATYP_IPV6];
                    address.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                    connect_request(&address, 65535)
                },
                TargetHost::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                65535,
            ),
        ];
        for (mut input, host, port) in cases {
            input.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (parsed, rest) = request(&input).await;
            let associate = false;
            assert_eq!(
                parsed.unwrap(),
                Target {
                    host,
                    port,
                    associate
                }
            );
            assert_eq!(rest, b"GET / HTTP/1.1\r\n", "bytes after the request stay");
        }
    }

    #[tokio::test]
    async fn a_253_character_name_is_accepted_and_255_is_a_bad_target() {
        let label = "a".repeat(63);
        let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name.len(), 253);
        let (parsed, _) = request(&connect_request(&domain_address(&name), 443)).await;
        assert_eq!(parsed.unwrap().host, TargetHost::Domain(name.clone()));

        let long = format!("{name}.c");
        assert_eq!(long.len(), 255);
        let (parsed, rest) = request(&connect_request(&domain_address(&long), 443)).await;
        let error = parsed.err().unwrap();
        assert_eq!(
            error.answer(),
            Answer::Reply(socks_reply::ADDRESS_TYPE_NOT_SUPPORTED),
            "{error}"
        );
        assert!(rest.is_empty(), "the port was read before refusing");
    }

    #[tokio::test]
    async fn request_refusals_carry_their_reply_codes() {
        let ipv4 = [ATYP_IPV4, 127, 0, 0, 1];
        let with = |command: u8, reserved: u8, address: &[u8], port: u16| {
            let mut out = vec![VERSION, command, reserved];
            out.extend_from_slice(address);
            out.extend_from_slice(&port.to_be_bytes());
            out
        };
        let cases: Vec<(&str, Vec<u8>, u8)> = vec![
            ("BIND", with(0x02, 0, &ipv4, 80), 0x07),
            ("unknown command", with(0x09, 0, &ipv4, 80), 0x07),
            ("reserved byte", with(CMD_CONNECT, 1, &ipv4, 80), 0x01),
            ("address type", vec![VERSION, CMD_CONNECT, 0, 0x09], 0x08),
            ("port 0", with(CMD_CONNECT, 0, &ipv4, 0), 0x08),
            (
                "empty name",
                with(CMD_CONNECT, 0, &[ATYP_DOMAIN, 0], 80),
                0x08,
            ),
            (
                "bad name",
                with(CMD_CONNECT, 0, &domain_address("a b.com"), 80),
                0x08,
            ),
            (
                "numeric name",
                with(CMD_CONNECT, 0, &domain_address("127.1"), 80),
                0x08,
            ),
            (
                "non-UTF-8 name",
                with(CMD_CONNECT, 0, &[ATYP_DOMAIN, 2, 0xC3, 0x28], 80),
                0x08,
            ),
        ];
        for (what, input, code) in cases {
            let (parsed, rest) = request(&input).await;
            let error = parsed
                .err()
                .unwrap_or_else(|| panic!("{what} was accepted"));
            assert_eq!(error.answer(), Answer::Reply(code), "{what}: {error}");
            assert!(rest.is_empty(), "{what}: request not read whole");
        }
        let (parsed, _) = request(&with(CMD_UDP_ASSOCIATE, 0, &[ATYP_IPV4, 0, 0, 0, 0], 0)).await;
        assert!(
            parsed.unwrap().associate,
            "UDP ASSOCIATE from an unknown address"
        );
        let (parsed, _) = request(&[0x04, CMD_CONNECT, 0, ATYP_IPV4, 127, 0, 0, 1, 0, 80]).await;
        let error = parsed.err().unwrap();
        assert!(matches!(error, SocksError::RequestVersion(0x04)), "{error}");
        assert_eq!(error.answer(), Answer::Reply(socks_reply::GENERAL_FAILURE));
    }

    #[tokio::test]
    async fn truncated_requests_are_io_errors() {
        let full = connect_request(&domain_address("example.com"), 443);
        for cut in 0..full.len() {
            let (parsed, _) = request(&full[..cut]).await;
            assert!(matches!(parsed, Err(SocksError::Io(_))), "cut at {cut}");
        }
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(
            reply(0x00, "127.0.0.1:8080".parse().unwrap()),
            [0x05, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0x1F, 0x90]
        );
        let v6 = reply(0x05, "[::1]:443".parse().unwrap());
        assert_eq!(v6.len(), 22);
        assert_eq!(&v6[..4], [0x05, 0x05, 0x00, 0x04]);
        assert_eq!(&v6[4..20], Ipv6Addr::LOCALHOST.octets());
        assert_eq!(&v6[20..], 443u16.to_be_bytes());
    }
}
