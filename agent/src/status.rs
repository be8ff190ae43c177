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
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
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

/// Binds the status endpoint and serves `GET /` with the stats as JSON.
pub(crate) fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let (status, body) = match request.uri().path() {
                                "/" => (
                                    StatusCode::OK,
                                    serde_json::to_string_pretty(&shared.stats())
                                        .unwrap_or_default(),
                                ),
                                "/report" => (
                                    StatusCode::OK,
                                    serde_json::to_string_pretty(&shared.stats().report)
                                        .unwrap_or_default(),
                                ),
                                _ => (
                                    StatusCode::NOT_FOUND,
                                    "{\"error\":\"not found; try / or /report\"}".to_owned(),
                                ),
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            response
                                .headers_mut()
                                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    });
    Ok(local)
}
