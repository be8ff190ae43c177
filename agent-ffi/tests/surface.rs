//! The C surface's promises that need no gateway, called as C would call them
//! (through the `extern "C"` functions): bad input of every kind is an error
//! code and a message the caller frees, never a crash; calls return at once;
//! consent is recorded, shown in stats and revoked in the state directory; a
//! started agent without consent waits and says so through the callback.
//! The gateway side (serving, pausing, stopping) is in the workspace's
//! tests/sdk_*.rs.

use exitpool_agent_ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Longest any call may take: "returns at once", with room for a debug build
/// and a busy machine (the fsync of a consent file included).
const AT_ONCE: Duration = Duration::from_millis(200);

fn config(state: &std::path::Path) -> CString {
    CString::new(
        serde_json::json!({
            // Nothing listens there: these tests never get past consent.
            "gateways": ["127.0.0.1:9"],
            "pin": PIN,
            "token": "secret-token",
            "state_dir": state,
        })
        .to_string(),
    )
    .unwrap()
}

/// Takes a string the library returned, freeing it.
fn take(text: *mut c_char) -> String {
    assert!(!text.is_null());
    // SAFETY: the library returned this NUL-terminated string; freed once, below.
    let owned = unsafe { CStr::from_ptr(text) }.to_str().unwrap().to_owned();
    // SAFETY: a string from this library, not freed before.
    unsafe { exitpool_string_free(text) };
    owned
}

/// Runs `call` (which gets an `error_out`), checks it took no time, and
/// returns its code and message.
fn timed(call: impl FnOnce(*mut *mut c_char) -> i32) -> (i32, Option<String>) {
    let mut error: *mut c_char = ptr::null_mut();
    let started = Instant::now();
    let code = call(&mut error);
    assert!(started.elapsed() < AT_ONCE, "took {:?}", started.elapsed());
    let message = (!error.is_null()).then(|| take(error));
    assert_eq!(code == EXITPOOL_OK, message.is_none(), "{code} {message:?}");
    (code, message)
}

fn new_agent(
    json: &CString,
    callback: ExitpoolStateCallback,
    user: *mut c_void,
) -> *mut ExitpoolAgent {
    let mut agent = ptr::null_mut();
    // SAFETY: valid string and out-pointers.
    let (code, message) = timed(|error| unsafe {
        exitpool_agent_new(json.as_ptr(), callback, user, &mut agent, error)
    });
    assert_eq!(code, EXITPOOL_OK, "{message:?}");
    agent
}

