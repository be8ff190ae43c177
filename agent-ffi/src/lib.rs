//! The exitpool agent as a C library: the one ABI that the C example, the
//! Python (ctypes) and Java (JNA) wrappers, and Swift or Kotlin apps call.
//! `include/exitpool_agent.h` is generated from this file by cbindgen
//! (`tests/header.rs` fails when the two differ).
//!
//! - `config`: the JSON configuration and limits the app passes in;
//! - `sdk`: the agent object behind the surface, the SDK's runtime, and the
//!   state callback;
//! - this file: the `exitpool_*` functions, each a thin, panic-proof wrapper.
//!
//! Rules of the surface, for every function:
//! - it returns at once: starting, stopping and restarting run on the SDK's
//!   own tokio runtime (two worker threads, started at first use), and state
//!   changes arrive through the state callback and in stats;
//! - it returns `EXITPOOL_OK` (0) or an `EXITPOOL_ERROR_*` code, and on an
//!   error stores a message in `*error_out` (when `error_out` is not NULL)
//!   that the caller frees with `exitpool_string_free`; on success
//!   `*error_out` is set to NULL;
//! - no panic crosses it: each entry point catches one and returns
//!   `EXITPOOL_ERROR_PANIC`;
//! - an agent may be used from any thread at once (its state is behind a
//!   mutex), except `exitpool_agent_free`, which must be the last call on it
//!   and must not be made from its own state callback.

#![warn(missing_docs)]
// An FFI crate cannot forbid unsafe code; each unsafe block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]

mod config;
mod sdk;

use sdk::{c_string, Callback, SdkAgent, SdkError};
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Success.
pub const EXITPOOL_OK: i32 = 0;
/// A required pointer was NULL, or a string was not UTF-8.
pub const EXITPOOL_ERROR_INVALID_ARGUMENT: i32 = 1;
/// The configuration or limits JSON was refused (the message names the key).
pub const EXITPOOL_ERROR_CONFIG: i32 = 2;
/// The state directory (device key, consent, report) could not be used.
pub const EXITPOOL_ERROR_STATE: i32 = 3;
/// A stop or restart is still under way; try again after the stopped callback.
pub const EXITPOOL_ERROR_BUSY: i32 = 4;
/// The agent is not running (stop before start).
pub const EXITPOOL_ERROR_NOT_RUNNING: i32 = 5;
/// The runtime or a socket could not be set up.
pub const EXITPOOL_ERROR_RUNTIME: i32 = 6;
/// A bug inside the library (a caught panic); the message says where.
pub const EXITPOOL_ERROR_PANIC: i32 = 7;

/// State: waiting for the user's consent (`exitpool_agent_consent_record`).
pub const EXITPOOL_STATE_WAITING_FOR_CONSENT: i32 = 0;
/// State: connecting to the gateway for the first time.
pub const EXITPOOL_STATE_CONNECTING: i32 = 1;
/// State: joined; the gateway routes customers here.
pub const EXITPOOL_STATE_JOINED: i32 = 2;
/// State: paused by the app; no new streams.
pub const EXITPOOL_STATE_PAUSED: i32 = 3;
/// State: the tunnel was lost; the agent reconnects by itself.
pub const EXITPOOL_STATE_RECONNECTING: i32 = 4;
/// State: stopped (shut down, consent revoked, or a fatal error: the reason says).
pub const EXITPOOL_STATE_STOPPED: i32 = 5;
/// State: made, never started (only in stats; never passed to the callback).
pub const EXITPOOL_STATE_CREATED: i32 = 6;

/// An agent, opaque to C: made by `exitpool_agent_new`, released by
/// `exitpool_agent_free`.
pub struct ExitpoolAgent {
    agent: SdkAgent,
}

/// Called on one of the SDK's threads at each change of state, with one of the
/// `EXITPOOL_STATE_*` values and a reason (valid only during the call, UTF-8).
/// It must return quickly; it may call any function on its agent except
/// `exitpool_agent_free`.
pub type ExitpoolStateCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, state: i32, reason: *const c_char)>;

/// Runs `body`, turning its error or panic into a code and a message in
/// `error_out`.
fn guarded(error_out: *mut *mut c_char, body: impl FnOnce() -> Result<(), SdkError>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(SdkError::new(
            EXITPOOL_ERROR_PANIC,
            format!("internal error in the exitpool agent library: {what}"),
        ))
    });
    let (code, message) = match outcome {
        Ok(()) => (EXITPOOL_OK, None),
        Err(error) => (error.code, Some(error.message)),
    };
    if !error_out.is_null() {
        let message = message.map_or(std::ptr::null_mut(), |m| c_string(&m).into_raw());
        // SAFETY: `error_out` is not NULL, and the caller passes either NULL
        // or a pointer to writable storage for one `char *`.
        unsafe { *error_out = message };
    }
    code
}

