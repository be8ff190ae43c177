//! Threshold webhooks over `https://` (docs/control.md): a real `gateway`
//! process posts its signed notice to a local HTTPS receiver whose certificate
//! a private CA signed, trusting that CA through `--webhook-ca`; and a
//! `--webhook-ca` beside an `http://` URL is refused at start, saying why.

mod common;

use common::processes::GatewayProcess;
use common::{connect, targets, tls, within, TOKEN, WAIT};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-for-webhook-tls-tests-9d2e41";
const SECRET: &str = "webhook-secret-for-tls-tests";

/// Each post's signature, timestamp and body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// An HTTPS receiver on 127.0.0.1 serving `cert` (signed by the test CA),
/// answering 200 to every post.
async fn https_receiver(
    files: &exitpool::gateway::customer_tls::TlsFiles,
) -> (SocketAddr, Received) {
    use http_body_util::BodyExt;
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(Ok(stream)) = tokio::time::timeout(WAIT, acceptor.accept(stream)).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let header = |name: &str| {
                                let value = request.headers().get(name);
                                let text = value.and_then(|v| v.to_str().ok());
                                text.unwrap_or_default().to_owned()
                            };
                            let signature = header("x-exitpool-signature");
                            let timestamp = header("x-exitpool-timestamp");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            seen.lock()
                                .unwrap()
                                .push((signature, timestamp, body.to_vec()));
                            let empty = http_body_util::Full::new(bytes::Bytes::new());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(empty))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

async fn agent(gateway: &GatewayProcess) -> exitpool::agent::AgentHandle {
    gateway.agent("127.0.0.2").await
}

/// Moves `bytes` down through a `CONNECT` tunnel as `user`; the status.
async fn download(proxy: SocketAddr, target: SocketAddr, user: &str, bytes: usize) -> u16 {
    let (head, mut stream) = connect(proxy, &target.to_string(), Some((user, "pw1"))).await;
    if head.status != 200 {
        return head.status;
    }
    let request = format!("GET /bytes/{bytes} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    within("send GET", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = within("read the answer", stream.read_to_end(&mut sink)).await;
    head.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_trusting_a_private_ca_gets_the_signed_notice() {
    let state = tempfile::tempdir().unwrap();
    let (files, ca_file) = tls::certificate(state.path(), "hook");
    let (hook, received) = https_receiver(&files).await;
    let url = format!("https://127.0.0.1:{}/notices", hook.port());
    let ca = ca_file.to_string_lossy().into_owned();
    let args = [
        "--agent-token",
        TOKEN,
        "--admin-token",
        ADMIN,
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--webhook-ca",
        &ca,
    ]
    .map(String::from);
    let gw = GatewayProcess::start(state.path(), &args).await;
    let _agent = agent(&gw).await;
    let target = targets::http_target("127.0.0.1").await;
    let created = reqwest::Client::new()
        .post(format!("http://{}/api/v1/customers", gw.admin))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "hana", "password": "pw1", "limits": {"quota_daily": 1_000_000}}));
    let created = within("create", created.send()).await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let start = Instant::now();
    while download(gw.banner.listen, target, "hana", 1).await != 200 {
        assert!(start.elapsed() < WAIT, "hana never got through");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 85 % of the daily quota: the 80 % notice, over TLS.
    assert_eq!(
        download(gw.banner.listen, target, "hana", 850_000).await,
        200
    );
    let start = Instant::now();
    let (signature, timestamp, body) = loop {
        if let Some(first) = received.lock().unwrap().first().cloned() {
            break first;
        }
        assert!(start.elapsed() < WAIT, "no notice over https");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected =
        exitpool::gateway::webhooks::signature(SECRET, timestamp.parse().unwrap(), &body);
    assert_eq!(signature, expected);
    let notice: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(notice["account"], "hana", "{notice}");
    assert_eq!(notice["threshold_percent"], 80, "{notice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_ca_beside_an_http_url_is_refused_at_start() {
    let state = tempfile::tempdir().unwrap();
    let (_, ca_file) = tls::certificate(state.path(), "hook");
    let finished = exitpool_launcher::Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--state-dir")
        .arg(state.path())
        .args(exitpool_launcher::binaries::GATEWAY_ON_LOOPBACK)
        .args(["--agent-token", TOKEN, "--admin-token", ADMIN])
        .args(["--webhook-url", "http://127.0.0.1:9/notices"])
        .args(["--webhook-secret", SECRET, "--webhook-ca"])
        .arg(&ca_file)
        .run(WAIT)
        .await
        .expect("the gateway runs");
    let output = format!("{}\n{}", finished.stdout, finished.stderr);
    assert!(!finished.status.success(), "{output}");
    assert!(
        output.contains("--webhook-ca applies to an https:// --webhook-url only"),
        "{output}"
    );
}
