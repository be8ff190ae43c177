//! Issue: a customer's HTTPS request travels through an agent's tunnel, end to
//! end, over QUIC and over TLS/TCP (the byte-path tests run on both). Real
//! gateway, real agents on loopback addresses, real QUIC and TCP, real clients.

mod common;

use common::targets::{closed_port, echo_target, http_target, pattern};
use common::*;
use exitpool::agent::AgentError;
use exitpool_launcher::binaries::{AGENT_CONNECTED, GATEWAY_ON_LOOPBACK, GATEWAY_READY};
use exitpool_launcher::{GatewayBanner, Launch, Ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

over_both_transports! {
async fn connect_reaches_an_http_target_from_the_agents_bind_address(transport) {
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    let (head, body) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(
        body, "127.0.0.2",
        "the target saw the agent's --bind address"
    );
    assert_eq!(head.header("x-exitpool-country"), Some("US"));
    assert_eq!(head.header("x-exitpool-exit").map(str::len), Some(16));
}
}

over_both_transports! {
async fn https_through_the_tunnel_with_reqwest(transport) {
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let (target, cert) = tls_target().await;
    let proxy = reqwest::Proxy::all(format!("http://{}", net.proxy()))
        .unwrap()
        .basic_auth(USER, PASSWORD);
    let client = reqwest::Client::builder()
        .proxy(proxy)
        .add_root_certificate(reqwest::Certificate::from_der(&cert).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/hello", target.port());
    let response = within("https GET", client.get(url).send()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        within("body", response.text()).await.unwrap(),
        "hello over tls"
    );
}
}

/// A TLS target on 127.0.0.1 with a fresh self-signed certificate for `localhost`.
async fn tls_target() -> (std::net::SocketAddr, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = generated.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone().into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap_or(0) == 1
                {
                    request.push(byte[0]);
                }
                let body = "hello over tls";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, cert)
}

over_both_transports! {
async fn thirty_two_mib_each_way_arrive_intact(transport) {
    const SIZE: usize = 32 * 1024 * 1024;
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let (head, stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let (mut read, mut write) = stream.into_split();
    let sent = pattern(SIZE);
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(SIZE + 32);
    within("echo of 32 MiB", read.read_to_end(&mut received))
        .await
        .unwrap();
    within("writer", writer).await.unwrap();
    let trailer = format!("\n{SIZE} bytes\n");
    assert!(
        received.ends_with(trailer.as_bytes()),
        "target saw every byte and our EOF"
    );
    assert!(
        received[..SIZE] == pattern(SIZE)[..],
        "bytes came back unchanged"
    );
    assert_eq!(received.len(), SIZE + trailer.len());
}
}

over_both_transports! {
async fn half_close_travels_across_and_the_reply_still_arrives(transport) {
    let net = TestGateway::start().await.over(transport);
    let _agent = net.agent("127.0.0.2").await;
    let target = echo_target().await;
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    stream.write_all(b"ping").await.unwrap();
    // Shut our write side only; the target answers after it sees EOF.
    stream.shutdown().await.unwrap();
    let mut received = String::new();
    within(
        "reply after half-close",
        stream.read_to_string(&mut received),
    )
    .await
    .unwrap();
    assert_eq!(received, "ping\n4 bytes\n");
}
}

#[tokio::test]
async fn bad_credentials_get_407_with_a_challenge() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await.to_string();
    for credentials in [
        None,
        Some((USER, "wrong")),
        Some(("mallory", PASSWORD)),
        Some((USER, "")),
    ] {
        let (head, _) = connect(net.proxy(), &target, credentials).await;
        assert_eq!(head.status, 407, "{credentials:?}");
        assert_eq!(
            head.header("proxy-authenticate"),
            Some("Basic realm=\"exitpool\"")
        );
        assert_eq!(head.header("x-exitpool-error"), Some("auth_required"));
    }
}

#[tokio::test]
async fn a_closed_target_port_is_502_connection_refused() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let (head, _) = connect_as(net.proxy(), closed_port().await, "").await;
    assert_eq!(head.status, 502);
    let status = head.header("proxy-status").expect("Proxy-Status header");
    assert!(
        status.starts_with("exitpool; error=connection_refused"),
        "{status}"
    );
    assert_eq!(head.header("x-exitpool-error"), Some("connection_refused"));
}

#[tokio::test]
async fn without_allow_private_the_agent_refuses_loopback_targets() {
    let net = TestGateway::start().await;
    let _agent = net.strict_agent("127.0.0.2").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 403);
    let status = head.header("proxy-status").unwrap();
    assert!(
        status.starts_with("exitpool; error=destination_ip_prohibited"),
        "{status}"
    );
    // The target never saw a connection attempt.
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the refused target was dialled anyway");
}

