//! Issue 34, the SDK for apps: the Python wrapper (bindings/python, ctypes over
//! the C library) starts an agent against a real gateway, which waits for
//! consent, joins, serves a customer's request, pauses (the gateway stops
//! routing to it: with the only agent paused, the proxy answers 502), resumes,
//! stops, and has its consent revoked with its key forgotten.
//! bindings/python/tests/serve_pause_resume.py drives the agent and checks
//! what the wrapper reports; `sdk_hosts::serve_pause_resume` makes the
//! customer's requests and checks the gateway.

mod common;
mod sdk_hosts;

use common::targets::http_target;
use common::*;
use sdk_hosts::{config_json, library_dir, serve_pause_resume, workspace, Host};
use tokio::process::Command;

#[tokio::test]
async fn the_python_wrapper_serves_pauses_resumes_and_stops() {
    let net = TestGateway::start().await;
    let target = http_target("127.0.0.1").await;
    let state = tempfile::tempdir().unwrap();
    let mut command = Command::new("python3");
    command
        .arg(workspace().join("bindings/python/tests/serve_pause_resume.py"))
        .env(
            "EXITPOOL_AGENT_LIB",
            library_dir().join("libexitpool_agent_ffi.so"),
        )
        .env(
            "EXITPOOL_TEST_CONFIG",
            config_json(&net, "127.0.0.2", state.path()),
        );
    serve_pause_resume(Host::spawn(command), &net, target, state.path()).await;
}
