//! The state directory both ends keep on disk (the agent's device key and pins,
//! the gateway's certificate and secrets): where it is by default, creating it
//! owner-only, and replacing a file in it atomically. Blocking file I/O: call
//! it at start or from `spawn_blocking`. It sits here, below the gateway and
//! the agent, because the wire crate below it does no I/O.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Mode of a state directory: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every state file: the owner only.
pub const FILE_MODE: u32 = 0o600;

/// Default state directory of `program` (`agent`, `gateway`):
/// `$XDG_STATE_HOME/exitpool/<program>`, else
/// `$HOME/.local/state/exitpool/<program>`, else `./exitpool-<program>-state`.
pub fn default_dir(program: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")));
    match base {
        Some(base) => base.join("exitpool").join(program),
        None => PathBuf::from(format!("exitpool-{program}-state")),
    }
}

/// Creates `dir` and its missing parents owner-only; an existing directory
/// keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Creates `dir` owner-only, or tightens an existing one, and tightens every
/// file already in it to owner-only (for state an older version left looser).
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    restrict(dir, DIR_MODE)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            restrict(&entry.path(), FILE_MODE)?;
        }
    }
    Ok(())
}

/// Sets `path`'s permission bits to `mode` (Unix; elsewhere the platform's
/// defaults for the user's own directories apply).
#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Writes `bytes` to `path` through a synced owner-only temporary file and a
/// rename, so a crash leaves either the old contents or the new, never half of
/// them, and no other user can read them at any moment.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    let mut file = options.open(&tmp)?;
    // A temporary file left over from a crash keeps its old mode otherwise.
    restrict(&tmp, FILE_MODE)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory name under the system's temporary directory.
    fn temp_dir(purpose: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "exitpool-state-dir-{purpose}-{}-{nanos}",
            std::process::id()
        ))
    }

    #[test]
    fn the_default_dir_is_per_program() {
        let agent = default_dir("agent");
        assert!(agent.ends_with("exitpool/agent") || agent.ends_with("exitpool-agent-state"));
        assert_ne!(agent, default_dir("gateway"));
    }

    #[test]
    fn a_write_replaces_the_whole_file() {
        let dir = temp_dir("write");
        create_private_dir(&dir).unwrap();
        let path = dir.join("secret");
        write_atomically(&path, b"first, and longer").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn new_state_is_owner_only_and_loose_state_is_tightened_by_prepare() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir("mode");
        let dir = root.join("program");
        create_private_dir(&dir).unwrap();
        write_atomically(&dir.join("key"), b"k").unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&dir.join("key")), FILE_MODE);
        let loose = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        loose(&dir, 0o755);
        loose(&dir.join("key"), 0o644);
        // Creating leaves an existing directory alone; preparing tightens it.
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o755);
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&dir.join("key")), FILE_MODE);
        // A temporary file a crash left loose is tightened before it is written.
        std::fs::write(dir.join("next.tmp"), b"old").unwrap();
        loose(&dir.join("next.tmp"), 0o666);
        write_atomically(&dir.join("next"), b"new").unwrap();
        assert_eq!(mode(&dir.join("next")), FILE_MODE);
        std::fs::remove_dir_all(root).unwrap();
    }
}
