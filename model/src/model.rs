//! The stateright model: the state of a small tidemark network (replicas, in-flight
//! messages, fault budgets), the nondeterministic actions that move it, and the transition
//! function that drives the real `Replica` through its public API.
//!
//! ## Semantics
//! - **Network**: in-flight messages form an unordered multiset; any of them may be
//!   delivered next (so every reordering is explored), or lost while the loss budget lasts.
//!   A `Send` adds one message; a `Publish` adds one per other running node.
//! - **Time**: every node has its own clock. A node handles messages, writes and a leave at
//!   its current local time; `Timeout(i)` moves node i's clock to its last requested wake-up
//!   and calls `handle_timeout`. Clocks never go back, and none may pass the scope's horizon
//!   (`within_boundary`). Independent clocks cover every relative speed of the nodes and
//!   every message delay.
//! - **Faults**: `Leave(i)` calls `leave`; `Crash(i)` stops node i for good (it takes no
//!   further action, and messages to it are lost). Without failure detection a crash blocks
//!   the snapshot point, so liveness is only checked on crash-free paths.
//! - **Environment**: the joiner starts when the model chooses (`StartJoiner`), and each
//!   write happens when the model chooses, while its node is a member that is not leaving.
//!
//! ## State identity
//! `ModelState` hashes (and compares) a canonical fingerprint: for each node its status,
//! clock, pending wake-up, remaining writes, I1 shadow, replica fingerprint (see
//! [`crate::node`]) and generator block count; the multiset of in-flight messages sorted by
//! (receiver, sender, content hash); the remaining budgets; the joiner's registration cut;
//! the first violation seen. Histories are not part of it: two states whose replicas are
//! identical are the same state however they were reached.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stateright::{Model, Property};
use tidemark::network_map::view::View;
use tidemark::ops_log::{LwwOp, Op};
use tidemark::replica::ReplicaConfig;
use tidemark::{NodeId, Time, VersionVector};

use crate::node::{self, Birth, History, Input, Msg, Observation, Outcome, Output, Setup};
use crate::properties;
use crate::scope::{Clock, Scope};

/// Whether a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The joiner before `StartJoiner`.
    NotStarted,
    Running,
    /// Stopped for good; its replica keeps the state it crashed in.
    Crashed,
}

/// One node of the model state.
#[derive(Clone)]
pub struct NodeState {
    pub status: Status,
    /// When the replica was created (0 for founders).
    pub start: Time,
    /// Local clock.
    pub time: Time,
    /// The last `ScheduleWake` not yet acted on.
    pub wake: Option<Time>,
    pub writes_left: u8,
    /// The inputs the replica handled (to rebuild it; not part of the identity).
    pub history: History,
    /// I1 shadow: the applied vector rebuilt from the ops the replica reported applying.
    pub shadow: VersionVector,
    /// How many blocks the replica's generator has produced (see `node` module doc).
    pub rng_blocks: u32,
    pub obs: Option<Arc<Observation>>,
}

impl NodeState {
    pub fn running(&self) -> bool {
        self.status == Status::Running
    }

    /// Started (running or crashed) and joined, and not yet announced `Left`.
    pub fn member(&self) -> bool {
        self.obs.as_ref().is_some_and(|o| o.member)
    }

    pub fn left(&self) -> bool {
        self.obs.as_ref().is_some_and(|o| o.left)
    }
}

/// A message on its way.
#[derive(Clone)]
pub struct InFlight {
    pub from: usize,
    pub to: usize,
    pub message: Msg,
    /// Content hash (`node::message_fingerprint`).
    pub fingerprint: u64,
}

impl InFlight {
    fn key(&self) -> (usize, usize, u64) {
        (self.to, self.from, self.fingerprint)
    }
}

/// The first invariant violation seen on a path (I1 and I2 are checked on transitions).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

/// A state of the modelled network.
#[derive(Clone)]
pub struct ModelState {
    pub nodes: Vec<NodeState>,
    /// In-flight messages, sorted by (receiver, sender, content hash).
    pub network: Vec<InFlight>,
    pub losses_left: u8,
    pub faults_left: u8,
    /// Whether some message was lost on this path.
    pub lost: bool,
    /// The joiner's registration cut (meet of every registration of it a sponsor made).
    pub join_cut: Option<VersionVector>,
    /// Every view any node installed on this path, by epoch (I6).
    pub views: BTreeMap<u64, View>,
    pub violation: Option<Violation>,
}

