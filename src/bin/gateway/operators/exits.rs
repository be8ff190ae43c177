//! `gateway exits list|ban|unban`: the pool's exits and the bans on devices
//! through the API.

use super::client::{percent, Client};
use super::print::{self, items, table, text, yes_no};
use serde_json::{json, Value};

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

/// Runs one `exits` command.
pub(super) async fn run(command: &Exits, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match command {
        Exits::List { banned: true } => {
            let answer = client.call("GET", "/exits?banned=true", None).await?;
            print::answer(&answer, as_json, print_bans)
        }
        Exits::List { banned: false } => {
            let answer = client.call("GET", "/exits", None).await?;
            print::answer(&answer, as_json, print_exits)
        }
        Exits::Ban { id, reason } => {
            let path = format!("/exits/{}/ban", percent(id));
            let answer = client
                .call("POST", &path, Some(json!({ "reason": reason })))
                .await?;
            print::answer(&answer, as_json, |answer| print_banned(id, answer))
        }
        Exits::Unban { id } => {
            let path = format!("/exits/{}/unban", percent(id));
            let answer = client.call("POST", &path, None).await?;
            print::answer(&answer, as_json, |answer| {
                let was = if answer["changed"] == true {
                    ""
                } else {
                    " (was not banned)"
                };
                println!("exit {id}: unbanned{was}");
            })
        }
    }
}

/// The bans as a table.
fn print_bans(answer: &Value) {
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
}

/// The exits in the pool as a table.
fn print_exits(answer: &Value) {
    let rows = items(answer)
        .iter()
        .map(|exit| {
            vec![
                text(&exit["id"]),
                text(&exit["country"]),
                text(&exit["region"]),
                text(&exit["city"]),
                text(&exit["asn"]),
                text(&exit["transport"]),
                health(&exit["health"]).to_owned(),
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

/// An exit's health in one word, the worst of its flags.
fn health(health: &Value) -> &'static str {
    if health["cooling"] == true {
        "cooling"
    } else if health["suspect"] == true {
        "suspect"
    } else if health["slow"] == true {
        "slow"
    } else {
        "ok"
    }
}

/// What a ban did: disconnected here, or still held by another gateway.
fn print_banned(id: &str, answer: &Value) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_worst_flag() {
        assert_eq!(health(&json!({"cooling": true, "slow": true})), "cooling");
        assert_eq!(health(&json!({"suspect": true, "slow": true})), "suspect");
        assert_eq!(health(&json!({"slow": true})), "slow");
        assert_eq!(health(&json!({})), "ok");
    }
}
