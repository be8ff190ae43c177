//! Trusting a peer by the SHA-256 pin of its certificate: how an agent trusts
//! its gateway, and how gateways of one fleet trust each other. A mismatch
//! fails the TLS handshake, so no secret is ever sent to an impostor.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A certificate pin, `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin([u8; 32]);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why a pin string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a pin looks like sha256:<64 hex digits>, as printed by `gateway pin`")]
pub struct PinError;

impl std::str::FromStr for Pin {
    type Err = PinError;

    fn from_str(text: &str) -> Result<Pin, PinError> {
        let hex_digits = text.trim().strip_prefix("sha256:").ok_or(PinError)?;
        let bytes = hex::decode(hex_digits).map_err(|_| PinError)?;
        Ok(Pin(bytes.try_into().map_err(|_| PinError)?))
    }
}

/// ring's cryptography for a client, offering its cipher suites in the order
/// this CPU runs fastest: ring's own (AES-GCM first) where the CPU has AES
/// instructions, ChaCha20-Poly1305 first where it has not (a Raspberry Pi 4,
/// many routers, any 32-bit ARM), where AES in software is much slower than
/// ChaCha20, as Go, BoringSSL and LibreSSL order them. The
/// gateway answers in the client's order (rustls's default), so each agent
/// gets the cipher its own device is fast at.
pub fn client_provider() -> CryptoProvider {
    client_provider_for(aes_in_hardware())
}

/// [`client_provider`] for a CPU with or without AES instructions.
pub fn client_provider_for(aes_in_hardware: bool) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !aes_in_hardware {
        // A stable sort: ChaCha20 first, the rest in ring's order.
        provider
            .cipher_suites
            .sort_by_key(|suite| !is_chacha20(suite.suite()));
    }
    provider
}

fn is_chacha20(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite::*;
    matches!(
        suite,
        TLS13_CHACHA20_POLY1305_SHA256
            | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// Whether ring runs AES-GCM in hardware here: AES and carry-less multiply
/// instructions, which it needs both of.
fn aes_in_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Accepts exactly the certificate whose SHA-256 is the pin, and remembers a
/// mismatch so the tunnel can tell it from a network failure.
#[derive(Debug)]
pub struct PinVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
    mismatch_seen: AtomicBool,
}

impl PinVerifier {
    /// A verifier that accepts exactly `pin`, checking signatures with `provider`.
    pub fn new(pin: Pin, provider: Arc<CryptoProvider>) -> PinVerifier {
        PinVerifier {
            pin,
            provider,
            mismatch_seen: AtomicBool::new(false),
        }
    }

    /// A verifier for `pin` with ring's cryptography, its cipher suites in
    /// the order this machine runs fastest ([`client_provider`]), as every
    /// exitpool client uses.
    pub fn ring(pin: Pin) -> Arc<PinVerifier> {
        Arc::new(PinVerifier::new(pin, Arc::new(client_provider())))
    }

    /// A TLS 1.3 client configuration that trusts only this verifier's pin
    /// and offers `alpn`.
    pub fn client_config(
        self: &Arc<Self>,
        alpn: &[u8],
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        Ok(tls)
    }

    /// Whether a handshake has failed because the certificate did not match
    /// since the last call; clears the mark.
    pub fn take_mismatch(&self) -> bool {
        self.mismatch_seen.swap(false, Ordering::Relaxed)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if digest == self.pin.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch_seen.store(true, Ordering::Relaxed);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_strictly() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(good.parse::<Pin>().unwrap().to_string(), good);
        for bad in [
            "",
            "sha256:",
            "ab".repeat(32).as_str(),
            "sha256:zz",
            &format!("sha1:{}", "ab".repeat(32)),
            &format!("sha256:{}", "ab".repeat(31)),
        ] {
            assert!(bad.parse::<Pin>().is_err(), "{bad:?}");
        }
    }
}
