//! The one serde shape that every supported database layout decodes into, so a single
//! code path reads them all:
//!
//! | field | MaxMind GeoIP2 / GeoLite2 | ip-location-db |
//! |---|---|---|
//! | country | `country.iso_code`, else `registered_country.iso_code` | `country_code` |
//! | ASN | `autonomous_system_number` (ASN databases) | `autonomous_system_number` (`*-asn-mmdb`) |
//! | city | `city.names.en` (City databases) | `city`, a plain string (`*-city-mmdb`) |
//! | region | `country.iso_code` + `-` + `subdivisions[0].iso_code` (City databases) | — (names only, no codes) |
//!
//! Every field is optional and unknown keys are skipped without being expanded, so a
//! record carrying only some of them (or many more) decodes cheaply.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// One database record, reduced to the fields exitpool uses.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Record<'a> {
    /// MaxMind: where the address is believed to be.
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    /// MaxMind: where the block's registrant is; the fallback when `country` is absent.
    #[serde(borrow, default)]
    registered_country: Option<Country<'a>>,
    /// ip-location-db: the country as a top-level string.
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    /// MaxMind: a map with `names`; ip-location-db: a string.
    #[serde(default)]
    city: Option<City>,
    /// Both layouts' ASN databases.
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    /// MaxMind: the subdivisions, largest first.
    #[serde(default)]
    subdivisions: Option<Subdivisions>,
}

/// MaxMind's `subdivisions`; any other shape is skipped rather than failing
/// the record.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Subdivisions {
    /// `[{"iso_code": "CA", "names": {...}}, ...]`.
    List(Vec<Subdivision>),
    /// Anything else.
    #[allow(dead_code)]
    Other(IgnoredAny),
}

/// One entry of `subdivisions` (other keys skipped).
#[derive(Debug, Deserialize)]
struct Subdivision {
    #[serde(default)]
    iso_code: Option<String>,
}

/// MaxMind's `country` / `registered_country` maps (other keys skipped).
#[derive(Debug, Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

/// `city` in either layout; any other shape is skipped rather than failing the record.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum City {
    /// ip-location-db: `"city": "Berlin"`.
    Name(String),
    /// MaxMind: `"city": {"names": {"en": "Berlin", ...}, ...}`.
    Names { names: CityNames },
    /// Anything else.
    #[allow(dead_code)]
    Other(IgnoredAny),
}

/// MaxMind's localized names; exitpool uses English.
#[derive(Debug, Deserialize)]
struct CityNames {
    #[serde(default)]
    en: Option<String>,
}

impl Record<'_> {
    /// The country code, upper case: `country.iso_code`, then `country_code`, then
    /// `registered_country.iso_code`; values that are not two ASCII letters are skipped.
    pub(crate) fn country(&self) -> Option<String> {
        [
            self.country.as_ref().and_then(|c| c.iso_code),
            self.country_code,
            self.registered_country.as_ref().and_then(|c| c.iso_code),
        ]
        .into_iter()
        .flatten()
        .find_map(normalize_country)
    }

    /// The autonomous system number.
    pub(crate) fn asn(&self) -> Option<u32> {
        self.autonomous_system_number
    }

    /// The city name (English for MaxMind), if present and not empty.
    pub(crate) fn city(&self) -> Option<String> {
        let name = match self.city.as_ref()? {
            City::Name(name) => name,
            City::Names { names } => names.en.as_ref()?,
            City::Other(_) => return None,
        };
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_owned())
    }

    /// The ISO 3166-2 code of the largest subdivision, `"US-CA"`: only from a
    /// record that also has its geolocated country, so the two always agree.
    pub(crate) fn region(&self) -> Option<String> {
        let Some(Subdivisions::List(list)) = &self.subdivisions else {
            return None;
        };
        let country = self
            .country
            .as_ref()?
            .iso_code
            .and_then(normalize_country)?;
        let code = normalize_subdivision(list.first()?.iso_code.as_deref()?)?;
        Some(format!("{country}-{code}"))
    }
}

/// `"ca"` → `"CA"`: ISO 3166-2 subdivision codes are 1–3 letters or digits
/// after the country; anything else → `None`.
pub(crate) fn normalize_subdivision(code: &str) -> Option<String> {
    let code = code.trim();
    ((1..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_ascii_uppercase())
}

/// `"us"` / `" US "` → `"US"`; anything but two ASCII letters → `None`.
fn normalize_country(code: &str) -> Option<String> {
    let code = code.trim();
    (code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| code.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::{normalize_country, normalize_subdivision};

    #[test]
    fn country_codes_are_normalized() {
        assert_eq!(normalize_country("us").as_deref(), Some("US"));
        assert_eq!(normalize_country(" De ").as_deref(), Some("DE"));
        assert_eq!(normalize_country(""), None);
        assert_eq!(normalize_country("USA"), None);
        assert_eq!(normalize_country("1A"), None);
    }

    #[test]
    fn subdivision_codes_are_normalized() {
        assert_eq!(normalize_subdivision("ca").as_deref(), Some("CA"));
        assert_eq!(normalize_subdivision("13").as_deref(), Some("13"));
        assert_eq!(normalize_subdivision("").as_deref(), None);
        assert_eq!(normalize_subdivision("CAL1"), None);
        assert_eq!(normalize_subdivision("C-A"), None);
    }
}
