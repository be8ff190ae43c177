//! Reading a configuration file whole and reporting every problem at once.
//!
//! [`read`] refuses a file larger than [`MAX_FILE_BYTES`]. [`parse_document`]
//! parses the TOML, reporting every syntax error together. [`deserialize_all`]
//! then deserializes it into a model with `deny_unknown_fields`; each serde
//! error (an unknown key, a wrong type) names a span, the entry there is
//! removed and the rest is deserialized again, until it goes through: the
//! span-removal loop. Each stops at [`MAX_ERRORS`]. Messages never repeat a
//! source line (toml's own `Display` would): a line may hold a token.

use crate::errors::{ConfigError, ConfigErrors, Lines};
use serde::de::DeserializeOwned;
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Most errors reported for one file; past this the rest is left unread.
pub const MAX_ERRORS: usize = 64;

/// Largest configuration file read, in bytes: a configuration, not a data file.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

/// The text of the file at `path`, or why it cannot be had (unreadable, over
/// [`MAX_FILE_BYTES`]) as the file's one error.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        path: path.to_owned(),
        errors: vec![ConfigError::whole(None, message)],
    };
    let metadata = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes is more than a configuration file holds (at most {MAX_FILE_BYTES})",
            metadata.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))
}

/// `text` parsed as a TOML document, or every syntax error in it.
pub fn parse_document<'a>(
    text: &'a str,
    lines: &Lines<'_>,
) -> Result<Spanned<DeTable<'a>>, Vec<ConfigError>> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if syntax.is_empty() {
        return Ok(root);
    }
    Err(syntax
        .iter()
        .take(MAX_ERRORS)
        .map(|e| {
            ConfigError::at(
                lines,
                e.span().as_ref(),
                "",
                format!("not valid TOML: {}", e.message().trim()),
            )
        })
        .collect())
}

/// Deserializes `text` into the model `T`, collecting every error: syntax
/// errors, then each serde error, found by removing the entry it names and
/// trying again. `hidden(key)` gives the message for a key whose value must
/// never be quoted (serde's type errors quote the value), `None` for others.
pub fn deserialize_all<T: DeserializeOwned>(
    text: &str,
    lines: &Lines<'_>,
    hidden: impl Fn(&str) -> Option<String>,
) -> (Option<T>, Vec<ConfigError>) {
    let mut root = match parse_document(text, lines) {
        Ok(root) => root,
        Err(errors) => return (None, errors),
    };
    let mut errors = Vec::new();
    while errors.len() < MAX_ERRORS {
        let attempt = T::deserialize(toml::de::Deserializer::from(root.clone()));
        let error = match attempt {
            Ok(model) => return (Some(model), errors),
            Err(error) => error,
        };
        let span = error.span();
        let removed = span
            .as_ref()
            .and_then(|span| remove_at(root.get_mut(), span, ""));
        let key = removed.clone().unwrap_or_default();
        let last = key.rsplit(['.', ']']).next().unwrap_or_default();
        let message = hidden(last).unwrap_or_else(|| plain(error.message()));
        errors.push(ConfigError::at(lines, span.as_ref(), &key, message));
        if removed.is_none() {
            break;
        }
    }
    (None, errors)
}

/// serde's message in the file's words.
pub fn plain(message: &str) -> String {
    let mut message = message.trim().replace("unknown field", "unknown key");
    for (rust, words) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected an integer"),
        ("expected a boolean", "expected true or false"),
    ] {
        message = message.replace(rust, words);
    }
    message
}

/// Removes the innermost entry of `table` whose key or value holds `span`,
/// and returns its key path.
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    let holds = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let mut found = None;
    for (key, value) in table.iter_mut() {
        // A table's span need not cover its keys (`[schedule]` and its lines
        // are apart), so tables are searched whether or not they hold it.
        let here = holds(key.span()) || holds(value.span());
        if !here && !matches!(value.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
            continue;
        }
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let inner = match value.get_mut() {
            DeValue::Table(inner) => remove_at(inner, span, &path),
            DeValue::Array(items) => items.iter_mut().enumerate().find_map(|(i, item)| match item
                .get_mut()
            {
                DeValue::Table(inner) => remove_at(inner, span, &format!("{path}[{}]", i + 1)),
                _ => None,
            }),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
        if !here {
            continue;
        }
        found = Some((key.get_ref().to_string(), path));
        break;
    }
    let (key, path) = found?;
    table.remove(key.as_str());
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Model {
        a: Option<u32>,
        secret: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        b: Option<bool>,
    }

    fn all(text: &str) -> Vec<ConfigError> {
        let hidden = |key: &str| (key == "secret").then(|| "expected a string".to_owned());
        deserialize_all::<Model>(text, &Lines(text), hidden).1
    }

    #[test]
    fn every_serde_error_is_found_with_its_line_and_key() {
        let errors = all("a = \"x\"\nsecret = 123456\nzz = 1\n[inner]\nb = 3\nc = 1\n");
        let found: Vec<(Option<usize>, Option<&str>)> =
            errors.iter().map(|e| (e.line, e.key.as_deref())).collect();
        let mut found = found;
        found.sort();
        assert_eq!(
            found,
            vec![
                (Some(1), Some("a")),
                (Some(2), Some("secret")),
                (Some(3), Some("zz")),
                (Some(5), Some("inner.b")),
                (Some(6), Some("inner.c")),
            ],
            "{errors:#?}"
        );
        assert!(errors.iter().all(|e| !e.message.contains("123456")));
        assert!(errors
            .iter()
            .any(|e| e.message.starts_with("unknown key `zz`")));
    }

    #[test]
    fn syntax_errors_come_all_at_once_without_the_line() {
        let text = "a = \nsecret = \"s3cret\n";
        let errors = all(text);
        assert!(!errors.is_empty());
        assert!(
            errors.iter().all(|e| !e.message.contains("s3cret")),
            "{errors:?}"
        );
        assert!(errors
            .iter()
            .all(|e| e.message.starts_with("not valid TOML")));
    }

    #[test]
    fn the_error_count_is_bounded() {
        let text: String = (0..200).map(|i| format!("unknown_{i} = 1\n")).collect();
        assert_eq!(all(&text).len(), MAX_ERRORS);
    }
}
