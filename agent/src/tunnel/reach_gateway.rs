//! Reaching the gateway (not to be confused with dialling targets,
//! [`crate::dial`]) over either tunnel transport: QUIC, TLS over TCP, or a
//! race of the two (`--transport auto`, the default).
//!
//! The race is happy-eyeballs style: QUIC starts at once, TLS over TCP
//! [`AgentConfig::race_delay`] later unless QUIC has finished its handshake by
//! then, and the first tunnel up wins (the other attempt is dropped). The
//! winner is remembered in the state directory; an agent that last won over
//! TCP goes straight to TCP, and [`super::session`] tries QUIC again in the
//! background ([`quic_probe`]) and moves over when it works.
//!
//! Several gateways (`--gateway` repeated, or a name with several addresses)
//! are tried in the agent's own order ([`gateway_order`]): rendezvous hashing of
//! the agent id with each address, so every agent prefers one gateway, agents
//! spread evenly, and a gateway added or removed moves only the agents that
//! prefer it. Every connection cycle resolves the names again (a gateway added
//! to a DNS name is used without new configuration) and starts at the
//! preferred gateway, failing over along the order.

use super::reach_error::ReachError;
use crate::config::{AgentConfig, TransportChoice, MAX_GATEWAYS};
use crate::error::AgentError;
use crate::shared::Shared;
use crate::tls::ClientConfigs;
use exitpool_protocol::IDLE_TIMEOUT;
use exitpool_transport::tcp::{self, TcpSettings};
use exitpool_transport::{Transport, Tunnel};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tracing::{debug, info, warn};

/// Name the gateway's certificate carries; the pin is what is checked.
const GATEWAY_SERVER_NAME: &str = "exitpool-gateway";

/// How long the UDP endpoint may take to send its last closes when the agent
/// stops.
const ENDPOINT_IDLE_WAIT: Duration = Duration::from_secs(2);

/// Transport settings for the tunnel: keep-alive under home NAT timeouts, bounded
/// receive windows, and exactly as many incoming streams as the agent serves.
pub fn transport_config(max_streams: u32, keep_alive: Duration) -> quinn::TransportConfig {
    let mut transport = exitpool_transport::udp::base_transport();
    // The idle timeout stays above two keep-alives, so a silent tunnel is
    // first seen as degraded (and the agent falls back to TCP).
    let idle = IDLE_TIMEOUT.max(keep_alive * 2 + keep_alive / 2);
    transport
        .max_idle_timeout(Some(
            idle.try_into()
                .unwrap_or_else(|_| IDLE_TIMEOUT.try_into().expect("idle timeout fits")),
        ))
        .keep_alive_interval(Some(keep_alive))
        .max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u32.into());
    transport
}

/// What the agent reaches its gateway with: its UDP endpoint, the TLS
/// settings of both transports, and the id its gateway order hangs on.
pub(super) struct GatewayDialer {
    pub endpoint: quinn::Endpoint,
    pub configs: ClientConfigs,
    pub agent_id: String,
}

/// A tunnel up, and where to.
pub(super) struct Reached {
    pub tunnel: Tunnel,
    /// The gateway address it reached.
    pub address: SocketAddr,
    /// How many gateway addresses there were to choose from.
    pub candidates: usize,
}

