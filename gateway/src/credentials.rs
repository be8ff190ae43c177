//! The credential grammar: `USER[-key-value]...:PASSWORD[-key-value]...`.
//!
//! Targeting parameters may follow the user name (Bright Data / Oxylabs style) or
//! the password (IPRoyal style), or both. The first `-` starts the parameters, so
//! base names and passwords never contain one. An unknown key, a bad value, a key
//! without a value or a key given twice is an error naming the key: a typo such as
//! `-contry-us` must never silently exit from a random country.
//!
//! `region` is the one key whose value spans two `-` tokens: an ISO 3166-2 code
//! is the country, `-`, and the subdivision (`-region-us-ca`), written as the
//! standard writes it.

use std::time::Duration;

/// Longest session id.
pub const MAX_SESSION_LEN: usize = 64;
/// Default and largest session lifetimes.
pub const DEFAULT_SESSTIME_MINUTES: u32 = 10;
/// Largest `sesstime`, one day.
pub const MAX_SESSTIME_MINUTES: u32 = 1440;

/// What happens when a session's pinned exit goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessMode {
    /// Pick a new exit and say so.
    #[default]
    Move,
    /// Fail with a clear error instead.
    Strict,
}

/// A sticky session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The customer's session id.
    pub id: String,
    /// How long the pin lasts from first use.
    pub lifetime: Duration,
    /// What happens when the exit goes.
    pub mode: SessMode,
}

/// Everything a customer asked for in their credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Targeting {
    /// Exit countries, upper case ISO 3166-1 alpha-2: one (`-country-us`), a
    /// list (`-country-us,ca`) or a continent's (`-continent-eu`); empty for any.
    pub countries: Vec<String>,
    /// The continent the countries came from, when they came from one (they are
    /// then narrowed to the account's countries rather than refused).
    pub continent: Option<String>,
    /// Exit ASN.
    pub asn: Option<u32>,
    /// Exit city, normalised with [`normalize_city`].
    pub city: Option<String>,
    /// Exit region, ISO 3166-2 upper case (`US-CA`). `countries` is then that
    /// region's country alone.
    pub region: Option<String>,
    /// Sticky session, if any.
    pub session: Option<SessionRequest>,
}

/// Base credentials plus targeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The base user name, which authenticates.
    pub user: &'a str,
    /// The base password.
    pub password: &'a str,
}

/// Why targeting parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct TargetingError {
    /// The key at fault (or the text where a key was expected).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn error(key: &str, message: impl Into<String>) -> TargetingError {
    TargetingError {
        key: key.chars().take(32).collect(),
        message: message.into(),
    }
}

/// Splits the base user name and password off their parameters. Never fails:
/// authentication runs on the bases before any parameter is judged, so a stranger
/// learns nothing about the grammar.
pub fn bases<'a>(user: &'a str, password: &'a str) -> Parsed<'a> {
    Parsed {
        user: user.split('-').next().unwrap_or_default(),
        password: password.split('-').next().unwrap_or_default(),
    }
}

