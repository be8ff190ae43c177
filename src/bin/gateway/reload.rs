//! SIGHUP with `--config`: the file read again (config_file.rs reads it),
//! what changed applied to the running gateway where it can be, and every
//! other changed key named, by key, as waiting for a restart.

use crate::config_file::{changes, clap_rule, first_line, hide_secrets, load, merged_argv};
use crate::config_file::{FileArgs, FileSource};
use crate::flags::Args;
use clap::{Command, Parser};
use exitpool::gateway::config::GatewayConfig;
use exitpool::gateway::webhooks::WebhookConfig;
use exitpool::gateway::Gateway;
use std::ffi::OsString;
use std::path::PathBuf;

/// The keys SIGHUP applies to the running gateway (beside the files the
/// gateway re-reads itself: accounts, agent tokens, certificates, entry
/// ports): each is read per connection or per request
/// ([`exitpool::gateway::config::LiveSettings`], the accounts' sources, the
/// webhook's destination), so a change is in force for the next one. Every
/// other changed key is logged, by name, as needing a restart.
pub(crate) const LIVE_KEYS: [&str; 14] = [
    "logging.log_filter",
    "customers.user",
    "customers.users",
    "tunnel.agent_token",
    "tunnel.agent_tokens",
    "limits.idle_timeout",
    "limits.socks_udp_max_flows",
    "routing.open_timeout",
    "routing.open_attempts",
    "routing.connect_deadline",
    "admin.admin_host",
    "database.webhook_url",
    "database.webhook_secret",
    "database.webhook_ca",
];

/// The keys that name accounts and agent tokens.
const ACCOUNT_KEYS: [&str; 4] = [
    "customers.user",
    "customers.users",
    "tunnel.agent_token",
    "tunnel.agent_tokens",
];

/// The keys of the threshold notices' destination.
const WEBHOOK_KEYS: [&str; 3] = [
    "database.webhook_url",
    "database.webhook_secret",
    "database.webhook_ca",
];

/// One changed key: (key, old value as shown, new value as shown).
type Change<'a> = (&'a str, &'a str, &'a str);

/// The config file of a running gateway, re-read on SIGHUP.
pub(crate) struct Reloader {
    source: FileSource,
    /// The demo's user password and agent token, when the gateway is the demo.
    demo: Option<(String, String)>,
}

/// Why a live key's change waits for a restart after all, or `None` when it
/// can be applied: the users file may change its path but not appear or go
/// (that moves the accounts between the file and the store), and a webhook's
/// destination may change but not appear or go (its queue is made at start).
fn held_back(key: &str, running: &GatewayConfig, next: &GatewayConfig, next_hook: bool) -> bool {
    match key {
        "customers.users" => running.users_file.is_some() != next.users_file.is_some(),
        "database.webhook_url" | "database.webhook_secret" | "database.webhook_ca" => !next_hook,
        _ => false,
    }
}

impl Reloader {
    /// The reloader of the file `source` read at start; `demo` keeps the
    /// demo's account and token through reloads.
    pub(crate) fn new(source: FileSource, demo: Option<(String, String)>) -> Reloader {
        Reloader { source, demo }
    }

    /// Re-reads the file: a file with errors changes nothing (each error is
    /// logged); otherwise each changed key is applied if it is live and
    /// logged by name (with old and new value, unless secret) either way.
    pub(crate) async fn reload(&mut self, logs: &exitpool::logs::LogGuard, gateway: &Gateway) {
        let path = self.source.file.path.clone();
        let Some(new) = self.read_again().await else {
            return;
        };
        let changed = changes(&self.source.file, &new);
        let overridden = |id: &str| self.source.overridden.contains(id);
        let live_changed = changed
            .iter()
            .any(|(key, _, _, id)| LIVE_KEYS.contains(key) && !overridden(id));
        // The whole configuration as a start would build it from this file.
        let next = if live_changed {
            match self.rebuild(&new, gateway).await {
                Some(next) => Some(next),
                None => return,
            }
        } else {
            None
        };
        let running = &gateway.shared().config;
        let mut applied = Vec::new();
        for (key, old, value, id) in &changed {
            let change = (*key, *old, *value);
            if overridden(id) {
                tracing::info!(
                    key,
                    old,
                    new = value,
                    "config key changed, but a flag or the environment sets it; unchanged"
                );
                continue;
            }
            let restart = match (LIVE_KEYS.contains(key), &next) {
                (true, Some((config, hook))) => {
                    let hooked = gateway_has_hook(gateway) && hook.is_some();
                    held_back(key, running, config, hooked).then_some(
                        "config key changed; it takes effect at the next restart (it moves what owns the accounts, or adds or removes the webhook)",
                    )
                }
                _ => Some("config key changed; it takes effect at the next restart"),
            };
            match restart {
                Some(message) => tracing::warn!(key, old, new = value, "{message}"),
                None => applied.push(change),
            }
        }
        if let Some((config, hook)) = next {
            apply(&mut applied, &new, config, hook, logs, gateway).await;
        }
        for (key, old, value) in &applied {
            tracing::info!(key, old, new = value, "config key applied");
        }
        tracing::info!(path = %path.display(), changed = changed.len(), "config file re-read");
        self.source.file = new;
    }

