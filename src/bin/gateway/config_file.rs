//! The gateway's `--config` file (`gateway.toml`), read from clap's own
//! description of the flags so that every flag is a key and a flag added to
//! flags.rs has its key at once; validation and defaults stay clap's.
//!
//! The grammar: a `[section]` per help heading (its first word in lower case:
//! `[customers]`, `[tunnel]`, `[admin]`, `[limits]`, `[routing]`, `[health]`,
//! `[logging]`, `[fleet]`, `[runtime]`, and any a new heading brings), a key
//! per flag (its long name with `_` for `-`: `--open-timeout` is
//! `open_timeout` under `[routing]`). A switch takes `true`/`false`, a
//! repeatable flag a list (or one value), a duration flag (value name
//! `SECONDS` or `MS`) a string with its unit (`"15s"`, `"500ms"`), a size or
//! rate (`BYTES`, `RATE`) a number or `"10GB"`/`"2MB/s"`, as in `agent.toml`
//! (the grammar is `exitpool-config`'s).
//!
//! [`load`] reads a file into [`FileArgs`], checking each value with the
//! flag's own clap value parser and reporting every error at once with file,
//! line and key; [`check`] (`gateway check-config`) also parses the file alone
//! as a command line, so a rule between flags (`tls_cert` needs `tls_key`) is
//! reported too (at start-up clap judges those on the whole command line,
//! where a flag or an environment variable may complete the file). [`merged_argv`]
//! lays the file under the command line: the file's words come first and a
//! key is left out when its flag was given on the command line or in its
//! environment variable (flags, then environment, then the file, then the
//! defaults). Values of secrets (a flag with `hide_env_values`, or a name
//! holding `token`, `secret`, `password` or `database`) are never echoed.

use crate::flags::Args;
use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, Parser};
use exitpool_config::{sorted, ConfigError, ConfigErrors, Lines, MAX_ERRORS};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Flags that are no keys: the file's own name, and clap's.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// What stands in for a secret's value in messages and logs.
pub(crate) const HIDDEN: &str = "<hidden>";

/// How a key's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// As the flag takes it (a string, number or boolean).
    Plain,
    /// A duration given to the flag in whole seconds.
    Seconds,
    /// A duration given to the flag in milliseconds.
    Millis,
    /// A size in bytes.
    Bytes,
    /// A rate in bytes per second.
    Rate,
}

/// One key of the file: the flag it stands for.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    /// `[section]`.
    pub(crate) section: String,
    /// The key in its section.
    pub(crate) name: String,
    /// clap's id of the flag.
    id: String,
    /// The flag, `--long`.
    long: String,
    /// A switch (`--no-admin`): `true` or `false`.
    switch: bool,
    /// Repeatable: a list.
    many: bool,
    unit: Unit,
    /// Never echoed.
    pub(crate) secret: bool,
}

impl Key {
    /// `section.name`.
    pub(crate) fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

/// The section of a help heading: its first word, in lower case.
pub(crate) fn section_of(heading: &str) -> String {
    heading
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| !word.is_empty())
        .unwrap_or("runtime")
        .to_ascii_lowercase()
}

/// Every key of the file, read from `command`'s flags, in help order.
pub(crate) fn keys(command: &Command) -> Vec<Key> {
    command
        .get_arguments()
        .filter(|arg| !NOT_KEYS.contains(&arg.get_id().as_str()))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let value_name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map(|name| name.as_str().to_owned())
                .unwrap_or_default();
            let unit = match value_name.as_str() {
                "SECONDS" => Unit::Seconds,
                "MS" => Unit::Millis,
                "BYTES" | "SIZE" => Unit::Bytes,
                "RATE" => Unit::Rate,
                _ => Unit::Plain,
            };
            let secret = arg.is_hide_env_values_set()
                || ["token", "secret", "password", "database"]
                    .iter()
                    .any(|word| long.contains(word));
            Some(Key {
                section: section_of(arg.get_help_heading().unwrap_or("Runtime")),
                name: long.replace('-', "_"),
                id: arg.get_id().as_str().to_owned(),
                long: format!("--{long}"),
                switch: matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse),
                many: matches!(arg.get_action(), ArgAction::Append),
                unit,
                secret,
            })
        })
        .collect()
}

