//! Entry ports: extra customer ports whose number selects targeting, for
//! allow-listed clients and tools that cannot put parameters in a user name
//! (headless browsers, some scraping frameworks). Read from `--entry-ports FILE`:
//!
//! ```toml
//! [[ports]]
//! ports = "10000-10999"          # a range, or one port ("20001")
//! targeting = "country-us"       # the user-name parameter grammar, without the user name
//! session_per_port = true        # each port its own sticky session (`port10000`, ...)
//!
//! [[ports]]
//! ports = "20001"
//! targeting = "country-de"       # rotating in Germany
//! ```
//!
//! A port serves the same protocols as the main customer port (HTTP proxy,
//! SOCKS5, TLS). Parameters in the credentials still apply on top of the port's;
//! the same key with another value is refused (`400 bad_targeting`).
//!
//! SIGHUP re-reads the file ([`LiveEntryPorts::reload`]): new targeting for
//! the ports already listening applies to the next connection. Ports are bound
//! at start, so a file that adds or removes ports is refused at reload (the
//! running table stays) and needs a restart.

use crate::credentials::{self, Targeting, TargetingError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Most ports one file may open, so a typo such as `1-65535` cannot take
/// every descriptor the gateway has.
pub const MAX_ENTRY_PORTS: usize = 10_000;

/// Why an entry ports file was refused; every message names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct EntryPortsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, and where.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    ports: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    ports: String,
    #[serde(default)]
    targeting: String,
    #[serde(default)]
    session_per_port: bool,
}

/// The targeting every port number selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPorts {
    by_port: BTreeMap<u16, Targeting>,
}

impl EntryPorts {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<EntryPorts, EntryPortsError> {
        let fail = |message: String| EntryPortsError {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&text).map_err(fail)
    }

    /// Parses a file's text.
    pub fn parse(text: &str) -> Result<EntryPorts, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut by_port = BTreeMap::new();
        for (i, entry) in file.ports.iter().enumerate() {
            let at =
                |message: String| format!("entry {} (ports {:?}): {message}", i + 1, entry.ports);
            let (first, last) = parse_range(&entry.ports).map_err(at)?;
            let mut text = entry.targeting.trim().trim_start_matches('-').to_owned();
            if entry.session_per_port {
                text = [text.as_str(), "session-port"]
                    .iter()
                    .filter(|part| !part.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("-");
            }
            let user = if text.is_empty() {
                "entry".to_owned()
            } else {
                format!("entry-{text}")
            };
            let targeting = credentials::parse_targeting(&user, "")
                .map_err(|e| at(format!("targeting: {e}")))?;
            for port in first..=last {
                let mut targeting = targeting.clone();
                if let Some(session) = &mut targeting.session {
                    if entry.session_per_port {
                        session.id = format!("port{port}");
                    }
                }
                if by_port.insert(port, targeting).is_some() {
                    return Err(at(format!("port {port} is listed twice")));
                }
                if by_port.len() > MAX_ENTRY_PORTS {
                    return Err(at(format!("more than {MAX_ENTRY_PORTS} ports in all")));
                }
            }
        }
        Ok(EntryPorts { by_port })
    }

    /// Every port and what it selects.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Targeting)> {
        self.by_port
            .iter()
            .map(|(port, targeting)| (*port, targeting))
    }

    /// Whether no port is configured.
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }

    /// What `port` selects, if it is an entry port.
    pub fn get(&self, port: u16) -> Option<&Targeting> {
        self.by_port.get(&port)
    }

    fn same_ports(&self, other: &EntryPorts) -> bool {
        self.by_port.keys().eq(other.by_port.keys())
    }
}

/// The entry ports in force, and the file SIGHUP re-reads them from.
#[derive(Debug)]
pub struct LiveEntryPorts {
    file: Option<PathBuf>,
    current: RwLock<Arc<EntryPorts>>,
}

impl LiveEntryPorts {
    /// `ports` as read at start from `file` (none: nothing to reload).
    pub fn new(ports: EntryPorts, file: Option<PathBuf>) -> LiveEntryPorts {
        LiveEntryPorts {
            file,
            current: RwLock::new(Arc::new(ports)),
        }
    }

    /// What `port` selects now, for one new connection.
    pub fn targeting(&self, port: u16) -> Option<Arc<Targeting>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        current.get(port).cloned().map(Arc::new)
    }

    /// Re-reads the file: the number of ports now in force, or `None` when
    /// there is no file. A file that cannot be used, or lists other ports
    /// than those listening, leaves the running table in force.
    pub fn reload(&self) -> Result<Option<usize>, EntryPortsError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let fresh = EntryPorts::load(file)?;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !current.same_ports(&fresh) {
            return Err(EntryPortsError {
                path: file.clone(),
                message: "lists other ports than those listening; ports are bound at start, \
                          so adding or removing one needs a restart"
                    .to_owned(),
            });
        }
        let count = fresh.by_port.len();
        *current = Arc::new(fresh);
        Ok(Some(count))
    }
}

fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let port = |part: &str| {
        part.trim()
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("`{}` is not a port number from 1 to 65535", part.trim()))
    };
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => (port(text)?, port(text)?),
    };
    if first > last {
        return Err(format!("the range {first}-{last} runs backwards"));
    }
    Ok((first, last))
}

/// The targeting a request gets on an entry port: the port's, with the
/// credentials' parameters on top. A key both set to different values is a
/// conflict, reported like any other bad parameter.
pub fn merge(port: &Targeting, asked: Targeting) -> Result<Targeting, TargetingError> {
    fn pick<T: PartialEq + Clone + std::fmt::Debug>(
        key: &str,
        port: &Option<T>,
        asked: Option<T>,
    ) -> Result<Option<T>, TargetingError> {
        match (port, asked) {
            (Some(port), Some(asked)) if *port != asked => Err(TargetingError {
                key: key.to_owned(),
                message: format!(
                    "this entry port sets {port:?}; the credentials ask for {asked:?}"
                ),
            }),
            (port, asked) => Ok(asked.or_else(|| port.clone())),
        }
    }
    let session = match (&port.session, asked.session) {
        (Some(port), Some(asked)) if port.id != asked.id => {
            return Err(TargetingError {
                key: "session".to_owned(),
                message: format!(
                    "this entry port is session {:?}; the credentials ask for {:?}",
                    port.id, asked.id
                ),
            })
        }
        // The credentials may still set the session's lifetime and mode.
        (_, Some(asked)) => Some(asked),
        (port, None) => port.clone(),
    };
    let as_option = |countries: Vec<String>| (!countries.is_empty()).then_some(countries);
    let countries = pick(
        "country",
        &as_option(port.countries.clone()),
        as_option(asked.countries.clone()),
    )?
    .unwrap_or_default();
    let continent = if asked.countries.is_empty() {
        port.continent.clone()
    } else {
        asked.continent
    };
    Ok(Targeting {
        countries,
        continent,
        asn: pick("asn", &port.asn, asked.asn)?,
        city: pick("city", &port.city, asked.city)?,
        region: pick("region", &port.region, asked.region)?,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_sessions_and_conflicts() {
        let ports = EntryPorts::parse(
            r#"
            [[ports]]
            ports = "10000-10002"
            targeting = "country-us"
            session_per_port = true

            [[ports]]
            ports = "20001"
            targeting = "country-de"
            "#,
        )
        .unwrap();
        let all: Vec<_> = ports.iter().collect();
        assert_eq!(all.len(), 4);
        let (port, targeting) = all[1];
        assert_eq!(port, 10001);
        assert_eq!(targeting.countries, ["US"]);
        assert_eq!(targeting.session.as_ref().unwrap().id, "port10001");
        let (_, de) = all[3];
        assert_eq!(de.session, None);

        let asked = credentials::parse_targeting("alice-country-de", "x").unwrap();
        let conflict = merge(targeting, asked).unwrap_err();
        assert_eq!(conflict.key, "country");
        let asked = credentials::parse_targeting("alice-city-dallas", "x").unwrap();
        let merged = merge(targeting, asked).unwrap();
        assert_eq!(merged.countries, ["US"]);
        assert_eq!(merged.city.as_deref(), Some("dallas"));
        let asked = credentials::parse_targeting("alice-country-US", "x").unwrap();
        assert!(
            merge(targeting, asked).is_ok(),
            "the same value is no conflict"
        );
        // A region within the port's country narrows it; elsewhere it conflicts.
        let asked = credentials::parse_targeting("alice-region-us-tx", "x").unwrap();
        let merged = merge(targeting, asked).unwrap();
        assert_eq!(merged.region.as_deref(), Some("US-TX"));
        let asked = credentials::parse_targeting("alice-region-de-by", "x").unwrap();
        assert_eq!(merge(targeting, asked).unwrap_err().key, "country");
    }

    #[test]
    fn bad_files_name_the_entry() {
        for (text, expected) in [
            ("[[ports]]\nports = \"0\"", "not a port number"),
            ("[[ports]]\nports = \"5-4\"", "backwards"),
            (
                "[[ports]]\nports = \"7\"\n[[ports]]\nports = \"6-8\"",
                "listed twice",
            ),
            (
                "[[ports]]\nports = \"7\"\ntargeting = \"contry-us\"",
                "unknown parameter",
            ),
            ("[[ports]]\nports = \"1-20000\"", "more than 10000"),
            ("[[ports]]\nport = \"7\"", "unknown field"),
        ] {
            let error = EntryPorts::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