#[test]
fn bad_input_is_a_code_and_a_message() {
    let state = tempfile::tempdir().unwrap();
    let mut agent = ptr::null_mut();
    // SAFETY (every call in this test): NULLs where the contract allows them
    // or where the library must refuse them; otherwise valid pointers.
    let (code, message) =
        timed(|e| unsafe { exitpool_agent_new(ptr::null(), None, ptr::null_mut(), &mut agent, e) });
    assert_eq!(code, EXITPOOL_ERROR_INVALID_ARGUMENT);
    assert!(message.unwrap().contains("config_json"));
    let json = config(state.path());
    let (code, _) = timed(|e| unsafe {
        exitpool_agent_new(json.as_ptr(), None, ptr::null_mut(), ptr::null_mut(), e)
    });
    assert_eq!(code, EXITPOOL_ERROR_INVALID_ARGUMENT);
    let unknown = CString::new(
        r#"{"gateways":["a:1"],"pin":"x","token":"secret-token","state_dir":"/x","colour":1}"#,
    )
    .unwrap();
    let (code, message) = timed(|e| unsafe {
        exitpool_agent_new(unknown.as_ptr(), None, ptr::null_mut(), &mut agent, e)
    });
    assert_eq!(code, EXITPOOL_ERROR_CONFIG);
    let message = message.unwrap();
    assert!(
        message.contains("colour") && !message.contains("secret-token"),
        "{message}"
    );
    let not_utf8 = CString::new(vec![b'{', 0xff, b'}']).unwrap();
    let (code, _) = timed(|e| unsafe {
        exitpool_agent_new(not_utf8.as_ptr(), None, ptr::null_mut(), &mut agent, e)
    });
    assert_eq!(code, EXITPOOL_ERROR_INVALID_ARGUMENT);
    assert!(agent.is_null(), "nothing made on failure");

    // A NULL agent everywhere.
    let (code, _) = timed(|e| unsafe { exitpool_agent_start(ptr::null(), e) });
    assert_eq!(code, EXITPOOL_ERROR_INVALID_ARGUMENT);
    let mut out = ptr::null_mut();
    let (code, _) = timed(|e| unsafe { exitpool_agent_stats(ptr::null(), &mut out, e) });
    assert_eq!(code, EXITPOOL_ERROR_INVALID_ARGUMENT);
    // A NULL error_out is allowed: the code alone comes back.
    assert_eq!(
        unsafe { exitpool_agent_pause(ptr::null(), ptr::null_mut()) },
        EXITPOOL_ERROR_INVALID_ARGUMENT
    );
    unsafe {
        exitpool_agent_free(ptr::null_mut());
        exitpool_string_free(ptr::null_mut());
    }

    let agent = new_agent(&json, None, ptr::null_mut());
    let (code, _) = timed(|e| unsafe { exitpool_agent_stats(agent, ptr::null_mut(), e) });
    assert_eq!(code, EXITPOOL_ERROR_INVALID_ARGUMENT);
    let (code, _) = timed(|e| unsafe { exitpool_agent_stop(agent, e) });
    assert_eq!(code, EXITPOOL_ERROR_NOT_RUNNING);
    let limits = CString::new(r#"{"quota_period":"week"}"#).unwrap();
    let (code, message) =
        timed(|e| unsafe { exitpool_agent_set_limits(agent, limits.as_ptr(), e) });
    assert_eq!(code, EXITPOOL_ERROR_CONFIG);
    assert!(message.unwrap().contains("quota_period"));
    let long = CString::new("x".repeat(5000)).unwrap();
    let (code, message) = timed(|e| unsafe {
        exitpool_agent_consent_record(agent, long.as_ptr(), ptr::null_mut(), e)
    });
    assert_eq!(code, EXITPOOL_ERROR_STATE);
    assert!(message.unwrap().contains("4096"));
    unsafe { exitpool_agent_free(agent) };
}

fn stats(agent: *const ExitpoolAgent) -> serde_json::Value {
    let mut out = ptr::null_mut();
    // SAFETY: a live agent and valid out-pointers.
    let (code, _) = timed(|e| unsafe { exitpool_agent_stats(agent, &mut out, e) });
    assert_eq!(code, EXITPOOL_OK);
    serde_json::from_str(&take(out)).unwrap()
}

extern "C" fn record_state(user: *mut c_void, state: i32, reason: *const c_char) {
    // SAFETY: `user` is the `Sender` the test passed, alive until after free;
    // `reason` is a valid string during this call.
    let (sender, reason) = unsafe {
        (
            &*(user as *const mpsc::Sender<(i32, String)>),
            CStr::from_ptr(reason).to_str().unwrap().to_owned(),
        )
    };
    let _ = sender.send((state, reason));
}

#[test]
fn an_agent_waits_for_consent_which_is_kept_shown_and_revoked() {
    let state = tempfile::tempdir().unwrap();
    let json = config(state.path());
    let (sender, states) = mpsc::channel::<(i32, String)>();
    let user = &sender as *const _ as *mut c_void;
    let agent = new_agent(&json, Some(record_state), user);
    assert_eq!(stats(agent)["state"], "created");
    assert_eq!(stats(agent)["consent"], serde_json::Value::Null);

    // SAFETY (every call in this test): a live agent, valid strings and out-pointers.
    let (code, _) = timed(|e| unsafe { exitpool_agent_start(agent, e) });
    assert_eq!(code, EXITPOOL_OK);
    let (state_now, reason) = states.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(state_now, EXITPOOL_STATE_WAITING_FOR_CONSENT, "{reason}");
    let running = stats(agent);
    assert_eq!(running["state"], "waiting_for_consent");
    assert_eq!(running["connects"], 0);
    assert_eq!(running["consent_required"], true);

    let (code, _) = timed(|e| unsafe { exitpool_agent_pause(agent, e) });
    assert_eq!(code, EXITPOOL_OK);
    assert_eq!(stats(agent)["paused"], true);

    let text = CString::new("terms v2").unwrap();
    let mut recorded = ptr::null_mut();
    let (code, _) =
        timed(|e| unsafe { exitpool_agent_consent_record(agent, text.as_ptr(), &mut recorded, e) });
    assert_eq!(code, EXITPOOL_OK);
    let recorded: serde_json::Value = serde_json::from_str(&take(recorded)).unwrap();
    assert_eq!(recorded["text"], "terms v2");
    // Consented but paused: the next state says so.
    let (state_now, _) = states.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(state_now, EXITPOOL_STATE_PAUSED);
    let mut status = ptr::null_mut();
    let (code, _) = timed(|e| unsafe { exitpool_agent_consent_status(agent, &mut status, e) });
    assert_eq!(code, EXITPOOL_OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&take(status)).unwrap(),
        recorded
    );
    assert_eq!(stats(agent)["consent"], recorded);

    let (code, _) = timed(|e| unsafe { exitpool_agent_consent_revoke(agent, true, e) });
    assert_eq!(code, EXITPOOL_OK);
    let stopped = loop {
        let (state_now, reason) = states.recv_timeout(Duration::from_secs(10)).unwrap();
        if state_now == EXITPOOL_STATE_STOPPED {
            break reason;
        }
    };
    assert_eq!(stopped, "consent revoked");
    assert!(!state.path().join("consent.json").exists());
    assert!(!state.path().join("device-key").exists());
    let after = stats(agent);
    assert_eq!(
        (after["state"].as_str(), &after["consent"]),
        (Some("stopped"), &serde_json::Value::Null)
    );
    unsafe { exitpool_agent_free(agent) };
    // No callback after free: the sender may go now.
    drop(sender);
}
