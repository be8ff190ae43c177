//! Peer links between the gateways of a fleet ([`exitpool_protocol::peer`]):
//! the dialling side, the endpoint both sides use, and the fleet proof.
//!
//! One connection per pair of gateways, made on the first customer that needs
//! it and kept (keep-alives; a link silent for the fleet's gateway timeout is
//! dead, so a killed peer is noticed in seconds). It is TLS over TCP with
//! HTTP/2 streams by default, or QUIC ([`PeerTransport`]): the transport
//! crate's [`Tunnel`], as on agent tunnels. Each customer connection is one
//! stream, with per-stream flow control and half-close, exactly like a stream
//! on an agent tunnel: the customer transfer on this side cannot tell the
//! difference. The answering side is [`super::serve`].
//!
//! Membership is proved both ways on the link's first stream: the dialling
//! end sends [`PeerHello`] (an HMAC under the fleet key of the connection's
//! exported keying material), and the answering end, having checked it,
//! answers [`PeerAnswer::Welcome`] followed by [`AnswerProof`], an HMAC of the
//! same material under another label (so the dialler's own proof cannot be
//! echoed back). A link whose answering end cannot prove membership carries
//! no customer: a record in Redis naming some address and pin is not enough.

use crate::config::PeerTransport;
use crate::error::ProxyError;
use crate::tunnel::ExitStream;
use dashmap::DashMap;
use exitpool_protocol::peer::{
    PeerAnswer, PeerHello, PeerOpen, PEER_ALPN, PEER_EXPORTER_LABEL, PEER_EXPORTER_LEN,
    PEER_TCP_ALPN, PEER_VERSION,
};
use exitpool_protocol::{read_frame, write_frame, TargetHost};
use exitpool_transport::endpoint::{
    allow_incoming_streams, client_settings, QuicEndpoint, TransportSettings,
};
use exitpool_transport::pin::{Pin, PinVerifier};
use exitpool_transport::tcp::{self, TcpSettings};
use exitpool_transport::{Tunnel, TunnelConnection};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// What the answering end of a peer link sends after
/// [`PeerAnswer::Welcome`]: its own fleet proof for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerProof {
    /// HMAC-SHA256 under the fleet key of [`ANSWER_PROOF_LABEL`] and the
    /// connection's exported material.
    pub proof: [u8; 32],
}

/// Prefix of what the answering end's proof covers, so it differs from the
/// dialling end's proof of the same connection.
const ANSWER_PROOF_LABEL: &[u8] = b"exitpool peer link: answering end\0";

/// Most customer streams one peer link carries at once.
pub const MAX_PEER_STREAMS: u32 = 16_384;

/// Where another gateway's peer link is, and the certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// Its advertised peer address.
    pub addr: SocketAddr,
    /// Whether it takes TLS-over-TCP links on the TCP port of that number
    /// (every gateway since they were added; QUIC otherwise).
    pub tcp: bool,
    /// Its certificate pin, as it published it.
    pub pin: Pin,
}

/// A link to one gateway: dialled once, shared by every customer stream.
type LinkSlot = Arc<tokio::sync::Mutex<Option<Tunnel>>>;

/// This gateway's peer endpoint and its links to the others.
pub struct Peers {
    endpoint: QuicEndpoint,
    /// The transport of the links this gateway dials.
    transport_choice: PeerTransport,
    own_id: Arc<str>,
    key: ring::hmac::Key,
    /// The key of the records gateways publish in Redis
    /// ([`super::signed`]), derived from the same fleet key.
    records: super::signed::RecordKey,
    addresses: DashMap<Arc<str>, PeerAddress>,
    links: DashMap<Arc<str>, LinkSlot>,
    /// Gateways whose last dial failed, until when: customers meeting their
    /// exits move on at once instead of each waiting out a dial.
    down_until: DashMap<Arc<str>, std::time::Instant>,
    /// Longest a dial plus the fleet handshake may take.
    dial_timeout: Duration,
    /// Keep-alive and idle timeout of peer links.
    idle: Duration,
    /// QUIC settings of the links dialled over QUIC.
    transport: Arc<TransportSettings>,
}

