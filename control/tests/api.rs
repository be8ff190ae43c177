//! The `/api/v1` router served on 127.0.0.1:0 over a SQLite store, driven by
//! a real HTTP client: tokens (admin, read-only, none), every resource, the
//! error bodies and statuses, CSV, and the OpenAPI document against the
//! router's routes.

mod common;

use common::{client, serve, Fresh, ADMIN, READER, TEST_BOUND};
use exitpool_control::period::parse_time;
use exitpool_control::store::UsageRecord;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Sends `method path` with `token` and an optional JSON body; answers the
/// status and the body (JSON when it parses, else a string).
async fn call(
    served: &common::Served,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, served.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

async fn admin(
    served: &common::Served,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call(served, Some(ADMIN), method, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api() {
    tokio::time::timeout(TEST_BOUND, async {
        let mut fresh = Fresh::sqlite();
        let served = serve(fresh.store().await).await;
        let (status, body) = call(&served, None, Method::GET, "/api/v1/customers", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "unauthorized");
        let (status, _) = call(
            &served,
            Some("wrong"),
            Method::GET,
            "/api/v1/customers",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(
            &served,
            Some(READER),
            Method::GET,
            "/api/v1/customers",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(
            &served,
            Some(READER),
            Method::POST,
            "/api/v1/customers",
            Some(json!({"name": "alice"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "forbidden");
        // Nothing was created by the refused write.
        let (_, body) = admin(&served, Method::GET, "/api/v1/customers", None).await;
        assert_eq!(body["items"], json!([]));
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_and_sub_users() {
    tokio::time::timeout(TEST_BOUND, async {
        let mut fresh = Fresh::sqlite();
        let served = serve(fresh.store().await).await;
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/customers",
            Some(json!({"name": "alice", "limits": {"quota_daily": 1000, "max_connections": 10, "allow_ips": ["203.0.113.7"]}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["account"]["name"], "alice");
        assert_eq!(body["account"]["limits"]["allow_ips"], json!(["203.0.113.7/32"]));
        let password = body["password"].as_str().expect("generated password");
        assert!(password.len() >= 24);
        assert!(body["account"].get("password_hash").is_none());

        let (status, body) = admin(&served, Method::POST, "/api/v1/customers", Some(json!({"name": "alice"}))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!((body["error"].as_str(), body["field"].as_str()), (Some("conflict"), Some("name")));

        let (status, body) = admin(&served, Method::POST, "/api/v1/customers", Some(json!({"name": "a-b"}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!((body["error"].as_str(), body["field"].as_str()), (Some("invalid"), Some("name")));
        assert!(body["message"].as_str().unwrap().contains("targeting"), "{body}");

        // Bodies that do not parse: the field is named where there is one.
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/customers",
            Some(json!({"name": "bob", "limits": {"quota_daily": "lots"}})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["field"], "limits.quota_daily", "{body}");
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/customers",
            Some(json!({"name": "bob", "limits": {"quota_dialy": 5}})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body["message"].as_str().unwrap().contains("quota_dialy"), "{body}");
        let response = client()
            .post(served.url("/api/v1/customers"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");

        // Sub-users: within the customer's limits, or 422 naming the field.
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/customers/alice/sub-users",
            Some(json!({"name": "ops", "password": "chosen", "limits": {"quota_daily": 500}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["account"]["name"], "ops.alice");
        assert!(body.get("password").is_none());
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/customers/alice/sub-users",
            Some(json!({"name": "big", "limits": {"quota_daily": 5000}})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body, json!({"error": "invalid", "field": "limits.quota_daily", "message": "limits.quota_daily: 5000 is above the customer's 1000"}));
        let (status, body) = admin(
            &served,
            Method::PATCH,
            "/api/v1/customers/alice/sub-users/ops",
            Some(json!({"limits": {"max_connections": 11}})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["field"], "limits.max_connections");
        let (status, body) = admin(
            &served,
            Method::PATCH,
            "/api/v1/customers/alice/sub-users/ops",
            Some(json!({"limits": {"max_connections": 3}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["limits"]["max_connections"], 3);
        assert_eq!(body["limits"]["quota_daily"], 500);
        let (status, body) = admin(&served, Method::GET, "/api/v1/customers/alice/sub-users", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["items"][0]["name"], "ops.alice");
        let (status, body) = admin(&served, Method::POST, "/api/v1/customers/alice/sub-users/ops/disable", None).await;
        assert_eq!((status, &body["enabled"]), (StatusCode::OK, &json!(false)));
        let (_, body) = admin(&served, Method::POST, "/api/v1/customers/alice/sub-users/ops/enable", None).await;
        assert_eq!(body["enabled"], true);
        let (status, body) = admin(&served, Method::POST, "/api/v1/customers/alice/sub-users/ops/rotate-password", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "ops.alice");
        assert!(body["password"].as_str().unwrap().len() >= 24);
        let (status, _) = admin(&served, Method::GET, "/api/v1/customers/alice/sub-users/ops", None).await;
        assert_eq!(status, StatusCode::OK);

        // Customers: show, patch, disable, rotate, list pages, delete.
        // A customer's limits may not shrink below a sub-user's.
        let (status, body) = admin(
            &served,
            Method::PATCH,
            "/api/v1/customers/alice",
            Some(json!({"limits": {"quota_monthly": 30000, "countries": ["de"]}})),
        )
        .await;
        assert_eq!((status, body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limits.countries")));
        assert!(body["message"].as_str().unwrap().contains("ops.alice"), "{body}");
        let (status, body) = admin(
            &served,
            Method::PATCH,
            "/api/v1/customers/alice",
            Some(json!({"limits": {"quota_monthly": 30000}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["limits"]["quota_monthly"], 30000);
        assert_eq!(body["limits"]["quota_daily"], 1000);
        let (_, body) = admin(&served, Method::POST, "/api/v1/customers/alice/disable", None).await;
        assert_eq!(body["enabled"], false);
        let (_, body) = admin(&served, Method::POST, "/api/v1/customers/alice/enable", None).await;
        assert_eq!(body["enabled"], true);
        let (_, body) = admin(&served, Method::POST, "/api/v1/customers/alice/rotate-password", None).await;
        assert_ne!(body["password"].as_str().unwrap(), password);
        for name in ["bob", "carol"] {
            admin(&served, Method::POST, "/api/v1/customers", Some(json!({"name": name}))).await;
        }
        let (_, page) = admin(&served, Method::GET, "/api/v1/customers?limit=2", None).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert_eq!(page["next"], "bob");
        let (_, page) = admin(&served, Method::GET, "/api/v1/customers?limit=2&after=bob", None).await;
        assert_eq!(page["items"][0]["name"], "carol");
        assert!(page.get("next").is_none());
        let (status, body) = admin(&served, Method::GET, "/api/v1/customers?limit=5000", None).await;
        assert_eq!((status, body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));
        let (status, _) = admin(&served, Method::GET, "/api/v1/customers?limit=x", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _) = admin(&served, Method::DELETE, "/api/v1/customers/alice", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) = admin(&served, Method::GET, "/api/v1/customers/alice", None).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (status, _) = admin(&served, Method::GET, "/api/v1/customers/alice/sub-users/ops", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens() {
    tokio::time::timeout(TEST_BOUND, async {
        let mut fresh = Fresh::sqlite();
        let store = fresh.store().await;
        let served = serve(store.clone()).await;
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"label": "volunteers", "max_agents": 10})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let secret = body["secret"].as_str().unwrap().to_owned();
        let id = body["token"]["id"].as_str().unwrap().to_owned();
        assert_eq!(secret.len(), 64);
        let (_, list) = admin(&served, Method::GET, "/api/v1/tokens", None).await;
        assert_eq!(list["items"][0]["id"], id.as_str());
        assert!(
            !list.to_string().contains(&secret),
            "a listing never shows a secret"
        );
        let (status, body) = admin(
            &served,
            Method::POST,
            &format!("/api/v1/tokens/{id}/revoke"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["revoked_at"].is_string());
        assert!(
            store
                .token_by_secret(&secret)
                .await
                .unwrap()
                .unwrap()
                .revoked
        );
        let (status, _) = admin(&served, Method::POST, "/api/v1/tokens/ffff/revoke", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = admin(
            &served,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"label": ""})),
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("label"))
        );
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_history_in_json_and_csv() {
    tokio::time::timeout(TEST_BOUND, async {
        let mut fresh = Fresh::sqlite();
        let store = fresh.store().await;
        let served = serve(store.clone()).await;
        admin(&served, Method::POST, "/api/v1/customers", Some(json!({"name": "acme", "limits": {"quota_daily": 100}}))).await;
        admin(&served, Method::POST, "/api/v1/customers/acme/sub-users", Some(json!({"name": "ops"}))).await;
        let at = |t: &str| parse_time("t", t).unwrap();
        store
            .record_batch(&[
                UsageRecord {
                    at: at("2026-12-07T10:15:00Z"),
                    account: "acme".into(),
                    exit: Some("dev1".into()),
                    target: Some("img.example.com".into()),
                    bytes_up: 10,
                    bytes_down: 90,
                    connections: 2,
                    error: None,
                },
                UsageRecord {
                    at: at("2026-12-07T11:15:00Z"),
                    account: "ops.acme".into(),
                    exit: Some("dev1".into()),
                    connections: 1,
                    error: Some("no_exit".into()),
                    ..UsageRecord::default()
                },
            ])
            .await
            .unwrap();
        let (status, body) = admin(
            &served,
            Method::GET,
            "/api/v1/customers/acme/usage?from=2026-12-07T10:00:00Z&to=2026-12-07T12:00:00Z&step=hour",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["buckets"][0]["bytes_down"], 90);
        assert_eq!(body["buckets"][1]["errors"]["no_exit"], 1);
        let (_, body) = admin(&served, Method::GET, "/api/v1/customers/ops.acme/usage?from=2026-12-07&to=2026-12-08&step=day", None).await;
        assert_eq!(body["buckets"][0]["connections"], 1);
        assert_eq!(body["buckets"][0]["bytes_down"], 0);

        let csv = client()
            .get(served.url("/api/v1/customers/acme/usage?from=2026-12-07T10:00:00Z&to=2026-12-07T12:00:00Z"))
            .bearer_auth(READER)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), StatusCode::OK);
        assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        assert_eq!(
            csv.text().await.unwrap(),
            "start,bytes_up,bytes_down,connections,errors\n\
             2026-12-07T10:00:00Z,10,90,2,\n\
             2026-12-07T11:00:00Z,0,0,1,no_exit=1\n"
        );

        let (_, body) = admin(&served, Method::GET, "/api/v1/customers/acme/domains?day=2026-12-07", None).await;
        assert_eq!(body["domains"], json!([{"domain": "example.com", "bytes": 100}]));
        let (_, body) = admin(&served, Method::GET, "/api/v1/exits/dev1/usage?from=2026-12-07&to=2026-12-08", None).await;
        assert_eq!(body["days"], json!([{"day": "2026-12-07", "bytes": 100, "streams": 3}]));
        let csv = client()
            .get(served.url("/api/v1/exits/dev1/usage?from=2026-12-07&to=2026-12-08"))
            .bearer_auth(ADMIN)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(csv, "day,bytes,streams\n2026-12-07,100,3\n");

        let (status, body) = admin(&served, Method::GET, "/api/v1/customers/acme/quota", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["usage"]["lifetime"], 100);

        let (status, body) = admin(&served, Method::GET, "/api/v1/customers/acme/usage?from=soon", None).await;
        assert_eq!((status, body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("from")));
        let (status, _) = admin(&served, Method::GET, "/api/v1/customers/acme/usage?step=week", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = admin(&served, Method::GET, "/api/v1/customers/ghost/usage", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await
    .expect("in time");
}

/// Every route of the router is in the OpenAPI document and every operation
/// of the document is served; the document holds the routes the control plane
/// promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    tokio::time::timeout(TEST_BOUND, async {
        let mut fresh = Fresh::sqlite();
        let served = serve(fresh.store().await).await;
        let (status, doc) = call(
            &served,
            Some(READER),
            Method::GET,
            "/api/v1/openapi.json",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            doc,
            serde_json::to_value(exitpool_control::api::openapi()).unwrap()
        );
        let paths = doc["paths"].as_object().expect("paths");
        let mut operations = Vec::new();
        for (path, item) in paths {
            for method in ["get", "post", "patch", "delete", "put"] {
                if item.get(method).is_some() {
                    operations.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        let promised = [
            "GET /api/v1/customers",
            "POST /api/v1/customers",
            "GET /api/v1/customers/{name}",
            "PATCH /api/v1/customers/{name}",
            "DELETE /api/v1/customers/{name}",
            "POST /api/v1/customers/{name}/disable",
            "POST /api/v1/customers/{name}/enable",
            "POST /api/v1/customers/{name}/rotate-password",
            "GET /api/v1/customers/{name}/sub-users",
            "POST /api/v1/customers/{name}/sub-users",
            "GET /api/v1/customers/{name}/sub-users/{sub}",
            "PATCH /api/v1/customers/{name}/sub-users/{sub}",
            "DELETE /api/v1/customers/{name}/sub-users/{sub}",
            "POST /api/v1/customers/{name}/sub-users/{sub}/disable",
            "POST /api/v1/customers/{name}/sub-users/{sub}/enable",
            "POST /api/v1/customers/{name}/sub-users/{sub}/rotate-password",
            "GET /api/v1/customers/{name}/usage",
            "GET /api/v1/customers/{name}/domains",
            "GET /api/v1/customers/{name}/quota",
            "GET /api/v1/tokens",
            "POST /api/v1/tokens",
            "POST /api/v1/tokens/{id}/revoke",
            "GET /api/v1/exits/{id}/usage",
            "GET /api/v1/openapi.json",
        ];
        for route in promised {
            assert!(
                operations.iter().any(|o| o == route),
                "{route} is not in the document"
            );
        }
        // The router is built only from the documented handlers (utoipa-axum's
        // `routes!`), so each served route is documented; check the other way
        // by calling each documented operation: none reaches the fallback or
        // answers 405.
        for operation in &operations {
            let (method, path) = operation.split_once(' ').unwrap();
            let concrete = path
                .replace("{name}", "nobody")
                .replace("{sub}", "nobody")
                .replace("{id}", "nobody");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let body = matches!(method, Method::POST | Method::PATCH).then(|| json!({}));
            let (status, body) = admin(&served, method, &concrete, body).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{operation}");
            assert_ne!(
                body["error"], "no_route",
                "{operation} is documented but not routed"
            );
        }
        // What is not documented is not routed.
        for (method, path) in [
            (Method::GET, "/api/v1/connections"),
            (Method::PUT, "/api/v1/customers"),
        ] {
            let (status, body) = admin(&served, method.clone(), path, None).await;
            assert!(
                body["error"] == "no_route" || status == StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {status} {body}"
            );
        }
    })
    .await
    .expect("in time");
}
