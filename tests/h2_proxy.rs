//! HTTP/2 to the HTTPS proxy port, end to end with the h2 crate's client over
//! TLS (ALPN `h2`) and a real agent: `CONNECT` streams and plain-HTTP
//! requests on one connection, a refusal on one stream beside a tunnel on
//! another, resets carried both ways, an account's connection limit and
//! quota holding per stream, and a rapid-reset client losing its
//! connection while the gateway goes on serving; and headless Chromium
//! (Playwright, tests/browser_h2/page.py) loading a page that fetches 48 URLs
//! from 8 sites at once over one HTTP/2 connection to the proxy.
//!
//! Where this sits in the flow: `gateway/src/customer/http2.rs` (each stream a
//! customer connection), `customer_tls.rs` (ALPN), `customer/transfer.rs`
//! (the one metered relay).

mod common;

use bytes::Bytes;
use common::targets::{closed_port, echo_target, http_target};
use common::tls::{certificate, client_config, spki_pin};
use common::*;
use exitpool::gateway::auth::{Customer, Limits, Users};
use h2::client::SendRequest;
use h2::{Reason, RecvStream};
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An HTTP/2 connection to the HTTPS proxy at `proxy`, trusting `ca`; its
/// driver runs in a task whose result says how the connection ended.
async fn h2_connect(
    proxy: SocketAddr,
    ca: &Path,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = within("TCP connect", TcpStream::connect(proxy))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, &[b"h2", b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the HTTPS proxy port chose HTTP/2"
    );
    let (send, connection) = within("h2 handshake", h2::client::handshake(tls))
        .await
        .expect("h2 handshake");
    (send, tokio::spawn(connection))
}

/// A `CONNECT` to `target` with `password` for alice.
fn connect_request(target: SocketAddr, password: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header("proxy-authorization", basic(USER, password))
        .body(())
        .unwrap()
}

/// Sends `request` (its body left open) and waits for the answer's head.
async fn open(
    client: &mut SendRequest<Bytes>,
    request: Request<()>,
) -> (hyper::Response<RecvStream>, h2::SendStream<Bytes>) {
    let mut ready = within("stream slot", client.clone().ready())
        .await
        .expect("connection ready");
    let (response, send) = ready.send_request(request, false).expect("stream opens");
    let response = within("answer", response).await.expect("an answer");
    (response, send)
}

/// Reads the stream until `want` bytes have come, or it ends.
async fn read_some(body: &mut RecvStream, want: usize) -> Result<Vec<u8>, h2::Error> {
    let mut got = Vec::new();
    while got.len() < want {
        match within("stream data", body.data()).await {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                got.extend_from_slice(&data);
            }
            Some(Err(error)) => return Err(error),
            None => break,
        }
    }
    Ok(got)
}

/// Everything left on the stream, and how it ended.
async fn read_to_end(body: &mut RecvStream) -> (Vec<u8>, Result<(), h2::Error>) {
    let mut got = Vec::new();
    loop {
        match within("stream data", body.data()).await {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                got.extend_from_slice(&data);
            }
            Some(Err(error)) => return (got, Err(error)),
            None => return (got, Ok(())),
        }
    }
}

async fn tls_gateway() -> (TestGateway, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = certificate(dir.path(), "h2");
    let net = TestGateway::start_with(|config| config.customer_tls = Some(files)).await;
    (net, dir, ca)
}