/// The fleet key that peer links prove membership with: derived from the
/// certificate's key, which every gateway of a fleet shares.
pub fn fleet_key(identity: &crate::tls::Identity) -> [u8; 32] {
    identity.derive_secret("fleet peer link")
}

/// Shortest idle timeout of a peer link: a few keep-alives must fit in it.
const MIN_PEER_IDLE: Duration = Duration::from_millis(300);

/// QUIC settings of peer links: the same bounded windows as agent tunnels,
/// and keep-alives so a dead peer is noticed within `idle`. The answering
/// side takes one stream and a small connection window until the link has
/// proved itself, then many streams (one per customer connection) and the
/// full window ([`open_to_streams`]); the dialling side takes none.
pub fn transport_config(idle: Duration, answering: bool) -> TransportSettings {
    let idle = idle.max(MIN_PEER_IDLE);
    let mut transport = exitpool_transport::udp::base_transport();
    transport
        .max_idle_timeout(idle.try_into().ok())
        .keep_alive_interval(Some(idle / 3))
        .max_concurrent_uni_streams(0u32.into());
    if answering {
        // The proof's own stream; [`open_to_streams`] raises it once proved.
        transport
            .max_concurrent_bidi_streams(1u32.into())
            .receive_window(PRE_PROOF_WINDOW.into());
    } else {
        transport.max_concurrent_bidi_streams(0u32.into());
    }
    transport
}

/// TLS-over-TCP settings of peer links: a ping every half `idle`, given the
/// other half to be answered, so a dead peer is noticed within `idle` as over
/// QUIC. The dialling side opens every stream and accepts none; the answering
/// side holds back its connection window until the link has proved itself
/// ([`TunnelConnection::admitted`]).
pub fn tcp_settings(idle: Duration, answering: bool) -> TcpSettings {
    let half = idle.max(MIN_PEER_IDLE) / 2;
    TcpSettings {
        max_incoming_streams: if answering { MAX_PEER_STREAMS } else { 1 },
        keep_alive: half,
        idle_timeout: half,
        initial_connection_window: if answering {
            PRE_PROOF_WINDOW
        } else {
            exitpool_transport::udp::CONNECTION_WINDOW
        },
        // The proof's own stream.
        streams_before_admitted: answering.then_some(1),
        frames_before_admitted: answering.then_some(FRAMES_BEFORE_PROOF),
    }
}

/// HTTP/2 frames a dialling peer may send before its proof is checked: an
/// honest one sends a handful (SETTINGS, ACK, a window update, the proof's
/// headers and data); a flood ends at this many.
const FRAMES_BEFORE_PROOF: u32 = 64;

/// What a peer link not yet proven may make the answering side buffer: its
/// hello is a few dozen bytes.
const PRE_PROOF_WINDOW: u32 = 64 * 1024;

/// Opens a link that has proved itself to its customers' streams: the full
/// connection window and, over QUIC, [`MAX_PEER_STREAMS`] (a TLS/TCP link's
/// answering end stops refusing streams beyond the first by itself).
pub fn open_to_streams(link: &Tunnel) {
    link.admitted();
    allow_incoming_streams(link, MAX_PEER_STREAMS);
}

