//! An app embedding the exitpool agent as an SDK.
//!
//! With `--gateway HOST:PORT --pin sha256:... --token T` it joins that gateway and
//! prints its stats every few seconds until Ctrl-C. With no arguments it is a
//! self-contained tour: it starts a gateway on loopback, embeds an agent, pauses
//! and resumes it, sends one request through it, prints the agent's stats and
//! exits.
//!
//! ```sh
//! cargo run --example embedded_agent
//! ```

use exitpool::agent::{Agent, AgentHandle, Pin};
use exitpool::gateway::auth::{AgentTokens, Customer, Users};
use exitpool::gateway::{Gateway, GatewayConfig};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => tour().await,
        [gw_flag, gateway, pin_flag, pin, token_flag, token]
            if gw_flag == "--gateway" && pin_flag == "--pin" && token_flag == "--token" =>
        {
            join(gateway, pin.parse()?, token).await
        }
        _ => anyhow::bail!(
            "usage: embedded_agent [--gateway HOST:PORT --pin sha256:HEX --token TOKEN]"
        ),
    }
}

/// What an app does for real: join, report, stop cleanly on Ctrl-C.
async fn join(gateway: &str, pin: Pin, token: &str) -> anyhow::Result<()> {
    let agent = Agent::builder(gateway, pin, token)
        .max_streams(16)
        .max_rate(1_000_000)
        .spawn()?;
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => print_stats(&agent),
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    agent.shutdown().await?;
    Ok(())
}

fn print_stats(agent: &AgentHandle) {
    let stats = agent.stats();
    println!(
        "connected: {}, paused: {}, streams_served: {}, bytes_up: {}, bytes_down: {}",
        stats.session.is_some(),
        stats.paused,
        stats.streams_served,
        stats.bytes_up,
        stats.bytes_down
    );
}

/// A self-contained run on loopback.
async fn tour() -> anyhow::Result<()> {
    let state = std::env::temp_dir().join(format!("exitpool-example-{}", std::process::id()));
    let mut config = GatewayConfig::new(state.clone());
    let local = "127.0.0.1:0".parse()?;
    (config.listen, config.tunnel, config.admin) = (local, local, None);
    config.users = Users::new([Customer::parse("app:secret")?]);
    config.agent_tokens = AgentTokens::new(["app-token".to_owned()]);
    let gateway = Gateway::start(config).await?;

    let agent = Agent::builder(
        gateway.tunnel_addr().to_string(),
        gateway.pin().parse()?,
        "app-token",
    )
    .bind("127.0.0.1".parse()?)
    // The only target here is this machine; a real app never sets this.
    .allow_private(true)
    .max_streams(8)
    .spawn()?;
    let joined = tokio::time::timeout(TIMEOUT, agent.connected()).await?;
    println!(
        "joined as exit {} (seen from {})",
        joined.exit_id, joined.observed_addr
    );

    // The gateway hears about pause and resume on the control stream at once.
    agent.pause();
    tokio::time::timeout(
        TIMEOUT,
        gateway.directory().wait_for_census(|c| c.accepting == 0),
    )
    .await?;
    println!("paused: {}", agent.stats().paused);
    agent.resume();
    tokio::time::timeout(
        TIMEOUT,
        gateway.directory().wait_for_census(|c| c.accepting == 1),
    )
    .await?;
    println!("resumed: {}", !agent.stats().paused);

    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_addr = target.local_addr()?;
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = target.accept().await {
            let _ = stream.write_all(b"hello from the target\n").await;
        }
    });
    let mut customer = tokio::net::TcpStream::connect(gateway.listen_addr()).await?;
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("app:secret");
    customer
        .write_all(
            format!("CONNECT {target_addr} HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, customer.read_to_string(&mut answer)).await??;
    println!(
        "through the agent: {:?}",
        answer.lines().last().unwrap_or_default()
    );
    // Closing our side ends the tunnel, so the drain below has nothing to wait for.
    drop(customer);

    let stats = agent.stats();
    println!("streams_served: {}", stats.streams_served);
    println!("bytes_down: {}", stats.bytes_down);
    agent.shutdown().await?;
    gateway.shutdown().await;
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}
