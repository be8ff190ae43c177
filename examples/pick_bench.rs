//! How long choosing an exit takes as the pool grows: rotation (power of two
//! choices) and sticky-session picks over 10, 1,000 and 100,000 registered
//! agents, in one run, with the ratio to the smallest pool.
//!
//! ```sh
//! cargo run --release --example pick_bench
//! ```
//!
//! The registry holds real QUIC connections; one connection is made over
//! loopback and shared by every entry (a `quinn::Connection` is a cheap handle),
//! since only the routing structures are measured here.

use exitpool::gateway::registry::{Filter, Joining, Location, Registry};
use std::time::Instant;

const PICKS: usize = 200_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let connection = loopback_connection().await?;
    let countries = ["US", "DE", "JP", "FR", "GB", "BR", "IN", "CA", "AU", "NL"];
    let mut baseline: Option<(f64, f64)> = None;
    println!(
        "{:>9} {:>14} {:>8} {:>14} {:>8}",
        "agents", "rotation ns", "ratio", "session ns", "ratio"
    );
    for size in [10usize, 1_000, 100_000] {
        let registry = Registry::new([7; 32]);
        for n in 0..size {
            registry.insert(Joining {
                agent_id: format!("agent{n}"),
                token: "bench".into(),
                location: Location {
                    country: Some(countries[n % countries.len()].to_owned()),
                    asn: None,
                    city: None,
                },
                software: "bench".into(),
                max_streams: 64,
                accepting: true,
                connection: connection.clone(),
            });
        }
        let filter = Filter {
            country: Some("DE".into()),
            ..Filter::default()
        };
        let started = Instant::now();
        for _ in 0..PICKS {
            std::hint::black_box(registry.pick(&filter)?);
        }
        let rotation = started.elapsed().as_nanos() as f64 / PICKS as f64;
        let started = Instant::now();
        for n in 0..PICKS {
            let point = registry.ring_point(&format!("customer\0session{n}"));
            std::hint::black_box(registry.pick_sticky(&filter, point)?);
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

/// One real QUIC connection over loopback, made with the gateway's identity and
/// the agent's pin check.
async fn loopback_connection() -> anyhow::Result<quinn::Connection> {
    let state = tempfile::tempdir()?;
    let identity = exitpool::gateway::tls::Identity::load_or_create(state.path())?;
    let transport = exitpool::gateway::tunnel::transport_config(std::time::Duration::from_secs(30));
    let server = quinn::Endpoint::server(
        identity.quic_server_config(transport)?,
        "127.0.0.1:0".parse()?,
    )?;
    let server_addr = server.local_addr()?;
    let accept = tokio::spawn(async move {
        let incoming = server.accept().await.expect("one connection");
        incoming.await.map(|connection| (server, connection))
    });
    let (client_config, _) = exitpool::agent::tls::client_config(
        identity.pin().parse()?,
        exitpool::agent::tunnel::transport_config(64),
    )?;
    let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let _client_side = client
        .connect_with(client_config, server_addr, "exitpool-gateway")?
        .await?;
    let (_server, connection) = accept.await??;
    std::mem::forget((_server, _client_side, client, state));
    Ok(connection)
}
