//! The agent's side of a target: the shared strict host parser (as the agent
//! runs it on a name it is sent), its exit policy's port ranges, and `check_ip`
//! on the input's first 4 or 16 bytes.
#![no_main]

use exitpool_agent::policy::{ExitPolicy, PortRange};
use exitpool_protocol::host::parse_host;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    if let Some(octets) = data.first_chunk::<16>() {
        let _ = ExitPolicy::new().check_ip(IpAddr::V6(Ipv6Addr::from(*octets)));
    }
    if let Some(octets) = data.first_chunk::<4>() {
        let _ = ExitPolicy::new().check_ip(IpAddr::V4(Ipv4Addr::from(*octets)));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_host(text);
    let _ = text.parse::<PortRange>();
});
