//! The gateway's state directory: where its certificate, key and secrets live.

use exitpool_transport::state_dir;
use std::path::{Path, PathBuf};

// The directory itself is the transport crate's, shared with the agent; these
// are the names the gateway's callers know it by.
pub use state_dir::create_private_dir as ensure_dir;
pub use state_dir::write_atomically as write_private;

/// Default state directory: `$XDG_STATE_HOME/exitpool/gateway`, else
/// `$HOME/.local/state/exitpool/gateway`, else `./exitpool-gateway-state`.
pub fn default_dir() -> PathBuf {
    state_dir::default_dir("gateway")
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
