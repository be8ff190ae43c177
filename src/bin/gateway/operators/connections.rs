//! `gateway connections list|close`: this gateway's live customer
//! connections through the API.

use super::client::{query, Client};
use super::print::{self, items, table, text};
use anyhow::bail;
use serde_json::Value;

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

/// Runs one `connections` command.
pub(super) async fn run(
    command: &Connections,
    client: &Client,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        Connections::List { customer, limit } => {
            let filter = query(&[
                ("customer", customer.clone()),
                ("limit", limit.map(|n| n.to_string())),
            ]);
            let answer = client
                .call("GET", &format!("/connections{filter}"), None)
                .await?;
            print::answer(&answer, as_json, print_list)
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
            print::answer(&answer, as_json, |answer| {
                println!("closed {}", text(&answer["closed"]))
            })
        }
    }
}

/// The live connections as a table, with how many of how many are shown.
fn print_list(answer: &Value) {
    let rows = items(answer)
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
            "ID", "CUSTOMER", "SOURCE", "TARGET", "EXIT", "COUNTRY", "PROTOCOL", "UP", "DOWN",
            "AGE",
        ],
        rows,
    );
    println!(
        "{} of {} shown ({})",
        items(answer).len(),
        text(&answer["total"]),
        text(&answer["scope"])
    );
}
