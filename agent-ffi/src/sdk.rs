//! The SDK's agent object behind the C surface ([`SdkAgent`]): the SDK's own
//! tokio runtime, the agent it starts and stops on it, and the task that turns
//! the agent's state into the app's state callback. Everything here is safe
//! Rust; `lib.rs` holds the C boundary.
//!
//! Locks: `inner` (the running agent, limits, pause) is held only for short,
//! non-blocking work and never while the app's callback runs; `events.callback`
//! is held while the callback runs, so `free` waits out a callback in flight
//! and none starts after it returns. A callback may call any function but
//! `exitpool_agent_free` on its own agent.

use crate::config::{LimitsJson, SdkConfig};
use exitpool_agent::{consent, report, AgentHandle};
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Waiting for the user's consent (`exitpool_agent_consent_record`).
pub(crate) const STATE_WAITING_FOR_CONSENT: i32 = crate::EXITPOOL_STATE_WAITING_FOR_CONSENT;
/// Connecting to the gateway for the first time.
pub(crate) const STATE_CONNECTING: i32 = crate::EXITPOOL_STATE_CONNECTING;
/// Joined: the gateway routes customers here.
pub(crate) const STATE_JOINED: i32 = crate::EXITPOOL_STATE_JOINED;
/// Paused by the app: connected or not, no new streams.
pub(crate) const STATE_PAUSED: i32 = crate::EXITPOOL_STATE_PAUSED;
/// The tunnel was lost; reconnecting by itself.
pub(crate) const STATE_RECONNECTING: i32 = crate::EXITPOOL_STATE_RECONNECTING;
/// Stopped: shut down, consent revoked, or a fatal error (the reason says).
pub(crate) const STATE_STOPPED: i32 = crate::EXITPOOL_STATE_STOPPED;
/// Created, never started (only in stats, never in a callback).
pub(crate) const STATE_CREATED: i32 = crate::EXITPOOL_STATE_CREATED;

/// Threads the SDK's runtime runs relays on: an app's agent is light, and a
/// second thread keeps one slow step from stalling the tunnel's keep-alives.
const WORKER_THREADS: usize = 2;

/// The name of a state in stats JSON.
pub fn state_name(state: i32) -> &'static str {
    match state {
        STATE_WAITING_FOR_CONSENT => "waiting_for_consent",
        STATE_CONNECTING => "connecting",
        STATE_JOINED => "joined",
        STATE_PAUSED => "paused",
        STATE_RECONNECTING => "reconnecting",
        STATE_STOPPED => "stopped",
        _ => "created",
    }
}

/// A failure, with the code the C surface returns.
#[derive(Debug)]
pub struct SdkError {
    /// One of the `EXITPOOL_ERROR_*` codes.
    pub code: i32,
    /// What went wrong, for a person.
    pub message: String,
}

impl SdkError {
    pub fn new(code: i32, message: impl Into<String>) -> SdkError {
        SdkError {
            code,
            message: message.into(),
        }
    }
}

/// The SDK's runtime, started at first use and kept for the process.
pub fn runtime() -> Result<&'static Runtime, SdkError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("exitpool-agent")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            SdkError::new(
                crate::EXITPOOL_ERROR_RUNTIME,
                format!("starting the SDK's runtime: {e}"),
            )
        })
}

/// The app's callback and its pointer.
#[derive(Clone, Copy)]
pub struct Callback {
    pub function: unsafe extern "C" fn(*mut c_void, i32, *const c_char),
    pub user_data: *mut c_void,
}

// SAFETY (of both impls): `user_data` is the app's pointer, only ever handed
// back to the app's own callback; the header requires that both be usable from
// any thread, which is what makes sending them to the runtime's threads sound.
unsafe impl Send for Callback {}
unsafe impl Sync for Callback {}

/// The state last reported and the callback that hears of changes.
pub struct Events {
    callback: Mutex<Option<Callback>>,
    state: AtomicI32,
}

impl Events {
    fn emit(&self, state: i32, reason: &str) {
        self.state.store(state, Ordering::SeqCst);
        let callback = lock(&self.callback);
        if let Some(callback) = *callback {
            let reason = c_string(reason);
            // SAFETY: the app gave this function and pointer for exactly this
            // call (see `Callback`); `reason` lives until the call returns, and
            // the header says the string is only valid during the call.
            unsafe { (callback.function)(callback.user_data, state, reason.as_ptr()) };
        }
    }
}