/// One key as the file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `section.name`.
    pub(crate) path: String,
    /// clap's id of its flag.
    id: String,
    /// The flag's words (`--open-timeout`, `15`), none for a switch set false.
    words: Vec<OsString>,
    /// The value as written, or [`HIDDEN`] for a secret.
    pub(crate) shown: String,
    /// Where it is written.
    line: usize,
    pub(crate) secret: bool,
}

/// A file read and checked: its keys in the file's order.
#[derive(Debug, Clone)]
pub(crate) struct FileArgs {
    /// The file.
    pub(crate) path: PathBuf,
    /// What it says, key by key.
    pub(crate) entries: Vec<Entry>,
}

impl FileArgs {
    /// The flags' words for the keys `keep` lets through.
    fn words(&self, keep: impl Fn(&str) -> bool) -> Vec<OsString> {
        self.entries
            .iter()
            .filter(|entry| keep(&entry.id))
            .flat_map(|entry| entry.words.iter().cloned())
            .collect()
    }

    /// The sections and how many keys each sets, for `check-config`.
    pub(crate) fn summary(&self) -> String {
        let mut sections: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in &self.entries {
            let section = entry.path.split('.').next().unwrap_or_default();
            *sections.entry(section).or_default() += 1;
        }
        let listed: Vec<String> = sections
            .iter()
            .map(|(section, keys)| format!("[{section}] {keys}"))
            .collect();
        format!(
            "{}: OK, {} keys ({})",
            self.path.display(),
            self.entries.len(),
            listed.join(", ")
        )
    }
}

/// The command line with the file laid under it: the file's words first,
/// without the keys whose flag `first` (the command line parsed alone) took
/// from the command line or the environment.
pub(crate) fn merged_argv(argv: &[OsString], file: &FileArgs, first: &ArgMatches) -> Vec<OsString> {
    let given = |id: &str| {
        matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut merged: Vec<OsString> = argv.iter().take(1).cloned().collect();
    merged.extend(file.words(|id| !given(id)));
    merged.extend(argv.iter().skip(1).cloned());
    merged
}

/// Which ids `first` took from the command line or the environment.
fn overridden(command: &Command, first: &ArgMatches) -> BTreeSet<String> {
    command
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| {
            matches!(
                first.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(str::to_owned)
        .collect()
}

/// What reading the `--config` file again needs (SIGHUP: reload.rs).
pub(crate) struct FileSource {
    /// The flags' description, built.
    pub(crate) command: Command,
    /// The file as it was read.
    pub(crate) file: FileArgs,
    /// Flags given on the command line or in the environment: they win over
    /// the file, now and after a reload.
    pub(crate) overridden: BTreeSet<String>,
    /// The command line, laid over each new reading of the file.
    pub(crate) argv: Vec<OsString>,
}

/// The flags from `argv` with the `--config` file laid under them, and what
/// SIGHUP needs to re-read that file; or every error of the file. Help,
/// version and command-line mistakes end the process as clap does.
pub(crate) fn args_with_file(
    argv: &[OsString],
) -> Result<(Args, Option<FileSource>), ConfigErrors> {
    let mut command = Args::command();
    command.build();
    // The command line alone, leniently: which file, and which flags it gives.
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv);
    let Ok(first) = &first else {
        return Ok((Args::parse_from(argv), None));
    };
    let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
        return Ok((Args::parse_from(argv), None));
    };
    let file = load(&command, &path)?;
    let args = Args::parse_from(merged_argv(argv, &file, first));
    let overridden = overridden(&command, first);
    Ok((
        args,
        Some(FileSource {
            command,
            file,
            overridden,
            argv: argv.to_vec(),
        }),
    ))
}

/// `message` with every secret value of `entries` replaced by [`HIDDEN`].
pub(crate) fn hide_secrets(mut message: String, entries: &[Entry]) -> String {
    for entry in entries.iter().filter(|entry| entry.secret) {
        for word in entry.words.iter().filter_map(|w| w.to_str()) {
            let value = word.split_once('=').map_or("", |(_, value)| value);
            if !value.is_empty() {
                message = message.replace(value, HIDDEN);
            }
        }
    }
    message
}

/// Reads and checks the file at `path` against `command` (built): every
/// error at once, each with its line and key.
/// The rules between flags (one needs another, two conflict) are left to
/// clap's parse of the whole command line, where a flag or an environment
/// variable may complete the file; [`check`] also judges the file by them.
pub(crate) fn load(command: &Command, path: &Path) -> Result<FileArgs, ConfigErrors> {
    let text = exitpool_config::read(path)?;
    match parse(command, &text) {
        (entries, errors) if errors.is_empty() => Ok(FileArgs {
            path: path.to_owned(),
            entries,
        }),
        (_, errors) => Err(sorted(path, errors)),
    }
}

/// As [`load`], and the rules between flags as clap judges the file's words
/// with this process's environment (`gateway check-config`).
pub(crate) fn check(command: &Command, path: &Path) -> Result<FileArgs, ConfigErrors> {
    let file = load(command, path)?;
    let mut argv = vec![OsString::from("gateway")];
    argv.extend(file.words(|_| true));
    match command.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(file),
        Err(error) => Err(sorted(
            path,
            vec![ConfigError::whole(None, clap_rule(&error, &file.entries))],
        )),
    }
}

