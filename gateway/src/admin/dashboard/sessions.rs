//! The dashboard's sign-in sessions (part of the admin port's dashboard,
//! [`super`]): a bounded table of cookie sessions, each with its role, its
//! CSRF token and its expiry, and the one-time sign-in codes `--demo` prints.
//!
//! A session id is 256 random bits, sent only in an `HttpOnly` cookie; the
//! table is keyed by its SHA-256, so a lookup's timing says nothing about
//! the ids held. Expired sessions and codes are purged whenever one is added
//! and by the dashboard's sampler every ten seconds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Most sessions held at once; a new one beyond takes the place of the
/// session closest to its expiry.
pub const MAX_SESSIONS: usize = 64;

/// How long a session lasts from sign-in (no sliding renewal: an operator
/// signs in again once a working day).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// How long a one-time sign-in code stays redeemable.
pub const CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Most one-time codes waiting at once.
const MAX_CODES: usize = 16;

/// What a session may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Signed in with the admin token: reads and writes.
    Admin,
    /// Signed in with the read-only token: reads only.
    ReadOnly,
}

impl Role {
    /// The name the page shows and branches on.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// The token every write must carry in `X-CSRF-Token`.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
    /// The token its API calls carry, when not the admin token (a
    /// read-only session's, as the operator gave it at sign-in).
    pub bearer: Option<exitpool_protocol::Secret>,
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        same_secret(&self.csrf, given)
    }
}

/// Whether `given` is `expected`, compared in constant time (the length
/// aside, which a token's format gives away anyway).
pub fn same_secret(expected: &str, given: &str) -> bool {
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}

/// The sessions of one admin port.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

/// A new random token: 256 bits, URL-safe base64.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `role` whose API calls carry `bearer` (or the
    /// admin token); returns its id (for the cookie) and the session.
    pub fn open(
        &self,
        role: Role,
        bearer: Option<exitpool_protocol::Secret>,
        now: Instant,
    ) -> (String, Session) {
        let id = random_token();
        let session = Session {
            role,
            csrf: random_token(),
            expires: now + SESSION_LIFETIME,
            bearer,
        };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, session| session.expires > now);
        if table.len() >= MAX_SESSIONS {
            if let Some(oldest) = table
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(key, _)| *key)
            {
                table.remove(&oldest);
            }
        }
        table.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session with cookie value `id`, if any.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(id);
        match table.get(&key) {
            Some(session) if session.expires > now => Some(session.clone()),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with cookie value `id`; whether there was one.
    pub fn close(&self, id: &str) -> bool {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&digest(id)).is_some()
    }

    /// Drops expired sessions.
    pub fn purge(&self, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, session| session.expires > now);
    }

    /// How many sessions are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One-time sign-in codes for the whole process: `--demo` mints one before
/// (or after) the admin port starts, so they cannot live in one port's
/// state. A code is 256 random bits, so a code minted for one gateway of a
/// process is of no use to anyone who does not already hold it.
static CODES: Mutex<Vec<([u8; 32], Instant)>> = Mutex::new(Vec::new());

/// Mints a one-time code that opens an admin session once, within
/// [`CODE_LIFETIME`].
pub fn mint_code() -> String {
    let code = random_token();
    let now = Instant::now();
    let mut codes = CODES.lock().unwrap_or_else(|e| e.into_inner());
    codes.retain(|(_, expires)| *expires > now);
    if codes.len() >= MAX_CODES {
        codes.remove(0);
    }
    codes.push((digest(&code), now + CODE_LIFETIME));
    code
}

/// Redeems `code`: true once for a live code, false ever after.
pub fn redeem_code(code: &str, now: Instant) -> bool {
    let key = digest(code);
    let mut codes = CODES.lock().unwrap_or_else(|e| e.into_inner());
    codes.retain(|(_, expires)| *expires > now);
    match codes.iter().position(|(held, _)| *held == key) {
        Some(index) => {
            codes.remove(index);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_are_bounded_and_close() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, session) = sessions.open(Role::Admin, None, now);
        assert!(sessions.get(&id, now).is_some());
        assert!(session.csrf_matches(&session.csrf));
        assert!(!session.csrf_matches("nope"));
        assert!(sessions.get("unknown", now).is_none());
        assert!(sessions.get(&id, now + SESSION_LIFETIME).is_none());
        assert!(sessions.is_empty(), "the expired session was dropped");
        let ids: Vec<String> = (0..MAX_SESSIONS + 5)
            .map(|i| {
                sessions
                    .open(Role::ReadOnly, None, now + Duration::from_secs(i as u64))
                    .0
            })
            .collect();
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let later = now + Duration::from_secs(100);
        assert!(
            sessions.get(&ids[0], later).is_none(),
            "the oldest made way"
        );
        let last = ids.last().unwrap();
        assert_eq!(sessions.get(last, later).unwrap().role, Role::ReadOnly);
        assert!(sessions.close(last));
        assert!(sessions.get(last, later).is_none());
        sessions.purge(now + SESSION_LIFETIME * 2);
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_code_opens_once_and_expires() {
        let now = Instant::now();
        let code = mint_code();
        assert!(!redeem_code("other", now));
        assert!(redeem_code(&code, now));
        assert!(!redeem_code(&code, now), "only once");
        let late = mint_code();
        assert!(!redeem_code(
            &late,
            now + CODE_LIFETIME + Duration::from_secs(1)
        ));
    }
}
