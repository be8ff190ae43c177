//! Credential grammar: the input is `USER:PASSWORD` (split at the first `:`, as
//! HTTP Basic does), both halves through `bases` and `parse_targeting`.
#![no_main]

use exitpool_gateway::credentials::{bases, parse_targeting};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (user, password) = text.split_once(':').unwrap_or((text, ""));
    let _ = bases(user, password);
    let _ = parse_targeting(user, password);
});
