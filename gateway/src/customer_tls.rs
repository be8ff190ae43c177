//! TLS on the customer ports (an HTTPS proxy: `curl -x https://gw:8080`,
//! Chromium's `--proxy-server=https://gw:8080`), so credentials never cross the
//! network in clear. The listener tells a TLS ClientHello (first byte `0x16`)
//! from HTTP and SOCKS5, so the same ports serve all three.
//!
//! The certificate and key are PEM files (`--tls-cert`, `--tls-key`), read at
//! start and again on every reload (SIGHUP): a bad pair at reload keeps the
//! running one and says why. ALPN offers `h2` (served by
//! [`crate::customer`]'s HTTP/2 module: one customer connection per stream)
//! and `http/1.1`; a client that names neither gets HTTP/1.1, as on the plain
//! port.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ALPN protocol id of HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CustomerTlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {message}")]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, ...).
    #[error("--tls-cert/--tls-key: {0}")]
    Pair(String),
}

/// Where the customer ports' certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The live TLS configuration of the customer ports, swapped whole on reload.
pub struct CustomerTls {
    files: TlsFiles,
    config: ArcSwap<rustls::ServerConfig>,
}

impl CustomerTls {
    /// Loads the pair for the first time.
    pub fn load(files: TlsFiles) -> Result<CustomerTls, CustomerTlsError> {
        let config = server_config(&files)?;
        Ok(CustomerTls {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the files again; on error the running pair stays.
    pub fn reload(&self) -> Result<(), CustomerTlsError> {
        let config = server_config(&self.files)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// An acceptor with the pair in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, CustomerTlsError> {
    let file_error = |path: &Path, message: String| CustomerTlsError::File {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            &files.cert,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    // The key's own error text never includes key material.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error(&files.key, format!("no usable private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CustomerTlsError::Pair(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| CustomerTlsError::Pair(e.to_string()))?;
    // h2 first: rustls takes the server's order when the client offers both,
    // and a browser's page then shares one connection.
    config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
