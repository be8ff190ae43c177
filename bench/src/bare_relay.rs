//! A bare two-hop QUIC relay, the floor under exitpool's byte path. An entry
//! process takes TCP and opens one QUIC stream per connection to an exit process,
//! which dials one fixed target as soon as the stream arrives. Both run the same
//! byte path (`exitpool_transport::relay`), transport windows, UDP buffers, TLS
//! provider and single-threaded runtime as the gateway and the agent, and nothing
//! else: no authentication, routing, `Open`/`Opened` exchange, accounting or
//! limits. Its processes are this program, started with hidden flags
//! ([`HopArgs`]); [`BareRelay`] and [`BareExit`] start them.
//!
//! Started with [`BareRelay::speaking_connect`], the two hops do the least a
//! CONNECT proxy must on top of that, and nothing more: the entry reads the
//! client's CONNECT head and names its target in an Open on the stream, the
//! exit dials it and answers one status byte, and only then does the entry
//! answer `200`. The rate scenario measures both, so what exitpool's
//! connection costs beyond the protocol it speaks is a figure of its own.

pub mod datagrams;
mod hop;

pub use hop::BareExit;
use hop::{client_config, connect, provider, start_hop, transport, ALPN, READY, SERVER_NAME};

use crate::client::{head_end, join_all, Route, STEP};
use anyhow::{bail, Context, Result};
use exitpool_launcher::Process;
use exitpool_transport::relay::{relay, LiveCounters, Unlimited};
use exitpool_transport::udp;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::PrivatePkcs8KeyDer;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IDLE: Duration = Duration::from_secs(60);
/// The bare relay's path name in the scenarios.
pub const NAME: &str = "bare relay";
/// What the bare relay's column means, for the report's notes.
pub const NOTE: &str = "bare QUIC = a bare two-hop QUIC relay (entry and exit processes, the same byte path, transport settings and one-thread runtimes as the gateway and agent; no authentication, routing, Open/Opened exchange, accounting or limits): the floor for two QUIC hops on this machine";
/// What the CONNECT variant's rows mean, for the report's notes.
pub const CONNECT_NOTE: &str = "the same two hops, doing the least a CONNECT proxy must and nothing more: the entry reads the CONNECT head and sends the target's address on the stream, the exit dials it and answers one byte, and the entry then answers 200: exitpool's protocol without authentication, routing, accounting, limits or logs";
/// The bare relay speaking CONNECT, in the rate scenario's rows.
pub const CONNECT_NAME: &str = "bare relay with CONNECT";
/// The exit's answer to an Open: dialled, or not.
const OPENED: u8 = 0;
const REFUSED: u8 = 1;
/// The longest CONNECT head the entry takes.
const HEAD_MAX: usize = 4096;
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n";

/// The hidden flags that make this program one hop of the bare relay.
#[derive(Debug, clap::Args)]
pub struct HopArgs {
    /// Internal: run as the bare relay's exit hop, dialling this target.
    #[arg(long, hide = true)]
    pub bare_exit: Option<SocketAddr>,
    /// Internal: streams the bare exit hop lets each connection open at once
    /// (quinn sets up state for each in advance).
    #[arg(long, hide = true, default_value_t = exitpool_agent::DEFAULT_MAX_STREAMS)]
    pub bare_streams: u32,
    /// Internal: run as the bare relay's entry hop, towards this exit hop.
    #[arg(long, hide = true, requires = "bare_cert")]
    pub bare_entry: Option<SocketAddr>,
    /// Internal: the exit hop's certificate (hex DER), for `--bare-entry`.
    #[arg(long, hide = true)]
    pub bare_cert: Option<String>,
    /// Internal: the hops speak a CONNECT exchange (see the module's notes).
    #[arg(long, hide = true)]
    pub bare_connect: bool,
    /// Internal: the hops carry UDP datagrams ([`datagrams`]).
    #[arg(long, hide = true)]
    pub bare_udp: bool,
}

impl HopArgs {
    /// Whether this process is to be a hop rather than the load test.
    pub fn is_hop(&self) -> bool {
        self.bare_exit.is_some() || self.bare_entry.is_some()
    }
}

