//! Test fixtures: a gateway and agents on distinct loopback addresses with a
//! generated GeoIP database, target servers, and raw proxy clients. Everything
//! binds port 0 on 127.0.0.0/8, and every wait has a timeout.

#![allow(dead_code)]

pub mod flaky;
pub mod fleet;
pub mod processes;
pub mod raw;
pub mod targets;
pub mod tls;
pub mod udp;

pub use exitpool::agent::TransportChoice;
use exitpool::agent::{Agent, AgentHandle};
use exitpool::gateway::auth::{AgentTokens, Customer, Users};
use exitpool::gateway::{Gateway, GatewayConfig};
use exitpool::geoip::testdb::{self, Layout, TestEntry};
use exitpool::geoip::GeoIp;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every await in a test gets this bound, so a bug fails fast instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// The agent token every fixture gateway accepts.
pub const TOKEN: &str = "test-token-8d3f1c7a9e2b4d60f5a1c3e7b9d2f4a6";
/// A customer every fixture gateway knows.
pub const USER: &str = "alice";
/// Alice's password.
pub const PASSWORD: &str = "s3cret";

/// Awaits `future` for at most [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The test GeoIP database: 127.0.0.2 -> US-NY, .3 -> US-TX, .4 -> DE-BE,
/// .5 -> DE-BY, .6 -> JP-13 (with ASN and city on all; regions only in the
/// MaxMind layout, as in real databases), 127.0.0.1 and others unknown.
pub fn test_geoip(layout: Layout) -> GeoIp {
    let entries: Vec<TestEntry> = [
        ("127.0.0.2", "US", "NY", 7922, "New York"),
        ("127.0.0.3", "US", "TX", 7018, "Dallas"),
        ("127.0.0.4", "DE", "BE", 3320, "Berlin"),
        ("127.0.0.5", "DE", "BY", 3320, "Munich"),
        ("127.0.0.6", "JP", "13", 2516, "Tokyo"),
    ]
    .into_iter()
    .map(|(ip, country, subdivision, asn, city)| {
        TestEntry::host(ip.parse().unwrap())
            .country(country)
            .subdivision(subdivision)
            .asn(asn)
            .city(city)
    })
    .collect();
    GeoIp::from_bytes(vec![testdb::build(layout, &entries)]).expect("test database loads")
}

