//! How long choosing an exit takes as the pool grows: rotation (power of two
//! choices) and sticky-session picks over 10, 1,000 and 100,000 registered
//! agents, in one run, with the ratio to the smallest pool.
//!
//! ```sh
//! cargo run --release --example pick_bench
//! ```
//!
//! The directory holds no tunnels (those live in the tunnel endpoint's links), so
//! the entries here are directory records only: exactly what routing reads.

use exitpool::gateway::directory::{
    AgentDirectory, Avoid, Filter, Joining, LocalDirectory, Location,
};
use std::time::Instant;

const PICKS: usize = 200_000;

fn main() -> anyhow::Result<()> {
    let countries = ["US", "DE", "JP", "FR", "GB", "BR", "IN", "CA", "AU", "NL"];
    let mut baseline: Option<(f64, f64)> = None;
    println!(
        "{:>9} {:>14} {:>8} {:>14} {:>8}",
        "agents", "rotation ns", "ratio", "session ns", "ratio"
    );
    for size in [10usize, 1_000, 100_000] {
        let directory = LocalDirectory::new([7; 32]);
        for n in 0..size {
            directory.insert(
                n as u64 + 1,
                Joining {
                    agent_id: format!("agent{n}"),
                    token: "bench".into(),
                    location: Location {
                        country: Some(countries[n % countries.len()].to_owned()),
                        ..Location::default()
                    },
                    software: "bench".into(),
                    max_streams: 64,
                    accepting: true,
                    observed: "127.0.0.1:1".parse()?,
                    home: None,
                },
            );
        }
        let filter = Filter {
            country: Some("DE".into()),
            ..Filter::default()
        };
        let started = Instant::now();
        for _ in 0..PICKS {
            std::hint::black_box(directory.pick(&filter, &Avoid::default())?);
        }
        let rotation = started.elapsed().as_nanos() as f64 / PICKS as f64;
        let started = Instant::now();
        for n in 0..PICKS {
            let point = directory.ring_point(&format!("customer\0session{n}"));
            std::hint::black_box(directory.pick_sticky(&filter, point, &Avoid::default())?);
        }
        let sticky = started.elapsed().as_nanos() as f64 / PICKS as f64;
        let (base_rotation, base_sticky) = *baseline.get_or_insert((rotation, sticky));
        println!(
            "{size:>9} {rotation:>14.0} {:>8.2} {sticky:>14.0} {:>8.2}",
            rotation / base_rotation,
            sticky / base_sticky
        );
    }
    println!("(session ns includes hashing the session id; {PICKS} picks per cell, country filter DE = 1/10 of the pool)");
    Ok(())
}
