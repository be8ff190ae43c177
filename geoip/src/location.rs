//! [`Location`]: the answer to one lookup, merged across all loaded databases.

/// Where an IP address is, as far as the loaded databases know. Every field is
/// optional: an address no database covers gives `Location::default()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code, always upper case (`"US"`, `"DE"`). For
    /// MaxMind databases this is `country.iso_code`, falling back to
    /// `registered_country.iso_code` (the country of the ISP that registered the
    /// block) when the database has no geolocated country for it.
    pub country: Option<String>,
    /// Autonomous system number of the network the address belongs to.
    pub asn: Option<u32>,
    /// City name in English, as the database spells it.
    pub city: Option<String>,
    /// ISO 3166-2 subdivision (state, province, region) as a full code, upper
    /// case: `"US-CA"`, `"DE-BY"`. From MaxMind's first (largest) entry of
    /// `subdivisions`, joined to the same record's country; ip-location-db
    /// databases carry only subdivision names, so never this.
    pub region: Option<String>,
}

impl Location {
    /// Whether every field is known, so later databases have nothing to add.
    pub(crate) fn is_complete(&self) -> bool {
        self.country.is_some() && self.asn.is_some() && self.city.is_some() && self.region.is_some()
    }
}
