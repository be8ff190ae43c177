//! Issue: customers choose their exit — country from a real GeoIP database,
//! sticky sessions, rotation — and get a clear answer when none fits.

mod common;

use common::targets::http_target;
use common::*;
use exitpool::agent::AgentHandle;
use exitpool::geoip::testdb::Layout;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A gateway with agents on 127.0.0.2 (US) .3 (US) .4 (DE) .5 (DE) .6 (JP).
async fn pool() -> (TestGateway, Vec<AgentHandle>) {
    let net = TestGateway::start().await;
    let agents = net
        .agents(&[
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
        ])
        .await;
    (net, agents)
}

async fn exits_seen(
    net: &TestGateway,
    target: std::net::SocketAddr,
    params: &str,
    tries: usize,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..tries {
        let (_, ip) = exit_ip(net.proxy(), target, params).await;
        seen.insert(ip);
    }
    seen
}

fn set(ips: &[&str]) -> HashSet<String> {
    ips.iter().map(|ip| ip.to_string()).collect()
}

#[tokio::test]
async fn country_targeting_only_exits_in_that_country_and_rotates_over_all_of_them() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    assert_eq!(
        exits_seen(&net, target, "-country-de", 30).await,
        set(&["127.0.0.4", "127.0.0.5"])
    );
    assert_eq!(
        exits_seen(&net, target, "-country-US", 30).await,
        set(&["127.0.0.2", "127.0.0.3"])
    );
    assert_eq!(
        exits_seen(&net, target, "-country-jp", 5).await,
        set(&["127.0.0.6"])
    );
    let (head, _) = exit_ip(net.proxy(), target, "-country-de").await;
    assert_eq!(head.header("x-exitpool-country"), Some("DE"));
}

#[tokio::test]
async fn rotation_uses_every_exit_within_a_bounded_number_of_tries() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    let seen = exits_seen(&net, target, "", 80).await;
    assert_eq!(
        seen,
        set(&[
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6"
        ])
    );
}

#[tokio::test]
async fn targeting_on_the_password_works_like_on_the_user_name() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    for _ in 0..10 {
        let (head, mut stream) = connect(
            net.proxy(),
            &target.to_string(),
            Some((USER, &format!("{PASSWORD}-country-de"))),
        )
        .await;
        assert_eq!(head.status, 200);
        let ip = get_in_tunnel(&mut stream, "/ip").await;
        assert!(ip == "127.0.0.4" || ip == "127.0.0.5", "{ip}");
    }
}

#[tokio::test]
async fn asn_and_city_targeting_use_the_loaded_database() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    assert_eq!(
        exits_seen(&net, target, "-asn-3320", 20).await,
        set(&["127.0.0.4", "127.0.0.5"])
    );
    assert_eq!(
        exits_seen(&net, target, "-city-munich", 5).await,
        set(&["127.0.0.5"])
    );
    assert_eq!(
        exits_seen(&net, target, "-country-us-city-new_york", 5).await,
        set(&["127.0.0.2"])
    );
}

#[tokio::test]
async fn region_targeting_exits_only_in_that_region() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    // Two US regions, one exit in each.
    assert_eq!(
        exits_seen(&net, target, "-region-us-tx", 5).await,
        set(&["127.0.0.3"])
    );
    assert_eq!(
        exits_seen(&net, target, "-region-US-ny", 5).await,
        set(&["127.0.0.2"])
    );
    assert_eq!(
        exits_seen(&net, target, "-country-us,de-region-de-by", 5).await,
        set(&["127.0.0.5"])
    );
    // A session within a region keeps its exit there.
    let (first, _) = connect_as(net.proxy(), target, "-region-de-be-session-r1").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-exitpool-country"), Some("DE"));
    let (again, mut stream) = connect_as(net.proxy(), target, "-region-de-be-session-r1").await;
    assert_eq!(again.header("x-exitpool-session"), Some("kept"));
    assert_eq!(get_in_tunnel(&mut stream, "/ip").await, "127.0.0.4");
    // A region without exits fails fast; one outside the country asked is a 400.
    let (head, _) = connect_as(net.proxy(), target, "-region-us-ca").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("no_exit"));
    let (head, _) = connect_as(net.proxy(), target, "-country-de-region-us-tx").await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("bad_targeting"));

    // The inventory lists the regions.
    let inventory: serde_json::Value = within(
        "GET /inventory",
        reqwest::Client::new()
            .get(format!("http://{}/inventory", net.proxy()))
            .basic_auth(USER, Some(PASSWORD))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let regions = &inventory["countries"]["US"]["regions"];
    assert_eq!(regions["US-NY"], "1+", "{inventory}");
    assert_eq!(regions["US-TX"], "1+", "{inventory}");
    assert_eq!(inventory["countries"]["JP"]["regions"]["JP-13"], "1+");
}

