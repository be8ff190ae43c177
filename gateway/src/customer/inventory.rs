//! `GET /inventory` on the customer port: which countries, regions, cities and
//! ASNs have exits right now, and roughly how many, for an authenticated
//! customer (Basic credentials in `Authorization`, or `Proxy-Authorization`, or
//! an allow-listed source), restricted to the account's allowed countries.
//!
//! Counts are bucketed (`"1+"`, `"5+"`, `"10+"`, ...: the bucket's lower bound),
//! never exact, so the answer is no census of volunteers; and the pool is
//! counted at most once per [`crate::directory::places::MAX_AGE`], so asking
//! often costs a map lookup, not a scan of the directory.

use super::response::{self, Body};
use super::session::{self, Arrival};
use crate::abuse::AddressSlot;
use crate::error::ProxyError;
use crate::shared::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};

/// The path customers ask.
pub const PATH: &str = "/inventory";
/// Bucket lower bounds: a count is shown as the largest bound it reaches.
const BUCKETS: &[usize] = &[1, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 10_000];

/// A count as its bucket's lower bound, e.g. `"10+"`.
pub fn bucket(count: usize) -> String {
    let bound = BUCKETS
        .iter()
        .rev()
        .find(|bound| count >= **bound)
        .copied()
        .unwrap_or(0);
    format!("{bound}+")
}

/// Answers `GET /inventory`.
pub(crate) async fn inventory(
    request: &Request<hyper::body::Incoming>,
    arrival: &Arrival,
    pending: &AddressSlot,
    shared: &Shared,
) -> Result<Response<Body>, ProxyError> {
    let credentials =
        response::basic_in(request, AUTHORIZATION).or_else(|| response::basic_credentials(request));
    let credentials = credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()));
    let grant = session::authenticate_either(credentials, arrival, pending, shared).await?;
    let counts = shared.places.counts(&*shared.directory);
    let limits = &grant.customer.limits;
    let countries: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .filter(|(country, _)| limits.allows_country(country))
        .map(|(country, counts)| {
            let buckets = |entries: Vec<(String, usize)>| -> serde_json::Value {
                entries
                    .into_iter()
                    .map(|(key, count)| (key, bucket(count).into()))
                    .collect::<serde_json::Map<_, _>>()
                    .into()
            };
            let entry = serde_json::json!({
                "exits": bucket(counts.exits),
                "regions": buckets(counts.regions.iter().map(|(k, v)| (k.clone(), *v)).collect()),
                "cities": buckets(counts.cities.iter().map(|(k, v)| (k.clone(), *v)).collect()),
                "asns": buckets(counts.asns.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            });
            (country.clone(), entry)
        })
        .collect();
    let body = serde_json::json!({
        "countries": countries,
        "counts": "bucketed: each figure is the lower bound of its bucket (1+, 5+, 10+, 25+, ...)",
    });
    let mut answer = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=5"),
    );
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn counts_show_as_their_bucket() {
        assert_eq!(bucket(1), "1+");
        assert_eq!(bucket(4), "1+");
        assert_eq!(bucket(5), "5+");
        assert_eq!(bucket(49), "25+");
        assert_eq!(bucket(12_345), "10000+");
    }
}
