//! The control plane's model: customers, their sub-users and limits, agent
//! tokens, and the rules each field obeys. Everything the API takes in passes
//! through [`Limits::checked`] or a name check here before the store sees it.
//!
//! Names: a customer's name is `[A-Za-z0-9_]{1,64}` (the gateway's credential
//! grammar starts targeting parameters at the first `-`, so no `-`; and no `.`,
//! which joins a sub-user to its customer). A sub-user's full name is
//! `sub.customer`: `.` is a name character in the gateway's grammar
//! (gateway/src/auth.rs `check_name`), so `alice_ops.alice-country-de` parses as
//! user `alice_ops.alice` with a country, and a customer can never be named like
//! a sub-user.

use crate::error::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest customer or sub-user (local) name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest password accepted from a client.
pub const MAX_PASSWORD_LEN: usize = 128;
/// Most countries, networks or blocked domains on one account.
pub const MAX_LIST_LEN: usize = 1000;
/// Largest quota or limit the store holds (SQL `BIGINT`).
pub const MAX_AMOUNT: u64 = i64::MAX as u64;

/// Checks a customer's or a sub-user's own name (without the `.customer`).
pub fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!("a name is 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        let why = match c {
            '-' => " (`-` starts targeting parameters in a proxy user name)",
            '.' => " (`.` joins a sub-user to its customer)",
            _ => "",
        };
        return Err(Error::invalid(
            field,
            format!("{c:?} is not allowed: a name holds A-Z, a-z, 0-9 and _{why}"),
        ));
    }
    Ok(())
}

/// A sub-user's full name, the user name its clients send: `sub.customer`.
pub fn sub_user_name(sub: &str, customer: &str) -> String {
    format!("{sub}.{customer}")
}

/// Checks a password hash given instead of a password: an Argon2id PHC
/// string (`$argon2id$v=19$m=...`), as `gateway hash-password` prints.
pub fn check_password_hash(hash: &str) -> Result<()> {
    let parsed = argon2::PasswordHash::new(hash).map_err(|_| {
        Error::invalid(
            "password_hash",
            "not a PHC string (`$argon2id$v=19$m=...`, as `gateway hash-password` prints)",
        )
    })?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(Error::invalid(
            "password_hash",
            format!("an Argon2id hash is needed, not {}", parsed.algorithm),
        ));
    }
    Ok(())
}

/// Checks a password a client chose: the gateway's rules (no `-`, `:`,
/// white space or control characters; not empty) and a length bound.
pub fn check_password(password: &str) -> Result<()> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(Error::invalid(
            "password",
            format!("a password is 1 to {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    if password.contains('-') {
        return Err(Error::invalid(
            "password",
            "`-` is not allowed: it starts targeting parameters",
        ));
    }
    if password
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            "password",
            "`:`, white space and control characters are not allowed",
        ));
    }
    Ok(())
}

/// What an account may do. `None` is "no limit of its own" (a sub-user then
/// has its customer's, since its traffic counts toward the customer's too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Exit countries it may use, ISO 3166-1 alpha-2 (upper case); empty for any.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Concurrent connections.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// New requests per second.
    #[serde(default)]
    pub requests_per_second: Option<u64>,
    /// Bytes (up plus down) per UTC calendar day.
    #[serde(default)]
    pub quota_daily: Option<u64>,
    /// Bytes per UTC calendar month.
    #[serde(default)]
    pub quota_monthly: Option<u64>,
    /// Bytes over the account's life.
    #[serde(default)]
    pub quota_lifetime: Option<u64>,
    /// Source networks it may connect from (`203.0.113.0/24`, `2001:db8::1`); empty for any.
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Target domains it may not reach (a domain and its subdomains).
    #[serde(default)]
    pub blocked_domains: Vec<String>,
}

/// The numeric limits by field name, for the rules that compare them.
type Amounts<'a> = [(&'static str, &'a Option<u64>); 5];