/// Runs this process as one hop of the bare relay, on one thread like the agent
/// and the benchmark gateway, until it is killed.
pub fn run_hop(args: &HopArgs) -> ExitCode {
    let hop = async {
        match (args.bare_exit, args.bare_entry, &args.bare_cert) {
            (Some(target), _, _) => exit(target, args.bare_streams, args).await,
            (None, Some(exit), Some(cert)) if args.bare_udp => datagrams::entry(exit, cert).await,
            (None, Some(exit), Some(cert)) => entry(exit, cert, args.bare_connect).await,
            _ => bail!("--bare-entry needs --bare-cert"),
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(hop));
    if let Err(error) = result {
        eprintln!("loadtest bare relay hop: {error:#}");
    }
    ExitCode::FAILURE
}

/// Relays one TCP connection over one QUIC stream until both ends are done.
async fn carry(mut tcp: TcpStream, send: quinn::SendStream, recv: quinn::RecvStream) {
    let _ = tcp.set_nodelay(true);
    let (read, write) = tcp.split();
    let counters = LiveCounters::default();
    let _ = relay(read, write, send, recv, IDLE, &counters, &Unlimited).await;
}

/// The exit's side of a CONNECT exchange: reads the stream's Open (a length
/// byte and the target's address), dials it if it is this hop's one target,
/// and answers whether that worked.
async fn dial_as_asked(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    target: SocketAddr,
) -> Option<TcpStream> {
    let mut len = [0u8; 1];
    recv.read_exact(&mut len).await.ok()?;
    let mut name = vec![0u8; len[0].into()];
    recv.read_exact(&mut name).await.ok()?;
    let asked = std::str::from_utf8(&name).ok()?.parse::<SocketAddr>().ok();
    let tcp = match asked {
        Some(asked) if asked == target => TcpStream::connect(asked).await.ok(),
        _ => None,
    };
    let answer = if tcp.is_some() { OPENED } else { REFUSED };
    send.write_all(&[answer]).await.ok()?;
    tcp
}

/// The entry's side of a CONNECT exchange: reads the client's head, opens a
/// stream whose Open names the target, and answers `200` once the exit has
/// dialled it (`502` if it could not, `400` if the head is not a CONNECT).
async fn connect_exchange(
    tcp: &mut TcpStream,
    connection: &quinn::Connection,
) -> Option<(quinn::SendStream, quinn::RecvStream)> {
    let mut head = [0u8; HEAD_MAX];
    let mut filled = 0;
    let end = loop {
        let n = tcp.read(&mut head[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        if let Some(end) = head_end(&head[..filled]) {
            break end;
        }
        if filled == HEAD_MAX {
            return None;
        }
    };
    let target = std::str::from_utf8(&head[..end])
        .ok()
        .and_then(|text| text.strip_prefix("CONNECT "))
        .and_then(|rest| rest.split(' ').next())
        .filter(|target| target.len() <= usize::from(u8::MAX));
    let Some(target) = target else {
        let _ = tcp.write_all(BAD_REQUEST).await;
        return None;
    };
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    let mut open = Vec::with_capacity(1 + target.len() + filled - end);
    open.push(target.len() as u8);
    open.extend_from_slice(target.as_bytes());
    // Whatever the client sent after its head goes on behind the Open.
    open.extend_from_slice(&head[end..filled]);
    send.write_all(&open).await.ok()?;
    let mut answer = [REFUSED];
    let _ = recv.read_exact(&mut answer).await;
    if answer[0] != OPENED {
        let _ = tcp.write_all(BAD_GATEWAY).await;
        return None;
    }
    tcp.write_all(ESTABLISHED).await.ok()?;
    Some((send, recv))
}

/// The exit hop: prints `ready <udp address> <certificate, hex DER>`, then
/// dials `target` for every stream of every connection, after its Open when
/// the hops speak CONNECT; or, carrying datagrams, relays each connection's
/// DATAGRAM frames to `target` ([`datagrams`]).
async fn exit(target: SocketAddr, streams: u32, args: &HopArgs) -> Result<()> {
    let (speak_connect, carry_datagrams) = (args.bare_connect, args.bare_udp);
    let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let cert = generated.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    server.transport_config(Arc::new(transport(streams)));
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let endpoint = udp::endpoint(local, quinn::EndpointConfig::default(), Some(server))?;
    println!("{READY}{} {}", endpoint.local_addr()?, hex::encode(&cert));
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            if carry_datagrams {
                return datagrams::exit_connection(connection, target).await;
            }
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    let tcp = if speak_connect {
                        let exchange = dial_as_asked(&mut send, &mut recv, target);
                        tokio::time::timeout(STEP, exchange).await.ok().flatten()
                    } else {
                        TcpStream::connect(target).await.ok()
                    };
                    if let Some(tcp) = tcp {
                        carry(tcp, send, recv).await;
                    }
                });
            }
        });
    }
    Ok(())
}

