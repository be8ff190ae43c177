//! Builds small MaxMind-format databases in memory, so tests of the gateway (and of
//! this crate) go through the real lookup path instead of a mock: for example
//! 127.0.0.2 → `US`, 127.0.0.3 → `DE` for agents bound to those loopback addresses.
//!
//! Only compiled with the `test-db` feature (and for this crate's own tests).
//!
//! ```
//! use exitpool_geoip::testdb::{build, Layout, TestEntry};
//! use exitpool_geoip::GeoIp;
//!
//! let db = build(
//!     Layout::IpLocationDb,
//!     &[
//!         TestEntry::host("127.0.0.2".parse().unwrap()).country("US"),
//!         TestEntry::host("127.0.0.3".parse().unwrap()).country("DE").asn(64_500),
//!     ],
//! );
//! let geoip = GeoIp::from_bytes(vec![db]).unwrap();
//! assert_eq!(geoip.lookup("127.0.0.3".parse().unwrap()).country.as_deref(), Some("DE"));
//! ```
//!
//! The file is an IPv6 tree (`ip_version` 6) with IPv4 networks at `::/96`, where
//! readers look for them, and the IPv4-mapped (`::ffff:0:0/96`), 6to4 and Teredo ranges
//! aliased to that subtree. Writing is done by the `mmdb-writer` crate.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mmdb_writer::ipnet::IpNet;
use mmdb_writer::{IpVersion, Value, Writer};

/// Which real-world record layout to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// MaxMind GeoIP2 / GeoLite2: `country.iso_code`, `registered_country.iso_code`,
    /// `city.names.en`, `subdivisions[0].iso_code`, `autonomous_system_number`.
    MaxMind,
    /// ip-location-db: top-level `country_code`, `city` (a string) and
    /// `autonomous_system_number`. It has no registered country, so
    /// [`TestEntry::registered_country`] is not written.
    IpLocationDb,
}

/// One network and what the database says about it. Fields left `None` are not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEntry {
    /// Network address and prefix length, e.g. `(127.0.0.2, 32)`. Host bits are ignored.
    pub net: (IpAddr, u8),
    /// Country code, written as given (so tests can feed lower case or junk).
    pub country: Option<String>,
    /// MaxMind's `registered_country.iso_code`; ignored for [`Layout::IpLocationDb`].
    pub registered_country: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// City name (MaxMind: the English name).
    pub city: Option<String>,
    /// MaxMind's `subdivisions[0].iso_code`, the part after the country
    /// (`"CA"` for US-CA), written as given; ignored for [`Layout::IpLocationDb`].
    pub subdivision: Option<String>,
}

impl TestEntry {
    /// A network with no data yet; add some with the builder methods.
    pub fn new(addr: IpAddr, prefix: u8) -> TestEntry {
        TestEntry {
            net: (addr, prefix),
            country: None,
            registered_country: None,
            asn: None,
            city: None,
            subdivision: None,
        }
    }

    /// A single address: `/32` for IPv4, `/128` for IPv6.
    pub fn host(addr: IpAddr) -> TestEntry {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        TestEntry::new(addr, prefix)
    }

    /// Sets the country code.
    pub fn country(mut self, code: impl Into<String>) -> TestEntry {
        self.country = Some(code.into());
        self
    }

    /// Sets MaxMind's registered country code.
    pub fn registered_country(mut self, code: impl Into<String>) -> TestEntry {
        self.registered_country = Some(code.into());
        self
    }

    /// Sets the autonomous system number.
    pub fn asn(mut self, asn: u32) -> TestEntry {
        self.asn = Some(asn);
        self
    }

    /// Sets the city name.
    pub fn city(mut self, name: impl Into<String>) -> TestEntry {
        self.city = Some(name.into());
        self
    }

    /// Sets MaxMind's subdivision code (`"CA"`; the lookup answers `US-CA`
    /// with the entry's country).
    pub fn subdivision(mut self, code: impl Into<String>) -> TestEntry {
        self.subdivision = Some(code.into());
        self
    }

    /// Depth of this network in an IPv6 tree (IPv4 sits under `::/96`).
    fn tree_prefix(&self) -> u8 {
        match self.net.0 {
            IpAddr::V4(_) => 96 + self.net.1,
            IpAddr::V6(_) => self.net.1,
        }
    }
}

/// Builds a complete MaxMind DB file in `layout` from `entries`.
///
/// Where networks nest, the more specific one wins whatever the order of `entries`;
/// between two equal networks the later entry wins. Addresses covered by no entry
/// have no data.
///
/// # Panics
///
/// On a prefix longer than the address (`/33` for IPv4): this is a test helper.
pub fn build(layout: Layout, entries: &[TestEntry]) -> Vec<u8> {
    let mut writer = Writer::builder(layout.database_type())
        .ip_version(IpVersion::V6)
        .languages(["en"])
        .description(&[("en", "exitpool test database")])
        .build();
    let mut sorted: Vec<&TestEntry> = entries.iter().collect();
    sorted.sort_by_key(|entry| entry.tree_prefix()); // stable: later equal entries win
    for entry in sorted {
        let (addr, prefix) = entry.net;
        let net = IpNet::new(addr, prefix)
            .unwrap_or_else(|err| panic!("bad test network {addr}/{prefix}: {err}"));
        writer
            .insert_value(net, layout.record(entry))
            .unwrap_or_else(|err| panic!("cannot insert test network {net}: {err}"));
    }
    writer
        .to_bytes()
        .unwrap_or_else(|err| panic!("cannot write test database: {err}"))
}

impl Layout {
    /// The metadata `database_type`. Deliberately not a MaxMind product name, so
    /// `GeoIp::has_*` must find the fields by probing the records.
    fn database_type(self) -> &'static str {
        match self {
            Layout::MaxMind => "exitpool-test-maxmind",
            Layout::IpLocationDb => "exitpool-test-ip-location-db",
        }
    }

    /// The record for `entry` in this layout.
    fn record(self, entry: &TestEntry) -> Value {
        let mut record = BTreeMap::new();
        let mut put = |key: &str, value: Value| {
            record.insert(key.to_owned(), value);
        };
        let iso_code = |code: &String| Value::map([("iso_code", code.as_str())]);
        match self {
            Layout::MaxMind => {
                if let Some(code) = &entry.country {
                    put("country", iso_code(code));
                }
                if let Some(code) = &entry.registered_country {
                    put("registered_country", iso_code(code));
                }
                if let Some(city) = &entry.city {
                    let names = Value::map([("en", city.as_str())]);
                    put("city", Value::map([("names", names)]));
                }
                if let Some(code) = &entry.subdivision {
                    let subdivision = Value::map([("iso_code", code.as_str())]);
                    put("subdivisions", Value::Array(vec![subdivision]));
                }
            }
            Layout::IpLocationDb => {
                if let Some(code) = &entry.country {
                    put("country_code", Value::from(code.as_str()));
                }
                if let Some(city) = &entry.city {
                    put("city", Value::from(city.as_str()));
                }
            }
        }
        if let Some(asn) = entry.asn {
            put("autonomous_system_number", Value::from(asn));
        }
        Value::Map(record)
    }
}
