//! Every parser that reads customer or peer input, fed random input (issue 10,
//! "Parsers under random input"): no panic, no unbounded allocation, and a
//! round trip wherever one applies.
//!
//! - wire protocol: [`frame`] codec and the messages of both directions;
//! - credentials: the `-key-value` targeting grammar of user name and password;
//! - target: the one host grammar (`exitpool_protocol::host`) that the gateway
//!   checks `host:port` with and the agent parses the same names with again;
//! - exit policy: `check_ip` and `PortRange`.
//!
//! The SOCKS5 readers (`gateway/src/socks.rs`) are private and the HTTP head is
//! parsed by hyper, so neither is reached from here. `fuzz/` holds the cargo-fuzz
//! targets for the same parsers.

use exitpool::agent::policy::{self, ExitPolicy, PortRange, PortRangeError};
use exitpool::gateway::credentials::{
    bases, parse_targeting, SessMode, SessionRequest, Targeting, DEFAULT_SESSTIME_MINUTES,
};
use exitpool::protocol::frame::{body_len, decode_body, HEADER_LEN};
use exitpool::protocol::host::{parse_authority, parse_host, parse_port};
use exitpool::protocol::{
    decode, encode, read_frame, AgentMessage, Capacity, FailureCode, FrameError, GatewayMessage,
    IdentityProof, OpenReply, OpenRequest, RejectReason, Secret, TargetHost, MAX_FRAME_LEN,
    MAX_HOST_LEN,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Allocation probe: the largest single allocation made by this thread, so a
// property can say "decoding this never asked for more than N bytes".

/// Wraps the system allocator and remembers, per thread, the largest request.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed straight to `System`; the only extra work is a
// `Cell` update in a const-initialised thread local, which never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Decoding one frame may allocate a few buffers of at most a frame's size (a
/// string or the read buffer); anything above this bound is an allocation the
/// peer chose.
const DECODE_ALLOCATION_BOUND: usize = MAX_FRAME_LEN;

/// The four message types, behind one trait so the properties below are written
/// once (the codec's serde bounds are not nameable here without serde itself).
trait Wire: Sized + PartialEq + Debug {
    fn encode(&self) -> Result<Vec<u8>, FrameError>;
    fn decode(bytes: &[u8]) -> Result<Self, FrameError>;
    fn decode_body(body: &[u8]) -> Result<Self, FrameError>;
    /// Runs `read_frame` to completion on a byte slice (which is always ready) and
    /// returns what it left unread.
    fn read_frame(bytes: &[u8]) -> (Result<Self, FrameError>, &[u8]);
}

macro_rules! wire {
    ($($message:ty),*) => {$(
        impl Wire for $message {
            fn encode(&self) -> Result<Vec<u8>, FrameError> {
                encode(self)
            }
            fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
                decode(bytes)
            }
            fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
                decode_body(body)
            }
            fn read_frame(bytes: &[u8]) -> (Result<Self, FrameError>, &[u8]) {
                // No runtime: a byte slice is always ready, so one poll finishes,
                // and nothing but the codec allocates while it is measured.
                let mut reader = bytes;
                let result = {
                    let mut read = pin!(read_frame(&mut reader));
                    match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                        Poll::Ready(result) => result,
                        Poll::Pending => panic!("read_frame waited on a byte slice"),
                    }
                };
                (result, reader)
            }
        }
    )*};
}

wire!(AgentMessage, GatewayMessage, OpenRequest, OpenReply);

// ---------------------------------------------------------------------------
// Strategies for the wire messages.

/// Short text from all of Unicode, so encoded messages stay under the frame limit.
fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

