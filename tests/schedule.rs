//! Issue 34, volunteers' schedules end to end: an agent against a real gateway
//! whose schedule (on an injected clock, moved by the test, never slept on)
//! pauses it outside its windows and caps its rate inside them, whose monthly
//! byte cap pauses it until the reset day, and whose owner's own pause neither
//! undoes nor is undone by the schedule's.

mod common;

use common::targets::http_target;
use common::*;
use exitpool::agent::schedule::jiff::civil::{date, DateTime};
use exitpool::agent::schedule::jiff::tz::TimeZone;
use exitpool::agent::schedule::{parse_time, Action, MonthlyCap, Schedule, ScheduleStatus, Window};
use exitpool::agent::AgentHandle;
use std::num::NonZeroU32;
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// The system time of `at` read as UTC (the schedules here are in UTC).
fn utc(at: DateTime) -> SystemTime {
    let seconds = TimeZone::UTC.to_timestamp(at).unwrap().as_second();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64)
}

fn window(name: &str, days: &str, start: &str, end: &str, action: Action) -> Window {
    Window {
        name: name.into(),
        days: days.parse().unwrap(),
        start: parse_time(start).unwrap(),
        end: parse_time(end).unwrap(),
        action,
    }
}

/// Paused during work hours on weekdays, 200 KB/s in the evening, full speed
/// at night; paused outside these (weekend days).
fn volunteer_schedule() -> Schedule {
    Schedule {
        windows: vec![
            window("work", "mon-fri", "09:00", "17:00", Action::Pause),
            window(
                "evening",
                "daily",
                "17:00",
                "23:00",
                Action::Share {
                    max_rate: NonZeroU32::new(200_000),
                },
            ),
            window(
                "night",
                "daily",
                "23:00",
                "09:00",
                Action::Share { max_rate: None },
            ),
        ],
        time_zone: TimeZone::UTC,
        monthly_cap: None,
    }
}

/// Waits until the agent's schedule status satisfies `predicate`.
async fn schedule_shows(
    agent: &AgentHandle,
    what: &str,
    predicate: impl Fn(&ScheduleStatus) -> bool,
) -> ScheduleStatus {
    let mut status = agent.schedule();
    let shown = within(
        what,
        status.wait_for(|s| s.as_ref().is_some_and(&predicate)),
    )
    .await
    .expect("the agent is alive");
    shown.clone().expect("waited for Some")
}

async fn routed(net: &TestGateway, accepting: usize) {
    within(
        "the gateway's view of the agent",
        net.gateway
            .directory()
            .wait_for_census(|c| c.agents == 1 && c.accepting == accepting),
    )
    .await;
}

async fn refused_for_no_exit(net: &TestGateway, target: std::net::SocketAddr) {
    let (head, _) = connect_as(net.proxy(), target, "").await;
    assert_eq!(
        (head.status, head.header("x-exitpool-error")),
        (502, Some("no_exit")),
        "{head:?}"
    );
}

