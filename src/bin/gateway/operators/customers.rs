//! `gateway customers add|list|show|set|disable|enable|delete|passwd`:
//! customers and sub-users through the API, with their limits as flags.

use super::client::{account_path, page, Client};
use super::print::{self, full_name, items, limits_summary, print_account, table, yes_no};
use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// An account's limits as flags (`add` sets them; `set` changes only those
/// given, and `none` removes one).
#[derive(Debug, Default, clap::Args)]
pub(crate) struct LimitFlags {
    /// Countries it may use, comma-separated ISO codes (`US,DE`); `none`
    /// for any.
    #[arg(long, value_name = "CODES")]
    countries: Option<String>,
    /// Most connections at once; `none` for no cap.
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Most new connections a second; `none` for no cap.
    #[arg(long, value_name = "N")]
    requests_per_second: Option<String>,
    /// Bytes a UTC day (`10GB`, `500MB`, a number); `none` for no quota.
    #[arg(long, value_name = "SIZE")]
    quota_daily: Option<String>,
    /// Bytes a UTC calendar month; `none` for no quota.
    #[arg(long, value_name = "SIZE")]
    quota_monthly: Option<String>,
    /// Bytes over the account's life; `none` for no quota.
    #[arg(long, value_name = "SIZE")]
    quota_lifetime: Option<String>,
    /// Sources that need no password, comma-separated addresses or networks;
    /// `none` for none.
    #[arg(long, value_name = "NETS")]
    allow_ips: Option<String>,
    /// Target domains refused, comma-separated; `none` for none.
    #[arg(long, value_name = "DOMAINS")]
    blocked_domains: Option<String>,
}

