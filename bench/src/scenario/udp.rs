//! udp: datagrams to a local UDP echo through SOCKS5 UDP ASSOCIATE and
//! through MASQUE CONNECT-UDP over HTTP/3 (the same gateway and agent
//! process, QUIC tunnel, datagrams as DATAGRAM frames), against the echo
//! directly and the bare two-hop relay of datagrams over quinn
//! ([`crate::bare_relay::datagrams`], the floor), in one run. Each path is
//! measured three ways, one path after the other:
//!
//! - latency: [`PINGS`] round trips one at a time, p50 and p99;
//! - rate: [`WINDOW`] datagrams in flight for the scenario's time, round
//!   trips a second (a datagram unanswered for [`STALL`] counts as lost and
//!   is replaced);
//! - overload: [`BURST`] datagrams sent as fast as the client can, with no
//!   wait for answers; how many the echo saw, how many came back, and where
//!   the rest were counted: the gateway's `exitpool_udp_datagrams_dropped_total`
//!   by cause, the agent's per-flow drop count (its `UDP flow done` debug
//!   line), and the kernel's UDP receive-buffer drops (`RcvbufErrors` in
//!   /proc/net/snmp, machine-wide).
//!
//! The agent runs with `--udp-packets-per-second` lifted, so the path is
//! measured and not the per-flow cap (2,000 by default). The MASQUE client
//! is the launcher's ([`exitpool_launcher::masque`], the one the end-to-end
//! tests use): one QUIC connection to `--listen-h3`, one CONNECT-UDP request,
//! HTTP Datagrams both ways.

use crate::bare_relay::datagrams::BareUdpRelay;
use crate::cli::Bench;
use crate::client::STEP;
use crate::launch::{pin_of, GatewayProcess, PASSWORD, TOKEN, USER};
use crate::measure::{cpu_of, percentile};
use crate::report::Report;
use crate::scenario::rate_h2::{certificate, Tls};
use anyhow::{bail, ensure, Context, Result};
use exitpool_launcher::masque::{MasqueClient, UdpTunnel};
use exitpool_launcher::ports::TunnelPort;
use exitpool_launcher::{Launch, Process};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Bytes of each datagram's payload (a sequence number, then padding).
const PAYLOAD: usize = 64;
/// Round trips one at a time, for the latency figures.
pub const PINGS: usize = 2_000;
/// Datagrams in flight in the rate phase.
pub const WINDOW: usize = crate::cli::UDP_WINDOW;
/// How long a datagram in flight may go unanswered before it counts as lost.
pub const STALL: Duration = Duration::from_millis(200);
/// Datagrams sent at once in the overload phase.
pub const BURST: u64 = crate::cli::UDP_BURST;
/// The agent's per-flow datagram budget in this scenario: out of the way.
const AGENT_PACKETS_PER_SECOND: &str = "10000000";

/// A UDP echo on 127.0.0.1 that counts what it received.
async fn start_echo() -> Result<(SocketAddr, Arc<AtomicU64>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            counted.fetch_add(1, Ordering::Relaxed);
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    Ok((addr, received))
}

/// How the client reaches the echo.
enum Way {
    /// Datagrams as they are: to the echo itself, or to the bare relay's entry.
    Plain { socket: UdpSocket, to: SocketAddr },
    /// SOCKS5 UDP: each datagram behind RFC 1928's header naming the echo,
    /// to the relay the association answered; the association lives as long
    /// as `_control`.
    Socks {
        socket: UdpSocket,
        relay: SocketAddr,
        header: Vec<u8>,
        _control: TcpStream,
    },
    /// MASQUE: a CONNECT-UDP request to the echo on the gateway's HTTP/3
    /// port, each payload an HTTP Datagram.
    Masque(Box<Masque>),
}

/// A CONNECT-UDP tunnel and the client whose connection carries it.
struct Masque {
    tunnel: UdpTunnel,
    client: MasqueClient,
}