impl Hash for ModelState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for n in &self.nodes {
            n.status.hash(state);
            n.time.hash(state);
            n.wake.hash(state);
            n.writes_left.hash(state);
            n.shadow.hash(state);
            n.rng_blocks.hash(state);
            n.obs
                .as_ref()
                .map(|o| (o.fingerprint, o.rng_index))
                .hash(state);
        }
        self.network.len().hash(state);
        for m in &self.network {
            m.key().hash(state);
        }
        self.losses_left.hash(state);
        self.faults_left.hash(state);
        self.lost.hash(state);
        self.join_cut.hash(state);
        self.views.hash(state);
        self.violation.hash(state);
    }
}

impl PartialEq for ModelState {
    /// Equality of fingerprints, consistent with `Hash` (see module doc).
    fn eq(&self, other: &Self) -> bool {
        let mut a = std::collections::hash_map::DefaultHasher::new();
        let mut b = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut a);
        other.hash(&mut b);
        a.finish() == b.finish()
    }
}

impl fmt::Debug for ModelState {
    /// A summary: per node its status, clock, wake-up, applied vector and snapshot point;
    /// the in-flight messages; the budgets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            write!(f, "n{i} {:?} t={}ms", n.status, n.time.as_millis_f64())?;
            if let Some(w) = n.wake {
                write!(f, " wake={}ms", w.as_millis_f64())?;
            }
            if let Some(o) = &n.obs {
                let phase = if o.left {
                    "left"
                } else if o.leaving {
                    "leaving"
                } else if o.member {
                    "member"
                } else {
                    "joining"
                };
                write!(
                    f,
                    " {phase} A={:?} SP={:?} cut={:?} {:?}",
                    o.applied, o.snapshot_point, o.stable_cut, o.digest
                )?;
            }
            writeln!(f)?;
        }
        write!(f, "in flight:")?;
        for m in &self.network {
            write!(f, " n{}→n{}:{}", m.from, m.to, m.message.kind())?;
        }
        writeln!(f)?;
        write!(
            f,
            "losses left {}, faults left {}, join cut {:?}",
            self.losses_left, self.faults_left, self.join_cut
        )?;
        if let Some(v) = &self.violation {
            write!(f, "\nVIOLATION {}: {}", v.property, v.detail)?;
        }
        Ok(())
    }
}

/// A nondeterministic step of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelAction {
    StartJoiner,
    Write(usize),
    Leave(usize),
    Crash(usize),
    Timeout(usize),
    /// Deliver the in-flight message at `index` (of the sorted multiset).
    Deliver {
        index: usize,
        from: usize,
        to: usize,
        kind: &'static str,
    },
    /// Lose the in-flight message at `index`.
    Lose {
        index: usize,
        from: usize,
        to: usize,
        kind: &'static str,
    },
}

/// The model of one scope.
pub struct TidemarkModel {
    pub scope: Scope,
    pub ids: Vec<NodeId>,
    pub setups: Vec<Setup>,
    /// Longest fault-free continuation (µs) the L1 check needed before convergence.
    pub settle_max_micros: AtomicU64,
    /// Number of quiescent states the L1 check ran on.
    pub settle_checks: AtomicU64,
    /// (node, history fingerprint) → what the last input of that history did. A node's
    /// history recurs in many global states (every interleaving of the other nodes), and
    /// rebuilding a replica and reading its `Debug` output is the dominant cost.
    steps: Mutex<HashMap<(usize, u64), Arc<Outcome>>>,
    pub step_hits: AtomicU64,
    pub step_misses: AtomicU64,
}

/// Entries kept in the step cache before it is cleared (bounds memory).
const STEP_CACHE_MAX: usize = 2_000_000;

