//! HTTP API request bodies (JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark::node::schedule::ScheduleRequest;
use tidemark::node::views::WriteBody;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<WriteBody>(data);
    let _ = serde_json::from_slice::<ScheduleRequest>(data);
});