/// Socket addresses as the messages carry them. serde writes an IPv6 socket
/// address as address and port only, so flow info and scope id are left at zero.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        (
            any::<u16>(),
            (any::<[u8; 32]>(), any::<[[u8; 32]; 2]>()),
            text(),
            text(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(
                |(version, (public_key, signature), token, software, max_streams, accepting)| {
                    AgentMessage::Hello {
                        version,
                        identity: IdentityProof {
                            public_key,
                            signature,
                        },
                        token: Secret(token),
                        software,
                        capacity: Capacity { max_streams },
                        accepting,
                    }
                }
            ),
        (any::<u32>(), any::<bool>()).prop_map(|(active_streams, accepting)| {
            AgentMessage::Load {
                active_streams,
                accepting,
            }
        }),
        Just(AgentMessage::Draining),
    ]
}

fn gateway_message() -> impl Strategy<Value = GatewayMessage> {
    let reason = prop_oneof![
        Just(RejectReason::BadToken),
        Just(RejectReason::UnsupportedVersion),
        Just(RejectReason::BadAgentId),
    ];
    prop_oneof![
        (socket_addr(), option::of(text()), text()).prop_map(
            |(observed_addr, country, exit_id)| GatewayMessage::Welcome {
                observed_addr,
                country,
                exit_id,
            }
        ),
        (reason, text()).prop_map(|(reason, message)| GatewayMessage::Reject { reason, message }),
    ]
}

fn target_host() -> impl Strategy<Value = TargetHost> {
    prop_oneof![
        text().prop_map(TargetHost::Domain),
        ip().prop_map(TargetHost::Ip),
    ]
}

fn open_request() -> impl Strategy<Value = OpenRequest> {
    (target_host(), any::<u16>()).prop_map(|(host, port)| OpenRequest { host, port })
}

fn open_reply() -> impl Strategy<Value = OpenReply> {
    let code = prop_oneof![
        Just(FailureCode::DnsError),
        Just(FailureCode::DestinationIpProhibited),
        Just(FailureCode::DestinationPortProhibited),
        Just(FailureCode::ConnectionRefused),
        Just(FailureCode::ConnectionTimeout),
        Just(FailureCode::NetworkUnreachable),
        Just(FailureCode::HostUnreachable),
        Just(FailureCode::AgentUnavailable),
        Just(FailureCode::BadRequest),
        Just(FailureCode::Other),
    ];
    prop_oneof![
        socket_addr().prop_map(|peer| OpenReply::Opened { peer }),
        (code, text()).prop_map(|(code, detail)| OpenReply::Failed { code, detail }),
    ]
}

/// A frame as a peer could send it: a sound length prefix and random body bytes,
/// or random bytes throughout.
fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64).prop_map(|body| {
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        }),
        vec(any::<u8>(), 0..64),
    ]
}

// ---------------------------------------------------------------------------
// Frame codec properties, shared by the four message types.

/// encode -> decode gives the message back, and so does `read_frame`, which
/// leaves the bytes after the frame unread.
fn round_trips<T: Wire>(message: &T, trailer: &[u8]) -> Result<(), TestCaseError> {
    let bytes = message.encode().expect("a small message encodes");
    let announced = u32::from_be_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
    prop_assert_eq!(announced, bytes.len() - HEADER_LEN);
    prop_assert_eq!(&T::decode(&bytes).unwrap(), message);
    prop_assert_eq!(&T::decode_body(&bytes[HEADER_LEN..]).unwrap(), message);

    let mut stream = bytes.clone();
    stream.extend_from_slice(trailer);
    let (read, rest) = T::read_frame(&stream);
    prop_assert_eq!(&read.unwrap(), message);
    prop_assert_eq!(rest, trailer, "read_frame reads nothing past its frame");
    Ok(())
}

/// Every proper prefix of a frame is `Truncated`, for `decode` and `read_frame`,
/// except that `read_frame` calls an empty stream `Ended`; one byte too many is
/// `Malformed`.
fn truncations_fail<T: Wire>(message: &T) -> Result<(), TestCaseError> {
    let bytes = message.encode().unwrap();
    for cut in 0..bytes.len() {
        let prefix = &bytes[..cut];
        let decoded = T::decode(prefix);
        prop_assert!(
            matches!(decoded, Err(FrameError::Truncated)),
            "cut at {cut}: {decoded:?}"
        );
        let (read, _) = T::read_frame(prefix);
        prop_assert!(
            match cut {
                0 => matches!(read, Err(FrameError::Ended)),
                _ => matches!(read, Err(FrameError::Truncated)),
            },
            "read_frame, cut at {cut}: {read:?}"
        );
    }
    let mut long = bytes;
    long.push(0);
    let decoded = T::decode(&long);
    prop_assert!(
        matches!(decoded, Err(FrameError::Malformed(_))),
        "{decoded:?}"
    );
    Ok(())
}