/// A string without interior NULs, for C.
pub fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).expect("NULs replaced")
}

/// Locks `mutex`, carrying on after a panic elsewhere (every value kept under
/// these locks stays consistent between statements).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Running {
    handle: AgentHandle,
    /// Set when the app has recorded consent since start; the watcher reads it.
    consented: Arc<AtomicBool>,
    /// Wakes the watcher after a consent change.
    poke: Arc<Notify>,
    /// Set to keep the watcher from reporting a restart's stop.
    quiet: Arc<AtomicBool>,
    /// Set when the app stops the agent: the stop is reported once the agent
    /// has finished (usage and report saved), not when its tunnel ends.
    stopping: Arc<AtomicBool>,
    /// Whether `stopped` has been reported, by the watcher or by the stop:
    /// whichever comes first reports it, once.
    stop_reported: Arc<AtomicBool>,
}

struct Inner {
    limits: LimitsJson,
    paused: bool,
    running: Option<Running>,
    /// A stop or restart still under way.
    transition: Option<JoinHandle<()>>,
}

/// One agent, as the app holds it.
pub struct SdkAgent {
    config: SdkConfig,
    inner: Arc<Mutex<Inner>>,
    events: Arc<Events>,
}

impl SdkAgent {
    /// Checks `json` and makes an agent that has not started.
    pub fn new(json: &str, callback: Option<Callback>) -> Result<SdkAgent, SdkError> {
        let config =
            SdkConfig::parse(json).map_err(|e| SdkError::new(crate::EXITPOOL_ERROR_CONFIG, e))?;
        runtime()?;
        Ok(SdkAgent {
            inner: Arc::new(Mutex::new(Inner {
                limits: config.limits.clone(),
                paused: false,
                running: None,
                transition: None,
            })),
            config,
            events: Arc::new(Events {
                callback: Mutex::new(callback),
                state: AtomicI32::new(STATE_CREATED),
            }),
        })
    }

    fn busy(inner: &Inner) -> Result<(), SdkError> {
        match &inner.transition {
            Some(task) if !task.is_finished() => Err(SdkError::new(
                crate::EXITPOOL_ERROR_BUSY,
                "the agent is still stopping; start it again after the stopped callback",
            )),
            _ => Ok(()),
        }
    }

    /// Starts the agent (it connects once consent is recorded); returns at
    /// once. An agent that stopped by itself (a fatal error) starts afresh.
    pub fn start(&self) -> Result<(), SdkError> {
        let mut inner = lock(&self.inner);
        Self::busy(&inner)?;
        let builder = inner.limits.apply(self.config.builder.clone());
        match inner.running.take() {
            Some(running) if running.handle.stopped().borrow().is_some() => {
                self.replace(&mut inner, running, builder)
            }
            Some(running) => {
                inner.running = Some(running);
                Ok(())
            }
            None => {
                inner.running = Some(spawn(builder, inner.paused, self.events.clone())?);
                Ok(())
            }
        }
    }

    /// Stops `old` and then starts `builder`'s agent, in the background (the
    /// two must not share the state directory at once).
    fn replace(
        &self,
        inner: &mut Inner,
        old: Running,
        builder: exitpool_agent::AgentBuilder,
    ) -> Result<(), SdkError> {
        old.quiet.store(true, Ordering::SeqCst);
        let (shared, events) = (self.inner.clone(), self.events.clone());
        inner.transition = Some(runtime()?.spawn(async move {
            let _ = old.handle.shutdown().await;
            let mut inner = lock(&shared);
            match spawn(builder, inner.paused, events.clone()) {
                Ok(running) => inner.running = Some(running),
                Err(error) => {
                    drop(inner);
                    events.emit(STATE_STOPPED, &error.message);
                }
            }
        }));
        Ok(())
    }

    /// Pauses (now, or from the next start).
    pub fn pause(&self, paused: bool) {
        let mut inner = lock(&self.inner);
        inner.paused = paused;
        if let Some(running) = &inner.running {
            if paused {
                running.handle.pause();
            } else {
                running.handle.resume();
            }
        }
    }