#[tokio::test]
async fn connect_plain_http_and_a_407_share_one_http2_connection() {
    let (net, _dir, ca) = tls_gateway().await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let web = http_target("127.0.0.1").await;
    let (mut client, driver) = h2_connect(net.proxy(), &ca).await;

    // A tunnel through the exit: the exit's headers, bytes both ways.
    let (tunnel, mut upload) = open(&mut client, connect_request(echo, PASSWORD)).await;
    assert_eq!(tunnel.status(), StatusCode::OK);
    assert_eq!(tunnel.headers()["x-exitpool-country"], "US");
    assert!(tunnel.headers().contains_key("x-exitpool-exit"));
    let mut download = tunnel.into_body();
    upload
        .send_data(Bytes::from_static(b"first"), false)
        .unwrap();
    assert_eq!(read_some(&mut download, 5).await.unwrap(), b"first");

    // Beside it, on the same connection, bad credentials: a 407 on that
    // stream only, presented as on HTTP/1.1.
    let (refused, _) = open(&mut client, connect_request(echo, "wrong")).await;
    assert_eq!(refused.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!(refused.headers()["x-exitpool-error"], "auth_required");
    assert!(refused.headers().contains_key("proxy-authenticate"));
    let (body, ended) = read_to_end(&mut refused.into_body()).await;
    ended.expect("the refusal ends cleanly");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(body["error"], "auth_required");

    // A target that refuses the exit: 502 with Proxy-Status on that stream.
    let closed = closed_port().await;
    let (failed, _) = open(&mut client, connect_request(closed, PASSWORD)).await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let proxy_status = failed.headers()["proxy-status"].to_str().unwrap();
    assert!(
        proxy_status.starts_with("exitpool; error=connection_refused"),
        "{proxy_status}"
    );

    // Plain HTTP (`:scheme http`) through an exit of its own.
    let get = Request::builder()
        .uri(format!("http://{web}/ip"))
        .header("proxy-authorization", basic(USER, PASSWORD))
        .body(())
        .unwrap();
    let mut ready = within("stream slot", client.clone().ready()).await.unwrap();
    let (answer, _) = ready.send_request(get, true).unwrap();
    let answer = within("plain answer", answer).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-exitpool-country"], "US");
    let (body, ended) = read_to_end(&mut answer.into_body()).await;
    ended.unwrap();
    assert_eq!(body, b"127.0.0.2", "the target saw the exit");

    // The tunnel still works after its neighbours; the client's end of data
    // reaches the target, whose close ends the client's stream cleanly.
    upload
        .send_data(Bytes::from_static(b"second"), true)
        .unwrap();
    let (rest, ended) = read_to_end(&mut download).await;
    ended.expect("the target's close ends the stream, not a reset");
    assert_eq!(rest, b"second\n11 bytes\n");

    // One TLS connection carried the four streams.
    assert_eq!(
        net.metric("exitpool_customer_tls_connections_total").await,
        1
    );
    assert_eq!(net.metric("exitpool_customer_h2_streams_total").await, 4);
    // Every stream done and the client gone: the connection ends cleanly.
    drop((client, ready, upload, download, failed));
    let ended = within("connection ends", driver).await.unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

/// A target that accepts one connection, hands it over, and keeps nothing else.
async fn one_connection_target() -> (SocketAddr, tokio::sync::oneshot::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, receiver) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok((stream, _)) = listener.accept().await {
            let _ = accepted.send(stream);
        }
    });
    (addr, receiver)
}

#[tokio::test]
async fn a_client_reset_closes_the_exit_side_and_a_target_reset_resets_the_stream() {
    let (net, _dir, ca) = tls_gateway().await;
    let _agent = net.agent("127.0.0.2").await;
    let (mut client, _driver) = h2_connect(net.proxy(), &ca).await;

    // The client resets its stream mid-transfer: the target's connection
    // (through the exit) ends.
    let (target, accepted) = one_connection_target().await;
    let (tunnel, mut upload) = open(&mut client, connect_request(target, PASSWORD)).await;
    assert_eq!(tunnel.status(), StatusCode::OK);
    let mut at_target = within("target accepts", accepted).await.unwrap();
    upload
        .send_data(Bytes::from_static(b"partial"), false)
        .unwrap();
    let mut buf = [0u8; 7];
    within("target reads", at_target.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"partial");
    upload.send_reset(Reason::CANCEL);
    // A FIN or a reset: either way the exit side closed, with nothing more.
    let mut rest = Vec::new();
    let _ = within(
        "the target's connection ends after the client's reset",
        at_target.read_to_end(&mut rest),
    )
    .await;
    assert!(rest.is_empty(), "nothing more reached the target: {rest:?}");

    // The target aborts its connection: the client's stream is reset with
    // CONNECT_ERROR (RFC 9113 §8.5), never ended as if the data were whole.
    let (target, accepted) = one_connection_target().await;
    let (tunnel, _upload) = open(&mut client, connect_request(target, PASSWORD)).await;
    assert_eq!(tunnel.status(), StatusCode::OK);
    let at_target = within("target accepts", accepted).await.unwrap();
    let mut download = tunnel.into_body();
    at_target.set_zero_linger().unwrap();
    drop(at_target);
    let (_, ended) = read_to_end(&mut download).await;
    let error = ended.expect_err("the stream is reset");
    assert_eq!(error.reason(), Some(Reason::CONNECT_ERROR), "{error}");

    // The connection serves on.
    let echo = echo_target().await;
    let (tunnel, mut upload) = open(&mut client, connect_request(echo, PASSWORD)).await;
    assert_eq!(tunnel.status(), StatusCode::OK);
    upload
        .send_data(Bytes::from_static(b"after"), true)
        .unwrap();
    let (echoed, ended) = read_to_end(&mut tunnel.into_body()).await;
    ended.unwrap();
    assert_eq!(echoed, b"after\n5 bytes\n");
}

