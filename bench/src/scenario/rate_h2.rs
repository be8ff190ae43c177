//! rate, over the HTTPS proxy port: fresh tunnels a second when each is a new
//! TLS connection speaking HTTP/1.1 (`CONNECT`, as a browser without HTTP/2
//! opens one per request in flight) against each being a new stream on one
//! HTTP/2 connection ([`H2_STREAMS`] at once). Both drive the same gateway
//! (`--tls-cert`) and agent process, one path after the other in each round,
//! with the exchange of the plain `rate` rows (a 1 KiB request, a 1 KiB
//! answer, the target closing first). Called by [`super::rate`].

use crate::cli::Bench;
use crate::client::{exchange, read_head, start_target, STEP};
use crate::launch::Processes;
use crate::measure::{cpu_of, percentile};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Streams at once on the HTTP/2 connection, and client loops on HTTP/1.1.
pub const H2_STREAMS: usize = 100;
/// Bytes each way per tunnel, as in `rate`.
const EXCHANGE: u64 = 1024;

/// One path's figures over the rounds.
#[derive(Default)]
struct Run {
    times: Vec<Duration>,
    secs: f64,
    /// CPU seconds of the gateway and the agent.
    cpu: f64,
    errors: BTreeMap<String, usize>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.times.len() as f64 / self.secs
    }
    fn cpu_micros(&self) -> f64 {
        self.cpu / self.times.len().max(1) as f64 * 1e6
    }
    fn add(&mut self, other: Run) {
        self.times.extend(other.times);
        self.secs += other.secs;
        self.cpu += other.cpu;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

/// The gateway's TLS settings and a client trusting its certificate (also
/// the udp scenario's, for MASQUE).
pub(crate) struct Tls {
    _dir: tempfile::TempDir,
    pub(crate) cert: String,
    pub(crate) key: String,
    pub(crate) roots: rustls::RootCertStore,
}

pub(crate) fn certificate() -> Result<Tls> {
    let dir = tempfile::tempdir()?;
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, pair.cert.pem())?;
    std::fs::write(&key, pair.signing_key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pair.cert.der().clone())?;
    Ok(Tls {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        _dir: dir,
        roots,
    })
}

fn connector(roots: &rustls::RootCertStore, alpn: &[u8]) -> Result<tokio_rustls::TlsConnector> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn tls_to(
    connector: &tokio_rustls::TlsConnector,
    proxy: SocketAddr,
    source: IpAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = tokio::time::timeout(STEP, socket.connect(proxy))
        .await
        .context("connect timeout")??;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(proxy.ip().into());
    Ok(tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .context("TLS handshake timeout")??)
}

/// One tunnel over HTTP/1.1: a new TCP and TLS connection, `CONNECT`, the exchange.
async fn h1_tunnel(
    connector: &tokio_rustls::TlsConnector,
    proxy: SocketAddr,
    source: IpAddr,
    auth: &str,
    target: SocketAddr,
) -> Result<()> {
    let mut tls = tls_to(connector, proxy, source).await?;
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await?;
    tokio::time::timeout(STEP, read_head(&mut tls))
        .await
        .context("CONNECT answer timeout")??;
    tokio::time::timeout(STEP, exchange(&mut tls, EXCHANGE))
        .await
        .context("exchange timeout")??;
    Ok(())
}

/// One tunnel over HTTP/2: a new `CONNECT` stream on the shared connection.
async fn h2_tunnel(
    client: &h2::client::SendRequest<Bytes>,
    auth: &str,
    target: SocketAddr,
) -> Result<()> {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .header("proxy-authorization", auth)
        .body(())?;
    let mut client = tokio::time::timeout(STEP, client.clone().ready())
        .await
        .context("stream slot timeout")??;
    let (response, mut send) = client.send_request(request, false)?;
    let response = tokio::time::timeout(STEP, response)
        .await
        .context("CONNECT answer timeout")??;
    if response.status() != http::StatusCode::OK {
        let code = response.headers().get("x-exitpool-error");
        bail!("CONNECT answered {} {code:?}", response.status());
    }
    let mut request = vec![b'E'];
    request.extend_from_slice(&EXCHANGE.to_be_bytes());
    request.extend(std::iter::repeat_n(0x5a, EXCHANGE as usize));
    send.send_data(Bytes::from(request), false)?;
    let mut body = response.into_body();
    let mut got = 0u64;
    let reading = async {
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            got += data.len() as u64;
        }
        Ok::<_, h2::Error>(())
    };
    tokio::time::timeout(STEP, reading)
        .await
        .context("exchange timeout")??;
    if got != EXCHANGE {
        bail!("answer of {got} bytes, not {EXCHANGE}");
    }
    // The target has closed; the client's end of data ends the tunnel.
    send.send_data(Bytes::new(), true)?;
    Ok(())
}

/// Runs `loops` client loops of `tunnel` until `time` is up.
async fn drive<F, Fut>(loops: usize, time: Duration, pids: &[u32], tunnel: F) -> Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let cpu0 = cpu_of(pids)?;
    let t0 = Instant::now();
    let deadline = t0 + time;
    let tasks: Vec<_> = (0..loops)
        .map(|i| {
            let tunnel = tunnel.clone();
            tokio::spawn(async move {
                let mut run = Run::default();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match tunnel(i).await {
                        Ok(()) => run.times.push(started.elapsed()),
                        Err(error) => *run.errors.entry(format!("{error:#}")).or_default() += 1,
                    }
                }
                run
            })
        })
        .collect();
    let mut run = Run::default();
    for task in tasks {
        run.add(task.await?);
    }
    run.secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(pids)?;
    // cpu_of's first figure is this process's own.
    run.cpu = cpu1.iter().zip(&cpu0).skip(1).map(|(a, b)| a - b).sum();
    Ok(run)
}

