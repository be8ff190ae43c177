//! `gateway --demo` as a newcomer meets it: the real binary starts three agents
//! that its generated database places in three countries, proves a request per
//! country, and prints curl lines that work when pasted.

mod common;

use common::WAIT;
use exitpool_launcher::{Launch, Ready};

/// The line the demo prints once everything is ready.
const DEMO_READY: &str = "demo: Ctrl-C to stop";

/// Splits a printed `curl ...   # comment` line into curl's arguments.
fn curl_args(line: &str) -> Vec<String> {
    let command = line.split('#').next().unwrap().trim();
    let mut words = command.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("curl"), "{line}");
    words.collect()
}

#[tokio::test]
async fn the_demo_shows_targeting_with_three_agents_and_its_curl_lines_work() {
    let state = tempfile::tempdir().unwrap();
    let demo = Launch::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
        ])
        .args(["--admin", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .env("NO_COLOR", "1")
        .start(Ready::line(DEMO_READY), WAIT)
        .await
        .expect("the demo starts");
    let out = demo.stdout();
    for (country, ip) in [
        ("us", "127.0.0.2"),
        ("de", "127.0.0.3"),
        ("jp", "127.0.0.4"),
    ] {
        let expected = format!(
            "demo-country-{country}: exit in {}, target seen from {ip}",
            country.to_ascii_uppercase()
        );
        assert!(out.contains(&expected), "no {expected:?} in\n{out}");
    }
    let curl_lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("curl "))
        .collect();
    assert_eq!(curl_lines.len(), 4, "{out}");

    let run = |line: &str| {
        let args = curl_args(line);
        async move {
            let finished = Launch::new("curl")
                .args(["-sS", "--max-time", "10"])
                .args(args)
                .run(WAIT)
                .await
                .expect("curl runs");
            assert!(finished.status.success(), "{}", finished.stderr);
            finished.stdout
        }
    };
    // Germany, with the exit's headers.
    let answer = run(curl_lines[0]).await;
    assert!(answer.contains("x-exitpool-country: DE"), "{answer}");
    assert!(answer.contains("seen from 127.0.0.3"), "{answer}");
    // The sticky session keeps its exit.
    let first = run(curl_lines[1]).await;
    let seen = first
        .lines()
        .find(|l| l.starts_with("seen from"))
        .unwrap()
        .to_owned();
    for _ in 0..3 {
        assert!(run(curl_lines[1]).await.contains(&seen));
    }
    // SOCKS5 to Japan.
    assert_eq!(run(curl_lines[2]).await.trim(), "seen from 127.0.0.4");
    // Rotation answers from one of the three.
    let rotating = run(curl_lines[3]).await;
    assert!(rotating.contains("seen from 127.0.0."), "{rotating}");
}