impl GatewayDialer {
    /// The UDP endpoint on the `--bind` address (dual-stack by default) and the
    /// TLS settings that check the gateway's pin.
    pub fn new(shared: &Shared) -> Result<GatewayDialer, AgentError> {
        let config = &shared.config;
        let local = SocketAddr::new(config.bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), 0);
        let endpoint = bind_endpoint(local).map_err(|source| AgentError::Bind {
            addr: local,
            source,
        })?;
        let configs = crate::tls::client_configs(
            config.pin,
            transport_config(config.max_streams, config.keep_alive),
        )
        .map_err(|e| AgentError::Tls(e.to_string()))?;
        Ok(GatewayDialer {
            endpoint,
            configs,
            agent_id: shared.agent_id.clone(),
        })
    }

    /// Lets the endpoint send its last closes, for at most a moment.
    pub async fn wait_idle(&self) {
        let _ = tokio::time::timeout(ENDPOINT_IDLE_WAIT, self.endpoint.wait_idle()).await;
    }

    /// A tunnel to the first gateway that answers, in [`gateway_order`];
    /// `prefer_tcp` (the remembered winner) skips the race under `Auto`. Each
    /// attempt is bounded by the handshake timeout.
    pub async fn reach(
        &self,
        config: &AgentConfig,
        prefer_tcp: bool,
    ) -> Result<Reached, ReachError> {
        let candidates =
            resolve_gateways(&config.gateways, config.bind, config.handshake_timeout).await?;
        let ordered = gateway_order(&self.agent_id, candidates);
        let mut failures = Vec::new();
        for &address in &ordered {
            match self.reach_address(config, address, prefer_tcp).await {
                Ok(tunnel) => {
                    // A gateway skipped for a wrong certificate is worth a line,
                    // but must not count as a mismatch of this good connection.
                    if self.configs.verifier.take_mismatch() {
                        warn!(joined = %address, "a gateway tried before this one presented a certificate that does not match the pin");
                    }
                    return Ok(Reached {
                        tunnel,
                        address,
                        candidates: ordered.len(),
                    });
                }
                Err(error) => {
                    if ordered.len() > 1 {
                        info!(gateway = %address, %error, "gateway unreachable; trying the next");
                    }
                    failures.push((address, error));
                }
            }
        }
        Err(ReachError::Every(failures))
    }

    /// A tunnel to `address` by the configured transport.
    async fn reach_address(
        &self,
        config: &AgentConfig,
        address: SocketAddr,
        prefer_tcp: bool,
    ) -> Result<Tunnel, ReachError> {
        match config.transport {
            TransportChoice::Quic => self.quic(config, address).await.map(Tunnel::Quic),
            TransportChoice::Tcp => self.tcp(config, address).await.map(Tunnel::Tcp),
            TransportChoice::Auto if prefer_tcp => self.tcp(config, address).await.map(Tunnel::Tcp),
            TransportChoice::Auto => self.race(config, address).await,
        }
    }

    /// QUIC first, TCP after the race delay, the first tunnel up wins.
    async fn race(&self, config: &AgentConfig, address: SocketAddr) -> Result<Tunnel, ReachError> {
        let quic = self.quic(config, address);
        let tcp = async {
            tokio::time::sleep(config.race_delay).await;
            self.tcp(config, address).await
        };
        tokio::pin!(quic, tcp);
        let (mut quic_failed, mut tcp_failed) = (None, None);
        loop {
            tokio::select! {
                result = &mut quic, if quic_failed.is_none() => match result {
                    Ok(connection) => return Ok(Tunnel::Quic(connection)),
                    Err(error) => {
                        debug!(%error, "QUIC lost the race");
                        quic_failed = Some(error);
                    }
                },
                result = &mut tcp, if tcp_failed.is_none() => match result {
                    Ok(tunnel) => {
                        info!("QUIC did not answer in time; the tunnel runs over TLS/TCP");
                        return Ok(Tunnel::Tcp(tunnel));
                    }
                    Err(error) => {
                        debug!(%error, "TLS/TCP lost the race");
                        tcp_failed = Some(error);
                    }
                },
            }
            if let (Some(quic), Some(tcp)) = (&quic_failed, &tcp_failed) {
                return Err(ReachError::Race {
                    quic: Box::new(quic.clone()),
                    tcp: Box::new(tcp.clone()),
                });
            }
        }
    }

    /// A QUIC connection whose handshake is done.
    pub async fn quic(
        &self,
        config: &AgentConfig,
        mut address: SocketAddr,
    ) -> Result<quinn::Connection, ReachError> {
        // A dual-stack socket reaches IPv4 gateways through mapped addresses.
        if self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false)
        {
            if let IpAddr::V4(v4) = address.ip() {
                address = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), address.port());
            }
        }
        let connecting = async {
            self.endpoint
                .connect_with(self.configs.quic.clone(), address, GATEWAY_SERVER_NAME)
                .map_err(|e| ReachError::Quic(e.to_string()))?
                .await
                .map_err(|e| ReachError::Quic(e.to_string()))
        };
        tokio::time::timeout(config.handshake_timeout, connecting)
            .await
            .map_err(|_| ReachError::TimedOut("QUIC"))?
    }

    /// A TLS-over-TCP tunnel whose TLS and HTTP/2 handshakes are done.
    async fn tcp(
        &self,
        config: &AgentConfig,
        address: SocketAddr,
    ) -> Result<tcp::TcpTunnel, ReachError> {
        let connecting = async {
            let socket = if address.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| ReachError::tcp("TCP socket", &e))?;
            if let Some(bind) = config.bind {
                socket
                    .bind(SocketAddr::new(bind, 0))
                    .map_err(|e| ReachError::tcp(format!("binding {bind}"), &e))?;
            }
            let stream = socket
                .connect(address)
                .await
                .map_err(|e| ReachError::tcp(format!("TCP connect to {address}"), &e))?;
            let _ = stream.set_nodelay(true);
            let name =
                rustls::pki_types::ServerName::try_from(GATEWAY_SERVER_NAME).expect("valid name");
            let tls = tokio_rustls::TlsConnector::from(self.configs.tcp.clone())
                .connect(name, stream)
                .await
                .map_err(|e| ReachError::tcp("TLS handshake", &e))?;
            tcp::answering_end(tls, tcp_settings(config))
                .await
                .map_err(|e| ReachError::tcp("HTTP/2 handshake", &e))
        };
        tokio::time::timeout(config.handshake_timeout, connecting)
            .await
            .map_err(|_| ReachError::TimedOut("TLS/TCP"))?
    }
}

