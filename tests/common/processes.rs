//! Gateway processes (the real binary) and customers that reach them from a
//! chosen loopback address, for the tests of a fleet behind a balancer.

use super::{within, WAIT};
use exitpool_launcher::binaries::{GATEWAY_ON_LOOPBACK, GATEWAY_READY};
use exitpool_launcher::{GatewayBanner, Launch, Process, Ready};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// One gateway process and what its output said.
pub struct GatewayProcess {
    pub process: Process,
    pub banner: GatewayBanner,
    pub admin: SocketAddr,
}

impl GatewayProcess {
    /// Starts the `gateway` binary on `state` with every port on loopback and
    /// `args` added, and waits until it says where it listens.
    pub async fn start(state: &Path, args: &[String]) -> GatewayProcess {
        let mut process = Launch::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--state-dir")
            .arg(state)
            .args(GATEWAY_ON_LOOPBACK)
            .args(args)
            .start(Ready::line(GATEWAY_READY), WAIT)
            .await
            .expect("the gateway binary starts");
        let stats_line = process
            .line_with("gateway: stats on http://", WAIT)
            .await
            .unwrap();
        let admin = stats_line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.trim_end_matches("/stats").parse().ok())
            .unwrap_or_else(|| panic!("admin address in {stats_line:?}"));
        let banner = process
            .lines()
            .iter()
            .find_map(|line| GatewayBanner::parse(line))
            .expect("the ready line");
        GatewayProcess {
            process,
            banner,
            admin,
        }
    }

    /// Its `/stats` document.
    pub async fn stats(&self) -> serde_json::Value {
        let url = format!("http://{}/stats", self.admin);
        let answer = within("GET /stats", reqwest::get(url)).await.unwrap();
        within("stats body", answer.json()).await.unwrap()
    }

    /// An agent of this gateway on `ip` over QUIC with the tests' token,
    /// allowed loopback targets, once it has joined.
    pub async fn agent(&self, ip: &str) -> exitpool::agent::AgentHandle {
        let agent = exitpool::agent::Agent::builder(
            self.banner.tunnel.to_string(),
            self.banner.pin.parse().unwrap(),
            super::TOKEN,
        )
        .bind(ip.parse().unwrap())
        .allow_private(true)
        .transport(super::TransportChoice::Quic)
        .spawn()
        .expect("agent spawns");
        within("agent joins", agent.connected()).await;
        agent
    }
}

/// A free loopback TCP port for a listener that cannot be given port 0
/// (HAProxy's, a gateway's entry ports): [`exitpool_launcher::ports::free_port`].
pub fn free_port() -> SocketAddr {
    exitpool_launcher::ports::free_port().expect("a free loopback port")
}

/// A customer's HTTP client on `from`, through `proxy`.
pub fn customer(
    from: &str,
    proxy: SocketAddr,
    credentials: Option<(&str, &str)>,
) -> reqwest::Client {
    let mut through = reqwest::Proxy::http(format!("http://{proxy}")).unwrap();
    if let Some((user, password)) = credentials {
        through = through.basic_auth(user, password);
    }
    reqwest::Client::builder()
        .proxy(through)
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// `GET /ip` on `target` through `client`: the status and the exit's address.
pub async fn exit_of(client: &reqwest::Client, target: SocketAddr) -> (u16, String) {
    let (status, _, body) = get_ip(client, target).await;
    (status, body)
}

/// `GET /ip` on `target` through `client`: status, headers and body.
pub async fn get_ip(
    client: &reqwest::Client,
    target: SocketAddr,
) -> (u16, reqwest::header::HeaderMap, String) {
    let answer = within(
        "GET through the proxy",
        client.get(format!("http://{target}/ip")).send(),
    )
    .await
    .expect("an answer");
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    (
        status,
        headers,
        within("body", answer.text()).await.unwrap(),
    )
}
