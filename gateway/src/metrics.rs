//! Prometheus metrics for `GET /metrics` (OpenMetrics text, from
//! `prometheus-client`).
//!
//! Counters and histograms are bumped where things happen: bytes when relays fold
//! their counts in, errors where [`crate::shared::Shared::record_error`] sees them, connect
//! latency in [`crate::customer::session::open`], tunnel handshake latency in
//! [`crate::tunnel`]. Gauges that describe the pool (agents, by country, live
//! streams, sessions) are read from the agent directory when a scrape arrives.
//!
//! Every series covers this gateway alone, so a fleet's figures add up over its
//! gateways, except those named `exitpool_fleet_*`, which cover the whole pool
//! this gateway picks from (the same on every gateway of a fleet; never add
//! them up). On a gateway without a fleet both read the same.

use crate::directory::AgentDirectory;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

/// `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label for per-country series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CountryLabel {
    /// ISO code, or `??`.
    pub country: String,
}

/// Label for per-transport series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `quic` or `tcp`.
    pub transport: &'static str,
}

/// Label for per-code series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Product error code (README error table).
    pub code: String,
}

/// Label for retry causes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// The product code of the failure that was retried.
    pub cause: String,
}

/// Label for health bands.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BandLabel {
    /// `healthy` (success rate at least 0.9), `degraded` (0.5 to 0.9), `failing`
    /// (below 0.5) or `cooling` (out of routing now).
    pub band: String,
}

