//! Threshold notices: a signed JSON `POST` to `--webhook-url` when an
//! account passes 80 % and 100 % of any of its quotas (daily, monthly,
//! lifetime), each notice once per period on this gateway.
//!
//! The control link ([`crate::control_link`]) counts period usage off the hot
//! path and calls [`Webhooks::check`]; a notice due goes into a bounded queue
//! ([`QUEUE`]; a full queue drops the notice and says so in the log) that
//! one task ([`send_all`]) posts, retrying a failed post with doubling
//! backoff ([`ATTEMPTS`] in all). The body is signed with HMAC-SHA256 over
//! `TIMESTAMP.BODY` under `--webhook-secret`, sent as
//! `X-Exitpool-Signature: sha256=HEX` beside `X-Exitpool-Timestamp`, so a
//! receiver can check the sender and refuse a replay. An `https://` URL is
//! posted over rustls, checked against the system's root certificates or,
//! with `--webhook-ca FILE`, only against the PEM certificates in that file
//! (a private CA); the roots are read once, at start, off the runtime.

use arc_swap::ArcSwap;
use bytes::Bytes;
use exitpool_control::store::{AccountEntry, PeriodUsage};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Notices waiting to be posted.
pub const QUEUE: usize = 1024;
/// Posts of one notice before it is given up.
pub const ATTEMPTS: u32 = 6;
/// The first retry's delay; each later one doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest one post may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Notices remembered as sent; past it the memory starts over (a notice
/// may then repeat).
const MAX_SENT: usize = 100_000;
/// The thresholds, in percent of a quota.
pub const THRESHOLDS: [u64; 2] = [80, 100];

/// `--webhook-url`, `--webhook-secret` and `--webhook-ca`.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Where notices go (`http://host:port/path` or `https://...`).
    pub url: String,
    /// The HMAC key.
    pub secret: String,
    /// PEM certificates to trust for an `https://` URL instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

/// Where one gateway posts: the checked URL and, for `https://`, the TLS
/// client configuration with its roots.
#[derive(Clone)]
pub struct Destination {
    config: WebhookConfig,
    uri: hyper::Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Destination {
    /// Checks `config`'s URL and secret and, for `https://`, loads the roots
    /// (`--webhook-ca`, else the system's). Reads files: call it off the
    /// async runtime.
    pub fn new(config: WebhookConfig) -> Result<Destination, String> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| format!("--webhook-url {}: {e}", config.url))?;
        let tls = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(_)) => None,
            (Some("https"), Some(_)) => Some(Arc::new(client_tls(config.ca_file.as_deref())?)),
            _ => {
                return Err(format!(
                    "--webhook-url {}: write http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH",
                    config.url
                ))
            }
        };
        if config.ca_file.is_some() && tls.is_none() {
            return Err("--webhook-ca applies to an https:// --webhook-url only".into());
        }
        if config.secret.is_empty() {
            return Err("--webhook-url needs --webhook-secret (the HMAC key)".into());
        }
        Ok(Destination { config, uri, tls })
    }
}

