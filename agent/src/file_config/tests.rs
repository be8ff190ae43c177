//! The file's tests: a full file with units, every error at once, no echo
//! of syntax or tokens, the bounds, UDP limits, and flags over the file.

use super::*;
use crate::schedule::{self, Action, MonthlyCap};
use crate::udp::UdpLimits;
use crate::TransportChoice;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn errors(text: &str) -> Vec<ConfigError> {
    parse(text, Path::new("agent.toml")).unwrap_err().errors
}

#[test]
fn a_full_file_parses_with_units() {
    let text = format!(
        r#"
gateway = ["gw1.example.net:4433", "gw2.example.net:4433"]
pin = "{PIN}"
token = "t0ken"
transport = "tcp"
max_rate = "2MB/s"
quota_bytes = "10GB"
quota_period = "month"
deny_ports = [25, "6000-6100"]
summary_interval = "2m"
keep_alive = "500ms"
handshake_timeout = "15s"
consent = true

[schedule]
timezone = "UTC"
monthly_cap = "1GiB"
reset_day = 15

[[schedule.window]]
name = "evening"
days = "daily"
start = "17:00"
end = "23:00"
max_rate = "500KB/s"

[[schedule.window]]
days = "mon-fri"
start = "09:00"
end = "17:00"
paused = true
"#
    );
    let settings = parse(&text, Path::new("agent.toml")).unwrap();
    assert_eq!(settings.gateways.len(), 2);
    assert_eq!(settings.max_rate.unwrap().get(), 2_000_000);
    assert_eq!(settings.quota_bytes, Some(10_000_000_000));
    assert_eq!(settings.summary_interval, Some(Duration::from_secs(120)));
    assert_eq!(settings.keep_alive, Some(Duration::from_millis(500)));
    assert_eq!(settings.transport, Some(TransportChoice::Tcp));
    let schedule = settings.schedule.unwrap();
    assert_eq!(
        schedule.monthly_cap,
        Some(MonthlyCap {
            bytes: 1 << 30,
            reset_day: 15
        })
    );
    assert_eq!(
        schedule.windows[0].action,
        Action::Share {
            max_rate: NonZeroU32::new(500_000)
        }
    );
    assert_eq!(schedule.windows[1].name, "window 2");
    assert_eq!(schedule.windows[1].action, Action::Pause);
}

#[test]
fn every_error_is_reported_at_once_with_its_line_and_key() {
    let text = "gateway = \"gw:4433\"\nmax_rat = 5\nkeep_alive = \"soon\"\nmax_streams = \"many\"\n[schedule]\nreset_day = 40\nfoo = 1\n[[schedule.window]]\nstart = \"9am\"\n";
    let errors = errors(text);
    let found: Vec<(Option<usize>, Option<&str>)> =
        errors.iter().map(|e| (e.line, e.key.as_deref())).collect();
    assert_eq!(
        found,
        vec![
            (Some(2), Some("max_rat")),
            (Some(3), Some("keep_alive")),
            (Some(4), Some("max_streams")),
            (Some(6), Some("schedule.reset_day")),
            (Some(7), Some("schedule.foo")),
            (Some(8), Some("schedule.window[1].end")),
            (Some(9), Some("schedule.window[1].start")),
        ],
        "{errors:#?}"
    );
    assert!(
        errors[0].message.starts_with("unknown key `max_rat`"),
        "{errors:#?}"
    );
}

#[test]
fn syntax_errors_and_the_token_are_never_echoed() {
    let errors = errors("token = 123456789\n");
    assert_eq!(errors[0].key.as_deref(), Some("token"));
    assert!(!errors[0].message.contains("123456789"), "{errors:?}");
    let errors = errors_of_syntax();
    assert!(errors.iter().all(|e| e.line == Some(2)), "{errors:?}");
}

fn errors_of_syntax() -> Vec<ConfigError> {
    errors("pin = \"x\"\ntoken = \"s3cret\n")
}

#[test]
fn the_bounds_hold_against_huge_files() {
    let mut text = String::from("[schedule]\n");
    for _ in 0..=schedule::MAX_WINDOWS {
        text.push_str("[[schedule.window]]\nstart = \"09:00\"\nend = \"17:00\"\n");
    }
    let found = errors(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key.as_deref(), Some("schedule.window"));
    // One unknown key per line: the report stops at MAX_ERRORS.
    let text: String = (0..200).map(|i| format!("unknown_{i} = 1\n")).collect();
    assert_eq!(errors(&text).len(), MAX_ERRORS);
    let dir = std::env::temp_dir().join(format!("exitpool-config-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("agent.toml");
    std::fs::write(&big, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
    let refused = load(&big).unwrap_err();
    assert!(refused.errors[0].message.contains("more than"), "{refused}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_udp_limits_are_read_and_checked() {
    let text = "udp_max_flows = 0\nudp_packets_per_second = 50\nudp_idle_timeout = \"2m\"\n";
    let settings = parse(text, Path::new("agent.toml")).unwrap();
    let limits = settings.udp_limits();
    assert_eq!(limits.max_flows, 0);
    assert_eq!(limits.packets_per_second, 50);
    assert_eq!(limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(Settings::default().udp_limits(), UdpLimits::default());
    let text = "udp_max_flows = -1\nudp_packets_per_second = 0\nudp_idle_timeout = \"10ms\"\n";
    let found: Vec<_> = errors(text)
        .into_iter()
        .map(|e| (e.line, e.key.unwrap_or_default()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Some(1), "udp_max_flows".to_owned()),
            (Some(2), "udp_packets_per_second".to_owned()),
            (Some(3), "udp_idle_timeout".to_owned()),
        ]
    );
}

#[test]
fn flags_override_the_file() {
    let file = parse(
        &format!("gateway = \"a:1\"\npin = \"{PIN}\"\nmax_streams = 5\nthreads = 2\n"),
        Path::new("agent.toml"),
    )
    .unwrap();
    let flags = Settings {
        gateways: vec!["b:2".into()],
        max_streams: Some(9),
        ..Settings::default()
    };
    let merged = flags.or(file);
    assert_eq!(merged.gateways, vec!["b:2".to_owned()]);
    assert_eq!((merged.max_streams, merged.threads), (Some(9), Some(2)));
    assert_eq!(merged.missing(), vec!["token"]);
}
