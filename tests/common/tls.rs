//! TLS material for tests of the HTTPS proxy port: a CA and a certificate for
//! 127.0.0.1 signed by it, and a client that trusts that CA.

use exitpool::gateway::customer_tls::TlsFiles;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, written as
/// PEM files in `dir` (named after `name`): the pair for the gateway, and the
/// CA's file for clients.
pub fn certificate(dir: &Path, name: &str) -> (TlsFiles, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (files, ca_file)
}

/// A rustls client configuration trusting only the CA in `ca_file`, offering
/// `alpn`.
pub fn client_config(ca_file: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo),
/// as Chromium's `--ignore-certificate-errors-spki-list` takes it.
pub fn spki_pin(files: &TlsFiles) -> String {
    use base64::Engine;
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&files.key).unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.subject_public_key_info()))
}
