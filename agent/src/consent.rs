//! The device owner's consent to share their connection, kept in the state
//! directory (`consent.json`: when it was given and, optionally, what text or
//! version of the terms the owner agreed to). An agent built with
//! [`crate::AgentBuilder::require_consent`] (every agent an app starts through
//! the SDK) does not connect until consent is recorded, and stops when it is
//! revoked; revoking can also forget the device's identity (its key, so the
//! next consent starts as a new exit). The volunteer binary records consent
//! from its configuration with [`record`].

use crate::state::write_atomically;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The consent file in the state directory.
pub const CONSENT_FILE: &str = "consent.json";

/// Longest text (of what the owner agreed to) kept with a consent, in bytes:
/// a version string or a short summary, never a whole licence.
pub const MAX_CONSENT_TEXT: usize = 4096;

/// The files that make up the device's identity, removed by
/// [`revoke`] with `forget_identity`: the device key (the exit id is derived
/// from it) and what the agent remembers about gateways it has joined.
/// These names are `state.rs`'s; the test `forgetting_removes_the_key` fails
/// if they drift apart.
const IDENTITY_FILES: [&str; 3] = ["device-key", "connected-pins", "transport"];

/// A consent as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// When the owner agreed, in seconds since the Unix epoch (UTC).
    pub granted_at: u64,
    /// What the owner agreed to (the terms' version or text), if the app said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Why a consent could not be read, recorded or revoked.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The text is longer than [`MAX_CONSENT_TEXT`].
    #[error("the consent text is {0} bytes; at most {MAX_CONSENT_TEXT} are kept")]
    TextTooLong(usize),
    /// The consent file is there but is not a consent.
    #[error("{path}: not a consent record: {message}")]
    Corrupt {
        /// The file at fault.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing the state directory failed.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path at fault.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConsentError + '_ {
    move |source| ConsentError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The consent recorded in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<Consent>, ConsentError> {
    let path = dir.join(CONSENT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    let consent: Consent = serde_json::from_slice(&bytes).map_err(|e| ConsentError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if let Some(text) = &consent.text {
        if text.len() > MAX_CONSENT_TEXT {
            return Err(ConsentError::Corrupt {
                path: path.display().to_string(),
                message: format!("text of {} bytes", text.len()),
            });
        }
    }
    Ok(Some(consent))
}

/// Records the owner's consent now, with what they agreed to; replaces an
/// earlier one (a new version of the terms, say).
pub fn record(dir: &Path, text: Option<&str>) -> Result<Consent, ConsentError> {
    if let Some(text) = text {
        if text.len() > MAX_CONSENT_TEXT {
            return Err(ConsentError::TextTooLong(text.len()));
        }
    }
    let consent = Consent {
        granted_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        text: text.map(str::to_owned),
    };
    crate::state::prepare_dir(dir).map_err(io_error(dir))?;
    let path = dir.join(CONSENT_FILE);
    let bytes = serde_json::to_vec(&consent).expect("a consent serialises");
    write_atomically(&path, &bytes).map_err(io_error(&path))?;
    Ok(consent)
}

/// Removes the consent from `dir` and, with `forget_identity`, the device's
/// identity files too (the usage and the host report stay, so the app can
/// still show what was shared). Revoking where nothing was recorded is fine.
pub fn revoke(dir: &Path, forget_identity: bool) -> Result<(), ConsentError> {
    let mut files = vec![CONSENT_FILE];
    if forget_identity {
        files.extend(IDENTITY_FILES);
    }
    for name in files {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(purpose: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "exitpool-consent-{purpose}-{}",
            rand::random::<u64>()
        ))
    }

    #[test]
    fn consent_is_recorded_read_back_and_revoked() {
        let dir = temp_dir("record");
        assert_eq!(load(&dir).unwrap(), None);
        let recorded = record(&dir, Some("terms v2")).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(recorded.clone()));
        assert_eq!(recorded.text.as_deref(), Some("terms v2"));
        assert!(recorded.granted_at > 1_700_000_000, "{recorded:?}");
        revoke(&dir, false).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        revoke(&dir, false).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_records_are_refused_by_name() {
        let dir = temp_dir("bad");
        let long = "x".repeat(MAX_CONSENT_TEXT + 1);
        assert!(matches!(
            record(&dir, Some(&long)),
            Err(ConsentError::TextTooLong(_))
        ));
        crate::state::prepare_dir(&dir).unwrap();
        std::fs::write(dir.join(CONSENT_FILE), "{\"granted\":1}").unwrap();
        let error = load(&dir).unwrap_err();
        assert!(error.to_string().contains(CONSENT_FILE), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn forgetting_removes_the_key() {
        let dir = temp_dir("forget");
        let first = crate::state::load_or_create_device_key(&dir)
            .unwrap()
            .agent_id();
        crate::state::remember_pin(&dir, "sha256:aa").unwrap();
        crate::state::remember_transport(&dir, "quic").unwrap();
        record(&dir, None).unwrap();
        revoke(&dir, true).unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let second = crate::state::load_or_create_device_key(&dir)
            .unwrap()
            .agent_id();
        assert_ne!(first, second, "a forgotten device is a new exit");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