/// The agent's TCP tunnel settings: the gateway may open as many relay
/// streams as the agent serves, plus the control stream; the agent pings at
/// its keep-alive period and gives up on an unanswered ping after the
/// protocol's idle timeout.
pub fn tcp_settings(config: &AgentConfig) -> TcpSettings {
    TcpSettings {
        max_incoming_streams: config.max_streams.saturating_add(1),
        keep_alive: config.keep_alive,
        idle_timeout: exitpool_protocol::IDLE_TIMEOUT.max(config.keep_alive * 2),
        initial_connection_window: exitpool_transport::udp::CONNECTION_WINDOW,
        streams_before_admitted: None,
        frames_before_admitted: None,
    }
}

/// Under `Auto` on TCP: tries QUIC to the same gateway (`address`) every
/// [`AgentConfig::quic_retry`] until a handshake succeeds, and returns that
/// tunnel for the session to move to.
pub(super) async fn quic_probe(
    dialer: &GatewayDialer,
    config: &AgentConfig,
    address: SocketAddr,
) -> Tunnel {
    loop {
        tokio::time::sleep(config.quic_retry).await;
        match dialer.quic(config, address).await {
            Ok(connection) => return Tunnel::Quic(connection),
            Err(error) => debug!(%error, "QUIC still unavailable; staying on TLS/TCP"),
        }
    }
}

/// Whether the state directory says TCP won last time (read off the runtime).
pub(super) async fn remembered_tcp(shared: &Arc<Shared>) -> bool {
    let Some(dir) = shared.config.state_dir.clone() else {
        return false;
    };
    tokio::task::spawn_blocking(move || crate::state::remembered_transport(&dir))
        .await
        .ok()
        .flatten()
        .as_deref()
        == Some("tcp")
}

/// Remembers the transport that won (off the runtime thread).
pub(super) async fn remember_transport(shared: &Arc<Shared>, transport: Transport) {
    let Some(dir) = shared.config.state_dir.clone() else {
        return;
    };
    let name = transport.as_str();
    match tokio::task::spawn_blocking(move || crate::state::remember_transport(&dir, name)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "saving the tunnel transport"),
        Err(error) => warn!(%error, "saving the tunnel transport did not finish"),
    }
}

/// A UDP endpoint on `local`; an unspecified IPv6 address is dual-stack where the
/// OS allows, falling back to IPv4.
fn bind_endpoint(local: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let client = |addr| exitpool_transport::udp::endpoint(addr, Default::default(), None);
    match client(local) {
        Ok(endpoint) => Ok(endpoint),
        Err(_) if local.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            client(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        }
        Err(error) => Err(error),
    }
}

