//! The live account set: customers (from `--user` and the `--users` TOML file) and
//! agent tokens (from `--agent-token` and the `--agent-tokens` file), and their
//! reload on SIGHUP (or `POST /reload`).
//!
//! The set sits behind an [`ArcSwap`]: every connection reads the current one
//! without a lock, and a reload swaps in a complete new set or nothing. A file
//! that fails to parse leaves the running set as it was, and the error names the
//! file, the customer and the field at fault.
//!
//! The users file (keys beyond these are refused, so a typo never goes unnoticed):
//!
//! ```toml
//! [[customer]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$..."   # printed by `gateway hash-password`
//! countries = ["US", "DE"]               # optional
//! max_connections = 100                  # optional
//! max_sessions = 1000                     # optional; default 10,000 sticky sessions
//! requests_per_second = 50               # optional
//! quota_bytes = 50_000_000_000           # optional
//! allow_ips = ["203.0.113.7", "2001:db8::/48"]  # optional: no credentials needed from these
//! ```
//!
//! The agent tokens file: one token per line; blank lines and lines starting with
//! `#` are ignored.
//!
//! With a control-plane store that owns the accounts (no `--users` file), its
//! customers join the set too, swapped in whole whenever the store's revision
//! moves ([`Accounts::store_changed`], driven by [`crate::control_link`]).

use crate::auth::{AgentToken, AgentTokens, Customer, Limits, Users};
use crate::control_link::ControlLink;
use arc_swap::ArcSwap;
use serde::Deserialize;
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an accounts file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (unknown or missing keys,
    /// wrong types); the message names the key and the line.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// One customer entry has a bad value.
    #[error("{path}: customer `{name}` (entry {index}): {field}: {message}")]
    Customer {
        /// The file.
        path: PathBuf,
        /// 1-based position of the `[[customer]]` entry.
        index: usize,
        /// The customer's name as written.
        name: String,
        /// The key at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An agent token line is unusable.
    #[error("{path}: line {line}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// One `[[customer]]` entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerEntry {
    name: String,
    password_hash: String,
    countries: Option<Vec<String>>,
    max_connections: Option<u32>,
    requests_per_second: Option<u32>,
    quota_bytes: Option<u64>,
    max_sessions: Option<usize>,
    allow_ips: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    customer: Vec<CustomerEntry>,
}

/// Where and what a TOML error is, without the quoted source line toml's own
/// `Display` adds: that line may hold a password hash, and the message goes to the
/// log and to `/reload` answers. Hash-like text in the message itself is hidden too.
fn describe_syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = hide_hashes(error.message().trim_end());
    let Some(span) = error.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before.len() - line_start + 1;
    // The key on that line names the field; its value is never repeated.
    let source_line = text[line_start..].lines().next().unwrap_or_default();
    match source_line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.contains('"') => {
            let key = hide_hashes(key.trim());
            format!("line {line}, column {column}, key `{key}`: {message}")
        }
        _ => format!("line {line}, column {column}: {message}"),
    }
}

