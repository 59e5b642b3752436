//! The discrete-event engine: a seeded RNG, a simulated clock and a timed event queue drive
//! real `tidemark::replica::Replica`s — the same core the node runs — over the simulated
//! network, and the invariants are checked after every event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tidemark::gossip::{encoded_len, Message};
use tidemark::network_map::{MemberRecord, MinTracker};
use tidemark::ops_log::{LwwMap, LwwOp};
use tidemark::replica::{Action, Replica, ReplicaConfig};
use tidemark::{NodeId, Time, VersionVector};

use crate::config::SimConfig;
use crate::invariants::{agreement, causal_delivery, liveness, monotone, safety, Violations};
use crate::metrics::{round3, Latencies, RecordMerges, Sample, Traffic};
use crate::network::{Links, Mesh, SeenCache};
use crate::report::Report;

type Msg = Arc<Message<LwwMap>>;

#[derive(Debug)]
enum EventKind {
    Deliver {
        to: usize,
        from: usize,
        message: Msg,
        size: usize,
        /// Set for published messages travelling over the mesh.
        mesh_id: Option<u64>,
    },
    Wake {
        node: usize,
    },
    Write,
    Join,
    Leave,
    /// A node that left stops answering (its linger is over).
    Stop {
        node: usize,
    },
    Sample,
}

#[derive(Debug)]
struct Event {
    at: Time,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    replica: Replica<LwwMap>,
    member: bool,
    /// Announced `Left` (no longer a member in good standing).
    departed: bool,
    /// Stopped after leaving: messages to it are dropped.
    stopped: bool,
    wake: Option<Time>,
    seen: SeenCache,
    /// I1 shadow: the applied vector rebuilt from the ops the replica reported.
    shadow: VersionVector,
    last_sp: VersionVector,
}

impl SimNode {
    fn new(replica: Replica<LwwMap>) -> Self {
        SimNode {
            replica,
            member: false,
            departed: false,
            stopped: false,
            wake: None,
            seen: SeenCache::default(),
            shadow: VersionVector::new(),
            last_sp: VersionVector::new(),
        }
    }
}

/// Observations across all members, kept incrementally.
#[derive(Default)]
pub struct GlobalView {
    /// Pointwise minimum of `A(m)` over members in good standing.
    pub applied_min: MinTracker,
    /// Pointwise minimum of `SP(m)` over members in good standing.
    pub sp_min: MinTracker,
    /// Every op written.
    pub union: VersionVector,
}

/// Progress callback: (simulated ms, ops written, ops stable everywhere).
pub type Progress<'a> = &'a mut dyn FnMut(f64, u64, u64);