over_both_transports! {
async fn a_wrong_pin_stops_the_agent_before_it_sends_its_token(transport) {
    let net = TestGateway::start().await.over(transport);
    let wrong_pin = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
    let mut agent =
        exitpool::agent::Agent::builder(net.gateway.tunnel_addr().to_string(), wrong_pin, TOKEN)
            .bind("127.0.0.2".parse().unwrap())
            .transport(transport)
            .spawn()
            .unwrap();
    let result = within("agent gives up", agent.finished()).await;
    assert!(
        matches!(result, Err(AgentError::PinMismatch(_))),
        "{result:?}"
    );
    assert_eq!(net.gateway.directory().len(), 0);
}
}

over_both_transports! {
async fn a_wrong_token_is_rejected_and_the_agent_stops(transport) {
    let net = TestGateway::start().await.over(transport);
    let mut agent = exitpool::agent::Agent::builder(
        net.gateway.tunnel_addr().to_string(),
        net.gateway.pin().parse().unwrap(),
        "not-the-token",
    )
    .bind("127.0.0.2".parse().unwrap())
    .transport(transport)
    .spawn()
    .unwrap();
    let result = within("agent gives up", agent.finished()).await;
    match result {
        Err(AgentError::BadToken(message)) => assert!(message.contains("token"), "{message}"),
        other => panic!("expected BadToken, got {other:?}"),
    }
    assert_eq!(net.gateway.directory().len(), 0);
}
}

over_both_transports! {
async fn an_agent_that_leaves_is_dropped_from_registry_and_stats(transport) {
    let net = TestGateway::start().await.over(transport);
    let agent = net.agent("127.0.0.2").await;
    let _other = net.agent("127.0.0.4").await;
    let stats = net.stats().await;
    assert_eq!(stats["agents"], 2);
    assert_eq!(stats["countries"]["US"], 1);
    assert_eq!(stats["countries"]["DE"], 1);
    within("agent shutdown", agent.shutdown()).await.unwrap();
    // The agent closes its connection on shutdown; the gateway drops it at once.
    within(
        "registry drops the agent",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let stats = net.stats().await;
    assert_eq!(stats["agents"], 1);
    assert!(stats["countries"].get("US").is_none(), "{stats}");
}
}

#[tokio::test]
async fn the_certificate_and_pin_survive_a_restart() {
    let net = TestGateway::start().await;
    let pin = net.gateway.pin().to_owned();
    let state = net.state;
    net.gateway.shutdown().await;
    let config = TestGateway::config(state.path());
    let again = TestGateway::start_in(state, config, |_| {}).await;
    assert_eq!(again.gateway.pin(), pin);
    assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64);
}

#[tokio::test]
async fn the_real_binaries_serve_curl_as_the_readme_shows() {
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    // `gateway pin` on a directory without an identity refuses to make one up…
    let refused = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["pin", "--state-dir", state_arg])
        .run(WAIT)
        .await
        .expect("gateway pin");
    assert!(!refused.status.success(), "{}", refused.stdout);
    assert!(
        refused.stdout.is_empty(),
        "no pin printed: {}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("no gateway identity") && refused.stderr.contains("--init"),
        "{}",
        refused.stderr
    );
    // … and with --init prints the pin agents need, creating the certificate.
    let pin_output = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["pin", "--init", "--state-dir", state_arg])
        .run(WAIT)
        .await
        .expect("gateway pin --init");
    let pin = pin_output.stdout.trim().to_owned();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");

    let mut gateway = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--state-dir", state_arg])
        .args(GATEWAY_ON_LOOPBACK)
        .args(["--user", "alice:s3cret", "--agent-token", TOKEN])
        .spawn()
        .expect("gateway starts");
    let started = gateway
        .line_with(GATEWAY_READY, WAIT)
        .await
        .expect("the gateway's ready line");
    let banner = GatewayBanner::parse(&started).expect("a well-formed ready line");
    let proxy = banner.listen;
    let tunnel = banner.tunnel.to_string();
    assert!(
        started.ends_with(&pin),
        "the running gateway uses the pinned certificate: {started}"
    );

    // The agent logs to stdout; its "connected" line is the readiness event.
    let _agent = Launch::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "--gateway",
            &tunnel,
            "--pin",
            &pin,
            "--bind",
            "127.0.0.2",
            "--allow-private",
        ])
        .arg("--state-dir")
        .arg(state.path().join("agent"))
        .env("EXITPOOL_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .start(Ready::line(AGENT_CONNECTED), WAIT)
        .await
        .expect("the agent connects");

    let target = common::targets::http_target("127.0.0.1").await;
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-p",
                "-x",
                &format!("http://alice:s3cret@{proxy}"),
                &format!("http://{target}/ip"),
            ])
            .output()
    });
    match within("curl", curl).await.unwrap() {
        Ok(output) => assert_eq!(String::from_utf8_lossy(&output.stdout), "127.0.0.2"),
        Err(error) => eprintln!("curl is not installed ({error}); skipped the curl half"),
    }
}

