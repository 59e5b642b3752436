//! Replicas driven the way a network driver drives them: every message goes through the
//! CBOR wire encoding (encode, bytes, decode) before it is handed over. Writers, a joiner,
//! and a dropped-publish window must still converge to equal states and digests.

use std::time::Duration;

use tidemark::ops_log::{LwwMap, LwwOp};
use tidemark::testing::LoopbackNet;
use tidemark::NodeId;

fn op(key: &str, value: Option<&str>) -> LwwOp {
    LwwOp {
        key: key.into(),
        value: value.map(String::from),
    }
}

#[test]
fn replicas_converge_through_the_wire_encoding() {
    let mut net = LoopbackNet::<LwwMap>::genesis(5);
    net.through_wire = true;
    for round in 0..20 {
        for i in 0..5 {
            let value = format!("{i}-{round}");
            net.write(i, op(&format!("key{}", (round * 5 + i) % 7), Some(&value)));
        }
        if round == 10 {
            net.write(2, op("key3", None));
            // a window in which every publish is lost: anti-entropy must repair it
            net.drop_publishes = true;
        }
        if round == 14 {
            net.drop_publishes = false;
        }
        net.run_for(Duration::from_millis(3));
    }
    // a joiner through node 3, over the wire
    let j = net.add_joiner(NodeId::synthetic(77), NodeId::synthetic(3));
    net.run_for(Duration::from_millis(50));
    assert!(net.nodes[j].is_member(), "the joiner was admitted");
    net.write(j, op("from-joiner", Some("hello")));
    net.run_for(Duration::from_secs(3));

    let applied = net.nodes[0].applied().clone();
    assert_eq!(
        applied.total(),
        102,
        "100 writes, a delete and the joiner's write"
    );
    let digest = net.nodes[0].stable_digest();
    for r in &mut net.nodes {
        assert_eq!(r.applied(), &applied);
        assert_eq!(r.snapshot_point(), &applied, "snapshot point everywhere");
        assert_eq!(r.stable_digest(), digest);
        assert_eq!(
            r.stable_state().get("from-joiner").as_deref(),
            Some("hello")
        );
        assert_eq!(r.network_map().counted(), 6);
    }
    assert!(net.wire_bytes > 0);
}
