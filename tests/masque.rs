//! Issue 35, MASQUE CONNECT-UDP (RFC 9298) over HTTP/3 on `--listen-h3`,
//! carried as UDP flows on the exit's tunnel, over each tunnel transport. The
//! client is the launcher's MASQUE client (h3 over quinn, the one the load
//! test uses): datagrams to a local UDP echo; an HTTP/3 request to a local
//! HTTP/3 server through the tunnel (QUIC inside MASQUE), the server seeing
//! the exit's address; and the bad input: credentials, a refused target,
//! unknown context ids, oversize datagrams, requests past the account's cap,
//! and a closed request stream ending the flow at the agent. Everything
//! stays on 127.0.0.0/8.

mod common;

use common::*;
use exitpool_launcher::masque::{MasqueClient, MasqueError, UdpTunnel};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// The drop counter the gateway exports, by cause.
const DROPPED: &str = "exitpool_udp_datagrams_dropped_total";

/// A gateway with the HTTPS proxy's certificate and a MASQUE port, and the
/// CA file its clients trust.
async fn masque_gateway(
    adjust: impl FnOnce(&mut exitpool::gateway::GatewayConfig),
) -> (TestGateway, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = tls::certificate(dir.path(), "masque");
    let net = TestGateway::start_with(|config| {
        config.customer_tls = Some(files);
        config.listen_h3 = Some("127.0.0.1:0".parse().unwrap());
        adjust(config);
    })
    .await;
    (net, dir, ca)
}

/// A MASQUE client of `net`'s `--listen-h3`.
async fn client(net: &TestGateway, ca: &std::path::Path) -> MasqueClient {
    let addr = net.gateway.h3_addr().expect("--listen-h3 bound");
    let tls = (*tls::client_config(ca, &[])).clone();
    within(
        "MASQUE connect",
        MasqueClient::connect(addr, "127.0.0.1", tls, WAIT),
    )
    .await
    .expect("the HTTP/3 connection")
}

/// A UDP echo on 127.0.0.1 that counts what it received; each answer is
/// the datagram repeated `times` times.
async fn udp_echo(times: usize) -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = buf[..len].repeat(times);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    (addr, received)
}

/// Opens a CONNECT-UDP tunnel to `target` as alice.
async fn tunnel_to(client: &MasqueClient, target: SocketAddr) -> UdpTunnel {
    within(
        "CONNECT-UDP",
        client.connect_udp(
            &target.ip().to_string(),
            target.port(),
            Some((USER, PASSWORD)),
        ),
    )
    .await
    .expect("CONNECT-UDP accepted")
}

/// Sends `payload` and waits for its echo.
async fn echo(tunnel: &mut UdpTunnel, payload: &[u8]) {
    tunnel.send(payload).expect("datagram sent");
    let back = tunnel.recv().await.expect("an echo");
    assert_eq!(&back[..], payload);
}

