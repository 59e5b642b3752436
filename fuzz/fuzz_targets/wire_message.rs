//! Gossip and direct messages (CBOR), and ops batches published on the topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark::gossip::{decode, decode_published, published_op_range};
use tidemark::ops_log::{LwwMap, LwwOp};
use tidemark::NodeId;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<LwwMap>(data);
    let _ = decode_published::<LwwOp>(data, |key| (key < 4).then(|| NodeId::synthetic(key)));
    let _ = published_op_range(data);
});
