//! A minimal in-memory driver for replicas, for tests and examples: messages are delivered
//! in order with no latency (optionally through the CBOR wire encoding), publishes reach
//! every other node unless dropped, and wake-ups fire in time order. The simulator in `sim/`
//! is the full harness; this one is small enough to read in a minute.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::gossip::{decode, encode, Message};
use crate::ops_log::StateMachine;
use crate::replica::{Action, Replica, ReplicaConfig};
use crate::{NodeId, Time};

/// Replicas connected by an instant, in-order, in-memory network.
pub struct LoopbackNet<S: StateMachine> {
    pub nodes: Vec<Replica<S>>,
    wakes: Vec<Option<Time>>,
    queue: VecDeque<(usize, NodeId, Arc<Message<S>>)>,
    pub now: Time,
    /// Drop every published message (direct sends still arrive).
    pub drop_publishes: bool,
    /// Encode and decode every message on its way.
    pub through_wire: bool,
    /// Bytes encoded so far (only with `through_wire`).
    pub wire_bytes: usize,
}

impl<S: StateMachine> LoopbackNet<S> {
    /// A network founded by `n` members with synthetic ids 0..n.
    pub fn genesis(n: u64) -> Self {
        let ids: Vec<NodeId> = (0..n).map(NodeId::synthetic).collect();
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
            .collect();
        let mut net = LoopbackNet {
            nodes,
            wakes: Vec::new(),
            queue: VecDeque::new(),
            now: Time::ZERO,
            drop_publishes: false,
            through_wire: false,
            wire_bytes: 0,
        };
        net.wakes = vec![None; net.nodes.len()];
        for i in 0..net.nodes.len() {
            net.flush(i);
        }
        net
    }

    /// Adds a node that joins through `sponsor`; returns its index.
    pub fn add_joiner(&mut self, id: NodeId, sponsor: NodeId) -> usize {
        self.add_joiner_via(id, vec![sponsor])
    }

    /// Adds a node that joins through the first of `sponsors` that accepts it.
    pub fn add_joiner_via(&mut self, id: NodeId, sponsors: Vec<NodeId>) -> usize {
        let seed = self.nodes.len() as u64 + 1_000;
        let config = ReplicaConfig::default();
        let joiner = Replica::joiner_via(id, 1, sponsors, config, seed, self.now);
        self.nodes.push(joiner);
        self.wakes.push(None);
        let i = self.nodes.len() - 1;
        self.flush(i);
        i
    }

    /// A local write at node `i`.
    pub fn write(&mut self, i: usize, op: S::Op) {
        self.nodes[i]
            .write(self.now, op)
            .expect("a member can write");
        self.flush(i);
    }

    fn index(&self, node: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|r| r.id() == node)
    }

    fn carry(&mut self, message: &Arc<Message<S>>) -> Arc<Message<S>> {
        if !self.through_wire {
            return message.clone();
        }
        let bytes = encode(message);
        self.wire_bytes += bytes.len();
        Arc::new(decode(&bytes).expect("what a replica encodes decodes"))
    }

    /// Takes node `i`'s pending actions.
    pub fn flush(&mut self, i: usize) {
        let from = self.nodes[i].id().clone();
        while let Some(action) = self.nodes[i].poll_action() {
            match action {
                Action::Send { to, message } => {
                    if let Some(j) = self.index(&to) {
                        let message = self.carry(&message);
                        self.queue.push_back((j, from.clone(), message));
                    }
                }
                Action::Publish { message } => {
                    if self.drop_publishes {
                        continue;
                    }
                    for j in (0..self.nodes.len()).filter(|&j| j != i) {
                        let message = self.carry(&message);
                        self.queue.push_back((j, from.clone(), message));
                    }
                }
                Action::ScheduleWake { at } => self.wakes[i] = Some(at),
            }
        }
    }

    /// Delivers everything queued and fires wake-ups, in time order, up to `until`.
    pub fn run_until(&mut self, until: Time) {
        loop {
            while let Some((j, from, message)) = self.queue.pop_front() {
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
        self.now = self.now.max(until);
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }
}
