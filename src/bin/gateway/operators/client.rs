//! The operators' CLI's client of one gateway's `/api/v1`: one call with a
//! bounded answer and the API's refusal as an error, and the paths and query
//! strings the command groups build.

use super::Api;
use anyhow::{bail, Context};
use serde_json::Value;
use std::time::Duration;

/// How long one API call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read from the API (a page of 1000 accounts is far less).
const MAX_ANSWER: usize = 16 << 20;

/// A client of one gateway's API.
pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `--admin-url`, with `--admin-token` if given.
    pub(super) fn new(api: &Api) -> anyhow::Result<Client> {
        let base = api.admin_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--admin-url {base:?}: an http:// or https:// URL, e.g. http://127.0.0.1:9090");
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: format!("{base}/api/v1"),
            token: api.admin_token.clone().filter(|token| !token.is_empty()),
        })
    }

    /// `method path` with `body`: the answer's JSON, or the API's refusal as
    /// an error (status, kind, field, message).
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let method: reqwest::Method = method.parse().context("method")?;
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == reqwest::Method::POST {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        let answer = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = answer.status();
        let bytes = read_bounded(answer, &url).await?;
        let text = String::from_utf8_lossy(&bytes);
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            bail!("{}", refusal(status.as_u16(), json.as_ref(), &text));
        }
        // `204 No Content` (a delete).
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        json.with_context(|| format!("{url}: the answer is not JSON: {}", text.trim()))
    }
}

/// The body of `answer`, refused past [`MAX_ANSWER`] bytes.
async fn read_bounded(mut answer: reqwest::Response, url: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            bail!("{url}: the answer is larger than {MAX_ANSWER} bytes");
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The words for a refused call: `422 invalid: limits.quota_daily: ...`.
fn refusal(status: u16, json: Option<&Value>, text: &str) -> String {
    let Some(json) = json else {
        return format!("{status}: {}", text.trim());
    };
    let kind = json["error"].as_str().unwrap_or("error");
    let message = json["message"].as_str().unwrap_or("");
    match json["field"].as_str() {
        Some(field) if !message.starts_with(field) => {
            format!("{status} {kind}: {field}: {message}")
        }
        _ => format!("{status} {kind}: {message}"),
    }
}

/// The API path of an account: `/customers/alice` or
/// `/customers/alice/sub-users/ops` for `ops.alice`.
pub(super) fn account_path(name: &str) -> anyhow::Result<String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    };
    match name.split_once('.') {
        None if ok(name) => Ok(format!("/customers/{name}")),
        Some((sub, customer)) if ok(sub) && ok(customer) => {
            Ok(format!("/customers/{customer}/sub-users/{sub}"))
        }
        _ => bail!("{name:?}: a customer name (letters, digits, `_`) or sub.customer"),
    }
}

/// A query string from the pairs that are present.
pub(super) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|value| format!("{key}={}", percent(value)))
        })
        .collect();
    if present.is_empty() {
        String::new()
    } else {
        format!("?{}", present.join("&"))
    }
}

/// The `after`/`limit` query of a paged list.
pub(super) fn page(after: &Option<String>, limit: Option<u32>) -> String {
    query(&[
        ("after", after.clone()),
        ("limit", limit.map(|n| n.to_string())),
    ])
}

/// Percent-encodes everything but unreserved characters.
pub(super) fn percent(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn account_paths_and_queries() {
        assert_eq!(account_path("alice").unwrap(), "/customers/alice");
        assert_eq!(
            account_path("ops.alice").unwrap(),
            "/customers/alice/sub-users/ops"
        );
        assert!(account_path("a/b").is_err() && account_path("a.").is_err());
        assert_eq!(
            query(&[("customer", Some("a b".into())), ("limit", None)]),
            "?customer=a%20b"
        );
        assert_eq!(query(&[("limit", None)]), "");
        assert_eq!(page(&Some("bob".into()), Some(5)), "?after=bob&limit=5");
    }

    #[test]
    fn refusals_name_status_kind_field_and_rule() {
        let body = json!({"error":"invalid","field":"limits.quota_daily","message":"above the customer's"});
        assert_eq!(
            refusal(422, Some(&body), ""),
            "422 invalid: limits.quota_daily: above the customer's"
        );
        assert_eq!(refusal(502, None, "bad gateway\n"), "502: bad gateway");
    }
}