#[tokio::test]
async fn region_targeting_is_refused_where_no_database_carries_regions() {
    // ip-location-db databases carry countries, ASNs and cities, not regions.
    let net = TestGateway::start_with(|config| {
        config.geoip = Arc::new(test_geoip(Layout::IpLocationDb));
    })
    .await;
    let _us = net.agent("127.0.0.3").await;
    let target = http_target("127.0.0.1").await;
    let (head, mut stream) = connect_as(net.proxy(), target, "-region-us-tx").await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(head.header("x-exitpool-error"), Some("bad_targeting"));
    let mut body = String::new();
    let _ = within(
        "error body",
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body),
    )
    .await;
    assert!(
        body.contains("`region`") && body.contains("carry no regions"),
        "{body}"
    );
    // What the database does carry still works.
    assert_eq!(
        exits_seen(&net, target, "-city-dallas", 2).await,
        set(&["127.0.0.3"])
    );
    // The embedded database carries countries only.
    let plain = TestGateway::start_with(|config| {
        config.geoip = Arc::new(exitpool::geoip::GeoIp::embedded());
    })
    .await;
    let _agent = plain.agent("127.0.0.2").await;
    for (params, key) in [("-city-dallas", "`city`"), ("-asn-7018", "`asn`")] {
        let (head, mut stream) = connect_as(plain.proxy(), target, params).await;
        assert_eq!(head.status, 400, "{params}: {head:?}");
        let mut body = String::new();
        let _ = within(
            "error body",
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body),
        )
        .await;
        assert!(body.contains(key), "{params}: {body}");
    }
}

#[tokio::test]
async fn a_session_keeps_its_exit_and_says_so() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    let (first, ip) = exit_ip(net.proxy(), target, "-session-s1").await;
    assert_eq!(first.header("x-exitpool-session"), Some("new"));
    for _ in 0..10 {
        let (head, again) = exit_ip(net.proxy(), target, "-session-s1").await;
        assert_eq!(again, ip);
        assert_eq!(head.header("x-exitpool-session"), Some("kept"));
        assert_eq!(
            head.header("x-exitpool-exit"),
            first.header("x-exitpool-exit")
        );
    }
    assert_eq!(net.stats().await["sessions"], 1);
}

#[tokio::test]
async fn sessions_spread_over_the_pool() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    let mut seen = HashSet::new();
    for n in 0..40 {
        let (_, ip) = exit_ip(net.proxy(), target, &format!("-session-spread{n}")).await;
        seen.insert(ip);
    }
    assert!(seen.len() >= 3, "40 sessions landed on only {seen:?}");
}