/// Replaces every `$…` run that could be a PHC hash (`$argon2id$…`, or any other
/// `$scheme$…` pasted by mistake) in `text` with a placeholder.
fn hide_hashes(text: &str) -> String {
    let starts_hash = |rest: &str| {
        rest.char_indices().find(|&(i, c)| {
            c == '$' && rest[i + 1..].starts_with(|next: char| next.is_ascii_alphanumeric())
        })
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, _)) = starts_hash(rest) {
        out.push_str(&rest[..start]);
        out.push_str("<password hash hidden>");
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Parses a users file's text; `path` only names the file in errors.
pub fn parse_users(text: &str, path: &Path) -> Result<Vec<Customer>, AccountsError> {
    let file: UsersFile = toml::from_str(text).map_err(|e| AccountsError::Syntax {
        path: path.to_owned(),
        message: describe_syntax_error(text, &e),
    })?;
    let mut seen = HashSet::new();
    // Each allow-listed network belongs to one account.
    let mut networks: std::collections::HashMap<ipnet::IpNet, String> = Default::default();
    let mut customers = Vec::with_capacity(file.customer.len());
    for (i, entry) in file.customer.into_iter().enumerate() {
        let fail = |field: &'static str, message: String| AccountsError::Customer {
            path: path.to_owned(),
            index: i + 1,
            name: entry.name.clone(),
            field,
            message,
        };
        crate::auth::check_name(&entry.name).map_err(|e| fail("name", e.to_string()))?;
        if !seen.insert(entry.name.clone()) {
            return Err(fail("name", "appears twice in the file".into()));
        }
        let customer = Customer::hashed(&entry.name, &entry.password_hash)
            .map_err(|e| fail("password_hash", e.to_string()))?;
        let countries =
            match entry.countries {
                None => None,
                Some(list) if list.is_empty() => return Err(fail(
                    "countries",
                    "an empty list would allow no exit; leave the key out to allow every country"
                        .into(),
                )),
                Some(list) => Some(
                    list.iter()
                        .map(|code| {
                            if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
                                Ok(code.to_ascii_uppercase())
                            } else {
                                Err(fail(
                                    "countries",
                                    format!(
                                        "`{code}` is not an ISO 3166-1 alpha-2 code such as \"US\""
                                    ),
                                ))
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
        if entry.max_sessions == Some(0) {
            return Err(fail(
                "max_sessions",
                "must be at least 1 (leave it out for the default of 10,000)".into(),
            ));
        }
        if entry.max_connections == Some(0) {
            return Err(fail(
                "max_connections",
                "must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        let requests_per_second = match entry.requests_per_second {
            None => None,
            Some(n) => Some(NonZeroU32::new(n).ok_or_else(|| {
                fail(
                    "requests_per_second",
                    "must be at least 1 (leave it out for no limit)".into(),
                )
            })?),
        };
        let mut allow_ips = Vec::new();
        for text in entry.allow_ips.iter().flatten() {
            let network = parse_network(text).map_err(|message| fail("allow_ips", message))?;
            if let Some(owner) = networks.insert(network, entry.name.clone()) {
                return Err(fail(
                    "allow_ips",
                    format!("{network} is already allowed for customer `{owner}`"),
                ));
            }
            allow_ips.push(network);
        }
        customers.push(customer.with_limits(Limits {
            allow_ips,
            countries,
            max_connections: entry.max_connections,
            max_sessions: entry.max_sessions,
            requests_per_second,
            quota_bytes: entry.quota_bytes,
            ..Limits::default()
        }));
    }
    Ok(customers)
}

/// An `allow_ips` entry: an address (`203.0.113.7`, a /32 or /128) or a network
/// in CIDR form (`2001:db8::/48`) with no host bits set, so a typo such as
/// `10.0.0.1/8` is not silently widened. `--proxy-protocol-from` reads the same.
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(address));
    }
    let network: ipnet::IpNet = text.parse().map_err(|_| {
        format!("`{text}` is not an IP address or a network such as \"198.51.100.0/24\"")
    })?;
    if network.trunc() != network {
        return Err(format!(
            "`{text}` has host bits set; did you mean {}?",
            network.trunc()
        ));
    }
    Ok(network)
}

/// Parses an agent tokens file's text: one token per line, `#` comments.
pub fn parse_agent_tokens(text: &str, path: &Path) -> Result<Vec<AgentToken>, AccountsError> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: String| AccountsError::Token {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let mut words = line.split_whitespace();
        let token = words.next().unwrap_or_default();
        if token.chars().any(char::is_control) {
            return Err(fail("a token may not contain control characters".into()));
        }
        crate::auth::check_token_strength(token).map_err(fail)?;
        let mut entry = AgentToken::unlimited(token);
        for option in words {
            match option.split_once('=') {
                Some(("max_agents", n)) => match n.parse::<u32>() {
                    Ok(n) if n >= 1 => entry.max_agents = Some(n),
                    _ => {
                        return Err(fail(
                            "max_agents must be a whole number of at least 1".into(),
                        ))
                    }
                },
                _ => {
                    return Err(fail(
                        "after the token only `max_agents=N` may follow (one token per line)"
                            .into(),
                    ))
                }
            }
        }
        tokens.push(entry);
    }
    Ok(tokens)
}

fn read(path: &Path) -> Result<String, AccountsError> {
    std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// One complete account set: what a connection or a handshake checks against.
#[derive(Debug, Default)]
pub struct AccountSet {
    /// Customer accounts.
    pub users: Users,
    /// Accepted agent tokens.
    pub agent_tokens: AgentTokens,
}

/// Where the account set comes from: fixed entries (flags) plus files re-read on
/// every reload.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Customers given directly (`--user`, or built by a test).
    pub users: Users,
    /// Tokens given directly (`--agent-token`).
    pub agent_tokens: AgentTokens,
    /// The `--users` TOML file.
    pub users_file: Option<PathBuf>,
    /// The `--agent-tokens` file.
    pub agent_tokens_file: Option<PathBuf>,
}

impl Sources {
    /// Reads the files and builds a complete set. A name given both directly and in
    /// the file takes the file's entry.
    pub fn load(&self) -> Result<AccountSet, AccountsError> {
        let mut users = self.users.clone();
        if let Some(path) = &self.users_file {
            users = users.with(parse_users(&read(path)?, path)?);
        }
        let mut agent_tokens = self.agent_tokens.clone();
        if let Some(path) = &self.agent_tokens_file {
            agent_tokens = agent_tokens.with(parse_agent_tokens(&read(path)?, path)?);
        }
        Ok(AccountSet {
            users,
            agent_tokens,
        })
    }
}

/// The live account set and where it comes from.
pub struct Accounts {
    /// Where the set comes from; a re-read config file may change it
    /// ([`Accounts::replace_sources`]).
    sources: ArcSwap<Sources>,
    current: ArcSwap<AccountSet>,
    /// The control plane's store, when the gateway has one: it adds its
    /// customers to the set (unless a `--users` file owns the accounts).
    control: Option<Arc<ControlLink>>,
}

impl Accounts {
    /// Loads the set for the first time.
    pub fn load(sources: Sources) -> Result<Accounts, AccountsError> {
        let set = sources.load()?;
        Ok(Accounts {
            sources: ArcSwap::from_pointee(sources),
            current: ArcSwap::from_pointee(set),
            control: None,
        })
    }

    /// The same accounts, with the store's customers (when it owns them)
    /// added, and kept in step with it ([`Accounts::store_changed`]).
    pub fn with_control(mut self, link: Option<Arc<ControlLink>>) -> Accounts {
        self.control = link;
        self.store_changed();
        self
    }

    /// The control-plane link, if the gateway has a store.
    pub fn control(&self) -> Option<&Arc<ControlLink>> {
        self.control.as_ref()
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<AccountSet> {
        self.current.load_full()
    }

    /// `users` with the store's customers when the store owns the accounts
    /// (a name given by `--user` too takes the store's entry).
    fn with_store(&self, users: Users) -> Users {
        match &self.control {
            Some(link) if link.serves_accounts() => {
                users.with(link.users().iter().map(|customer| (**customer).clone()))
            }
            _ => users,
        }
    }

    /// Swaps in the store's latest customers (called by the control link
    /// after it loaded a new snapshot), keeping agent tokens and cached
    /// password verifications.
    pub fn store_changed(&self) {
        // With a `--users` file (or no store) the files own the accounts, and
        // the set loaded from them stays as it is.
        if !self
            .control
            .as_ref()
            .is_some_and(|link| link.serves_accounts())
        {
            return;
        }
        let current = self.current.load_full();
        let users = self
            .with_store(self.sources.load().users.clone())
            .with_cache_of(&current.users);
        self.current.store(Arc::new(AccountSet {
            users,
            agent_tokens: current.agent_tokens.clone(),
        }));
    }

    /// Re-reads the files. On success the new set replaces the old one (keeping
    /// cached password verifications); on error nothing changes.
    pub fn reload(&self) -> Result<Arc<AccountSet>, AccountsError> {
        self.load_from(&self.sources.load())
    }

    /// Takes `sources` (the accounts and tokens given directly, the files'
    /// paths: a re-read config file) and loads the set from them; on error
    /// the old sources and set stay.
    pub fn replace_sources(&self, sources: Sources) -> Result<Arc<AccountSet>, AccountsError> {
        let set = self.load_from(&sources)?;
        self.sources.store(Arc::new(sources));
        Ok(set)
    }

    /// Loads the set from `sources` and puts it in force.
    fn load_from(&self, sources: &Sources) -> Result<Arc<AccountSet>, AccountsError> {
        let mut set = sources.load()?;
        set.users = self
            .with_store(set.users)
            .with_cache_of(&self.current.load().users);
        let set = Arc::new(set);
        self.current.store(set.clone());
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3S9N3fP3Wb8KpXG5k6jv3m9mM2bCd3p4aCVvU3yYy2E";

    fn parse(text: &str) -> Result<Vec<Customer>, AccountsError> {
        parse_users(text, Path::new("users.toml"))
    }

    #[test]
    fn a_full_entry_parses() {
        let text = format!(
            r#"
[[customer]]
name = "alice"
password_hash = "{HASH}"
countries = ["us", "DE"]
max_connections = 100
requests_per_second = 50
quota_bytes = 50_000_000_000

[[customer]]
name = "bob"
password_hash = "{HASH}"
"#
        );
        let customers = parse(&text).unwrap();
        assert_eq!(customers.len(), 2);
        let limits = &customers[0].limits;
        assert_eq!(limits.countries, Some(vec!["US".into(), "DE".into()]));
        assert_eq!(limits.max_connections, Some(100));
        assert_eq!(limits.requests_per_second, NonZeroU32::new(50));
        assert_eq!(limits.quota_bytes, Some(50_000_000_000));
        assert_eq!(customers[1].limits, Limits::default());
    }

    fn error_of(entry: &str) -> String {
        let text = format!("[[customer]]\nname = \"alice\"\n{entry}\n");
        parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn syntax_errors_name_the_line_but_never_echo_a_hash() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        for text in [
            // An unterminated string on the hash's own line.
            format!("[[customer]]\nname = \"bob\"\npassword_hash = \"{hash}\n"),
            // A hash where a number belongs.
            format!(
                "[[customer]]\nname = \"bob\"\npassword_hash = \"x\"\nquota_bytes = \"{hash}\"\n"
            ),
            // A stray key next to it.
            format!("[[customer]]\nname = \"bob\"\npassword_hash = \"{hash}\"\npasword = 1\n"),
        ] {
            let error = parse(&text).unwrap_err().to_string();
            assert!(!error.contains("c29tZXNhbHQ"), "{error}");
            assert!(!error.contains("$argon2id$v"), "{error}");
            assert!(error.contains("line "), "{error}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let hash = format!("password_hash = \"{HASH}\"");
        for (entry, needle) in [
            (format!("{hash}\npasword = \"x\""), "pasword"),
            ("".to_owned(), "password_hash"),
            ("password_hash = \"hunter2\"".to_owned(), "password_hash"),
            (format!("{hash}\ncountries = [\"USA\"]"), "countries"),
            (format!("{hash}\ncountries = []"), "countries"),
            (format!("{hash}\nmax_connections = 0"), "max_connections"),
            (format!("{hash}\nmax_connections = -1"), "max_connections"),
            (
                format!("{hash}\nrequests_per_second = 0"),
                "requests_per_second",
            ),
            (format!("{hash}\nquota_bytes = \"lots\""), "quota_bytes"),
        ] {
            let message = error_of(&entry);
            assert!(message.contains(needle), "{entry:?}: {message}");
            assert!(message.contains("users.toml"), "{message}");
        }
        let message = error_of(&format!("{hash}\ncountries = [\"USA\"]"));
        assert!(message.contains("customer `alice`"), "{message}");
    }

    #[test]
    fn names_are_checked_and_unique() {
        let dash = parse(&format!(
            "[[customer]]\nname = \"a-b\"\npassword_hash = \"{HASH}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(dash.contains("name") && dash.contains('-'), "{dash}");
        let twice = parse(&format!(
            "[[customer]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n[[customer]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            twice.contains("twice") && twice.contains("entry 2"),
            "{twice}"
        );
        let top = parse("[customers]\n").unwrap_err().to_string();
        assert!(top.contains("customers"), "{top}");
    }

    #[test]
    fn token_files_skip_comments() {
        let path = Path::new("tokens");
        let (first, second) = (crate::auth::generate_token(), crate::auth::generate_token());
        let text = format!("# fleet A\n\n  {first}  \n{second} max_agents=3\n");
        assert_eq!(
            parse_agent_tokens(&text, path).unwrap(),
            vec![
                AgentToken::unlimited(first.clone()),
                AgentToken {
                    max_agents: Some(3),
                    ..AgentToken::unlimited(second)
                }
            ]
        );
        for bad in [
            format!("{first} b\n"),
            format!("{first} max_agents=0\n"),
            format!("{first} max_agents=lots\n"),
            "t0ken\n".to_owned(),
        ] {
            let error = parse_agent_tokens(&bad, path).unwrap_err().to_string();
            assert!(error.contains("line 1"), "{error}");
        }
    }

    #[test]
    fn weak_tokens_are_refused_and_generated_ones_pass() {
        use crate::auth::check_token_strength;
        for weak in [
            "",
            "t",
            "test-token",
            "capped",
            "0123456789abcdef0123456789abcde",
        ] {
            let error = check_token_strength(weak).unwrap_err();
            assert!(error.contains("gateway token new"), "{error}");
        }
        // 32 hex digits are 128 bits; 22 characters of base64url hold 132.
        check_token_strength("0123456789abcdef0123456789abcdef").unwrap();
        check_token_strength("Zq3_x9-LmP0aB7cD2eF4gH").unwrap();
        check_token_strength(&crate::auth::generate_token()).unwrap();
    }

    #[test]
    fn a_failed_reload_keeps_the_running_set() {
        let dir = tempfile_dir();
        let users = dir.join("users.toml");
        std::fs::write(
            &users,
            format!("[[customer]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n"),
        )
        .unwrap();
        let accounts = Accounts::load(Sources {
            users_file: Some(users.clone()),
            ..Sources::default()
        })
        .unwrap();
        assert!(accounts.current().users.get("alice").is_some());
        std::fs::write(&users, "[[customer]]\nname = \"bob\"\n").unwrap();
        assert!(accounts.reload().is_err());
        assert!(accounts.current().users.get("alice").is_some());
        std::fs::write(
            &users,
            format!("[[customer]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n"),
        )
        .unwrap();
        accounts.reload().unwrap();
        assert!(accounts.current().users.get("alice").is_none());
        assert!(accounts.current().users.get("bob").is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "exitpool-accounts-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
