//! Who may use the gateway: customer accounts and agent enrolment tokens.
//!
//! A customer's password is either plaintext from `--user NAME:PASSWORD` (quick
//! starts) or an Argon2 PHC hash from the accounts file (`--users FILE`, parsed in
//! [`crate::accounts`]). Argon2 is slow on purpose, so a successful verification is
//! cached: per customer, a keyed SHA-256 of the password that last verified, next
//! to the hash it verified against. A later connection with the same password
//! costs one SHA-256 and a constant-time comparison; a changed hash (after a
//! reload) or another password goes through Argon2 again.
//!
//! Argon2 never runs on the async runtime: [`Users::check`] answers at once when
//! no hash is needed (a plaintext account, a cached verification) and otherwise
//! hands back a [`HashCheck`] for a blocking thread (see `crate::abuse`'s
//! `PasswordChecks`). An unknown name costs the same Argon2 run as a wrong password
//! (against a dummy hash), so timing does not tell which names exist.
//!
//! Secrets are compared in constant time and never printed: `Debug` shows names
//! only.

use crate::error::ProxyError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use exitpool_protocol::{Secret, TargetHost};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use subtle::ConstantTimeEq;

/// Compares two secrets without leaking, through timing, where they differ.
fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a `NAME:PASSWORD` argument (or an account in the file) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No colon, or an empty name or password.
    #[error("expected NAME:PASSWORD with both parts non-empty")]
    Shape,
    /// The name or password contains `-`, which starts targeting parameters.
    #[error("customer names and passwords may not contain '-' (it starts targeting parameters like -country-us)")]
    Dash,
    /// Characters that cannot travel in Basic auth or a proxy URL.
    #[error("customer names may only contain letters, digits, '_' and '.'")]
    NameCharacters,
    /// `password_hash` is not an Argon2 PHC string.
    #[error("not an Argon2 PHC string such as `gateway hash-password` prints ({0})")]
    Hash(String),
    /// The password is empty or has characters that cannot travel in Basic auth.
    #[error("passwords must be non-empty, without '-', ':', whitespace or control characters")]
    PasswordCharacters,
}

/// What a customer may do. `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// The only exit countries allowed (ISO 3166-1 alpha-2, upper case). An
    /// untargeted request exits from a random one of these that has exits.
    pub countries: Option<Vec<String>>,
    /// Most customer connections (relayed streams) open at once.
    pub max_connections: Option<u32>,
    /// New connections (and plain-HTTP requests) per second, with a burst of the
    /// same size.
    pub requests_per_second: Option<NonZeroU32>,
    /// Bytes up + down over the life of the account.
    pub quota_bytes: Option<u64>,
    /// Most sticky sessions pinned at once (default
    /// [`crate::sessions::DEFAULT_MAX_SESSIONS_PER_CUSTOMER`]).
    pub max_sessions: Option<usize>,
    /// Networks whose connections are this customer's without credentials
    /// (credentials, when sent, still decide).
    pub allow_ips: Vec<ipnet::IpNet>,
    /// The control plane's `allow_ips`: the only networks this account may
    /// connect from, a restriction that never stands in for credentials.
    /// Every list must hold the source (a sub-user carries its own and its
    /// customer's); no list for anywhere.
    pub connect_from: Vec<Vec<ipnet::IpNet>>,
    /// Target domains refused, each with its subdomains (lower case, no
    /// trailing dot); a sub-user's include its customer's.
    pub blocked_domains: BTreeSet<String>,
}

impl Limits {
    /// Most sticky sessions this account may pin at once.
    pub fn session_limit(&self) -> usize {
        self.max_sessions
            .unwrap_or(crate::sessions::DEFAULT_MAX_SESSIONS_PER_CUSTOMER)
    }