/// `gateway customers ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Customers {
    /// Create a customer, or a sub-user as `sub.customer`; prints the
    /// generated password once (unless --password-stdin gives one).
    Add {
        /// `alice`, or `ops.alice` for sub-user ops of alice.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// List customers (or one customer's sub-users with --of).
    List {
        /// List this customer's sub-users instead.
        #[arg(long, value_name = "CUSTOMER")]
        of: Option<String>,
        /// Start after this name (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one customer or sub-user.
    Show {
        /// `alice` or `ops.alice`.
        name: String,
    },
    /// Change limits: only those given; `none` removes one.
    Set {
        /// `alice` or `ops.alice`.
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Refuse its connections until enabled again.
    Disable {
        /// `alice` or `ops.alice`.
        name: String,
    },
    /// Let a disabled account connect again.
    Enable {
        /// `alice` or `ops.alice`.
        name: String,
    },
    /// Delete it (a customer with its sub-users and history).
    Delete {
        /// `alice` or `ops.alice`.
        name: String,
    },
    /// Give it a new generated password, printed once.
    Passwd {
        /// `alice` or `ops.alice`.
        name: String,
    },
}

/// Runs one `customers` command.
pub(super) async fn run(command: &Customers, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match command {
        Customers::Add {
            name,
            password_stdin,
            disabled,
            limits,
        } => add(name, *password_stdin, *disabled, limits, client, as_json).await,
        Customers::List { of, after, limit } => {
            let path = match of {
                Some(customer) => format!("{}/sub-users", account_path(customer)?),
                None => "/customers".to_owned(),
            };
            let answer = client
                .call("GET", &format!("{path}{}", page(after, *limit)), None)
                .await?;
            print::answer(&answer, as_json, print_list)
        }
        Customers::Show { name } => {
            let answer = client.call("GET", &account_path(name)?, None).await?;
            print::answer(&answer, as_json, print_account)
        }
        Customers::Set { name, limits } => set(name, limits, client, as_json).await,
        Customers::Disable { name } => switch(name, "disable", client, as_json).await,
        Customers::Enable { name } => switch(name, "enable", client, as_json).await,
        Customers::Delete { name } => {
            client.call("DELETE", &account_path(name)?, None).await?;
            print::answer(&json!({ "deleted": name }), as_json, |_| {
                println!("{name}: deleted")
            })
        }
        Customers::Passwd { name } => {
            let path = format!("{}/rotate-password", account_path(name)?);
            let answer = client.call("POST", &path, None).await?;
            print::answer(&answer, as_json, |answer| {
                let password = answer["password"].as_str().unwrap_or_default();
                println!("{name}: new password: {password}   (shown once)");
            })
        }
    }
}

/// `customers add`: creates the customer (or `sub.customer`) with the limits
/// given, and prints the password once.
async fn add(
    name: &str,
    password_stdin: bool,
    disabled: bool,
    limits: &LimitFlags,
    client: &Client,
    as_json: bool,
) -> anyhow::Result<()> {
    account_path(name)?;
    let (path, own_name) = match name.split_once('.') {
        Some((sub, customer)) => (format!("/customers/{customer}/sub-users"), sub),
        None => ("/customers".to_owned(), name),
    };
    let mut body = json!({ "name": own_name, "limits": limits.json()? });
    // Without a limit given, `null` limits would be removed ones: leave them out.
    if let Some(map) = body["limits"].as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    if disabled {
        body["enabled"] = json!(false);
    }
    if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        body["password"] = json!(line.trim_end_matches(['\r', '\n']));
    }
    let answer = client.call("POST", &path, Some(body)).await?;
    print::answer(&answer, as_json, |answer| {
        print_account(&answer["account"]);
        if let Some(password) = answer["password"].as_str() {
            println!("password: {password}   (shown once)");
        }
    })
}

/// `customers set`: changes only the limits given.
async fn set(
    name: &str,
    limits: &LimitFlags,
    client: &Client,
    as_json: bool,
) -> anyhow::Result<()> {
    let limits = limits.json()?;
    if limits.is_empty() {
        bail!("nothing to change: give at least one limit flag (see gateway customers set --help)");
    }
    let answer = client
        .call(
            "PATCH",
            &account_path(name)?,
            Some(json!({ "limits": limits })),
        )
        .await?;
    print::answer(&answer, as_json, print_account)
}

/// `customers disable` or `enable` (`verb`).
async fn switch(name: &str, verb: &str, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let answer = client
        .call("POST", &format!("{}/{verb}", account_path(name)?), None)
        .await?;
    print::answer(&answer, as_json, |_| println!("{name}: {verb}d"))
}

/// A page of accounts as a table.
fn print_list(answer: &Value) {
    let rows = items(answer)
        .iter()
        .map(|account| {
            vec![
                full_name(account),
                yes_no(account["enabled"].as_bool()),
                limits_summary(&account["limits"]),
            ]
        })
        .collect();
    table(&["NAME", "ENABLED", "LIMITS"], rows);
    print::more(answer);
}

/// A list flag: `none` is empty.
fn list(text: &str) -> Vec<String> {
    if text.trim() == "none" {
        return Vec::new();
    }
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A number flag: `none` is null.
fn number(flag: &str, text: &str, size: bool) -> anyhow::Result<Value> {
    if text.trim() == "none" {
        return Ok(Value::Null);
    }
    let value = if size {
        exitpool_config::parse_size(text).map_err(anyhow::Error::msg)
    } else {
        text.trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("{text:?} is not a whole number"))
    };
    value.map(Value::from).with_context(|| format!("--{flag}"))
}

impl LimitFlags {
    /// The `limits` object with the flags given (and `none` as null).
    fn json(&self) -> anyhow::Result<Map<String, Value>> {
        let mut limits = Map::new();
        let lists = [
            ("countries", &self.countries),
            ("allow_ips", &self.allow_ips),
            ("blocked_domains", &self.blocked_domains),
        ];
        for (key, value) in lists {
            if let Some(value) = value {
                limits.insert(key.into(), json!(list(value)));
            }
        }
        let numbers = [
            ("max_connections", &self.max_connections, false),
            ("requests_per_second", &self.requests_per_second, false),
            ("quota_daily", &self.quota_daily, true),
            ("quota_monthly", &self.quota_monthly, true),
            ("quota_lifetime", &self.quota_lifetime, true),
        ];
        for (key, value, size) in numbers {
            if let Some(value) = value {
                limits.insert(key.into(), number(&key.replace('_', "-"), value, size)?);
            }
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_become_the_api_body() {
        let flags = LimitFlags {
            countries: Some("US, DE".into()),
            quota_daily: Some("1GB".into()),
            quota_monthly: Some("none".into()),
            ..Default::default()
        };
        let body = flags.json().unwrap();
        assert_eq!(body["countries"], json!(["US", "DE"]));
        assert_eq!(body["quota_daily"], json!(1_000_000_000u64));
        assert_eq!(body["quota_monthly"], Value::Null);
        assert!(!body.contains_key("max_connections"));
        let bad = LimitFlags {
            max_connections: Some("lots".into()),
            ..Default::default()
        };
        let error = format!("{:#}", bad.json().unwrap_err());
        assert!(error.contains("--max-connections"), "{error}");
    }
}