/// Every address of every gateway name, of the `--bind` address's family,
/// without repeats, at most [`MAX_GATEWAYS`]. A name that does not resolve is
/// skipped while another does.
async fn resolve_gateways(
    gateways: &[String],
    bind: Option<IpAddr>,
    within: Duration,
) -> Result<Vec<SocketAddr>, ReachError> {
    let mut found: Vec<SocketAddr> = Vec::new();
    let mut failures = Vec::new();
    for gateway in gateways {
        let resolved = tokio::time::timeout(within, tokio::net::lookup_host(gateway.as_str()))
            .await
            .map_err(|_| format!("resolving {gateway} timed out"))
            .and_then(|found| found.map_err(|e| format!("resolving {gateway}: {e}")));
        match resolved {
            Ok(addresses) => {
                for address in addresses
                    .filter(|address| bind.is_none_or(|bind| bind.is_ipv4() == address.is_ipv4()))
                {
                    if !found.contains(&address) && found.len() < MAX_GATEWAYS {
                        found.push(address);
                    }
                }
            }
            Err(error) => failures.push(error),
        }
    }
    if found.is_empty() {
        failures.push(format!(
            "{} has no address of the --bind address's family",
            gateways.join(", ")
        ));
        return Err(ReachError::Resolve(failures));
    }
    for error in failures {
        debug!(%error, "a gateway name did not resolve; using the others");
    }
    Ok(found)
}

/// The order an agent tries `addresses` in: IPv4 first (the gateway then
/// observes the home's public IPv4 address, which sits on the router, not on
/// any interface of this device; its public IPv6 addresses are on its
/// interfaces, read by the agent itself), then by rendezvous
/// (highest-random-weight) hashing: the highest SHA-256 of agent id and address
/// first. Stable across restarts and independent of the order given, and a
/// gateway joining or leaving changes the preference only of agents that rank
/// it first.
pub fn gateway_order(agent_id: &str, mut addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let weight = |address: &SocketAddr| {
        let digest = Sha256::new()
            .chain_update(agent_id.as_bytes())
            .chain_update([0u8])
            .chain_update(address.to_string().as_bytes())
            .finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 of 32 bytes"))
    };
    addresses.sort_by_cached_key(|address| (address.is_ipv6(), std::cmp::Reverse(weight(address))));
    addresses
}

#[cfg(test)]
mod tests {
    use super::gateway_order;
    use std::net::SocketAddr;

    fn gateways(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([192, 0, 2, i as u8 + 1], 4433)))
            .collect()
    }

    #[test]
    fn the_order_is_stable_and_ignores_the_given_order() {
        let mut reversed = gateways(5);
        reversed.reverse();
        assert_eq!(
            gateway_order("agent-1", gateways(5)),
            gateway_order("agent-1", reversed)
        );
    }

    #[test]
    fn agents_spread_and_a_new_gateway_moves_few() {
        let agents: Vec<String> = (0..1000).map(|i| format!("agent-{i}")).collect();
        let before: Vec<SocketAddr> = agents
            .iter()
            .map(|a| gateway_order(a, gateways(4))[0])
            .collect();
        for gateway in gateways(4) {
            let share = before.iter().filter(|&&g| g == gateway).count();
            assert!((150..350).contains(&share), "{gateway}: {share} of 1000");
        }
        let after: Vec<SocketAddr> = agents
            .iter()
            .map(|a| gateway_order(a, gateways(5))[0])
            .collect();
        let fifth = gateways(5)[4];
        for (old, new) in before.iter().zip(&after) {
            assert!(old == new || *new == fifth, "moved between old gateways");
        }
        let moved = after.iter().filter(|&&g| g == fifth).count();
        assert!((120..280).contains(&moved), "{moved} of 1000 moved");
    }

    #[test]
    fn ipv4_comes_first() {
        let v6: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        let mut addresses = gateways(3);
        addresses.insert(0, v6);
        let ordered = gateway_order("agent-1", addresses);
        assert_eq!(ordered[3], v6);
    }
}
