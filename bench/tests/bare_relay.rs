//! The bare relay's hop processes as the load test starts them (`loadtest
//! --bare-exit`, `--bare-entry`): bytes sent to the entry hop reach the target
//! behind the exit hop, and the answer comes back, half-close included.

use exitpool_launcher::Launch;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on each step.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn bytes_cross_the_bare_relay_and_come_back() {
    // The target echoes until the client's end of stream, then closes.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = target.accept().await.unwrap();
        let (mut read, mut write) = stream.split();
        tokio::io::copy(&mut read, &mut write).await.unwrap();
        write.shutdown().await.unwrap();
    });

    let loadtest = env!("CARGO_BIN_EXE_loadtest");
    let mut exit = Launch::new(loadtest)
        .args(["--bare-exit", &target_addr.to_string()])
        .spawn()
        .unwrap();
    let ready = exit.line_with("ready ", WAIT).await.unwrap();
    let [_, exit_addr, cert] = ready.split_whitespace().collect::<Vec<_>>()[..] else {
        panic!("exit hop's ready line: {ready:?}");
    };
    let mut entry = Launch::new(loadtest)
        .args(["--bare-entry", exit_addr, "--bare-cert", cert])
        .spawn()
        .unwrap();
    let ready = entry.line_with("ready ", WAIT).await.unwrap();
    let entry_addr = ready.trim_start_matches("ready ").trim();

    let client = tokio::net::TcpStream::connect(entry_addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let sent: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let sending = async {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let receiving = tokio::time::timeout(WAIT, read.read_to_end(&mut echoed));
    let ((), received) = tokio::join!(sending, receiving);
    received.expect("the echo ends").unwrap();
    assert_eq!(echoed.len(), sent.len());
    assert_eq!(echoed, sent);
}
