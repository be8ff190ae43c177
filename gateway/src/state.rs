//! The gateway's state directory: where its certificate, key and secrets live.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Default state directory: `$XDG_STATE_HOME/exitpool/gateway`, else
/// `$HOME/.local/state/exitpool/gateway`, else `./exitpool-gateway-state`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")));
    match base {
        Some(base) => base.join("exitpool").join("gateway"),
        None => PathBuf::from("exitpool-gateway-state"),
    }
}

/// Creates `dir` (and parents) readable only by the owner.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` to `path` atomically (temp file + rename), mode 0600, so a crash
/// never leaves a half-written secret behind.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Loads a 32-byte random secret from `path`, creating it on first use.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => {
            return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} must hold exactly 32 bytes", path.display()),
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret: [u8; 32] = rand::random();
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    write_private(path, &secret)?;
    Ok(secret)
}