    /// Whether an exit in `country` is allowed.
    pub fn allows_country(&self, country: &str) -> bool {
        self.countries
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|c| c.eq_ignore_ascii_case(country)))
    }

    /// Refuses a connection from `source` outside any of the account's
    /// `connect_from` lists (an IPv4-mapped IPv6 source counts as its IPv4).
    pub fn admits_source(&self, source: IpAddr) -> Result<(), ProxyError> {
        let source = source.to_canonical();
        let inside = |list: &Vec<ipnet::IpNet>| list.iter().any(|net| net.contains(&source));
        match self.connect_from.iter().all(inside) {
            true => Ok(()),
            false => Err(ProxyError::SourceNotAllowed(source)),
        }
    }

    /// Refuses a target named by a blocked domain or one of its subdomains.
    /// An address is not a name and passes: the list blocks names.
    pub fn admits_target(&self, host: &TargetHost) -> Result<(), ProxyError> {
        let TargetHost::Domain(name) = host else {
            return Ok(());
        };
        if self.blocked_domains.is_empty() {
            return Ok(());
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        // The name itself, then each parent: `a.b.example.com`, `b.example.com`, ...
        let mut suffix = name.as_str();
        loop {
            if let Some(blocked) = self.blocked_domains.get(suffix) {
                return Err(ProxyError::DomainBlocked(blocked.clone()));
            }
            match suffix.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => suffix = parent,
                _ => return Ok(()),
            }
        }
    }
}

/// How a customer proves who they are.
#[derive(Clone)]
enum Password {
    /// From `--user`: compared in constant time.
    Plain(Secret),
    /// From the accounts file: an Argon2 PHC string.
    Hash(Arc<str>),
}

/// Checks a customer password's characters (the same rules as `--user`).
pub fn check_password(password: &str) -> Result<(), CredentialError> {
    if password.contains('-') {
        return Err(CredentialError::Dash);
    }
    if password.is_empty()
        || password
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(CredentialError::PasswordCharacters);
    }
    Ok(())
}

/// Checks a customer name's characters.
pub fn check_name(name: &str) -> Result<(), CredentialError> {
    if name.is_empty() {
        return Err(CredentialError::Shape);
    }
    if name.contains('-') {
        return Err(CredentialError::Dash);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(CredentialError::NameCharacters);
    }
    Ok(())
}

/// Hashes `password` for the accounts file: Argon2id with the crate's default
/// (OWASP-recommended) cost and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    check_password(password)?;
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| CredentialError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// The digest of a password that verified, and the hash it verified against.
type Verified = ([u8; 32], Arc<str>);

/// Successful hash verifications, so Argon2 runs once per customer and password,
/// not once per connection. See the module docs.
pub struct VerifyCache {
    /// Keys the password digests, so the cache holds nothing that could be
    /// attacked offline. Random per process.
    key: [u8; 32],
    /// Per customer: the digest of the password that last verified, and the hash
    /// it verified against.
    verified: Mutex<HashMap<String, Verified>>,
}

impl Default for VerifyCache {
    fn default() -> Self {
        VerifyCache {
            key: rand::random(),
            verified: Mutex::new(HashMap::new()),
        }
    }
}

impl VerifyCache {
    fn digest(&self, name: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    /// Whether `password` is the one that last verified against `hash` (cheap).
    fn is_known(&self, name: &str, hash: &Arc<str>, password: &str) -> bool {
        let digest = self.digest(name, password);
        let verified = self.verified.lock().expect("verify cache lock poisoned");
        verified.get(name).is_some_and(|(known, known_hash)| {
            bool::from(known.ct_eq(&digest)) && known_hash == hash
        })
    }

    /// Verifies with Argon2 unless cached, and caches a success.
    fn verify(&self, name: &str, hash: &Arc<str>, password: &str) -> bool {
        if self.is_known(name, hash, password) {
            return true;
        }
        let ok = argon2_verifies(hash, password);
        if ok {
            let digest = self.digest(name, password);
            self.verified
                .lock()
                .expect("verify cache lock poisoned")
                .insert(name.to_owned(), (digest, hash.clone()));
        }
        ok
    }
}

/// A customer account.
#[derive(Clone)]
pub struct Customer {
    /// The base user name: what authenticates, what is logged.
    pub name: String,
    password: Password,
    /// What the customer may do.
    pub limits: Limits,
}

impl std::fmt::Debug for Customer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Customer {
    /// Parses `NAME:PASSWORD` as given to `--user`.
    pub fn parse(spec: &str) -> Result<Customer, CredentialError> {
        let (name, password) = spec.split_once(':').ok_or(CredentialError::Shape)?;
        if name.is_empty() || password.is_empty() {
            return Err(CredentialError::Shape);
        }
        if name.contains('-') || password.contains('-') {
            return Err(CredentialError::Dash);
        }
        check_name(name)?;
        check_password(password)?;
        Ok(Customer {
            name: name.to_owned(),
            password: Password::Plain(Secret(password.to_owned())),
            limits: Limits::default(),
        })
    }

