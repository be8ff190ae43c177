//! The operators' CLI: `gateway customers|tokens|connections|exits|accounts
//! ...`, a client of a running gateway's `/api/v1` on its admin port (never
//! of its database: what the CLI may do is what the API allows, checked in
//! one place).
//!
//! The address and token come from `--admin-url`/`--admin-token` or
//! `EXITPOOL_ADMIN_URL`/`EXITPOOL_ADMIN_TOKEN`. Answers print as a table for
//! people, or as the API's JSON with `--json` for scripts. A refusal exits
//! non-zero with the API's status, error kind, field and message.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How long one API call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read from the API (a page of 1000 accounts is far less).
const MAX_ANSWER: usize = 16 << 20;

/// Where the API is and how to print.
#[derive(Debug, clap::Args)]
pub(crate) struct Api {
    /// The gateway's admin port.
    #[arg(
        long,
        value_name = "URL",
        env = "EXITPOOL_ADMIN_URL",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    admin_url: String,
    /// The admin token (or the read-only token, for lists).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EXITPOOL_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

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

/// `gateway tokens ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Tokens {
    /// Create an agent enrolment token; prints its secret once.
    New {
        /// What it is for (`volunteers 2026`).
        #[arg(long, default_value = "")]
        label: String,
        /// Most agents connected with it at once.
        #[arg(long, value_name = "N")]
        max_agents: Option<u64>,
    },
    /// List tokens (never their secrets).
    List {
        /// Start after this id.
        #[arg(long)]
        after: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Revoke a token: the agents holding it are disconnected and refused.
    Revoke {
        /// The token's id (from `tokens list`).
        id: String,
    },
}

/// `gateway connections ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Connections {
    /// This gateway's live customer connections, oldest first.
    List {
        /// Only this customer's (and its sub-users'), or one `sub.customer`'s.
        #[arg(long)]
        customer: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Close one connection by id, or every one of --customer.
    Close {
        /// The connection's id (from `connections list`).
        #[arg(required_unless_present = "customer", conflicts_with = "customer")]
        id: Option<u64>,
        /// Close all of this customer's instead.
        #[arg(long)]
        customer: Option<String>,
    },
}

/// `gateway exits ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Exits {
    /// The exits in the pool (or the bans with --banned).
    List {
        /// List the banned exits instead.
        #[arg(long)]
        banned: bool,
    },
    /// Ban a device: disconnected now, refused until unbanned.
    Ban {
        /// The exit's id.
        id: String,
        /// Why, for the operators (never sent to the agent).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a ban.
    Unban {
        /// The exit's id.
        id: String,
    },
}

/// `gateway accounts ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Accounts {
    /// Create every customer of a `--users` file in the gateway's database
    /// (their password hashes as they are); a name taken already is an error
    /// named in the summary, the others are still created.
    Import {
        /// The users file (TOML, as `--users` reads it).
        file: PathBuf,
    },
}

/// One of the operators' subcommands, with where the API is.
#[derive(Debug)]
pub(crate) enum Operation<'a> {
    /// `customers ...`.
    Customers(&'a Customers),
    /// `tokens ...`.
    Tokens(&'a Tokens),
    /// `connections ...`.
    Connections(&'a Connections),
    /// `exits ...`.
    Exits(&'a Exits),
    /// `accounts ...`.
    Accounts(&'a Accounts),
}

/// A client of one gateway's API.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(api: &Api) -> anyhow::Result<Client> {
        let base = api.admin_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--admin-url {base:?}: an http:// or https:// URL, e.g. http://127.0.0.1:9090");
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: format!("{base}/api/v1"),
            token: api.admin_token.clone().filter(|token| !token.is_empty()),
        })
    }

    /// `method path` with `body`: the answer's JSON, or the API's refusal as
    /// an error (status, kind, field, message).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method: reqwest::Method = method.parse().context("method")?;
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == reqwest::Method::POST {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        let answer = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = answer.status();
        let mut bytes = Vec::new();
        let mut answer = answer;
        while let Some(chunk) = answer
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                bail!("{url}: the answer is larger than {MAX_ANSWER} bytes");
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes);
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            bail!("{}", refusal(status.as_u16(), json.as_ref(), &text));
        }
        // `204 No Content` (a delete).
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        json.with_context(|| format!("{url}: the answer is not JSON: {}", text.trim()))
    }
}