/// The agent behind `agent`, or an error for NULL.
///
/// # Safety
/// `agent` is NULL or came from `exitpool_agent_new` and was not freed.
unsafe fn agent_ref<'a>(agent: *const ExitpoolAgent) -> Result<&'a SdkAgent, SdkError> {
    // SAFETY: per this function's contract, a non-NULL `agent` points to a live
    // `ExitpoolAgent`, which only `exitpool_agent_free` releases.
    match unsafe { agent.as_ref() } {
        Some(agent) => Ok(&agent.agent),
        None => Err(SdkError::new(
            EXITPOOL_ERROR_INVALID_ARGUMENT,
            "agent is NULL",
        )),
    }
}

/// A UTF-8 string from C; `None` for NULL.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string that stays valid for `'a`.
unsafe fn str_arg<'a>(text: *const c_char, what: &str) -> Result<Option<&'a str>, SdkError> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, and NUL-terminated and live per the contract.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str().map(Some).map_err(|_| {
        SdkError::new(
            EXITPOOL_ERROR_INVALID_ARGUMENT,
            format!("{what} is not UTF-8"),
        )
    })
}

/// Hands `text` to C in `*out` (freed with `exitpool_string_free`).
///
/// # Safety
/// `out` is NULL or points to writable storage for one `char *`.
unsafe fn give_string(out: *mut *mut c_char, text: &str, what: &str) -> Result<(), SdkError> {
    if out.is_null() {
        return Err(SdkError::new(
            EXITPOOL_ERROR_INVALID_ARGUMENT,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: not NULL, and writable per the contract.
    unsafe { *out = c_string(text).into_raw() };
    Ok(())
}

/// Makes an agent from a JSON configuration; it does nothing until
/// `exitpool_agent_start`, and connects only once consent is recorded.
///
/// The configuration: `{"gateways": ["host:port", ...], "pin": "sha256:...",
/// "token": "...", "state_dir": "/path"}`, and optionally `"limits":
/// {"max_rate": bytes per second, "quota_bytes": n, "quota_period": "day" |
/// "month"}`, `"max_streams": n`, `"bind": "ip"`, `"transport": "quic" | "tcp"
/// | "auto"`, `"status_listen": "127.0.0.1:port"`, `"software": "app/1.0"`,
/// `"drain_grace_ms": n`, and `"allow_private": true` (tests on one machine
/// only: it lets customers reach this device's own networks). Unknown keys are
/// refused.
///
/// `callback` may be NULL. `user_data` is passed back to it as is; both must
/// be usable from any thread.
///
/// # Safety
/// `config_json` is a NUL-terminated string; `agent_out` points to storage
/// for one pointer; `error_out` is NULL or points to storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_new(
    config_json: *const c_char,
    callback: ExitpoolStateCallback,
    user_data: *mut c_void,
    agent_out: *mut *mut ExitpoolAgent,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        if agent_out.is_null() {
            return Err(SdkError::new(
                EXITPOOL_ERROR_INVALID_ARGUMENT,
                "agent_out is NULL",
            ));
        }
        // SAFETY: per this function's contract.
        let json = unsafe { str_arg(config_json, "config_json")? }
            .ok_or_else(|| SdkError::new(EXITPOOL_ERROR_INVALID_ARGUMENT, "config_json is NULL"))?;
        let callback = callback.map(|function| Callback {
            function,
            user_data,
        });
        let agent = Box::new(ExitpoolAgent {
            agent: SdkAgent::new(json, callback)?,
        });
        // SAFETY: `agent_out` is not NULL and writable per the contract.
        unsafe { *agent_out = Box::into_raw(agent) };
        Ok(())
    })
}

/// Starts the agent and returns at once. It waits for consent if none is
/// recorded, then connects and reconnects by itself; the state callback says
/// how it goes. Starting a running agent does nothing.
///
/// # Safety
/// `agent` came from `exitpool_agent_new` and is not freed; `error_out` is
/// NULL or points to storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_start(
    agent: *const ExitpoolAgent,
    error_out: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    guarded(error_out, || unsafe { agent_ref(agent) }?.start())
}

/// Stops taking new streams (live ones finish); the gateway routes around
/// this device. Kept across a restart.
///
/// # Safety
/// As `exitpool_agent_start`.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_pause(
    agent: *const ExitpoolAgent,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        // SAFETY: per this function's contract.
        unsafe { agent_ref(agent) }?.pause(true);
        Ok(())
    })
}

/// Takes new streams again.
///
/// # Safety
/// As `exitpool_agent_start`.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_resume(
    agent: *const ExitpoolAgent,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        // SAFETY: per this function's contract.
        unsafe { agent_ref(agent) }?.pause(false);
        Ok(())
    })
}

/// Sets the owner's limits from JSON (`{"max_rate": ..., "quota_bytes": ...,
/// "quota_period": ...}`, as in the configuration). A running agent restarts
/// with them in the background (it reconnects; no stopped callback).
///
/// # Safety
/// As `exitpool_agent_start`; `limits_json` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_set_limits(
    agent: *const ExitpoolAgent,
    limits_json: *const c_char,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        // SAFETY: per this function's contract.
        let agent = unsafe { agent_ref(agent) }?;
        // SAFETY: per this function's contract.
        let json = unsafe { str_arg(limits_json, "limits_json")? }
            .ok_or_else(|| SdkError::new(EXITPOOL_ERROR_INVALID_ARGUMENT, "limits_json is NULL"))?;
        agent.set_limits(json)
    })
}

