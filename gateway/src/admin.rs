//! The operator's admin listener: `GET /healthz` and `GET /stats` (JSON).

use crate::Shared;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tracing::debug;

/// Most admin connections served at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        shared.tasks.clone().spawn(async move {
            let service = hyper::service::service_fn(|request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(request, &shared)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = tokio::time::timeout(Duration::from_secs(60), connection).await {
                debug!(%error, "admin connection timed out");
            }
            drop(permit);
        });
    }
}

fn route(request: Request<hyper::body::Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/stats") => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&stats(shared)).unwrap_or_default(),
        ),
        (&Method::GET, _) => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /stats or /healthz\n".into(),
        ),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    }
}

/// The `/stats` document.
pub fn stats(shared: &Shared) -> serde_json::Value {
    let agents = shared.registry.agents();
    let live_streams: u64 = agents
        .iter()
        .map(|agent| u64::from(agent.active_streams.load(Ordering::Relaxed)))
        .sum();
    let per_agent: Vec<_> = agents
        .iter()
        .map(|agent| {
            serde_json::json!({
                "exit_id": agent.exit_id,
                "country": agent.location.country,
                "asn": agent.location.asn,
                "city": agent.location.city,
                "observed_addr": agent.observed.to_string(),
                "software": agent.software,
                "accepting": agent.is_accepting(),
                "max_streams": agent.max_streams.load(Ordering::Relaxed),
                "live_streams": agent.active_streams.load(Ordering::Relaxed),
                "streams_total": agent.streams_total.load(Ordering::Relaxed),
                "bytes_up": agent.bytes_up.load(Ordering::Relaxed),
                "bytes_down": agent.bytes_down.load(Ordering::Relaxed),
                "connected_secs": SystemTime::now()
                    .duration_since(agent.connected_at)
                    .unwrap_or_default()
                    .as_secs(),
            })
        })
        .collect();
    serde_json::json!({
        "agents": agents.len(),
        "countries": shared.registry.countries(),
        "live_streams": live_streams,
        "sessions": shared.sessions.len(),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "per_agent": per_agent,
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
