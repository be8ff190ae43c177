//! Issue 34, the SDK for apps: the Java wrapper (bindings/java, JNA over the C
//! library, compiled here with plain `javac` against Debian's
//! /usr/share/java/jna.jar, which scripts/test installs) goes through the same
//! steps as the Python one (see tests/sdk_python.rs): consent, serve, pause
//! (the proxy answers 502), resume, stop, revoke.

mod common;
mod sdk_hosts;

use common::targets::http_target;
use common::*;
use sdk_hosts::{compile, config_json, library_dir, serve_pause_resume, workspace, Host};
use tokio::process::Command;

/// Debian's JNA (package libjna-java).
const JNA: &str = "/usr/share/java/jna.jar";

#[tokio::test]
async fn the_java_wrapper_serves_pauses_resumes_and_stops() {
    assert!(
        std::path::Path::new(JNA).exists(),
        "{JNA} is missing: scripts/test installs libjna-java"
    );
    let classes = tempfile::tempdir().unwrap();
    let java = workspace().join("bindings/java");
    let mut javac = Command::new("javac");
    javac
        .args(["-Xlint:all", "-Werror", "-cp", JNA, "-d"])
        .arg(classes.path())
        .arg(java.join("src/net/exitpool/agent/Agent.java"))
        .arg(java.join("tests/ServePauseResume.java"));
    compile("javac compiling the wrapper and its test", javac).await;

    let net = TestGateway::start().await;
    let target = http_target("127.0.0.1").await;
    let state = tempfile::tempdir().unwrap();
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}:{JNA}", classes.path().display()))
        .arg("ServePauseResume")
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