#[tokio::test]
async fn connect_reaches_an_ipv6_target() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("::1 is unavailable here; skipped");
        return;
    };
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut stream, peer)) = listener.accept().await {
            let _ = stream.write_all(peer.ip().to_string().as_bytes()).await;
        }
    });
    let net = TestGateway::start().await;
    // An agent with no --bind address can dial both families.
    let agent = exitpool::agent::Agent::builder(
        net.gateway.tunnel_addr().to_string(),
        net.gateway.pin().parse().unwrap(),
        TOKEN,
    )
    .allow_private(true)
    .spawn()
    .unwrap();
    within("agent connects", agent.connected()).await;
    let (head, mut stream) = connect(
        net.proxy(),
        &format!("[::1]:{}", target.port()),
        Some((USER, PASSWORD)),
    )
    .await;
    assert_eq!(head.status, 200, "{head:?}");
    let mut seen = String::new();
    within("target answers", stream.read_to_string(&mut seen))
        .await
        .unwrap();
    assert_eq!(seen, "::1");
}

/// A `CONNECT` is served the same whichever way in it takes: a short head
/// already whole in the socket is answered straight from it, a head of many
/// header lines by hyper. Either way, bytes sent right behind the head (in
/// the same write) reach the target first and intact.
#[tokio::test]
async fn connect_is_served_alike_from_a_short_or_a_long_head() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let echo = echo_target().await;
    for filler_headers in [0usize, 40] {
        let mut stream = within("connect", tokio::net::TcpStream::connect(net.proxy()))
            .await
            .unwrap();
        let mut head = format!(
            "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nProxy-Authorization: {}\r\n",
            basic(USER, PASSWORD)
        );
        for n in 0..filler_headers {
            head.push_str(&format!("X-Filler-{n}: {n}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(b"early bytes");
        within("send", stream.write_all(&bytes)).await.unwrap();
        let answer = read_head(&mut stream).await;
        assert_eq!(
            answer.status, 200,
            "{filler_headers} filler headers: {answer:?}"
        );
        assert!(answer.header("x-exitpool-exit").is_some(), "{answer:?}");
        within("half-close", stream.shutdown()).await.unwrap();
        let mut echoed = Vec::new();
        within("echo", stream.read_to_end(&mut echoed))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&echoed),
            "early bytes\n11 bytes\n",
            "{filler_headers} filler headers"
        );
    }
}

/// An agent on a CPU without AES instructions offers ChaCha20-Poly1305 first,
/// and the gateway's TLS answers in the client's order: that agent's tunnel
/// runs ChaCha20, one with AES instructions AES-GCM (ring's first). Over TLS/TCP
/// the negotiated suite is read on both ends; over QUIC, which quinn does not
/// report, the ChaCha20-first offer must still carry a stream both ways.
#[tokio::test]
async fn the_tunnel_cipher_follows_the_agents_hardware() {
    use exitpool::transport::pin::{client_provider_for, PinVerifier};
    use exitpool::transport::{tcp, udp};
    use rustls::CipherSuite::{TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    use std::sync::Arc;

    let state = tempfile::tempdir().unwrap();
    let identity = exitpool::gateway::tls::Identity::load_or_create(state.path()).unwrap();
    let pin = identity.pin().parse().unwrap();
    let name = || rustls::pki_types::ServerName::try_from("exitpool-gateway").unwrap();
    let verifier_for = |aes| Arc::new(PinVerifier::new(pin, Arc::new(client_provider_for(aes))));

    let acceptor = tokio_rustls::TlsAcceptor::from(identity.tcp_server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for (aes_in_hardware, expected) in [
        (true, TLS13_AES_256_GCM_SHA384),
        (false, TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        let client = verifier_for(aes_in_hardware)
            .client_config(tcp::ALPN)
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let dialled = async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector.connect(name(), stream).await.unwrap()
        };
        let accepted = async {
            let (stream, _) = listener.accept().await.unwrap();
            acceptor.accept(stream).await.unwrap()
        };
        let (dialled, accepted) =
            within("TLS handshake", async { tokio::join!(dialled, accepted) }).await;
        let agent_side = dialled.get_ref().1.negotiated_cipher_suite();
        let gateway_side = accepted.get_ref().1.negotiated_cipher_suite();
        assert_eq!(agent_side.map(|suite| suite.suite()), Some(expected));
        assert_eq!(gateway_side.map(|suite| suite.suite()), Some(expected));
    }

    let server = identity.quic_server_config(udp::base_transport()).unwrap();
    let gateway = udp::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        quinn::EndpointConfig::default(),
        Some(server),
    )
    .unwrap();
    let gateway_addr = gateway.local_addr().unwrap();
    let client = verifier_for(false)
        .client_config(exitpool_protocol::ALPN)
        .unwrap();
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut agent = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    agent.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
    let echoed = async {
        let connection = agent
            .connect(gateway_addr, "exitpool-gateway")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(b"chacha").await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(64).await.unwrap()
    };
    let echoing = async {
        let connection = gateway.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let got = recv.read_to_end(64).await.unwrap();
        send.write_all(&got).await.unwrap();
        send.finish().unwrap();
        // Held until the agent has read the answer.
        connection.closed().await;
    };
    let echoed = within("a QUIC stream both ways", async {
        tokio::select! {
            echoed = echoed => echoed,
            () = echoing => unreachable!("the agent closes first"),
        }
    })
    .await;
    assert_eq!(echoed, b"chacha");
}
