//! The operators' web dashboard on the admin port (`/dashboard/`): static
//! pages compiled into the binary (gateway/assets/dashboard/), cookie
//! sessions opened with the admin token or the read-only token, and the
//! dashboard's own read endpoints; everything the pages change goes through
//! the control plane's `/api/v1`, which the dashboard forwards with the
//! session's token.
//!
//! | request | answer |
//! |---|---|
//! | `GET /dashboard/` | the app, or `303` to the sign-in page without a session |
//! | `GET /dashboard/signin[?once=CODE]` | the sign-in page; a one-time code (`--demo`) opens a session |
//! | `GET /dashboard/assets/NAME` | a script, style sheet or icon |
//! | `POST /dashboard/api/session` | `{"token": …}` → session cookie and the CSRF token |
//! | `GET /dashboard/api/session` | the session's role and CSRF token, or `401` |
//! | `DELETE /dashboard/api/session` | signs out |
//! | `GET /dashboard/api/overview` | pool, traffic (the last hour), errors, fleet |
//! | `GET /dashboard/api/exits?country=&transport=&health=&q=&offset=&limit=` | one page of exits |
//! | `* /dashboard/api/v1/…` | forwarded to `/api/v1/…` with the session's token |
//!
//! Pages on other sites cannot use a signed-in browser: the cookie is
//! `HttpOnly` and `SameSite=Strict` and scoped to `/dashboard`; every request
//! here must name one of the port's own hosts (DNS rebinding), and one that
//! carries `Origin` must carry this port's own origin and one that carries
//! `Sec-Fetch-Site` must say `same-origin` or `none` (a page on another port
//! of the same host is same-*site*, so SameSite alone does not stop it);
//! every write carries the session's CSRF token in `X-CSRF-Token`; a
//! read-only session writes nothing. The rest of the admin port keeps its
//! own rules (no `Origin` at all, the bearer token).

mod samples;
mod sessions;
mod views;

use crate::admin::view::AdminView;
use bytes::Bytes;
use exitpool_protocol::local_http::is_own_host;
use exitpool_protocol::Secret;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, LOCATION,
    ORIGIN, SET_COOKIE,
};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use sessions::{mint_code, Role, CODE_LIFETIME, MAX_SESSIONS, SESSION_LIFETIME};

/// The cookie that carries the session id.
const COOKIE_NAME: &str = "exitpool_session";

/// The header every write carries the session's CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

/// What a sign-in with a token other than the admin token asks the API,
/// to learn whether it is the read-only token.
const READ_PROBE: &str = "/api/v1/customers?limit=1";

/// Largest sign-in body read.
const MAX_SIGN_IN_BODY: usize = 4096;

/// How long a sign-in body may take to arrive.
const BODY_DEADLINE: Duration = Duration::from_secs(5);

/// What every dashboard answer carries: nothing loads from another origin,
/// no other page frames it, nothing is cached or sniffed.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

/// The pages and their parts, compiled in: (name, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/api.js"),
    ),
    (
        "format.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/format.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/charts.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/pages.js"),
    ),
    (
        "signin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/signin.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../assets/dashboard/icon.svg"),
    ),
];
const APP_HTML: &str = include_str!("../../assets/dashboard/index.html");
const SIGN_IN_HTML: &str = include_str!("../../assets/dashboard/signin.html");

/// The dashboard of one admin port: its sessions and traffic samples.
pub struct Dashboard {
    shared: Arc<AdminView>,
    sessions: sessions::Sessions,
    samples: samples::Samples,
    /// Whether the admin port speaks TLS (the cookie is then `Secure`).
    tls: bool,
}

/// Where a request goes after [`Dashboard::front`].
pub enum Front {
    /// The dashboard answered it.
    Answer(Response<Full<Bytes>>),
    /// Not the dashboard's, or rewritten for `/api/v1`: the admin port
    /// routes it as usual.
    Pass(Request<hyper::body::Incoming>),
}