impl TidemarkModel {
    pub fn new(scope: Scope) -> TidemarkModel {
        let ids: Vec<NodeId> = (0..scope.nodes() as u64).map(NodeId::synthetic).collect();
        let config = ReplicaConfig {
            gossip: scope.gossip.clone(),
            addrs: Vec::new(),
            journal_applied: true,
            // synthetic node ids carry no keys: ops are unsigned here
            auth: None,
            planted: None,
            writers: None,
            aggregation: None,
            aggregation_decides: false,
        };
        let founders: Vec<NodeId> = ids[..scope.founders].to_vec();
        let setups = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Setup {
                id: id.clone(),
                birth: if i < scope.founders {
                    Birth::Founder {
                        founders: founders.clone(),
                    }
                } else {
                    Birth::Joiner {
                        sponsor: ids[0].clone(),
                    }
                },
                seed: i as u64,
                config: config.clone(),
            })
            .collect();
        TidemarkModel {
            scope,
            ids,
            setups,
            settle_max_micros: AtomicU64::new(0),
            settle_checks: AtomicU64::new(0),
            steps: Mutex::new(HashMap::new()),
            step_hits: AtomicU64::new(0),
            step_misses: AtomicU64::new(0),
        }
    }

    pub fn watched(&self) -> Option<&NodeId> {
        self.scope.joiner_index().map(|j| &self.ids[j])
    }

    /// Whether nothing is in flight and no wake-up lies within the horizon: the end of a
    /// bounded run.
    pub fn quiescent(&self, state: &ModelState) -> bool {
        state.network.is_empty()
            && state
                .nodes
                .iter()
                .all(|n| !n.running() || n.wake.is_none_or(|w| w > self.scope.horizon))
    }

    /// Runs `input` on node `i` and folds its effects into `state`.
    fn step(&self, state: &mut ModelState, i: usize, input: Input) {
        let node = &mut state.nodes[i];
        let before = node.history.clone();
        node.history.push(input.clone());
        let key = (i, node.history.fingerprint);
        let cached = self.steps.lock().expect("step cache").get(&key).cloned();
        let outcome = match cached {
            Some(outcome) => {
                self.step_hits.fetch_add(1, Ordering::Relaxed);
                outcome
            }
            None => {
                self.step_misses.fetch_add(1, Ordering::Relaxed);
                let mut replica = self.setups[i].rebuild(node.start, &before);
                node::apply(&mut replica, &input);
                let outcome = Arc::new(Outcome::read(&mut replica, &self.ids, self.watched()));
                let mut steps = self.steps.lock().expect("step cache");
                if steps.len() >= STEP_CACHE_MAX {
                    steps.clear();
                }
                steps.insert(key, outcome.clone());
                outcome
            }
        };
        self.absorb(state, i, &outcome);
    }

    /// Records node i's new observation, checks I1/I2 on the transition, and turns its
    /// outputs into in-flight messages and a wake-up.
    fn absorb(&self, state: &mut ModelState, i: usize, outcome: &Outcome) {
        let obs = &outcome.obs;
        let old = state.nodes[i].obs.clone();
        if let Some(v) = check_transition(
            i,
            old.as_deref(),
            obs,
            &mut state.nodes[i],
            &outcome.applied,
        ) {
            state.violation.get_or_insert(v);
        }
        for view in &outcome.installed {
            match state.views.get(&view.epoch) {
                Some(first) if first != view => {
                    state.violation.get_or_insert(Violation {
                        property: properties::I6,
                        detail: format!("n{i} installed {view:?}, another node {first:?}"),
                    });
                }
                Some(_) => {}
                None => {
                    state.views.insert(view.epoch, view.clone());
                }
            }
        }
        if let Some(cut) = &obs.registered {
            state.join_cut = Some(match &state.join_cut {
                Some(c) => c.meet(cut),
                None => cut.clone(),
            });
        }
        let node = &mut state.nodes[i];
        if let Some(old) = &old {
            if obs.rng_index < old.rng_index {
                node.rng_blocks += 1;
            }
        } else if obs.rng_index < 64 {
            node.rng_blocks += 1;
        }
        node.obs = Some(obs.clone());
        for output in &outcome.outputs {
            match output {
                Output::Send {
                    to,
                    message,
                    fingerprint,
                } => push(state, i, *to, message, *fingerprint),
                Output::Publish {
                    message,
                    fingerprint,
                } => {
                    for j in 0..state.nodes.len() {
                        if j != i {
                            push(state, i, j, message, *fingerprint);
                        }
                    }
                }
                Output::Wake(at) => state.nodes[i].wake = Some(*at),
            }
        }
    }

    fn write_op(&self, i: usize, state: &ModelState) -> LwwOp {
        let written = self.scope.writes[i] - state.nodes[i].writes_left;
        LwwOp {
            key: "k".into(),
            value: Some(format!("n{i}w{written}")),
        }
    }
}