impl Peers {
    /// Peer links from `endpoint` (bound to the peer port, serving
    /// [`PEER_ALPN`]) as gateway `own_id`, proving membership with `fleet_key`;
    /// links this gateway dials go over `transport_choice` where the other end
    /// takes it.
    pub fn new(
        endpoint: QuicEndpoint,
        transport_choice: PeerTransport,
        own_id: Arc<str>,
        fleet_key: &[u8; 32],
        idle: Duration,
        dial_timeout: Duration,
    ) -> Peers {
        Peers {
            endpoint,
            transport_choice,
            own_id,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, fleet_key),
            records: super::signed::RecordKey::new(fleet_key),
            addresses: DashMap::new(),
            links: DashMap::new(),
            down_until: DashMap::new(),
            dial_timeout,
            idle,
            transport: Arc::new(transport_config(idle, false)),
        }
    }

    /// The peer endpoint (to accept on, and to close at shutdown).
    pub fn endpoint(&self) -> &QuicEndpoint {
        &self.endpoint
    }

    /// Notes where gateway `id` accepts peer links; a changed address or pin
    /// drops the old link.
    pub fn set_address(&self, id: &Arc<str>, address: PeerAddress) {
        let previous = self.addresses.insert(id.clone(), address.clone());
        if previous.is_some_and(|previous| previous != address) {
            self.forget_link(id);
        }
    }

    /// Forgets gateway `id` (it left the fleet or stopped answering).
    pub fn forget(&self, id: &str) {
        self.addresses.remove(id);
        self.down_until.remove(id);
        self.forget_link(id);
    }

    fn forget_link(&self, id: &str) {
        if let Some((_, slot)) = self.links.remove(id) {
            if let Ok(link) = slot.try_lock() {
                if let Some(link) = link.as_ref() {
                    link.close(0, b"peer left the fleet");
                }
            }
        }
    }

    /// The transport of this gateway's live link to gateway `id`, if it has
    /// one (for `/stats`; a link being dialled right now counts as none).
    pub fn link_transport(&self, id: &str) -> Option<exitpool_transport::Transport> {
        let slot = self.links.get(id)?.clone();
        let link = slot.try_lock().ok()?;
        link.as_ref()
            .filter(|link| link.close_reason().is_none())
            .map(|link| link.transport())
    }

    /// The fleet proof for a connection whose exported material is `material`.
    pub fn prove(&self, material: &[u8; PEER_EXPORTER_LEN]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.key, material);
        tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// Whether `proof` is the fleet proof for `material` (constant time).
    pub fn verify(&self, material: &[u8; PEER_EXPORTER_LEN], proof: &[u8; 32]) -> bool {
        ring::hmac::verify(&self.key, material, proof).is_ok()
    }

    /// The answering end's fleet proof for a connection whose exported
    /// material is `material`.
    pub fn prove_answer(&self, material: &[u8; PEER_EXPORTER_LEN]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.key, &answer_message(material));
        tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// Whether `proof` is the answering end's fleet proof for `material`
    /// (constant time).
    pub fn verify_answer(&self, material: &[u8; PEER_EXPORTER_LEN], proof: &[u8; 32]) -> bool {
        ring::hmac::verify(&self.key, &answer_message(material), proof).is_ok()
    }

    /// The key the fleet's records in Redis are signed with.
    pub fn record_key(&self) -> &super::signed::RecordKey {
        &self.records
    }

    /// Opens a relay stream through gateway `home` to its exit `agent_id`,
    /// dialling `host:port`, and waits up to `timeout` for the exit's answer.
    pub async fn open(
        &self,
        home: &Arc<str>,
        agent_id: &str,
        host: TargetHost,
        port: u16,
        timeout: Duration,
    ) -> Result<ExitStream, ProxyError> {
        let link = self.link(home).await?;
        let request = PeerOpen {
            agent_id: agent_id.to_owned(),
            host,
            port,
        };
        crate::tunnel::open_exchange(&link, &request, timeout, |e| {
            ProxyError::PeerUnavailable(format!("gateway {home}: {e}"))
        })
        .await
    }

    /// The live link to `home`, dialling it if there is none. Customers
    /// arriving together wait for one dial.
    async fn link(&self, home: &Arc<str>) -> Result<Tunnel, ProxyError> {
        let slot = self.links.entry(home.clone()).or_default().clone();
        let mut link = slot.lock().await;
        if let Some(live) = link.as_ref().filter(|link| link.close_reason().is_none()) {
            return Ok(live.clone());
        }
        if let Some(until) = self.down_until.get(home).map(|entry| *entry) {
            if until > std::time::Instant::now() {
                return Err(ProxyError::PeerUnavailable(format!(
                    "gateway {home} did not answer its last dial"
                )));
            }
        }
        let address = self
            .addresses
            .get(home)
            .map(|entry| entry.value().clone())
            .ok_or_else(|| {
                ProxyError::PeerUnavailable(format!("gateway {home} is not in the fleet now"))
            })?;
        let dialled = tokio::time::timeout(self.dial_timeout, self.dial(&address))
            .await
            .map_err(|_| format!("no answer within {:?}", self.dial_timeout))
            .and_then(|dialled| dialled);
        let connection = match dialled {
            Ok(dialled) => dialled,
            Err(reason) => {
                // Until the gateway would count as gone anyway.
                self.down_until
                    .insert(home.clone(), std::time::Instant::now() + self.dial_timeout);
                tracing::warn!(peer = %home, addr = %address.addr, %reason, "peer link could not be made");
                return Err(ProxyError::PeerUnavailable(format!(
                    "gateway {home} at {}: {reason}",
                    address.addr
                )));
            }
        };
        self.down_until.remove(home);
        let transport = connection.transport();
        tracing::info!(peer = %home, addr = %address.addr, %transport, "peer link up");
        *link = Some(connection.clone());
        Ok(connection)
    }

    /// Dials `address`, checks its pin, and proves this gateway's membership.
    async fn dial(&self, address: &PeerAddress) -> Result<Tunnel, String> {
        let tcp = self.transport_choice == PeerTransport::Tcp && address.tcp;
        let verifier = PinVerifier::ring(address.pin);
        let link: Tunnel = if tcp {
            let tls = verifier
                .client_config(PEER_TCP_ALPN)
                .map_err(|e| e.to_string())?;
            let stream = TcpStream::connect(address.addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("exitpool-gateway")
                .expect("a valid DNS name");
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, stream)
                .await
                .map_err(|e| e.to_string())?;
            tcp::opening_end(stream, tcp_settings(self.idle, false))
                .await
                .map_err(|e| e.to_string())?
                .into()
        } else {
            let tls = verifier
                .client_config(PEER_ALPN)
                .map_err(|e| e.to_string())?;
            let settings = client_settings(tls, self.transport.clone())?;
            self.endpoint
                .connect(settings, address.addr, "exitpool-gateway")
                .await?
        };
        let proved = self.prove_membership(&link).await;
        if let Err(reason) = &proved {
            // A TCP link lives while its driver does, not while it is held.
            link.close(0, reason.as_bytes());
        }
        proved.map(|()| link)
    }

    /// Sends this gateway's fleet proof on a new link's first stream and
    /// reads the answer.
    async fn prove_membership(&self, link: &Tunnel) -> Result<(), String> {
        let material = material(link)?;
        let (mut send, mut recv) = link.open_stream().await.map_err(|e| e.to_string())?;
        let hello = PeerHello {
            version: PEER_VERSION,
            gateway_id: self.own_id.to_string(),
            proof: self.prove(&material),
        };
        write_frame(&mut send, &hello)
            .await
            .map_err(|e| e.to_string())?;
        match read_frame::<PeerAnswer, _>(&mut recv)
            .await
            .map_err(|e| e.to_string())?
        {
            PeerAnswer::Welcome => {}
            PeerAnswer::Refused(reason) => return Err(format!("refused: {reason}")),
        }
        // The answering end proves membership too: whoever merely holds the
        // address and pin a record named is not the fleet.
        let answer = read_frame::<AnswerProof, _>(&mut recv)
            .await
            .map_err(|e| format!("the answering end sent no fleet proof ({e})"))?;
        if !self.verify_answer(&material, &answer.proof) {
            return Err("the answering end's fleet proof does not verify (not this fleet)".into());
        }
        Ok(())
    }
}

fn answer_message(material: &[u8; PEER_EXPORTER_LEN]) -> Vec<u8> {
    [ANSWER_PROOF_LABEL, material.as_slice()].concat()
}

/// The TLS keying material of `link` the fleet proof covers.
pub fn material(link: &Tunnel) -> Result<[u8; PEER_EXPORTER_LEN], String> {
    let mut material = [0u8; PEER_EXPORTER_LEN];
    link.export_keying_material(&mut material, PEER_EXPORTER_LABEL, b"")
        .map_err(|_| "TLS keying material export failed".to_owned())?;
    Ok(material)
}
