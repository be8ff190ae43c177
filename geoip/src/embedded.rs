//! The country database built into the binary, so a gateway started without
//! `--geoip` still knows every agent's country. Source, licence and how to refresh it
//! are in `data/README.md` at the top of the repository.

/// The `@ip-location-db/geo-whois-asn-country-mmdb` IPv4+IPv6 database (layout:
/// top-level `country_code`).
pub(crate) const DATABASE: &[u8] = include_bytes!("../../data/geo-whois-asn-country.mmdb");

/// How [`GeoIp::describe`](crate::GeoIp::describe) names the embedded database.
pub(crate) const NAME: &str = "embedded ip-location-db geo-whois-asn-country";
