//! The gateway's target check: `host:port`, a bare host, a bare port.
#![no_main]

use exitpool_gateway::customer::target::{parse_authority, parse_host, parse_port};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_authority(text);
    let _ = parse_host(text);
    let _ = parse_port(text);
});