/// The entries of `text` and every error in it.
fn parse(command: &Command, text: &str) -> (Vec<Entry>, Vec<ConfigError>) {
    let lines = Lines(text);
    let root = match exitpool_config::parse_document(text, &lines) {
        Ok(root) => root,
        Err(errors) => return (Vec::new(), errors),
    };
    let keys = keys(command);
    let sections: BTreeSet<&str> = keys.iter().map(|key| key.section.as_str()).collect();
    let mut read = Reader {
        command,
        lines,
        errors: Vec::new(),
        entries: Vec::new(),
    };
    for (name, value) in root.get_ref().iter() {
        let name = name.get_ref().as_ref();
        let span = value.span();
        match value.get_ref() {
            DeValue::Table(table) if sections.contains(name) => {
                read.section(&keys, name, table);
            }
            DeValue::Table(_) => {
                let known: Vec<String> = sections.iter().map(|s| format!("[{s}]")).collect();
                read.fail(
                    &span,
                    name,
                    format!("unknown section; the sections are {}", known.join(", ")),
                );
            }
            _ => {
                let home = keys.iter().find(|key| key.name == name);
                let message = match home {
                    Some(key) => format!("belongs in the [{}] section", key.section),
                    None => "unknown key (every key belongs in a [section])".to_owned(),
                };
                read.fail(&span, name, message);
            }
        }
    }
    read.errors.sort_by_key(|e| e.line);
    read.errors.truncate(MAX_ERRORS);
    // The document's tables do not keep the file's order; the words do.
    read.entries.sort_by_key(|entry| entry.line);
    (read.entries, read.errors)
}

/// Walks the document, gathering entries and errors.
struct Reader<'a> {
    command: &'a Command,
    lines: Lines<'a>,
    errors: Vec<ConfigError>,
    entries: Vec<Entry>,
}

