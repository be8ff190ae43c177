//! Issue 33, the operators' dashboard, in a real browser: the real
//! `gateway --demo` (three agents in the US, Germany and Japan) with an admin
//! token, and headless Debian Chromium driven by Playwright from
//! tests/dashboard/drive.py, which signs in with the demo's one-time link,
//! sees the three countries, creates a customer in the UI and proxies with
//! it, sees its usage and live connection, closes that connection (curl's
//! transfer ends), creates an agent token, bans an exit (it leaves the pool),
//! shows that a page on another origin changes nothing, signs out, and signs
//! in with the read-only token (no write control shown, writes refused).
//! Screenshots of every page land in target/test-artifacts/dashboard/.
//!
//! Beside it, without a browser: the dashboard's sessions, CSRF token and
//! origin checks answer as documented (docs/dashboard.md) to a plain HTTP
//! client that sends what a browser would.

mod common;

use common::{TestGateway, WAIT};
use exitpool_launcher::{Launch, Ready};
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use std::path::PathBuf;
use std::time::Duration;

/// The line the demo prints once everything is ready.
const DEMO_READY: &str = "demo: Ctrl-C to stop";

/// The admin token the test gateway runs with.
const ADMIN_TOKEN: &str = "dashboard-test-admin-token-0123456789";

/// The read-only token it runs with.
const READ_ONLY_TOKEN: &str = "dashboard-test-read-only-token-0123456789";

/// How long the browser script may take in all (it bounds each wait itself).
const BROWSER_BOUND: Duration = Duration::from_secs(180);

/// Where the screenshots go: beside the build, for the run's artefacts.
fn shots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts/dashboard")
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let state = tempfile::tempdir().unwrap();
    let mut demo = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
        ])
        .args(["--admin", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
        .args(["--admin-readonly-token", READ_ONLY_TOKEN])
        .arg("--state-dir")
        .arg(state.path())
        .env("NO_COLOR", "1")
        .start(Ready::line(DEMO_READY), WAIT)
        .await
        .expect("the demo starts");
    let out = demo.stdout();
    let link = out
        .split_whitespace()
        .find(|word| word.contains("/dashboard/signin?once="))
        .unwrap_or_else(|| panic!("no one-time sign-in link in\n{out}"))
        .to_owned();
    let admin = link
        .split("/dashboard/")
        .next()
        .expect("an address before /dashboard/")
        .to_owned();
    let proxy = out
        .lines()
        .find_map(|line| line.strip_prefix("gateway: customers on "))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no customer port in\n{out}"))
        .to_owned();
    let shots = shots_dir();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/drive.py");
    let finished = Launch::new("python3")
        .arg(&script)
        .env("DASHBOARD_SIGNIN", &link)
        .env("DASHBOARD_ADMIN", &admin)
        .env("DASHBOARD_TOKEN", ADMIN_TOKEN)
        .env("DASHBOARD_READONLY", READ_ONLY_TOKEN)
        .env("DASHBOARD_PROXY", &proxy)
        .env("DASHBOARD_SHOTS", &shots)
        .run(BROWSER_BOUND)
        .await
        .expect("the browser script runs (scripts/test installs chromium and playwright)");
    demo.stop(WAIT).await.expect("the demo stops");
    assert!(
        finished.status.success(),
        "the browser script failed:\n{}\n{}\n--- gateway ---\n{}",
        finished.stdout,
        finished.stderr,
        demo.tail()
    );
    assert!(
        finished.stdout.contains("dashboard: all checks passed"),
        "{}",
        finished.stdout
    );
    for page in [
        "overview", "exits", "exit", "customer", "live", "tokens", "signin",
    ] {
        let file = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&file)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
            .len();
        assert!(size > 10_000, "{} is only {size} bytes", file.display());
    }
}

/// One answer: status, the headers that matter here, and the JSON body.
struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    location: Option<String>,
    csp: Option<String>,
    body: serde_json::Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = common::within("a dashboard request", request.send())
        .await
        .expect("the admin port answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let (set_cookie, location, csp) = (
        header(SET_COOKIE.as_str()),
        header("location"),
        header("content-security-policy"),
    );
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        set_cookie,
        location,
        csp,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    }
}

