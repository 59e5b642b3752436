//! Length-prefixed frames on direct and transfer streams, chunk requests and answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark::node::codec::read_frame_limited;
use tidemark::node::transfer::{parse_answer, parse_request};

fuzz_target!(|data: &[u8]| {
    let limit = data.first().map_or(0, |b| *b as usize * 16);
    let mut input = futures::io::Cursor::new(data);
    while let Ok(frame) = futures::executor::block_on(read_frame_limited(&mut input, limit)) {
        let _ = parse_request(&frame);
        let _ = parse_answer(frame);
    }
    let _ = parse_request(data);
    let _ = parse_answer(data.to_vec());
});
