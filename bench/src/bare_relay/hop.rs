//! What both hops of the bare relay and its datagram variant share: the
//! QUIC transport, TLS and client settings, the dial to the exit, and
//! starting this program as a hop ([`BareExit`] for the exit hop).

use crate::client::STEP;
use anyhow::{Context, Result};
use exitpool_launcher::{Launch, Process};
use exitpool_transport::udp;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The ALPN both hops speak.
pub(super) const ALPN: &[u8] = b"bare-relay";
/// The name the exit's certificate is issued for.
pub(super) const SERVER_NAME: &str = "localhost";
/// What a hop prints on stdout once it serves, followed by its address.
pub(super) const READY: &str = "ready ";

/// The shared transport settings, letting the peer open `streams` at once.
pub(super) fn transport(streams: u32) -> quinn::TransportConfig {
    let mut transport = udp::base_transport();
    transport
        .max_concurrent_bidi_streams(streams.into())
        .keep_alive_interval(Some(exitpool_protocol::KEEP_ALIVE_INTERVAL));
    transport
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A QUIC client that trusts only the exit's certificate (hex DER).
pub(super) fn client_config(cert_hex: &str) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(
        hex::decode(cert_hex).context("the exit's certificate is not hex")?,
    ))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    // The exit never opens streams.
    client.transport_config(Arc::new(transport(0)));
    Ok(client)
}

/// One QUIC endpoint on `bind`, connected to the exit at `exit`.
pub(super) async fn connect(
    exit: SocketAddr,
    client: quinn::ClientConfig,
    bind: IpAddr,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let local = SocketAddr::new(bind, 0);
    let mut endpoint = udp::endpoint(local, quinn::EndpointConfig::default(), None)?;
    endpoint.set_default_client_config(client);
    let connection = tokio::time::timeout(STEP, endpoint.connect(exit, SERVER_NAME)?)
        .await
        .context("QUIC handshake with the exit timed out")??;
    Ok((endpoint, connection))
}

/// Starts this program as a hop with `args`; returns it once it prints its
/// ready line, with the rest of that line.
pub(super) async fn start_hop(args: &[&str]) -> Result<(Process, String)> {
    let mut process = Launch::new(std::env::current_exe()?).args(args).spawn()?;
    let line = process.line_with(READY, STEP).await?;
    let rest = line
        .trim()
        .strip_prefix(READY.trim_end())
        .with_context(|| format!("unexpected ready line {line:?}"))?;
    Ok((process, rest.trim().to_owned()))
}

/// The bare relay's exit hop: this program run with `--bare-exit`.
pub struct BareExit {
    process: Process,
    pub addr: SocketAddr,
    pub cert_hex: String,
}

impl BareExit {
    /// Starts the exit hop towards `target`, letting each connection open
    /// `streams` streams at once.
    pub async fn start(target: SocketAddr, streams: u32) -> Result<BareExit> {
        Self::start_with(target, streams, &[]).await
    }

    pub(super) async fn start_with(
        target: SocketAddr,
        streams: u32,
        extra: &[&str],
    ) -> Result<BareExit> {
        let (target, streams) = (target.to_string(), streams.to_string());
        let mut args = vec!["--bare-exit", &target, "--bare-streams", &streams];
        args.extend_from_slice(extra);
        let (process, ready) = start_hop(&args).await.context("bare relay exit hop")?;
        let (addr, cert_hex) = ready
            .split_once(' ')
            .context("the exit hop's ready line lacks its certificate")?;
        Ok(BareExit {
            process,
            addr: addr.parse().context("the exit hop's address")?,
            cert_hex: cert_hex.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