#[tokio::test]
async fn a_rapid_reset_client_loses_its_connection_and_others_are_served() {
    let (net, _dir, ca) = tls_gateway().await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let (client, driver) = h2_connect(net.proxy(), &ca).await;

    // Streams opened and reset at once, as fast as the client can: the
    // gateway closes the connection with ENHANCE_YOUR_CALM long before this
    // many (h2's pending-reset bound, or the gateway's cancel budget).
    const ATTEMPTS: usize = 5_000;
    let mut sent = 0;
    let flood = async {
        let mut client = client;
        for _ in 0..ATTEMPTS {
            let Ok(ready) = client.ready().await else {
                return;
            };
            client = ready;
            let Ok((_, mut stream)) = client.send_request(connect_request(echo, PASSWORD), false)
            else {
                return;
            };
            // Let the connection's task put the HEADERS on the wire first
            // (h2 drops a stream reset before then without a word).
            tokio::task::yield_now().await;
            stream.send_reset(Reason::CANCEL);
            sent += 1;
        }
    };
    within("the flood ends", flood).await;
    let ended = within("the connection ends", driver).await.unwrap();
    // The GOAWAY, or the closed socket under the client's next write.
    let error = ended.expect_err("the gateway closed the connection");
    assert!(
        error.reason() == Some(Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "{error}"
    );
    // The gateway's budget (100 per 10 s) and what was already in flight.
    assert!(sent < 1_000, "{sent} resets were taken");

    // Another connection is served as ever.
    let (mut client, _driver) = h2_connect(net.proxy(), &ca).await;
    let (tunnel, mut upload) = open(&mut client, connect_request(echo, PASSWORD)).await;
    assert_eq!(tunnel.status(), StatusCode::OK);
    upload.send_data(Bytes::from_static(b"calm"), true).unwrap();
    let (echoed, ended) = read_to_end(&mut tunnel.into_body()).await;
    ended.unwrap();
    assert_eq!(echoed, b"calm\n4 bytes\n");
}

/// URLs the browser's page fetches at once, and the sites they are spread over.
const PAGE_FETCHES: usize = 48;
const SITES: usize = 8;
/// Longest the browser script may take (a cold Chromium start on a busy
/// machine takes seconds; only a failure waits this out).
const BROWSER_BOUND: std::time::Duration = std::time::Duration::from_secs(90);

/// A site whose every answer waits until `gathered` has counted
/// [`PAGE_FETCHES`] requests (at all the sites together), so an answer saying
/// `together` proves every request was in flight at once; one that waited
/// [`WAIT`] in vain says `alone`.
async fn gathering_site(gathered: Arc<tokio::sync::watch::Sender<usize>>) -> SocketAddr {
    serve_http(move |_| {
        let gathered = gathered.clone();
        async move {
            gathered.send_modify(|count| *count += 1);
            let mut count = gathered.subscribe();
            let together =
                tokio::time::timeout(WAIT, count.wait_for(|count| *count >= PAGE_FETCHES))
                    .await
                    .is_ok();
            hyper::Response::builder()
                .header("access-control-allow-origin", "*")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from(if together {
                    "together"
                } else {
                    "alone"
                })))
                .unwrap()
        }
    })
    .await
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `answer`.
async fn serve_http<F, A>(answer: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> A + Clone + Send + Sync + 'static,
    A: std::future::Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answering = answer(request);
                    async move { Ok::<_, std::convert::Infallible>(answering.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The page: fetches every URL in `urls` at once and sets `window.results`.
fn page_html(urls: &[String]) -> String {
    let list = serde_json::to_string(urls).unwrap();
    format!(
        "<!doctype html><title>h2</title><script>\n\
         const urls = {list};\n\
         Promise.all(urls.map(url => fetch(url, {{cache: 'no-store'}})\n\
           .then(r => r.text().then(text => ({{url, status: r.status, text}})))\n\
           .catch(e => ({{url, error: String(e)}}))))\n\
           .then(results => {{ window.results = results; }});\n\
         </script>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_fetches_48_urls_from_8_sites_over_one_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _ca) = certificate(dir.path(), "browser");
    // Chromium connects from 127.0.0.1 and sends no credentials.
    let alice = Customer::parse(&format!("{USER}:{PASSWORD}"))
        .unwrap()
        .with_limits(Limits {
            allow_ips: vec!["127.0.0.1/32".parse().unwrap()],
            ..Limits::default()
        });
    let net = TestGateway::start_with(|config| {
        config.users = Users::new([alice]);
        config.customer_tls = Some(files.clone());
    })
    .await;
    // Chromium's own background requests (below) come through the proxy for
    // ports 443 and 80: the exit refuses those ports before any name is
    // looked up, so no test traffic leaves loopback, not even DNS.
    use exitpool::agent::policy::{ExitPolicy, PortRange};
    let policy = ExitPolicy::new()
        .allow_private(true)
        .with_denied_ports([PortRange::single(80), PortRange::single(443)]);
    let _agent = net
        .spawn(net.agent_builder("127.0.0.2").policy(policy))
        .await;

    let gathered = Arc::new(tokio::sync::watch::channel(0usize).0);
    let mut sites = Vec::new();
    for _ in 0..SITES {
        sites.push(gathering_site(gathered.clone()).await);
    }
    let urls: Vec<String> = (0..PAGE_FETCHES)
        .map(|i| format!("http://{}/item/{i}", sites[i % SITES]))
        .collect();
    let html = page_html(&urls);
    let page = serve_http(move |request| {
        let html = html.clone();
        async move {
            let found = request.uri().path() == "/";
            // The warm-up page: a page of its own, no fetches.
            if request.uri().path() == "/warm" {
                return hyper::Response::new(Full::new(Bytes::from("<!doctype html>warm")));
            }
            hyper::Response::builder()
                .status(if found { 200 } else { 404 })
                .header("content-type", "text/html")
                .body(Full::new(Bytes::from(if found {
                    html
                } else {
                    String::new()
                })))
                .unwrap()
        }
    })
    .await;

    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser_h2/page.py");
    let finished = exitpool_launcher::Launch::new("python3")
        .arg(&script)
        .env("H2_PROXY", net.proxy().to_string())
        .env("H2_SPKI", spki_pin(&files))
        .env("H2_PAGE", format!("http://{page}/"))
        .env("H2_EXPECTED", PAGE_FETCHES.to_string())
        .env("H2_WARM", format!("http://{page}/warm"))
        .env("H2_METRICS", format!("http://{}/metrics", net.admin()))
        .run(BROWSER_BOUND)
        .await
        .expect("the browser script runs (scripts/test installs chromium and playwright)");
    assert!(
        finished.status.success(),
        "the browser script failed:\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    // Counted at the sites: every request arrived, none answered before all had.
    assert_eq!(*gathered.borrow(), PAGE_FETCHES);
    // Counted at the gateway, around the page (the script reads /metrics):
    // its 48 fetches were HTTP/2 streams on the connection the warm-up opened
    // (or, at most, on one or two new ones), not 48 TLS connections.
    let report: serde_json::Value = finished
        .stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no report from the script:\n{}", finished.stdout));
    eprintln!(
        "{}",
        finished
            .stdout
            .lines()
            .filter(|l| l.starts_with("browser_h2:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let new_connections = report["page"]["tls_connections"].as_u64().unwrap();
    let streams = report["page"]["h2_streams"].as_u64().unwrap();
    assert!(
        new_connections <= 2,
        "{new_connections} new TLS connections for the page's {PAGE_FETCHES} fetches"
    );
    assert!(
        streams as usize > PAGE_FETCHES,
        "{streams} HTTP/2 streams for the page and its {PAGE_FETCHES} fetches"
    );
    // And over the whole run, three: Chromium keys its HTTP/2 sessions to a
    // proxy by privacy mode and the top-frame site (network anonymization
    // key), so requests of different keys cannot share one. Its net log
    // (--log-net-log, 2026-12-07) shows the three, each ALPN h2 (no failed
    // h2 attempt, nothing the gateway could change): Chromium's own
    // component-updater request (https://update.googleapis.com, privacy mode
    // on), its account check (https://accounts.google.com/ListAccounts), and
    // the warm-up page's, which the page's 48 fetches then share. Both
    // background requests come despite --disable-background-networking and
    // --disable-component-update (Playwright's), and without Debian's
    // wrapper flags too; sent to a dead proxy over https, the updater's is
    // retried over plain http. The exit refuses both by their port.
    let connections = net.metric("exitpool_customer_tls_connections_total").await;
    assert!(connections <= 3, "{connections} TLS connections in all");
}

#[tokio::test]
async fn account_limits_hold_per_stream_connections_and_quota() {
    const QUOTA: u64 = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = certificate(dir.path(), "limits");
    // alice: two connections at once; bob: a byte quota.
    let alice = Customer::parse(&format!("{USER}:{PASSWORD}"))
        .unwrap()
        .with_limits(Limits {
            max_connections: Some(2),
            ..Limits::default()
        });
    let bob = Customer::parse("bob:b0bpass").unwrap().with_limits(Limits {
        quota_bytes: Some(QUOTA),
        ..Limits::default()
    });
    let net = TestGateway::start_with(|config| {
        config.users = Users::new([alice, bob]);
        config.customer_tls = Some(files);
    })
    .await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    let web = http_target("127.0.0.1").await;
    let (mut client, _driver) = h2_connect(net.proxy(), &ca).await;

    // Two tunnels open on one connection are alice's two connections: a
    // third stream is refused on its own, and the two carry on.
    let (first, mut first_up) = open(&mut client, connect_request(echo, PASSWORD)).await;
    let (second, mut second_up) = open(&mut client, connect_request(echo, PASSWORD)).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let (third, _) = open(&mut client, connect_request(echo, PASSWORD)).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["x-exitpool-error"], "connection_limit");
    for (up, answer) in [(&mut first_up, first), (&mut second_up, second)] {
        up.send_data(Bytes::from_static(b"still"), true).unwrap();
        let (echoed, ended) = read_to_end(&mut answer.into_body()).await;
        ended.unwrap();
        assert_eq!(echoed, b"still\n5 bytes\n");
    }

    // bob's plain-HTTP download over a stream is cut at his quota: the
    // stream is reset, never ended as if the body were whole.
    let get = Request::builder()
        .uri(format!("http://{web}/bytes/{}", 4 * QUOTA))
        .header("proxy-authorization", basic("bob", "b0bpass"))
        .body(())
        .unwrap();
    let mut ready = within("stream slot", client.clone().ready()).await.unwrap();
    let (answer, _) = ready.send_request(get, true).unwrap();
    let answer = within("plain answer", answer).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let (body, ended) = read_to_end(&mut answer.into_body()).await;
    let error = ended.expect_err("a download cut at the quota ends in a reset");
    assert!(error.is_reset(), "{error}");
    // The download went on up to the quota, and no further (the request
    // and the answer's head count too).
    let got = body.len() as u64;
    assert!(
        QUOTA / 2 < got && got <= QUOTA,
        "{got} bytes of a {QUOTA}-byte quota"
    );
}