/// The words for a refused call: `422 invalid: limits.quota_daily: ...`.
fn refusal(status: u16, json: Option<&Value>, text: &str) -> String {
    let Some(json) = json else {
        return format!("{status}: {}", text.trim());
    };
    let kind = json["error"].as_str().unwrap_or("error");
    let message = json["message"].as_str().unwrap_or("");
    match json["field"].as_str() {
        Some(field) if !message.starts_with(field) => {
            format!("{status} {kind}: {field}: {message}")
        }
        _ => format!("{status} {kind}: {message}"),
    }
}

/// Runs one operators' subcommand against `api`.
pub(crate) async fn run(operation: Operation<'_>, api: &Api) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    match operation {
        Operation::Customers(command) => customers(command, &client, api.json).await,
        Operation::Tokens(command) => tokens(command, &client, api.json).await,
        Operation::Connections(command) => connections(command, &client, api.json).await,
        Operation::Exits(command) => exits(command, &client, api.json).await,
        Operation::Accounts(Accounts::Import { file }) => import(file, &client, api.json).await,
    }
}

/// The API path of an account: `/customers/alice` or
/// `/customers/alice/sub-users/ops` for `ops.alice`.
fn account_path(name: &str) -> anyhow::Result<String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    };
    match name.split_once('.') {
        None if ok(name) => Ok(format!("/customers/{name}")),
        Some((sub, customer)) if ok(sub) && ok(customer) => {
            Ok(format!("/customers/{customer}/sub-users/{sub}"))
        }
        _ => bail!("{name:?}: a customer name (letters, digits, `_`) or sub.customer"),
    }
}

