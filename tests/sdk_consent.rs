//! Issue 34, consent and the host report, end to end with a real gateway: an
//! agent that needs consent stays off the gateway until the owner records it,
//! serves once it has, shows what it shared in stats and on its status port
//! (`/report`), and on revocation leaves the gateway at once and forgets its
//! key while keeping the report.

mod common;

use common::processes::{customer, exit_of};
use common::targets::http_target;
use common::*;
use exitpool::agent::{consent, report};

#[tokio::test]
async fn an_agent_joins_only_after_consent_and_leaves_when_it_is_revoked() {
    let net = TestGateway::start().await;
    let target = http_target("127.0.0.1").await;
    let state = tempfile::tempdir().unwrap();
    let waiting = net
        .agent_builder("127.0.0.2")
        .state_dir(state.path())
        .require_consent(true)
        .status_listen("127.0.0.1:0".parse().unwrap())
        .spawn()
        .unwrap();
    // An agent started after it, without the need for consent, joins; the
    // one waiting for consent has not even tried.
    let other = net.agent("127.0.0.4").await;
    let directory = net.gateway.directory();
    within("one agent joined", directory.wait_for_count(|n| *n == 1)).await;
    let stats = waiting.stats();
    assert!(
        stats.consent_required && stats.consent.is_none(),
        "{stats:?}"
    );
    assert_eq!((stats.connects, stats.session), (0, None));
    assert!(!state.path().join(consent::CONSENT_FILE).exists());

    let recorded = waiting.record_consent(Some("terms v7")).unwrap();
    let joined = within("the agent joins after consent", waiting.connected()).await;
    assert_eq!(joined.country.as_deref(), Some("US"));
    assert_eq!(consent::load(state.path()).unwrap(), Some(recorded));

    let us = customer(
        "127.0.0.1",
        net.proxy(),
        Some(("alice-country-us", PASSWORD)),
    );
    assert_eq!(exit_of(&us, target).await, (200, "127.0.0.2".to_owned()));
    let stats = waiting.stats();
    assert_eq!(stats.consent.unwrap().text.as_deref(), Some("terms v7"));
    let today = stats.report.last().expect("a day in the report").clone();
    assert_eq!(today.streams, 1);
    assert_eq!(today.bytes, stats.bytes_up + stats.bytes_down);
    assert!(today.bytes > 0);

    // The status port serves the same report.
    let status = waiting.status_addr().unwrap();
    let served: Vec<report::ReportDay> = within(
        "GET /report",
        reqwest::get(format!("http://{status}/report")),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(served.last(), Some(&today));
    let whole: serde_json::Value = reqwest::get(format!("http://{status}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["consent"]["text"], "terms v7");
    assert_eq!(whole["report"][0]["streams"], 1);

    // Revoked: off the gateway at once, key forgotten, report kept.
    waiting.revoke_consent(true).unwrap();
    let mut stopped = waiting.stopped();
    let reason = within("the agent stops", stopped.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone();
    assert_eq!(reason.as_deref(), Some("consent revoked"));
    within(
        "the gateway sees it leave",
        directory.wait_for_count(|n| *n == 1),
    )
    .await;
    within("shutdown", waiting.shutdown()).await.unwrap();
    assert!(!state.path().join(consent::CONSENT_FILE).exists());
    assert!(!state.path().join("device-key").exists());
    let kept = report::load(state.path()).unwrap();
    assert_eq!(kept.last().map(|day| day.streams), Some(1));

    // Started again on the same directory, it waits for consent again.
    let again = net
        .agent_builder("127.0.0.2")
        .state_dir(state.path())
        .require_consent(true)
        .spawn()
        .unwrap();
    assert!(again.stats().consent.is_none());
    assert_eq!(again.stats().report, kept, "the report carries over");
    within("shutdown", again.shutdown()).await.unwrap();
    within("shutdown", other.shutdown()).await.unwrap();
}

#[tokio::test]
async fn consent_needs_a_state_directory() {
    let net = TestGateway::start().await;
    let error = net
        .agent_builder("127.0.0.2")
        .require_consent(true)
        .spawn()
        .unwrap_err();
    assert!(error.to_string().contains("state directory"), "{error}");
}
