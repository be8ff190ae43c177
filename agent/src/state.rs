//! The agent's state directory: its random id, stable across restarts so the
//! gateway (and customers' sticky sessions) recognise it.

use std::io::Write;
use std::path::{Path, PathBuf};

const AGENT_ID_FILE: &str = "agent-id";

/// Default state directory: `$XDG_STATE_HOME/exitpool/agent`, else
/// `$HOME/.local/state/exitpool/agent`, else `./exitpool-agent-state`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")));
    match base {
        Some(base) => base.join("exitpool").join("agent"),
        None => PathBuf::from("exitpool-agent-state"),
    }
}

/// A new random id: 32 hex digits.
pub fn random_agent_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Reads the id from `dir`, creating the directory and the id on first start.
pub fn load_or_create_agent_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_owned());
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a 32-hex-digit agent id", path.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let id = random_agent_id();
            write_atomically(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, so a
/// crash leaves either the old contents or the new, never half of them.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("exitpool-agent-id-{}", random_agent_id()));
        let first = load_or_create_agent_id(&dir).unwrap();
        assert_eq!(load_or_create_agent_id(&dir).unwrap(), first);
        std::fs::write(dir.join(AGENT_ID_FILE), "garbage").unwrap();
        assert!(load_or_create_agent_id(&dir).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