/// `n` idle QUIC connections to the exit at `exit`, each from its own
/// endpoint on `bind(i)`, keeping alive every `keep_alive`, as agents hold
/// them to a gateway.
pub async fn idle_clients(
    exit: SocketAddr,
    cert_hex: &str,
    n: usize,
    bind: impl Fn(usize) -> IpAddr,
    keep_alive: Duration,
) -> Result<Vec<(quinn::Endpoint, quinn::Connection)>> {
    let mut client = client_config(cert_hex)?;
    let mut transport = transport(0);
    transport.keep_alive_interval(Some(keep_alive));
    client.transport_config(Arc::new(transport));
    let mut clients = Vec::with_capacity(n);
    // Handshakes in batches, so they arrive at a steady rate.
    for first in (0..n).step_by(64) {
        let batch = (first..n.min(first + 64)).map(|i| connect(exit, client.clone(), bind(i)));
        for result in join_all(batch).await {
            clients.push(result?);
        }
    }
    Ok(clients)
}

/// The entry hop: connects to the exit at `exit`, trusting `cert_hex`, prints
/// `ready <tcp address>`, then carries every accepted connection on a stream,
/// after a CONNECT exchange when `speak_connect` is set.
async fn entry(exit: SocketAddr, cert_hex: &str, speak_connect: bool) -> Result<()> {
    let local = IpAddr::from([127, 0, 0, 1]);
    let (_endpoint, connection) = connect(exit, client_config(cert_hex)?, local).await?;
    let listener = TcpListener::bind(SocketAddr::new(local, 0)).await?;
    println!("{READY}{}", listener.local_addr()?);
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let connection = connection.clone();
        tokio::spawn(async move {
            let stream = if speak_connect {
                let exchange = connect_exchange(&mut tcp, &connection);
                tokio::time::timeout(STEP, exchange).await.ok().flatten()
            } else {
                connection.open_bi().await.ok()
            };
            if let Some((send, recv)) = stream {
                carry(tcp, send, recv).await;
            }
        });
    }
}

/// The bare relay's two processes: this program run as its entry and exit hops.
pub struct BareRelay {
    entry: Process,
    exit: BareExit,
    listen: SocketAddr,
    connect: bool,
}

impl BareRelay {
    pub async fn start(target: SocketAddr) -> Result<BareRelay> {
        Self::start_with(target, false).await
    }

    /// The bare relay with a CONNECT exchange (see the module's notes).
    pub async fn speaking_connect(target: SocketAddr) -> Result<BareRelay> {
        Self::start_with(target, true).await
    }

    async fn start_with(target: SocketAddr, connect: bool) -> Result<BareRelay> {
        let extra: &[&str] = if connect { &["--bare-connect"] } else { &[] };
        // As many streams as an agent takes by default.
        let streams = exitpool_agent::DEFAULT_MAX_STREAMS;
        let exit = BareExit::start_with(target, streams, extra).await?;
        let exit_addr = exit.addr.to_string();
        let mut args = vec!["--bare-entry", &exit_addr, "--bare-cert", &exit.cert_hex];
        args.extend_from_slice(extra);
        let (entry, ready) = start_hop(&args).await.context("bare relay entry hop")?;
        Ok(BareRelay {
            entry,
            exit,
            listen: ready.parse().context("the entry hop's address")?,
            connect,
        })
    }

    pub fn path(&self) -> Route {
        match self.connect {
            true => Route::Proxy {
                addr: self.listen,
                auth: None,
            },
            false => Route::Relay(self.listen),
        }
    }

    /// The entry's and the exit's process ids: the entry stands where the
    /// gateway does, the exit where the agent does.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.entry.pid(), self.exit.pid()]
    }
}
