//! The agent's state directory: its device key, whose public half its id is
//! derived from (stable across restarts, so the gateway and customers' sticky
//! sessions recognise it, and unforgeable, since only this device can sign with
//! it), and the other files kept there (usage, the pins it has connected with).
//! Only the owner may read them: the directory is 0700 and every file 0600 on
//! Unix, set when created and tightened at start for a directory an older agent
//! left looser.

use exitpool_protocol::DeviceKey;
use exitpool_transport::state_dir;
use std::path::{Path, PathBuf};

// The directory itself (modes, creating it, atomic writes) is the transport
// crate's, shared with the gateway.
pub use state_dir::{prepare_dir, write_atomically, DIR_MODE, FILE_MODE};

/// The device key, as a PKCS#8 document.
const DEVICE_KEY_FILE: &str = "device-key";
/// Where protocol version 1 agents kept a self-declared id, now replaced by the
/// key's.
const OLD_AGENT_ID_FILE: &str = "agent-id";
/// The gateway pins this agent has been welcomed with, one per line.
const PINS_FILE: &str = "connected-pins";

/// Default state directory: `$XDG_STATE_HOME/exitpool/agent`, else
/// `$HOME/.local/state/exitpool/agent`, else `./exitpool-agent-state`.
pub fn default_dir() -> PathBuf {
    state_dir::default_dir("agent")
}

/// A new device key, kept in memory only: an agent without a state directory
/// has a new id every run.
pub fn ephemeral_device_key() -> std::io::Result<DeviceKey> {
    DeviceKey::generate()
        .map(|(key, _)| key)
        .map_err(std::io::Error::other)
}

/// Reads the device key from `dir`, creating the directory and the key on first
/// start. A file that is there but is not a key is an error, never silently
/// replaced: the id, and the usage the gateway counted for it, hang on it.
pub fn load_or_create_device_key(dir: &Path) -> std::io::Result<DeviceKey> {
    let path = dir.join(DEVICE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(document) => DeviceKey::from_pkcs8(&document).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {error}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            prepare_dir(dir)?;
            let (key, document) = DeviceKey::generate().map_err(std::io::Error::other)?;
            write_atomically(&path, &document)?;
            retire_old_id(dir, &key)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Removes a version 1 agent's self-declared id, saying what replaces it, so
/// the volunteer can tell the operator (payouts are counted per id).
fn retire_old_id(dir: &Path, key: &DeviceKey) -> std::io::Result<()> {
    let path = dir.join(OLD_AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(old) => {
            tracing::warn!(
                old_id = old.trim(),
                new_id = %key.agent_id(),
                "agent ids are now bound to a device key: this agent has a new id"
            );
            std::fs::remove_file(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a gateway with `pin` (as `sha256:<hex>`) has once welcomed this
/// agent. Then a certificate that does not match is more likely a forgery on
/// the path than a typo in `--pin`, and is retried rather than fatal.
pub fn has_connected_with(dir: &Path, pin: &str) -> std::io::Result<bool> {
    match std::fs::read_to_string(dir.join(PINS_FILE)) {
        Ok(text) => Ok(text.lines().any(|line| line.trim() == pin)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Records that a gateway with `pin` has welcomed this agent.
pub fn remember_pin(dir: &Path, pin: &str) -> std::io::Result<()> {
    if has_connected_with(dir, pin)? {
        return Ok(());
    }
    let path = dir.join(PINS_FILE);
    let mut text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    text.push_str(pin);
    text.push('\n');
    write_atomically(&path, text.as_bytes())
}

/// The tunnel transport that last won the race (`quic` or `tcp`), so a
/// restarted agent on a network without UDP goes straight to TCP.
const TRANSPORT_FILE: &str = "transport";

/// The transport remembered in `dir`, if any (anything unreadable counts as none).
pub fn remembered_transport(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(TRANSPORT_FILE)).ok()?;
    let name = text.trim();
    matches!(name, "quic" | "tcp").then(|| name.to_owned())
}

/// Remembers `transport` (`quic` or `tcp`) in `dir`.
pub fn remember_transport(dir: &Path, transport: &str) -> std::io::Result<()> {
    if remembered_transport(dir).as_deref() == Some(transport) {
        return Ok(());
    }
    prepare_dir(dir)?;
    write_atomically(
        &dir.join(TRANSPORT_FILE),
        format!("{transport}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory name under the system's temporary directory.
    fn temp_dir(purpose: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "exitpool-agent-{purpose}-{}",
            rand::random::<u64>()
        ))
    }

    #[test]
    fn the_key_is_created_once_and_kept() {
        let dir = temp_dir("key");
        let first = load_or_create_device_key(&dir).unwrap().agent_id();
        assert_eq!(load_or_create_device_key(&dir).unwrap().agent_id(), first);
        std::fs::write(dir.join(DEVICE_KEY_FILE), "garbage").unwrap();
        let error = load_or_create_device_key(&dir).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains(DEVICE_KEY_FILE), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_version_1_id_is_retired_for_the_key() {
        let dir = temp_dir("old-id");
        prepare_dir(&dir).unwrap();
        std::fs::write(
            dir.join(OLD_AGENT_ID_FILE),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        load_or_create_device_key(&dir).unwrap();
        assert!(!dir.join(OLD_AGENT_ID_FILE).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pins_are_remembered_once_each() {
        let dir = temp_dir("pins");
        prepare_dir(&dir).unwrap();
        let (a, b) = ("sha256:aa", "sha256:bb");
        assert!(!has_connected_with(&dir, a).unwrap());
        remember_pin(&dir, a).unwrap();
        remember_pin(&dir, a).unwrap();
        assert!(has_connected_with(&dir, a).unwrap());
        assert!(!has_connected_with(&dir, b).unwrap());
        remember_pin(&dir, b).unwrap();
        let text = std::fs::read_to_string(dir.join(PINS_FILE)).unwrap();
        assert_eq!(text, "sha256:aa\nsha256:bb\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The modes themselves, and tightening loose state, are tested with
    /// [`exitpool_transport::state_dir`]; here, that the agent's own files
    /// go through it.
    #[cfg(unix)]
    #[test]
    fn the_device_key_and_its_directory_are_owner_only() {
        let root = temp_dir("mode");
        let dir = root.join("agent");
        load_or_create_device_key(&dir).unwrap();
        remember_transport(&dir, "tcp").unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&dir.join(DEVICE_KEY_FILE)), FILE_MODE);
        assert_eq!(mode(&dir.join(TRANSPORT_FILE)), FILE_MODE);
        std::fs::remove_dir_all(root).unwrap();
    }
}