impl Limits {
    fn amounts(&self) -> Amounts<'_> {
        [
            ("limits.max_connections", &self.max_connections),
            ("limits.requests_per_second", &self.requests_per_second),
            ("limits.quota_daily", &self.quota_daily),
            ("limits.quota_monthly", &self.quota_monthly),
            ("limits.quota_lifetime", &self.quota_lifetime),
        ]
    }

    /// Checks every field and returns the limits in canonical form (countries
    /// upper case, networks truncated to their prefix, domains lower case).
    pub fn checked(mut self) -> Result<Limits> {
        for (field, list) in [
            ("limits.countries", self.countries.len()),
            ("limits.allow_ips", self.allow_ips.len()),
            ("limits.blocked_domains", self.blocked_domains.len()),
        ] {
            if list > MAX_LIST_LEN {
                return Err(Error::invalid(
                    field,
                    format!("at most {MAX_LIST_LEN} entries"),
                ));
            }
        }
        for (field, amount) in self.amounts() {
            match amount {
                Some(0) => {
                    return Err(Error::invalid(
                        field,
                        "must be at least 1 (omit it for no limit; disable the account to stop it)",
                    ))
                }
                Some(n) if *n > MAX_AMOUNT => {
                    return Err(Error::invalid(field, format!("at most {MAX_AMOUNT}")))
                }
                _ => {}
            }
        }
        for (i, country) in self.countries.iter_mut().enumerate() {
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(Error::invalid(
                    format!("limits.countries[{i}]"),
                    format!("{country:?} is not a two-letter country code"),
                ));
            }
            country.make_ascii_uppercase();
        }
        dedup(&mut self.countries);
        for (i, net) in self.allow_ips.iter_mut().enumerate() {
            let parsed = parse_network(net).ok_or_else(|| {
                Error::invalid(
                    format!("limits.allow_ips[{i}]"),
                    format!(
                        "{net:?} is not an IP address or network (203.0.113.0/24, 2001:db8::/32)"
                    ),
                )
            })?;
            *net = parsed.to_string();
        }
        dedup(&mut self.allow_ips);
        for (i, domain) in self.blocked_domains.iter_mut().enumerate() {
            domain.make_ascii_lowercase();
            if !is_domain(domain) {
                return Err(Error::invalid(
                    format!("limits.blocked_domains[{i}]"),
                    format!("{domain:?} is not a domain name"),
                ));
            }
        }
        dedup(&mut self.blocked_domains);
        Ok(self)
    }

    /// Checks a sub-user's limits against its customer's: each at most the
    /// customer's, its countries among the customer's.
    pub fn within(&self, parent: &Limits) -> Result<()> {
        for ((field, own), (_, theirs)) in self.amounts().into_iter().zip(parent.amounts()) {
            if let (Some(own), Some(theirs)) = (own, theirs) {
                if own > theirs {
                    return Err(Error::invalid(
                        field,
                        format!("{own} is above the customer's {theirs}"),
                    ));
                }
            }
        }
        if !parent.countries.is_empty() {
            if self.countries.is_empty() {
                return Err(Error::invalid(
                    "limits.countries",
                    format!(
                        "the customer is limited to {}: name countries among them",
                        parent.countries.join(",")
                    ),
                ));
            }
            if let Some(c) = self
                .countries
                .iter()
                .find(|c| !parent.countries.contains(c))
            {
                return Err(Error::invalid(
                    "limits.countries",
                    format!("{c} is not among the customer's countries"),
                ));
            }
        }
        // A sub-user's networks lie within its customer's (the gateway also
        // holds a sub-user to both lists, should the customer's change later).
        let theirs = parent.networks();
        if !theirs.is_empty() {
            let outside = self
                .networks()
                .into_iter()
                .enumerate()
                .find(|(_, own)| !theirs.iter().any(|net| net.contains(own)));
            if let Some((i, own)) = outside {
                return Err(Error::invalid(
                    format!("limits.allow_ips[{i}]"),
                    format!(
                        "{own} is outside the customer's allow_ips ({})",
                        parent.allow_ips.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `allow_ips` parsed (they were checked on the way in).
    pub fn networks(&self) -> Vec<IpNet> {
        self.allow_ips
            .iter()
            .filter_map(|n| parse_network(n))
            .collect()
    }
}

/// An address or a network, truncated to its prefix (`10.1.2.3/8` is `10.0.0.0/8`).
fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .ok()
}

/// A host name: dot-separated labels of `[a-z0-9-]`, none empty or starting
/// or ending with `-`, 253 bytes at most.
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn dedup(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|item| seen.insert(item.clone()));
}

/// A customer or sub-user as the API shows it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// The user name clients send: `alice`, or `ops.alice` for a sub-user.
    pub name: String,
    /// The customer a sub-user belongs to; absent for a customer.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub customer: Option<String>,
    /// Whether it may connect.
    pub enabled: bool,
    /// What it may do.
    pub limits: Limits,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When it last changed (RFC 3339, UTC).
    pub updated_at: String,
}

/// A new customer or sub-user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// Its own name (for a sub-user, without `.customer`).
    pub name: String,
    /// A password of the client's choosing; when absent one is generated and
    /// answered once.
    #[serde(default)]
    pub password: Option<String>,
    /// An Argon2id hash (PHC string) to keep as it is instead of a password:
    /// how `gateway accounts import` moves a `--users` file's accounts, whose
    /// passwords it never knew. Not with `password`.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Whether it may connect (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// What it may do (default: no limits).
    #[serde(default)]
    pub limits: Limits,
}

/// A change to an account: only the fields present change. A nullable
/// limit set to `null` is removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    /// Enable or disable it.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The limits to change.
    #[serde(default)]
    pub limits: LimitsPatch,
}

