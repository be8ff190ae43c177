//! The gateway's QUIC identity: a self-signed certificate made with rcgen on first
//! start, kept in the state directory, and the SHA-256 pin agents check it by.

use exitpool_transport::endpoint::{server_settings, ServerSettings, TransportSettings};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate, in the state directory (DER).
pub const CERT_FILE: &str = "gateway-cert.der";
/// Its private key, in the state directory (PKCS#8 DER, mode 0600).
pub const KEY_FILE: &str = "gateway-key.der";

/// Why the gateway's identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file in the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// rcgen could not make a certificate.
    #[error("generating the gateway certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls or quinn refused the certificate or key.
    #[error("loading the gateway certificate: {0}")]
    Tls(String),
}

/// The gateway's certificate and key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the identity from `state_dir`; `None` when it holds none.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let cert_path = state_dir.join(CERT_FILE);
        let key_path = state_dir.join(KEY_FILE);
        if !(cert_path.exists() && key_path.exists()) {
            return Ok(None);
        }
        Ok(Some(Identity {
            cert: CertificateDer::from(read(&cert_path)?),
            key: PrivatePkcs8KeyDer::from(read(&key_path)?),
        }))
    }

    /// Loads the identity from `state_dir`, creating and saving one on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        if let Some(identity) = Identity::load(state_dir)? {
            return Ok(identity);
        }
        let cert_path = state_dir.join(CERT_FILE);
        let key_path = state_dir.join(KEY_FILE);
        let generated = rcgen::generate_simple_self_signed(vec!["exitpool-gateway".to_owned()])?;
        let identity = Identity {
            cert: generated.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()),
        };
        crate::state::ensure_dir(state_dir).map_err(|source| IdentityError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        crate::state::write_private(&key_path, identity.key.secret_pkcs8_der()).map_err(
            |source| IdentityError::Io {
                path: key_path.clone(),
                source,
            },
        )?;
        crate::state::write_private(&cert_path, &identity.cert).map_err(|source| {
            IdentityError::Io {
                path: cert_path.clone(),
                source,
            }
        })?;
        Ok(identity)
    }

    /// `sha256:<64 hex>` of the certificate, the value agents pass as `--pin`.
    pub fn pin(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.cert)))
    }

    /// A secret for `purpose`, derived from the private key: unguessable, and
    /// the same after a restart on this state directory.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let mut derived = Sha256::new();
        derived.update(b"exitpool identity secret v1\0");
        derived.update(purpose.as_bytes());
        derived.update(b"\0");
        derived.update(self.key.secret_pkcs8_der());
        derived.finalize().into()
    }

    /// TLS 1.3 with this certificate and `alpn`: one certificate for both
    /// tunnel transports, so an agent's pin holds on either.
    fn tls_server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        Ok(tls)
    }

    /// TLS-over-TCP tunnel configuration: ALPN `exitpool-tcp/1`.
    pub fn tcp_server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        self.tcp_server_config_for(exitpool_transport::tcp::ALPN)
    }

    /// TLS over TCP with `alpn` (the peer links use their own).
    pub fn tcp_server_config_for(
        &self,
        alpn: &[u8],
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        Ok(Arc::new(self.tls_server_config(alpn)?))
    }

    /// QUIC server configuration: TLS 1.3 with ALPN `exitpool/1`, plus the
    /// transport limits in [`crate::tunnel::transport_config`].
    pub fn quic_server_config(
        &self,
        transport: TransportSettings,
    ) -> Result<ServerSettings, IdentityError> {
        self.quic_server_config_for(exitpool_protocol::ALPN, transport)
    }

    /// QUIC server configuration with this certificate for `alpn` (the agent
    /// tunnel's, or the fleet's peer link's) and `transport`.
    pub fn quic_server_config_for(
        &self,
        alpn: &[u8],
        transport: TransportSettings,
    ) -> Result<ServerSettings, IdentityError> {
        server_settings(self.tls_server_config(alpn)?, transport).map_err(IdentityError::Tls)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })
}