/// Adds a message in flight unless its receiver is not running.
fn push(state: &mut ModelState, from: usize, to: usize, message: &Msg, fingerprint: u64) {
    if !state.nodes[to].running() {
        return;
    }
    let m = InFlight {
        from,
        to,
        fingerprint,
        message: message.clone(),
    };
    let at = state.network.partition_point(|x| x.key() <= m.key());
    state.network.insert(at, m);
}

/// I1 (each applied op is the next of its origin, with its deps applied, and the applied
/// vector is exactly the ops reported) and I2 (applied vector and snapshot point never go
/// down) on one transition of node i.
fn check_transition(
    i: usize,
    old: Option<&Observation>,
    new: &Observation,
    node: &mut NodeState,
    applied: &[Arc<Op<LwwOp>>],
) -> Option<Violation> {
    let was_member = old.is_some_and(|o| o.member || o.left);
    if !was_member && new.member {
        // joined (or founded): the installed state, the sponsor's stable state plus the op
        // suffix, is the starting point; the replica does not report those ops one by one
        node.shadow = new.applied.clone();
        return None;
    }
    for op in applied {
        let have = node.shadow.get(&op.origin);
        if op.seq != have + 1 || !op.deps.le(&node.shadow) {
            return Some(Violation {
                property: properties::I1,
                detail: format!(
                    "n{i} applied {:?}/{} (deps {:?}) with shadow {:?}",
                    op.origin, op.seq, op.deps, node.shadow
                ),
            });
        }
        node.shadow.set(op.origin.clone(), op.seq);
    }
    if (was_member || new.member) && node.shadow != new.applied {
        return Some(Violation {
            property: properties::I1,
            detail: format!(
                "n{i} applied vector {:?} differs from the ops it reported {:?}",
                new.applied, node.shadow
            ),
        });
    }
    if let Some(old) = old {
        if !old.applied.le(&new.applied) || !old.snapshot_point.le(&new.snapshot_point) {
            return Some(Violation {
                property: properties::I2,
                detail: format!(
                    "n{i} went from A={:?} SP={:?} to A={:?} SP={:?}",
                    old.applied, old.snapshot_point, new.applied, new.snapshot_point
                ),
            });
        }
    }
    None
}

impl Model for TidemarkModel {
    type State = ModelState;
    type Action = ModelAction;

    fn init_states(&self) -> Vec<ModelState> {
        let mut state = ModelState {
            nodes: (0..self.scope.nodes())
                .map(|i| NodeState {
                    status: if i < self.scope.founders {
                        Status::Running
                    } else {
                        Status::NotStarted
                    },
                    start: Time::ZERO,
                    time: Time::ZERO,
                    wake: None,
                    writes_left: self.scope.writes.get(i).copied().unwrap_or(0),
                    history: History::new(i, Time::ZERO),
                    shadow: VersionVector::new(),
                    rng_blocks: 0,
                    obs: None,
                })
                .collect(),
            network: Vec::new(),
            losses_left: self.scope.losses,
            faults_left: self.scope.membership_faults,
            lost: false,
            join_cut: None,
            views: BTreeMap::new(),
            violation: None,
        };
        for i in 0..self.scope.founders {
            let outcome = self.setups[i].start(Time::ZERO, &self.ids, self.watched());
            self.absorb(&mut state, i, &outcome);
        }
        vec![state]
    }