/// A change to [`Limits`]: absent keeps, `null` removes, a value sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// New countries (replaces the list).
    #[serde(default)]
    pub countries: Option<Vec<String>>,
    /// New connection limit, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub max_connections: Option<Option<u64>>,
    /// New rate, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub requests_per_second: Option<Option<u64>>,
    /// New daily quota, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub quota_daily: Option<Option<u64>>,
    /// New monthly quota, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub quota_monthly: Option<Option<u64>>,
    /// New lifetime quota, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub quota_lifetime: Option<Option<u64>>,
    /// New source networks (replaces the list).
    #[serde(default)]
    pub allow_ips: Option<Vec<String>>,
    /// New blocked domains (replaces the list).
    #[serde(default)]
    pub blocked_domains: Option<Vec<String>>,
}

/// A key that is present (even as `null`) is `Some`; with `default`, an absent one is `None`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl LimitsPatch {
    /// The limits after this change.
    pub fn apply(&self, mut limits: Limits) -> Limits {
        if let Some(v) = &self.countries {
            limits.countries = v.clone();
        }
        for (field, value) in [
            (&mut limits.max_connections, self.max_connections),
            (&mut limits.requests_per_second, self.requests_per_second),
            (&mut limits.quota_daily, self.quota_daily),
            (&mut limits.quota_monthly, self.quota_monthly),
            (&mut limits.quota_lifetime, self.quota_lifetime),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
        if let Some(v) = &self.allow_ips {
            limits.allow_ips = v.clone();
        }
        if let Some(v) = &self.blocked_domains {
            limits.blocked_domains = v.clone();
        }
        limits
    }
}

/// An account created, with the password generated for it (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// The account.
    pub account: Account,
    /// The generated password; absent when the client chose one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub password: Option<String>,
}

/// A new password, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewPassword {
    /// The account's user name.
    pub name: String,
    /// Its new password (only its Argon2id hash is stored).
    pub password: String,
}

/// One page of a list, and where the next begins.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items, in name (or id) order.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next: Option<String>,
}

/// An agent enrolment token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentToken {
    /// Its id (16 hex digits).
    pub id: String,
    /// What the operator called it.
    pub label: String,
    /// How many agents may hold it at once; absent for no limit.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_agents: Option<u64>,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When an agent last presented it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_used_at: Option<String>,
    /// When it was revoked; a revoked token is refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub revoked_at: Option<String>,
}

/// A token to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What to call it (1 to 200 characters).
    pub label: String,
    /// How many agents may hold it at once.
    #[serde(default)]
    pub max_agents: Option<u64>,
}

/// A token created, with its secret (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token.
    pub token: AgentToken,
    /// The secret agents present: 64 hex digits, 256 bits.
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_credential_grammar() {
        assert!(check_name("name", "alice_2").is_ok());
        for bad in ["", "a-b", "a.b", "a b", "ü", &"x".repeat(65)] {
            let err = check_name("name", bad).unwrap_err();
            assert_eq!(err.field(), Some("name"), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_checked_and_canonical() {
        let limits = Limits {
            countries: vec!["de".into(), "DE".into()],
            allow_ips: vec!["10.1.2.3/8".into(), "2001:db8::1".into()],
            blocked_domains: vec!["Example.COM".into()],
            ..Limits::default()
        }
        .checked()
        .unwrap();
        assert_eq!(limits.countries, ["DE"]);
        assert_eq!(limits.allow_ips, ["10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(limits.blocked_domains, ["example.com"]);
        let err = Limits {
            allow_ips: vec!["10.0.0.0/8".into(), "nope".into()],
            ..Limits::default()
        }
        .checked()
        .unwrap_err();
        assert_eq!(err.field(), Some("limits.allow_ips[1]"));
        let err = Limits {
            quota_daily: Some(0),
            ..Limits::default()
        }
        .checked()
        .unwrap_err();
        assert_eq!(err.field(), Some("limits.quota_daily"));
    }

    #[test]
    fn a_sub_users_networks_lie_within_its_customers() {
        let nets = |list: &[&str]| Limits {
            allow_ips: list.iter().map(|n| n.to_string()).collect(),
            ..Limits::default()
        };
        let parent = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(nets(&["10.1.0.0/16", "2001:db8::1/128"])
            .within(&parent)
            .is_ok());
        assert!(nets(&[]).within(&parent).is_ok());
        let err = nets(&["10.1.0.0/16", "192.0.2.0/24"])
            .within(&parent)
            .unwrap_err();
        assert_eq!(err.field(), Some("limits.allow_ips[1]"));
        assert!(nets(&["192.0.2.0/24"]).within(&nets(&[])).is_ok());
    }

    #[test]
    fn a_patch_tells_absent_from_null() {
        let patch: AccountPatch =
            serde_json::from_str(r#"{"limits":{"quota_daily":null,"max_connections":5}}"#).unwrap();
        let before = Limits {
            quota_daily: Some(10),
            quota_monthly: Some(20),
            ..Limits::default()
        };
        let after = patch.limits.apply(before);
        assert_eq!(after.quota_daily, None);
        assert_eq!(after.quota_monthly, Some(20));
        assert_eq!(after.max_connections, Some(5));
    }
}
