//! Signatures on what a gateway publishes to the fleet's Redis, so Redis is
//! not the fleet's membership list: a gateway record, an agent list entry or a
//! change on the directory stream counts only if it carries an HMAC-SHA256
//! under the fleet's record key, which is derived from the fleet key (itself
//! derived from the certificate key every gateway of a fleet shares).
//!
//! Whoever can write to Redis but holds no gateway's key can delete, replay or
//! withhold records (a stale or empty view of the pool), but cannot announce a
//! gateway, an address, a pin or an exit that the fleet would use
//! ([`super::replica`] drops and counts what does not verify).
//!
//! Values stored whole (a gateway record, an agent's entry, a sequence number)
//! are sealed as `<64 hex>.<text>`; a stream entry carries its tag in a field
//! of its own. Every tag covers a scope (the key or fields the value was
//! written under), so a signed value cannot be moved under another gateway's
//! or agent's name.

use ring::hmac;

/// Label of the record key, derived from the fleet key.
const RECORD_KEY_LABEL: &[u8] = b"exitpool fleet records v1";

/// Length of a tag in hex.
const TAG_HEX: usize = 64;

/// The key gateways sign their fleet records with.
#[derive(Clone)]
pub struct RecordKey(hmac::Key);

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(..)")
    }
}

impl RecordKey {
    /// The record key of the fleet whose peer-link key is `fleet_key`.
    pub fn new(fleet_key: &[u8; 32]) -> RecordKey {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, fleet_key),
            RECORD_KEY_LABEL,
        );
        RecordKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// The tag of `parts` in hex (each part length-prefixed, so no two lists
    /// of parts sign the same bytes).
    pub fn tag(&self, parts: &[&[u8]]) -> String {
        hex::encode(hmac::sign(&self.0, &message(parts)).as_ref())
    }

    /// Whether `tag` (hex) is the tag of `parts` (constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &str) -> bool {
        let Ok(tag) = hex::decode(tag) else {
            return false;
        };
        hmac::verify(&self.0, &message(parts), &tag).is_ok()
    }

    /// `text` sealed under `scope`: `<tag>.<text>`.
    pub fn seal(&self, scope: &[&str], text: &str) -> String {
        format!("{}.{text}", self.tag(&parts(scope, text)))
    }

    /// The text of `sealed` if its tag verifies under `scope`.
    pub fn open<'a>(&self, scope: &[&str], sealed: &'a str) -> Option<&'a str> {
        let (tag, text) = sealed.split_at_checked(TAG_HEX)?;
        let text = text.strip_prefix('.')?;
        self.verify(&parts(scope, text), tag).then_some(text)
    }
}

/// The signature scope of gateway `id`'s record: here, beside the key, so
/// the fleet's start-up check and the replica read it from one place.
pub(super) fn gateway_scope(id: &str) -> [&str; 2] {
    ["gateway", id]
}

fn parts<'a>(scope: &[&'a str], text: &'a str) -> Vec<&'a [u8]> {
    scope
        .iter()
        .map(|part| part.as_bytes())
        .chain([text.as_bytes()])
        .collect()
}

fn message(parts: &[&[u8]]) -> Vec<u8> {
    let mut message = Vec::with_capacity(parts.iter().map(|part| part.len() + 8).sum());
    for part in parts {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_own_key_and_scope() {
        let key = RecordKey::new(&[1; 32]);
        let sealed = key.seal(&["gateway", "gw-a"], r#"{"id":"gw-a"}"#);
        assert_eq!(
            key.open(&["gateway", "gw-a"], &sealed),
            Some(r#"{"id":"gw-a"}"#)
        );
        assert_eq!(key.open(&["gateway", "gw-b"], &sealed), None);
        assert_eq!(key.open(&["gateway", "gw-"], &sealed), None);
        assert_eq!(
            RecordKey::new(&[2; 32]).open(&["gateway", "gw-a"], &sealed),
            None
        );
        // An unsigned record, a changed text, junk.
        assert_eq!(key.open(&["gateway", "gw-a"], r#"{"id":"gw-a"}"#), None);
        let changed = sealed.replace("gw-a\"", "gw-x\"");
        assert_eq!(key.open(&["gateway", "gw-a"], &changed), None);
        assert_eq!(key.open(&["gateway", "gw-a"], "é"), None);
        assert_eq!(key.open(&["gateway", "gw-a"], ""), None);
    }

    #[test]
    fn parts_are_not_ambiguous() {
        let key = RecordKey::new(&[1; 32]);
        assert_ne!(key.tag(&[b"ab", b"c"]), key.tag(&[b"a", b"bc"]));
        assert!(key.verify(&[b"a", b"bc"], &key.tag(&[b"a", b"bc"])));
        assert!(!key.verify(&[b"a", b"bc"], "zz"));
    }
}
