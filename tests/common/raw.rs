//! Raw agents for the fault tests, over either tunnel transport: tunnels built
//! from the agent's own TLS configuration (so they pass the pin check and
//! ALPN) whose every message the test writes by hand. tests/misbehaving.rs
//! uses them to break the handshake and the control stream, tests/common/flaky.rs
//! to join properly and then fail relay opens.

use super::{within, TestGateway, TransportChoice, TOKEN};
use exitpool::protocol::{
    read_frame, write_frame, AgentMessage, Capacity, DeviceKey, GatewayMessage, PROTOCOL_VERSION,
};
use exitpool::transport::tcp::{self, TcpSettings};
use exitpool::transport::tunnel::identity_material;
use exitpool::transport::{StreamRecv, StreamSend, Tunnel, TunnelConnection};
use std::net::SocketAddr;
use std::sync::Arc;

/// The name the gateway's certificate carries; the pin is what is checked.
pub const SERVER_NAME: &str = "exitpool-gateway";

/// Streams a raw agent lets the gateway open at once (its claimed capacity
/// is the `Hello`'s business).
const RAW_STREAMS: u32 = 64;

/// The device key of the raw agent called `name`: the same key for the same
/// name, so a test can play a device and an impostor of it.
pub fn device_key(name: &str) -> DeviceKey {
    let mut seed = [0u8; 32];
    for (slot, byte) in seed.iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    DeviceKey::from_seed(&seed)
}

/// A well-formed `Hello` with the fixture token, proving `key` on `connection`.
pub fn hello<C: TunnelConnection>(connection: &C, key: &DeviceKey) -> AgentMessage {
    let material = identity_material(connection).expect("keying material");
    AgentMessage::Hello {
        version: PROTOCOL_VERSION,
        identity: key.prove(&material),
        token: TOKEN.into(),
        software: "raw-test-agent".into(),
        capacity: Capacity { max_streams: 8 },
        accepting: true,
    }
}

/// Why a raw dial failed.
#[derive(Debug)]
pub enum DialError {
    Quic(quinn::ConnectionError),
    Tcp(std::io::Error),
}

/// Dials `net`'s tunnel port from one loopback address over one transport;
/// over QUIC every dial shares one endpoint (one UDP socket), as an agent's do.
pub struct Dialer {
    transport: TransportChoice,
    ip: String,
    quic_endpoint: Option<quinn::Endpoint>,
    quic: quinn::ClientConfig,
    tcp: Arc<rustls::ClientConfig>,
    quic_gateway: SocketAddr,
    tcp_gateway: Option<SocketAddr>,
}

impl Dialer {
    /// A dialer from `ip` over `transport` (`Auto` counts as QUIC).
    pub fn new(net: &TestGateway, ip: &str, transport: TransportChoice) -> Dialer {
        let configs = exitpool::agent::tls::client_configs(
            net.gateway.pin().parse().unwrap(),
            exitpool::agent::tunnel::transport_config(
                RAW_STREAMS,
                exitpool::protocol::KEEP_ALIVE_INTERVAL,
            ),
        )
        .expect("client configs");
        let quic_endpoint = (transport != TransportChoice::Tcp).then(|| {
            quinn::Endpoint::client(format!("{ip}:0").parse().unwrap())
                .expect("client endpoint binds")
        });
        Dialer {
            transport,
            ip: ip.to_owned(),
            quic_endpoint,
            quic: configs.quic,
            tcp: configs.tcp,
            quic_gateway: net.gateway.tunnel_addr(),
            tcp_gateway: net.gateway.tunnel_tcp_addr(),
        }
    }

    /// The same dialer with its QUIC connections configured by `config`.
    pub fn with_quic_config(mut self, config: quinn::ClientConfig) -> Dialer {
        self.quic = config;
        self
    }

