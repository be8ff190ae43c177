//! `gateway accounts import FILE`: each customer of a `--users` file created
//! through the API, with its password hash and limits.

use super::client::Client;
use super::print::print_json;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// Runs one `accounts` command.
pub(super) async fn run(command: &Accounts, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match command {
        Accounts::Import { file } => import(file, client, as_json).await,
    }
}

/// Creates each customer of the users file `file`; prints what was created
/// and what was refused, and fails if anything was.
async fn import(file: &Path, client: &Client, as_json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    // Checked as `--users` checks it; the hashes, which the parsed accounts
    // keep to themselves, read from the same entries.
    let customers = exitpool::gateway::accounts::parse_users(&text, file)?;
    let hashes = password_hashes(&text)?;
    let mut created = Vec::new();
    let mut failed = Vec::new();
    for customer in &customers {
        let body = new_customer(customer, hashes.get(&customer.name));
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

/// Each `[[customer]]`'s `password_hash` by name.
fn password_hashes(text: &str) -> anyhow::Result<HashMap<String, String>> {
    Ok(toml::from_str::<toml::Table>(text)?
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
        .collect())
}

/// The API body that creates `customer` with `hash` and its limits.
fn new_customer(customer: &exitpool::gateway::auth::Customer, hash: Option<&String>) -> Value {
    let limits = &customer.limits;
    let mut body = json!({
        "name": customer.name,
        "password_hash": hash,
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
    body
}
