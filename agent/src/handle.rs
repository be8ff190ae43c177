//! A running agent, as the app holds it ([`AgentHandle`]): pause and resume,
//! stats, the session as it changes, the owner's consent, and a shutdown that
//! drains first.

use crate::error::AgentError;
use crate::shared::{PauseReason, Shared};
use crate::stats::{AgentStats, SessionInfo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running agent. Dropping the handle stops the agent.
#[derive(Debug)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// The tunnel task; `None` once it has been awaited.
    task: Option<JoinHandle<Result<(), AgentError>>>,
    /// The summaries task, which saves usage one last time on shutdown.
    summaries: Option<JoinHandle<()>>,
    status_addr: Option<SocketAddr>,
}

impl AgentHandle {
    /// The handle of an agent whose tasks [`crate::AgentBuilder::spawn`] started.
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        tunnel: JoinHandle<Result<(), AgentError>>,
        summaries: JoinHandle<()>,
        status_addr: Option<SocketAddr>,
    ) -> Self {
        AgentHandle {
            shared,
            shutdown,
            task: Some(tunnel),
            summaries: Some(summaries),
            status_addr,
        }
    }

    /// A snapshot of the agent's counters and connection.
    pub fn stats(&self) -> AgentStats {
        self.shared.stats()
    }

    /// Where the status endpoint listens, if enabled.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_addr
    }

    /// Stops taking new streams (live ones continue); the gateway stops routing here.
    pub fn pause(&self) {
        self.shared.set_paused(PauseReason::User, true);
    }

    /// Takes new streams again, unless the schedule pauses sharing now.
    pub fn resume(&self) {
        self.shared.set_paused(PauseReason::User, false);
    }

    /// The tunnel's state as it changes: `Some` while connected and welcomed,
    /// `None` from the moment the agent notices the tunnel is gone until it is
    /// welcomed again (for an app's "connected" indicator, say).
    pub fn session(&self) -> tokio::sync::watch::Receiver<Option<SessionInfo>> {
        self.shared.session.subscribe()
    }

    /// The schedule's window in force and what is left of its monthly cap,
    /// as they change (`None` without a schedule).
    pub fn schedule(
        &self,
    ) -> tokio::sync::watch::Receiver<Option<crate::schedule::ScheduleStatus>> {
        self.shared.schedule.status.subscribe()
    }

    /// Waits until the agent is connected and welcomed, and returns what the
    /// gateway said.
    pub async fn connected(&self) -> SessionInfo {
        let mut session = self.shared.session.subscribe();
        let info = session
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in the handle");
        info.clone().expect("waited for Some")
    }

    /// Records the owner's consent in the state directory (see
    /// [`crate::consent::record`]); an agent built with
    /// [`crate::AgentBuilder::require_consent`] connects from then on. A small
    /// file write: call it where blocking for a moment is fine (not on the
    /// runtime's threads; the SDK calls it from the app's thread).
    pub fn record_consent(
        &self,
        text: Option<&str>,
    ) -> Result<crate::consent::Consent, crate::consent::ConsentError> {
        let dir = self.consent_dir()?;
        let consent = crate::consent::record(dir, text)?;
        self.shared.consent.send_replace(Some(consent.clone()));
        Ok(consent)
    }

    /// Revokes the owner's consent: the agent stops at once (the gateway is
    /// told it is leaving and routes no new streams here; live ones get the
    /// drain grace), and with `forget_identity` the device key is deleted, so a
    /// later consent starts as a new exit. Await [`AgentHandle::shutdown`]
    /// afterwards for the last usage save. A small file removal, as
    /// [`AgentHandle::record_consent`].
    pub fn revoke_consent(
        &self,
        forget_identity: bool,
    ) -> Result<(), crate::consent::ConsentError> {
        self.shared
            .stopped
            .send_if_modified(|stopped| match stopped {
                Some(_) => false,
                None => {
                    *stopped = Some("consent revoked".to_owned());
                    true
                }
            });
        self.shared.consent.send_replace(None);
        self.shutdown.cancel();
        let dir = self.consent_dir()?;
        crate::consent::revoke(dir, forget_identity)
    }

    fn consent_dir(&self) -> Result<&std::path::Path, crate::consent::ConsentError> {
        self.shared
            .config
            .state_dir
            .as_deref()
            .ok_or_else(|| crate::consent::ConsentError::Io {
                path: String::new(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "this agent has no state directory to keep consent in",
                ),
            })
    }

    /// Why the agent stopped, as it changes: `None` while it runs, then
    /// `shut down`, `consent revoked` or the fatal error.
    pub fn stopped(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.stopped.subscribe()
    }

    /// Whether sharing is paused, as it changes.
    pub fn paused(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.paused.subscribe()
    }

    /// Waits for the agent to stop by itself (which it only does on a fatal error).
    pub async fn finished(&mut self) -> Result<(), AgentError> {
        match self.task.as_mut() {
            Some(task) => {
                let result = task.await;
                self.task = None;
                result.map_err(|e| AgentError::Task(e.to_string()))?
            }
            None => Ok(()),
        }
    }

    /// Drains (tells the gateway, lets live streams finish within the grace
    /// period) and stops, with the period's usage saved.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        let result = self.finished().await;
        // The last usage save runs off the runtime; an agent restarted on the
        // same state directory right after must find it.
        if let Some(summaries) = self.summaries.take() {
            let _ = summaries.await;
        }
        result
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