    /// A tunnel whose transport handshakes are done and that has said nothing
    /// yet, or why the gateway would not have it.
    pub async fn try_dial(&self) -> Result<Tunnel, DialError> {
        if let Some(endpoint) = &self.quic_endpoint {
            let connecting = endpoint
                .connect_with(self.quic.clone(), self.quic_gateway, SERVER_NAME)
                .expect("connect starts");
            return within("QUIC handshake", connecting)
                .await
                .map(Tunnel::Quic)
                .map_err(DialError::Quic);
        }
        let gateway = self.tcp_gateway.expect("the gateway has a TCP tunnel port");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{}:0", self.ip).parse().unwrap())
            .unwrap();
        let stream = within("TCP connect", socket.connect(gateway))
            .await
            .map_err(DialError::Tcp)?;
        let tls = within(
            "TLS handshake",
            tokio_rustls::TlsConnector::from(self.tcp.clone()).connect(
                rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap(),
                stream,
            ),
        )
        .await
        .map_err(DialError::Tcp)?;
        let settings = TcpSettings {
            max_incoming_streams: RAW_STREAMS + 1,
            keep_alive: exitpool::protocol::KEEP_ALIVE_INTERVAL,
            idle_timeout: exitpool::protocol::IDLE_TIMEOUT,
            initial_connection_window: exitpool::transport::udp::CONNECTION_WINDOW,
            streams_before_admitted: None,
            frames_before_admitted: None,
        };
        within("HTTP/2 handshake", tcp::answering_end(tls, settings))
            .await
            .map(Tunnel::Tcp)
            .map_err(DialError::Tcp)
    }

    /// As [`Dialer::try_dial`], which must succeed.
    pub async fn dial(&self) -> Tunnel {
        self.try_dial().await.expect("the gateway takes the tunnel")
    }

    /// The transport this dialer uses.
    pub fn transport(&self) -> TransportChoice {
        self.transport
    }

    /// Lets go of the QUIC endpoint, if any (its tunnels go with it).
    pub fn close(&self) {
        if let Some(endpoint) = &self.quic_endpoint {
            endpoint.close(0u32.into(), b"done");
        }
    }
}

/// Opens the control stream and sends `message` on it.
pub async fn send_first<C: TunnelConnection>(
    connection: &C,
    message: &impl serde::Serialize,
) -> (C::Send, C::Recv) {
    let (mut send, recv) = within("open control stream", connection.open_control())
        .await
        .expect("control stream opens");
    within("send first message", write_frame(&mut send, message))
        .await
        .expect("first message is sent");
    (send, recv)
}

/// A raw agent the gateway has welcomed: its tunnel and control stream.
pub struct RawAgent {
    pub dialer: Dialer,
    pub connection: Tunnel,
    pub control_send: StreamSend,
    pub control_recv: StreamRecv,
    /// The id customers see for it.
    pub exit_id: String,
}

impl RawAgent {
    /// Dials from `ip` over `transport`, says a valid `Hello` as the device
    /// `name` (changed by `adjust` first), and waits for `Welcome`.
    pub async fn join(
        net: &TestGateway,
        ip: &str,
        name: &str,
        transport: TransportChoice,
        adjust: impl FnOnce(&mut AgentMessage),
    ) -> RawAgent {
        let dialer = Dialer::new(net, ip, transport);
        let connection = dialer.dial().await;
        let mut hello = hello(&connection, &device_key(name));
        adjust(&mut hello);
        let (control_send, mut control_recv) = send_first(&connection, &hello).await;
        let answer: GatewayMessage = within("Welcome", read_frame(&mut control_recv))
            .await
            .expect("the gateway answers Hello");
        let GatewayMessage::Welcome { exit_id, .. } = answer else {
            panic!("expected Welcome, got {answer:?}");
        };
        RawAgent {
            dialer,
            connection,
            control_send,
            control_recv,
            exit_id,
        }
    }

    /// Lets go of the tunnel (and the QUIC endpoint under it).
    pub fn close(&self) {
        self.connection.close(0, b"done");
        self.dialer.close();
    }
}