/// The agent's stats as a JSON object in `*stats_out` (free it with
/// `exitpool_string_free`): `state` (`waiting_for_consent`, `connecting`,
/// `joined`, `paused`, `reconnecting`, `stopped`, `created`), `consent`,
/// `report` (bytes, streams and seconds online per day, 90 days) and, while
/// the agent runs, its counters (`streams_served`, `bytes_up`, `session`, ...).
///
/// # Safety
/// As `exitpool_agent_start`; `stats_out` points to storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_stats(
    agent: *const ExitpoolAgent,
    stats_out: *mut *mut c_char,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        // SAFETY: per this function's contract.
        let stats = unsafe { agent_ref(agent) }?.stats()?;
        // SAFETY: per this function's contract.
        unsafe { give_string(stats_out, &stats, "stats_out") }
    })
}

/// Records the user's consent (now, with `text`: what they agreed to, e.g.
/// the terms' version; may be NULL) in the state directory; a started agent
/// connects from now on. `consent_out`, if not NULL, receives the record as
/// JSON (free it with `exitpool_string_free`).
///
/// # Safety
/// As `exitpool_agent_start`; `text` is NULL or a NUL-terminated string;
/// `consent_out` is NULL or points to storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_consent_record(
    agent: *const ExitpoolAgent,
    text: *const c_char,
    consent_out: *mut *mut c_char,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        // SAFETY: per this function's contract.
        let agent = unsafe { agent_ref(agent) }?;
        // SAFETY: per this function's contract.
        let text = unsafe { str_arg(text, "text")? };
        let recorded = agent.record_consent(text)?;
        if consent_out.is_null() {
            return Ok(());
        }
        // SAFETY: not NULL, and writable per the contract.
        unsafe { give_string(consent_out, &recorded, "consent_out") }
    })
}

/// Revokes the user's consent: a running agent stops at once (the gateway is
/// told it is leaving; the stopped callback follows with reason `consent
/// revoked`), and with `forget_identity` the device key is deleted too, so a
/// later consent starts as a new exit. The host report is kept.
///
/// # Safety
/// As `exitpool_agent_start`.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_consent_revoke(
    agent: *const ExitpoolAgent,
    forget_identity: bool,
    error_out: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    guarded(error_out, || {
        unsafe { agent_ref(agent) }?.revoke_consent(forget_identity)
    })
}

/// The consent recorded, as JSON in `*consent_out` (`null`, or
/// `{"granted_at": unix seconds, "text": "..."}`); free it with
/// `exitpool_string_free`.
///
/// # Safety
/// As `exitpool_agent_stats`.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_consent_status(
    agent: *const ExitpoolAgent,
    consent_out: *mut *mut c_char,
    error_out: *mut *mut c_char,
) -> i32 {
    guarded(error_out, || {
        // SAFETY: per this function's contract.
        let status = unsafe { agent_ref(agent) }?.consent_status()?;
        // SAFETY: per this function's contract.
        unsafe { give_string(consent_out, &status, "consent_out") }
    })
}

/// Stops the agent in the background: the gateway is told, live streams get
/// the drain grace, usage is saved, then the stopped callback comes (reason
/// `shut down`). It may be started again after that.
///
/// # Safety
/// As `exitpool_agent_start`.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_stop(
    agent: *const ExitpoolAgent,
    error_out: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    guarded(error_out, || unsafe { agent_ref(agent) }?.stop())
}

/// Releases the agent: no callback runs after this returns (one in flight is
/// waited for), and a running agent is stopped without waiting for its drain.
/// For a clean exit, call `exitpool_agent_stop` and wait for the stopped
/// callback first. NULL is ignored.
///
/// # Safety
/// `agent` is NULL or came from `exitpool_agent_new`; no other call on it may
/// run now or later, and this is not called from the agent's own callback.
#[no_mangle]
pub unsafe extern "C" fn exitpool_agent_free(agent: *mut ExitpoolAgent) {
    if agent.is_null() {
        return;
    }
    // SAFETY: per this function's contract, `agent` came from `Box::into_raw`
    // in `exitpool_agent_new` and nothing else uses it any more.
    let agent = unsafe { Box::from_raw(agent) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        agent.agent.close();
        drop(agent);
    }));
}

/// Frees a string this library returned. NULL is ignored.
///
/// # Safety
/// `text` is NULL or a string from this library, not freed before.
#[no_mangle]
pub unsafe extern "C" fn exitpool_string_free(text: *mut c_char) {
    if text.is_null() {
        return;
    }
    // SAFETY: per this function's contract, `text` came from
    // `CString::into_raw` here and is freed once.
    drop(unsafe { std::ffi::CString::from_raw(text) });
}

/// The library's version, a static string (never freed).
#[no_mangle]
pub extern "C" fn exitpool_agent_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
