//! The reconnect loop: one tunnel session after another until shutdown or a
//! fatal error. How a session ended decides the pause before the next: capped
//! backoff after a failure, a random spread after the gateway stopped (every
//! agent hears that at once), a long wait after a certificate that does not
//! match a pin once welcomed, none after a fallback to TCP or a move to QUIC.

use super::backoff::Backoff;
use super::end::SessionEnd;
use super::pins::pin_proven;
use super::reach_gateway::{remember_transport, remembered_tcp, GatewayDialer};
use super::session::session;
use crate::error::AgentError;
use crate::shared::Shared;
use exitpool_transport::{Transport, Tunnel};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

/// Window over which agents spread their reconnects after the gateway says it is
/// shutting down (a restart): 10,000 agents arrive at about 2,000 per second.
pub const RESTART_SPREAD: Duration = Duration::from_secs(5);
/// A tunnel that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What carries over from one session to the next.
struct Between {
    backoff: Backoff,
    /// Whether a gateway with this pin has once welcomed the agent.
    pin_proven: bool,
    /// Whether TLS/TCP won last time (under `auto`).
    prefer_tcp: bool,
    /// The QUIC tunnel the last session moved to.
    moved_to: Option<Tunnel>,
}

/// What the loop does after a session ended.
enum Next {
    /// The agent stops, with this result.
    Stop(Result<(), AgentError>),
    /// The next session starts at once.
    Now,
    /// The next session starts after this pause, unless shutdown comes first.
    After(Duration),
}

/// Runs the agent until shutdown or a fatal error.
pub(crate) async fn run(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let config = &shared.config;
    let dialer = GatewayDialer::new(&shared)?;
    let mut between = Between {
        backoff: Backoff::new(),
        pin_proven: pin_proven(&shared).await,
        prefer_tcp: remembered_tcp(&shared).await,
        moved_to: None,
    };
    let result = loop {
        let started = Instant::now();
        let end = session(
            &dialer,
            between.moved_to.take(),
            &mut between.prefer_tcp,
            &shared,
            &mut between.pin_proven,
            &shutdown,
        )
        .instrument(info_span!("tunnel", gateways = %config.gateways.join(",")))
        .await;
        shared.session.send_replace(None);
        match next(end, started, &dialer, &shared, &mut between).await {
            Next::Stop(result) => break result,
            Next::Now => {}
            Next::After(delay) => tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break Ok(()),
            },
        }
    };
    dialer.wait_idle().await;
    result
}

/// What follows a session that ended with `end` after starting at `started`.
async fn next(
    end: SessionEnd,
    started: Instant,
    dialer: &GatewayDialer,
    shared: &Arc<Shared>,
    between: &mut Between,
) -> Next {
    let config = &shared.config;
    match end {
        SessionEnd::Shutdown => Next::Stop(Ok(())),
        SessionEnd::Moved(tunnel) => {
            info!("QUIC works again: moving the tunnel over, the TLS/TCP one drains");
            between.backoff.reset();
            between.moved_to = Some(tunnel);
            Next::Now
        }
        SessionEnd::Degraded => {
            warn!("the QUIC tunnel carried nothing for two keep-alive intervals; falling back to TLS/TCP");
            between.prefer_tcp = true;
            remember_transport(shared, Transport::Tcp).await;
            Next::Now
        }
        SessionEnd::Fatal(error) => Next::Stop(Err(error)),
        SessionEnd::Retry(_) if dialer.configs.verifier.take_mismatch() => {
            if !between.pin_proven {
                return Next::Stop(Err(AgentError::PinMismatch(config.pin)));
            }
            shared
                .counters
                .pin_mismatches
                .fetch_add(1, Ordering::Relaxed);
            let delay = config
                .pin_mismatch_retry
                .mul_f64(0.5 + rand::rng().random::<f64>() / 2.0);
            warn!(
                pin = %config.pin,
                retry_in_secs = delay.as_secs(),
                "THE GATEWAY'S CERTIFICATE DOES NOT MATCH THE PIN this agent has connected with before. \
                 Someone on the network path may be impersonating the gateway (nothing was sent to it), \
                 or its operator replaced the certificate (then set the new --pin). Retrying later"
            );
            Next::After(delay)
        }
        SessionEnd::GatewayStopped => {
            // Every agent hears this at the same moment: spread the reconnects
            // over RESTART_SPREAD so a restarted gateway is not stampeded.
            between.backoff.reset();
            let delay = RESTART_SPREAD.mul_f64(rand::rng().random::<f64>());
            warn!(
                retry_in_ms = delay.as_millis() as u64,
                "the gateway stopped or restarted; reconnecting"
            );
            Next::After(delay)
        }
        SessionEnd::Retry(reason) => {
            if started.elapsed() >= STABLE_AFTER {
                between.backoff.reset();
            }
            let delay = between.backoff.next_delay();
            warn!(%reason, retry_in_ms = delay.as_millis() as u64, "tunnel down; reconnecting");
            Next::After(delay)
        }
    }
}
