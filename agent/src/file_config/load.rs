//! Reading `agent.toml`: [`load`] for a file flags may add to,
//! [`load_complete`] for a file the agent runs from alone, [`parse`] for text;
//! every error at once, sorted by line, and a warning for a token others can
//! read.

use super::check::Check;
use super::model::FileModel;
use super::settings::Settings;
use exitpool_config::{deserialize_all, read, sorted, ConfigError, ConfigErrors, Lines};
use std::path::Path;

/// The environment variable that may hold the token instead of the file.
pub const TOKEN_ENV: &str = "EXITPOOL_AGENT_TOKEN";

/// A file as read: its settings and what deserves a warning.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What the file says.
    pub settings: Settings,
    /// Things that work but should not be so (a token in a world-readable file).
    pub warnings: Vec<String>,
}

/// Reads and checks the configuration file at `path` (what it says may be
/// incomplete: flags can add to it).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = read(path)?;
    let settings = parse(&text, path)?;
    finish(path, settings, Vec::new())
}

/// Reads and checks the file at `path` as the volunteer binary runs from it
/// alone: as [`load`], and also a gateway, a pin, a token (unless
/// `token_elsewhere`, e.g. in [`TOKEN_ENV`]) and `consent = true` are needed.
pub fn load_complete(path: &Path, token_elsewhere: bool) -> Result<Loaded, ConfigErrors> {
    let text = read(path)?;
    let (settings, mut errors) = parse_partly(&text);
    let settings = settings.unwrap_or_default();
    let named =
        |errors: &[ConfigError], key: &str| errors.iter().any(|e| e.key.as_deref() == Some(key));
    for key in settings.missing() {
        if (key == "token" && token_elsewhere) || named(&errors, key) {
            continue;
        }
        let also = if key == "token" {
            format!(" (or in {TOKEN_ENV})")
        } else {
            String::new()
        };
        errors.push(ConfigError {
            line: None,
            key: Some(key.to_owned()),
            message: format!("missing; the agent needs it{also}"),
        });
    }
    if settings.consent != Some(true) && !named(&errors, "consent") {
        errors.push(ConfigError {
            line: None,
            key: Some("consent".to_owned()),
            message: CONSENT_MISSING.to_owned(),
        });
    }
    finish(path, settings, errors)
}

/// Why a file without `consent = true` starts no agent.
pub const CONSENT_MISSING: &str = "not given; the agent shares this device's connection only once its owner sets `consent = true`";

/// Parses and checks a configuration file's `text`; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigErrors> {
    match parse_partly(text) {
        (Some(settings), errors) if errors.is_empty() => Ok(settings),
        (_, errors) => Err(sorted(path, errors)),
    }
}

/// The settings that could be read (`None` if serde could not read the file
/// whole) and every error.
fn parse_partly(text: &str) -> (Option<Settings>, Vec<ConfigError>) {
    let lines = Lines(text);
    // A type error quotes the value; the tokens' never are.
    let (model, errors) = deserialize_all::<FileModel>(text, &lines, |key| match key {
        "token" => Some("expected the token as a string".to_owned()),
        "status_token" => Some("expected the status token as a string".to_owned()),
        _ => None,
    });
    let mut check = Check::new(lines, errors);
    // What serde let through is checked too, so one run reports everything.
    let settings = model.map(|model| check.settings(model));
    (settings, check.into_errors())
}

/// The settings and their warnings, or every error.
fn finish(
    path: &Path,
    settings: Settings,
    errors: Vec<ConfigError>,
) -> Result<Loaded, ConfigErrors> {
    if !errors.is_empty() {
        return Err(sorted(path, errors));
    }
    let mut warnings = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
        if settings.token.is_some() && readable {
            warnings.push(format!(
                "{} holds the token and every user on this device can read it; `chmod o-r` it (or put the token in {TOKEN_ENV})",
                path.display()
            ));
        }
    }
    Ok(Loaded { settings, warnings })
}
