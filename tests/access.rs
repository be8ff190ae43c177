//! How customers get in besides a user name with parameters, end to end: an
//! account's `allow_ips` (no credentials from a listed network), entry ports
//! whose number selects targeting, TLS on the customer port (an HTTPS proxy,
//! with real curl and headless Chromium), and the `GET /inventory` a customer
//! can ask.
//!
//! Where this sits in the flow: `gateway/src/customer/listener.rs` (ports, the
//! first-byte sniff, the TLS handshake), `customer/session.rs`
//! (`authenticate_either`: credentials, else the source; the entry port's
//! targeting merged under the credentials'), `customer/inventory.rs`.

mod common;

use common::targets::http_target;
use common::tls::{certificate, spki_pin};
use common::*;
use exitpool::gateway::auth::{Customer, Limits, Users};
use exitpool::gateway::customer_tls::TlsFiles;
use exitpool::gateway::entry_ports::EntryPorts;
use exitpool_launcher::Launch;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The source address alice's `allow_ips` lists.
const ALLOWED: &str = "127.0.0.9";
/// A source address no account lists.
const STRANGER: &str = "127.0.0.10";

/// alice (allowed from [`ALLOWED`] and 127.0.8.0/24) and bob (credentials only).
fn accounts() -> Users {
    let alice = Customer::parse(&format!("{USER}:{PASSWORD}"))
        .unwrap()
        .with_limits(Limits {
            allow_ips: vec![
                format!("{ALLOWED}/32").parse().unwrap(),
                "127.0.8.0/24".parse().unwrap(),
            ],
            ..Limits::default()
        });
    Users::new([alice, Customer::parse("bob:hunter2").unwrap()])
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    within("connect", socket.connect(to)).await.unwrap()
}

