//! Frame codec: one whole frame (length prefix and body) of each message type,
//! and the same bytes as a bare body.
#![no_main]

use exitpool_protocol::frame::{decode_body, HEADER_LEN};
use exitpool_protocol::{decode, AgentMessage, GatewayMessage, OpenReply, OpenRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<AgentMessage>(data);
    let _ = decode::<GatewayMessage>(data);
    let _ = decode::<OpenRequest>(data);
    let _ = decode::<OpenReply>(data);
    if let Some(body) = data.get(HEADER_LEN..) {
        let _ = decode_body::<AgentMessage>(body);
        let _ = decode_body::<OpenRequest>(body);
    }
});
