//! Replicas driven the way a network driver drives them: every message goes through the
//! CBOR wire encoding (encode, bytes, decode) before it is handed over. Writers, a joiner,
//! and a dropped-publish window must still converge to equal states and digests.

use std::collections::VecDeque;

use tidemark::gossip::{decode, encode};
use tidemark::ops_log::{LwwMap, LwwOp};
use tidemark::replica::{Action, Replica, ReplicaConfig};
use tidemark::{NodeId, Time};

struct Driver {
    nodes: Vec<Replica<LwwMap>>,
    wakes: Vec<Option<Time>>,
    wire: VecDeque<(usize, NodeId, Vec<u8>)>,
    now: Time,
    drop_publishes: bool,
    bytes: usize,
}

impl Driver {
    fn new(n: u64) -> Self {
        let ids: Vec<NodeId> = (0..n).map(NodeId::synthetic).collect();
        let nodes: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                Replica::genesis(
                    id.clone(),
                    &ids,
                    ReplicaConfig::default(),
                    i as u64,
                    Time::ZERO,
                )
            })
            .collect();
        let mut d = Driver {
            wakes: vec![None; nodes.len()],
            nodes,
            wire: VecDeque::new(),
            now: Time::ZERO,
            drop_publishes: false,
            bytes: 0,
        };
        for i in 0..d.nodes.len() {
            d.flush(i);
        }
        d
    }

    fn flush(&mut self, i: usize) {
        let from = self.nodes[i].id().clone();
        while let Some(action) = self.nodes[i].poll_action() {
            match action {
                Action::Send { to, message } => {
                    if let Some(j) = self.nodes.iter().position(|r| *r.id() == to) {
                        let bytes = encode(&message);
                        self.bytes += bytes.len();
                        self.wire.push_back((j, from.clone(), bytes));
                    }
                }
                Action::Publish { message } => {
                    let bytes = encode(&message);
                    for j in 0..self.nodes.len() {
                        if j != i && !self.drop_publishes {
                            self.bytes += bytes.len();
                            self.wire.push_back((j, from.clone(), bytes.clone()));
                        }
                    }
                }
                Action::ScheduleWake { at } => self.wakes[i] = Some(at),
            }
        }
    }

    fn run_until(&mut self, until: Time) {
        loop {
            while let Some((j, from, bytes)) = self.wire.pop_front() {
                let message = decode::<LwwMap>(&bytes).expect("what a replica encodes decodes");
                self.nodes[j].handle_message(self.now, &from, &message);
                self.flush(j);
            }
            let next = self
                .wakes
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.map(|t| (t, i)))
                .min();
            match next {
                Some((t, i)) if t <= until => {
                    self.now = self.now.max(t);
                    self.wakes[i] = None;
                    self.nodes[i].handle_timeout(self.now);
                    self.flush(i);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn write(&mut self, i: usize, key: &str, value: Option<&str>) {
        let op = LwwOp {
            key: key.into(),
            value: value.map(String::from),
        };
        self.nodes[i]
            .write(self.now, op)
            .expect("a member can write");
        self.flush(i);
    }
}

#[test]
fn replicas_converge_through_the_wire_encoding() {
    let mut d = Driver::new(5);
    for round in 0..20 {
        for i in 0..5 {
            let value = format!("{i}-{round}");
            d.write(i, &format!("key{}", (round * 5 + i) % 7), Some(&value));
        }
        if round == 10 {
            d.write(2, "key3", None);
            // a window in which every publish is lost: anti-entropy must repair it
            d.drop_publishes = true;
        }
        if round == 14 {
            d.drop_publishes = false;
        }
        let t = d.now + std::time::Duration::from_millis(3);
        d.run_until(t);
    }
    // a joiner through node 3, over the wire
    let joiner = Replica::joiner(
        NodeId::synthetic(77),
        1,
        NodeId::synthetic(3),
        ReplicaConfig::default(),
        77,
        d.now,
    );
    d.nodes.push(joiner);
    d.wakes.push(None);
    d.flush(5);
    let t = d.now + std::time::Duration::from_millis(50);
    d.run_until(t);
    assert!(d.nodes[5].is_member(), "the joiner was admitted");
    d.write(5, "from-joiner", Some("hello"));
    let t = d.now + std::time::Duration::from_secs(3);
    d.run_until(t);

    let applied = d.nodes[0].applied().clone();
    assert_eq!(
        applied.total(),
        102,
        "100 writes, a delete and the joiner's write"
    );
    let digest = d.nodes[0].stable_digest();
    for r in &mut d.nodes {
        assert_eq!(r.applied(), &applied);
        assert_eq!(r.snapshot_point(), &applied, "snapshot point everywhere");
        assert_eq!(r.stable_digest(), digest);
        assert_eq!(r.stable_state().get("from-joiner"), Some("hello"));
        assert_eq!(r.network_map().counted(), 6);
    }
    assert!(d.bytes > 0);
}