/// Random bytes: no panic, a bounded allocation, and whatever does decode encodes
/// back to the same bytes (bincode has one encoding per value).
fn garbage_is_refused_or_canonical<T: Wire>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (decoded, largest) = largest_allocation(|| T::decode(bytes));
    prop_assert!(
        largest <= DECODE_ALLOCATION_BOUND,
        "decode allocated {largest} bytes"
    );
    if let Ok(message) = decoded {
        prop_assert_eq!(message.encode().unwrap(), bytes, "{:?}", message);
    }
    if bytes.len() >= HEADER_LEN {
        let (body, largest) = largest_allocation(|| T::decode_body(&bytes[HEADER_LEN..]));
        prop_assert!(largest <= DECODE_ALLOCATION_BOUND);
        drop(body);
    }
    let ((read, _), largest) = largest_allocation(|| T::read_frame(bytes));
    prop_assert!(
        largest <= DECODE_ALLOCATION_BOUND,
        "read_frame allocated {largest} bytes"
    );
    drop(read);
    Ok(())
}

#[test]
fn the_allocation_probe_sees_large_buffers() {
    let (buffer, largest) = largest_allocation(|| vec![1u8; 100_000]);
    assert_eq!(buffer.len(), 100_000);
    assert!(largest >= 100_000, "{largest}");
    let ((), largest) = largest_allocation(|| ());
    assert_eq!(largest, 0);
}

proptest! {
    #[test]
    fn agent_messages_round_trip(m in agent_message(), trailer in vec(any::<u8>(), 0..8)) {
        round_trips(&m, &trailer)?;
    }

    #[test]
    fn gateway_messages_round_trip(m in gateway_message(), trailer in vec(any::<u8>(), 0..8)) {
        round_trips(&m, &trailer)?;
    }

    #[test]
    fn open_requests_round_trip(m in open_request(), trailer in vec(any::<u8>(), 0..8)) {
        round_trips(&m, &trailer)?;
    }

    #[test]
    fn open_replies_round_trip(m in open_reply(), trailer in vec(any::<u8>(), 0..8)) {
        round_trips(&m, &trailer)?;
    }

    #[test]
    fn truncated_frames_fail(
        agent in agent_message(),
        gateway in gateway_message(),
        request in open_request(),
        reply in open_reply(),
    ) {
        truncations_fail(&agent)?;
        truncations_fail(&gateway)?;
        truncations_fail(&request)?;
        truncations_fail(&reply)?;
    }

    #[test]
    fn random_frames_never_panic(bytes in frame_bytes()) {
        garbage_is_refused_or_canonical::<AgentMessage>(&bytes)?;
        garbage_is_refused_or_canonical::<GatewayMessage>(&bytes)?;
        garbage_is_refused_or_canonical::<OpenRequest>(&bytes)?;
        garbage_is_refused_or_canonical::<OpenReply>(&bytes)?;
    }

    /// A body that claims a huge string or sequence length is refused without
    /// allocating what it claims.
    #[test]
    fn claimed_lengths_inside_a_body_are_bounded(
        variant in 0u8..3,
        claim in prop_oneof![any::<u64>(), (MAX_FRAME_LEN as u64)..(1 << 32)],
        tail in vec(any::<u8>(), 0..16),
    ) {
        // bincode varint: 253 = u64 follows, as a length where a String starts:
        // Hello's token comes after its version and its fixed-size identity proof.
        let mut body = vec![variant, 1];
        if variant == 0 {
            body.extend_from_slice(&[0; 32 + 64]);
        }
        body.push(253);
        body.extend_from_slice(&claim.to_le_bytes());
        body.extend_from_slice(&tail);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (decoded, largest) = largest_allocation(|| decode::<AgentMessage>(&frame));
        prop_assert!(decoded.is_err());
        prop_assert!(largest <= DECODE_ALLOCATION_BOUND, "allocated {largest} bytes");
    }

    /// A declared length above the limit is `TooLong` before any body arrives or
    /// any buffer is allocated for it.
    #[test]
    fn oversized_length_is_refused_before_allocation(
        len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX,
        body in vec(any::<u8>(), 0..32),
    ) {
        let header = len.to_be_bytes();
        let too_long = |result: &Result<AgentMessage, FrameError>| {
            matches!(result, Err(FrameError::TooLong(n)) if *n == len as usize)
        };
        prop_assert!(matches!(body_len(header), Err(FrameError::TooLong(n)) if n == len as usize));
        let mut frame = header.to_vec();
        frame.extend_from_slice(&body);
        let (decoded, largest) = largest_allocation(|| decode::<AgentMessage>(&frame));
        prop_assert!(too_long(&decoded), "{decoded:?}");
        prop_assert!(largest < 1024, "decode allocated {largest} bytes");
        // Only the header: read_frame must not wait for (or allocate) the body.
        let ((read, _), largest) = largest_allocation(|| AgentMessage::read_frame(&header));
        prop_assert!(too_long(&read), "{read:?}");
        prop_assert!(largest < 1024, "read_frame allocated {largest} bytes");
    }

    #[test]
    fn lengths_up_to_the_limit_are_accepted(len in 0..=MAX_FRAME_LEN as u32) {
        prop_assert_eq!(body_len(len.to_be_bytes()).unwrap(), len as usize);
    }
}