impl Dashboard {
    /// The dashboard for `shared`'s admin port; starts its sampler, which
    /// stops with the gateway. `tls`: whether the admin port speaks TLS.
    pub fn start(shared: &Arc<AdminView>, tls: bool) -> Arc<Dashboard> {
        let dashboard = Arc::new(Dashboard {
            shared: shared.clone(),
            sessions: sessions::Sessions::default(),
            samples: samples::Samples::default(),
            tls,
        });
        let weak = Arc::downgrade(&dashboard);
        let shutdown = shared.lifecycle.shutdown.clone();
        shared.lifecycle.tasks.spawn(async move {
            let mut every = tokio::time::interval(samples::PERIOD);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let Some(dashboard) = weak.upgrade() else {
                    return;
                };
                dashboard.sample();
            }
        });
        dashboard
    }

    fn sample(&self) {
        self.samples.push(views::sample_now(&self.shared));
        self.sessions.purge(Instant::now());
    }

    /// Answers the dashboard's requests; passes on every other one, and
    /// `/dashboard/api/v1/…` rewritten to `/api/v1/…` with the session's token.
    pub async fn front(&self, request: Request<hyper::body::Incoming>) -> Front {
        let path = request.uri().path();
        if path != "/dashboard" && !path.starts_with("/dashboard/") {
            return Front::Pass(request);
        }
        if let Some(refusal) = self.refuse_other_pages(&request) {
            return Front::Answer(refusal);
        }
        let path = path.to_owned();
        let method = request.method().clone();
        let session = self.session_of(&request);
        let answer = match (&method, path.as_str()) {
            (&Method::GET, "/dashboard") => redirect("/dashboard/"),
            (&Method::GET, "/dashboard/") => match session {
                Some(_) => page(APP_HTML),
                None => redirect("/dashboard/signin"),
            },
            (&Method::GET, "/dashboard/signin") => self.sign_in_page(&request),
            (&Method::GET, name) if name.starts_with("/dashboard/assets/") => {
                asset(&name["/dashboard/assets/".len()..])
            }
            (&Method::POST, "/dashboard/api/session") => self.sign_in(request).await,
            (_, api) if api.starts_with("/dashboard/api/") => {
                let Some(session) = session else {
                    return Front::Answer(json_error(
                        StatusCode::UNAUTHORIZED,
                        "signed_out",
                        "sign in at /dashboard/signin",
                    ));
                };
                let write = !matches!(method, Method::GET | Method::HEAD);
                if write {
                    let given = request
                        .headers()
                        .get(CSRF_HEADER)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("");
                    if !session.1.csrf_matches(given) {
                        return Front::Answer(json_error(
                            StatusCode::FORBIDDEN,
                            "csrf",
                            "this change needs the session's X-CSRF-Token",
                        ));
                    }
                    // A read-only session changes nothing but may sign itself out.
                    if session.1.role == Role::ReadOnly && api != "/dashboard/api/session" {
                        return Front::Answer(json_error(
                            StatusCode::FORBIDDEN,
                            "read_only",
                            "signed in with the read-only token: nothing can be changed",
                        ));
                    }
                }
                match (&method, api) {
                    (&Method::GET, "/dashboard/api/session") => {
                        session_body(&session.1, StatusCode::OK)
                    }
                    (&Method::DELETE, "/dashboard/api/session") => {
                        self.sessions.close(&session.0);
                        let mut answer =
                            json(StatusCode::OK, serde_json::json!({"signed_out": true}));
                        answer
                            .headers_mut()
                            .insert(SET_COOKIE, self.cookie("", Duration::ZERO));
                        answer
                    }
                    (&Method::GET, "/dashboard/api/overview") => {
                        json(StatusCode::OK, views::overview(&self.shared, &self.samples))
                    }
                    (&Method::GET, "/dashboard/api/exits") => {
                        match views::ExitQuery::parse(request.uri().query().unwrap_or("")) {
                            Ok(query) => json(StatusCode::OK, views::exits(&self.shared, &query)),
                            Err(message) => {
                                json_error(StatusCode::BAD_REQUEST, "invalid", &message)
                            }
                        }
                    }
                    (_, forwarded) if forwarded.starts_with("/dashboard/api/v1/") => {
                        return self.forward(request, &session.1);
                    }
                    _ => json_error(
                        StatusCode::NOT_FOUND,
                        "no_route",
                        "no such dashboard endpoint",
                    ),
                }
            }
            (&Method::GET, _) => json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such page; the dashboard is at /dashboard/",
            ),
            _ => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "pages are read with GET",
            ),
        };
        Front::Answer(with_security_headers(answer))
    }

    /// `403`/`421` for a request another page made the browser send.
    fn refuse_other_pages<B>(&self, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let headers = request.headers();
        let host = headers.get(HOST).and_then(|value| value.to_str().ok());
        let Some(host) = host.filter(|host| is_own_host(host, &self.shared.settings().admin_hosts))
        else {
            return Some(json_error(
                StatusCode::MISDIRECTED_REQUEST,
                "host",
                "the Host header must be an IP address, localhost or an --admin-host name",
            ));
        };
        let scheme = if self.tls { "https" } else { "http" };
        let own_origin = format!("{scheme}://{host}");
        let origin_ok = headers.get(ORIGIN).is_none_or(|origin| {
            origin
                .as_bytes()
                .eq_ignore_ascii_case(own_origin.as_bytes())
        });
        let site_ok = headers.get("sec-fetch-site").is_none_or(|site| {
            site.as_bytes().eq_ignore_ascii_case(b"same-origin")
                || site.as_bytes().eq_ignore_ascii_case(b"none")
        });
        (!origin_ok || !site_ok).then(|| {
            json_error(
                StatusCode::FORBIDDEN,
                "other_origin",
                "requests from other web pages are refused on the admin port",
            )
        })
    }

    /// The session named by the request's cookie: its id and itself.
    fn session_of<B>(&self, request: &Request<B>) -> Option<(String, sessions::Session)> {
        let id = request
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE_NAME)
            .map(|(_, id)| id.to_owned())?;
        let session = self.sessions.get(&id, Instant::now())?;
        Some((id, session))
    }

    fn cookie(&self, id: &str, lifetime: Duration) -> HeaderValue {
        let secure = if self.tls { "; Secure" } else { "" };
        let value = format!(
            "{COOKIE_NAME}={id}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            lifetime.as_secs()
        );
        HeaderValue::from_str(&value)
            .expect("a cookie of base64url and fixed text is a valid header")
    }

    /// Opens a session for `role` and answers with `answer` carrying its cookie.
    fn open(&self, role: Role, mut answer: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        let (id, _) = self.sessions.open(role, None, Instant::now());
        answer
            .headers_mut()
            .insert(SET_COOKIE, self.cookie(&id, SESSION_LIFETIME));
        tracing::info!(role = role.as_str(), "dashboard: signed in");
        answer
    }

    /// `GET /dashboard/signin`, redeeming `?once=CODE` when given.
    fn sign_in_page<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let code = views::form_pairs(request.uri().query().unwrap_or(""))
            .into_iter()
            .find(|(key, _)| key == "once")
            .map(|(_, code)| code);
        match code {
            None => page(SIGN_IN_HTML),
            Some(code) if sessions::redeem_code(&code, Instant::now()) => {
                self.open(Role::Admin, redirect("/dashboard/"))
            }
            Some(_) => {
                let mut answer = page(SIGN_IN_HTML);
                *answer.status_mut() = StatusCode::UNAUTHORIZED;
                answer
            }
        }
    }

    /// The role `token` signs in as: the admin token (or any, on a port
    /// without one: the port itself is then open to this machine), or a
    /// token the control plane's API takes for reading (the read-only token,
    /// which the API alone holds: it is asked, once per sign-in).
    async fn role_of(&self, token: &str) -> Option<Role> {
        let admin = self
            .shared
            .config
            .admin_token
            .as_ref()
            .filter(|admin| !admin.expose().is_empty());
        match admin {
            None => return Some(Role::Admin),
            Some(admin) if sessions::same_secret(admin.expose(), token) => {
                return Some(Role::Admin)
            }
            Some(_) => {}
        }
        let router = self
            .shared
            .accounting
            .accounts
            .control()
            .and_then(|link| link.router().cloned())?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        let probe = Request::get(READ_PROBE)
            .header(AUTHORIZATION, bearer)
            .body(axum::body::Body::empty())
            .ok()?;
        let answer = tokio::time::timeout(BODY_DEADLINE, tower::ServiceExt::oneshot(router, probe));
        match answer.await {
            Ok(Ok(response)) if response.status().is_success() => Some(Role::ReadOnly),
            _ => None,
        }
    }

    /// `POST /dashboard/api/session` with `{"token": "…"}`.
    async fn sign_in(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !is_json {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content_type",
                "send {\"token\": \"...\"} as application/json",
            );
        }
        let body = Limited::new(request.into_body(), MAX_SIGN_IN_BODY).collect();
        let body = match tokio::time::timeout(BODY_DEADLINE, body).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(_)) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the sign-in body is limited to 4 KiB",
                )
            }
            Err(_) => {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the sign-in body did not arrive within 5 s",
                )
            }
        };
        #[derive(serde::Deserialize)]
        struct SignIn {
            token: String,
        }
        let token = match serde_json::from_slice::<SignIn>(&body) {
            Ok(sign_in) => sign_in.token,
            Err(error) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("expected {{\"token\": \"...\"}}: {error}"),
                )
            }
        };
        let token = token.trim();
        match self.role_of(token).await {
            Some(role) => {
                let bearer = (role == Role::ReadOnly).then(|| Secret(token.to_owned()));
                let (id, session) = self.sessions.open(role, bearer, Instant::now());
                let mut answer = session_body(&session, StatusCode::OK);
                answer
                    .headers_mut()
                    .insert(SET_COOKIE, self.cookie(&id, SESSION_LIFETIME));
                tracing::info!(role = role.as_str(), "dashboard: signed in");
                answer
            }
            None => {
                tracing::info!("dashboard: a sign-in with a wrong token was refused");
                json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "that is neither the admin token nor the read-only token",
                )
            }
        }
    }

    /// `/dashboard/api/v1/…` → `/api/v1/…` with the session's token in place
    /// of the browser's cookie, CSRF token and origin headers.
    fn forward(
        &self,
        mut request: Request<hyper::body::Incoming>,
        session: &sessions::Session,
    ) -> Front {
        // "/dashboard/api/v1/…" → "/api/v1/…".
        let rest = &request.uri().path()["/dashboard".len()..];
        let target = match request.uri().query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        let Ok(uri) = target.parse() else {
            return Front::Answer(json_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "that path is not a valid URI",
            ));
        };
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        for name in [COOKIE, ORIGIN, HeaderName::from_static(CSRF_HEADER)] {
            headers.remove(name);
        }
        for name in [
            "sec-fetch-site",
            "sec-fetch-mode",
            "sec-fetch-dest",
            "sec-fetch-user",
        ] {
            headers.remove(name);
        }
        let token = match session.role {
            Role::Admin => self.shared.config.admin_token.as_ref(),
            Role::ReadOnly => session.bearer.as_ref(),
        };
        match token.filter(|token| !token.expose().is_empty()) {
            Some(token) => match HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    headers.insert(AUTHORIZATION, value);
                }
                Err(_) => {
                    return Front::Answer(json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "token",
                        "the configured token is not valid in a header",
                    ))
                }
            },
            None => {
                headers.remove(AUTHORIZATION);
            }
        }
        Front::Pass(request)
    }
}

fn with_security_headers(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn page(html: &'static str) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn asset(name: &str) -> Response<Full<Bytes>> {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, body)) => {
            let mut response = respond(StatusCode::OK, content_type, *body);
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
    }
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", to);
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    response
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(&value).unwrap_or_default(),
    )
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response<Full<Bytes>> {
    with_security_headers(json(
        status,
        serde_json::json!({"error": error, "message": message}),
    ))
}

fn session_body(session: &sessions::Session, status: StatusCode) -> Response<Full<Bytes>> {
    let left = session.expires.saturating_duration_since(Instant::now());
    json(
        status,
        serde_json::json!({
            "role": session.role.as_str(),
            "csrf": session.csrf,
            "expires_in_secs": left.as_secs(),
        }),
    )
}