impl Way {
    async fn plain(to: SocketAddr) -> Result<Way> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        Ok(Way::Plain { socket, to })
    }

    /// A SOCKS5 UDP association on the gateway's customer port `proxy`
    /// towards the IPv4 `echo`.
    async fn socks(proxy: SocketAddr, echo: SocketAddr) -> Result<Way> {
        let IpAddr::V4(echo_ip) = echo.ip() else {
            bail!("the echo is on IPv4");
        };
        let mut control = tokio::time::timeout(STEP, TcpStream::connect(proxy))
            .await
            .context("SOCKS5 connect timeout")??;
        let mut request = vec![5, 1, 2, 1, USER.len() as u8];
        request.extend_from_slice(USER.as_bytes());
        request.push(PASSWORD.len() as u8);
        request.extend_from_slice(PASSWORD.as_bytes());
        // UDP ASSOCIATE from an address not yet known.
        request.extend_from_slice(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        control.write_all(&request).await?;
        let mut answer = [0u8; 2 + 2 + 10];
        tokio::time::timeout(STEP, control.read_exact(&mut answer))
            .await
            .context("SOCKS5 answer timeout")??;
        ensure!(
            answer[..7] == [5, 2, 1, 0, 5, 0, 0] && answer[7] == 1,
            "UDP ASSOCIATE refused: {answer:?}"
        );
        let relay_ip = Ipv4Addr::new(answer[8], answer[9], answer[10], answer[11]);
        let relay = SocketAddr::from((relay_ip, u16::from_be_bytes([answer[12], answer[13]])));
        let mut header = vec![0, 0, 0, 1];
        header.extend_from_slice(&echo_ip.octets());
        header.extend_from_slice(&echo.port().to_be_bytes());
        Ok(Way::Socks {
            socket: UdpSocket::bind("127.0.0.1:0").await?,
            relay,
            header,
            _control: control,
        })
    }

    /// A CONNECT-UDP request to the IPv4 `echo` on the gateway's HTTP/3
    /// port `h3`, whose certificate `tls` holds.
    async fn masque(h3: SocketAddr, tls: &Tls, echo: SocketAddr) -> Result<Way> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(tls.roots.clone())
        .with_no_client_auth();
        let client = MasqueClient::connect(h3, "127.0.0.1", config, STEP).await?;
        let credentials = Some((USER, PASSWORD));
        let tunnel = client
            .connect_udp(&echo.ip().to_string(), echo.port(), credentials)
            .await?;
        Ok(Way::Masque(Box::new(Masque { tunnel, client })))
    }

    /// Ends the way: for MASQUE the request stream's end (the flow's end at
    /// the gateway), then the connection; for SOCKS5 the control connection.
    async fn end(self) {
        if let Way::Masque(masque) = self {
            masque.tunnel.close().await;
            masque.client.close().await;
        }
    }

    async fn send(&self, payload: &[u8]) -> Result<()> {
        match self {
            Way::Plain { socket, to } => socket.send_to(payload, to).await?,
            Way::Socks {
                socket,
                relay,
                header,
                ..
            } => {
                let mut datagram = Vec::with_capacity(header.len() + payload.len());
                datagram.extend_from_slice(header);
                datagram.extend_from_slice(payload);
                socket.send_to(&datagram, relay).await?
            }
            Way::Masque(masque) => {
                masque.tunnel.send(payload)?;
                payload.len()
            }
        };
        Ok(())
    }

    /// The next payload that arrives, at the start of `buf`; its length.
    async fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        match self {
            Way::Plain { socket, .. } => Ok(socket.recv_from(buf).await?.0),
            Way::Socks { socket, header, .. } => {
                let (len, _) = socket.recv_from(buf).await?;
                ensure!(len >= header.len(), "a SOCKS5 datagram of {len} bytes");
                buf.copy_within(header.len()..len, 0);
                Ok(len - header.len())
            }
            Way::Masque(masque) => {
                let Some(payload) = masque.tunnel.recv().await else {
                    bail!("the MASQUE tunnel ended, or was silent for {STEP:?}");
                };
                let len = payload.len().min(buf.len());
                buf[..len].copy_from_slice(&payload[..len]);
                Ok(len)
            }
        }
    }
}

fn payload(seq: u64) -> [u8; PAYLOAD] {
    let mut out = [0x5a; PAYLOAD];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out
}