#[tokio::test]
async fn windows_pause_and_cap_the_agent_as_the_clock_moves() {
    init_tracing();
    let net = TestGateway::start().await;
    let target = http_target("127.0.0.1").await;
    // Monday 2026-12-07, 12:00: work hours.
    let (clock, time) = watch::channel(utc(date(2026, 12, 7).at(12, 0, 0, 0)));
    let agent = net
        .spawn(
            net.agent_builder("127.0.0.2")
                .schedule(volunteer_schedule())
                .clock(time),
        )
        .await;
    let status = schedule_shows(&agent, "work hours", |s| s.paused).await;
    assert_eq!(status.window.as_deref(), Some("work"));
    assert_eq!(status.until.as_deref(), Some("2026-12-07 17:00"));
    routed(&net, 0).await;
    refused_for_no_exit(&net, target).await;
    let stats = agent.stats();
    assert!(stats.paused && !stats.paused_by_owner, "{stats:?}");

    // The owner pauses too; the evening window does not undo it.
    agent.pause();
    clock.send_replace(utc(date(2026, 12, 7).at(18, 0, 0, 0)));
    let status = schedule_shows(&agent, "evening", |s| {
        s.window.as_deref() == Some("evening")
    })
    .await;
    assert!(!status.paused);
    assert_eq!(status.window_max_rate, Some(200_000));
    let stats = agent.stats();
    assert!(stats.paused && stats.paused_by_owner, "{stats:?}");
    assert_eq!(
        stats.max_rate,
        Some(200_000),
        "the window's cap is in force"
    );
    routed(&net, 0).await;
    refused_for_no_exit(&net, target).await;

    // The owner resumes: the evening shares, under its cap.
    agent.resume();
    routed(&net, 1).await;
    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let started = Instant::now();
    let body = get_in_tunnel(&mut stream, "/bytes/400000").await;
    assert!(body.len() >= 400_000);
    // A quarter second of burst, then 200 KB/s: at least 1.75 s for 400 KB.
    assert!(
        started.elapsed().as_secs_f64() >= 1.5,
        "400 KB under a 200 KB/s cap took {:?}",
        started.elapsed()
    );

    // Night: full speed, the cap gone from the meter.
    clock.send_replace(utc(date(2026, 12, 7).at(23, 30, 0, 0)));
    schedule_shows(&agent, "night", |s| s.window.as_deref() == Some("night")).await;
    assert_eq!(agent.stats().max_rate, None);
    let (_, ip) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(ip, "127.0.0.2");

    // A stream opened at night outlives the pause that work hours bring.
    let (head, mut open) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    clock.send_replace(utc(date(2026, 12, 8).at(10, 0, 0, 0)));
    schedule_shows(&agent, "Tuesday work hours", |s| s.paused).await;
    routed(&net, 0).await;
    refused_for_no_exit(&net, target).await;
    assert_eq!(get_in_tunnel(&mut open, "/ip").await, "127.0.0.2");

    // Saturday noon is outside every window: paused.
    clock.send_replace(utc(date(2026, 12, 12).at(12, 0, 0, 0)));
    let status = schedule_shows(&agent, "the weekend", |s| s.window.is_none()).await;
    assert!(status.paused);
    drop((stream, open));
    within("agent shutdown", agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn the_monthly_cap_pauses_the_agent_until_its_reset_day_across_a_restart() {
    init_tracing();
    let net = TestGateway::start().await;
    let target = http_target("127.0.0.1").await;
    let state = tempfile::tempdir().unwrap();
    let capped = Schedule {
        windows: vec![],
        time_zone: TimeZone::UTC,
        monthly_cap: Some(MonthlyCap {
            bytes: 100_000,
            reset_day: 15,
        }),
    };
    // 2026-12-10: the cycle that started on 2026-11-15.
    let (clock, time) = watch::channel(utc(date(2026, 12, 10).at(12, 0, 0, 0)));
    let builder = net
        .agent_builder("127.0.0.2")
        .state_dir(state.path())
        .schedule(capped)
        .clock(time.clone());
    let agent = net.spawn(builder.clone()).await;
    let status = schedule_shows(&agent, "cap in stats", |s| s.monthly_cap.is_some()).await;
    let cap = status.monthly_cap.unwrap();
    assert_eq!((cap.bytes, cap.left), (100_000, 100_000));
    assert_eq!(
        (cap.cycle_start.as_str(), cap.next_reset.as_str()),
        ("2026-11-15", "2026-12-15")
    );
    routed(&net, 1).await;

    let (head, mut stream) = connect_as(net.proxy(), target, "").await;
    assert_eq!(head.status, 200);
    let body = get_in_tunnel(&mut stream, "/bytes/150000").await;
    assert!(body.len() >= 150_000);
    let status = schedule_shows(&agent, "cap spent", |s| s.paused).await;
    let cap = status.monthly_cap.unwrap();
    assert!(cap.used >= 150_000 && cap.left == 0, "{cap:?}");
    routed(&net, 0).await;
    refused_for_no_exit(&net, target).await;

    // Restarted on the same state directory, still spent, it joins paused.
    // (The customer's side closed first, or the shutdown waits out the grace.)
    drop(stream);
    within("agent shutdown", agent.shutdown()).await.unwrap();
    within(
        "agent gone",
        net.gateway.directory().wait_for_count(|n| *n == 0),
    )
    .await;
    let agent = net.spawn(builder).await;
    let status = schedule_shows(&agent, "spent after restart", |s| s.paused).await;
    assert!(status.monthly_cap.unwrap().used >= 150_000);
    routed(&net, 0).await;

    // The 15th starts a new cycle: it shares again.
    clock.send_replace(utc(date(2026, 12, 15).at(0, 0, 1, 0)));
    let status = schedule_shows(&agent, "new cycle", |s| !s.paused).await;
    let cap = status.monthly_cap.unwrap();
    assert_eq!(cap.cycle_start, "2026-12-15");
    assert!(cap.used < 100_000, "{cap:?}");
    routed(&net, 1).await;
    let (_, ip) = exit_ip(net.proxy(), target, "").await;
    assert_eq!(ip, "127.0.0.2");
    within("agent shutdown", agent.shutdown()).await.unwrap();
}
