//! `gateway tokens new|list|revoke`: agent enrolment tokens through the API.

use super::client::{page, percent, Client};
use super::print::{self, items, table, text};
use serde_json::{json, Value};

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

/// Runs one `tokens` command.
pub(super) async fn run(command: &Tokens, client: &Client, as_json: bool) -> anyhow::Result<()> {
    match command {
        Tokens::New { label, max_agents } => {
            let mut body = json!({ "label": label });
            if let Some(max) = max_agents {
                body["max_agents"] = json!(max);
            }
            let answer = client.call("POST", "/tokens", Some(body)).await?;
            print::answer(&answer, as_json, print_new)
        }
        Tokens::List { after, limit } => {
            let path = format!("/tokens{}", page(after, *limit));
            let answer = client.call("GET", &path, None).await?;
            print::answer(&answer, as_json, print_list)
        }
        Tokens::Revoke { id } => {
            let path = format!("/tokens/{}/revoke", percent(id));
            let answer = client.call("POST", &path, None).await?;
            print::answer(&answer, as_json, |_| println!("token {id}: revoked"))
        }
    }
}

/// A new token's id and its secret, shown once.
fn print_new(answer: &Value) {
    let token = if answer["token"].is_object() {
        &answer["token"]
    } else {
        answer
    };
    println!("id: {}", text(&token["id"]));
    println!(
        "secret: {}   (shown once; give it to agents with --token or EXITPOOL_AGENT_TOKEN)",
        text(&answer["secret"])
    );
}

/// A page of tokens as a table.
fn print_list(answer: &Value) {
    let rows = items(answer)
        .iter()
        .map(|token| {
            [
                "id",
                "label",
                "max_agents",
                "created_at",
                "last_used_at",
                "revoked_at",
            ]
            .iter()
            .map(|key| text(&token[*key]))
            .collect()
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
    print::more(answer);
}
