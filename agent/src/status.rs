//! What the owner sees: a periodic one-line summary in the log, a line counting
//! refused destinations (at most one per interval, never one per refusal, so
//! customers cannot fill the volunteer's log), and optionally the stats as
//! JSON on a local endpoint (`--status-listen`; `/report` has the host report
//! alone). The same loop rolls the quota period and saves usage and the host
//! report, so a crash loses at most a few seconds of it;
//! the save (a file write and an fsync) runs on tokio's blocking pool, so a slow
//! disk never stalls the runtime thread that carries the relays.

use crate::shared::Shared;
use bytes::Bytes;
use exitpool_protocol::local_http::{from_a_web_page, is_own_host};
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often usage is saved and the quota period checked.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Saves usage every [`SAVE_INTERVAL`] and logs a summary every
/// `summary_interval`, until shutdown (when usage is saved once more).
pub(crate) async fn summaries(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut save = tokio::time::interval(SAVE_INTERVAL);
    let mut summary = tokio::time::interval(shared.config.summary_interval);
    summary.tick().await;
    loop {
        tokio::select! {
            _ = save.tick() => {
                shared.meter.roll_period(SystemTime::now());
                save_usage(&shared).await;
            }
            _ = summary.tick() => log_summary(&shared),
            () = shutdown.cancelled() => break,
        }
    }
    save_usage(&shared).await;
}

/// Saves the period's usage off the runtime thread, and logs a failure.
async fn save_usage(shared: &Arc<Shared>) {
    let saving = shared.clone();
    shared.fold_report();
    match tokio::task::spawn_blocking(move || {
        saving.meter.save()?;
        saving.schedule.save()?;
        saving.report.save()
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "saving usage failed"),
        Err(error) => warn!(%error, "saving usage did not finish"),
    }
}

fn log_summary(shared: &Shared) {
    let stats = shared.stats();
    let cap = match (stats.quota_bytes, stats.max_rate) {
        (None, None) => "none".to_owned(),
        (quota, rate) => format!(
            "{}{}",
            quota
                .map(|q| format!("{q} bytes/{}", stats.period))
                .unwrap_or_default(),
            rate.map(|r| format!(" {r} bytes/s")).unwrap_or_default()
        ),
    };
    info!(
        connected = stats.session.is_some(),
        paused = stats.paused,
        live_streams = stats.active_streams,
        streams_served = stats.streams_served,
        bytes_this_period = stats.period_bytes,
        period = %stats.period,
        cap = %cap,
        "status"
    );
}

/// Logs how many destinations the exit policy refused: the first refusal after
/// a quiet spell opens a window of `refusal_summary_interval`, and one line at
/// its end counts every refusal in it. Runs until shutdown.
pub(crate) async fn refusal_summaries(shared: Arc<Shared>, shutdown: CancellationToken) {
    let counters = &shared.counters;
    let interval = shared.config.refusal_summary_interval;
    let mut reported = counters.refusals();
    loop {
        tokio::select! {
            () = counters.refusal_seen.notified() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let now = counters.refusals();
        let (address, port) = (now.0 - reported.0, now.1 - reported.1);
        reported = now;
        // A refusal counted just after the last window leaves a wake-up behind
        // that finds nothing new.
        if address + port > 0 {
            info!(
                refused = address + port,
                by_address = address,
                by_port = port,
                within_secs = interval.as_secs_f64(),
                "destinations refused by the exit policy"
            );
        }
    }
}

/// Most status connections served at once; more are closed unanswered.
pub const MAX_STATUS_CONNECTIONS: usize = 16;

/// How long a status connection may take to send its request head, and live.
const STATUS_HEAD_DEADLINE: Duration = Duration::from_secs(5);
const STATUS_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What the stats show only to a request with the status token: the device's
/// id, its addresses (interface and observed public ones) and what they reveal
/// of its network.
const PRIVATE_FIELDS: [&str; 4] = [
    "agent_id",
    "own_addresses",
    "nat64_prefixes",
    "gateway_addresses",
];

/// Binds the status endpoint and serves `GET /` (the stats) and `GET /report`
/// (the host report) as JSON. A web page in the owner's browser cannot read
/// it (the admin port's rules: a foreign `Host` is `421`, `Origin` or a
/// cross-site fetch `403`); at most [`MAX_STATUS_CONNECTIONS`] at once; and
/// the device's id and addresses appear only with `Authorization: Bearer`
/// and the configured status token.
pub(crate) fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_STATUS_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let Ok(place) = places.clone().try_acquire_owned() else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&request, &shared)) }
                    },
                );
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(STATUS_HEAD_DEADLINE)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(STATUS_CONNECTION_LIFETIME, connection).await;
                drop(place);
            });
        }
    });
    Ok(local)
}

/// One status request's answer.
fn answer<B>(request: &hyper::Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let host = headers.get(HOST).and_then(|value| value.to_str().ok());
    if !host.is_some_and(|host| is_own_host(host, &[])) {
        return json(
            StatusCode::MISDIRECTED_REQUEST,
            "{\"error\":\"the Host header must be an IP address or localhost\"}".to_owned(),
        );
    }
    let site = headers.get("sec-fetch-site").map(|value| value.as_bytes());
    if from_a_web_page(headers.contains_key(ORIGIN), site) {
        return json(
            StatusCode::FORBIDDEN,
            "{\"error\":\"requests from web pages are refused\"}".to_owned(),
        );
    }
    let shown_whole = shared.config.status_token.as_ref().is_some_and(|token| {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        presented.is_some_and(|presented| {
            use subtle::ConstantTimeEq;
            bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
        })
    });
    match request.uri().path() {
        "/" => {
            let mut stats = serde_json::to_value(shared.stats()).unwrap_or_default();
            if !shown_whole {
                redact(&mut stats);
            }
            json(
                StatusCode::OK,
                serde_json::to_string_pretty(&stats).unwrap_or_default(),
            )
        }
        "/report" => json(
            StatusCode::OK,
            serde_json::to_string_pretty(&shared.stats().report).unwrap_or_default(),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            "{\"error\":\"not found; try / or /report\"}".to_owned(),
        ),
    }
}

/// Leaves out what identifies the device or its networks: its id, its
/// addresses and the public address the gateway observed.
fn redact(stats: &mut serde_json::Value) {
    let Some(fields) = stats.as_object_mut() else {
        return;
    };
    for private in PRIVATE_FIELDS {
        fields.remove(private);
    }
    if let Some(session) = fields.get_mut("session").and_then(|s| s.as_object_mut()) {
        session.remove("observed_addr");
    }
    fields.insert(
        "redacted".to_owned(),
        serde_json::json!(
            "the device id and addresses need the status token (Authorization: Bearer)"
        ),
    );
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