    /// An account whose password is checked against an Argon2 PHC `hash`.
    pub fn hashed(name: &str, hash: &str) -> Result<Customer, CredentialError> {
        check_name(name)?;
        let parsed = PasswordHash::new(hash).map_err(|e| CredentialError::Hash(e.to_string()))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(CredentialError::Hash(format!(
                "algorithm `{}`",
                parsed.algorithm
            )));
        }
        Ok(Customer {
            name: name.to_owned(),
            password: Password::Hash(hash.into()),
            limits: Limits::default(),
        })
    }

    /// The same account with `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Customer {
        self.limits = limits;
        self
    }
}

/// Accounts by allow-listed network: one map per prefix length, so a lookup
/// costs one hash probe per distinct length (at most 33 + 129), longest first,
/// whatever the number of networks.
#[derive(Clone, Default)]
struct SourceTable {
    /// Longest prefix first.
    by_length: Vec<(u8, HashMap<ipnet::IpNet, Arc<Customer>>)>,
}

impl SourceTable {
    fn new<'a>(customers: impl Iterator<Item = &'a Arc<Customer>>) -> SourceTable {
        let mut by_length: std::collections::BTreeMap<u8, HashMap<ipnet::IpNet, Arc<Customer>>> =
            Default::default();
        for customer in customers {
            for network in &customer.limits.allow_ips {
                by_length
                    .entry(network.prefix_len())
                    .or_default()
                    .insert(network.trunc(), customer.clone());
            }
        }
        SourceTable {
            by_length: by_length.into_iter().rev().collect(),
        }
    }

    fn find(&self, source: IpAddr) -> Option<&Arc<Customer>> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let source = source.to_canonical();
        self.by_length.iter().find_map(|(length, networks)| {
            let network = ipnet::IpNet::new(source, *length).ok()?.trunc();
            networks.get(&network)
        })
    }
}

/// All customer accounts.
#[derive(Clone, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<Customer>>,
    /// Accounts by the networks in their `allow_ips`.
    by_source: SourceTable,
    /// Whether any account has a hashed password: then an unknown name pays a
    /// dummy Argon2 run, as a wrong password for a real name does.
    any_hashed: bool,
    /// Shared by the sets a reload replaces, so verifications stay cached.
    cache: Arc<VerifyCache>,
}

/// The outcome of [`Users::check`].
#[derive(Debug)]
pub enum Checked {
    /// Answered without Argon2: the account, or `None` for wrong credentials.
    Done(Option<Arc<Customer>>),
    /// Argon2 must run; [`HashCheck::run`] blocks, so call it off the runtime.
    NeedsHash(HashCheck),
}

/// One Argon2 verification, to run on a blocking thread.
pub struct HashCheck {
    /// The account, or `None` for an unknown name (checked against a dummy hash).
    customer: Option<Arc<Customer>>,
    hash: Option<Arc<str>>,
    password: Secret,
    cache: Arc<VerifyCache>,
}

impl std::fmt::Debug for HashCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashCheck")
            .field("customer", &self.customer.as_ref().map(|c| &c.name))
            .finish_non_exhaustive()
    }
}

impl HashCheck {
    /// Runs Argon2 (tens of milliseconds of CPU): the account if the password
    /// verified, `None` otherwise.
    pub fn run(self) -> Option<Arc<Customer>> {
        let (Some(customer), Some(hash)) = (self.customer, self.hash) else {
            // An unknown name: the same work as a wrong password, then no.
            let _ = argon2_verifies(dummy_hash(), self.password.expose());
            return None;
        };
        self.cache
            .verify(&customer.name, &hash, self.password.expose())
            .then_some(customer)
    }
}