impl Reader<'_> {
    fn fail(&mut self, span: &Range<usize>, key: &str, message: String) {
        self.errors
            .push(ConfigError::at(&self.lines, Some(span), key, message));
    }

    fn section(&mut self, keys: &[Key], section: &str, table: &DeTable<'_>) {
        for (name, value) in table.iter() {
            let name = name.get_ref().as_ref();
            let path = format!("{section}.{name}");
            let span = value.span();
            let Some(key) = keys
                .iter()
                .find(|key| key.section == section && key.name == name)
            else {
                let hint = match keys.iter().find(|key| key.name == name.replace('-', "_")) {
                    Some(key) if key.name != name => {
                        format!("; keys are written with `_`: `{}`", key.name)
                    }
                    Some(key) => format!("; it belongs in [{}]", key.section),
                    None => String::new(),
                };
                self.fail(&span, &path, format!("unknown key{hint}"));
                continue;
            };
            match self.entry(key, value) {
                Ok(mut entry) => {
                    entry.line = self.lines.of(&span);
                    self.entries.push(entry);
                }
                Err(message) => self.fail(&span, &path, message),
            }
        }
    }

    /// One key's value turned into its flag's words, each checked by the
    /// flag's own value parser.
    fn entry(&self, key: &Key, value: &Spanned<DeValue<'_>>) -> Result<Entry, String> {
        let hidden = |shown: String| if key.secret { HIDDEN.to_owned() } else { shown };
        if key.switch {
            let DeValue::Boolean(on) = value.get_ref() else {
                return Err("expected true or false".to_owned());
            };
            return Ok(Entry {
                path: key.path(),
                id: key.id.clone(),
                words: if *on {
                    vec![key.long.clone().into()]
                } else {
                    Vec::new()
                },
                shown: on.to_string(),
                secret: key.secret,
                line: 0,
            });
        }
        let items: Vec<&DeValue<'_>> = match value.get_ref() {
            DeValue::Array(items) if key.many => items.iter().map(|item| item.get_ref()).collect(),
            DeValue::Array(_) => return Err("expected one value, not a list".to_owned()),
            DeValue::Table(_) => return Err("expected a value, not a table".to_owned()),
            one => vec![one],
        };
        let mut words = Vec::new();
        let mut shown = Vec::new();
        for item in items {
            let (word, written) = self.word(key, item)?;
            words.push(flag_word(key, &word));
            shown.push(written);
        }
        let shown = if key.many {
            format!("[{}]", shown.join(", "))
        } else {
            shown.concat()
        };
        Ok(Entry {
            path: key.path(),
            id: key.id.clone(),
            words,
            shown: hidden(shown),
            secret: key.secret,
            line: 0,
        })
    }

    /// One value as the flag's word, and as written.
    fn word(&self, key: &Key, value: &DeValue<'_>) -> Result<(String, String), String> {
        let written = match value {
            DeValue::String(text) => text.to_string(),
            DeValue::Integer(number) => match number.radix() {
                10 => number.as_str().to_owned(),
                radix => i128::from_str_radix(number.as_str(), radix)
                    .map(|n| n.to_string())
                    .map_err(|_| "not a number the gateway can read".to_owned())?,
            },
            DeValue::Float(number) => number.as_str().to_owned(),
            DeValue::Boolean(on) => on.to_string(),
            DeValue::Datetime(time) => time.to_string(),
            DeValue::Array(_) => return Err("expected a value, not a list inside a list".into()),
            DeValue::Table(_) => return Err("expected a value, not a table".into()),
        };
        let quoted = matches!(value, DeValue::String(_));
        if key.secret && !quoted {
            // Written as a string, as a token or a URL is; the value is not quoted.
            return Err("expected a string".to_owned());
        }
        let secret = |message: String| {
            if key.secret {
                "not a valid value (not shown: it is secret)".to_owned()
            } else {
                message
            }
        };
        let word = match key.unit {
            Unit::Plain => written.clone(),
            Unit::Seconds | Unit::Millis if !quoted => {
                return Err(format!(
                    "write the duration with its unit, as a string: \"{written}{}\"",
                    if key.unit == Unit::Seconds { "s" } else { "ms" }
                ))
            }
            Unit::Seconds => {
                let duration = exitpool_config::parse_duration(&written).map_err(secret)?;
                if duration.subsec_nanos() != 0 {
                    return Err(secret(format!(
                        "{written:?} is not a whole number of seconds"
                    )));
                }
                duration.as_secs().to_string()
            }
            Unit::Millis => {
                let duration = exitpool_config::parse_duration(&written).map_err(secret)?;
                if duration.subsec_nanos() % 1_000_000 != 0 {
                    return Err(secret(format!(
                        "{written:?} is not a whole number of milliseconds"
                    )));
                }
                duration.as_millis().to_string()
            }
            Unit::Bytes => exitpool_config::parse_size(&written)
                .map_err(secret)?
                .to_string(),
            Unit::Rate => exitpool_config::parse_rate(&written)
                .map_err(secret)?
                .to_string(),
        };
        self.check(key, &word, &written)?;
        Ok((word, written))
    }

    /// `word` through the flag's own value parser.
    fn check(&self, key: &Key, word: &str, written: &str) -> Result<(), String> {
        let Some(arg) = self
            .command
            .get_arguments()
            .find(|arg| arg.get_id().as_str() == key.id)
        else {
            return Ok(());
        };
        // The whole command, as clap's value parsers need it; rules between
        // flags are judged later, on the whole file.
        let argv = [OsString::from("gateway"), flag_word(key, word)];
        match self.command.clone().try_get_matches_from(argv) {
            Ok(_) => Ok(()),
            Err(error)
                if !matches!(
                    error.kind(),
                    ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
                ) =>
            {
                Ok(())
            }
            Err(_) if key.secret => Err("not a valid value (not shown: it is secret)".to_owned()),
            Err(error) => Err(invalid(&error, arg, written)),
        }
    }
}

/// `--flag=value`: one word, so that a value starting with `-` stays a value.
fn flag_word(key: &Key, word: &str) -> OsString {
    OsString::from(format!("{}={word}", key.long))
}