/// Runs both paths for the scenario's rounds and adds their rows to `report`.
pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let sizes = &bench.sizes;
    let target = start_target().await?;
    let tls = certificate()?;
    let extra = [
        "--tls-cert",
        tls.cert.as_str(),
        "--tls-key",
        tls.key.as_str(),
        "--h2-max-streams",
        "100",
        // The HTTP/1.1 path's handshakes are what is measured, not refused.
        "--max-tls-handshakes-per-ip",
        "1000000",
    ];
    // Room at the agent for every stream at once (and the tunnels still
    // closing), so its cap is not what is measured.
    let max_streams = sizes
        .rate_max_streams
        .unwrap_or(exitpool_agent::DEFAULT_MAX_STREAMS)
        .max(2 * H2_STREAMS as u32);
    let processes = Processes::start_with(
        &bench.bins,
        bench.runs.gateway_threads,
        1,
        4096,
        Some(max_streams),
        "quic",
        &extra,
    )
    .await?;
    let (proxy, auth) = match processes.path() {
        crate::client::Route::Proxy {
            addr,
            auth: Some(auth),
        } => (addr, auth),
        _ => bail!("the gateway's path is a proxy route with credentials"),
    };
    let auth: Arc<str> = auth.into();
    let pids = processes.pids();
    let h1 = connector(&tls.roots, b"http/1.1")?;
    let h2_connector = connector(&tls.roots, b"h2")?;
    let (mut h1_total, mut h2_total) = (Run::default(), Run::default());
    for round in 1..=sizes.rate_rounds {
        eprintln!("   round {round}: HTTPS proxy, HTTP/1.1 then HTTP/2");
        let (h1, auth1) = (h1.clone(), auth.clone());
        let run = drive(H2_STREAMS, sizes.rate_time, &pids, move |i| {
            let (h1, auth) = (h1.clone(), auth1.clone());
            // Clients from 127.0.3.x, as in `rate`.
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 3, (i % 250 + 1) as u8));
            async move { h1_tunnel(&h1, proxy, source, &auth, target).await }
        })
        .await?;
        eprintln!(
            "   https/1.1  {:.0} tunnels/s, {:.0} CPU-µs each, errors {:?}",
            run.per_second(),
            run.cpu_micros(),
            run.errors
        );
        h1_total.add(run);
        let tls = tls_to(
            &h2_connector,
            proxy,
            IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1)),
        )
        .await?;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(256 * 1024)
            .handshake::<_, Bytes>(tls)
            .await?;
        let driver = tokio::spawn(connection);
        let auth2 = auth.clone();
        let run = drive(H2_STREAMS, sizes.rate_time, &pids, move |_| {
            let (client, auth) = (client.clone(), auth2.clone());
            async move { h2_tunnel(&client, &auth, target).await }
        })
        .await?;
        driver.abort();
        eprintln!(
            "   https/2    {:.0} tunnels/s, {:.0} CPU-µs each, errors {:?}",
            run.per_second(),
            run.cpu_micros(),
            run.errors
        );
        h2_total.add(run);
    }
    processes.stop().await;
    for (name, run) in [("HTTP/1.1", &mut h1_total), ("HTTP/2", &mut h2_total)] {
        if run.times.is_empty() {
            bail!(
                "HTTPS proxy over {name}: no tunnel completed; errors {:?}",
                run.errors
            );
        }
        run.times.sort();
        let rows = [
            ("tunnels per second", "conn/s", run.per_second()),
            (
                "CPU per tunnel, gateway and agent",
                "CPU-µs",
                run.cpu_micros(),
            ),
            ("tunnel time, p50", "ms", percentile(&run.times, 0.5)),
            ("tunnel time, p99", "ms", percentile(&run.times, 0.99)),
            ("errors", "count", run.errors.values().sum::<usize>() as f64),
        ];
        for (metric, unit, value) in rows {
            let metric = format!("HTTPS proxy over {name}: {metric}");
            report.row("rate", metric, unit, None, Some(value), None);
        }
    }
    report.row(
        "rate",
        "HTTPS proxy: tunnels per second, HTTP/2 / HTTP/1.1",
        "ratio",
        None,
        Some(h2_total.per_second() / h1_total.per_second()),
        None,
    );
    report.row(
        "rate",
        "HTTPS proxy: CPU per tunnel, HTTP/2 / HTTP/1.1",
        "ratio",
        None,
        Some(h2_total.cpu_micros() / h1_total.cpu_micros()),
        None,
    );
    report.notes.push(format!(
        "rate, HTTPS proxy: the gateway with --tls-cert and one agent process; HTTP/1.1 = {H2_STREAMS} client loops (from 127.0.3.x) each opening a new TCP and TLS connection (ALPN http/1.1) per tunnel; HTTP/2 = one TLS connection (ALPN h2) with {H2_STREAMS} client loops each opening a new CONNECT stream per tunnel; each tunnel a {EXCHANGE}-byte request answered with {EXCHANGE} bytes; {:.1} s per path in each of {} rounds; agent --max-streams {max_streams}; CPU = the gateway's and the agent's",
        sizes.rate_time.as_secs_f64(),
        sizes.rate_rounds
    ));
    Ok(())
}