// ---------------------------------------------------------------------------
// Credentials: `USER[-key-value]...:PASSWORD[-key-value]...`.

/// A base user name or password: anything without a `-`.
fn base() -> impl Strategy<Value = String> {
    "[^-]{0,12}"
}

/// `word` with each ASCII letter upper or lower case at random.
fn any_case(word: String) -> impl Strategy<Value = String> {
    vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// A valid set of targeting parameters in any order, split between user name and
/// password, with the `Targeting` it must parse to.
#[derive(Debug, Clone)]
struct CredentialCase {
    user: String,
    password: String,
    user_base: String,
    password_base: String,
    expected: Targeting,
}

fn credential_case() -> impl Strategy<Value = CredentialCase> {
    let session = (
        "[A-Za-z0-9_]{1,64}",
        option::of(1u32..=1440),
        option::of(prop_oneof![Just(SessMode::Move), Just(SessMode::Strict)]),
    );
    let asn = (1u32.., prop_oneof![Just(""), Just("AS"), Just("as")]);
    (
        base(),
        base(),
        option::of("[a-zA-Z]{2}"),
        option::of(session),
        option::of(asn),
        option::of("[A-Za-z0-9_]{1,64}"),
    )
        .prop_flat_map(|(user_base, password_base, country, session, asn, city)| {
            let mut params: Vec<(&'static str, String)> = Vec::new();
            let mut expected = Targeting::default();
            if let Some(country) = country {
                expected.country = Some(country.to_ascii_uppercase());
                params.push(("country", country));
            }
            if let Some((id, sesstime, sessmode)) = session {
                if let Some(minutes) = sesstime {
                    params.push(("sesstime", minutes.to_string()));
                }
                if let Some(mode) = sessmode {
                    let word = if mode == SessMode::Strict {
                        "strict"
                    } else {
                        "move"
                    };
                    params.push(("sessmode", word.to_owned()));
                }
                expected.session = Some(SessionRequest {
                    id: id.clone(),
                    lifetime: Duration::from_secs(
                        u64::from(sesstime.unwrap_or(DEFAULT_SESSTIME_MINUTES)) * 60,
                    ),
                    mode: sessmode.unwrap_or_default(),
                });
                params.push(("session", id));
            }
            if let Some((number, prefix)) = asn {
                expected.asn = Some(number);
                params.push(("asn", format!("{prefix}{number}")));
            }
            if let Some(city) = city {
                expected.city = Some(city.to_ascii_lowercase());
                params.push(("city", city));
            }
            // Keys (and sessmode's value) in any case; the rest as generated.
            let spelled: Vec<_> = params
                .into_iter()
                .map(|(key, value)| {
                    let value = if key == "sessmode" {
                        any_case(value).boxed()
                    } else {
                        Just(value).boxed()
                    };
                    (any_case(key.to_owned()), value)
                })
                .collect();
            let count = spelled.len();
            (
                spelled.prop_shuffle(),
                0..=count,
                Just(user_base),
                Just(password_base),
                Just(expected),
            )
        })
        .prop_map(|(params, split, user_base, password_base, expected)| {
            let join = |base: &str, params: &[(String, String)]| {
                let mut out = base.to_owned();
                for (key, value) in params {
                    out.push_str(&format!("-{key}-{value}"));
                }
                out
            };
            CredentialCase {
                user: join(&user_base, &params[..split]),
                password: join(&password_base, &params[split..]),
                user_base,
                password_base,
                expected,
            }
        })
}

/// Text made of grammar pieces, so random input often gets past the first check.
fn near_grammar() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("-".to_owned()),
        Just("--".to_owned()),
        prop_oneof![
            Just("country"),
            Just("session"),
            Just("sesstime"),
            Just("sessmode"),
            Just("asn"),
            Just("city"),
            Just("AS"),
            Just("strict"),
            Just("move"),
            Just("+")
        ]
        .prop_map(str::to_owned),
        "[a-zA-Z0-9_]{0,4}",
        "[0-9]{1,12}",
        ".{0,3}",
    ];
    vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Checks what any successful parse may contain, and that errors stay short.
fn targeting_is_sound(user: &str, password: &str) -> Result<(), TestCaseError> {
    let parsed = bases(user, password);
    prop_assert!(!parsed.user.contains('-') && !parsed.password.contains('-'));
    prop_assert!(user.starts_with(parsed.user) && password.starts_with(parsed.password));
    match parse_targeting(user, password) {
        Ok(targeting) => {
            if let Some(country) = &targeting.country {
                prop_assert!(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()));
            }
            if let Some(city) = &targeting.city {
                prop_assert!(!city.is_empty() && city.len() <= 64);
                prop_assert!(city
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            }
            prop_assert_ne!(targeting.asn, Some(0));
            if let Some(session) = &targeting.session {
                prop_assert!(!session.id.is_empty() && session.id.len() <= 64);
                prop_assert!(session.lifetime >= Duration::from_secs(60));
                prop_assert!(session.lifetime <= Duration::from_secs(1440 * 60));
            }
        }
        Err(error) => {
            prop_assert!(error.key.chars().count() <= 32, "{error}");
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn valid_parameters_parse_to_what_was_generated(case in credential_case()) {
        let parsed = parse_targeting(&case.user, &case.password);
        prop_assert_eq!(parsed, Ok(case.expected.clone()), "{}:{}", case.user, case.password);
        let parsed = bases(&case.user, &case.password);
        prop_assert_eq!(parsed.user, case.user_base.as_str());
        prop_assert_eq!(parsed.password, case.password_base.as_str());
    }

    #[test]
    fn a_repeated_key_is_refused(case in credential_case(), on_user in any::<bool>()) {
        let Some(country) = case.expected.country.clone() else { return Ok(()) };
        let (user, password) = if on_user {
            (format!("{}-country-{country}", case.user), case.password.clone())
        } else {
            (case.user.clone(), format!("{}-Country-{country}", case.password))
        };
        let error = parse_targeting(&user, &password).unwrap_err();
        prop_assert_eq!(error.key.to_ascii_lowercase(), "country");
    }

    #[test]
    fn random_credentials_never_panic(user in any::<String>(), password in any::<String>()) {
        targeting_is_sound(&user, &password)?;
    }

    #[test]
    fn near_grammar_credentials_never_panic(user in near_grammar(), password in near_grammar()) {
        targeting_is_sound(&user, &password)?;
    }
}

// ---------------------------------------------------------------------------
// Targets: the shared host grammar, as the gateway and the agent use it.

/// A DNS name the gateway accepts, in mixed case. The last label starts with a
/// letter or `_`, so it is never numeric.
fn dns_name() -> impl Strategy<Value = String> {
    let label = "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,10}[a-zA-Z0-9_])?";
    let last = "[a-zA-Z_]([a-zA-Z0-9_-]{0,10}[a-zA-Z0-9_])?";
    (vec(label, 0..5), last, any::<bool>()).prop_map(|(mut labels, last, trailing_dot)| {
        labels.push(last);
        let mut name = labels.join(".");
        if trailing_dot {
            name.push('.');
        }
        name
    })
}

/// Characters that must never get through into a target.
fn forbidden_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('\r'),
        Just('\n'),
        Just('\0'),
        Just(' '),
        Just('@'),
        Just('%'),
    ]
}

/// Text from the alphabet of host names and literals, plus a little else.
fn hostish() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:\\[\\]%x-]{0,40}"
}

