//! Generated secrets and how they are kept.
//!
//! - Passwords are low-entropy when people choose them, so only an Argon2id
//!   hash is stored: the `argon2` crate's default (OWASP-recommended) cost and a
//!   random 16-byte salt, as a PHC string — the parameters of the gateway's
//!   `hash_password`, so the gateway verifies these hashes as it verifies the
//!   accounts file's. A generated password is 32 characters of `[A-Za-z0-9]`
//!   (about 190 bits), returned once.
//! - Agent token secrets are 256 random bits. Guessing one is hopeless, so a
//!   slow hash buys nothing: the store keeps a SHA-256 of the secret, which is
//!   also what a lookup computes (one hash, one indexed query).

use crate::error::{Error, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

/// Length of a generated password.
pub const GENERATED_PASSWORD_LEN: usize = 32;

/// A fresh password: `[A-Za-z0-9]`, so it passes every credential rule.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), GENERATED_PASSWORD_LEN)
}

/// Argon2id of `password`, as a PHC string. Costs tens of milliseconds of
/// CPU: call it off the async runtime's threads ([`hash_password_blocking`]).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| Error::Internal(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("password hash: {e}")))
}

/// [`hash_password`] on tokio's blocking pool.
pub async fn hash_password_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// Whether `password` matches a stored PHC hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new agent token: its id (64 random bits, hex) and secret (256 bits, hex).
pub fn generate_token() -> (String, String) {
    (
        hex::encode(rand::random::<[u8; 8]>()),
        hex::encode(rand::random::<[u8; 32]>()),
    )
}

/// What the store keeps of a token secret: SHA-256, hex.
pub fn token_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_password_hashes_and_verifies() {
        let password = generate_password();
        assert_eq!(password.len(), GENERATED_PASSWORD_LEN);
        crate::model::check_password(&password).unwrap();
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&password, &hash));
        assert!(!verify_password("other", &hash));
    }

    #[test]
    fn token_secrets_are_256_bits_and_digested() {
        let (id, secret) = generate_token();
        assert_eq!((id.len(), secret.len()), (16, 64));
        assert_eq!(token_digest(&secret).len(), 64);
        assert_ne!(token_digest(&secret), secret);
    }
}