#[tokio::test]
async fn a_session_moves_when_its_exit_leaves_and_fails_in_strict_mode() {
    let (net, mut agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    let (first, ip) = exit_ip(net.proxy(), target, "-session-m1").await;
    let (_, strict_ip) = exit_ip(net.proxy(), target, "-session-m1x-sessmode-strict").await;
    let leaving = first.header("x-exitpool-exit").unwrap().to_owned();

    // Stop the agent serving session m1.
    let index = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ]
    .iter()
    .position(|candidate| *candidate == ip)
    .unwrap();
    within("agent shutdown", agents.remove(index).shutdown())
        .await
        .unwrap();
    within(
        "registry drops it",
        net.gateway.directory().wait_for_count(|n| *n == 4),
    )
    .await;

    let (moved, new_ip) = exit_ip(net.proxy(), target, "-session-m1").await;
    assert_ne!(new_ip, ip);
    assert_eq!(moved.header("x-exitpool-session"), Some("moved"));
    assert_eq!(
        moved.header("x-exitpool-moved-from"),
        Some(leaving.as_str())
    );
    let (kept, again) = exit_ip(net.proxy(), target, "-session-m1").await;
    assert_eq!(
        (kept.header("x-exitpool-session"), again.as_str()),
        (Some("kept"), new_ip.as_str())
    );

    if strict_ip == ip {
        let (head, _) = connect_as(net.proxy(), target, "-session-m1x-sessmode-strict").await;
        assert_eq!(head.status, 502);
        assert_eq!(head.header("x-exitpool-error"), Some("session_exit_gone"));
    } else {
        // The strict session's exit is still there: it keeps it.
        let (_, still) = exit_ip(net.proxy(), target, "-session-m1x-sessmode-strict").await;
        assert_eq!(still, strict_ip);
    }
}

#[tokio::test]
async fn strict_sessions_fail_when_their_exit_leaves() {
    let net = TestGateway::start().await;
    let agent = net.agent("127.0.0.2").await;
    let _other = net.agent("127.0.0.3").await;
    let target = http_target("127.0.0.1").await;
    // Find a session id pinned to 127.0.0.2.
    let mut session = None;
    for n in 0..64 {
        let params = format!("-session-st{n}-sessmode-strict");
        if exit_ip(net.proxy(), target, &params).await.1 == "127.0.0.2" {
            session = Some(params);
            break;
        }
    }
    let params = session.expect("some session lands on 127.0.0.2");
    within("agent shutdown", agent.shutdown()).await.unwrap();
    within(
        "registry drops it",
        net.gateway.directory().wait_for_count(|n| *n == 1),
    )
    .await;
    let (head, _) = connect_as(net.proxy(), target, &params).await;
    assert_eq!(head.status, 502);
    assert_eq!(head.header("x-exitpool-error"), Some("session_exit_gone"));
    assert!(head
        .header("proxy-status")
        .unwrap()
        .contains("destination_unavailable"));
}

#[tokio::test]
async fn an_expired_session_is_swept_and_pinned_afresh() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    let (first, _) = exit_ip(net.proxy(), target, "-session-e1-sesstime-1").await;
    assert_eq!(first.header("x-exitpool-session"), Some("new"));
    let sessions = &net.gateway.shared().routing.sessions;
    assert_eq!(sessions.sweep(Instant::now()), 0, "a live pin is not swept");
    // One minute later (sesstime-1) the pin has lapsed.
    assert_eq!(sessions.sweep(Instant::now() + Duration::from_secs(61)), 1);
    let (again, _) = exit_ip(net.proxy(), target, "-session-e1-sesstime-1").await;
    assert_eq!(again.header("x-exitpool-session"), Some("new"));
}

#[tokio::test]
async fn no_exit_in_the_country_fails_fast_with_a_clear_answer() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    let (head, _) = connect_as(net.proxy(), target, "-country-fr").await;
    assert_eq!(head.status, 502);
    assert_eq!(
        head.header("proxy-status"),
        Some("exitpool; error=destination_unavailable; details=\"no exit in country FR\"")
    );
    assert_eq!(head.header("x-exitpool-error"), Some("no_exit"));
}