proptest! {
    #[test]
    fn names_round_trip_in_lower_case(name in dns_name(), port in 1u16..) {
        let bare = name.strip_suffix('.').unwrap_or(&name);
        let expected = TargetHost::Domain(bare.to_ascii_lowercase());
        prop_assert_eq!(parse_authority(&format!("{name}:{port}")).unwrap(), (expected.clone(), port));
        prop_assert_eq!(parse_host(&name).unwrap(), expected);
    }

    #[test]
    fn ip_literals_round_trip(ip in ip(), port in 1u16..) {
        let authority = match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        prop_assert_eq!(parse_authority(&authority).unwrap(), (TargetHost::Ip(ip), port));
        // Display of a TargetHost is the authority form.
        let host = TargetHost::Ip(ip);
        prop_assert_eq!(parse_authority(&format!("{host}:{port}")).unwrap(), (host, port));
        // Unbracketed IPv6 with a port is ambiguous and refused.
        if ip.is_ipv6() {
            let unbracketed = format!("{ip}:{port}");
            prop_assert!(parse_authority(&unbracketed).is_err());
        }
    }

    #[test]
    fn forbidden_characters_are_refused(
        before in ".{0,20}",
        bad in forbidden_char(),
        after in ".{0,20}",
    ) {
        let text = format!("{before}{bad}{after}");
        prop_assert!(parse_authority(&text).is_err(), "{text:?} was accepted");
        prop_assert!(parse_host(&text).is_err(), "{text:?} was accepted as a host");
    }

    #[test]
    fn forbidden_characters_are_refused_in_valid_targets(
        name in dns_name(),
        port in 1u16..,
        bad in forbidden_char(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut text = format!("{name}:{port}");
        let position = at.index(text.len() + 1);
        text.insert(position, bad);
        prop_assert!(parse_authority(&text).is_err(), "{text:?} was accepted");
    }

    #[test]
    fn ports_parse_as_written(port in 1u16..) {
        prop_assert_eq!(parse_port(&port.to_string()), Some(port));
        prop_assert_eq!(parse_port(&format!("+{port}")), None);
        prop_assert_eq!(parse_port(&format!(" {port}")), None);
    }

    #[test]
    fn random_targets_never_panic(text in any::<String>(), hostish in hostish()) {
        for text in [&text, &hostish] {
            if let Some(port) = parse_port(text) {
                prop_assert!(port != 0 && text.bytes().all(|b| b.is_ascii_digit()));
            }
            let _ = parse_authority(text);
            let _ = parse_host(text);
        }
    }

    /// What the gateway passes on as a name, the agent accepts as the same name:
    /// otherwise a customer gets an exit's `BadRequest` for a target the gateway
    /// called valid.
    #[test]
    fn gateway_names_are_agent_names(text in prop_oneof![hostish(), dns_name()]) {
        if let Ok(TargetHost::Domain(name)) = parse_host(&text) {
            prop_assert_eq!(parse_host(&name), Ok(TargetHost::Domain(name.clone())));
        }
    }
}

// ---------------------------------------------------------------------------
// The agent's exit policy.

/// A policy with random own addresses (some IPv4-mapped), strict or not.
fn exit_policy() -> impl Strategy<Value = ExitPolicy> {
    let own = prop_oneof![
        ip(),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
    ];
    (vec(own, 0..3), prop::bool::weighted(0.1)).prop_map(|(own, allow_private)| {
        own.into_iter()
            .fold(ExitPolicy::new(), ExitPolicy::with_own_address)
            .allow_private(allow_private)
    })
}

/// IPv4 addresses biased towards the refused ranges and the policy's edges.
fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
        (
            prop::sample::select(vec![
                0u8, 10, 100, 127, 169, 172, 192, 198, 203, 224, 240, 255
            ]),
            any::<[u8; 3]>()
        )
            .prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b, c, d)),
    ]
}

