//! What a configuration file did wrong: one [`ConfigError`] per problem (line,
//! key, message), gathered per file into [`ConfigErrors`], whose `Display` is
//! the one line per problem both binaries print. [`Lines`] turns the parser's
//! byte spans into the line numbers those errors carry.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, where the problem has a place in the file.
    pub line: Option<usize>,
    /// The key at fault (`schedule.window[2].start`), if one is.
    pub key: Option<String>,
    /// What is wrong, never quoting a secret.
    pub message: String,
}

impl ConfigError {
    /// A problem at `span` of the file `lines` reads (none: the file as a
    /// whole) with `key` (empty: no key).
    pub fn at(lines: &Lines<'_>, span: Option<&Range<usize>>, key: &str, message: String) -> Self {
        ConfigError {
            line: span.map(|span| lines.of(span)),
            key: (!key.is_empty()).then(|| key.to_owned()),
            message,
        }
    }

    /// A problem of the file as a whole (it cannot be read, it lacks a key).
    pub fn whole(key: Option<&str>, message: impl Into<String>) -> Self {
        ConfigError {
            line: None,
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file.
    pub path: PathBuf,
    /// The problems, in the order of the file where they have a line.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per problem: `FILE:LINE: key `KEY`: MESSAGE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = error.line {
                write!(f, ":{line}")?;
            }
            if let Some(key) = &error.key {
                write!(f, ": key `{key}`")?;
            }
            write!(f, ": {}", error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `errors` of the file at `path` in the file's order, those without a line
/// last.
pub fn sorted(path: &Path, mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    ConfigErrors {
        path: path.to_owned(),
        errors,
    }
}

/// A file's text, to turn byte offsets into 1-based line numbers.
#[derive(Debug, Clone, Copy)]
pub struct Lines<'a>(pub &'a str);

impl Lines<'_> {
    /// The line `span` starts on.
    pub fn of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.0.len());
        self.0.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_one_line_each_in_file_order() {
        let text = "a = 1\nb = 2\n";
        let lines = Lines(text);
        let errors = sorted(
            Path::new("x.toml"),
            vec![
                ConfigError::whole(Some("c"), "missing"),
                ConfigError::at(&lines, Some(&(6..7)), "b", "bad".into()),
                ConfigError::at(&lines, Some(&(0..1)), "", "worse".into()),
            ],
        );
        assert_eq!(
            errors.to_string(),
            "x.toml:1: worse\nx.toml:2: key `b`: bad\nx.toml: key `c`: missing"
        );
    }
}