#[tokio::test]
async fn sessions_csrf_and_origins_hold_without_a_browser() {
    let net = TestGateway::start_with(|config| {
        config.admin_token = Some(exitpool::protocol::Secret(ADMIN_TOKEN.into()));
    })
    .await;
    let _agent = net.agent("127.0.0.2").await;
    let base = format!("http://{}", net.admin());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{base}{path}");

    // Signed out: the app sends to the sign-in page, the API refuses; the
    // pages and scripts carry the CSP.
    let app = send(client.get(url("/dashboard/"))).await;
    assert_eq!(app.status, StatusCode::SEE_OTHER);
    assert_eq!(app.location.as_deref(), Some("/dashboard/signin"));
    let signin = send(client.get(url("/dashboard/signin"))).await;
    assert_eq!(signin.status, StatusCode::OK);
    assert!(signin.csp.unwrap().starts_with("default-src 'self'"));
    let script = send(client.get(url("/dashboard/assets/app.js"))).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.csp.is_some());
    assert_eq!(
        send(client.get(url("/dashboard/assets/nope.js")))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let refused = send(client.get(url("/dashboard/api/overview"))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["error"], "signed_out");
    let forwarded = send(client.get(url("/dashboard/api/v1/customers"))).await;
    assert_eq!(
        forwarded.status,
        StatusCode::UNAUTHORIZED,
        "nothing is forwarded without a session"
    );

    // Sign-in: JSON only, the right token only.
    let form = client
        .post(url("/dashboard/api/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"));
    assert_eq!(send(form).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let wrong = send(
        client
            .post(url("/dashboard/api/session"))
            .json(&serde_json::json!({"token": "wrong"})),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.set_cookie.is_none());
    let sign_in = || async {
        let answer = send(
            client
                .post(url("/dashboard/api/session"))
                .json(&serde_json::json!({"token": ADMIN_TOKEN})),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let cookie = answer.set_cookie.expect("a session cookie");
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/dashboard",
            "Max-Age=43200",
        ] {
            assert!(
                cookie.contains(attribute),
                "{attribute} missing from {cookie}"
            );
        }
        assert!(
            !cookie.contains("Secure"),
            "the admin port speaks plain HTTP: {cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_owned();
        (pair, answer.body)
    };
    let (cookie, session) = sign_in().await;
    assert_eq!(session["role"], "admin");
    let csrf = session["csrf"].as_str().unwrap().to_owned();

    // Signed in: the app and the overview with the agent's country.
    assert_eq!(
        send(client.get(url("/dashboard/")).header(COOKIE, &cookie))
            .await
            .status,
        StatusCode::OK
    );
    let overview = send(
        client
            .get(url("/dashboard/api/overview"))
            .header(COOKIE, &cookie),
    )
    .await;
    assert_eq!(overview.status, StatusCode::OK);
    assert_eq!(overview.body["agents"], 1, "{}", overview.body);
    assert_eq!(overview.body["countries"][0][0], "US", "{}", overview.body);
    let exits = send(
        client
            .get(url("/dashboard/api/exits?country=us"))
            .header(COOKIE, &cookie),
    )
    .await;
    assert_eq!(exits.body["total"], 1, "{}", exits.body);
    assert_eq!(
        exits.body["items"][0]["health"], "healthy",
        "{}",
        exits.body
    );
    let none = send(
        client
            .get(url("/dashboard/api/exits?country=DE"))
            .header(COOKIE, &cookie),
    )
    .await;
    assert_eq!(none.body["total"], 0, "{}", none.body);
    for (query, named) in [
        ("limit=0", "limit"),
        ("offset=x", "offset"),
        ("bogus=1", "bogus"),
    ] {
        let bad = send(
            client
                .get(url(&format!("/dashboard/api/exits?{query}")))
                .header(COOKIE, &cookie),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            bad.body["message"].as_str().unwrap().contains(named),
            "{}",
            bad.body
        );
    }

    // Other pages: a foreign Origin, a same-site (another port) fetch, a
    // foreign Host are refused even with the cookie and the CSRF token; a
    // write without the CSRF token is refused.
    let sign_out = || {
        client
            .delete(url("/dashboard/api/session"))
            .header(COOKIE, &cookie)
    };
    let foreign = send(
        sign_out()
            .header("x-csrf-token", &csrf)
            .header("origin", "http://127.0.0.1:1"),
    )
    .await;
    assert_eq!(
        (foreign.status, foreign.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("other_origin"))
    );
    let same_site = send(
        sign_out()
            .header("x-csrf-token", &csrf)
            .header("sec-fetch-site", "same-site"),
    )
    .await;
    assert_eq!(same_site.status, StatusCode::FORBIDDEN);
    let rebound = send(
        sign_out()
            .header("x-csrf-token", &csrf)
            .header("host", "evil.example"),
    )
    .await;
    assert_eq!(rebound.status, StatusCode::MISDIRECTED_REQUEST);
    let no_csrf = send(sign_out().header("origin", &base)).await;
    assert_eq!(
        (no_csrf.status, no_csrf.body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf"))
    );
    let bad_csrf = send(sign_out().header("x-csrf-token", "guess")).await;
    assert_eq!(bad_csrf.status, StatusCode::FORBIDDEN);
    // The page's own origin with the token: signed out, and the old cookie no longer works.
    let out = send(
        sign_out()
            .header("x-csrf-token", &csrf)
            .header("origin", &base)
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    let after = send(
        client
            .get(url("/dashboard/api/overview"))
            .header(COOKIE, &cookie),
    )
    .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(client.get(url("/dashboard/")).header(COOKIE, &cookie))
            .await
            .status,
        StatusCode::SEE_OTHER
    );

    // At most MAX_SESSIONS: the oldest gives way to the newest.
    let (first, _) = sign_in().await;
    let mut last = String::new();
    for _ in 0..exitpool::gateway::admin::dashboard::MAX_SESSIONS {
        last = sign_in().await.0;
    }
    let oldest = send(
        client
            .get(url("/dashboard/api/session"))
            .header(COOKIE, &first),
    )
    .await;
    assert_eq!(oldest.status, StatusCode::UNAUTHORIZED);
    let newest = send(
        client
            .get(url("/dashboard/api/session"))
            .header(COOKIE, &last),
    )
    .await;
    assert_eq!(newest.status, StatusCode::OK);
}
