//! IP address → country / ASN / city / region, read from MaxMind-format (`.mmdb`) databases.
//!
//! The gateway looks up each agent's observed address once, when the agent connects,
//! and files the agent under that country (and ASN / city / region where the loaded
//! databases carry them) so customers can target exits with `-country-us` and friends.
//!
//! - [`GeoIp`] (`geoip.rs`): one or more loaded databases and the merged [`GeoIp::lookup`].
//! - [`Location`] (`location.rs`): what a lookup answers.
//! - [`GeoIpError`] (`error.rs`): why a database could not be loaded, naming it.
//! - `record.rs`: the one serde shape that reads the MaxMind and ip-location-db layouts.
//! - [`continent`]: continents by country, for `-continent-eu` targeting.
//! - `embedded.rs`: the bundled CC0/CC BY country database (see `data/README.md`).
//! - [`testdb`] (feature `test-db`): builds small databases in memory for tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod continent;
mod embedded;
mod error;
mod geoip;
mod location;
mod record;
#[cfg(any(test, feature = "test-db"))]
pub mod testdb;
#[cfg(test)]
mod tests;

pub use error::GeoIpError;
pub use geoip::GeoIp;
pub use location::Location;
