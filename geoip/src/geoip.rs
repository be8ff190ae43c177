//! [`GeoIp`]: the loaded databases and the merged lookup. Loading happens once at
//! gateway start; after that every lookup is a read-only tree walk plus a small decode,
//! so one `GeoIp` is shared by all tasks (`Arc<GeoIp>`) without a lock.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use maxminddb::{Reader, WithinOptions};

use crate::record::Record;
use crate::{embedded, GeoIpError, Location};

/// How many records [`GeoIp`] decodes per database at load time to learn which fields
/// it carries. Real databases show every field they have within the first few records;
/// the cap keeps startup at a few milliseconds even for a 100 MB city database.
const PROBE_RECORDS: usize = 4096;

/// One or more MaxMind-format databases, consulted in order.
///
/// Cheap to query (no allocation beyond the answer's strings), `Send + Sync`, and never
/// changes after loading: share it behind an `Arc`.
pub struct GeoIp {
    /// In the order given; earlier databases win for each field.
    databases: Vec<Database>,
}

/// One loaded database.
struct Database {
    /// The path, or a label for in-memory and embedded databases; used in logs and errors.
    name: String,
    /// Borrowed for the embedded database, owned for files and `from_bytes`.
    reader: Reader<Cow<'static, [u8]>>,
    /// Which [`Location`] fields this database can supply.
    fields: Fields,
}

/// Which [`Location`] fields a database carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fields {
    country: bool,
    asn: bool,
    city: bool,
    region: bool,
}

impl GeoIp {
    /// The bundled country database (ip-location-db `geo-whois-asn-country`, see
    /// `data/README.md`). It carries countries only: no ASN, no city.
    pub fn embedded() -> GeoIp {
        Self::load(vec![(
            embedded::NAME.to_owned(),
            Cow::Borrowed(embedded::DATABASE),
        )])
        .expect("the embedded GeoIP database is a valid MaxMind DB (checked by the tests)")
    }

    /// Loads database files, for example a country, an ASN and a city database. For each
    /// field of a lookup, the first database (in `paths` order) that knows it wins.
    ///
    /// Each file is read into memory whole.
    ///
    /// # Errors
    ///
    /// [`GeoIpError::NoDatabase`] for an empty list; [`GeoIpError::Read`] or
    /// [`GeoIpError::Invalid`] naming the first file that cannot be used.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<GeoIp, GeoIpError> {
        let mut sources = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let bytes = fs::read(path).map_err(|source| GeoIpError::Read {
                path: path.to_owned(),
                source,
            })?;
            sources.push((path.display().to_string(), Cow::Owned(bytes)));
        }
        Self::load(sources)
    }

    /// Loads databases already in memory, in the same order rules as [`GeoIp::open`].
    ///
    /// # Errors
    ///
    /// [`GeoIpError::NoDatabase`] for an empty list; [`GeoIpError::Invalid`] naming the
    /// first bad one as `in-memory database #N`, counting from 0.
    pub fn from_bytes(databases: Vec<Vec<u8>>) -> Result<GeoIp, GeoIpError> {
        Self::load(
            databases
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| (format!("in-memory database #{i}"), Cow::Owned(bytes)))
                .collect(),
        )
    }

    fn load(sources: Vec<(String, Cow<'static, [u8]>)>) -> Result<GeoIp, GeoIpError> {
        if sources.is_empty() {
            return Err(GeoIpError::NoDatabase);
        }
        let databases = sources
            .into_iter()
            .map(|(name, bytes)| Database::new(name, bytes))
            .collect::<Result<_, _>>()?;
        Ok(GeoIp { databases })
    }

    /// Where `ip` is: each field comes from the first database that has it. Addresses no
    /// database covers (private ranges, loopback in real databases) give
    /// `Location::default()`; that is an answer, not an error.
    ///
    /// IPv4 addresses work in IPv6 databases, and IPv4-mapped IPv6 addresses
    /// (`::ffff:192.0.2.1`, as a dual-stack socket reports them) are looked up as IPv4.
    /// A record that cannot be decoded counts as no data for that database.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let ip = ip.to_canonical();
        let mut location = Location::default();
        for database in &self.databases {
            database.fill(ip, &mut location);
            if location.is_complete() {
                break;
            }
        }
        location
    }

    /// Whether any loaded database carries countries.
    ///
    /// This and [`has_asn`](Self::has_asn) / [`has_city`](Self::has_city) are decided
    /// once at load time, per database: from the metadata `database_type` when it is a
    /// MaxMind or DB-IP product name (`GeoLite2-City` → country and city, `GeoLite2-ASN`
    /// → ASN, ...), and otherwise (and additionally) by decoding the first 4096 records
    /// and noting which fields appear.
    pub fn has_country(&self) -> bool {
        self.databases.iter().any(|db| db.fields.country)
    }

    /// Whether any loaded database carries autonomous system numbers; see
    /// [`has_country`](Self::has_country) for how this is decided.
    pub fn has_asn(&self) -> bool {
        self.databases.iter().any(|db| db.fields.asn)
    }

    /// Whether any loaded database carries city names; see
    /// [`has_country`](Self::has_country) for how this is decided.
    pub fn has_city(&self) -> bool {
        self.databases.iter().any(|db| db.fields.city)
    }

    /// Whether any loaded database carries regions (ISO 3166-2 subdivisions);
    /// see [`has_country`](Self::has_country) for how this is decided.
    pub fn has_region(&self) -> bool {
        self.databases.iter().any(|db| db.fields.region)
    }

    /// One line per database for the startup log: name, type, build date, size, IP
    /// version and the fields it supplies.
    pub fn describe(&self) -> Vec<String> {
        self.databases
            .iter()
            .map(|db| {
                let meta = db.reader.metadata();
                format!(
                    "{}: type {:?}, built {}, {} nodes, IPv{}, fields: {}",
                    db.name,
                    meta.database_type,
                    utc_date(meta.build_epoch),
                    meta.node_count,
                    meta.ip_version,
                    db.fields,
                )
            })
            .collect()
    }
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.databases.iter().map(|db| &db.name))
            .finish()
    }
}