/// A hash that no password is known for, made with the same parameters as
/// [`hash_password`], so checking against it costs what a real check costs.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let password: [u8; 16] = rand::random();
        hash_password(&hex::encode(password)).expect("hashing random bytes cannot fail")
    })
}

/// Whether `password` verifies against the PHC string `hash` (Argon2: slow).
fn argon2_verifies(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.values()).finish()
    }
}

impl Users {
    /// Accounts from a list (later entries replace earlier ones with the same name).
    pub fn new(customers: impl IntoIterator<Item = Customer>) -> Users {
        Users::from_map(
            customers
                .into_iter()
                .map(|customer| (customer.name.clone(), Arc::new(customer)))
                .collect(),
        )
    }

    fn from_map(by_name: HashMap<String, Arc<Customer>>) -> Users {
        let any_hashed = by_name
            .values()
            .any(|customer| matches!(customer.password, Password::Hash(_)));
        let by_source = SourceTable::new(by_name.values());
        Users {
            by_name,
            by_source,
            any_hashed,
            cache: Arc::default(),
        }
    }

    /// The account whose `allow_ips` holds `source` (the longest matching
    /// network), for a connection that sent no credentials.
    pub fn by_source(&self, source: IpAddr) -> Option<&Arc<Customer>> {
        self.by_source.find(source)
    }

    /// These accounts plus `more` (which replace accounts of the same name), with
    /// a fresh verification cache.
    pub fn with(&self, more: impl IntoIterator<Item = Customer>) -> Users {
        let mut by_name = self.by_name.clone();
        for customer in more {
            by_name.insert(customer.name.clone(), Arc::new(customer));
        }
        Users::from_map(by_name)
    }

    /// The same accounts, sharing `other`'s verification cache (for a reload).
    pub fn with_cache_of(mut self, other: &Users) -> Users {
        self.cache = other.cache.clone();
        self
    }

    /// The account for `name` if `password` is right; `None` otherwise, with no
    /// hint as to which part was wrong. Runs Argon2 on this thread when needed:
    /// async code uses [`Users::check`] instead.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<Arc<Customer>> {
        match self.check(name, password) {
            Checked::Done(result) => result,
            Checked::NeedsHash(check) => check.run(),
        }
    }

    /// Checks `password` for `name` as far as it can without Argon2: a plaintext
    /// account or a cached verification is answered now; anything else, including
    /// an unknown name when any account is hashed, needs [`HashCheck::run`].
    pub fn check(&self, name: &str, password: &str) -> Checked {
        let Some(customer) = self.by_name.get(name) else {
            return self.refusal(password);
        };
        match &customer.password {
            Password::Plain(secret) if secrets_equal(secret.expose(), password) => {
                Checked::Done(Some(customer.clone()))
            }
            // A wrong password for a plaintext account (a `--user` beside a
            // users file) costs what any other refusal costs, so timing does
            // not tell which names are plaintext accounts.
            Password::Plain(_) => self.refusal(password),
            Password::Hash(hash) if self.cache.is_known(&customer.name, hash, password) => {
                Checked::Done(Some(customer.clone()))
            }
            Password::Hash(hash) => Checked::NeedsHash(HashCheck {
                customer: Some(customer.clone()),
                hash: Some(hash.clone()),
                password: Secret(password.to_owned()),
                cache: self.cache.clone(),
            }),
        }
    }

    /// A refusal that costs what refusing a hashed account's wrong password
    /// costs: a dummy Argon2 run when any account is hashed, nothing otherwise.
    fn refusal(&self, password: &str) -> Checked {
        if !self.any_hashed {
            return Checked::Done(None);
        }
        Checked::NeedsHash(HashCheck {
            customer: None,
            hash: None,
            password: Secret(password.to_owned()),
            cache: self.cache.clone(),
        })
    }

    /// The account named `name`, without checking any password.
    pub fn get(&self, name: &str) -> Option<&Arc<Customer>> {
        self.by_name.get(name)
    }

    /// Every account.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Customer>> {
        self.by_name.values()
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The tokens agents may enrol with.
#[derive(Clone, Default)]
pub struct AgentTokens {
    tokens: Vec<AgentToken>,
}

