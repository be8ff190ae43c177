//! An agent's identity: an Ed25519 key the device generates and keeps, and an id
//! derived from its public key, so the id cannot be claimed by anyone without the
//! key.
//!
//! At every connection the agent signs keying material exported from that
//! connection's TLS session ([`EXPORTER_LABEL`], RFC 5705 / RFC 8446 §7.5) and
//! sends the public key and signature in `Hello`. The gateway exports the same
//! material from its side and verifies: a proof copied from another connection,
//! or made with another key, does not verify, so an impostor is refused before it
//! can touch the live agent.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;

/// TLS exporter label both ends feed their connection's key schedule.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-exitpool-agent-identity";
/// TLS exporter context (none: the label says what it is for).
pub const EXPORTER_CONTEXT: &[u8] = b"";
/// Bytes of exported keying material signed per connection.
pub const EXPORTER_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Prefixed to the exported material before signing, so a signature made for
/// this purpose can never be mistaken for one made for another.
const SIGNING_CONTEXT: &[u8] = b"exitpool agent identity proof\0";

/// What an agent sends in `Hello` to prove who it is. Fixed-size arrays, so
/// decoding one allocates nothing a peer could size.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityProof {
    /// The device key's Ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// Ed25519 signature over this connection's exported keying material, in
    /// two halves because serde's arrays stop at 32 elements.
    pub signature: [[u8; 32]; 2],
}

impl fmt::Debug for IdentityProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityProof")
            .field("agent_id", &agent_id(&self.public_key))
            .finish_non_exhaustive()
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The signature does not verify for this key and this connection.
    #[error("identity proof does not verify for this connection")]
    BadSignature,
    /// A stored key could not be read.
    #[error("device key is not a valid Ed25519 PKCS#8 document")]
    BadKey,
    /// The system random source failed.
    #[error("no randomness to generate a device key")]
    NoRandomness,
}

impl IdentityProof {
    /// Checks the proof against `exported` (this connection's keying material) and
    /// returns the agent id it proves.
    pub fn verify(&self, exported: &[u8; EXPORTER_LEN]) -> Result<String, IdentityError> {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed_message(exported), self.signature.as_flattened())
            .map_err(|_| IdentityError::BadSignature)?;
        Ok(agent_id(&self.public_key))
    }
}

/// The agent id a public key stands for: the first 16 bytes of its SHA-256, as 32
/// lowercase hex digits.
pub fn agent_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    digest.as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn signed_message(exported: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    [SIGNING_CONTEXT, exported.as_slice()].concat()
}

/// The key a device proves its identity with. Its `Debug` shows the id only.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("agent_id", &self.agent_id())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A new random key and its PKCS#8 document, the form to store it in.
    pub fn generate() -> Result<(DeviceKey, Vec<u8>), IdentityError> {
        let rng = ring::rand::SystemRandom::new();
        let document =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::NoRandomness)?;
        let key = DeviceKey::from_pkcs8(document.as_ref())?;
        Ok((key, document.as_ref().to_vec()))
    }

    /// A key from its stored PKCS#8 document.
    pub fn from_pkcs8(document: &[u8]) -> Result<DeviceKey, IdentityError> {
        Ed25519KeyPair::from_pkcs8(document)
            .map(|pair| DeviceKey { pair })
            .map_err(|_| IdentityError::BadKey)
    }

    /// A key from a 32-byte seed: for tests that need a stable identity per name.
    pub fn from_seed(seed: &[u8; 32]) -> DeviceKey {
        DeviceKey {
            pair: Ed25519KeyPair::from_seed_unchecked(seed)
                .expect("any 32-byte seed is an Ed25519 key"),
        }
    }

    /// The id this key stands for.
    pub fn agent_id(&self) -> String {
        agent_id(self.pair.public_key().as_ref())
    }

    /// Proves possession of this key on the connection `exported` came from.
    pub fn prove(&self, exported: &[u8; EXPORTER_LEN]) -> IdentityProof {
        let signature = self.pair.sign(&signed_message(exported));
        let (first, second) = signature.as_ref().split_at(32);
        IdentityProof {
            public_key: self
                .pair
                .public_key()
                .as_ref()
                .try_into()
                .expect("Ed25519 public keys are 32 bytes"),
            signature: [
                first.try_into().expect("Ed25519 signatures are 64 bytes"),
                second.try_into().expect("Ed25519 signatures are 64 bytes"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_connection_and_key() {
        let key = DeviceKey::from_seed(&[7; 32]);
        let here = [1u8; EXPORTER_LEN];
        let proof = key.prove(&here);
        assert_eq!(proof.verify(&here), Ok(key.agent_id()));
        // Replayed on another connection.
        assert_eq!(
            proof.verify(&[2u8; EXPORTER_LEN]),
            Err(IdentityError::BadSignature)
        );
        // Someone else's key with this signature.
        let other = DeviceKey::from_seed(&[8; 32]);
        let stolen = IdentityProof {
            public_key: other.prove(&here).public_key,
            signature: proof.signature,
        };
        assert_eq!(stolen.verify(&here), Err(IdentityError::BadSignature));
        // Not a point on the curve at all.
        let nonsense = IdentityProof {
            public_key: [0xff; PUBLIC_KEY_LEN],
            signature: proof.signature,
        };
        assert_eq!(nonsense.verify(&here), Err(IdentityError::BadSignature));
    }

    #[test]
    fn the_id_is_stable_and_round_trips_through_storage() {
        let (key, document) = DeviceKey::generate().unwrap();
        let loaded = DeviceKey::from_pkcs8(&document).unwrap();
        assert_eq!(key.agent_id(), loaded.agent_id());
        assert_eq!(key.agent_id().len(), 32);
        assert!(key.agent_id().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(key.agent_id(), DeviceKey::generate().unwrap().0.agent_id());
        assert_eq!(
            DeviceKey::from_pkcs8(b"not a key").unwrap_err(),
            IdentityError::BadKey
        );
    }

    #[test]
    fn debug_output_shows_the_id_not_the_key() {
        let key = DeviceKey::from_seed(&[9; 32]);
        let text = format!("{key:?} {:?}", key.prove(&[0; EXPORTER_LEN]));
        assert!(text.contains(&key.agent_id()), "{text}");
        assert!(!text.contains("signature"), "{text}");
    }
}
