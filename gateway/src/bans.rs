//! Banned exits: devices an operator took out of the pool
//! (`POST /api/v1/exits/{id}/ban`). A banned device's key is refused at join
//! ([`crate::tunnel`]'s `Hello` check, with a reason the agent logs) until it
//! is unbanned; the ban itself disconnects it if it is connected here.
//!
//! Bans are by exit id, the public id the gateway derives from the device's
//! key (so a ban holds however the device reconnects, and an operator can ban
//! an exit id it saw in a log while the device is away). They persist in the
//! state directory (`bans.json`, written atomically), so a restart keeps them.
//!
//! With a control-plane store the bans live in the database instead (fleet-wide
//! on PostgreSQL): the API writes them there, and every gateway swaps the
//! store's list in with each snapshot ([`Bans::adopt_store`]), disconnecting
//! the banned exits it holds (`crate::admin::exits::enforce_store_bans`);
//! `bans.json` is then neither read for joins nor written.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Most bans kept: a ban list longer than this is a mistake or an attack on
/// the file, not an operator's work.
pub const MAX_BANS: usize = 100_000;

/// Longest reason kept with a ban.
pub const MAX_REASON: usize = 512;

/// The file in the state directory.
pub const FILE_NAME: &str = "bans.json";

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// When it was made (Unix seconds).
    pub since: u64,
    /// Why, as the operator said (may be empty).
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BansFile {
    exits: BTreeMap<String, Ban>,
}

/// Why a ban could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// [`MAX_BANS`] are kept already.
    #[error("{MAX_BANS} exits are banned already; unban some first")]
    Full,
    /// The reason is longer than [`MAX_REASON`].
    #[error("the reason is longer than {MAX_REASON} bytes")]
    ReasonTooLong,
    /// The file could not be written; the ban list is as it was.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The ban list, read on every join (a read lock) and written rarely.
#[derive(Debug, Default)]
pub struct Bans {
    /// `None`: kept in memory only (tests of the library).
    path: Option<PathBuf>,
    exits: RwLock<BTreeMap<String, Ban>>,
    /// One writer of the file at a time, in the order of the changes.
    writing: Mutex<()>,
    /// Set once the store's list is in force: the file is left alone.
    from_store: std::sync::atomic::AtomicBool,
}

impl Bans {
    /// Loads the bans in `state_dir` (none when there is no file yet).
    pub fn load(state_dir: &Path) -> std::io::Result<Bans> {
        let path = state_dir.join(FILE_NAME);
        let exits = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: BansFile = serde_json::from_slice(&bytes).map_err(|error| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not a ban list ({error})", path.display()),
                    )
                })?;
                file.exits
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error),
        };
        Ok(Bans {
            path: Some(path),
            exits: RwLock::new(exits),
            writing: Mutex::new(()),
            from_store: Default::default(),
        })
    }

    /// Puts the store's list in force (the whole list, at one revision); from
    /// now on `bans.json` is not written.
    pub fn adopt_store(&self, exits: BTreeMap<String, Ban>) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.from_store
            .store(true, std::sync::atomic::Ordering::Relaxed);
        *self.exits.write().unwrap_or_else(|e| e.into_inner()) = exits;
    }

    /// One change the store has taken, in force here at once (the next
    /// snapshot brings the same).
    pub fn store_changed(&self, exit_id: &str, ban: Option<Ban>) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut exits = self.exits.write().unwrap_or_else(|e| e.into_inner());
        match ban {
            Some(ban) => {
                exits.entry(exit_id.to_owned()).or_insert(ban);
            }
            None => {
                exits.remove(exit_id);
            }
        }
    }

    /// Whether `exit_id` is banned.
    pub fn is_banned(&self, exit_id: &str) -> bool {
        self.read().contains_key(exit_id)
    }

    /// The ban of `exit_id`, if any.
    pub fn get(&self, exit_id: &str) -> Option<Ban> {
        self.read().get(exit_id).cloned()
    }

    /// Every ban, by exit id.
    pub fn list(&self) -> BTreeMap<String, Ban> {
        self.read().clone()
    }

    /// Bans `exit_id` (kept on disk before this returns); `false` if it was
    /// banned already (the first ban's time and reason stay). Writes a small
    /// file: call it off the async runtime's threads.
    pub fn ban(&self, exit_id: &str, reason: &str) -> Result<bool, BanError> {
        if reason.len() > MAX_REASON {
            return Err(BanError::ReasonTooLong);
        }
        self.change(|exits| {
            if exits.contains_key(exit_id) {
                return Ok(false);
            }
            if exits.len() >= MAX_BANS {
                return Err(BanError::Full);
            }
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            exits.insert(
                exit_id.to_owned(),
                Ban {
                    since,
                    reason: reason.to_owned(),
                },
            );
            Ok(true)
        })
    }

    /// Lifts the ban of `exit_id`; `false` if it was not banned. Writes a
    /// small file, as [`Bans::ban`].
    pub fn unban(&self, exit_id: &str) -> Result<bool, BanError> {
        self.change(|exits| Ok(exits.remove(exit_id).is_some()))
    }

    /// Applies `edit` to a copy, writes the copy, and only then puts it in
    /// force: a failed write leaves list and file as they were.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, Ban>) -> Result<bool, BanError>,
    ) -> Result<bool, BanError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut exits = self.read().clone();
        if !edit(&mut exits)? {
            return Ok(false);
        }
        let from_store = self.from_store.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(path) = self.path.as_ref().filter(|_| !from_store) {
            let file = BansFile { exits };
            let bytes = serde_json::to_vec_pretty(&file).map_err(|error| BanError::Write {
                path: path.clone(),
                source: std::io::Error::other(error),
            })?;
            crate::state::write_private(path, &bytes).map_err(|source| BanError::Write {
                path: path.clone(),
                source,
            })?;
            exits = file.exits;
        }
        *self.exits.write().unwrap_or_else(|e| e.into_inner()) = exits;
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Ban>> {
        self.exits.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_survive_a_reload_and_unban_lifts_them() {
        let dir = std::env::temp_dir().join(format!("exitpool-bans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bans = Bans::load(&dir).unwrap();
        assert!(!bans.is_banned("e1"));
        assert!(bans.ban("e1", "abuse report 17").unwrap());
        assert!(!bans.ban("e1", "again").unwrap());
        assert!(bans.is_banned("e1"));
        let again = Bans::load(&dir).unwrap();
        assert_eq!(again.get("e1").unwrap().reason, "abuse report 17");
        assert!(again.unban("e1").unwrap());
        assert!(!again.unban("e1").unwrap());
        assert!(!Bans::load(&dir).unwrap().is_banned("e1"));
        assert!(matches!(
            bans.ban("e2", &"x".repeat(MAX_REASON + 1)),
            Err(BanError::ReasonTooLong)
        ));
        std::fs::write(
            dir.join(FILE_NAME),
            b"{\"exits\":{\"e\":{\"since\":1,\"what\":2}}}",
        )
        .unwrap();
        let error = Bans::load(&dir).unwrap_err().to_string();
        assert!(error.contains("not a ban list"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
