//! `GET /inventory` on the customer port: which countries, regions, cities and
//! ASNs have exits right now, and roughly how many, for an authenticated
//! customer (Basic credentials in `Authorization`, or `Proxy-Authorization`, or
//! an allow-listed source), restricted to the account's allowed countries.
//! `GET /usage`, with the same credentials, answers the account's own usage
//! and quotas from the control plane's history ([`usage`]).
//!
//! Counts are bucketed (`"1+"`, `"5+"`, `"10+"`, ...: the bucket's lower bound),
//! never exact, so the answer is no census of volunteers; and the pool is
//! counted at most once per [`crate::directory::places::MAX_AGE`], so asking
//! often costs a map lookup, not a scan of the directory.

use super::response::{self, Body};
use super::session::{self, Arrival};
use crate::abuse::AddressSlot;
use crate::error::ProxyError;
use crate::shared::{Accounting, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};

/// The path customers ask.
pub const PATH: &str = "/inventory";
/// Their own usage and quotas ([`usage`]).
pub const USAGE_PATH: &str = "/usage";
/// Every path answered here.
pub const PATHS: [&str; 2] = [PATH, USAGE_PATH];
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
    if request.uri().path() == USAGE_PATH {
        return usage(&grant.user, &shared.accounting).await;
    }
    let counts = shared
        .routing
        .places
        .counts(shared.routing.exits.directory());
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
    Ok(json_answer_cached(
        hyper::StatusCode::OK,
        &body,
        "private, max-age=5",
    ))
}

/// A JSON answer that no shared cache keeps.
fn json_answer(status: hyper::StatusCode, body: &serde_json::Value) -> Response<Body> {
    json_answer_cached(status, body, "private, no-store")
}

/// A JSON answer with `cache_control` as its `Cache-Control`.
fn json_answer_cached(
    status: hyper::StatusCode,
    body: &serde_json::Value,
    cache_control: &'static str,
) -> Response<Body> {
    let mut answer = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    answer
}

/// `GET /usage`: the authenticated account's bytes today, this month and
/// over its life (UTC calendar periods, from the control plane's history;
/// a customer's include its sub-users'), each quota of it (and, for a
/// sub-user, of its customer) with what is left and when it resets, and
/// its live connections. The last second or so not yet written to the
/// history is not in the figures. One store query, bounded by
/// [`crate::control_link::DB_TIMEOUT`]: this is the customer's own
/// question, not a proxied connection.
async fn usage(user: &str, accounting: &Accounting) -> Result<Response<Body>, ProxyError> {
    use exitpool_control::period::{day_start, next_month_start, now, rfc3339, DAY};
    use exitpool_control::AccountRef;
    use hyper::StatusCode;
    let Some(link) = accounting.accounts.control() else {
        return Ok(json_answer(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no_history", "message": "this gateway keeps no usage history (it has no control-plane store)"}),
        ));
    };
    let who = match user.split_once('.') {
        Some((sub, customer)) => AccountRef::SubUser { customer, sub },
        None => AccountRef::Customer(user),
    };
    let at = now();
    let counted = async {
        let usage = link.store().period_usage(who, at).await?;
        let parent = match who {
            AccountRef::SubUser { customer, .. } => Some((
                customer,
                link.store()
                    .period_usage(AccountRef::Customer(customer), at)
                    .await?,
            )),
            AccountRef::Customer(_) => None,
        };
        Ok::<_, exitpool_control::Error>((usage, parent))
    };
    let (own, parent) = match tokio::time::timeout(crate::control_link::DB_TIMEOUT, counted).await {
        Ok(Ok(counted)) => counted,
        Ok(Err(exitpool_control::Error::NotFound { .. })) => {
            return Ok(json_answer(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no_history", "message": "this account has no usage history (its accounts come from a file)"}),
            ))
        }
        Ok(Err(_)) | Err(_) => {
            return Ok(json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "history_unavailable", "message": "the usage history cannot be read right now; try again shortly"}),
            ))
        }
    };
    let mut quotas = Vec::new();
    let accounts = std::iter::once((user, own)).chain(parent);
    for (name, used) in accounts {
        let Some(entry) = link.entry(name) else {
            continue;
        };
        let limits = &entry.limits;
        for (period, quota, used, resets) in [
            (
                "daily",
                limits.quota_daily,
                used.today,
                Some(day_start(at) + DAY),
            ),
            (
                "monthly",
                limits.quota_monthly,
                used.month,
                Some(next_month_start(at)),
            ),
            ("lifetime", limits.quota_lifetime, used.lifetime, None),
        ] {
            let Some(quota) = quota else { continue };
            quotas.push(serde_json::json!({
                "account": name,
                "period": period,
                "quota": quota,
                "used": used,
                "left": quota.saturating_sub(used),
                "resets_at": resets.map(rfc3339),
            }));
        }
    }
    let elsewhere = accounting.limits.elsewhere(user).connections;
    let body = serde_json::json!({
        "account": user,
        "today": own.today,
        "month": own.month,
        "lifetime": own.lifetime,
        "bytes": "up plus down; UTC calendar periods; the last second or so is not counted yet",
        "quotas": quotas,
        "live_connections": u64::from(accounting.limits.live(user)) + u64::from(elsewhere),
    });
    Ok(json_answer(StatusCode::OK, &body))
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