#[tokio::test]
async fn every_grammar_error_is_a_400_naming_the_key() {
    let net = TestGateway::start().await;
    let _agent = net.agent("127.0.0.2").await;
    let target = http_target("127.0.0.1").await;
    for (params, key) in [
        ("-contry-us", "contry"),
        ("-country", "country"),
        ("-country-usa", "country"),
        ("-country-us-country-de", "country"),
        ("-session-a.b", "session"),
        ("-session-a-sesstime-0", "sesstime"),
        ("-session-a-sesstime-1441", "sesstime"),
        ("-sesstime-5", "sesstime"),
        ("-session-a-sessmode-sticky", "sessmode"),
        ("-asn-x", "asn"),
        ("-city-new.york", "city"),
        ("-region-us", "region"),
        ("-region-usa-ca", "region"),
        ("-country-de-region-us-ca", "region"),
    ] {
        let (head, mut stream) = connect_as(net.proxy(), target, params).await;
        assert_eq!(head.status, 400, "{params}");
        assert_eq!(
            head.header("x-exitpool-error"),
            Some("bad_targeting"),
            "{params}"
        );
        let mut body = String::new();
        let _ = within(
            "error body",
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body),
        )
        .await;
        assert!(body.contains(&format!("`{key}`")), "{params}: {body}");
    }
    // A stranger learns nothing about the grammar.
    let (head, _) = connect(
        net.proxy(),
        &target.to_string(),
        Some(("mallory-contry-us", "x")),
    )
    .await;
    assert_eq!(head.status, 407);
}

#[tokio::test]
async fn the_ip_location_db_layout_places_agents_too() {
    let net = TestGateway::start_with(|config| {
        config.geoip = Arc::new(test_geoip(Layout::IpLocationDb));
    })
    .await;
    let _us = net.agent("127.0.0.2").await;
    let _de = net.agent("127.0.0.4").await;
    let target = http_target("127.0.0.1").await;
    assert_eq!(
        exits_seen(&net, target, "-country-de", 5).await,
        set(&["127.0.0.4"])
    );
    let stats = net.stats().await;
    assert_eq!(
        (
            stats["countries"]["US"].as_u64(),
            stats["countries"]["DE"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn an_agent_the_database_does_not_know_serves_only_untargeted_requests() {
    let net = TestGateway::start().await;
    let _unknown = net.agent("127.0.0.9").await;
    let target = http_target("127.0.0.1").await;
    let (head, ip) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(
        (ip.as_str(), head.header("x-exitpool-country")),
        ("127.0.0.9", Some("??"))
    );
    let (head, _) = connect_as(net.proxy(), target, "-country-us").await;
    assert_eq!(head.status, 502);
    assert_eq!(net.stats().await["countries"]["??"], 1);
}

#[tokio::test]
async fn a_country_list_and_a_continent_exit_only_in_their_countries() {
    let (net, _agents) = pool().await;
    let target = http_target("127.0.0.1").await;
    // US (.2, .3) or JP (.6): never Germany.
    let seen = exits_seen(&net, target, "-country-us,jp", 60).await;
    let expected: HashSet<String> = ["127.0.0.2", "127.0.0.3", "127.0.0.6"]
        .map(str::to_owned)
        .into();
    assert_eq!(seen, expected);
    // Europe: the two German exits.
    let seen = exits_seen(&net, target, "-continent-eu", 20).await;
    let expected: HashSet<String> = ["127.0.0.4", "127.0.0.5"].map(str::to_owned).into();
    assert_eq!(seen, expected);
    // A session over a list keeps its exit.
    let (first, ip) = exit_ip(net.proxy(), target, "-country-de,jp-session-l1").await;
    assert_eq!(first.header("x-exitpool-session"), Some("new"));
    for _ in 0..5 {
        let (again, same) = exit_ip(net.proxy(), target, "-country-de,jp-session-l1").await;
        assert_eq!(again.header("x-exitpool-session"), Some("kept"));
        assert_eq!(same, ip);
    }
    // Nothing in South America; an unknown continent is a bad parameter.
    let (head, _) = connect_as(net.proxy(), target, "-continent-sa").await;
    assert_eq!(head.header("x-exitpool-error"), Some("no_exit"));
    assert!(head
        .header("proxy-status")
        .unwrap()
        .contains("continent sa"));
    let (head, _) = connect_as(net.proxy(), target, "-continent-atlantis").await;
    assert_eq!(head.status, 400);
    assert_eq!(head.header("x-exitpool-error"), Some("bad_targeting"));
}