impl std::fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentTokens({} tokens)", self.tokens.len())
    }
}

/// Least randomness an agent token must carry, in bits: a token is a
/// password anyone on the internet may guess at the tunnel port.
pub const MIN_TOKEN_BITS: u32 = 128;

/// A new agent token: 32 random bytes in hex (256 bits).
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Refuses a token that cannot hold [`MIN_TOKEN_BITS`]: its length times the
/// bits per character of the smallest alphabet it is written in (hex digits,
/// or the classes it uses: lower case, upper case, digits, other printable).
/// An estimate from above, so a refusal is certain and a pass is not a proof.
pub fn check_token_strength(token: &str) -> Result<(), String> {
    let alphabet: u32 = if !token.is_empty() && token.chars().all(|c| c.is_ascii_hexdigit()) {
        16
    } else {
        let uses = |class: fn(&char) -> bool| token.chars().any(|c| class(&c));
        [
            (uses(char::is_ascii_lowercase), 26),
            (uses(char::is_ascii_uppercase), 26),
            (uses(char::is_ascii_digit), 10),
            (uses(|c| !c.is_ascii_alphanumeric()), 33),
        ]
        .iter()
        .filter(|(used, _)| *used)
        .map(|(_, size)| size)
        .sum()
    };
    let bits = token.chars().count() as f64 * f64::from(alphabet.max(1)).log2();
    if bits < f64::from(MIN_TOKEN_BITS) {
        return Err(format!(
            "an agent token must carry at least {MIN_TOKEN_BITS} bits of randomness; \
             this one ({} characters) holds at most {bits:.0}: make one with `gateway token new`",
            token.chars().count()
        ));
    }
    Ok(())
}

/// One enrolment token and how many agents may use it at once.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentToken {
    /// The token agents present in `Hello`.
    pub token: Secret,
    /// Most agents connected with it at once; `None` for no limit.
    pub max_agents: Option<u32>,
}

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentToken")
            .field("max_agents", &self.max_agents)
            .finish_non_exhaustive()
    }
}

impl AgentToken {
    /// `token` with no limit on its agents.
    pub fn unlimited(token: impl Into<String>) -> AgentToken {
        AgentToken {
            token: Secret(token.into()),
            max_agents: None,
        }
    }
}

impl AgentTokens {
    /// Accepts exactly `tokens`, with no limit on their agents.
    pub fn new(tokens: impl IntoIterator<Item = String>) -> AgentTokens {
        AgentTokens {
            tokens: tokens.into_iter().map(AgentToken::unlimited).collect(),
        }
    }

    /// The entry for `token`, if it is accepted. Every token is compared, so
    /// timing does not reveal which one nearly matched.
    pub fn find(&self, token: &str) -> Option<&AgentToken> {
        self.tokens.iter().fold(None, |found, known| {
            if secrets_equal(known.token.expose(), token) {
                Some(known)
            } else {
                found
            }
        })
    }

    /// Whether `token` is one of the accepted tokens.
    pub fn accepts(&self, token: &str) -> bool {
        self.find(token).is_some()
    }

    /// Whether no token is configured (no agent can join).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// These tokens plus `more`.
    pub fn with(&self, more: impl IntoIterator<Item = AgentToken>) -> AgentTokens {
        let mut tokens = self.tokens.clone();
        tokens.extend(more);
        AgentTokens { tokens }
    }