/// What fleet mode asks of Redis and of the other gateways (all zero on a
/// gateway on its own).
#[derive(Debug, Clone, Default)]
pub struct FleetCounters {
    /// Redis commands, pipelines and scripts sent (each one round trip).
    pub redis_round_trips: Counter,
    /// Of those, the ones that failed or timed out.
    pub redis_errors: Counter,
    /// Round trips for sticky sessions (at most one per session's first
    /// connection on this gateway, and one per move).
    pub session_round_trips: Counter,
    /// Customer streams carried to another gateway's exit.
    pub peer_streams_out: Counter,
    /// Streams other gateways carried to this one's exits.
    pub peer_streams_in: Counter,
    /// Records read from Redis that were ignored because they are not signed
    /// with the fleet's key.
    pub records_refused: Counter,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Bytes customers sent towards targets.
    pub bytes_up: Counter,
    /// Bytes targets sent towards customers.
    pub bytes_down: Counter,
    /// Connections that reached their target.
    pub connections: Counter,
    /// Failures by product code.
    pub errors: Family<CodeLabel, Counter>,
    /// From a customer's request to the exit's `Opened`.
    pub connect_seconds: Histogram,
    /// From an agent's first QUIC packet to its `Welcome`.
    pub tunnel_handshake_seconds: Histogram,
    /// Argon2 verifications run (a wrong password, a new one, or an unknown name).
    pub password_hashes: Counter,
    /// Agent handshakes answered with a stateless Retry (handshake pressure).
    pub tunnel_retries: Counter,
    /// Agents told to come back later: their network or token is at its cap.
    pub agents_turned_away: Counter,
    /// Opens tried again on another exit, by the failure's code.
    pub open_retries: Family<CauseLabel, Counter>,
    /// SOCKS5 UDP datagrams dropped, by cause (`crate::customer` `socks_udp`).
    pub udp_dropped: Family<CauseLabel, Counter>,
    /// SOCKS5 UDP datagrams carried through a tunnel as QUIC DATAGRAM frames.
    pub udp_frames: Counter,
    /// SOCKS5 UDP datagrams carried on their flow's stream (TLS/TCP, or too
    /// large for a frame).
    pub udp_stream_datagrams: Counter,
    /// Exits taken out of routing after failing.
    pub exit_coolings: Counter,
    /// Agents dropped because their tunnel failed a liveness check.
    pub exits_unresponsive: Counter,
    /// Liveness checks asked of exits' tunnels (only while customers wait).
    pub liveness_checks: Counter,
    exits_by_health: Family<BandLabel, Gauge>,
    fleet_agents: Gauge,
    fleet_agents_by_country: Family<CountryLabel, Gauge>,
    /// Agents refused because their identity proof did not verify (impostors,
    /// replayed or malformed proofs).
    pub agent_identity_refusals: Counter,
    /// TLS handshakes on the customer ports refused because their source
    /// address was over its handshake budget.
    pub customer_tls_handshakes_refused: Counter,
    /// TLS handshakes completed on the customer ports (HTTPS proxy
    /// connections), whichever protocol ALPN chose.
    pub customer_tls_connections: Counter,
    /// Streams HTTP/2 customers opened on the HTTPS proxy port; each is a
    /// customer connection of its own.
    pub customer_h2_streams: Counter,
    /// QUIC connections completed on `--listen-h3` (MASQUE over HTTP/3).
    pub customer_h3_connections: Counter,
    /// CONNECT-UDP requests (streams) MASQUE customers opened over HTTP/3.
    pub customer_masque_requests: Counter,
    /// Fleet mode's Redis round trips and peer streams.
    pub fleet: FleetCounters,
    agents: Gauge,
    agents_by_country: Family<CountryLabel, Gauge>,
    agents_by_transport: Family<TransportLabel, Gauge>,
    live_streams: Gauge,
    sessions: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("exitpool");
        let metrics = Metrics {
            bytes_up: Counter::default(),
            bytes_down: Counter::default(),
            connections: Counter::default(),
            errors: Family::default(),
            // 5 ms .. ~41 s
            connect_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            tunnel_handshake_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            password_hashes: Counter::default(),
            tunnel_retries: Counter::default(),
            agents_turned_away: Counter::default(),
            open_retries: Family::default(),
            udp_dropped: Family::default(),
            udp_frames: Counter::default(),
            udp_stream_datagrams: Counter::default(),
            exit_coolings: Counter::default(),
            exits_unresponsive: Counter::default(),
            liveness_checks: Counter::default(),
            exits_by_health: Family::default(),
            fleet_agents: Gauge::default(),
            fleet_agents_by_country: Family::default(),
            agent_identity_refusals: Counter::default(),
            customer_tls_handshakes_refused: Counter::default(),
            customer_tls_connections: Counter::default(),
            customer_h2_streams: Counter::default(),
            customer_h3_connections: Counter::default(),
            customer_masque_requests: Counter::default(),
            fleet: FleetCounters::default(),
            agents: Gauge::default(),
            agents_by_country: Family::default(),
            agents_by_transport: Family::default(),
            live_streams: Gauge::default(),
            sessions: Gauge::default(),
            registry: Registry::default(),
        };
        metrics.register_pool(&mut registry);
        metrics.register_traffic(&mut registry);
        metrics.register_defences(&mut registry);
        metrics.register_exits(&mut registry);
        metrics.register_customer_ports(&mut registry);
        metrics.register_udp(&mut registry);
        metrics.register_fleet(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Registers the pool's gauges: agents here and fleet-wide, by country,
    /// transport and health band; live streams and sessions.
    fn register_pool(&self, registry: &mut Registry) {
        registry.register(
            "agents",
            "Agents whose tunnels this gateway holds",
            self.agents.clone(),
        );
        registry.register(
            "fleet_agents",
            "Fleet-wide: agents in the pool this gateway picks from (its own and the fleet's)",
            self.fleet_agents.clone(),
        );
        registry.register(
            "fleet_agents_by_country",
            "Fleet-wide: agents in the pool per country (?? when unknown)",
            self.fleet_agents_by_country.clone(),
        );
        registry.register(
            "agents_by_transport",
            "Agent tunnels held, per transport (quic, tcp)",
            self.agents_by_transport.clone(),
        );
        registry.register(
            "agents_by_country",
            "Agents whose tunnels this gateway holds, per country (?? when unknown)",
            self.agents_by_country.clone(),
        );
        registry.register(
            "live_streams",
            "Relay streams open now on the tunnels this gateway holds (its customers' and those other gateways carried in)",
            self.live_streams.clone(),
        );
        registry.register(
            "sessions",
            "Sticky sessions pinned now",
            self.sessions.clone(),
        );
        registry.register(
            "exits_by_health",
            "Exits whose tunnels this gateway holds, by health band (healthy, degraded, failing, cooling)",
            self.exits_by_health.clone(),
        );
    }

    /// Registers customer traffic: bytes, connections, failures by code,
    /// retried opens and connect latency.
    fn register_traffic(&self, registry: &mut Registry) {
        registry.register(
            "bytes_up",
            "Bytes customers sent towards targets",
            self.bytes_up.clone(),
        );
        registry.register(
            "bytes_down",
            "Bytes targets sent towards customers",
            self.bytes_down.clone(),
        );
        registry.register(
            "connections",
            "Customer connections (and plain-HTTP requests) that reached their target",
            self.connections.clone(),
        );
        registry.register(
            "errors",
            "Failed customer requests and relays, by product code",
            self.errors.clone(),
        );
        registry.register(
            "open_retries",
            "Opens tried again on another exit after the exit's own failure, by cause",
            self.open_retries.clone(),
        );
        registry.register(
            "connect_seconds",
            "Time from a customer's request to the exit's Opened",
            self.connect_seconds.clone(),
        );
    }

    /// Registers what the gateway rations or refuses: password checks,
    /// handshakes, agents turned away or not proven.
    fn register_defences(&self, registry: &mut Registry) {
        registry.register(
            "password_hashes",
            "Argon2 password verifications run (off the async runtime, bounded)",
            self.password_hashes.clone(),
        );
        registry.register(
            "tunnel_retries",
            "Agent handshakes asked to prove their address with a QUIC Retry",
            self.tunnel_retries.clone(),
        );
        registry.register(
            "agents_turned_away",
            "Agents told to try again later: their network or enrolment token holds its maximum",
            self.agents_turned_away.clone(),
        );
        registry.register(
            "agent_identity_refusals",
            "Agents refused because their device-key proof did not verify for the connection",
            self.agent_identity_refusals.clone(),
        );
        registry.register(
            "customer_tls_handshakes_refused",
            "TLS handshakes on the customer ports refused: their source address was over --max-tls-handshakes-per-ip",
            self.customer_tls_handshakes_refused.clone(),
        );
        registry.register(
            "tunnel_handshake_seconds",
            "Time from an agent's connection attempt to its Welcome",
            self.tunnel_handshake_seconds.clone(),
        );
    }

    /// Registers exits found failing: coolings, unresponsive tunnels and the
    /// liveness checks asked.
    fn register_exits(&self, registry: &mut Registry) {
        registry.register(
            "exit_coolings",
            "Exits taken out of routing for a while after failing several times in a row",
            self.exit_coolings.clone(),
        );
        registry.register(
            "exits_unresponsive",
            "Agents dropped because their tunnel failed a liveness check while a customer waited",
            self.exits_unresponsive.clone(),
        );
        registry.register(
            "liveness_checks",
            "Liveness checks of exits' tunnels, asked only while a customer waits on one",
            self.liveness_checks.clone(),
        );
    }

    /// Registers the customer ports beside plain HTTP and SOCKS5: TLS,
    /// HTTP/2 and HTTP/3.
    fn register_customer_ports(&self, registry: &mut Registry) {
        registry.register(
            "customer_tls_connections",
            "TLS handshakes completed on the customer ports (HTTPS proxy connections, HTTP/1.1 or HTTP/2)",
            self.customer_tls_connections.clone(),
        );
        registry.register(
            "customer_h2_streams",
            "Streams opened by HTTP/2 customers on the HTTPS proxy port, each a customer connection",
            self.customer_h2_streams.clone(),
        );
        registry.register(
            "customer_h3_connections",
            "QUIC connections completed on the MASQUE port (--listen-h3, HTTP/3)",
            self.customer_h3_connections.clone(),
        );
        registry.register(
            "customer_masque_requests",
            "CONNECT-UDP requests MASQUE customers opened over HTTP/3, each a UDP flow through an exit",
            self.customer_masque_requests.clone(),
        );
    }

    /// Registers SOCKS5 UDP: datagrams dropped, carried as frames or on
    /// streams.
    fn register_udp(&self, registry: &mut Registry) {
        registry.register(
            "udp_datagrams_dropped",
            "SOCKS5 UDP datagrams dropped, by cause (foreign_source, malformed, flow_cap, refused, queue_full)",
            self.udp_dropped.clone(),
        );
        registry.register(
            "udp_frames",
            "SOCKS5 UDP datagrams carried through a tunnel as QUIC DATAGRAM frames, both ways",
            self.udp_frames.clone(),
        );
        registry.register(
            "udp_stream_datagrams",
            "SOCKS5 UDP datagrams carried on their flow's tunnel stream (TLS/TCP, or too large for a frame), both ways",
            self.udp_stream_datagrams.clone(),
        );
    }

    /// Registers fleet mode's Redis round trips, peer streams and refused records.
    fn register_fleet(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            (
                "redis_round_trips",
                "Redis commands, pipelines and scripts sent (fleet mode)",
                &self.fleet.redis_round_trips,
            ),
            (
                "redis_errors",
                "Redis round trips that failed or timed out (fleet mode)",
                &self.fleet.redis_errors,
            ),
            (
                "redis_session_round_trips",
                "Redis round trips for sticky sessions (first connection of a session on this gateway, moves)",
                &self.fleet.session_round_trips,
            ),
            (
                "peer_streams_out",
                "Customer streams carried to exits on other gateways",
                &self.fleet.peer_streams_out,
            ),
            (
                "peer_streams_in",
                "Streams other gateways carried to this gateway's exits",
                &self.fleet.peer_streams_in,
            ),
            (
                "redis_records_refused",
                "Records read from Redis and ignored: not signed with the fleet's key",
                &self.fleet.records_refused,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }

    /// Counts one failure.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    /// The exposition text, with pool gauges read from `directory` now and the
    /// number of live sticky sessions.
    pub fn render(
        &self,
        directory: &dyn AgentDirectory,
        sessions: usize,
        health: &crate::directory::HealthPolicy,
        (quic, tcp): (usize, usize),
    ) -> String {
        for (transport, count) in [("quic", quic), ("tcp", tcp)] {
            self.agents_by_transport
                .get_or_create(&TransportLabel { transport })
                .set(count as i64);
        }
        let pool = directory.agents();
        self.fleet_agents.set(pool.len() as i64);
        let agents: Vec<_> = pool.iter().filter(|agent| agent.is_local()).collect();
        self.agents.set(agents.len() as i64);
        // Streams on the tunnels held here, whoever's customers they carry: a
        // stream carried in from another gateway counts here only.
        let live: u64 = agents
            .iter()
            .map(|agent| u64::from(agent.active_streams.load(Ordering::Relaxed)))
            .sum();
        self.live_streams.set(live as i64);
        self.sessions.set(sessions as i64);
        let now = std::time::Instant::now();
        let mut bands = std::collections::BTreeMap::from([
            ("healthy", 0i64),
            ("degraded", 0),
            ("failing", 0),
            ("cooling", 0),
        ]);
        for agent in agents.iter().copied() {
            let band = agent.health.view(now, health).band();
            *bands.entry(band).or_default() += 1;
        }
        for (band, count) in bands {
            self.exits_by_health
                .get_or_create(&BandLabel { band: band.into() })
                .set(count);
        }
        self.fleet_agents_by_country.clear();
        for (country, count) in directory.countries() {
            self.fleet_agents_by_country
                .get_or_create(&CountryLabel { country })
                .set(count as i64);
        }
        let mut countries = std::collections::BTreeMap::<String, i64>::new();
        for agent in &agents {
            let country = agent.location.country.as_deref().unwrap_or("??");
            *countries.entry(country.to_owned()).or_default() += 1;
        }
        self.agents_by_country.clear();
        for (country, count) in countries {
            self.agents_by_country
                .get_or_create(&CountryLabel { country })
                .set(count);
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }
}