/// One simulated run.
pub struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    nodes: Vec<SimNode>,
    links: Links,
    mesh: Mesh,
    next_mesh_id: u64,
    size_cache: Option<(usize, usize)>,
    view: GlobalView,
    violations: Violations,
    agreement: agreement::Agreement,
    created_at: Vec<Vec<Time>>,
    written: u64,
    dissemination: Latencies,
    sp_lag: Latencies,
    disseminated_upto: BTreeMap<NodeId, u64>,
    stable_upto: BTreeMap<NodeId, u64>,
    traffic: Traffic,
    samples: Vec<Sample>,
    lag_since_sample: (u64, u64),
    last_write_at: Option<Time>,
    converged_at: Option<Time>,
    events: u64,
    last_rotate: Time,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let total = config.nodes + config.joins;
        let ids: Vec<NodeId> = (0..total as u64)
            .map(|i| NodeId::synthetic(config.seed.wrapping_mul(1_000_003).wrapping_add(i)))
            .collect();
        let index = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        let mesh = Mesh::founding(&mut rng, config.nodes, config.mesh_degree);
        let links = Links::new(&config);
        let writers = config.writers.clamp(1, config.nodes.max(1));
        let mut sim = Sim {
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            index,
            nodes: Vec::new(),
            links,
            mesh,
            next_mesh_id: 0,
            size_cache: None,
            view: GlobalView::default(),
            violations: Violations::default(),
            agreement: agreement::Agreement::default(),
            created_at: vec![Vec::new(); writers],
            written: 0,
            dissemination: Latencies::default(),
            sp_lag: Latencies::default(),
            disseminated_upto: BTreeMap::new(),
            stable_upto: BTreeMap::new(),
            traffic: Traffic::default(),
            samples: Vec::new(),
            lag_since_sample: (0, 0),
            last_write_at: None,
            converged_at: None,
            events: 0,
            last_rotate: Time::ZERO,
            ids,
            config,
        };
        sim.config.writers = writers;
        let founders: Vec<_> = sim.ids[..sim.config.nodes]
            .iter()
            .map(|id| Arc::new(MemberRecord::founder(id.clone())))
            .collect();
        for i in 0..sim.config.nodes {
            let replica = Replica::genesis_with_records(
                sim.ids[i].clone(),
                &founders,
                sim.replica_config(),
                sim.config.seed ^ (i as u64).wrapping_mul(0x5851_f42d_4c95_7f2d),
                Time::ZERO,
            );
            sim.nodes.push(SimNode::new(replica));
            sim.observe(i);
            sim.dispatch(i);
        }
        // joins happen at random times while ops are written
        let write_span = (sim.config.ops as f64 / sim.config.rate.max(1e-9) * 1e6) as u64;
        for _ in 0..sim.config.joins {
            let at = Time(sim.rng.random_range(0..=write_span.max(1)));
            sim.push(at, EventKind::Join);
        }
        for _ in 0..sim.config.leaves {
            let at = Time(sim.rng.random_range(0..=write_span.max(1)));
            sim.push(at, EventKind::Leave);
        }
        if sim.config.ops > 0 {
            sim.push(Time::ZERO, EventKind::Write);
        }
        sim.push(Time::ZERO, EventKind::Sample);
        sim
    }

    fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            gossip: self.config.gossip.clone(),
            addrs: Vec::new(),
            journal_applied: true,
        }
    }

    fn push(&mut self, at: Time, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn ms(&self) -> f64 {
        self.now.as_millis_f64()
    }

    /// Runs to the end: all ops written, then until every member's snapshot point holds
    /// every op (L1) or the liveness bound passes.
    pub fn run(mut self, progress: Progress<'_>) -> Report {
        let started = std::time::Instant::now();
        while let Some(Reverse(event)) = self.queue.pop() {
            self.now = event.at;
            self.events += 1;
            match event.kind {
                EventKind::Deliver {
                    to,
                    from,
                    message,
                    size,
                    mesh_id,
                } => self.deliver(to, from, message, size, mesh_id),
                EventKind::Wake { node } => {
                    if self.nodes[node].wake == Some(event.at) && !self.nodes[node].stopped {
                        self.nodes[node].wake = None;
                        let now = self.now;
                        self.nodes[node].replica.handle_timeout(now);
                        self.observe(node);
                        self.dispatch(node);
                    }
                }
                EventKind::Write => self.write(),
                EventKind::Join => self.join(),
                EventKind::Leave => self.leave(),
                EventKind::Stop { node } => self.nodes[node].stopped = true,
                EventKind::Sample => {
                    self.sample();
                    progress(self.ms(), self.written, self.view.sp_min.min().total());
                    if self.finished() {
                        break;
                    }
                    let next = self.now + self.config.sample_interval;
                    self.push(next, EventKind::Sample);
                }
            }
            if self.converged_at.is_none()
                && self.written == self.config.ops
                && self.view.sp_min.min() == &self.view.union
                && self.view.applied_min.min() == &self.view.union
            {
                self.converged_at = Some(self.now);
            }
        }
        self.finish(started.elapsed().as_secs_f64())
    }

    fn finished(&self) -> bool {
        let Some(last) = self.last_write_at.or(if self.config.ops == 0 {
            Some(Time::ZERO)
        } else {
            None
        }) else {
            return false;
        };
        let joins_done = self.nodes.len() == self.ids.len() && self.nodes.iter().all(|n| n.member);
        if self.converged_at.is_some() && joins_done {
            return true;
        }
        self.now >= last + self.config.liveness_bound
    }

    fn deliver(&mut self, to: usize, from: usize, message: Msg, size: usize, mesh_id: Option<u64>) {
        if self.nodes[to].stopped {
            return;
        }
        if let Some(id) = mesh_id {
            if !self.nodes[to].seen.insert(id) {
                return;
            }
            self.forward(to, Some(from), id, &message, size);
        }
        let now = self.now;
        let from_id = self.ids[from].clone();
        self.nodes[to]
            .replica
            .handle_message(now, &from_id, &message);
        self.observe(to);
        self.dispatch(to);
    }

    fn forward(&mut self, node: usize, except: Option<usize>, id: u64, message: &Msg, size: usize) {
        let neighbours = self.mesh.neighbours(node).to_vec();
        for peer in neighbours {
            if Some(peer) == except {
                continue;
            }
            self.transmit(node, peer, message.clone(), size, Some(id));
        }
    }

    fn transmit(
        &mut self,
        from: usize,
        to: usize,
        message: Msg,
        size: usize,
        mesh_id: Option<u64>,
    ) {
        self.traffic.count(message.kind(), size);
        for delay in self.links.transmit(&mut self.rng, from, to) {
            let at = self.now + delay;
            self.push(
                at,
                EventKind::Deliver {
                    to,
                    from,
                    message: message.clone(),
                    size,
                    mesh_id,
                },
            );
        }
    }

    fn size_of(&mut self, message: &Msg) -> usize {
        let key = Arc::as_ptr(message) as usize;
        match self.size_cache {
            Some((k, size)) if k == key => size,
            _ => {
                let size = encoded_len(&**message);
                self.size_cache = Some((key, size));
                size
            }
        }
    }

    fn dispatch(&mut self, n: usize) {
        while let Some(action) = self.nodes[n].replica.poll_action() {
            match action {
                Action::Send { to, message } => {
                    let size = self.size_of(&message);
                    if let Some(&j) = self.index.get(&to) {
                        if j < self.nodes.len() {
                            self.transmit(n, j, message, size, None);
                        }
                    }
                }
                Action::Publish { message } => {
                    let size = self.size_of(&message);
                    self.next_mesh_id += 1;
                    let id = self.next_mesh_id;
                    self.nodes[n].seen.insert(id);
                    self.forward(n, None, id, &message, size);
                }
                Action::ScheduleWake { at } => {
                    let at = at.max(self.now);
                    if self.nodes[n].wake != Some(at) {
                        self.nodes[n].wake = Some(at);
                        self.push(at, EventKind::Wake { node: n });
                    }
                }
            }
        }
        self.size_cache = None;
    }

    /// Reads what changed at node `n` and checks the invariants.
    fn observe(&mut self, n: usize) {
        let at = self.ms();
        let now = self.now;
        let node = &mut self.nodes[n];
        let applied_ops = node.replica.drain_applied_ops();
        if node.member && node.replica.has_left() {
            // it announced `Left`: no longer a member in good standing; it lingers to answer
            // digests, then stops
            node.member = false;
            node.departed = true;
            self.view.applied_min.remove(&node.shadow);
            self.view.sp_min.remove(&node.last_sp);
            let origins: Vec<NodeId> = self.view.union.iter().map(|(o, _)| o.clone()).collect();
            for origin in &origins {
                self.record_dissemination(origin, now);
                self.record_stable(origin, now);
            }
            let stop_at = now + Duration::from_secs(3);
            self.push(stop_at, EventKind::Stop { node: n });
            return;
        }
        if node.departed {
            return;
        }
        if !node.member {
            if !node.replica.is_member() {
                return;
            }
            // the node has just become a member (founded or joined): convergence must now
            // include it
            node.member = true;
            self.converged_at = None;
            node.shadow = node.replica.applied().clone();
            node.last_sp = node.replica.snapshot_point().clone();
            self.view.applied_min.add(&node.shadow);
            self.view.sp_min.add(&node.last_sp);
            let new_applied = node.shadow.clone();
            for (i, other) in self.nodes.iter().enumerate() {
                if other.member {
                    self.violations.check(
                        safety::NAME,
                        at,
                        safety::check(&other.last_sp, &new_applied)
                            .map_err(|e| format!("node {i} vs joiner {n}: {e}")),
                    );
                }
            }
            return;
        }
        for op in &applied_ops {
            let node = &mut self.nodes[n];
            self.violations.check(
                causal_delivery::NAME,
                at,
                causal_delivery::check_op(&node.shadow, op),
            );
            let old = node.shadow.get(&op.origin);
            if op.seq > old {
                node.shadow.set(op.origin.clone(), op.seq);
                self.view.applied_min.change(&op.origin, old, op.seq);
                self.record_dissemination(&op.origin.clone(), now);
            }
        }
        let node = &mut self.nodes[n];
        self.violations.check(
            causal_delivery::NAME,
            at,
            causal_delivery::check_vector(&node.shadow, node.replica.applied()),
        );
        let sp = node.replica.snapshot_point();
        if sp.ptr_eq(&node.last_sp) || *sp == node.last_sp {
            return;
        }
        let sp = sp.clone();
        self.violations.check(
            monotone::NAME,
            at,
            monotone::check(&node.last_sp, &sp, node.replica.applied()),
        );
        self.violations.check(
            safety::NAME,
            at,
            safety::check(&sp, self.view.applied_min.min()),
        );
        let digest = node.replica.stable_digest();
        let result = self.agreement.check(&sp, node.replica.stable_cut(), digest);
        self.violations.check(agreement::NAME, at, result);
        let changes = node.last_sp.changes_to(&sp);
        node.last_sp = sp;
        for (origin, old, new) in changes {
            self.view.sp_min.change(&origin, old, new);
            self.record_stable(&origin, now);
        }
    }

    fn created(&self, origin: &NodeId, seq: u64) -> Option<Time> {
        let w = *self.index.get(origin)?;
        self.created_at.get(w)?.get(seq as usize - 1).copied()
    }

    /// Ops of `origin` that just came under a global minimum (`everywhere`), above `done`:
    /// each one's latency from creation to `now`, in µs. Advances `done`.
    fn newly_everywhere(
        &self,
        origin: &NodeId,
        everywhere: u64,
        done: &mut u64,
        now: Time,
    ) -> Vec<u64> {
        let mut latencies = Vec::new();
        if everywhere > *done {
            for seq in *done + 1..=everywhere {
                if let Some(t) = self.created(origin, seq) {
                    latencies.push(now.since(t).as_micros() as u64);
                }
            }
            *done = everywhere;
        }
        latencies
    }

    fn record_dissemination(&mut self, origin: &NodeId, now: Time) {
        let everywhere = self.view.applied_min.min().get(origin);
        let mut done = self.disseminated_upto.get(origin).copied().unwrap_or(0);
        for latency in self.newly_everywhere(origin, everywhere, &mut done, now) {
            self.dissemination.push(latency);
        }
        self.disseminated_upto.insert(origin.clone(), done);
    }

    fn record_stable(&mut self, origin: &NodeId, now: Time) {
        let everywhere = self.view.sp_min.min().get(origin);
        let mut done = self.stable_upto.get(origin).copied().unwrap_or(0);
        for lag in self.newly_everywhere(origin, everywhere, &mut done, now) {
            self.sp_lag.push(lag);
            self.lag_since_sample.0 += lag;
            self.lag_since_sample.1 += 1;
        }
        self.stable_upto.insert(origin.clone(), done);
    }

    fn write(&mut self) {
        let w = self.rng.random_range(0..self.config.writers);
        let key = format!("k{}", self.rng.random_range(0..self.config.keys.max(1)));
        let value = (self.rng.random_range(0..10u32) != 0).then(|| format!("v{}", self.written));
        let now = self.now;
        if let Ok(op) = self.nodes[w].replica.write(now, LwwOp { key, value }) {
            self.created_at[w].push(now);
            self.view.union.set(op.origin.clone(), op.seq);
            self.written += 1;
        }
        self.observe(w);
        self.dispatch(w);
        if self.written < self.config.ops {
            let gap = -(1.0 - self.rng.random::<f64>()).ln() / self.config.rate * 1e6;
            let next = self.now + Duration::from_micros(gap as u64);
            self.push(next, EventKind::Write);
        } else {
            self.last_write_at = Some(self.now);
        }
    }

    fn join(&mut self) {
        let node = self.nodes.len();
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member && !self.nodes[i].replica.is_leaving())
            .collect();
        // up to three bootstrap peers; the joiner moves on only when one refuses
        let mut sponsors = Vec::new();
        for _ in 0..3 {
            let pick = members[self.rng.random_range(0..members.len())];
            if !sponsors.contains(&pick) {
                sponsors.push(pick);
            }
        }
        let degree = self.config.mesh_degree;
        self.mesh.add_node(&mut self.rng, degree, &members);
        let replica = Replica::joiner_via(
            self.ids[node].clone(),
            1,
            sponsors.iter().map(|&i| self.ids[i].clone()).collect(),
            self.replica_config(),
            self.config.seed ^ (node as u64).wrapping_mul(0x5851_f42d_4c95_7f2d),
            self.now,
        );
        self.nodes.push(SimNode::new(replica));
        self.observe(node);
        self.dispatch(node);
    }

    /// A random non-writing member starts a graceful leave (if any is left to go).
    fn leave(&mut self) {
        let candidates: Vec<usize> = (self.config.writers..self.nodes.len())
            .filter(|&i| self.nodes[i].member && !self.nodes[i].replica.is_leaving())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let n = candidates[self.rng.random_range(0..candidates.len())];
        let now = self.now;
        if self.nodes[n].replica.leave(now).is_ok() {
            self.observe(n);
            self.dispatch(n);
        }
    }

    fn sample(&mut self) {
        if self.now >= self.last_rotate + Duration::from_secs(60) {
            self.last_rotate = self.now;
            for n in &mut self.nodes {
                n.seen.rotate();
            }
        }
        let (sum, count) = std::mem::take(&mut self.lag_since_sample);
        self.samples.push(Sample {
            t_ms: round3(self.ms()),
            created: self.written,
            applied_everywhere: self.view.applied_min.min().total(),
            stable_everywhere: self.view.sp_min.min().total(),
            sp_lag_ms: (count > 0).then(|| round3(sum as f64 / count as f64 / 1_000.0)),
        });
    }

    fn finish(mut self, wall_s: f64) -> Report {
        let members: Vec<(String, VersionVector, VersionVector)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.member)
            .map(|(i, n)| {
                (
                    format!("node {i}"),
                    n.replica.applied().clone(),
                    n.replica.snapshot_point().clone(),
                )
            })
            .collect();
        let mut live = liveness::check(
            &self.view.union,
            members.iter().map(|(l, a, s)| (l.clone(), a, s)),
        );
        let not_joined = self.nodes.len() < self.ids.len()
            || self.nodes.iter().any(|n| !n.member && !n.departed);
        if live.is_ok() && not_joined {
            live = Err("a joiner never became a member".to_string());
        }
        if let (Ok(()), Some(last), Some(conv)) = (&live, self.last_write_at, self.converged_at) {
            if conv > last + self.config.liveness_bound {
                live = Err(format!(
                    "converged {:.0} ms after the last write, beyond the bound",
                    conv.since(last).as_millis()
                ));
            }
        }
        let liveness_failure = live.is_err();
        let mut merges = RecordMerges::default();
        for n in &self.nodes {
            let stats = n.replica.stats();
            merges.adopted += stats.records_adopted;
            merges.pending += stats.records_pending;
            merges.outdated += stats.records_outdated;
        }
        let at = self.ms();
        self.violations.check(liveness::NAME, at, live);
        Report::new(
            &self.config,
            ReportInputs {
                violations: self.violations,
                liveness_failure,
                converged: !liveness_failure,
                convergence_ms: match (self.last_write_at, self.converged_at) {
                    (Some(l), Some(c)) => Some(round3(c.since(l).as_micros() as f64 / 1_000.0)),
                    _ => None,
                },
                dissemination: self.dissemination,
                sp_lag: self.sp_lag,
                traffic: self.traffic,
                written: self.written,
                events: self.events,
                cuts: self.agreement.cuts(),
                record_merges: merges,
                sim_time_s: round3(self.now.as_millis_f64() / 1_000.0),
                wall_s,
                samples: self.samples,
            },
        )
    }
}

/// What the engine hands the report.
pub struct ReportInputs {
    pub violations: Violations,
    pub liveness_failure: bool,
    pub converged: bool,
    pub convergence_ms: Option<f64>,
    pub dissemination: Latencies,
    pub sp_lag: Latencies,
    pub traffic: Traffic,
    pub written: u64,
    pub events: u64,
    pub cuts: usize,
    pub record_merges: RecordMerges,
    pub sim_time_s: f64,
    pub wall_s: f64,
    pub samples: Vec<Sample>,
}