/// A TLS client trusting `ca_file`'s certificates, or the system's roots.
fn client_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
            if certificates.is_empty() {
                return Err(format!(
                    "--webhook-ca {}: no PEM certificate in it",
                    path.display()
                ));
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "an https:// --webhook-url needs root certificates: none found on this system ({} errors); give --webhook-ca FILE",
                    found.errors.len()
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One notice, as posted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Notice {
    /// Always `quota_threshold`.
    pub event: &'static str,
    /// The account (`alice`, `ops.alice`).
    pub account: String,
    /// `daily`, `monthly` or `lifetime`.
    pub period: &'static str,
    /// 80 or 100.
    pub threshold_percent: u64,
    /// The quota, bytes.
    pub quota: u64,
    /// Bytes used in the period.
    pub used: u64,
    /// When the period began (RFC 3339; absent for lifetime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    /// When it resets (RFC 3339; absent for lifetime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// The notices due and the queue to the sender.
pub struct Webhooks {
    /// Where notices go; SIGHUP may change it ([`Webhooks::set_destination`]).
    destination: Arc<ArcSwap<Destination>>,
    /// (account, period, threshold, period start) already queued.
    sent: Mutex<HashSet<(String, &'static str, u64, i64)>>,
    queue: mpsc::Sender<Notice>,
    receiver: Mutex<Option<mpsc::Receiver<Notice>>>,
}

impl Webhooks {
    /// Makes the queue to `destination` ([`Destination::new`]).
    pub fn new(destination: Destination) -> Webhooks {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Webhooks {
            destination: Arc::new(ArcSwap::from_pointee(destination)),
            sent: Mutex::new(HashSet::new()),
            queue,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// The queue's receiving end, once (for [`send_all`]).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Notice>> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Where notices go, as [`send_all`] reads it before each post.
    pub fn destination(&self) -> Arc<ArcSwap<Destination>> {
        self.destination.clone()
    }

    /// Sends later notices (and the next attempt of one being retried) to
    /// `destination` (a re-read config file's URL, secret or roots).
    pub fn set_destination(&self, destination: Destination) {
        self.destination.store(Arc::new(destination));
    }

    /// Queues the notices `entry` (and its customer `parent`) are due, given
    /// the period usage counted in `usage` by account name.
    pub fn check(
        &self,
        entry: &AccountEntry,
        parent: Option<&AccountEntry>,
        usage: &HashMap<String, PeriodUsage>,
        now: i64,
    ) {
        use exitpool_control::period::{day_start, month_start, rfc3339};
        for account in std::iter::once(entry).chain(parent) {
            let Some(used) = usage.get(&account.name) else {
                continue;
            };
            let periods = exitpool_control::store::quota_periods(&account.limits, *used, now);
            for (period, quota, used, resets) in periods {
                // Each notice is sent once per period: the period's start names it.
                let start = match period {
                    "daily" => Some(day_start(now)),
                    "monthly" => Some(month_start(now)),
                    _ => None,
                };
                let Some(quota) = quota.filter(|q| *q > 0) else {
                    continue;
                };
                for threshold in THRESHOLDS {
                    // used / quota >= threshold %, without overflow.
                    if u128::from(used) * 100 < u128::from(quota) * u128::from(threshold) {
                        continue;
                    }
                    let key = (account.name.clone(), period, threshold, start.unwrap_or(0));
                    {
                        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
                        if sent.len() >= MAX_SENT {
                            sent.clear();
                        }
                        if !sent.insert(key) {
                            continue;
                        }
                    }
                    let notice = Notice {
                        event: "quota_threshold",
                        account: account.name.clone(),
                        period,
                        threshold_percent: threshold,
                        quota,
                        used,
                        period_start: start.map(rfc3339),
                        resets_at: resets.map(rfc3339),
                    };
                    if self.queue.try_send(notice).is_err() {
                        warn!(account = %account.name, period, threshold, "webhook queue full: a threshold notice was dropped");
                    }
                }
            }
        }
    }
}

/// `X-Exitpool-Signature`'s value for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts every queued notice, retrying each with backoff, until `stop`.
pub async fn send_all(
    destination: Arc<ArcSwap<Destination>>,
    mut notices: mpsc::Receiver<Notice>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            notice = notices.recv() => match notice { Some(n) => n, None => return },
            () = stop.cancelled() => return,
        };
        let body = serde_json::to_vec(&notice).unwrap_or_default();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let to = destination.load_full();
            match tokio::time::timeout(POST_TIMEOUT, post(&to, &body)).await {
                Ok(Ok(())) => {
                    info!(account = %notice.account, period = notice.period, threshold = notice.threshold_percent, "quota threshold notice sent");
                    break;
                }
                Ok(Err(error)) => {
                    warn!(%error, attempt, account = %notice.account, "quota threshold notice failed")
                }
                Err(_) => {
                    warn!(attempt, account = %notice.account, "quota threshold notice timed out")
                }
            }
            if attempt == ATTEMPTS {
                warn!(account = %notice.account, period = notice.period, "quota threshold notice given up after {ATTEMPTS} attempts");
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff *= 2;
        }
    }
}

/// One post; a status other than 2xx is an error.
async fn post(destination: &Destination, body: &[u8]) -> Result<(), String> {
    let (config, uri) = (&destination.config, &destination.uri);
    let host = uri.host().unwrap_or_default().to_owned();
    let bare_host = host.trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if destination.tls.is_some() { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let driver = match &destination.tls {
        None => start_http1(stream).await?,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
                .map_err(|e| format!("{host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            start_http1(stream).await?
        }
    };
    let (mut sender, driver) = driver;
    let timestamp = exitpool_control::period::now();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host);
    let request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("x-exitpool-timestamp", timestamp.to_string())
        .header(
            "x-exitpool-signature",
            signature(&config.secret, timestamp, body),
        )
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    let answer = answer.inspect_err(|_| driver.abort())?;
    let status = answer.status();
    let _ = answer.into_body().collect().await;
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// An HTTP/1.1 client connection over `io`: its sender and the task driving it.
async fn start_http1<T>(
    io: T,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    String,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    Ok((sender, tokio::spawn(connection)))
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let a = signature("k", 1, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, signature("k", 2, b"{}"));
        assert_ne!(a, signature("k", 1, b"{ }"));
        assert_ne!(a, signature("j", 1, b"{}"));
    }
}
