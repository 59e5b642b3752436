//! Gossip and direct messages (CBOR), and ops batches published on the topic; every op a
//! message decodes to then goes through the signature check, which reads the origin's
//! peer id and the signature from the same hostile bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tidemark::gossip::{decode, decode_published, published_op_range, Message};
use tidemark::node::signing::PeerIdAuthenticator;
use tidemark::ops_log::{LwwMap, LwwOp, Op};
use tidemark::NodeId;

static AUTH: LazyLock<PeerIdAuthenticator> = LazyLock::new(|| {
    PeerIdAuthenticator::new(libp2p::identity::Keypair::generate_ed25519(), "fuzz")
});

fn check(ops: &[std::sync::Arc<Op<LwwOp>>]) {
    for op in ops {
        let _ = op.check_signature(&*AUTH);
    }
}

fuzz_target!(|data: &[u8]| {
    match decode::<LwwMap>(data) {
        Ok(Message::Ops(published)) => check(&published.ops.0),
        Ok(Message::Repair(repair)) => check(&repair.ops.0),
        _ => {}
    }
    if let Ok(published) =
        decode_published::<LwwOp>(data, |key| (key < 4).then(|| NodeId::synthetic(key)))
    {
        check(&published.ops.0);
    }
    let _ = published_op_range(data);
});
