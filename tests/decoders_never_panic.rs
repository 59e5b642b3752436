//! Every decoder of input from peers or clients, fed arbitrary and mutated bytes, returns a
//! value or an error and never panics. This is the stand-in CI runs for the cargo-fuzz
//! targets in `fuzz/` (which need nightly and run for millions of inputs; see
//! BENCHMARKS.md): the same decoders, a few hundred cases each.

use std::io::Cursor;

use proptest::prelude::*;
use tidemark::gossip::{decode, decode_published, published_op_range};
use tidemark::node::codec::read_frame_limited;
use tidemark::node::schedule::ScheduleRequest;
use tidemark::node::transfer::{parse_answer, parse_request};
use tidemark::node::views::WriteBody;
use tidemark::ops_log::{LwwMap, LwwOp};
use tidemark::snapshot::{read_header, read_snapshot};
use tidemark::NodeId;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..2048)
}

proptest! {
    #[test]
    fn wire_messages(data in bytes()) {
        let _ = decode::<LwwMap>(&data);
        let _ = decode_published::<LwwOp>(&data, |key| (key < 4).then(|| NodeId::synthetic(key)));
        let _ = published_op_range(&data);
    }

    #[test]
    fn stream_frames_and_transfer_messages(data in bytes(), limit in 0usize..4096) {
        let mut input = futures::io::Cursor::new(data.clone());
        let _ = futures::executor::block_on(read_frame_limited(&mut input, limit));
        let _ = parse_request(&data);
        let _ = parse_answer(data);
    }

    #[test]
    fn snapshot_files(data in bytes()) {
        let _ = read_header(&mut Cursor::new(&data));
        let _ = read_snapshot::<LwwMap>(&mut Cursor::new(&data));
    }

    #[test]
    fn api_bodies(data in bytes()) {
        let _ = serde_json::from_slice::<WriteBody>(&data);
        let _ = serde_json::from_slice::<ScheduleRequest>(&data);
    }

    #[test]
    fn api_bodies_that_look_like_json(text in r#"\{("[a-z_]{1,12}": ?(-?[0-9]{1,20}|"[^"]{0,8}"|null|true)(, )?){0,5}\}"#) {
        let _ = serde_json::from_str::<WriteBody>(&text);
        let _ = serde_json::from_str::<ScheduleRequest>(&text);
    }
}