/// Defines a test once per tunnel transport: `over_both_transports! { async fn
/// name(transport) { ... } }` becomes `name::quic` and `name::tcp`, each
/// running the body with that [`TransportChoice`] (set it on the fixture with
/// [`TestGateway::over`]). Parametrised, so the fault tests are never copied.
/// A first `#[runtime(...)]` passes its arguments to `#[tokio::test]`, e.g.
/// `#[runtime(flavor = "multi_thread", worker_threads = 2)]`.
#[macro_export]
macro_rules! over_both_transports {
    (#[runtime($($runtime:tt)*)] $(#[$meta:meta])* async fn $name:ident($transport:ident) $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test($($runtime)*)]
            async fn quic() {
                run(TransportChoice::Quic).await
            }

            #[tokio::test($($runtime)*)]
            async fn tcp() {
                run(TransportChoice::Tcp).await
            }

            $(#[$meta])*
            async fn run($transport: TransportChoice) $body
        }
    };
    ($(#[$meta:meta])* async fn $name:ident($transport:ident) $body:block) => {
        $crate::over_both_transports! {
            #[runtime()] $(#[$meta])* async fn $name($transport) $body
        }
    };
}

/// A gateway plus its state directory.
pub struct TestGateway {
    pub gateway: Gateway,
    pub state: tempfile::TempDir,
    /// The transport [`TestGateway::agent_builder`]'s agents use: QUIC unless
    /// a test says otherwise, so a slow machine never turns a race into TCP.
    pub transport: TransportChoice,
}

impl TestGateway {
    /// A gateway on 127.0.0.1 port 0 everywhere, with alice and the test token.
    pub async fn start() -> TestGateway {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestGateway::start`], with `adjust` applied to the config first.
    pub async fn start_with(adjust: impl FnOnce(&mut GatewayConfig)) -> TestGateway {
        let state = tempfile::tempdir().expect("temp dir");
        let config = Self::config(state.path());
        Self::start_in(state, config, adjust).await
    }

    /// The fixture configuration for a state directory.
    pub fn config(state: &std::path::Path) -> GatewayConfig {
        let mut config = GatewayConfig::new(state.to_owned());
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        config.listen = local;
        config.tunnel = local;
        config.admin = Some(local);
        config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}")).unwrap()]);
        config.agent_tokens = AgentTokens::new([TOKEN.to_owned()]);
        config.geoip = Arc::new(test_geoip(Layout::MaxMind));
        config.shutdown_grace = Duration::from_secs(2);
        config
    }

    /// Starts a gateway in an existing state directory.
    pub async fn start_in(
        state: tempfile::TempDir,
        mut config: GatewayConfig,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> TestGateway {
        init_tracing();
        config.state_dir = state.path().to_owned();
        adjust(&mut config);
        let gateway = within("gateway start", Gateway::start(config))
            .await
            .expect("gateway starts");
        TestGateway {
            gateway,
            state,
            transport: TransportChoice::Quic,
        }
    }

    /// The same fixture, its agents on `transport`.
    pub fn over(mut self, transport: TransportChoice) -> TestGateway {
        self.transport = transport;
        self
    }

    /// The `--transport` value for agent processes.
    pub fn transport_flag(&self) -> &'static str {
        match self.transport {
            TransportChoice::Quic => "quic",
            TransportChoice::Tcp => "tcp",
            TransportChoice::Auto => "auto",
        }
    }

    pub fn proxy(&self) -> SocketAddr {
        self.gateway.listen_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.gateway.admin_addr().expect("admin enabled")
    }

    /// A gateway whose only customer is alice with a byte quota of `quota`,
    /// and one US agent.
    pub async fn with_quota(quota: u64) -> (TestGateway, AgentHandle) {
        let net = TestGateway::start_with(|config| {
            config.users = Users::new([Customer::parse(&format!("{USER}:{PASSWORD}"))
                .unwrap()
                .with_limits(exitpool::gateway::auth::Limits {
                    quota_bytes: Some(quota),
                    ..Default::default()
                })]);
        })
        .await;
        let agent = net.agent("127.0.0.2").await;
        (net, agent)
    }

    /// A builder for an agent bound to `ip`, allowed to reach loopback targets.
    pub fn agent_builder(&self, ip: &str) -> exitpool::agent::AgentBuilder {
        Agent::builder(
            self.gateway.tunnel_addr().to_string(),
            self.gateway.pin().parse().unwrap(),
            TOKEN,
        )
        .bind(ip.parse::<IpAddr>().unwrap())
        .allow_private(true)
        .transport(self.transport)
        // A strict agent would ask the system resolver for ipv4only.arpa:
        // traffic off loopback. Tests that need a NAT64 prefix inject one.
        .nat64(exitpool::agent::Nat64Source::none())
    }

    /// Starts an agent on `ip` and waits until the gateway has welcomed it.
    pub async fn agent(&self, ip: &str) -> AgentHandle {
        self.spawn(self.agent_builder(ip)).await
    }

    /// Starts an agent on each of `ips`, in order, each welcomed before the next.
    pub async fn agents(&self, ips: &[&str]) -> Vec<AgentHandle> {
        let mut agents = Vec::with_capacity(ips.len());
        for ip in ips {
            agents.push(self.agent(ip).await);
        }
        agents
    }

    /// The real `agent` binary bound to `ip` against this gateway, keeping its
    /// state (device key) in `state`.
    pub fn agent_process(&self, ip: &str, state: &std::path::Path) -> exitpool_launcher::Process {
        exitpool_launcher::Launch::new(env!("CARGO_BIN_EXE_agent"))
            .args(["--gateway", &self.gateway.tunnel_addr().to_string()])
            .args(["--pin", self.gateway.pin()])
            .args(["--bind", ip, "--allow-private"])
            .args(["--transport", self.transport_flag()])
            .arg("--state-dir")
            .arg(state)
            .env("EXITPOOL_AGENT_TOKEN", TOKEN)
            .spawn()
            .expect("agent binary starts")
    }

    /// An agent.toml for this gateway: the agent on 127.0.0.2 with consent,
    /// loopback targets allowed, its state under `dir` and its status port
    /// `status`, then the file's own `extra` lines.
    pub fn agent_toml(&self, dir: &std::path::Path, status: SocketAddr, extra: &str) -> String {
        format!(
            "gateway = \"{gateway}\"\n\
             pin = \"{pin}\"\n\
             token = \"{TOKEN}\"\n\
             consent = true\n\
             bind = \"127.0.0.2\"\n\
             allow_private = true\n\
             transport = \"{transport}\"\n\
             state_dir = \"{state}\"\n\
             status_listen = \"{status}\"\n\
             {extra}",
            gateway = self.gateway.tunnel_addr(),
            pin = self.gateway.pin(),
            transport = self.transport_flag(),
            state = dir.join("state").display(),
        )
    }

    /// Starts an agent on `ip` with the default (strict) exit policy.
    pub async fn strict_agent(&self, ip: &str) -> AgentHandle {
        self.spawn(self.agent_builder(ip).allow_private(false))
            .await
    }

    /// Spawns `builder`'s agent and waits until the gateway has welcomed it.
    pub async fn spawn(&self, builder: exitpool::agent::AgentBuilder) -> AgentHandle {
        let handle = builder.spawn().expect("agent spawns");
        within("agent connects", handle.connected()).await;
        handle
    }

    /// The value of a counter or gauge in the gateway's `/metrics` (which must
    /// carry it).
    pub async fn metric(&self, name: &str) -> u64 {
        self.metric_with(name, None)
            .await
            .unwrap_or_else(|| panic!("{name} not in /metrics")) as u64
    }

    /// One sample of `GET /metrics` (the first whose labels include `label`),
    /// parsed as Prometheus does; `None` when the series is absent.
    pub async fn metric_with(&self, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let url = format!("http://{}/metrics", self.admin());
        let answer = within("GET /metrics", reqwest::get(url))
            .await
            .expect("metrics answer");
        let text = within("metrics body", answer.text()).await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("valid Prometheus text");
        let sample = scrape.samples.iter().find(|s| {
            s.metric == name && label.is_none_or(|(key, value)| s.labels.get(key) == Some(value))
        })?;
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// The `/stats` entry of the exit with id `exit_id`.
    pub async fn exit_stats(&self, exit_id: &str) -> serde_json::Value {
        let stats = self.stats().await;
        stats["per_agent"]
            .as_array()
            .expect("per_agent list")
            .iter()
            .find(|agent| agent["exit_id"] == exit_id)
            .cloned()
            .unwrap_or_else(|| panic!("exit {exit_id} not in {stats}"))
    }

    /// `GET /stats` as JSON.
    pub async fn stats(&self) -> serde_json::Value {
        let url = format!("http://{}/stats", self.admin());
        let response = within("GET /stats", reqwest::Client::new().get(url).send())
            .await
            .expect("stats answers");
        within("stats body", response.json())
            .await
            .expect("stats is JSON")
    }
}

/// Basic credentials for a proxy header.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The head of an HTTP response read from a raw socket.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed).
pub async fn read_head(stream: &mut TcpStream) -> Head {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        let byte = within("response head", stream.read_u8())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "head cut short after {:?}: {e}",
                    String::from_utf8_lossy(&raw)
                )
            });
        raw.push(byte);
        assert!(raw.len() < 64 * 1024, "head too long");
    }
    let text = String::from_utf8(raw).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (key, value) = line.split_once(':').expect("header line");
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Head { status, headers }
}

/// Sends `CONNECT target` with the given credentials (if any) and reads the head.
pub async fn connect(
    proxy: SocketAddr,
    target: &str,
    credentials: Option<(&str, &str)>,
) -> (Head, TcpStream) {
    let stream = within("connect to proxy", TcpStream::connect(proxy))
        .await
        .expect("proxy accepts");
    connect_on(stream, target, credentials).await
}

/// [`connect`] from the loopback address `from` (not 127.0.0.1, which the
/// balancer tests' gateways trust to send PROXY headers).
pub async fn connect_from_ip(
    from: &str,
    proxy: SocketAddr,
    target: &str,
    credentials: Option<(&str, &str)>,
) -> (Head, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let stream = within("connect to proxy", socket.connect(proxy))
        .await
        .expect("proxy accepts");
    connect_on(stream, target, credentials).await
}

async fn connect_on(
    mut stream: TcpStream,
    target: &str,
    credentials: Option<(&str, &str)>,
) -> (Head, TcpStream) {
    let auth = credentials
        .map(|(user, password)| format!("Proxy-Authorization: {}\r\n", basic(user, password)))
        .unwrap_or_default();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    within("send CONNECT", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (head, stream)
}

/// `CONNECT` as alice with `params` appended to the user name.
pub async fn connect_as(proxy: SocketAddr, target: SocketAddr, params: &str) -> (Head, TcpStream) {
    connect(
        proxy,
        &target.to_string(),
        Some((&format!("{USER}{params}"), PASSWORD)),
    )
    .await
}

/// Sends an absolute-form `GET url` (plain-HTTP proxying) as alice on an open
/// proxy connection, `Host: host`, and reads the answer's head.
pub async fn absolute_get(stream: &mut TcpStream, url: &str, host: &str) -> Head {
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(USER, PASSWORD)
    );
    within("send GET", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    read_head(stream).await
}

/// Sends a minimal HTTP/1.1 GET inside an established tunnel and returns the body.
pub async fn get_in_tunnel(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n");
    within("send GET", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut response = Vec::new();
    within("read response", stream.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (_, body) = text.split_once("\r\n\r\n").expect("complete response");
    body.to_owned()
}

/// Which exit address the target saw for one CONNECT with `params`.
pub async fn exit_ip(proxy: SocketAddr, target: SocketAddr, params: &str) -> (Head, String) {
    let (head, mut stream) = connect_as(proxy, target, params).await;
    assert_eq!(head.status, 200, "{head:?}");
    let body = get_in_tunnel(&mut stream, "/ip").await;
    (head, body)
}