fn seq_of(buf: &[u8], len: usize) -> Option<u64> {
    (len == PAYLOAD).then(|| u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")))
}

/// One path's figures.
#[derive(Default)]
struct Run {
    rtts: Vec<Duration>,
    pings_lost: usize,
    per_second: f64,
    /// CPU seconds of the path's processes (not this one) in the rate phase.
    rate_cpu: Option<f64>,
    rate_done: u64,
    rate_lost: u64,
    sent: u64,
    echoed: u64,
    returned: u64,
    burst_secs: f64,
    /// Where the overload's drops were counted, by place and cause.
    drops: BTreeMap<String, u64>,
}

/// Round trips one at a time; a datagram unanswered for [`STALL`] is lost.
async fn latency(way: &Way, run: &mut Run, pings: usize) -> Result<()> {
    let mut buf = vec![0u8; 2048];
    for i in 0..pings as u64 {
        let started = Instant::now();
        way.send(&payload(i)).await?;
        let answered = tokio::time::timeout(STALL, async {
            loop {
                let len = way.recv(&mut buf).await?;
                if seq_of(&buf, len) == Some(i) {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        })
        .await;
        match answered {
            Ok(result) => {
                result?;
                run.rtts.push(started.elapsed());
            }
            Err(_) => run.pings_lost += 1,
        }
    }
    run.rtts.sort();
    Ok(())
}

/// [`WINDOW`] datagrams in flight for `time`; round trips a second.
async fn rate(way: &Way, run: &mut Run, time: Duration) -> Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut next = 1u64 << 32;
    for _ in 0..WINDOW {
        way.send(&payload(next)).await?;
        next += 1;
    }
    let (mut done, started) = (0u64, Instant::now());
    while started.elapsed() < time {
        match tokio::time::timeout(STALL, way.recv(&mut buf)).await {
            Ok(len) => {
                if seq_of(&buf, len?).is_some_and(|seq| seq >= 1 << 32) {
                    done += 1;
                    way.send(&payload(next)).await?;
                    next += 1;
                }
            }
            // Nothing for a while: what is in flight is lost; a new window.
            Err(_) => {
                run.rate_lost += WINDOW as u64;
                for _ in 0..WINDOW {
                    way.send(&payload(next)).await?;
                    next += 1;
                }
            }
        }
    }
    run.per_second = done as f64 / started.elapsed().as_secs_f64();
    run.rate_done = done;
    Ok(())
}

/// [`BURST`] datagrams as fast as they go, answers counted until [`STALL`]
/// passes without one after the last is sent.
async fn overload(way: &Way, run: &mut Run, echoed: &AtomicU64) -> Result<()> {
    let echoed_before = echoed.load(Ordering::Relaxed);
    let sending = AtomicBool::new(true);
    let started = Instant::now();
    let send_all = async {
        for i in 0..BURST {
            way.send(&payload(2 << 32 | i)).await?;
        }
        run.burst_secs = started.elapsed().as_secs_f64();
        sending.store(false, Ordering::Relaxed);
        Ok::<_, anyhow::Error>(())
    };
    let count_all = async {
        let mut buf = vec![0u8; 2048];
        let mut returned = 0u64;
        loop {
            match tokio::time::timeout(STALL, way.recv(&mut buf)).await {
                Ok(len) => {
                    if seq_of(&buf, len?).is_some_and(|seq| seq >> 32 == 2) {
                        returned += 1;
                    }
                }
                Err(_) if !sending.load(Ordering::Relaxed) => {
                    return Ok::<_, anyhow::Error>(returned)
                }
                Err(_) => {}
            }
        }
    };
    let (sent, returned) = tokio::join!(send_all, count_all);
    sent?;
    run.sent = BURST;
    run.returned = returned?;
    run.echoed = echoed.load(Ordering::Relaxed) - echoed_before;
    Ok(())
}

/// The kernel's UDP receive-buffer drops so far, machine-wide.
fn kernel_drops() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The gateway's UDP drop counters by cause, from `/metrics`.
async fn gateway_drops(admin: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let text = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    let prefix = "exitpool_udp_datagrams_dropped_total{cause=\"";
    Ok(text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix)?;
            let (cause, value) = rest.split_once("\"} ")?;
            Some((cause.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// The agent's `UDP flow done` lines so far, and the datagrams those flows
/// dropped.
fn agent_flows(agent: &Process) -> (usize, u64) {
    let lines = agent.lines();
    let done: Vec<_> = lines
        .iter()
        .filter(|line| line.contains("UDP flow done"))
        .collect();
    let dropped = done
        .iter()
        .filter_map(|line| {
            let rest = &line[line.find("dropped=")? + "dropped=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum();
    (done.len(), dropped)
}

/// Runs the three phases over `way`.
/// `pids` are the path's processes, whose CPU the rate phase reports.
async fn measure(
    way: &Way,
    pids: &[u32],
    echoed: &AtomicU64,
    time: Duration,
    pings: usize,
) -> Result<Run> {
    let mut run = Run::default();
    latency(way, &mut run, pings).await?;
    let cpu0 = cpu_of(pids)?;
    rate(way, &mut run, time).await?;
    let cpu1 = cpu_of(pids)?;
    // cpu_of's first figure is this process's own.
    let cpu = cpu1.iter().zip(&cpu0).skip(1).map(|(a, b)| a - b).sum();
    run.rate_cpu = (!pids.is_empty()).then_some(cpu);
    let kernel = kernel_drops();
    overload(way, &mut run, echoed).await?;
    let kernel = kernel_drops().saturating_sub(kernel);
    run.drops
        .insert("kernel: UDP receive buffers".into(), kernel);
    Ok(run)
}

/// The gateway (SOCKS5 on its customer port, MASQUE on `h3`, with `tls`'s
/// certificate) and one agent process over QUIC, the agent's per-flow
/// budget lifted and its flow lines logged.
async fn start_exitpool(
    bench: &Bench,
    tls: &Tls,
    h3: SocketAddr,
) -> Result<(GatewayProcess, Process, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("gateway");
    std::fs::create_dir_all(&state)?;
    let pin = pin_of(&bench.bins.gateway, &state).await?;
    let threads = bench.runs.gateway_threads;
    let h3 = h3.to_string();
    let extra = [
        "--tls-cert",
        tls.cert.as_str(),
        "--tls-key",
        tls.key.as_str(),
        "--listen-h3",
        h3.as_str(),
    ];
    let gateway =
        GatewayProcess::start_with(&bench.bins.gateway, &state, 64, threads, &extra).await?;
    let agent = Launch::new(&bench.bins.agent)
        .args(["--gateway", &gateway.tunnel().to_string(), "--pin", &pin])
        .args([
            "--transport",
            "quic",
            "--bind",
            "127.0.1.1",
            "--allow-private",
        ])
        .args(["--udp-packets-per-second", AGENT_PACKETS_PER_SECOND])
        .arg("--state-dir")
        .arg(dir.path().join("agent"))
        .env("EXITPOOL_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "warn,exitpool_agent::udp=debug")
        .spawn()?;
    gateway.wait_agents(1, STEP).await?;
    Ok((gateway, agent, dir))
}

/// Measures `way` through the gateway and the agent, then ends it and adds
/// where the overload's drops were counted: the gateway's causes (what they
/// counted during this way), and the agent's flow once its line is logged.
async fn measure_exitpool(
    way: Way,
    gateway: &GatewayProcess,
    agent: &Process,
    echoed: &AtomicU64,
    time: Duration,
    pings: usize,
) -> Result<Run> {
    let before = gateway_drops(gateway.admin()).await?;
    let (flows_before, agent_before) = agent_flows(agent);
    let pids = [gateway.pid(), agent.pid()];
    let mut run = measure(&way, &pids, echoed, time, pings).await?;
    // The way's end ends its flow at the agent, which then logs the flow's
    // counts.
    way.end().await;
    let flow_done = crate::launch::wait_until(STEP, "the agent's flow line", || async {
        agent_flows(agent).0 > flows_before
    })
    .await;
    let after = gateway_drops(gateway.admin()).await?;
    for (cause, count) in after {
        let count = count - before.get(&cause).copied().unwrap_or(0);
        run.drops.insert(format!("gateway: {cause}"), count);
    }
    if flow_done.is_ok() {
        let dropped = agent_flows(agent).1 - agent_before;
        run.drops.insert("agent: flow".into(), dropped);
    }
    Ok(run)
}

/// Runs the paths one after the other and adds their rows to `report`.
pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let time = bench.sizes.rate_time;
    let pings = if bench.sizes.rate_time < Duration::from_secs(2) {
        PINGS / 10
    } else {
        PINGS
    };
    let (echo, echoed) = start_echo().await?;

    eprintln!("   direct");
    let direct = measure(&Way::plain(echo).await?, &[], &echoed, time, pings).await?;

    eprintln!("   bare UDP relay");
    let relay = BareUdpRelay::start(echo).await?;
    let way = Way::plain(relay.listen).await?;
    let bare = measure(&way, &relay.pids(), &echoed, time, pings).await?;
    drop(relay);

    let tls = certificate()?;
    // A port number free on UDP for --listen-h3.
    let h3 = TunnelPort::hold()?.release();
    let (mut gateway, agent, _dir) = start_exitpool(bench, &tls, h3).await?;
    eprintln!("   SOCKS5 UDP through the gateway and an agent (QUIC)");
    let crate::client::Route::Proxy { addr: proxy, .. } = gateway.path() else {
        bail!("the gateway's path is a proxy route");
    };
    let way = Way::socks(proxy, echo).await?;
    let socks = measure_exitpool(way, &gateway, &agent, &echoed, time, pings).await?;
    eprintln!("   MASQUE CONNECT-UDP through the same gateway and agent");
    let way = Way::masque(h3, &tls, echo).await?;
    let masque = measure_exitpool(way, &gateway, &agent, &echoed, time, pings).await?;
    drop(agent);
    let _ = gateway.stop(Duration::from_secs(10)).await;

    let paths = Paths {
        direct: &direct,
        socks: &socks,
        masque: &masque,
        bare: &bare,
    };
    add_rows(report, &paths, time, pings);
    Ok(())
}

/// The runs a report is made of.
struct Paths<'a> {
    direct: &'a Run,
    socks: &'a Run,
    masque: &'a Run,
    bare: &'a Run,
}

fn add_rows(report: &mut Report, paths: &Paths, time: Duration, pings: usize) {
    type Figure = (&'static str, &'static str, fn(&Run) -> Option<f64>);
    let figures: [Figure; 10] = [
        ("round trip, p50", "ms", |r| Some(percentile(&r.rtts, 0.5))),
        ("round trip, p99", "ms", |r| Some(percentile(&r.rtts, 0.99))),
        ("round trips lost of the pings", "count", |r| {
            Some(r.pings_lost as f64)
        }),
        ("round trips per second, 32 in flight", "dgram/s", |r| {
            Some(r.per_second)
        }),
        ("lost in the rate phase", "count", |r| {
            Some(r.rate_lost as f64)
        }),
        ("CPU per round trip, the path's processes", "CPU-µs", |r| {
            Some(r.rate_cpu? / r.rate_done.max(1) as f64 * 1e6)
        }),
        ("overload: burst sent at", "dgram/s", |r| {
            Some(r.sent as f64 / r.burst_secs)
        }),
        ("overload: reached the echo", "count", |r| {
            Some(r.echoed as f64)
        }),
        ("overload: came back", "count", |r| Some(r.returned as f64)),
        ("overload: lost", "%", |r| {
            Some(100.0 * (1.0 - r.returned as f64 / r.sent.max(1) as f64))
        }),
    ];
    let ways = [("SOCKS5 UDP", paths.socks), ("MASQUE", paths.masque)];
    // Each figure's two ways side by side, each against the same direct
    // and bare relay runs.
    for (metric, unit, figure) in figures {
        for (way, run) in ways {
            let metric = format!("{way}: {metric}");
            report.row("udp", metric, unit, figure(paths.direct), figure(run), None);
            report.with_bare_relay(figure(paths.bare));
        }
    }
    // The causes that counted nothing are left out (the agent's never).
    let counted = |(place, count): &(&String, &u64)| **count > 0 || place.starts_with("agent");
    for (way, run) in ways {
        for (place, count) in run.drops.iter().filter(counted) {
            report.row(
                "udp",
                format!("{way}: overload drops, {place}"),
                "count",
                None,
                Some(*count as f64),
                None,
            );
        }
    }
    for (name, run) in [("direct", paths.direct), ("bare relay", paths.bare)] {
        let kernel = run.drops.values().sum::<u64>();
        report.notes.push(format!(
            "udp, {name}: the kernel counted {kernel} UDP receive-buffer drops during its overload"
        ));
    }
    report.notes.push(format!(
        "udp: a {PAYLOAD}-byte payload each way; exitpool = one gateway and one agent process over QUIC (DATAGRAM frames), the agent's --udp-packets-per-second {AGENT_PACKETS_PER_SECOND}, reached two ways one after the other: SOCKS5 UDP ASSOCIATE on the customer port, and MASQUE CONNECT-UDP over HTTP/3 on --listen-h3 (the launcher's client: one QUIC connection, one request, HTTP Datagrams); bare relay = {}; {pings} pings one at a time (lost after {STALL:?}); {WINDOW} in flight for {:.1} s; overload = {BURST} sent without waiting; kernel drops are machine-wide (RcvbufErrors), gateway causes that counted nothing are left out; quinn drops the oldest DATAGRAM frame when its send buffer is full, uncounted (for MASQUE, in the client's QUIC connection too)",
        crate::bare_relay::datagrams::NOTE,
        time.as_secs_f64(),
    ));
}