proptest! {
    #[test]
    fn check_ip_never_panics(policy in exit_policy(), ip in ip()) {
        let verdict = policy.check_ip(ip);
        if policy.allows_private() {
            prop_assert!(verdict.is_ok());
        }
        let _ = policy::special_purpose_range(ip);
    }

    #[test]
    fn mapped_ipv6_gets_the_ipv4_verdict(policy in exit_policy(), v4 in ipv4()) {
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(policy.check_ip(mapped), policy.check_ip(IpAddr::V4(v4)));
        prop_assert_eq!(
            policy::special_purpose_range(mapped),
            policy::special_purpose_range(IpAddr::V4(v4))
        );
    }

    /// Own addresses given in either form refuse both forms.
    #[test]
    fn own_ipv4_is_refused_in_both_forms(v4 in ipv4(), mapped in any::<bool>()) {
        let own = if mapped { IpAddr::V6(v4.to_ipv6_mapped()) } else { IpAddr::V4(v4) };
        let policy = ExitPolicy::new().with_own_address(own);
        prop_assert!(policy.check_ip(IpAddr::V4(v4)).is_err());
        prop_assert!(policy.check_ip(IpAddr::V6(v4.to_ipv6_mapped())).is_err());
    }

    #[test]
    fn agent_parses_ip_literals_as_written(ip in ip()) {
        prop_assert_eq!(parse_host(&ip.to_string()), Ok(TargetHost::Ip(ip)));
        if let IpAddr::V6(v6) = ip {
            prop_assert_eq!(parse_host(&format!("[{v6}]")), Ok(TargetHost::Ip(ip)));
        }
    }

    #[test]
    fn agent_host_results_are_canonical(text in prop_oneof![hostish(), dns_name(), any::<String>()]) {
        if let Ok(TargetHost::Domain(name)) = parse_host(&text) {
            prop_assert!(!name.is_empty() && name.len() <= MAX_HOST_LEN);
            prop_assert!(!name.ends_with('.'));
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'_' | b'.')));
        }
    }

    #[test]
    fn port_ranges_round_trip(a in any::<u16>(), b in any::<u16>(), spaces in any::<bool>()) {
        let (first, last) = (a.min(b), a.max(b));
        let range = PortRange { first, last };
        prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
        let spaced = if spaces { format!(" {first} - {last} ") } else { format!("{first}-{last}") };
        prop_assert_eq!(spaced.parse::<PortRange>(), Ok(range));
        if first != last {
            prop_assert_eq!(
                format!("{last}-{first}").parse::<PortRange>(),
                Err(PortRangeError::Reversed { first: last, last: first })
            );
        }
    }

    #[test]
    fn random_port_ranges_never_panic(
        text in prop_oneof![any::<String>(), "[0-9 +x-]{0,14}"],
    ) {
        if let Ok(range) = text.parse::<PortRange>() {
            prop_assert!(range.first <= range.last);
            prop_assert!(range.contains(range.first) && range.contains(range.last));
        }
    }
}