/// Waits until the drop counter for `cause` reaches `at_least`.
async fn dropped(net: &TestGateway, cause: &str, at_least: f64) -> f64 {
    within(&format!("{cause} drops counted"), async {
        loop {
            let count = net
                .metric_with(DROPPED, Some(("cause", cause)))
                .await
                .unwrap_or(0.0);
            if count >= at_least {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// The refusal a request got: status and headers.
fn refused(result: Result<UdpTunnel, MasqueError>) -> (u16, http::HeaderMap) {
    match result {
        Ok(_) => panic!("the request was accepted"),
        Err(error) => {
            let (status, headers) = error
                .refusal()
                .unwrap_or_else(|| panic!("not an HTTP refusal: {error}"));
            (status, headers.clone())
        }
    }
}

over_both_transports! {
    async fn datagrams_echo_through_an_exit(transport) {
        let (net, _dir, ca) = masque_gateway(|_| {}).await;
        let net = net.over(transport);
        let _agent = net.agent("127.0.0.2").await;
        let (target, echoed) = udp_echo(1).await;
        let client = client(&net, &ca).await;
        let mut tunnel = tunnel_to(&client, target).await;
        assert_eq!(tunnel.headers["x-exitpool-country"], "US");
        assert_eq!(tunnel.headers["capsule-protocol"], "?1");
        let exit = net.gateway.directory().agents()[0].exit_id.clone();
        assert_eq!(tunnel.headers["x-exitpool-exit"], exit.as_str());
        for payload in [&b"first"[..], b"", &[7u8; 1000]] {
            echo(&mut tunnel, payload).await;
        }
        assert_eq!(echoed.load(Ordering::SeqCst), 3);
        tunnel.close().await;
        // Usage counts datagram payload bytes each way, once folded.
        let payload = 5 + 1000;
        within("usage folded", async {
            while net.metric("exitpool_bytes_up_total").await < payload {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert_eq!(net.metric("exitpool_bytes_up_total").await, payload);
        assert_eq!(net.metric("exitpool_customer_masque_requests_total").await, 1);
        assert_eq!(net.metric("exitpool_customer_h3_connections_total").await, 1);
        // Over QUIC the datagrams ride the tunnel's DATAGRAM frames, over
        // TLS/TCP the flow's stream: 3 each way.
        let frames = net.metric("exitpool_udp_frames_total").await;
        let streamed = net.metric("exitpool_udp_stream_datagrams_total").await;
        match transport {
            TransportChoice::Quic => assert_eq!((frames, streamed), (6, 0)),
            _ => assert_eq!((frames, streamed), (0, 6)),
        }
    }
}

/// A certificate for the local HTTP/3 server, and the CA its client trusts.
fn target_tls(dir: &std::path::Path) -> (rustls::ServerConfig, PathBuf) {
    use rustls::pki_types::pem::PemObject;
    let (files, ca) = tls::certificate(dir, "target");
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h3".to_vec()];
    (config, ca)
}

/// A local HTTP/3 server on 127.0.0.1 answering every request with the
/// address the request came from.
fn h3_server(tls: rustls::ServerConfig) -> SocketAddr {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let seen = connection.remote_address().ip().to_string();
                let Ok(mut h3) = h3::server::Connection::<_, bytes::Bytes>::new(
                    h3_quinn::Connection::new(connection),
                )
                .await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let Ok((_, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        let response = http::Response::new(());
                        let _ = stream.send_response(response).await;
                        let _ = stream.send_data(bytes::Bytes::from(seen)).await;
                        let _ = stream.finish().await;
                    });
                }
            });
        }
    });
    addr
}

over_both_transports! {
    async fn http3_runs_inside_connect_udp(transport) {
        use bytes::Buf;
        let (net, dir, ca) = masque_gateway(|_| {}).await;
        let net = net.over(transport);
        let _agent = net.agent("127.0.0.2").await;
        let (server_tls, target_ca) = target_tls(dir.path());
        let target = h3_server(server_tls);
        let client = client(&net, &ca).await;
        let tunnel = tunnel_to(&client, target).await;
        // QUIC inside MASQUE: a quinn endpoint whose socket is the tunnel.
        let socket = tunnel.into_socket(target);
        let mut inner = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        let inner_tls = (*tls::client_config(&target_ca, &[b"h3"])).clone();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(inner_tls).unwrap();
        inner.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = within("QUIC inside MASQUE", inner.connect(target, "localhost").unwrap())
            .await
            .expect("the inner handshake");
        let (mut driver, mut requests) =
            within("HTTP/3 inside", h3::client::new(h3_quinn::Connection::new(connection)))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        let request = http::Request::get(format!("https://localhost:{}/ip", target.port()))
            .body(())
            .unwrap();
        let mut stream = within("GET", requests.send_request(request)).await.unwrap();
        within("finish", stream.finish()).await.unwrap();
        let response = within("the answer", stream.recv_response()).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = Vec::new();
        while let Some(mut chunk) = within("the body", stream.recv_data()).await.unwrap() {
            while chunk.has_remaining() {
                let part = chunk.chunk().to_vec();
                chunk.advance(part.len());
                body.extend_from_slice(&part);
            }
        }
        assert_eq!(String::from_utf8(body).unwrap(), "127.0.0.2", "the target saw the exit");
    }
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_407_with_proxy_status() {
    let (net, _dir, ca) = masque_gateway(|_| {}).await;
    let _agent = net.agent("127.0.0.2").await;
    let (target, echoed) = udp_echo(1).await;
    let client = client(&net, &ca).await;
    let port = target.port();
    for credentials in [None, Some((USER, "wrong")), Some(("nobody", PASSWORD))] {
        let (status, headers) = refused(
            within(
                "CONNECT-UDP",
                client.connect_udp("127.0.0.1", port, credentials),
            )
            .await,
        );
        // As the HTTP/1.1 and h2 paths answer it: RFC 9209 has no
        // Proxy-Status error type for credentials, so 407 carries none.
        assert_eq!(status, 407, "{credentials:?}");
        assert_eq!(headers["x-exitpool-error"], "auth_required");
        assert_eq!(headers["proxy-authenticate"], "Basic realm=\"exitpool\"");
        assert!(!headers.contains_key("proxy-status"), "{headers:?}");
    }
    // A path that is not the template, and a target port of 0.
    let (status, headers) = refused(
        within(
            "bad path",
            client.request("/elsewhere/", Some((USER, PASSWORD))),
        )
        .await,
    );
    assert_eq!(status, 400);
    assert_eq!(headers["x-exitpool-error"], "bad_target");
    let proxy_status = headers["proxy-status"].to_str().unwrap();
    assert!(
        proxy_status.starts_with("exitpool; error=http_request_error"),
        "{proxy_status}"
    );
    let (status, _) = refused(
        within(
            "port 0",
            client.connect_udp("127.0.0.1", 0, Some((USER, PASSWORD))),
        )
        .await,
    );
    assert_eq!(status, 400);
    // The connection still serves good requests.
    let mut tunnel = tunnel_to(&client, target).await;
    echo(&mut tunnel, b"after the refusals").await;
    assert_eq!(echoed.load(Ordering::SeqCst), 1);
}

over_both_transports! {
    async fn a_target_the_exit_refuses_is_refused_with_its_status(transport) {
        // The default (strict) exit policy refuses loopback.
        let (net, _dir, ca) = masque_gateway(|_| {}).await;
        let net = net.over(transport);
        let _agent = net.strict_agent("127.0.0.2").await;
        let (target, echoed) = udp_echo(1).await;
        let client = client(&net, &ca).await;
        let (status, headers) = refused(
            within(
                "CONNECT-UDP",
                client.connect_udp("127.0.0.1", target.port(), Some((USER, PASSWORD))),
            )
            .await,
        );
        assert_eq!(status, 403, "{headers:?}");
        assert_eq!(headers["x-exitpool-error"], "destination_prohibited");
        assert!(headers.contains_key("proxy-status"));
        assert_eq!(echoed.load(Ordering::SeqCst), 0, "nothing reached the target");
    }
}

#[tokio::test]
async fn unknown_contexts_and_oversize_datagrams_are_dropped_and_counted() {
    let (net, _dir, ca) = masque_gateway(|_| {}).await;
    let _agent = net.agent("127.0.0.2").await;
    // Answers three copies of each datagram.
    let (target, echoed) = udp_echo(3).await;
    let client = client(&net, &ca).await;
    let tunnel = tunnel_to(&client, target).await;
    for context in [1, 2, 1_000] {
        tunnel.send_context(context, b"not UDP payload").unwrap();
    }
    dropped(&net, "unknown_context", 3.0).await;
    assert_eq!(echoed.load(Ordering::SeqCst), 0);
    // More than one QUIC packet holds is refused by the client's QUIC stack.
    let too_large = vec![0u8; 2_000];
    assert!(matches!(
        tunnel.send(&too_large),
        Err(quinn::SendDatagramError::TooLarge)
    ));
    // 600 bytes reach the target; its 1,800-byte answer cannot fit an HTTP
    // Datagram to the client, so the gateway drops it (RFC 9298 has no
    // fragments) and counts it.
    tunnel.send(&[1u8; 600]).unwrap();
    dropped(&net, "too_large", 1.0).await;
    assert_eq!(echoed.load(Ordering::SeqCst), 1);
    // Small answers still arrive.
    tunnel.send(b"ok").unwrap();
    let back = tunnel.recv().await.expect("an answer");
    assert_eq!(&back[..], b"okokok");
}

#[tokio::test]
async fn requests_past_the_accounts_connection_cap_are_429() {
    let (net, _dir, ca) = masque_gateway(|config| {
        config.users =
            exitpool::gateway::auth::Users::new([exitpool::gateway::auth::Customer::parse(
                &format!("{USER}:{PASSWORD}"),
            )
            .unwrap()
            .with_limits(exitpool::gateway::auth::Limits {
                max_connections: Some(2),
                ..Default::default()
            })]);
    })
    .await;
    let _agent = net.agent("127.0.0.2").await;
    let (target, _) = udp_echo(1).await;
    let client = client(&net, &ca).await;
    let mut first = tunnel_to(&client, target).await;
    let _second = tunnel_to(&client, target).await;
    let (status, headers) = refused(
        within(
            "a third",
            client.connect_udp("127.0.0.1", target.port(), Some((USER, PASSWORD))),
        )
        .await,
    );
    assert_eq!(status, 429);
    assert_eq!(headers["x-exitpool-error"], "connection_limit");
    assert!(headers.contains_key("proxy-status"));
    // The two within the cap carry on.
    echo(&mut first, b"still here").await;
}

over_both_transports! {
    async fn closing_the_request_stream_ends_the_flow_at_the_agent(transport) {
        // One UDP flow at a time on the agent's tunnel: a second request is
        // refused until the first flow has ended at the agent.
        let (net, _dir, ca) = masque_gateway(|_| {}).await;
        let net = net.over(transport);
        let limits = exitpool::agent::udp::UdpLimits {
            max_flows: 1,
            ..Default::default()
        };
        let _agent = net.spawn(net.agent_builder("127.0.0.2").udp_limits(limits)).await;
        let (target, _) = udp_echo(1).await;
        let client = client(&net, &ca).await;
        let mut first = tunnel_to(&client, target).await;
        echo(&mut first, b"one").await;
        let (status, _) = refused(
            within(
                "a second flow",
                client.connect_udp("127.0.0.1", target.port(), Some((USER, PASSWORD))),
            )
            .await,
        );
        assert_eq!(status, 502, "the agent's flow cap");
        first.close().await;
        let mut second = within("the first flow ends at the agent", async {
            loop {
                match client
                    .connect_udp("127.0.0.1", target.port(), Some((USER, PASSWORD)))
                    .await
                {
                    Ok(tunnel) => return tunnel,
                    Err(error) => assert_eq!(error.refusal().map(|r| r.0), Some(502)),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        echo(&mut second, b"two").await;
    }
}

/// A connection serves at most MAX_REQUESTS requests at once; those past
/// them reach the gateway and wait until one ends. quinn announces the
/// credit of ended streams (MAX_STREAMS) only once more than an eighth of
/// its stream limit has come back: with QUIC's limit at exactly 16, one
/// request ending among 16 left the next one waiting for credit forever
/// (the gateway never saw it). Now QUIC allows an eighth more streams and
/// the gateway holds the extra ones.
#[tokio::test]
async fn a_connection_holds_at_most_sixteen_requests() {
    use exitpool::gateway::customer::masque::MAX_REQUESTS;
    let (net, _dir, ca) = masque_gateway(|_| {}).await;
    let _agent = net.agent("127.0.0.2").await;
    let (target, _) = udp_echo(1).await;
    let client = Arc::new(client(&net, &ca).await);
    let mut open = Vec::new();
    for _ in 0..MAX_REQUESTS {
        open.push(tunnel_to(&client, target).await);
    }
    // Two more reach the gateway, which serves neither yet.
    let request = || {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .connect_udp("127.0.0.1", target.port(), Some((USER, PASSWORD)))
                .await
        })
    };
    let mut waiting = vec![request(), request()];
    let requests = "exitpool_customer_masque_requests_total";
    let arrived = u64::from(MAX_REQUESTS) + 2;
    within("the two extra requests reach the gateway", async {
        while net.metric(requests).await < arrived {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A round trip on an open tunnel: the connection is live meanwhile.
    echo(&mut open[0], b"live").await;
    assert!(
        waiting.iter().all(|request| !request.is_finished()),
        "a request served past {MAX_REQUESTS} at once"
    );
    // Each request that ends lets one waiting request through.
    for left in [1, 0] {
        open.pop().unwrap().close().await;
        let served = within("a waiting request served", async {
            loop {
                if let Some(at) = waiting.iter().position(|request| request.is_finished()) {
                    return waiting.remove(at).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let mut tunnel = served.unwrap().expect("accepted once a request ended");
        echo(&mut tunnel, b"served").await;
        assert_eq!(waiting.len(), left);
        open.push(tunnel);
    }
    // All the stream credit QUIC gave is used now (16 open, 2 ended); one
    // more ending frees a third, which quinn announces: a new request
    // goes through at once.
    open.pop().unwrap().close().await;
    let mut fresh = tunnel_to(&client, target).await;
    echo(&mut fresh, b"fresh").await;
    assert_eq!(net.metric(requests).await, arrived + 1);
}
