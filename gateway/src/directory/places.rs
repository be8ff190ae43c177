//! Where routable exits are, counted per country (and region, city and ASN
//! within it),
//! for `GET /inventory`. Counting scans the directory, so a count is kept and
//! served for up to [`MAX_AGE`] before the next scan.

use super::AgentDirectory;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale a served count may be.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Exits per place, counted from the directory.
#[derive(Debug, Default)]
pub struct Counts {
    /// Routable exits in the country.
    pub exits: usize,
    /// By region (ISO 3166-2, `US-CA`).
    pub regions: BTreeMap<String, usize>,
    /// By city (normalised name).
    pub cities: BTreeMap<String, usize>,
    /// By autonomous system.
    pub asns: BTreeMap<u32, usize>,
}

/// Exits per country (ISO code).
pub type ByCountry = BTreeMap<String, Counts>;

/// The pool counted once, shared by every request until it is too old.
#[derive(Debug, Default)]
pub struct PlacesCache {
    snapshot: Mutex<Option<(Instant, Arc<ByCountry>)>>,
}

impl PlacesCache {
    /// Exits per country, counted now or at most [`MAX_AGE`] ago.
    pub fn counts(&self, directory: &dyn AgentDirectory) -> Arc<ByCountry> {
        let mut slot = self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((taken, counts)) = slot.as_ref() {
            if taken.elapsed() < MAX_AGE {
                return counts.clone();
            }
        }
        let mut by_country: BTreeMap<String, Counts> = BTreeMap::new();
        for agent in directory.agents() {
            if !agent.is_routable() {
                continue;
            }
            let location = &agent.location;
            let Some(country) = &location.country else {
                continue;
            };
            let counts = by_country.entry(country.clone()).or_default();
            counts.exits += 1;
            if let Some(region) = &location.region {
                *counts.regions.entry(region.clone()).or_default() += 1;
            }
            if let Some(city) = &location.city {
                *counts.cities.entry(city.clone()).or_default() += 1;
            }
            if let Some(asn) = location.asn {
                *counts.asns.entry(asn).or_default() += 1;
            }
        }
        let counts = Arc::new(by_country);
        *slot = Some((Instant::now(), counts.clone()));
        counts
    }
}
