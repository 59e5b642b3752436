use std::collections::VecDeque;
use std::sync::Arc;

use super::*;
use crate::ops_log::{LwwMap, LwwOp};

fn id(i: u64) -> NodeId {
    NodeId::synthetic(i)
}

fn put(k: &str, v: &str) -> LwwOp {
    LwwOp {
        key: k.into(),
        value: Some(v.into()),
    }
}

/// A minimal driver: instant delivery, publish reaches every other member, timers fire in
/// order. Enough to exercise the replica's rules without the simulator.
struct Net {
    nodes: Vec<Replica<LwwMap>>,
    wakes: Vec<Option<Time>>,
    queue: VecDeque<(usize, NodeId, Arc<Message<LwwMap>>)>,
    now: Time,
    drop_publish: bool,
}

impl Net {
    fn genesis(n: u64) -> Self {
        let ids: Vec<NodeId> = (0..n).map(id).collect();
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, me)| {
                Replica::genesis(
                    me.clone(),
                    &ids,
                    ReplicaConfig::default(),
                    i as u64,
                    Time::ZERO,
                )
            })
            .collect::<Vec<_>>();
        let mut net = Net {
            wakes: vec![None; nodes.len()],
            nodes,
            queue: VecDeque::new(),
            now: Time::ZERO,
            drop_publish: false,
        };
        for i in 0..net.nodes.len() {
            net.drain(i);
        }
        net
    }

    fn index(&self, node: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|r| r.id() == node)
    }

    fn drain(&mut self, i: usize) {
        while let Some(action) = self.nodes[i].poll_action() {
            let from = self.nodes[i].id().clone();
            match action {
                Action::Send { to, message } => {
                    if let Some(j) = self.index(&to) {
                        self.queue.push_back((j, from, message));
                    }
                }
                Action::Publish { message } => {
                    if !self.drop_publish {
                        for j in 0..self.nodes.len() {
                            if j != i {
                                self.queue.push_back((j, from.clone(), message.clone()));
                            }
                        }
                    }
                }
                Action::ScheduleWake { at } => self.wakes[i] = Some(at),
            }
        }
    }

    /// Delivers every queued message, then advances time to `until`, firing timers.
    fn run_until(&mut self, until: Time) {
        loop {
            while let Some((j, from, msg)) = self.queue.pop_front() {
                self.nodes[j].handle_message(self.now, &from, &msg);
                self.drain(j);
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
                    self.drain(i);
                }
                _ => break,
            }
        }
        self.now = until;
    }
}

#[test]
fn writes_spread_and_the_snapshot_point_reaches_them_everywhere() {
    let mut net = Net::genesis(4);
    net.nodes[0].write(net.now, put("a", "1")).unwrap();
    net.nodes[2].write(net.now, put("b", "2")).unwrap();
    net.drain(0);
    net.drain(2);
    net.run_until(Time::from_millis(200));
    let expected = net.nodes[0].applied().clone();
    assert_eq!(expected.total(), 2);
    let mut digests = Vec::new();
    for r in &mut net.nodes {
        assert_eq!(r.applied(), &expected);
        assert_eq!(r.snapshot_point(), &expected, "snapshot point caught up");
        assert_eq!(r.stable_state().get("b"), Some("2"));
        assert_eq!(r.ops_log().unstable_len(), 0, "stable ops are compacted");
        digests.push(r.stable_digest());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn anti_entropy_repairs_lost_publishes() {
    let mut net = Net::genesis(3);
    net.drop_publish = true;
    for k in 0..5 {
        net.nodes[1]
            .write(net.now, put(&format!("k{k}"), "v"))
            .unwrap();
    }
    net.drain(1);
    net.run_until(Time::from_millis(100));
    assert_eq!(net.nodes[0].applied().total(), 0, "publishes were dropped");
    net.run_until(Time::from_millis(3_000));
    for r in &net.nodes {
        assert_eq!(r.applied().total(), 5);
        assert_eq!(r.snapshot_point().total(), 5);
    }
}

#[test]
fn a_joiner_catches_up_and_is_counted_everywhere() {
    let mut net = Net::genesis(3);
    net.nodes[0].write(net.now, put("x", "1")).unwrap();
    net.drain(0);
    net.run_until(Time::from_millis(100));
    let joiner = Replica::joiner(id(10), 1, id(1), ReplicaConfig::default(), 99, net.now);
    net.nodes.push(joiner);
    net.wakes.push(None);
    net.drain(3);
    let sps: Vec<u64> = net
        .nodes
        .iter()
        .map(|r| r.snapshot_point().total())
        .collect();
    assert_eq!(sps, vec![1, 1, 1, 0], "the joiner has not joined yet");
    net.run_until(Time::from_millis(150));
    assert!(net.nodes[3].is_member());
    assert_eq!(net.nodes[3].applied_state().get("x"), Some("1"));
    net.nodes[3].write(net.now, put("y", "2")).unwrap();
    net.drain(3);
    net.run_until(Time::from_millis(400));
    for r in &net.nodes {
        assert_eq!(r.network_map().counted(), 4);
        assert_eq!(r.snapshot_point().total(), 2);
        assert_eq!(r.stable_state().get("y"), Some("2"));
    }
}

#[test]
fn writes_before_joining_are_refused() {
    let mut r: Replica<LwwMap> =
        Replica::joiner(id(1), 1, id(2), ReplicaConfig::default(), 1, Time::ZERO);
    assert_eq!(r.write(Time::ZERO, put("k", "v")).unwrap_err(), NotMember);
    let actions: Vec<_> = std::iter::from_fn(|| r.poll_action()).collect();
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Send { to, message } if *to == id(2) && message.kind() == "join_request")));
}