    /// Takes new limits: kept for the next start, and a running agent is
    /// restarted with them in the background (it reconnects).
    pub fn set_limits(&self, json: &str) -> Result<(), SdkError> {
        let limits =
            LimitsJson::parse(json).map_err(|e| SdkError::new(crate::EXITPOOL_ERROR_CONFIG, e))?;
        let mut inner = lock(&self.inner);
        Self::busy(&inner)?;
        inner.limits = limits.clone();
        let Some(old) = inner.running.take() else {
            return Ok(());
        };
        let builder = limits.apply(self.config.builder.clone());
        self.replace(&mut inner, old, builder)
    }

    /// Stops the agent in the background; the stopped callback follows.
    pub fn stop(&self) -> Result<(), SdkError> {
        let mut inner = lock(&self.inner);
        let Some(running) = inner.running.take() else {
            return Err(SdkError::new(
                crate::EXITPOOL_ERROR_NOT_RUNNING,
                "the agent is not running",
            ));
        };
        self.wind_down(&mut inner, running)
    }

    /// Stops `running` in the background and reports `stopped` once it has
    /// finished (live streams drained, usage and report saved), so an app
    /// that exits on that callback loses nothing.
    fn wind_down(&self, inner: &mut Inner, running: Running) -> Result<(), SdkError> {
        running.stopping.store(true, Ordering::SeqCst);
        let events = self.events.clone();
        inner.transition = Some(runtime()?.spawn(async move {
            let reason = running.handle.stopped();
            let _ = running.handle.shutdown().await;
            if !running.stop_reported.swap(true, Ordering::SeqCst) {
                let reason = reason.borrow().clone();
                events.emit(STATE_STOPPED, reason.as_deref().unwrap_or("shut down"));
            }
        }));
        Ok(())
    }

    /// Records the user's consent; a started agent connects from now on.
    pub fn record_consent(&self, text: Option<&str>) -> Result<String, SdkError> {
        let inner = lock(&self.inner);
        let recorded = match &inner.running {
            Some(running) => {
                let recorded = running.handle.record_consent(text);
                if recorded.is_ok() {
                    running.consented.store(true, Ordering::SeqCst);
                    running.poke.notify_one();
                }
                recorded
            }
            None => consent::record(&self.config.state_dir, text),
        }
        .map_err(consent_error)?;
        Ok(serde_json::to_string(&recorded).expect("a consent serialises"))
    }

    /// Revokes consent: a running agent stops at once (the stopped callback
    /// follows, reason `consent revoked`); with `forget`, the device key goes.
    pub fn revoke_consent(&self, forget: bool) -> Result<(), SdkError> {
        let mut inner = lock(&self.inner);
        let Some(running) = inner.running.take() else {
            return consent::revoke(&self.config.state_dir, forget).map_err(consent_error);
        };
        running.stopping.store(true, Ordering::SeqCst);
        let revoked = running.handle.revoke_consent(forget);
        running.consented.store(false, Ordering::SeqCst);
        running.poke.notify_one();
        self.wind_down(&mut inner, running)?;
        revoked.map_err(consent_error)
    }

    /// The consent recorded, as JSON (`null` if none).
    pub fn consent_status(&self) -> Result<String, SdkError> {
        let recorded = consent::load(&self.config.state_dir).map_err(consent_error)?;
        Ok(serde_json::to_string(&recorded).expect("a consent serialises"))
    }

    /// The agent's stats as JSON: the running agent's, or what the state
    /// directory holds while none runs; always with `state`.
    pub fn stats(&self) -> Result<String, SdkError> {
        let inner = lock(&self.inner);
        let state = self.events.state.load(Ordering::SeqCst);
        let mut stats = match &inner.running {
            Some(running) => serde_json::to_value(running.handle.stats()).expect("stats serialise"),
            None => {
                let dir = &self.config.state_dir;
                let consent = consent::load(dir).map_err(consent_error)?;
                let report = report::load(dir).map_err(|e| state_error(dir, e))?;
                serde_json::json!({
                    "paused": inner.paused,
                    "consent_required": true,
                    "consent": consent,
                    "report": report,
                })
            }
        };
        stats["state"] = state_name(state).into();
        Ok(stats.to_string())
    }

    /// Stops calling back and stops the agent without waiting for it.
    pub fn close(&self) {
        *lock(&self.events.callback) = None;
        lock(&self.inner).running = None;
    }
}

fn consent_error(error: consent::ConsentError) -> SdkError {
    SdkError::new(crate::EXITPOOL_ERROR_STATE, error.to_string())
}