/// `CONNECT target` from `from`, with `credentials` if any; the head and stream.
async fn connect_from_with(
    from: &str,
    proxy: SocketAddr,
    target: SocketAddr,
    credentials: Option<(&str, &str)>,
) -> (Head, TcpStream) {
    let mut stream = connect_from(from, proxy).await;
    let auth = credentials
        .map(|(user, password)| format!("Proxy-Authorization: {}\r\n", basic(user, password)))
        .unwrap_or_default();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    within("send", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (head, stream)
}

#[tokio::test]
async fn an_allow_listed_source_needs_no_credentials_and_credentials_still_win() {
    let net = TestGateway::start_with(|config| config.users = accounts()).await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;

    let (head, mut stream) = connect_from_with(ALLOWED, net.proxy(), target, None).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(get_in_tunnel(&mut stream, "/ip").await, "127.0.0.2");
    drop(stream);
    // A network in the list.
    let (head, _) = connect_from_with("127.0.8.77", net.proxy(), target, None).await;
    assert_eq!(head.status, 200, "{head:?}");
    // Anyone else is asked for credentials, as before.
    let (head, _) = connect_from_with(STRANGER, net.proxy(), target, None).await;
    assert_eq!(head.status, 407, "{head:?}");
    // Credentials sent from an allowed source decide: bob is bob, a wrong
    // password is refused.
    let (head, _) = connect_from_with(ALLOWED, net.proxy(), target, Some(("bob", "hunter2"))).await;
    assert_eq!(head.status, 200, "{head:?}");
    let (head, _) = connect_from_with(ALLOWED, net.proxy(), target, Some((USER, "wrong"))).await;
    assert_eq!(head.status, 407, "{head:?}");

    let stats = net.stats().await;
    assert_eq!(stats["customers"][USER]["connections"], 2, "{stats}");
    assert_eq!(stats["customers"]["bob"]["connections"], 1, "{stats}");

    // Plain HTTP, with a real client that sends no credentials.
    let client = reqwest::Client::builder()
        .local_address(ALLOWED.parse::<IpAddr>().unwrap())
        .proxy(reqwest::Proxy::http(format!("http://{}", net.proxy())).unwrap())
        .build()
        .unwrap();
    let answer = within(
        "plain HTTP",
        client.get(format!("http://{target}/ip")).send(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "127.0.0.2");
}

/// A SOCKS5 greeting offering `methods` from `from`; the method chosen.
async fn socks_method(from: &str, proxy: SocketAddr, methods: &[u8]) -> (u8, TcpStream) {
    let mut stream = connect_from(from, proxy).await;
    let mut greeting = vec![5, methods.len() as u8];
    greeting.extend_from_slice(methods);
    within("greeting", stream.write_all(&greeting))
        .await
        .unwrap();
    let mut choice = [0u8; 2];
    within("method", stream.read_exact(&mut choice))
        .await
        .unwrap();
    (choice[1], stream)
}

#[tokio::test]
async fn socks5_without_authentication_is_served_only_to_allow_listed_sources() {
    let net = TestGateway::start_with(|config| config.users = accounts()).await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;

    let (method, mut stream) = socks_method(ALLOWED, net.proxy(), &[0x00]).await;
    assert_eq!(method, 0x00);
    let SocketAddr::V4(v4) = target else {
        unreachable!()
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.ip().octets());
    request.extend_from_slice(&v4.port().to_be_bytes());
    within("request", stream.write_all(&request)).await.unwrap();
    let mut reply = [0u8; 10];
    within("reply", stream.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply[1], 0x00, "{reply:?}");
    assert_eq!(get_in_tunnel(&mut stream, "/ip").await, "127.0.0.2");

    // Offered both: username/password is chosen (credentials win).
    let (method, _) = socks_method(ALLOWED, net.proxy(), &[0x00, 0x02]).await;
    assert_eq!(method, 0x02);
    // A stranger offering only "no authentication" hears "no acceptable method".
    let (method, _) = socks_method(STRANGER, net.proxy(), &[0x00]).await;
    assert_eq!(method, 0xFF);
}

/// A free port on 127.0.0.1 for an entry port (entry ports have fixed numbers;
/// the gateway binds them at start).
fn free_port() -> u16 {
    common::processes::free_port().port()
}

#[tokio::test]
async fn entry_ports_select_targeting_and_credentials_apply_on_top() {
    let (germany, sticky_us) = (free_port(), free_port());
    let file = format!(
        "[[ports]]\nports = \"{germany}\"\ntargeting = \"country-de\"\n\n\
         [[ports]]\nports = \"{sticky_us}\"\ntargeting = \"country-us\"\nsession_per_port = true\n"
    );
    let entry_ports = EntryPorts::parse(&file).unwrap();
    let net = TestGateway::start_with(|config| {
        config.users = accounts();
        config.entry_ports = entry_ports;
    })
    .await;
    let _us1 = net.agent("127.0.0.2").await;
    let _us2 = net.agent("127.0.0.3").await;
    let _de = net.agent("127.0.0.4").await;
    let target = http_target("127.0.0.1").await;
    let port = |number: u16| SocketAddr::from(([127, 0, 0, 1], number));

    let (head, mut stream) =
        connect(port(germany), &target.to_string(), Some((USER, PASSWORD))).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("x-exitpool-country"), Some("DE"));
    assert_eq!(get_in_tunnel(&mut stream, "/ip").await, "127.0.0.4");
    // The same value is no conflict; another is.
    let (head, _) = connect(
        port(germany),
        &target.to_string(),
        Some((&format!("{USER}-country-de"), PASSWORD)),
    )
    .await;
    assert_eq!(head.status, 200, "{head:?}");
    let (head, _) = connect(
        port(germany),
        &target.to_string(),
        Some((&format!("{USER}-country-us"), PASSWORD)),
    )
    .await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("bad_targeting"));
    // An allow-listed client with no credentials gets the port's targeting.
    let (head, _) = connect_from_with(ALLOWED, port(germany), target, None).await;
    assert_eq!(head.header("x-exitpool-country"), Some("DE"), "{head:?}");

    // The sticky port: one session, the same US exit every time.
    let (first, _) = connect_from_with(ALLOWED, port(sticky_us), target, None).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-exitpool-session"), Some("new"));
    assert_eq!(first.header("x-exitpool-country"), Some("US"));
    for _ in 0..5 {
        let (again, _) = connect_from_with(ALLOWED, port(sticky_us), target, None).await;
        assert_eq!(again.header("x-exitpool-session"), Some("kept"));
        assert_eq!(
            again.header("x-exitpool-exit"),
            first.header("x-exitpool-exit")
        );
    }
    // The main port is untouched: no targeting of its own.
    let (head, _) = connect_as(net.proxy(), target, "-country-us").await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn entry_ports_take_new_targeting_on_reload_but_keep_their_ports() {
    let (port, other) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("entry-ports.toml");
    let write = |text: String| std::fs::write(&file, text).unwrap();
    write(format!(
        "[[ports]]\nports = \"{port}\"\ntargeting = \"country-de\"\n"
    ));
    let entry_ports = EntryPorts::load(&file).unwrap();
    let net = TestGateway::start_with(|config| {
        config.entry_ports = entry_ports;
        config.entry_ports_file = Some(file.clone());
    })
    .await;
    let _us = net.agent("127.0.0.2").await;
    let _de = net.agent("127.0.0.4").await;
    let target = http_target("127.0.0.1").await;
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    let country = move || async move {
        let (head, _) = connect(entry, &target.to_string(), Some((USER, PASSWORD))).await;
        assert_eq!(head.status, 200, "{head:?}");
        head.header("x-exitpool-country").map(str::to_owned)
    };
    assert_eq!(country().await.as_deref(), Some("DE"));

    write(format!(
        "[[ports]]\nports = \"{port}\"\ntargeting = \"country-us\"\n"
    ));
    net.gateway.reload().expect("accounts reload");
    assert_eq!(country().await.as_deref(), Some("US"));
    // Another port, or a broken file: the running table stays.
    write(format!(
        "[[ports]]\nports = \"{port}\"\ntargeting = \"country-de\"\n\n\
         [[ports]]\nports = \"{other}\"\n"
    ));
    net.gateway.reload().expect("accounts reload");
    assert_eq!(country().await.as_deref(), Some("US"));
    write("[[ports]]\nports = \"nope\"\n".to_owned());
    net.gateway.reload().expect("accounts reload");
    assert_eq!(country().await.as_deref(), Some("US"));
}

/// curl through the HTTPS proxy at `proxy`, trusting `ca` for it; stdout, or
/// the failure.
async fn curl_https_proxy(
    proxy: SocketAddr,
    ca: &std::path::Path,
    user: &str,
    url: &str,
    tunnel: bool,
) -> Result<String, String> {
    let mut launch = Launch::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy-cacert"])
        .arg(ca)
        .args(["-x", &format!("https://{user}:{PASSWORD}@{proxy}")]);
    if tunnel {
        launch = launch.arg("-p");
    }
    let finished = launch
        .arg(url)
        .run(WAIT)
        .await
        .expect("curl runs (the suite needs curl)");
    if finished.status.success() {
        Ok(finished.stdout)
    } else {
        Err(finished.stderr)
    }
}

#[tokio::test]
async fn the_customer_port_speaks_tls_to_curl_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = certificate(dir.path(), "first");
    let net = TestGateway::start_with(|config| config.customer_tls = Some(files.clone())).await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    let url = format!("http://{target}/ip");

    // Plain HTTP and CONNECT, both inside TLS to the proxy.
    assert_eq!(
        curl_https_proxy(net.proxy(), &ca, USER, &url, false).await,
        Ok("127.0.0.2".to_owned())
    );
    assert_eq!(
        curl_https_proxy(net.proxy(), &ca, USER, &url, true).await,
        Ok("127.0.0.2".to_owned())
    );
    // Bad credentials over TLS are still a 407.
    let refused = curl_https_proxy(net.proxy(), &ca, "mallory", &url, true).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("407")),
        "{refused:?}"
    );
    // The same port still speaks plain HTTP proxy.
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);

    // A new certificate in the same files, and a reload: new connections get it.
    let (second, second_ca) = certificate(dir.path(), "second");
    std::fs::copy(&second.cert, &files.cert).unwrap();
    std::fs::copy(&second.key, &files.key).unwrap();
    net.gateway.reload().expect("reload");
    assert_eq!(
        curl_https_proxy(net.proxy(), &second_ca, USER, &url, true).await,
        Ok("127.0.0.2".to_owned())
    );
    let stale = curl_https_proxy(net.proxy(), &ca, USER, &url, true).await;
    assert!(stale.is_err(), "the old CA still verified: {stale:?}");
    // A broken pair at reload keeps the running one.
    std::fs::write(&files.key, "not a key").unwrap();
    let _ = net.gateway.reload();
    assert_eq!(
        curl_https_proxy(net.proxy(), &second_ca, USER, &url, true).await,
        Ok("127.0.0.2".to_owned())
    );
}