impl Database {
    fn new(name: String, bytes: Cow<'static, [u8]>) -> Result<Database, GeoIpError> {
        let reader = Reader::from_source(bytes).map_err(|source| GeoIpError::Invalid {
            database: name.clone(),
            source,
        })?;
        let fields = Fields::from_type(&reader.metadata().database_type) | Fields::probe(&reader);
        Ok(Database {
            name,
            reader,
            fields,
        })
    }

    /// Fills the fields of `location` that are still empty from this database's record.
    fn fill(&self, ip: IpAddr, location: &mut Location) {
        // An error here is an IPv6 address in an IPv4-only database: no data.
        let Ok(result) = self.reader.lookup(ip) else {
            return;
        };
        let Ok(Some(record)) = result.decode::<Record<'_>>() else {
            return;
        };
        if location.country.is_none() {
            location.country = record.country();
        }
        if location.asn.is_none() {
            location.asn = record.asn();
        }
        if location.city.is_none() {
            location.city = record.city();
        }
        if location.region.is_none() {
            location.region = record.region();
        }
    }
}

impl Fields {
    const ALL: Fields = Fields {
        country: true,
        asn: true,
        city: true,
        region: true,
    };

    /// What a MaxMind (`GeoIP2-*`, `GeoLite2-*`) or DB-IP (`DBIP-*`) product name
    /// promises; nothing for other names, which the probe then decides.
    fn from_type(database_type: &str) -> Fields {
        let Some(product) = ["GeoIP2-", "GeoLite2-", "DBIP-"]
            .iter()
            .find_map(|vendor| database_type.strip_prefix(vendor))
        else {
            return Fields::default();
        };
        match product.split('-').next().unwrap_or_default() {
            "Country" => Fields {
                country: true,
                ..Fields::default()
            },
            "City" => Fields {
                country: true,
                city: true,
                region: true,
                asn: false,
            },
            "Enterprise" => Fields::ALL,
            "ASN" | "ISP" => Fields {
                asn: true,
                ..Fields::default()
            },
            _ => Fields::default(),
        }
    }

    /// Which fields the first [`PROBE_RECORDS`] records actually carry.
    fn probe(reader: &Reader<Cow<'static, [u8]>>) -> Fields {
        let mut found = Fields::default();
        let Ok(networks) = reader.networks(WithinOptions::default()) else {
            return found;
        };
        for item in networks.take(PROBE_RECORDS) {
            let Ok(Some(record)) = item.and_then(|result| result.decode::<Record<'_>>()) else {
                continue;
            };
            found.country |= record.country().is_some();
            found.asn |= record.asn().is_some();
            found.city |= record.city().is_some();
            found.region |= record.region().is_some();
            if found == Fields::ALL {
                break;
            }
        }
        found
    }
}

impl std::ops::BitOr for Fields {
    type Output = Fields;

    fn bitor(self, other: Fields) -> Fields {
        Fields {
            country: self.country || other.country,
            asn: self.asn || other.asn,
            city: self.city || other.city,
            region: self.region || other.region,
        }
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.country, "country"),
            (self.asn, "asn"),
            (self.city, "city"),
            (self.region, "region"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// `YYYY-MM-DD` (UTC) for a Unix timestamp, via the days-to-civil-date conversion of
/// the proleptic Gregorian calendar (400-year eras of 146,097 days, years starting in
/// March so the leap day comes last).
fn utc_date(epoch_seconds: u64) -> String {
    let days = i64::try_from(epoch_seconds / 86_400).unwrap_or(i64::MAX / 2);
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::{utc_date, Fields};

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_781_725_900), "2026-06-17");
        assert_eq!(utc_date(4_107_542_399), "2100-02-28");
    }

    #[test]
    fn product_names() {
        let city = Fields::from_type("GeoLite2-City");
        assert!(city.country && city.city && city.region && !city.asn);
        assert_eq!(Fields::from_type("GeoIP2-Enterprise"), Fields::ALL);
        assert!(Fields::from_type("GeoLite2-ASN").asn);
        assert!(Fields::from_type("DBIP-Country-Lite").country);
        assert_eq!(Fields::from_type("country ipvAll"), Fields::default());
        assert_eq!(Fields::from_type("GeoIP2-Anonymous-IP"), Fields::default());
    }

    #[test]
    fn fields_display() {
        assert_eq!(Fields::default().to_string(), "none");
        assert_eq!(Fields::ALL.to_string(), "country, asn, city, region");
    }
}