/// A query string from the pairs that are present.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|value| format!("{key}={}", percent(value)))
        })
        .collect();
    if present.is_empty() {
        String::new()
    } else {
        format!("?{}", present.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
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

async fn customers(command: &Customers, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let answer = match command {
        Customers::Add {
            name,
            password_stdin,
            disabled,
            limits,
        } => {
            let (path, own_name) = match name.split_once('.') {
                Some((sub, customer)) => {
                    account_path(name)?;
                    (format!("/customers/{customer}/sub-users"), sub)
                }
                None => {
                    account_path(name)?;
                    ("/customers".to_owned(), name.as_str())
                }
            };
            let mut body = json!({ "name": own_name, "limits": limits.json()? });
            // Without a limit given, `null` limits would be removed ones: leave them out.
            if let Some(map) = body["limits"].as_object_mut() {
                map.retain(|_, value| !value.is_null());
            }
            if *disabled {
                body["enabled"] = json!(false);
            }
            if *password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                body["password"] = json!(line.trim_end_matches(['\r', '\n']));
            }
            let answer = client.call("POST", &path, Some(body)).await?;
            if !as_json {
                print_account(&answer["account"]);
                if let Some(password) = answer["password"].as_str() {
                    println!("password: {password}   (shown once)");
                }
                return Ok(());
            }
            answer
        }
        Customers::List { of, after, limit } => {
            let path = match of {
                Some(customer) => format!("{}/sub-users", account_path(customer)?),
                None => "/customers".to_owned(),
            };
            let page = query(&[
                ("after", after.clone()),
                ("limit", limit.map(|n| n.to_string())),
            ]);
            let answer = client.call("GET", &format!("{path}{page}"), None).await?;
            if !as_json {
                let rows = items(&answer)
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
                if let Some(next) = answer["next"].as_str() {
                    println!("more: --after {next}");
                }
                return Ok(());
            }
            answer
        }
        Customers::Show { name } => {
            let answer = client.call("GET", &account_path(name)?, None).await?;
            if !as_json {
                print_account(&answer);
                return Ok(());
            }
            answer
        }
        Customers::Set { name, limits } => {
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
            if !as_json {
                print_account(&answer);
                return Ok(());
            }
            answer
        }
        Customers::Disable { name } | Customers::Enable { name } => {
            let verb = if matches!(command, Customers::Disable { .. }) {
                "disable"
            } else {
                "enable"
            };
            let answer = client
                .call("POST", &format!("{}/{verb}", account_path(name)?), None)
                .await?;
            if !as_json {
                println!("{name}: {verb}d");
                return Ok(());
            }
            answer
        }
        Customers::Delete { name } => {
            client.call("DELETE", &account_path(name)?, None).await?;
            if !as_json {
                println!("{name}: deleted");
                return Ok(());
            }
            json!({ "deleted": name })
        }
        Customers::Passwd { name } => {
            let answer = client
                .call(
                    "POST",
                    &format!("{}/rotate-password", account_path(name)?),
                    None,
                )
                .await?;
            if !as_json {
                let password = answer["password"].as_str().unwrap_or_default();
                println!("{name}: new password: {password}   (shown once)");
                return Ok(());
            }
            answer
        }
    };
    print_json(&answer)
}

async fn tokens(command: &Tokens, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let answer = match command {
        Tokens::New { label, max_agents } => {
            let mut body = json!({ "label": label });
            if let Some(max) = max_agents {
                body["max_agents"] = json!(max);
            }
            let answer = client.call("POST", "/tokens", Some(body)).await?;
            if !as_json {
                let token = if answer["token"].is_object() {
                    &answer["token"]
                } else {
                    &answer
                };
                println!("id: {}", text(&token["id"]));
                println!(
                    "secret: {}   (shown once; give it to agents with --token or EXITPOOL_AGENT_TOKEN)",
                    text(&answer["secret"])
                );
                return Ok(());
            }
            answer
        }
        Tokens::List { after, limit } => {
            let page = query(&[
                ("after", after.clone()),
                ("limit", limit.map(|n| n.to_string())),
            ]);
            let answer = client.call("GET", &format!("/tokens{page}"), None).await?;
            if !as_json {
                let rows = items(&answer)
                    .iter()
                    .map(|token| {
                        vec![
                            text(&token["id"]),
                            text(&token["label"]),
                            text(&token["max_agents"]),
                            text(&token["created_at"]),
                            text(&token["last_used_at"]),
                            text(&token["revoked_at"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "LABEL",
                        "MAX AGENTS",
                        "CREATED",
                        "LAST USED",
                        "REVOKED",
                    ],
                    rows,
                );
                if let Some(next) = answer["next"].as_str() {
                    println!("more: --after {next}");
                }
                return Ok(());
            }
            answer
        }
        Tokens::Revoke { id } => {
            let path = format!("/tokens/{}/revoke", percent(id));
            let answer = client.call("POST", &path, None).await?;
            if !as_json {
                println!("token {id}: revoked");
                return Ok(());
            }
            answer
        }
    };
    print_json(&answer)
}

async fn connections(command: &Connections, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let answer = match command {
        Connections::List { customer, limit } => {
            let filter = query(&[
                ("customer", customer.clone()),
                ("limit", limit.map(|n| n.to_string())),
            ]);
            let answer = client
                .call("GET", &format!("/connections{filter}"), None)
                .await?;
            if !as_json {
                let rows = items(&answer)
                    .iter()
                    .map(|item| {
                        let user = match item["sub_user"].as_str() {
                            Some(sub) => format!("{sub}.{}", text(&item["customer"])),
                            None => text(&item["customer"]),
                        };
                        vec![
                            text(&item["id"]),
                            user,
                            text(&item["source"]),
                            text(&item["target"]),
                            text(&item["exit"]),
                            text(&item["country"]),
                            text(&item["protocol"]),
                            text(&item["bytes_up"]),
                            text(&item["bytes_down"]),
                            format!("{}s", text(&item["age_secs"])),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "CUSTOMER", "SOURCE", "TARGET", "EXIT", "COUNTRY", "PROTOCOL", "UP",
                        "DOWN", "AGE",
                    ],
                    rows,
                );
                println!(
                    "{} of {} shown ({})",
                    items(&answer).len(),
                    text(&answer["total"]),
                    text(&answer["scope"])
                );
                return Ok(());
            }
            answer
        }
        Connections::Close { id, customer } => {
            let path = match (id, customer) {
                (Some(id), _) => format!("/connections/{id}"),
                (None, Some(customer)) => {
                    format!(
                        "/connections{}",
                        query(&[("customer", Some(customer.clone()))])
                    )
                }
                (None, None) => bail!("give a connection id or --customer NAME"),
            };
            let answer = client.call("DELETE", &path, None).await?;
            if !as_json {
                println!("closed {}", text(&answer["closed"]));
                return Ok(());
            }
            answer
        }
    };
    print_json(&answer)
}

async fn exits(command: &Exits, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let answer = match command {
        Exits::List { banned } => {
            let path = if *banned {
                "/exits?banned=true"
            } else {
                "/exits"
            };
            let answer = client.call("GET", path, None).await?;
            if !as_json {
                if *banned {
                    let rows = answer["banned"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|ban| {
                            vec![
                                text(&ban["id"]),
                                text(&ban["since"]),
                                yes_no(ban["connected"].as_bool()),
                                text(&ban["reason"]),
                            ]
                        })
                        .collect();
                    table(&["ID", "SINCE", "CONNECTED", "REASON"], rows);
                } else {
                    let rows = items(&answer)
                        .iter()
                        .map(|exit| {
                            let health = &exit["health"];
                            let state = if health["cooling"] == true {
                                "cooling"
                            } else if health["suspect"] == true {
                                "suspect"
                            } else if health["slow"] == true {
                                "slow"
                            } else {
                                "ok"
                            };
                            vec![
                                text(&exit["id"]),
                                text(&exit["country"]),
                                text(&exit["region"]),
                                text(&exit["city"]),
                                text(&exit["asn"]),
                                text(&exit["transport"]),
                                state.to_owned(),
                                format!("{}/{}", text(&exit["load"]), text(&exit["max_streams"])),
                                text(&exit["connected_since"]),
                                yes_no(exit["banned"].as_bool()),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "ID",
                            "COUNTRY",
                            "REGION",
                            "CITY",
                            "ASN",
                            "TRANSPORT",
                            "HEALTH",
                            "LOAD",
                            "SINCE",
                            "BANNED",
                        ],
                        rows,
                    );
                }
                return Ok(());
            }
            answer
        }
        Exits::Ban { id, reason } => {
            let path = format!("/exits/{}/ban", percent(id));
            let answer = client
                .call("POST", &path, Some(json!({ "reason": reason })))
                .await?;
            if !as_json {
                let how = if answer["disconnected"] == true {
                    "; disconnected"
                } else {
                    ""
                };
                let held = answer["held_by"]
                    .as_str()
                    .map(|gateway| format!("; still held by gateway {gateway}"))
                    .unwrap_or_default();
                println!("exit {id}: banned{how}{held}");
                return Ok(());
            }
            answer
        }
        Exits::Unban { id } => {
            let path = format!("/exits/{}/unban", percent(id));
            let answer = client.call("POST", &path, None).await?;
            if !as_json {
                let was = if answer["changed"] == true {
                    ""
                } else {
                    " (was not banned)"
                };
                println!("exit {id}: unbanned{was}");
                return Ok(());
            }
            answer
        }
    };
    print_json(&answer)
}

/// `accounts import FILE`: each customer of a users file created through
/// the API with its password hash and limits.
async fn import(file: &std::path::Path, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    // Checked as `--users` checks it; the hashes, which the parsed accounts
    // keep to themselves, read from the same entries.
    let customers = exitpool::gateway::accounts::parse_users(&text, file)?;
    let hashes: std::collections::HashMap<String, String> = toml::from_str::<toml::Table>(&text)?
        .get("customer")
        .and_then(toml::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| {
            Some((
                entry.get("name")?.as_str()?.to_owned(),
                entry.get("password_hash")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    let mut created = Vec::new();
    let mut failed = Vec::new();
    for customer in &customers {
        let limits = &customer.limits;
        let mut body = json!({
            "name": customer.name,
            "password_hash": hashes.get(&customer.name),
            "limits": {
                "countries": limits.countries.iter().flatten().collect::<Vec<_>>(),
                "allow_ips": limits.allow_ips.iter().map(|net| net.to_string()).collect::<Vec<_>>(),
            },
        });
        let numbers = [
            ("max_connections", limits.max_connections.map(u64::from)),
            (
                "requests_per_second",
                limits.requests_per_second.map(|rate| u64::from(rate.get())),
            ),
            ("quota_lifetime", limits.quota_bytes),
        ];
        for (key, value) in numbers {
            if let Some(value) = value {
                body["limits"][key] = json!(value);
            }
        }
        match client.call("POST", "/customers", Some(body)).await {
            Ok(_) => created.push(customer.name.clone()),
            Err(error) => failed.push((customer.name.clone(), error.to_string())),
        }
    }
    if as_json {
        let failed: Vec<Value> = failed
            .iter()
            .map(|(name, error)| json!({ "name": name, "error": error }))
            .collect();
        print_json(&json!({ "created": created, "failed": failed }))?;
    } else {
        println!(
            "{}: {} of {} customers created",
            file.display(),
            created.len(),
            customers.len()
        );
        for (name, error) in &failed {
            println!("  {name}: {error}");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} customer(s) not imported", failed.len())
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn items(answer: &Value) -> &[Value] {
    answer["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A value as a table cell: strings bare, nothing as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn yes_no(value: Option<bool>) -> String {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
    .into()
}

/// `ops.alice` for a sub-user, `alice` for a customer.
fn full_name(account: &Value) -> String {
    match account["customer"].as_str() {
        Some(customer) => format!("{}.{customer}", text(&account["name"])),
        None => text(&account["name"]),
    }
}

/// The limits set, as `key=value` pairs.
fn limits_summary(limits: &Value) -> String {
    let Some(limits) = limits.as_object() else {
        return "-".into();
    };
    let set: Vec<String> = limits
        .iter()
        .filter(|(_, value)| !value.is_null() && value.as_array().is_none_or(|a| !a.is_empty()))
        .map(|(key, value)| match value {
            Value::Array(items) => format!(
                "{key}={}",
                items.iter().map(text).collect::<Vec<_>>().join(",")
            ),
            other => format!("{key}={}", text(other)),
        })
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(" ")
    }
}

fn print_account(account: &Value) {
    println!("name: {}", full_name(account));
    println!("enabled: {}", yes_no(account["enabled"].as_bool()));
    println!("limits: {}", limits_summary(&account["limits"]));
    println!("created: {}", text(&account["created_at"]));
    println!("updated: {}", text(&account["updated_at"]));
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|title| (*title).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_paths_and_queries() {
        assert_eq!(account_path("alice").unwrap(), "/customers/alice");
        assert_eq!(
            account_path("ops.alice").unwrap(),
            "/customers/alice/sub-users/ops"
        );
        assert!(account_path("a/b").is_err() && account_path("a.").is_err());
        assert_eq!(
            query(&[("customer", Some("a b".into())), ("limit", None)]),
            "?customer=a%20b"
        );
        assert_eq!(query(&[("limit", None)]), "");
    }

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

    #[test]
    fn refusals_name_status_kind_field_and_rule() {
        let body = json!({"error":"invalid","field":"limits.quota_daily","message":"above the customer's"});
        assert_eq!(
            refusal(422, Some(&body), ""),
            "422 invalid: limits.quota_daily: above the customer's"
        );
        assert_eq!(refusal(502, None, "bad gateway\n"), "502: bad gateway");
    }
}
