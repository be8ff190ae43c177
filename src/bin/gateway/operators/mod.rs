//! The operators' CLI: `gateway customers|tokens|connections|exits|accounts
//! ...`, a client of a running gateway's `/api/v1` on its admin port (never
//! of its database: what the CLI may do is what the API allows, checked in
//! one place).
//!
//! The address and token come from `--admin-url`/`--admin-token` or
//! `EXITPOOL_ADMIN_URL`/`EXITPOOL_ADMIN_TOKEN`. Answers print as a table for
//! people, or as the API's JSON with `--json` for scripts. A refusal exits
//! non-zero with the API's status, error kind, field and message.
//!
//! One file per command group ([`customers`], [`tokens`], [`connections`],
//! [`exits`], [`accounts`]), over the API [`client`] and the [`print`]ing
//! helpers they share.

mod accounts;
mod client;
mod connections;
mod customers;
mod exits;
mod print;
mod tokens;

pub(crate) use accounts::Accounts;
pub(crate) use connections::Connections;
pub(crate) use customers::Customers;
pub(crate) use exits::Exits;
pub(crate) use tokens::Tokens;

use client::Client;

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

/// Runs one operators' subcommand against `api`.
pub(crate) async fn run(operation: Operation<'_>, api: &Api) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    match operation {
        Operation::Customers(command) => customers::run(command, &client, api.json).await,
        Operation::Tokens(command) => tokens::run(command, &client, api.json).await,
        Operation::Connections(command) => connections::run(command, &client, api.json).await,
        Operation::Exits(command) => exits::run(command, &client, api.json).await,
        Operation::Accounts(command) => accounts::run(command, &client, api.json).await,
    }
}