/// Longest a headless Chromium run may take (a cold start on a busy machine
/// takes seconds; only a failure waits this out).
const CHROMIUM_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// Headless Chromium (Debian's `chromium`) loading `url` through the HTTPS
/// proxy at `proxy`, trusting its certificate by `pin` if given: the text of
/// the page (a plain-text answer is shown in a `<pre>`), or what went wrong.
async fn chromium_through(
    proxy: SocketAddr,
    pin: Option<&str>,
    url: &str,
) -> Result<String, String> {
    let profile = tempfile::tempdir().unwrap();
    let mut launch = Launch::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-server=https://{proxy}"))
        // Chromium sends loopback targets around any proxy unless told not to.
        .arg("--proxy-bypass-list=<-loopback>");
    if let Some(pin) = pin {
        // Applies to the proxy's certificate too, and only to this key
        // (unlike --ignore-certificate-errors, which trusts anything).
        launch = launch.arg(format!("--ignore-certificate-errors-spki-list={pin}"));
    }
    let finished = launch
        .args(["--dump-dom", url])
        .run(CHROMIUM_BOUND)
        .await
        .expect("chromium runs (scripts/test installs Debian's chromium)");
    // Chromium exits 0 even when the page failed: judge by the DOM.
    let dom = finished.stdout;
    let text = dom
        .split_once("<pre")
        .and_then(|(_, rest)| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(text, _)| text.to_owned());
    text.ok_or_else(|| {
        let failure = finished
            .stderr
            .lines()
            .filter(|line| line.contains("net::ERR_"))
            .collect::<Vec<_>>()
            .join("\n");
        format!("no page ({}); stdout: {dom}; {failure}", finished.status)
    })
}