/// City names compare lower case with spaces as `_`: `city-new_york` matches
/// "New York".
pub fn normalize_city(city: &str) -> String {
    city.trim()
        .chars()
        .map(|c| {
            if c == ' ' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Parses the targeting parameters of both the user name and the password.
pub fn parse_targeting(user: &str, password: &str) -> Result<Targeting, TargetingError> {
    let mut seen: Vec<String> = Vec::new();
    let mut targeting = Targeting::default();
    let mut sesstime: Option<u32> = None;
    let mut sessmode: Option<SessMode> = None;
    let mut session_id: Option<String> = None;
    for part in [user, password] {
        let mut tokens = part.split('-').skip(1);
        while let Some(key) = tokens.next() {
            let Some(value) = tokens.next() else {
                return Err(error(key, "has no value (write -key-value)"));
            };
            let key_lower = key.to_ascii_lowercase();
            let canonical =
                match key_lower.as_str() {
                    "country" | "continent" | "region" | "session" | "sesstime" | "sessmode"
                    | "asn" | "city" => key_lower,
                    _ => return Err(error(
                        key,
                        "unknown parameter; known: country, continent, region, session, sesstime, sessmode, asn, city",
                    )),
                };
            if seen.contains(&canonical) {
                return Err(error(key, "given twice"));
            }
            match canonical.as_str() {
                "country" | "continent" if !targeting.countries.is_empty() => {
                    return Err(error(key, "give country or continent, not both"))
                }
                "country" => targeting.countries = parse_countries(value)?,
                "continent" => {
                    let (continent, countries) = parse_continent(value)?;
                    targeting.continent = Some(continent);
                    targeting.countries = countries;
                }
                "session" => session_id = Some(parse_session(value)?),
                "sesstime" => sesstime = Some(parse_sesstime(value)?),
                "sessmode" => sessmode = Some(parse_sessmode(value)?),
                "asn" => targeting.asn = Some(parse_asn(value)?),
                "city" => targeting.city = Some(parse_city(value)?),
                "region" => targeting.region = Some(parse_region(value, tokens.next())?),
                _ => unreachable!("canonical keys are listed above"),
            }
            seen.push(canonical);
        }
    }
    if let Some(region) = &targeting.region {
        targeting.countries = region_countries(region, &targeting)?;
    }
    match session_id {
        Some(id) => {
            targeting.session = Some(SessionRequest {
                id,
                lifetime: Duration::from_secs(
                    u64::from(sesstime.unwrap_or(DEFAULT_SESSTIME_MINUTES)) * 60,
                ),
                mode: sessmode.unwrap_or_default(),
            })
        }
        None if sesstime.is_some() => {
            return Err(error("sesstime", "only applies with -session-ID"))
        }
        None if sessmode.is_some() => {
            return Err(error("sessmode", "only applies with -session-ID"))
        }
        None => {}
    }
    Ok(targeting)
}

/// Most countries one `-country-` list may name.
pub const MAX_COUNTRIES: usize = 32;

/// `us`, or `us,ca,mx`: each an ISO code, each once, at most [`MAX_COUNTRIES`].
fn parse_countries(value: &str) -> Result<Vec<String>, TargetingError> {
    let mut countries: Vec<String> = Vec::new();
    for code in value.split(',') {
        let country = parse_country(code)?;
        if countries.contains(&country) {
            return Err(error("country", format!("{country} is listed twice")));
        }
        countries.push(country);
    }
    if countries.len() > MAX_COUNTRIES {
        return Err(error(
            "country",
            format!("at most {MAX_COUNTRIES} countries in one list"),
        ));
    }
    Ok(countries)
}

/// `eu` and the countries in it.
fn parse_continent(value: &str) -> Result<(String, Vec<String>), TargetingError> {
    use exitpool_geoip::continent::{countries_of, CONTINENT_CODES};
    let countries = countries_of(value).ok_or_else(|| {
        error(
            "continent",
            format!(
                "{value:?} is not a continent; known: {}",
                CONTINENT_CODES.join(", ")
            ),
        )
    })?;
    Ok((value.to_ascii_lowercase(), countries))
}

fn parse_country(value: &str) -> Result<String, TargetingError> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(error(
            "country",
            format!("{value:?} is not an ISO 3166-1 alpha-2 code such as us or de"),
        ))
    }
}

/// `us` and `ca` (the tokens of `region-us-ca`) → `US-CA`.
fn parse_region(country: &str, subdivision: Option<&str>) -> Result<String, TargetingError> {
    let country_ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic());
    let subdivision = subdivision.filter(|code| {
        (1..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    match subdivision {
        Some(code) if country_ok => Ok(format!(
            "{}-{}",
            country.to_ascii_uppercase(),
            code.to_ascii_uppercase()
        )),
        _ => Err(error(
            "region",
            "must be an ISO 3166-2 code, the country then the subdivision: region-us-ca",
        )),
    }
}

/// The countries a region leaves: its own, which must be among the countries
/// (or the continent's) asked for, if any.
fn region_countries(region: &str, targeting: &Targeting) -> Result<Vec<String>, TargetingError> {
    let country = &region[..2];
    if targeting.countries.is_empty() || targeting.countries.iter().any(|c| c == country) {
        return Ok(vec![country.to_owned()]);
    }
    let asked = match &targeting.continent {
        Some(continent) => format!("continent {continent}"),
        None => targeting.countries.join(","),
    };
    Err(error(
        "region",
        format!("{region} is not in {asked}, also asked for"),
    ))
}

fn parse_session(value: &str) -> Result<String, TargetingError> {
    if (1..=MAX_SESSION_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(value.to_owned())
    } else {
        Err(error(
            "session",
            format!("must be 1-{MAX_SESSION_LEN} characters of A-Z, a-z, 0-9 and _"),
        ))
    }
}

fn parse_sesstime(value: &str) -> Result<u32, TargetingError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|minutes| (1..=MAX_SESSTIME_MINUTES).contains(minutes) && !value.starts_with('+'))
        .ok_or_else(|| {
            error(
                "sesstime",
                format!("must be whole minutes from 1 to {MAX_SESSTIME_MINUTES}"),
            )
        })
}

fn parse_sessmode(value: &str) -> Result<SessMode, TargetingError> {
    match value.to_ascii_lowercase().as_str() {
        "move" => Ok(SessMode::Move),
        "strict" => Ok(SessMode::Strict),
        _ => Err(error("sessmode", "must be move or strict")),
    }
}

fn parse_asn(value: &str) -> Result<u32, TargetingError> {
    let digits = value
        .strip_prefix("AS")
        .or_else(|| value.strip_prefix("as"))
        .unwrap_or(value);
    digits
        .parse::<u32>()
        .ok()
        .filter(|asn| *asn > 0 && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| error("asn", "must be an AS number such as 3320"))
}

fn parse_city(value: &str) -> Result<String, TargetingError> {
    if !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(normalize_city(value))
    } else {
        Err(error(
            "city",
            "must be letters, digits and _ (for spaces), e.g. new_york",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_on_either_side() {
        let on_user = parse_targeting("alice-country-us-session-a1", "pw").unwrap();
        let on_password = parse_targeting("alice", "pw-country-US-session-a1").unwrap();
        assert_eq!(on_user, on_password);
        assert_eq!(on_user.countries, ["US"]);
        let session = on_user.session.unwrap();
        assert_eq!(session.id, "a1");
        assert_eq!(session.lifetime, Duration::from_secs(600));
        assert_eq!(session.mode, SessMode::Move);
        let split = parse_targeting(
            "alice-country-de",
            "pw-session-x-sesstime-30-sessmode-strict",
        )
        .unwrap();
        let session = split.session.unwrap();
        assert_eq!(
            (session.lifetime.as_secs(), session.mode),
            (1800, SessMode::Strict)
        );
        assert_eq!(
            parse_targeting("alice", "pw").unwrap(),
            Targeting::default()
        );
        let geo = parse_targeting("alice-asn-AS3320-city-New_York", "pw").unwrap();
        assert_eq!(
            (geo.asn, geo.city.as_deref()),
            (Some(3320), Some("new_york"))
        );
    }

    #[test]
    fn country_lists_and_continents() {
        let list = parse_targeting("alice-country-us,CA,mx", "pw").unwrap();
        assert_eq!(list.countries, ["US", "CA", "MX"]);
        assert_eq!(list.continent, None);
        let europe = parse_targeting("alice-continent-EU", "pw").unwrap();
        assert_eq!(europe.continent.as_deref(), Some("eu"));
        assert!(europe.countries.contains(&"DE".to_owned()));
        for (user, key) in [
            ("alice-country-us,us", "country"),
            ("alice-country-us,", "country"),
            ("alice-continent-xx", "continent"),
            ("alice-country-de-continent-eu", "continent"),
            ("alice-continent-eu-country-de", "country"),
        ] {
            let error = parse_targeting(user, "pw").unwrap_err();
            assert_eq!(error.key, key, "{user}: {error}");
        }
        let many = vec!["us"; 33].join(",");
        assert!(parse_targeting(&format!("alice-country-{many}"), "pw").is_err());
    }

    #[test]
    fn regions_are_iso_3166_2_codes_and_narrow_the_countries() {
        let region = parse_targeting("alice-region-us-ca-session-s1", "pw").unwrap();
        assert_eq!(region.region.as_deref(), Some("US-CA"));
        assert_eq!(region.countries, ["US"]);
        assert_eq!(region.session.unwrap().id, "s1");
        let on_password = parse_targeting("alice", "pw-region-DE-by").unwrap();
        assert_eq!(on_password.region.as_deref(), Some("DE-BY"));
        // Numeric subdivisions exist (FR-75, JP-13).
        let tokyo = parse_targeting("alice-region-jp-13", "pw").unwrap();
        assert_eq!(tokyo.region.as_deref(), Some("JP-13"));
        // A list or continent holding the region's country narrows to it.
        let list = parse_targeting("alice-country-ca,us-region-us-ny", "pw").unwrap();
        assert_eq!(list.countries, ["US"]);
        let continent = parse_targeting("alice-continent-na-region-us-ny", "pw").unwrap();
        assert_eq!(continent.countries, ["US"]);
        for user in [
            "alice-region-ca",
            "alice-region-us-",
            "alice-region-usa-ca",
            "alice-region-us-cali",
            "alice-region-u1-ca",
            "alice-region-us-c_a",
            "alice-country-de-region-us-ca",
            "alice-continent-eu-region-us-ca",
            "alice-region-us-ca-region-us-ny",
            "alice-region-ca-session-x",
        ] {
            let error = parse_targeting(user, "pw").unwrap_err();
            assert_eq!(error.key, "region", "{user}: {error}");
        }
    }

    #[test]
    fn bases_ignore_parameters() {
        assert_eq!(
            bases("alice-country-us", "pw-session-1"),
            Parsed {
                user: "alice",
                password: "pw"
            }
        );
    }

    #[test]
    fn every_grammar_error_names_its_key() {
        let cases = [
            ("alice-contry-us", "pw", "contry"),
            ("alice-country", "pw", "country"),
            ("alice-country-usa", "pw", "country"),
            ("alice-country-u1", "pw", "country"),
            ("alice-country-us", "pw-country-de", "country"),
            ("alice-country-us-COUNTRY-us", "pw", "COUNTRY"),
            ("alice-session-", "pw", "session"),
            ("alice-session-a.b", "pw", "session"),
            (
                &format!("alice-session-{}", "a".repeat(65)),
                "pw",
                "session",
            ),
            ("alice-session-a-sesstime-0", "pw", "sesstime"),
            ("alice-session-a-sesstime-1441", "pw", "sesstime"),
            ("alice-session-a-sesstime-ten", "pw", "sesstime"),
            ("alice-sesstime-5", "pw", "sesstime"),
            ("alice-session-a-sessmode-sticky", "pw", "sessmode"),
            ("alice-sessmode-strict", "pw", "sessmode"),
            ("alice-asn-x", "pw", "asn"),
            ("alice-asn-0", "pw", "asn"),
            ("alice-city-new.york", "pw", "city"),
            ("alice--", "pw", ""),
        ];
        for (user, password, key) in cases {
            let error = parse_targeting(user, password).unwrap_err();
            assert_eq!(error.key, key, "{user}:{password} -> {error}");
        }
    }
}