/// A value parser's refusal in the file's words.
fn invalid(error: &clap::Error, arg: &Arg, written: &str) -> String {
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("{written:?} is not one of {}", valid.join(", "));
    }
    let cause = std::error::Error::source(error)
        .map(|cause| cause.to_string())
        .unwrap_or_else(|| first_line(&error.render()));
    let what = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| format!(" ({name})"))
        .unwrap_or_default();
    format!("{written:?} is not a valid value{what}: {cause}")
}

/// A rule between flags that clap refused, in the file's words: the flags
/// named as keys, any secret value scrubbed.
pub(crate) fn clap_rule(error: &clap::Error, entries: &[Entry]) -> String {
    // clap's first paragraph (what is wrong, and the flags it names); a
    // flag or environment variable at start-up may settle it.
    let rendered = error.render().to_string();
    let mut message = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned();
    message = hide_secrets(message, entries);
    format!("{message} (unless a flag or an environment variable gives it at start-up)")
}

pub(crate) fn first_line(text: &StyledStr) -> String {
    text.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// What changed between two readings of the file, key by key: (key, old
/// value as shown, new value as shown, the flag's id); a key left out is
/// "unset", a secret [`HIDDEN`].
pub(crate) fn changes<'a>(
    old: &'a FileArgs,
    new: &'a FileArgs,
) -> Vec<(&'a str, &'a str, &'a str, &'a str)> {
    let index = |file: &'a FileArgs| -> BTreeMap<&'a str, &'a Entry> {
        file.entries.iter().map(|e| (e.path.as_str(), e)).collect()
    };
    let (old, new) = (index(old), index(new));
    let paths: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (before, after) = (old.get(path), new.get(path));
            if before.map(|e| &e.words) == after.map(|e| &e.words) {
                return None;
            }
            let shown = |entry: Option<&&'a Entry>| entry.map_or("unset", |e| e.shown.as_str());
            let either = after.or(before).expect("one of them names it");
            Some((path, shown(before), shown(after), either.id.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        let mut command = crate::flags::Args::command();
        command.build();
        command
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(&command(), text).1
    }

    #[test]
    fn every_flag_has_a_key_in_a_section() {
        let keys = keys(&command());
        assert!(keys.len() > 40, "{} keys", keys.len());
        let open = keys.iter().find(|k| k.name == "open_timeout").unwrap();
        assert_eq!(
            (open.section.as_str(), open.unit),
            ("routing", Unit::Seconds)
        );
        let token = keys.iter().find(|k| k.name == "admin_token").unwrap();
        assert!(token.secret && token.section == "admin");
        let mut seen = BTreeSet::new();
        for key in &keys {
            assert!(seen.insert(key.name.clone()), "{} twice", key.name);
        }
    }

    #[test]
    fn values_become_the_flags_words() {
        let text = "[routing]\nopen_timeout = \"15s\"\n[health]\nsilence_check_ms = \"1.5s\"\nno_health = true\n[customers]\nuser = [\"a:b\", \"c:d\"]\n";
        let (entries, errors) = parse(&command(), text);
        assert!(errors.is_empty(), "{errors:?}");
        let words: Vec<String> = entries
            .iter()
            .flat_map(|e| e.words.iter().map(|w| w.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            words,
            [
                "--open-timeout=15",
                "--silence-check-ms=1500",
                "--no-health",
                "--user=a:b",
                "--user=c:d"
            ]
        );
        assert_eq!(entries[3].shown, HIDDEN);
    }

    #[test]
    fn every_error_at_once_with_line_and_key_and_no_secret() {
        let text = "threads = 2\n[routing]\nopen_timeout = 15\nopen_timeout_x = 1\n[limits]\nmax_connections = \"many\"\n[admin]\nadmin_token = 123456789\nlisten = \"x\"\n[nope]\na = 1\n";
        let found: Vec<(Option<usize>, Option<String>)> = errors(text)
            .into_iter()
            .map(|e| {
                assert!(!e.message.contains("123456789"), "{e:?}");
                (e.line, e.key)
            })
            .collect();
        let key = |s: &str| Some(s.to_owned());
        assert_eq!(
            found,
            vec![
                (Some(1), key("threads")),
                (Some(3), key("routing.open_timeout")),
                (Some(4), key("routing.open_timeout_x")),
                (Some(6), key("limits.max_connections")),
                (Some(8), key("admin.admin_token")),
                (Some(9), key("admin.listen")),
                (Some(10), key("nope")),
            ]
        );
    }
}