#[tokio::test]
async fn headless_chromium_uses_the_https_proxy_port_from_an_allow_listed_address() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _ca) = certificate(dir.path(), "chromium");
    let germany = free_port();
    let entry_ports = EntryPorts::parse(&format!(
        "[[ports]]\nports = \"{germany}\"\ntargeting = \"country-de\"\n"
    ))
    .unwrap();
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
        config.entry_ports = entry_ports;
    })
    .await;
    let _us = net.agent("127.0.0.2").await;
    let _de = net.agent("127.0.0.4").await;
    let target = http_target("127.0.0.1").await;
    let url = format!("http://{target}/ip");
    let pin = spki_pin(&files);

    // The main port: the page came through one of the exits (a page fetched
    // around the proxy would show 127.0.0.1).
    let page = chromium_through(net.proxy(), Some(&pin), &url).await;
    assert!(
        matches!(page.as_deref(), Ok("127.0.0.2" | "127.0.0.4")),
        "{page:?}"
    );
    // The entry port selects Germany.
    let entry = SocketAddr::from(([127, 0, 0, 1], germany));
    assert_eq!(
        chromium_through(entry, Some(&pin), &url).await,
        Ok("127.0.0.4".to_owned())
    );
    // Without the pin Chromium refuses the proxy's certificate.
    let refused = chromium_through(net.proxy(), None, &url).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ERR_PROXY_CERTIFICATE_INVALID")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_gateway_refuses_to_start_with_an_unusable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing-key.pem"),
    };
    let state = tempfile::tempdir().unwrap();
    let mut config = TestGateway::config(state.path());
    config.customer_tls = Some(files);
    let error = exitpool::gateway::Gateway::start(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

/// `GET /inventory` on the customer port with Basic `credentials`.
async fn inventory(proxy: SocketAddr, credentials: Option<(&str, &str)>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{proxy}/inventory"));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    within("GET /inventory", request.send()).await.unwrap()
}

#[tokio::test]
async fn the_inventory_shows_bucketed_places_within_the_account_countries() {
    let only_de = Customer::parse("dora:d0ra").unwrap().with_limits(Limits {
        countries: Some(vec!["DE".into()]),
        ..Limits::default()
    });
    let net = TestGateway::start_with(|config| {
        config.users = Users::new([
            Customer::parse(&format!("{USER}:{PASSWORD}")).unwrap(),
            only_de,
        ]);
    })
    .await;
    let _agents = net
        .agents(&[
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
        ])
        .await;
    let answer = inventory(net.proxy(), Some((USER, PASSWORD))).await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    let countries = &body["countries"];
    assert_eq!(countries["US"]["exits"], "1+", "{body}");
    assert_eq!(countries["DE"]["exits"], "1+", "{body}");
    assert_eq!(countries["JP"]["exits"], "1+", "{body}");
    assert_eq!(countries["US"]["cities"]["dallas"], "1+", "{body}");
    assert_eq!(countries["DE"]["asns"]["3320"], "1+", "{body}");

    let answer = inventory(net.proxy(), Some(("dora", "d0ra"))).await;
    let body: serde_json::Value = answer.json().await.unwrap();
    let names: Vec<_> = body["countries"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["DE"], "{body}");

    let answer = inventory(net.proxy(), Some((USER, "wrong"))).await;
    assert_eq!(answer.status(), 407);
    let answer = inventory(net.proxy(), None).await;
    assert_eq!(answer.status(), 407);
}