    /// Number of accepted tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs_are_checked() {
        assert!(Customer::parse("alice:s3cret").is_ok());
        assert_eq!(
            Customer::parse("alice").unwrap_err(),
            CredentialError::Shape
        );
        assert_eq!(Customer::parse(":x").unwrap_err(), CredentialError::Shape);
        assert_eq!(Customer::parse("a-b:x").unwrap_err(), CredentialError::Dash);
        assert_eq!(Customer::parse("a:x-y").unwrap_err(), CredentialError::Dash);
        assert_eq!(
            Customer::parse("a b:x").unwrap_err(),
            CredentialError::NameCharacters
        );
        for spaced in ["a:p s", "a:p:s", "a:p\ts"] {
            assert_eq!(
                Customer::parse(spaced).unwrap_err(),
                CredentialError::PasswordCharacters,
                "{spaced:?}"
            );
        }
    }

    #[test]
    fn wrong_password_and_unknown_user_both_fail() {
        let users = Users::new([Customer::parse("alice:s3cret").unwrap()]);
        assert_eq!(users.authenticate("alice", "s3cret").unwrap().name, "alice");
        assert!(users.authenticate("alice", "wrong").is_none());
        assert!(users.authenticate("bob", "s3cret").is_none());
    }

    #[test]
    fn hashed_passwords_verify_and_are_cached() {
        let hash = hash_password("Pw9xQz").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let users = Users::new([Customer::hashed("bob", &hash).unwrap()]);
        assert!(users.authenticate("bob", "Pw9xQz").is_some());
        assert!(users.authenticate("bob", "wrong").is_none());
        // The second success comes from the cache.
        assert!(users.cache.verified.lock().unwrap().contains_key("bob"));
        assert!(users.authenticate("bob", "Pw9xQz").is_some());
        // A reload with another hash for bob does not reuse the cached success.
        let other = hash_password("N3w").unwrap();
        let reloaded = Users::new([Customer::hashed("bob", &other).unwrap()]).with_cache_of(&users);
        assert!(reloaded.authenticate("bob", "Pw9xQz").is_none());
        assert!(reloaded.authenticate("bob", "N3w").is_some());
    }

    #[test]
    fn bad_hashes_and_passwords_are_refused() {
        assert!(matches!(
            Customer::hashed("bob", "plaintext"),
            Err(CredentialError::Hash(_))
        ));
        assert_eq!(hash_password("a-b").unwrap_err(), CredentialError::Dash);
        assert_eq!(
            hash_password("").unwrap_err(),
            CredentialError::PasswordCharacters
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let customer = Customer::parse("alice:s3cret").unwrap();
        let tokens = AgentTokens::new(["t0ken".to_owned()]);
        let text = format!("{customer:?} {tokens:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("t0ken"),
            "{text}"
        );
    }

    #[test]
    fn sources_must_be_in_every_list() {
        let net = |text: &str| text.parse::<ipnet::IpNet>().unwrap();
        let limits = Limits {
            connect_from: vec![
                vec![net("10.0.0.0/8"), net("2001:db8::/32")],
                vec![net("10.1.0.0/16")],
            ],
            ..Limits::default()
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(limits.admits_source(ip("10.1.2.3")).is_ok());
        assert!(limits.admits_source(ip("::ffff:10.1.2.3")).is_ok());
        for outside in ["10.2.0.1", "2001:db8::1", "192.0.2.1"] {
            let error = limits.admits_source(ip(outside)).unwrap_err();
            assert_eq!(error.presentation().code, "source_not_allowed");
            assert!(error.to_string().contains(outside), "{error}");
        }
        assert!(Limits::default().admits_source(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn blocked_domains_take_their_subdomains_but_not_lookalikes() {
        let limits = Limits {
            blocked_domains: ["example.com".to_owned(), "b.test".to_owned()].into(),
            ..Limits::default()
        };
        let domain = |name: &str| TargetHost::Domain(name.to_owned());
        for blocked in ["example.com", "A.Example.COM", "x.y.example.com.", "b.test"] {
            let error = limits.admits_target(&domain(blocked)).unwrap_err();
            assert_eq!(error.presentation().code, "domain_blocked", "{blocked}");
        }
        for allowed in [
            "notexample.com",
            "example.com.au",
            "com",
            "test",
            "ab.test2",
        ] {
            assert!(limits.admits_target(&domain(allowed)).is_ok(), "{allowed}");
        }
        let address = TargetHost::Ip("192.0.2.1".parse().unwrap());
        assert!(limits.admits_target(&address).is_ok());
    }
}