    fn actions(&self, state: &ModelState, actions: &mut Vec<ModelAction>) {
        if state.violation.is_some() {
            return;
        }
        if let Some(j) = self.scope.joiner_index() {
            if state.nodes[j].status == Status::NotStarted {
                actions.push(ModelAction::StartJoiner);
            }
        }
        let first_wake = state
            .nodes
            .iter()
            .filter(|n| n.running())
            .filter_map(|n| n.wake)
            .min();
        for (i, n) in state.nodes.iter().enumerate() {
            if !n.running() {
                continue;
            }
            let obs = n.obs.as_ref().expect("a running node has been observed");
            if n.writes_left > 0 && obs.member && !obs.leaving {
                actions.push(ModelAction::Write(i));
            }
            if n.wake
                .is_some_and(|w| self.scope.clock == Clock::PerNode || Some(w) <= first_wake)
            {
                actions.push(ModelAction::Timeout(i));
            }
            if state.faults_left > 0 {
                if self.scope.leavers.contains(&i) && obs.member && !obs.leaving {
                    actions.push(ModelAction::Leave(i));
                }
                if self.scope.crashers.contains(&i) {
                    actions.push(ModelAction::Crash(i));
                }
            }
        }
        for (index, m) in state.network.iter().enumerate() {
            // identical copies of a message lead to the same state: offer the first only
            if index > 0 && state.network[index - 1].key() == m.key() {
                continue;
            }
            let (from, to, kind) = (m.from, m.to, m.message.kind());
            actions.push(ModelAction::Deliver {
                index,
                from,
                to,
                kind,
            });
            if state.losses_left > 0 {
                actions.push(ModelAction::Lose {
                    index,
                    from,
                    to,
                    kind,
                });
            }
        }
    }

    fn next_state(&self, last: &ModelState, action: ModelAction) -> Option<ModelState> {
        let mut state = last.clone();
        match action {
            ModelAction::StartJoiner => {
                let j = self.scope.joiner_index()?;
                let start = match self.scope.clock {
                    Clock::PerNode => Time::ZERO,
                    Clock::Global => state.nodes[0].time,
                };
                let node = &mut state.nodes[j];
                node.status = Status::Running;
                node.start = start;
                node.time = start;
                node.history = History::new(j, start);
                let outcome = self.setups[j].start(start, &self.ids, self.watched());
                self.absorb(&mut state, j, &outcome);
            }
            ModelAction::Write(i) => {
                let op = self.write_op(i, &state);
                state.nodes[i].writes_left -= 1;
                let now = state.nodes[i].time;
                self.step(&mut state, i, Input::Write { now, op });
            }
            ModelAction::Leave(i) => {
                state.faults_left -= 1;
                let now = state.nodes[i].time;
                self.step(&mut state, i, Input::Leave { now });
            }
            ModelAction::Crash(i) => {
                state.faults_left -= 1;
                state.nodes[i].status = Status::Crashed;
                state.nodes[i].wake = None;
                state.network.retain(|m| m.to != i);
            }
            ModelAction::Timeout(i) => {
                let node = &mut state.nodes[i];
                let now = node.time.max(node.wake.take()?);
                match self.scope.clock {
                    Clock::PerNode => node.time = now,
                    Clock::Global => state.nodes.iter_mut().for_each(|n| n.time = now),
                }
                self.step(&mut state, i, Input::Timeout { now });
            }
            ModelAction::Deliver { index, .. } => {
                let m = state.network.remove(index);
                let now = state.nodes[m.to].time;
                let input = Input::Message {
                    now,
                    from: self.ids[m.from].clone(),
                    message: m.message,
                    fingerprint: m.fingerprint,
                };
                self.step(&mut state, m.to, input);
            }
            ModelAction::Lose { index, .. } => {
                state.network.remove(index);
                state.losses_left -= 1;
                state.lost = true;
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all(&self.scope)
    }

    fn within_boundary(&self, state: &ModelState) -> bool {
        state.nodes.iter().all(|n| n.time <= self.scope.horizon)
    }
}

/// Records a settle duration for the report.
pub(crate) fn note_settle(model: &TidemarkModel, micros: u64) {
    model.settle_checks.fetch_add(1, Ordering::Relaxed);
    model.settle_max_micros.fetch_max(micros, Ordering::Relaxed);
}