fn state_error(dir: &std::path::Path, error: std::io::Error) -> SdkError {
    SdkError::new(
        crate::EXITPOOL_ERROR_STATE,
        format!("state directory {}: {error}", dir.display()),
    )
}

/// Spawns `builder`'s agent on the SDK's runtime, and its watcher.
fn spawn(
    builder: exitpool_agent::AgentBuilder,
    paused: bool,
    events: Arc<Events>,
) -> Result<Running, SdkError> {
    let runtime = runtime()?;
    let handle = {
        let _context = runtime.enter();
        builder.spawn().map_err(|e| match e {
            exitpool_agent::AgentError::State { .. } => {
                SdkError::new(crate::EXITPOOL_ERROR_STATE, e.to_string())
            }
            _ => SdkError::new(crate::EXITPOOL_ERROR_RUNTIME, e.to_string()),
        })?
    };
    if paused {
        handle.pause();
    }
    let consented = Arc::new(AtomicBool::new(handle.stats().consent.is_some()));
    let poke = Arc::new(Notify::new());
    let quiet = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let stop_reported = Arc::new(AtomicBool::new(false));
    runtime.spawn(watch(
        Watched {
            session: handle.session(),
            paused: handle.paused(),
            stopped: handle.stopped(),
            consented: consented.clone(),
            poke: poke.clone(),
            quiet: quiet.clone(),
            stopping: stopping.clone(),
            stop_reported: stop_reported.clone(),
        },
        events,
    ));
    Ok(Running {
        handle,
        consented,
        poke,
        quiet,
        stopping,
        stop_reported,
    })
}

struct Watched {
    session: tokio::sync::watch::Receiver<Option<exitpool_agent::SessionInfo>>,
    paused: tokio::sync::watch::Receiver<bool>,
    stopped: tokio::sync::watch::Receiver<Option<String>>,
    consented: Arc<AtomicBool>,
    poke: Arc<Notify>,
    quiet: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    stop_reported: Arc<AtomicBool>,
}

/// Reports each change of the agent's state to the app, until it stops.
async fn watch(mut watched: Watched, events: Arc<Events>) {
    let mut last = STATE_CREATED;
    let mut joined_once = false;
    // Whether the agent's state is gone (it is dropped only after it stopped,
    // so the reason is read before this counts).
    let mut closed = false;
    loop {
        let stopped = watched.stopped.borrow_and_update().clone();
        let paused = *watched.paused.borrow_and_update();
        let session = watched.session.borrow_and_update().clone();
        joined_once |= session.is_some();
        let (state, reason) = if let Some(reason) = stopped {
            (STATE_STOPPED, reason)
        } else if closed {
            (STATE_STOPPED, "stopped".to_owned())
        } else if !watched.consented.load(Ordering::SeqCst) {
            (
                STATE_WAITING_FOR_CONSENT,
                "waiting for the user's consent".to_owned(),
            )
        } else if paused {
            (STATE_PAUSED, "paused by the app".to_owned())
        } else if let Some(session) = session {
            (
                STATE_JOINED,
                format!(
                    "exit {} in {} over {}",
                    session.exit_id,
                    session.country.as_deref().unwrap_or("an unknown country"),
                    session.transport
                ),
            )
        } else if joined_once {
            (STATE_RECONNECTING, "the tunnel was lost".to_owned())
        } else {
            (STATE_CONNECTING, "connecting to the gateway".to_owned())
        };
        // A restart is not reported; a stop the app asked for is reported
        // when it has finished (see `SdkAgent::wind_down`), with nothing in
        // between (the tunnel closing on the way is no `reconnecting`).
        if watched.quiet.load(Ordering::SeqCst) || watched.stopping.load(Ordering::SeqCst) {
            return;
        }
        if state == STATE_STOPPED {
            // The agent stopped by itself (a fatal error): reported now.
            if !watched.stop_reported.swap(true, Ordering::SeqCst) {
                events.emit(state, &reason);
            }
            return;
        }
        if state != last {
            last = state;
            events.emit(state, &reason);
        }
        tokio::select! {
            changed = watched.stopped.changed() => closed |= changed.is_err(),
            changed = watched.paused.changed() => closed |= changed.is_err(),
            changed = watched.session.changed() => closed |= changed.is_err(),
            () = watched.poke.notified() => {}
        }
    }
}