    /// The file read and checked again, off the runtime; `None` (each error
    /// logged) when it cannot be.
    async fn read_again(&self) -> Option<FileArgs> {
        let (command, path) = (self.source.command.clone(), self.source.file.path.clone());
        match tokio::task::spawn_blocking(move || load(&command, &path)).await {
            Ok(Ok(new)) => Some(new),
            Err(error) => {
                tracing::error!(%error, "config file reader failed; running on as before");
                None
            }
            Ok(Err(errors)) => {
                for error in errors.to_string().lines() {
                    tracing::error!(error, "config file refused; running on as before");
                }
                None
            }
        }
    }

    /// The configuration a start with `file` would build, off the runtime
    /// (GeoIP files are opened); `None` (logged) when it cannot be built.
    async fn rebuild(
        &self,
        file: &FileArgs,
        gateway: &Gateway,
    ) -> Option<(GatewayConfig, Option<WebhookConfig>)> {
        let rebuild = Rebuild {
            command: self.source.command.clone(),
            argv: self.source.argv.clone(),
            demo: self.demo.clone(),
            state_dir: gateway.shared().config.state_dir.clone(),
            file: file.clone(),
        };
        match tokio::task::spawn_blocking(move || configuration(rebuild)).await {
            Ok(Ok(next)) => Some(next),
            Ok(Err(error)) => {
                tracing::error!(error, "config file refused; running on as before");
                None
            }
            Err(error) => {
                tracing::error!(%error, "config file reader failed; running on as before");
                None
            }
        }
    }
}

/// Puts the `applied` keys of `config` in force: the log filter, the live
/// settings and accounts, the webhook's destination. A key that cannot be
/// applied is logged and taken out of `applied`.
async fn apply(
    applied: &mut Vec<Change<'_>>,
    new: &FileArgs,
    mut config: GatewayConfig,
    hook: Option<WebhookConfig>,
    logs: &exitpool::logs::LogGuard,
    gateway: &Gateway,
) {
    let keys: Vec<&str> = applied.iter().map(|(key, _, _)| *key).collect();
    if keys.contains(&"logging.log_filter") {
        let filter = new
            .entries
            .iter()
            .find(|entry| entry.path == "logging.log_filter")
            .map_or(exitpool::logs::DEFAULT_FILTER, |entry| entry.shown.as_str());
        if let Err(error) = logs.set_filter(filter) {
            tracing::error!(key = "logging.log_filter", %error, "config key not applied");
            applied.retain(|(key, _, _)| *key != "logging.log_filter");
        }
    }
    if !keys.contains(&"customers.users") {
        // A held-back change leaves the file (or the store) in charge.
        config.users_file = gateway.shared().config.users_file.clone();
    }
    if let Err(error) = gateway.apply_live(&config) {
        // The settings are in force; the accounts stay as they were.
        tracing::error!(%error, "accounts not changed");
        applied.retain(|(key, _, _)| !ACCOUNT_KEYS.contains(key));
    }
    let hook_changed = keys.iter().any(|key| WEBHOOK_KEYS.contains(key));
    if let (Some(hook), true) = (hook, hook_changed) {
        let link = gateway.shared().accounting.accounts.control().cloned();
        let set = match link {
            Some(link) => link.set_webhook(hook).await,
            None => Err("no control-plane store".to_owned()),
        };
        if let Err(error) = set {
            tracing::error!(%error, "webhook destination not changed");
            applied.retain(|(key, _, _)| !WEBHOOK_KEYS.contains(key));
        }
    }
}
/// What [`configuration`] needs, owned, to run off the runtime.
struct Rebuild {
    command: Command,
    argv: Vec<OsString>,
    demo: Option<(String, String)>,
    state_dir: PathBuf,
    file: FileArgs,
}

/// The gateway's configuration and webhook as a start with the file under
/// the command line would make them; an error says why (secrets hidden).
/// Blocking: `--geoip` files are opened.
fn configuration(rebuild: Rebuild) -> Result<(GatewayConfig, Option<WebhookConfig>), String> {
    let Rebuild {
        command,
        argv,
        demo,
        state_dir,
        file,
    } = rebuild;
    let hide = |message: String| hide_secrets(message, &file.entries);
    let first = command
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .map_err(|error| hide(first_line(&error.render())))?;
    let args = Args::try_parse_from(merged_argv(&argv, &file, &first))
        .map_err(|error| hide(clap_rule(&error, &file.entries)))?;
    let config = crate::gateway_config(&args, state_dir, demo.as_ref())
        .map_err(|error| hide(format!("{error:#}")))?;
    let hook = args.database.options(&config).webhook;
    Ok((config, hook))
}

/// Whether the running gateway sends threshold notices.
fn gateway_has_hook(gateway: &Gateway) -> bool {
    gateway
        .shared()
        .accounting
        .accounts
        .control()
        .is_some_and(|link| link.has_webhook())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::{keys, Key};
    use clap::CommandFactory;

    #[test]
    fn every_live_key_is_a_key() {
        let mut command = Args::command();
        command.build();
        let keys: Vec<String> = keys(&command).iter().map(Key::path).collect();
        for live in LIVE_KEYS.iter().chain(&ACCOUNT_KEYS).chain(&WEBHOOK_KEYS) {
            assert!(keys.iter().any(|key| key == live), "{live} is no key");
        }
    }
}
