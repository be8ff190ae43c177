//! The shared target grammar as the gateway checks customers' targets with it:
//! `host:port`, a bare host, a bare port.
#![no_main]

use exitpool_protocol::host::{parse_authority, parse_host, parse_port};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_authority(text);
    let _ = parse_host(text);
    let _ = parse_port(text);
});
