//! A minimal in-memory driver for replicas, for tests and examples: messages are delivered
//! in order with no latency (optionally through the CBOR wire encoding), publishes reach
//! every other node unless dropped, and wake-ups fire in time order. Nodes can be cut off
//! (a two-sided partition), deaf (a one-way one) or crashed and restarted. The simulator in `sim/`
//! is the full harness; this one is small enough to read in a minute.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::gossip::{decode, encode, Message};
use crate::join_protocol::{HandedOverState, JoinResponse, StateOffer};
use crate::ops_log::StateMachine;
use crate::replica::{Action, Replica, ReplicaConfig};
use crate::snapshot::SnapshotHeader;
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
    /// Nodes cut off from the rest: every message to or from them is dropped (their
    /// timers still fire, so they keep running on their own).
    pub cut_off: Vec<bool>,
    /// Deaf nodes: every message to them is dropped, while theirs still arrive (a one-way
    /// partition).
    pub deaf: Vec<bool>,
    /// Crashed nodes: they receive nothing and their timers do not fire.
    pub crashed: Vec<bool>,
    /// Sponsors offer their stable state as a snapshot instead of handing it over inline,
    /// as a node does with a large state. The states held back wait in `offered`, by
    /// joiner, until the test installs them (`Replica::install_transferred`) as a driver
    /// does once a transfer is done.
    pub offer_states: bool,
    pub offered: Vec<(NodeId, S)>,
    /// Keep a copy of every message sent or published in `recorded` (for fuzz seeds).
    pub record: bool,
    pub recorded: Vec<Arc<Message<S>>>,
}

impl<S: StateMachine> LoopbackNet<S> {
    /// A network founded by `n` members with synthetic ids 0..n.
    pub fn genesis(n: u64) -> Self {
        Self::genesis_with(n, ReplicaConfig::default())
    }

    /// Like [`LoopbackNet::genesis`], every replica with `config`.
    pub fn genesis_with(n: u64, config: ReplicaConfig) -> Self {
        let ids: Vec<NodeId> = (0..n).map(NodeId::synthetic).collect();
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, me)| Replica::genesis(me.clone(), &ids, config.clone(), i as u64, Time::ZERO))
            .collect();
        let mut net = LoopbackNet {
            nodes,
            wakes: Vec::new(),
            queue: VecDeque::new(),
            now: Time::ZERO,
            drop_publishes: false,
            through_wire: false,
            wire_bytes: 0,
            cut_off: Vec::new(),
            deaf: Vec::new(),
            crashed: Vec::new(),
            offer_states: false,
            offered: Vec::new(),
            record: false,
            recorded: Vec::new(),
        };
        net.wakes = vec![None; net.nodes.len()];
        net.cut_off = vec![false; net.nodes.len()];
        net.deaf = vec![false; net.nodes.len()];
        net.crashed = vec![false; net.nodes.len()];
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
        self.add_node(joiner)
    }

    /// Adds a replica built by the caller; returns its index.
    pub fn add_node(&mut self, replica: Replica<S>) -> usize {
        self.nodes.push(replica);
        self.wakes.push(None);
        self.cut_off.push(false);
        self.deaf.push(false);
        self.crashed.push(false);
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
        if self.record {
            self.recorded.push(message.clone());
        }
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
                    let message = self.offer_instead(&to, message);
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

    /// With `offer_states`, a grant's inline state is kept back in `offered` and the grant
    /// offers a snapshot of it instead.
    fn offer_instead(&mut self, to: &NodeId, message: Arc<Message<S>>) -> Arc<Message<S>> {
        if !self.offer_states {
            return message;
        }
        let id = format!("offer-{}", self.offered.len() + 1);
        match offer_in_place_of_state(&message, id) {
            Some((offer, state)) => {
                self.offered.push((to.clone(), state));
                offer
            }
            None => message,
        }
    }

    /// Delivers everything queued and fires wake-ups, in time order, up to `until`.
    pub fn run_until(&mut self, until: Time) {
        loop {
            while let Some((j, from, message)) = self.queue.pop_front() {
                let i = self
                    .index(&from)
                    .expect("senders are nodes of this network");
                if self.crashed[j] || self.deaf[j] || self.cut_off[i] != self.cut_off[j] {
                    continue;
                }
                self.nodes[j].handle_message(self.now, &from, &message);
                self.flush(j);
            }
            let next = self
                .wakes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.crashed[*i])
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

    /// Restarts crashed node `i` from its durable state (see [`Replica::restart`]).
    pub fn restart(&mut self, i: usize) {
        self.crashed[i] = false;
        let placeholder = Replica::genesis(
            self.nodes[i].id().clone(),
            &[],
            ReplicaConfig::default(),
            0,
            self.now,
        );
        let old = std::mem::replace(&mut self.nodes[i], placeholder);
        self.nodes[i] = old.restart(self.now);
        self.wakes[i] = None;
        self.flush(i);
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }
}

/// When `message` is a grant holding its stable state inline: the same grant offering that
/// state as snapshot `snapshot_id` instead (as a driver does with a large state), and the
/// state, which the joiner's driver is to fetch. The header names the cut, the height and
/// the digest; it lists no chunks (the state is handed to `Replica::install_transferred`
/// directly).
pub fn offer_in_place_of_state<S: StateMachine>(
    message: &Arc<Message<S>>,
    snapshot_id: String,
) -> Option<(Arc<Message<S>>, S)> {
    let Message::JoinResponse(response) = message.as_ref() else {
        return None;
    };
    let JoinResponse::Granted(grant) = response.as_ref() else {
        return None;
    };
    let HandedOverState::Inline(state) = &grant.stable_state else {
        return None;
    };
    let header = SnapshotHeader {
        version: 1,
        snapshot_point: grant.stable_cut.clone(),
        height: grant.stable_cut.total(),
        digest: state.digest(),
        created_unix_ms: 0,
        entries: 0,
        chunks: Vec::new(),
    };
    let state = state.clone();
    let mut grant = grant.clone();
    grant.stable_state = HandedOverState::Snapshot(StateOffer {
        snapshot_id,
        header,
    });
    let offer = Arc::new(Message::JoinResponse(Box::new(JoinResponse::Granted(
        grant,
    ))));
    Some((offer, state))
}
