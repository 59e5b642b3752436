//! The discrete-event engine: a seeded RNG, a simulated clock and a timed event queue drive
//! real `tidemark::replica::Replica`s — the same core the node runs — over the simulated
//! network, and the invariants are checked after every event.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tidemark::gossip::{encoded_len, published_len, report_len, Message};
use tidemark::join_protocol::awaited::HeldGrant;
use tidemark::network_map::{MinTracker, Sponsorship};
use tidemark::ops_log::{LwwMap, LwwOp};
use tidemark::replica::{Action, Checkpoint, Founders, Replica, ReplicaConfig};
use tidemark::{NodeId, Time, VersionVector};

use crate::config::{CrashGuard, SimConfig};
use crate::costs::{Arrival, Charges};
use crate::ground_truth::{ExpectedState, GroundTruth, SimOp};
use crate::invariants::safety::{ExcuseCounts, Excuses};
use crate::invariants::{
    aggregated, agreement, causal_delivery, liveness, monotone, no_lost_writes, safety,
    single_history, Violations,
};
use crate::metrics::{round3, FaultStats, Histogram, Latencies, RecordMerges, Sample, Traffic};
use crate::network::{Links, Mesh, SeenCache};
use crate::queue::EventQueue;
use crate::report::Report;

/// A message's encoded size, and how much of it is a report riding on published ops.
#[derive(Clone, Copy, Debug)]
struct WireSize {
    bytes: usize,
    report_bytes: usize,
}

type Msg = Arc<Message<LwwMap>>;

#[derive(Debug)]
enum EventKind {
    Deliver {
        to: usize,
        from: usize,
        message: Msg,
        size: WireSize,
        /// Set for published messages travelling over the mesh.
        mesh_id: Option<u64>,
    },
    Wake {
        node: usize,
    },
    /// A node's CPU is done with a message and takes the next from its inbox.
    CpuFree {
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
    /// A random running node crashes (fault phase).
    Crash,
    /// A crashed node comes back.
    Restart {
        node: usize,
    },
    /// The network splits (fault phase).
    Partition,
    Heal,
    /// A join or a graceful leave (churn, fault phase).
    Churn,
    /// End of the safety phase: faults stop.
    FaultsOff,
    /// Every running member still isolated forces a new view (an operator's act).
    OperatorForcesView,
    /// A joiner's fetch of an offered state is done (with `state_transfer`).
    TransferDone {
        node: usize,
        snapshot_id: String,
    },
}

/// A message that reached a node, waiting for its CPU (see `costs`).
#[derive(Debug)]
struct Incoming {
    from: usize,
    message: Msg,
    size: WireSize,
    mesh_id: Option<u64>,
}

/// A joiner's fetch of the state its grant offers (with `state_transfer`).
struct Fetch {
    snapshot_id: String,
    started: Time,
    ends: Time,
    /// Share of the fetch done before a restart (kept in the data dir).
    done_before: f64,
    /// The held grant as the joiner's driver stored it when this fetch began.
    held: HeldGrant<LwwMap>,
}

/// A crashed joiner's data dir kept this much of its fetch: the grant as stored, and the
/// share of the fetch staged and synced.
struct KeptFetch {
    held: HeldGrant<LwwMap>,
    share: f64,
}

/// What a crashed fetch keeps is counted in these steps (the chunks synced so far).
const KEPT_STEPS: f64 = 16.0;

/// The members a crash watch still waits on, with when each adopted the eviction.
type Waiting = BTreeMap<usize, Option<Time>>;

struct SimNode {
    replica: Replica<LwwMap>,
    /// A member in good standing: joined, running, not left, and evicted by no one. Its
    /// applied vector and snapshot point are in the global minimums.
    member: bool,
    /// The incarnation of the membership `member` refers to.
    incarnation: u64,
    /// Announced `Left` (no longer a member in good standing).
    departed: bool,
    /// Not running: stopped after leaving, or crashed. Messages to it are dropped.
    stopped: bool,
    /// Crashed (its durable state is kept for a restart).
    crashed: bool,
    wake: Option<Time>,
    seen: SeenCache,
    /// Published messages on their way to this node: when the earliest copy arrives. A
    /// later copy is a duplicate, charged without an event (see `costs`).
    in_flight: rustc_hash::FxHashMap<u64, Time>,
    /// Rounds of its sponsor list a joiner had gone through when its addresses were last
    /// dialled.
    dialled_rounds: u64,
    /// The slots whose addresses the operator gave this node as bootstrap addresses when
    /// it last started (its driver dials them after each round without a grant).
    bootstrap: Vec<usize>,
    /// I1 shadow: the applied vector rebuilt from the ops the replica reported.
    shadow: VersionVector,
    /// When its current membership began: per-(node, op) latencies count only ops
    /// created since.
    member_since: Time,
    last_sp: VersionVector,
    /// Its aggregated snapshot point when last observed (with `--aggregation`).
    last_asp: VersionVector,
    /// I5: every op this node ever held with its current disk (what its storage owes).
    ever_applied: VersionVector,
    /// I4: the state its stable cut must hold according to the ground truth.
    expected: ExpectedState,
    /// The last backup of its data dir (with `old_backup` faults).
    backup: Option<Backup>,
}

/// A copy of a node's data dir at some time, and what its storage owed then (I5).
#[derive(Clone)]
struct Backup {
    checkpoint: Checkpoint<LwwMap>,
    ops: Vec<Arc<SimOp>>,
    ever_applied: VersionVector,
}

impl SimNode {
    fn new(replica: Replica<LwwMap>) -> Self {
        SimNode {
            replica,
            member: false,
            incarnation: 0,
            departed: false,
            stopped: false,
            crashed: false,
            wake: None,
            seen: SeenCache::default(),
            in_flight: Default::default(),
            dialled_rounds: 0,
            bootstrap: Vec::new(),
            shadow: VersionVector::new(),
            member_since: Time::ZERO,
            last_sp: VersionVector::new(),
            last_asp: VersionVector::new(),
            ever_applied: VersionVector::new(),
            expected: ExpectedState::default(),
            backup: None,
        }
    }
}

/// The two sides of a partition: `side[n]` for node slot n. A one-way partition loses only
/// the messages from side `false` to side `true`.
struct Partition {
    side: Vec<bool>,
    one_way: bool,
}

/// Observations across all members, kept incrementally.
#[derive(Default)]
pub struct GlobalView {
    /// Pointwise minimum of `A(m)` over members in good standing.
    pub applied_min: MinTracker,
    /// Pointwise minimum of `SP(m)` over members in good standing.
    pub sp_min: MinTracker,
    /// Pointwise minimum of the aggregated snapshot points of members in good standing
    /// (with `--aggregation`).
    pub asp_min: MinTracker,
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
    /// Pending events; each kind is boxed so that the queue moves three words.
    queue: EventQueue<Box<EventKind>>,
    seq: u64,
    /// The current identity of every node slot (a node that lost its disk comes back in
    /// its slot with a new identity).
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    /// The slot (address) of every identity ever, current or not: a node that came back
    /// with a new identity keeps its address.
    addresses: BTreeMap<NodeId, usize>,
    next_id: u64,
    nodes: Vec<SimNode>,
    links: Links,
    /// Every node's uplink and CPU under the cost model.
    charges: Charges<Incoming>,
    mesh: Mesh,
    next_mesh_id: u64,
    size_cache: Option<(usize, WireSize)>,
    view: GlobalView,
    /// Every op created, as created: what applied ops and stable states are checked against.
    truth: GroundTruth,
    /// The ground truth's state digest at the cuts members reached (cleared past 4,096).
    truth_digests: std::collections::HashMap<VersionVector, tidemark::ops_log::Digest>,
    violations: Violations,
    /// I3's bounded excuses, and every excuse the oracle granted.
    excuses: Excuses,
    /// When the last partition healed (I3's excuse runs from then).
    last_heal: Time,
    agreement: agreement::Agreement,
    /// Sponsorship of every membership (node, incarnation) that became a member: the
    /// registration chains behind I3's "not yet seen" case.
    memberships: BTreeMap<(NodeId, u64), Option<Sponsorship>>,
    created_at: BTreeMap<NodeId, Vec<Time>>,
    write_attempts: u64,
    written: u64,
    dissemination: Latencies,
    sp_lag: Latencies,
    /// From an op's creation until it is inside every member's aggregated snapshot point.
    aggregated_sp_lag: Latencies,
    aggregated_upto: BTreeMap<NodeId, u64>,
    /// Per (member, op): from the op's creation until the member applied it, and until it
    /// was inside the member's snapshot point.
    dissemination_node_op: Histogram,
    sp_lag_node_op: Histogram,
    disseminated_upto: BTreeMap<NodeId, u64>,
    stable_upto: BTreeMap<NodeId, u64>,
    traffic: Traffic,
    samples: Vec<Sample>,
    lag_since_sample: (u64, u64),
    last_write_at: Option<Time>,
    converged_at: Option<Time>,
    events: u64,
    last_rotate: Time,
    /// When faults stop (the end of the safety phase); `None` while writes decide it.
    faults_end: Option<Time>,
    faults_on: bool,
    partition: Option<Partition>,
    /// Crashed slots that will restart: whether with a lost disk.
    pending_restarts: BTreeMap<usize, bool>,
    /// Crash time of crashed memberships, to measure how soon each member drops them.
    crashed_at: BTreeMap<(NodeId, u64), Time>,
    /// Memberships whose node crashed while in good standing, until a decided view evicts
    /// them or the node restarts under a new incarnation: (slot, applied vector at the
    /// crash). I3 holds against them too — no snapshot point may pass what a crashed
    /// member applied before the view has removed it.
    crashed_standing: BTreeMap<(NodeId, u64), (usize, VersionVector)>,
    /// Per member and crash: from the crash until the member stopped counting the node.
    crash_to_drop: Latencies,
    /// Per crashed membership: when it crashed, what it had applied, and the members whose
    /// snapshot point has not passed that yet, with when each adopted the eviction.
    crash_watch: BTreeMap<(NodeId, u64), (Time, VersionVector, Waiting)>,
    /// Per member and crash: from the crash until the member's snapshot point passed what
    /// the crashed member had applied (it moves again).
    crash_to_sp_moves: Latencies,
    /// Per member and crash: from the member's eviction of the crashed node until its
    /// snapshot point moved again (the stall the aggregation adds to the detection).
    eviction_to_sp_moves: Latencies,
    faults: FaultStats,
    /// When every running node's data dir was last backed up.
    last_backup: Time,
    /// Running nodes evicted at their current membership, from when they could know it
    /// (the eviction, or the heal of the partition that hid it); `None` while cut off.
    stale_since: BTreeMap<usize, Option<Time>>,
    /// From then until the node noticed and started to rejoin.
    stale_to_rejoin: Latencies,
    /// Evicted memberships, with the nodes whose maps hold the eviction: out of good
    /// standing while any does (a holder that rejoins or loses its disk before the record
    /// spread forgets it, and the membership is back in good standing).
    evicted: BTreeMap<(NodeId, u64), BTreeSet<usize>>,
    /// Union of the applied vectors of members (recomputed when stale).
    members_union: Option<VersionVector>,
    /// Print evictions and I3 details on stderr (`TIDEMARK_SIM_TRACE` set).
    trace: bool,
    /// Every view installed anywhere, by epoch (I6).
    view_history: single_history::ViewHistory,
    /// `TIDEMARK_SIM_WATCH=SLOT,ORIGIN`: after every event at node slot SLOT, print its own
    /// record and what it has applied of the ops of the node in slot ORIGIN.
    watch: Option<(usize, usize)>,
    /// With `state_transfer`: the states offered to joiners by snapshot id, each joiner's
    /// fetch under way, and what a crashed joiner kept of its fetch.
    offered: BTreeMap<String, LwwMap>,
    fetches: BTreeMap<usize, Fetch>,
    kept_fetches: BTreeMap<usize, KeptFetch>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mesh = Mesh::founding(&mut rng, config.nodes, config.mesh_degree);
        let links = Links::new(&config);
        let writers = config.writers.clamp(1, config.nodes.max(1));
        let faults_on = config.faults.any();
        let mut sim = Sim {
            rng,
            now: Time::ZERO,
            queue: EventQueue::default(),
            seq: 0,
            ids: Vec::new(),
            index: BTreeMap::new(),
            addresses: BTreeMap::new(),
            next_id: 0,
            nodes: Vec::new(),
            links,
            charges: Charges::new(config.costs),
            mesh,
            next_mesh_id: 0,
            size_cache: None,
            view: GlobalView::default(),
            truth: GroundTruth::default(),
            truth_digests: Default::default(),
            violations: Violations::default(),
            excuses: Excuses::new(config.excuse_bound),
            last_heal: Time::ZERO,
            agreement: agreement::Agreement::default(),
            memberships: BTreeMap::new(),
            created_at: BTreeMap::new(),
            write_attempts: 0,
            written: 0,
            dissemination: Latencies::default(),
            sp_lag: Latencies::default(),
            aggregated_sp_lag: Latencies::default(),
            aggregated_upto: BTreeMap::new(),
            dissemination_node_op: Histogram::default(),
            sp_lag_node_op: Histogram::default(),
            disseminated_upto: BTreeMap::new(),
            stable_upto: BTreeMap::new(),
            traffic: Traffic::default(),
            samples: Vec::new(),
            lag_since_sample: (0, 0),
            last_write_at: None,
            converged_at: None,
            events: 0,
            last_rotate: Time::ZERO,
            faults_end: faults_on.then(|| Time::ZERO + config.faults.safety_phase),
            faults_on,
            partition: None,
            pending_restarts: BTreeMap::new(),
            crashed_at: BTreeMap::new(),
            crashed_standing: BTreeMap::new(),
            crash_to_drop: Latencies::default(),
            crash_watch: BTreeMap::new(),
            crash_to_sp_moves: Latencies::default(),
            eviction_to_sp_moves: Latencies::default(),
            faults: FaultStats::default(),
            last_backup: Time::ZERO,
            stale_since: BTreeMap::new(),
            stale_to_rejoin: Latencies::default(),
            evicted: BTreeMap::new(),
            members_union: None,
            trace: std::env::var_os("TIDEMARK_SIM_TRACE").is_some(),
            view_history: Default::default(),
            watch: std::env::var("TIDEMARK_SIM_WATCH").ok().and_then(|w| {
                let (slot, origin) = w.split_once(',')?;
                Some((slot.trim().parse().ok()?, origin.trim().parse().ok()?))
            }),
            offered: BTreeMap::new(),
            fetches: BTreeMap::new(),
            kept_fetches: BTreeMap::new(),
            config,
        };
        sim.config.writers = writers;
        for _ in 0..sim.config.nodes {
            sim.new_slot_id(None);
        }
        let founders = Founders::new(sim.ids[..sim.config.nodes].iter().cloned());
        for i in 0..sim.config.nodes {
            let replica = Replica::genesis_among(
                sim.ids[i].clone(),
                &founders,
                sim.replica_config(),
                sim.node_seed(i),
                Time::ZERO,
            );
            sim.nodes.push(SimNode::new(replica));
            sim.observe(i);
            sim.dispatch(i);
        }
        // joins and leaves happen at random times while ops are written
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
        if let Some(end) = sim.faults_end {
            let f = sim.config.faults.clone();
            for (rate, kind) in [
                (f.crash_rate, EventKind::Crash),
                (f.partition_rate, EventKind::Partition),
                (f.churn_rate, EventKind::Churn),
            ] {
                if let Some(at) = sim.next_fault_time(rate) {
                    if at < end {
                        sim.push(at, kind);
                    }
                }
            }
            sim.push(end, EventKind::FaultsOff);
        }
        sim.push(Time::ZERO, EventKind::Sample);
        sim
    }

    /// Gives slot `slot` (or a new slot) a fresh identity.
    fn new_slot_id(&mut self, slot: Option<usize>) -> usize {
        let id = NodeId::synthetic(
            self.config
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.next_id),
        );
        self.next_id += 1;
        let slot = match slot {
            Some(s) => {
                self.index.remove(&self.ids[s]);
                self.ids[s] = id.clone();
                s
            }
            None => {
                self.ids.push(id.clone());
                self.ids.len() - 1
            }
        };
        self.index.insert(id.clone(), slot);
        self.addresses.insert(id, slot);
        slot
    }

    fn node_seed(&self, slot: usize) -> u64 {
        self.config.seed ^ (slot as u64 ^ self.next_id << 20).wrapping_mul(0x5851_f42d_4c95_7f2d)
    }

    /// The time of the next event of a Poisson process of `rate` per second.
    fn next_fault_time(&mut self, rate: f64) -> Option<Time> {
        if rate <= 0.0 {
            return None;
        }
        let gap = -(1.0 - self.rng.random::<f64>()).ln() / rate;
        Some(self.now + Duration::from_secs_f64(gap.min(1e6)))
    }

    /// A duration drawn uniformly from `(lo, hi)`.
    fn draw(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let (lo, hi) = (lo.as_secs_f64(), hi.as_secs_f64());
        Duration::from_secs_f64(self.rng.random_range(lo..=hi.max(lo)))
    }

    fn reschedule_fault(&mut self, rate: f64, kind: EventKind) {
        if !self.faults_on {
            return;
        }
        if let (Some(at), Some(end)) = (self.next_fault_time(rate), self.faults_end) {
            if at < end {
                self.push(at, kind);
            }
        }
    }

    fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            gossip: self.config.gossip.clone(),
            addrs: Vec::new(),
            journal_applied: true,
            // synthetic node ids carry no keys: ops are unsigned here
            auth: None,
            planted: self.config.planted,
            writers: None,
            aggregation: (self.config.aggregation || self.config.aggregation_decides).then(|| {
                let mut c = self.config.aggregation_config.clone();
                c.liveness = self.config.aggregation_decides && !self.config.flood_heartbeats;
                c
            }),
            aggregation_decides: self.config.aggregation_decides,
        }
    }

    fn push(&mut self, at: Time, kind: EventKind) {
        self.seq += 1;
        self.queue.push(at.as_micros(), self.seq, Box::new(kind));
    }

    fn ms(&self) -> f64 {
        self.now.as_millis_f64()
    }

    /// Runs to the end: all ops written, then until every member's snapshot point holds
    /// every op (L1) or the liveness bound passes.
    pub fn run(mut self, progress: Progress<'_>) -> Report {
        let started = std::time::Instant::now();
        let budget = self.config.event_budget();
        while let Some(event) = self.queue.pop() {
            let at = Time(event.at);
            self.now = at;
            self.events += 1;
            if self.events > budget
                || (self.events.is_multiple_of(4096) && started.elapsed() > self.config.max_wall)
            {
                let at = self.ms();
                self.violations.record(
                    crate::invariants::BUDGET,
                    at,
                    format!(
                        "stopped after {} events and {:.1} s of wall-clock time (budget {budget} events, {:.0} s)",
                        self.events,
                        started.elapsed().as_secs_f64(),
                        self.config.max_wall.as_secs_f64()
                    ),
                );
                break;
            }
            match *event.item {
                EventKind::Deliver {
                    to,
                    from,
                    message,
                    size,
                    mesh_id,
                } => {
                    if let Some(id) = mesh_id {
                        let in_flight = &mut self.nodes[to].in_flight;
                        if in_flight.get(&id) == Some(&at) {
                            in_flight.remove(&id);
                        }
                    }
                    self.arrive(
                        to,
                        Incoming {
                            from,
                            message,
                            size,
                            mesh_id,
                        },
                    )
                }
                EventKind::CpuFree { node } => {
                    let (next, again) = self.charges.next(node, self.now);
                    if let Some(at) = again {
                        self.push(at, EventKind::CpuFree { node });
                    }
                    if let Some(m) = next {
                        self.deliver(node, m.from, m.message, m.size, m.mesh_id);
                    }
                }
                EventKind::Wake { node } => {
                    if self.nodes[node].wake == Some(at) && !self.nodes[node].stopped {
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
                EventKind::Stop { node } => {
                    self.check_handed_over(node);
                    self.nodes[node].stopped = true;
                    self.release_holder(node);
                }
                EventKind::Crash => self.crash(),
                EventKind::Restart { node } => self.restart(node),
                EventKind::Partition => self.partition(),
                EventKind::Heal => self.heal(),
                EventKind::Churn => self.churn(),
                EventKind::FaultsOff => self.faults_off(),
                EventKind::OperatorForcesView => self.operator_forces_view(),
                EventKind::TransferDone { node, snapshot_id } => {
                    self.transfer_done(node, &snapshot_id)
                }
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
            if self.quiet() {
                // converged since when (a republished op or a new member can undo it)
                match (self.converged_at, self.converged()) {
                    (None, true) => self.converged_at = Some(self.now),
                    (Some(_), false) => self.converged_at = None,
                    _ => {}
                }
            }
        }
        self.finish(started.elapsed().as_secs_f64())
    }

    /// When faults stop: the end of the safety phase, or else the last write.
    fn calm_since(&self) -> Option<Time> {
        let last_write = self
            .last_write_at
            .or((self.config.ops == 0).then_some(Time::ZERO));
        match (self.faults_end, last_write) {
            (Some(end), Some(last)) => Some(end.max(last)),
            (None, last) => last,
            (Some(_), None) => None,
        }
    }

    /// How long after the calm L1 must hold: the configured bound, plus one state
    /// transfer with `state_transfer` (a registration holds every snapshot point at its
    /// join cut until its joiner has fetched the state and reports).
    fn liveness_bound(&self) -> Duration {
        self.config.liveness_bound + self.config.state_transfer.unwrap_or_default()
    }

    /// Writes are done and faults have stopped.
    fn quiet(&self) -> bool {
        self.calm_since().is_some_and(|t| self.now >= t) && !self.faults_on
    }

    /// L1: every running node is a member in good standing (or has left), and every
    /// member's applied vector and snapshot point equal the union of the members' ops.
    fn converged(&mut self) -> bool {
        if self.view.sp_min.min() != self.view.applied_min.min() {
            return false;
        }
        // cheapest first: this runs after every event once writes are done
        let union = self.members_union().clone();
        if self.view.applied_min.min() != &union {
            return false;
        }
        !self
            .nodes
            .iter()
            .any(|n| !n.stopped && !n.departed && !n.member)
    }

    fn members_union(&mut self) -> &VersionVector {
        if self.members_union.is_none() {
            let mut union = VersionVector::new();
            for n in self.nodes.iter().filter(|n| n.member) {
                union.join(&n.shadow);
            }
            self.members_union = Some(union);
        }
        self.members_union.as_ref().expect("computed above")
    }

    fn finished(&self) -> bool {
        let Some(calm) = self.calm_since() else {
            return false;
        };
        if self.converged_at.is_some() && self.pending_restarts.is_empty() {
            return true;
        }
        self.now >= calm + self.liveness_bound()
    }

    /// A message reached node `to`: processed now if its CPU is free, else queued for it.
    fn arrive(&mut self, to: usize, incoming: Incoming) {
        if self.nodes[to].stopped {
            return;
        }
        let bytes = incoming.size.bytes;
        match self.charges.arrive(to, self.now, incoming, bytes) {
            Arrival::ProcessNow(m) => self.deliver(to, m.from, m.message, m.size, m.mesh_id),
            Arrival::Queued(Some(at)) => self.push(at, EventKind::CpuFree { node: to }),
            Arrival::Queued(None) => {}
        }
    }

    fn deliver(
        &mut self,
        to: usize,
        from: usize,
        message: Msg,
        size: WireSize,
        mesh_id: Option<u64>,
    ) {
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

    fn forward(
        &mut self,
        node: usize,
        except: Option<usize>,
        id: u64,
        message: &Msg,
        size: WireSize,
    ) {
        for k in 0..self.mesh.neighbours(node).len() {
            let peer = self.mesh.neighbours(node)[k];
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
        size: WireSize,
        mesh_id: Option<u64>,
    ) {
        self.traffic
            .count(message.kind(), size.bytes - size.report_bytes);
        if size.report_bytes > 0 {
            self.traffic.count_bytes("report", size.report_bytes);
        }
        // the sender's uplink carries it whatever happens to it on the way
        let ready = self.charges.ready(from, self.now);
        let sent = self.charges.send(from, ready, size.bytes);
        if let Some(p) = &self.partition {
            let side = |n: usize| p.side.get(n).copied().unwrap_or(false);
            if side(from) != side(to) && (!p.one_way || !side(from)) {
                return;
            }
        }
        let copies = self.links.transmit(&mut self.rng, from, to);
        for &delay in copies.delays() {
            let at = sent + delay;
            if let Some(id) = mesh_id {
                // a copy behind another of the same message is dropped by gossipsub's
                // duplicate cache: it costs the receiver's CPU but needs no event
                let node = &mut self.nodes[to];
                if node.seen.contains(id) || node.in_flight.get(&id).is_some_and(|&t| t <= at) {
                    self.charges.charge_duplicate(to, at, size.bytes);
                    continue;
                }
                node.in_flight.insert(id, at);
            }
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

    fn size_of(&mut self, message: &Msg) -> WireSize {
        let key = Arc::as_ptr(message) as usize;
        match self.size_cache {
            Some((k, size)) if k == key => size,
            _ => {
                let size = WireSize {
                    // published batches travel in their compact topic form
                    bytes: match &**message {
                        Message::Ops(published) => published_len(published),
                        other => encoded_len(other),
                    },
                    report_bytes: match &**message {
                        Message::Ops(published) => report_len(published),
                        _ => 0,
                    },
                };
                self.size_cache = Some((key, size));
                size
            }
        }
    }

    fn dispatch(&mut self, n: usize) {
        while let Some(action) = self.nodes[n].replica.poll_action() {
            match action {
                Action::Send { to, message } => {
                    let message = self.offer_instead(message);
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
        self.follow_fetch(n);
    }

    /// With `state_transfer`, a grant holding its state inline is sent as an offer of
    /// that state instead, as a node's driver does with a large state; the state waits in
    /// `offered` for the joiner's fetch.
    fn offer_instead(&mut self, message: Msg) -> Msg {
        if self.config.state_transfer.is_none() {
            return message;
        }
        let id = format!("sim-offer-{}", self.offered.len() + 1);
        match tidemark::testing::offer_in_place_of_state(&message, id.clone()) {
            Some((offer, state)) => {
                self.offered.insert(id, state);
                offer
            }
            None => message,
        }
    }

    /// Starts the fetch of the state node `n` awaits, as its driver does (resuming what
    /// its data dir kept of a fetch of the same snapshot), or forgets a fetch it gave up.
    fn follow_fetch(&mut self, n: usize) {
        let Some(duration) = self.config.state_transfer else {
            return;
        };
        if self.nodes[n].stopped {
            return;
        }
        let awaited = self.nodes[n]
            .replica
            .awaited_grant()
            .and_then(|(_, grant)| grant.offer())
            .map(|offer| offer.snapshot_id.clone());
        let Some(id) = awaited else {
            self.fetches.remove(&n);
            return;
        };
        if self.fetches.get(&n).is_some_and(|f| f.snapshot_id == id) {
            return;
        }
        let held = self.nodes[n]
            .replica
            .held_grant()
            .expect("a grant is awaited");
        let done_before = match self.kept_fetches.remove(&n) {
            Some(kept) if kept.held.grant.offer().map(|o| &o.snapshot_id) == Some(&id) => {
                kept.share
            }
            _ => 0.0,
        };
        let ends = self.now + duration.mul_f64(1.0 - done_before);
        self.fetches.insert(
            n,
            Fetch {
                snapshot_id: id.clone(),
                started: self.now,
                ends,
                done_before,
                held,
            },
        );
        self.push(
            ends,
            EventKind::TransferDone {
                node: n,
                snapshot_id: id,
            },
        );
    }

    /// Node `n`'s fetch of `snapshot_id` is done: it installs the state, unless it gave
    /// the grant up or stopped meanwhile.
    fn transfer_done(&mut self, n: usize, snapshot_id: &str) {
        if self.nodes[n].stopped
            || !self
                .fetches
                .get(&n)
                .is_some_and(|f| f.snapshot_id == snapshot_id && f.ends == self.now)
        {
            return;
        }
        self.fetches.remove(&n);
        let Some(state) = self.offered.get(snapshot_id).cloned() else {
            return;
        };
        let now = self.now;
        if self.nodes[n]
            .replica
            .install_transferred(now, state)
            .is_ok()
        {
            self.faults.transfers += 1;
            if self.trace {
                eprintln!(
                    "{:.3} s: node {n} installs the fetched state",
                    self.ms() / 1e3
                );
            }
        }
        self.observe(n);
        self.dispatch(n);
    }

    /// A joiner that crashes while it fetches keeps the share of the fetch it had synced,
    /// with the grant its driver stored.
    fn keep_fetch_of_crashed(&mut self, n: usize) {
        let Some(fetch) = self.fetches.remove(&n) else {
            return;
        };
        let span = fetch
            .ends
            .as_micros()
            .saturating_sub(fetch.started.as_micros()) as f64;
        let done = self
            .now
            .as_micros()
            .saturating_sub(fetch.started.as_micros()) as f64;
        let share = if span > 0.0 { done / span } else { 1.0 };
        let total = fetch.done_before + (1.0 - fetch.done_before) * share.min(1.0);
        let kept = (total * KEPT_STEPS).floor() / KEPT_STEPS;
        self.kept_fetches.insert(
            n,
            KeptFetch {
                held: fetch.held,
                share: kept,
            },
        );
    }

    /// A joiner whose data dir kept a fetch resumes it as its driver does
    /// (`Replica::resuming_held_grant`); `None` when there is none to resume.
    fn resume_fetch(&mut self, n: usize, crashed: &Replica<LwwMap>) -> Option<Replica<LwwMap>> {
        let kept = self.kept_fetches.get(&n)?;
        let sponsors = crashed
            .join_sponsors()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let seed = self.node_seed(n) ^ (self.faults.restarts + 1);
        let resumed = Replica::resuming_held_grant(
            self.ids[n].clone(),
            kept.held.clone(),
            sponsors,
            self.replica_config(),
            seed,
            self.now,
        );
        match resumed {
            Ok(replica) => {
                self.faults.transfers_resumed += 1;
                Some(replica)
            }
            Err(_) => {
                self.kept_fetches.remove(&n);
                None
            }
        }
    }

    /// A joiner that went through a whole round of its sponsors without a grant: the driver
    /// dials its bootstrap addresses and the addresses of every node it knows, as a node
    /// dials addresses without a peer id, and hands it the identities it finds there now.
    /// When none of them hosts a member, the operator restarts the joiner with the
    /// addresses of members that run now (a joiner's driver warns that no possible sponsor
    /// answered; restarting it with new `--bootstrap` addresses is the way out). Only the
    /// addresses are modelled: the restarted joiner goes on from the same data dir, so
    /// what the protocol sees is new bootstrap peers, dialled at once.
    fn dial_known_addresses(&mut self, n: usize) {
        let Some(rounds) = self.nodes[n].replica.join_progress().map(|p| p.rounds) else {
            return;
        };
        if rounds <= self.nodes[n].dialled_rounds {
            return;
        }
        self.nodes[n].dialled_rounds = rounds;
        let mut reachable = self.slots_at(&self.known_to_joiner(n));
        let steady = self.steady_members();
        if !reachable.iter().any(|slot| steady.contains(slot)) && !steady.is_empty() {
            let sponsors = self.bootstrap_peers(&steady);
            self.nodes[n].bootstrap = self.slots_of(&sponsors);
            self.faults.rebootstraps += 1;
            reachable = self.slots_at(&self.known_to_joiner(n));
            if self.trace {
                eprintln!(
                    "{:.3} s: the operator restarts joiner {n} with bootstrap peers {:?}",
                    self.ms() / 1e3,
                    self.nodes[n].bootstrap
                );
            }
        }
        let sponsors = self.nodes[n].replica.join_sponsors().unwrap_or_default();
        let found: Vec<NodeId> = reachable
            .into_iter()
            .map(|slot| self.ids[slot].clone())
            .filter(|id| !sponsors.contains(id))
            .collect();
        if !found.is_empty() {
            self.nodes[n].replica.add_bootstrap_peers(found);
        }
    }

    /// Who joiner `n` knows: its possible sponsors, the nodes of its map and view, and
    /// the nodes now at its bootstrap addresses.
    fn known_to_joiner(&self, n: usize) -> BTreeSet<NodeId> {
        let node = &self.nodes[n];
        let replica = &node.replica;
        let mut known: BTreeSet<NodeId> = replica
            .join_sponsors()
            .unwrap_or_default()
            .iter()
            .cloned()
            .collect();
        known.extend(replica.network_map().iter().map(|(id, _)| id.clone()));
        known.extend(replica.view().members.keys().cloned());
        known.extend(node.bootstrap.iter().map(|&slot| self.ids[slot].clone()));
        known
    }

    /// The running slots at the addresses of `known`, in slot order.
    fn slots_at(&self, known: &BTreeSet<NodeId>) -> BTreeSet<usize> {
        known
            .iter()
            .filter_map(|id| self.addresses.get(id))
            .copied()
            .filter(|&slot| slot < self.nodes.len() && !self.nodes[slot].stopped)
            .collect()
    }

    /// Reads what changed at node `n` and checks the invariants.
    fn observe(&mut self, n: usize) {
        self.dial_known_addresses(n);
        let at = self.ms();
        let now = self.now;
        if let Some((slot, origin)) = self.watch.filter(|(slot, _)| *slot == n) {
            let own = &self.nodes[n].replica.network_map().own().record;
            let o = &self.ids[origin.min(self.ids.len() - 1)];
            eprintln!(
                "  watch {:.3}: node {slot} inc {} report {} {:?} applied[{origin}] {} log {} member {}",
                at / 1e3,
                own.incarnation,
                own.report_seq,
                own.state,
                own.applied.get(o),
                self.nodes[n].replica.applied().get(o),
                self.nodes[n].replica.is_member()
            );
        }
        // journals for drivers: the oracle reads the map and the eviction journal instead
        self.nodes[n].replica.drain_member_changes();
        self.nodes[n].replica.drain_rejected_ops();
        for installed in self.nodes[n].replica.drain_installed_views() {
            let view = &installed.change.next;
            if self.trace {
                let name = |id: &NodeId| {
                    self.index
                        .get(id)
                        .map_or_else(|| format!("{id:?}"), |i| i.to_string())
                };
                let members: Vec<String> = view
                    .members
                    .iter()
                    .map(|(id, inc)| format!("{}@{inc}", name(id)))
                    .collect();
                let evicted: Vec<String> = installed
                    .change
                    .evicted
                    .iter()
                    .map(|e| format!("{}@{}", name(&e.id), e.incarnation))
                    .collect();
                eprintln!(
                    "view {:.3}: node {n} installs e{} [{}] evicting [{}]{}",
                    at / 1e3,
                    view.epoch,
                    members.join(" "),
                    evicted.join(" "),
                    if installed.forced { " (forced)" } else { "" }
                );
            }
            let result = self.view_history.installed(n, view, installed.forced);
            self.violations.check(single_history::NAME, at, result);
        }
        for (id, incarnation) in self.nodes[n].replica.drain_evictions() {
            self.on_eviction(n, id, incarnation);
        }
        let applied_ops = self.nodes[n].replica.drain_applied_ops();
        let replica = &self.nodes[n].replica;
        let (is_member, has_left, incarnation) = (
            replica.is_member(),
            replica.has_left(),
            replica.incarnation(),
        );
        if (!is_member || incarnation != self.nodes[n].incarnation)
            && self.stale_since.contains_key(&n)
        {
            if let Some(Some(since)) = self.stale_since.remove(&n) {
                self.stale_to_rejoin
                    .push(now.since(since).as_micros() as u64);
            }
        }
        if self.nodes[n].member && (!is_member || incarnation != self.nodes[n].incarnation) {
            // it announced `Left`, or it is rejoining: no longer a member in good standing
            self.drop_member(n);
        }
        if has_left && !self.nodes[n].departed {
            // it lingers to answer digests, then stops
            self.nodes[n].departed = true;
            self.push(now + Duration::from_secs(3), EventKind::Stop { node: n });
        }
        if !is_member || self.nodes[n].departed {
            return;
        }
        let new_membership = self.nodes[n].incarnation != incarnation;
        if new_membership {
            self.begin_membership(n, &applied_ops, at);
        }
        let member = self.nodes[n].member;
        for op in &applied_ops {
            let content = self.truth.check_content(op);
            self.violations.check(causal_delivery::NAME, at, content);
            let node = &mut self.nodes[n];
            self.violations.check(
                causal_delivery::NAME,
                at,
                causal_delivery::check_op(&node.shadow, op),
            );
            let old = node.shadow.get(&op.origin);
            if op.seq > old {
                node.shadow.set(op.origin.clone(), op.seq);
                node.ever_applied.raise(&op.origin, op.seq);
                if member {
                    self.view.applied_min.change(&op.origin, old, op.seq);
                    // the union of the members' vectors only rises with a member's op (it
                    // is rebuilt when a member comes or goes)
                    if let Some(union) = &mut self.members_union {
                        union.raise(&op.origin, op.seq);
                    }
                    self.record_dissemination(&op.origin.clone(), now);
                    let since = self.nodes[n].member_since;
                    if let Some(t) = self.created(&op.origin, op.seq).filter(|t| *t >= since) {
                        self.dissemination_node_op
                            .push(now.since(t).as_micros() as u64);
                    }
                }
            }
        }
        let node = &mut self.nodes[n];
        self.violations.check(
            causal_delivery::NAME,
            at,
            causal_delivery::check_vector(&node.shadow, node.replica.applied()),
        );
        if new_membership {
            self.enter_good_standing(n, at);
            return;
        }
        if member && self.config.aggregation {
            self.observe_aggregated(n, at);
        }
        let node = &mut self.nodes[n];
        let sp = node.replica.snapshot_point();
        if sp.ptr_eq(&node.last_sp) || *sp == node.last_sp {
            return;
        }
        let sp = sp.clone();
        let result = monotone::check(&node.last_sp, &sp, node.replica.applied());
        if result.is_err() && self.trace {
            let map = node.replica.network_map();
            eprintln!(
                "  I2 at node {n} (inc {}, member {}, leaving {}, left {}):",
                node.replica.incarnation(),
                node.member,
                node.replica.is_leaving(),
                node.replica.has_left()
            );
            for (origin, old, new) in node.last_sp.changes_to(&sp) {
                if new < old {
                    for (id, e) in map.iter() {
                        eprintln!(
                            "    {:?} (slot {:?}) inc {} {:?} seq {} applied[{origin:?}] = {}",
                            id,
                            self.index.get(id),
                            e.record.incarnation,
                            e.record.state,
                            e.record.report_seq,
                            e.record.applied.get(&origin)
                        );
                    }
                }
            }
        }
        self.violations.check(monotone::NAME, at, result);
        self.check_stable_state(n, &sp, at);
        let node = &mut self.nodes[n];
        let changes = node.last_sp.changes_to(&sp);
        node.last_sp = sp;
        if member {
            self.check_safety_of(n, at);
            self.watch_crashes(n, now);
            let since = self.nodes[n].member_since;
            for (origin, old, new) in changes {
                self.view.sp_min.change(&origin, old, new);
                self.record_stable(&origin, now);
                if let Some(created) = self.created_at.get(&origin) {
                    let upto = (new as usize).min(created.len());
                    for t in created.get(old as usize..upto).unwrap_or_default() {
                        if *t >= since {
                            self.sp_lag_node_op.push(now.since(*t).as_micros() as u64);
                        }
                    }
                }
            }
        }
    }

    /// With `--aggregation`: I2 and I3 for member `n`'s aggregated snapshot point, and the
    /// lag of the ops it brought inside every member's.
    fn observe_aggregated(&mut self, n: usize, at: f64) {
        let node = &mut self.nodes[n];
        let asp = node.replica.aggregated_snapshot_point();
        if asp.ptr_eq(&node.last_asp) || *asp == node.last_asp {
            return;
        }
        let asp = asp.clone();
        let result = aggregated::check_monotone(&node.last_asp, &asp, node.replica.applied());
        self.violations.check(aggregated::MONOTONE, at, result);
        let changes = node.last_asp.changes_to(&asp);
        node.last_asp = asp.clone();
        for breach in self.i3_breaches(n, &asp) {
            self.violations
                .record(aggregated::SAFETY, at, format!("aggregated: {breach}"));
        }
        let now = self.now;
        for (origin, old, new) in changes {
            self.view.asp_min.change(&origin, old, new);
            self.record_aggregated(&origin, now);
        }
    }

    /// Member `n`'s snapshot point moved: for every crash it was still waiting on, whether
    /// it passed what the crashed member had applied.
    fn watch_crashes(&mut self, n: usize, now: Time) {
        let sp = &self.nodes[n].last_sp;
        for (at, applied, waiting) in self.crash_watch.values_mut() {
            if waiting.contains_key(&n) && !sp.le(applied) {
                if let Some(Some(evicted)) = waiting.remove(&n) {
                    if self.trace && now.since(evicted) > Duration::from_millis(500) {
                        eprintln!(
                            "  {:.3} s: node {n}'s snapshot point moves {:.3} s after it evicted a node that crashed at {:.3} s",
                            now.as_millis_f64() / 1e3,
                            now.since(evicted).as_secs_f64(),
                            at.as_millis_f64() / 1e3
                        );
                    }
                    self.eviction_to_sp_moves
                        .push(now.since(evicted).as_micros() as u64);
                }
                self.crash_to_sp_moves
                    .push(now.since(*at).as_micros() as u64);
                if self.trace && now.since(*at) > Duration::from_secs(8) {
                    eprintln!(
                        "  {:.3} s: node {n}'s snapshot point passes a crash of {:.3} s",
                        now.as_millis_f64() / 1e3,
                        at.as_millis_f64() / 1e3
                    );
                }
            }
        }
        self.crash_watch
            .retain(|_, (_, _, waiting)| !waiting.is_empty());
    }

    fn record_aggregated(&mut self, origin: &NodeId, now: Time) {
        let everywhere = self.view.asp_min.min().get(origin);
        let mut done = self.aggregated_upto.get(origin).copied().unwrap_or(0);
        for lag in self.newly_everywhere(origin, everywhere, &mut done, now) {
            self.aggregated_sp_lag.push(lag);
        }
        self.aggregated_upto.insert(origin.clone(), done);
    }

    /// Node `n` has just installed a membership (founded, joined or rejoined): checks
    /// start afresh for it (I2 holds per membership). Its stable state must be the ground
    /// truth's at its cut (I4). Its I1 shadow starts below the ops it reports with the
    /// membership (the installed suffix and any republished ops; the stable cut may have
    /// moved over some of them already), which then come through as applied ops.
    fn begin_membership(&mut self, n: usize, reported: &[Arc<SimOp>], at: f64) {
        let node = &mut self.nodes[n];
        let incarnation = node.replica.incarnation();
        node.incarnation = incarnation;
        node.member_since = self.now;
        let mut shadow = node.replica.applied().clone();
        for op in reported {
            if op.seq <= shadow.get(&op.origin) {
                shadow.replace(&op.origin, op.seq - 1);
            }
        }
        node.shadow = shadow;
        node.ever_applied.join(&node.shadow);
        let cut = node.replica.stable_cut().clone();
        self.check_stable_state(n, &cut, at);
        let id = self.ids[n].clone();
        let sponsor = self.nodes[n]
            .replica
            .network_map()
            .own()
            .record
            .sponsor
            .clone();
        if self
            .memberships
            .insert((id, incarnation), sponsor)
            .is_some()
        {
            self.violations.record(
                safety::NAME,
                at,
                format!("node {n} began membership (incarnation {incarnation}) a second time: one name for two memberships"),
            );
        }
        self.release_holder(n);
    }

    /// After the ops of a new membership were checked: it is a member in good standing
    /// unless that membership was already evicted somewhere.
    fn enter_good_standing(&mut self, n: usize, at: f64) {
        let node = &mut self.nodes[n];
        node.last_sp = node.replica.snapshot_point().clone();
        node.last_asp = node.replica.aggregated_snapshot_point().clone();
        let key = (self.ids[n].clone(), node.incarnation);
        if self.evicted.contains_key(&key) {
            return;
        }
        self.admit(n, at);
    }

    /// I4 at node `n`, whose snapshot point is now `sp`: its stable state is folded at
    /// exactly `sp`, equal to every other node's at that cut, and equal to the state the
    /// ground truth's ops give at that cut.
    fn check_stable_state(&mut self, n: usize, sp: &VersionVector, at: f64) {
        let node = &mut self.nodes[n];
        let digest = node.replica.stable_digest();
        let result = self.agreement.check(sp, node.replica.stable_cut(), digest);
        self.violations.check(agreement::NAME, at, result);
        // members pass through the same cuts: the ground truth's digest of each is made once
        let expected = match self.truth_digests.get(sp) {
            Some(expected) => Ok(*expected),
            None => {
                let expected = node.expected.digest_at(&self.truth, sp);
                if let Ok(d) = &expected {
                    if self.truth_digests.len() >= 4096 {
                        self.truth_digests.clear();
                    }
                    self.truth_digests.insert(sp.clone(), *d);
                }
                expected
            }
        };
        let result =
            expected.and_then(|expected| agreement::check_ground_truth(sp, digest, expected));
        self.violations.check(agreement::NAME, at, result);
    }

    /// Node `n` (at its current membership) enters good standing.
    fn admit(&mut self, n: usize, at: f64) {
        let node = &mut self.nodes[n];
        node.member = true;
        self.converged_at = None;
        self.members_union = None;
        self.view.applied_min.add(&node.shadow);
        self.view.sp_min.add(&node.last_sp);
        self.view.asp_min.add(&node.last_asp);
        // I3 for the newcomer: no member may have decided past it
        let applied = self.nodes[n].shadow.clone();
        for i in 0..self.nodes.len() {
            if self.config.aggregation
                && i != n
                && self.nodes[i].member
                && !self.nodes[i].last_asp.le(&applied)
                && !self.excused(i, n)
            {
                let detail = aggregated::check_safety(&self.nodes[i].last_asp, &applied)
                    .err()
                    .unwrap_or_default();
                self.violations.record(
                    aggregated::SAFETY,
                    at,
                    format!("node {i} vs new member {n}: {detail}"),
                );
            }
            if i == n || !self.nodes[i].member || self.nodes[i].last_sp.le(&applied) {
                continue;
            }
            if !self.excused(i, n) {
                let detail = safety::check(&self.nodes[i].last_sp, &applied)
                    .err()
                    .unwrap_or_default();
                self.violations.record(
                    safety::NAME,
                    at,
                    format!("node {i} vs new member {n}: {detail}"),
                );
            }
        }
        // I3 for the newcomer's own snapshot point
        self.check_safety_of(n, at);
    }

    /// I3 for member `n`: `SP(n)` is at or below every member's applied vector, except a
    /// member `n` has not seen whose registration `n` has voided, for as long as the two
    /// cannot have exchanged records (see `excused`).
    fn check_safety_of(&mut self, n: usize, at: f64) {
        let sp = self.nodes[n].last_sp.clone();
        for breach in self.i3_breaches(n, &sp) {
            self.violations.record(safety::NAME, at, breach);
        }
    }

    /// Where snapshot point `sp` of member `n` passes what a member in good standing has
    /// applied — a crashed membership no view has evicted yet included — and no excuse
    /// covers it, each described.
    fn i3_breaches(&mut self, n: usize, sp: &VersionVector) -> Vec<String> {
        let mut breaches = Vec::new();
        let passed: Vec<((NodeId, u64), usize, VersionVector)> = self
            .crashed_standing
            .iter()
            .filter(|(_, (_, applied))| !sp.le(applied))
            .map(|(k, (slot, applied))| (k.clone(), *slot, applied.clone()))
            .collect();
        for ((id, incarnation), slot, applied) in passed {
            if self.unseen_and_voided(n, &id, incarnation) {
                let separated = self.separated(n, slot);
                if self
                    .excuses
                    .grant((n, slot, incarnation), self.now, separated, self.last_heal)
                {
                    continue;
                }
            }
            let detail = safety::check(sp, &applied).err().unwrap_or_default();
            breaches.push(format!(
                "node {n} vs crashed node {slot} (inc {incarnation}, not evicted yet): {detail}"
            ));
        }
        if sp.le(self.view.applied_min.min()) {
            return breaches;
        }
        for m in 0..self.nodes.len() {
            let other = &self.nodes[m];
            if m == n || !other.member || sp.le(&other.shadow) {
                continue;
            }
            if !self.excused(n, m) {
                let other = &self.nodes[m];
                if self.trace {
                    let map = self.nodes[n].replica.network_map();
                    eprintln!(
                        "  I3: node {n} inc {} (counted {}, pending {:?}, own sponsor {:?}) holds node {m}: {:?}; node {m} inc {} sponsor {:?}",
                        self.nodes[n].incarnation,
                        map.counted(),
                        map.pending_record(&self.ids[m]).map(|r| (r.incarnation, r.state, r.registrations)),
                        map.own().record.sponsor.as_ref().map(|s| (self.index.get(&s.sponsor), s.sponsor_incarnation, s.reg_no)),
                        map.get(&self.ids[m]).map(|e| (e.record.incarnation, e.record.state, e.record.report_seq, e.record.applied.total())),
                        other.incarnation,
                        other.replica.network_map().own().record.sponsor.as_ref().map(|s| (self.index.get(&s.sponsor), s.sponsor_incarnation, s.reg_no)),
                    );
                }
                let detail = safety::check(sp, &other.shadow).err().unwrap_or_default();
                breaches.push(format!("node {n} vs node {m}: {detail}"));
            }
        }
        breaches
    }

    /// Whether I3's one excuse covers node `n` deciding past member `m` now: `m`'s
    /// registration is void at `n` (`unseen_and_voided`), and the two cannot yet have
    /// exchanged records (a partition separates them, or the excuse is younger than its
    /// bound, counted from the last heal). Every grant is counted.
    fn excused(&mut self, n: usize, m: usize) -> bool {
        let incarnation = self.nodes[m].incarnation;
        if !self.unseen_and_voided(n, &self.ids[m], incarnation) {
            return false;
        }
        let separated = self.separated(n, m);
        self.excuses
            .grant((n, m, incarnation), self.now, separated, self.last_heal)
    }

    /// Whether the current partition keeps nodes `a` and `b` from exchanging messages both
    /// ways.
    fn separated(&self, a: usize, b: usize) -> bool {
        self.partition.as_ref().is_some_and(|p| {
            let side = |n: usize| p.side.get(n).copied().unwrap_or(false);
            side(a) != side(b)
        })
    }

    /// Re-examines I3's open excuses: a pair still in breach once its excuse ran out is a
    /// violation.
    fn expire_excuses(&mut self) {
        let mut excuses = std::mem::replace(&mut self.excuses, Excuses::new(Duration::ZERO));
        let expired = excuses.expire(
            self.now,
            self.last_heal,
            |(n, m, incarnation)| {
                let (a, b) = (&self.nodes[n], &self.nodes[m]);
                if !a.member || !b.member || b.incarnation != incarnation {
                    return None;
                }
                safety::check(&a.last_sp, &b.shadow).err()
            },
            |(n, m, _)| self.separated(n, m),
        );
        self.excuses = excuses;
        let at = self.ms();
        for ((n, m, _), breach) in expired {
            let bound = self.excuses.bound().as_millis();
            self.violations.record(
                safety::NAME,
                at,
                format!("node {n} vs node {m}, still in breach {bound} ms after the void registration could be seen: {breach}"),
            );
        }
    }

    /// Whether node `n` has not seen membership (`member`, `incarnation`) and its
    /// registration chain leads to a sponsor membership that `n` evicted or replaced
    /// before learning of that registration. Such a member was registered after `n` stopped
    /// counting its sponsor, so `n` may have decided past it; `n` evicts it on arrival
    /// (admission check), and I3 is not owed between the two. Every other unseen member is
    /// covered by the join argument and checked.
    fn unseen_and_voided(&self, n: usize, member: &NodeId, incarnation: u64) -> bool {
        let map = self.nodes[n].replica.network_map();
        if map
            .get(member)
            .is_some_and(|e| e.record.incarnation >= incarnation)
        {
            return false;
        }
        let mut current = (member.clone(), incarnation);
        for _ in 0..self.memberships.len() + 1 {
            let Some(Some(sponsorship)) = self.memberships.get(&current) else {
                return false;
            };
            if let Some(entry) = map.get(&sponsorship.sponsor) {
                let record = &entry.record;
                if record.incarnation > sponsorship.sponsor_incarnation {
                    return true;
                }
                if record.incarnation == sponsorship.sponsor_incarnation {
                    return !record.state.counts() && record.registrations < sponsorship.reg_no;
                }
                if record.state.counts() {
                    return false;
                }
            }
            current = (sponsorship.sponsor.clone(), sponsorship.sponsor_incarnation);
        }
        false
    }

    /// Node `k`'s map was replaced (rejoin) or lost (crash with no restart, lost disk):
    /// it stops holding the evictions it no longer has. A membership nobody holds evicted
    /// any more is back in good standing.
    fn release_holder(&mut self, k: usize) {
        let gone = self.nodes[k].stopped && !self.pending_restarts.contains_key(&k);
        let map = self.nodes[k].replica.network_map();
        let mut restored = Vec::new();
        for ((id, incarnation), holders) in self.evicted.iter_mut() {
            if !holders.contains(&k) {
                continue;
            }
            let still = !gone
                && map.get(id).is_some_and(|e| {
                    e.record.incarnation > *incarnation
                        || e.record.incarnation == *incarnation && !e.record.state.counts()
                });
            if !still {
                holders.remove(&k);
                if holders.is_empty() {
                    restored.push((id.clone(), *incarnation));
                }
            }
        }
        let at = self.ms();
        for key in restored {
            if self.trace {
                eprintln!(
                    "{:.3} s: eviction of {:?} inc {} forgotten (last holder {k})",
                    self.now.as_millis_f64() / 1e3,
                    self.index.get(&key.0),
                    key.1
                );
            }
            self.evicted.remove(&key);
            if let Some(&m) = self.index.get(&key.0) {
                let node = &self.nodes[m];
                if node.incarnation == key.1
                    && !node.member
                    && !node.stopped
                    && !node.departed
                    && node.replica.is_member()
                    && node.replica.incarnation() == key.1
                {
                    self.admit(m, at);
                }
            }
        }
    }

    /// Member `n` is no longer in good standing: out of the global minimums.
    fn drop_member(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if !node.member {
            return;
        }
        node.member = false;
        self.view.applied_min.remove(&node.shadow);
        self.view.sp_min.remove(&node.last_sp);
        self.view.asp_min.remove(&node.last_asp);
        self.members_union = None;
        let now = self.now;
        let origins: Vec<NodeId> = self.view.union.iter().map(|(o, _)| o.clone()).collect();
        for origin in &origins {
            self.record_dissemination(origin, now);
            self.record_stable(origin, now);
            if self.config.aggregation {
                self.record_aggregated(origin, now);
            }
        }
    }

    /// Node `observer` adopted the eviction of (`id`, `incarnation`): that membership is out
    /// of good standing everywhere from now on.
    fn on_eviction(&mut self, observer: usize, id: NodeId, incarnation: u64) {
        if let Some(crashed) = self.crashed_at.get(&(id.clone(), incarnation)) {
            if self.nodes[observer].member {
                let latency = self.now.since(*crashed).as_micros() as u64;
                self.crash_to_drop.push(latency);
            }
        }
        if let Some((_, _, waiting)) = self.crash_watch.get_mut(&(id.clone(), incarnation)) {
            if let Some(evicted @ None) = waiting.get_mut(&observer) {
                *evicted = Some(self.now);
            }
        }
        self.crashed_standing.remove(&(id.clone(), incarnation));
        let holders = self.evicted.entry((id.clone(), incarnation)).or_default();
        let first = holders.is_empty();
        holders.insert(observer);
        if !first {
            return;
        }
        if self.trace {
            eprintln!(
                "{:.3} s: node {observer} (member {}, inc {}) evicted {:?} inc {incarnation}",
                self.now.as_millis_f64() / 1e3,
                self.nodes[observer].member,
                self.nodes[observer].replica.incarnation(),
                self.index.get(&id)
            );
            let map = self.nodes[observer].replica.network_map();
            if let Some(e) = map.get(&id) {
                eprintln!(
                    "   record {:?} applied {:?} sp {:?} counted {} on_arrival {}",
                    e.record.sponsor.as_ref().map(|s| (
                        self.index.get(&s.sponsor),
                        s.sponsor_incarnation,
                        s.reg_no
                    )),
                    e.record.applied.total(),
                    map.snapshot_point().total(),
                    map.counted(),
                    map.evicted_on_arrival()
                );
                if let Some(s) = &e.record.sponsor {
                    if let Some(se) = map.get(&s.sponsor) {
                        eprintln!(
                            "   sponsor at observer: inc {} state {:?} regs {} applied {}",
                            se.record.incarnation,
                            se.record.state,
                            se.record.registrations,
                            se.record.applied.total()
                        );
                    }
                }
            }
        }
        self.faults.evictions += 1;
        let Some(&m) = self.index.get(&id) else {
            return;
        };
        if self.nodes[m].incarnation == incarnation && !self.nodes[m].stopped {
            self.faults.evictions_of_running += 1;
            let since = self.partition.is_none().then_some(self.now);
            self.stale_since.insert(m, since);
        }
        if self.nodes[m].member && self.nodes[m].incarnation == incarnation {
            self.drop_member(m);
        }
    }

    fn created(&self, origin: &NodeId, seq: u64) -> Option<Time> {
        self.created_at.get(origin)?.get(seq as usize - 1).copied()
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
        self.write_attempts += 1;
        let writers: Vec<usize> = (0..self.config.writers)
            .filter(|&w| {
                let n = &self.nodes[w];
                !n.stopped && n.replica.is_member() && !n.replica.is_leaving()
            })
            .collect();
        if writers.is_empty() {
            self.faults.writes_refused += 1;
        } else {
            let w = writers[self.rng.random_range(0..writers.len())];
            let key = format!("k{}", self.rng.random_range(0..self.config.keys.max(1)));
            let value =
                (self.rng.random_range(0..10u32) != 0).then(|| format!("v{}", self.written));
            let now = self.now;
            match self.nodes[w].replica.write(now, LwwOp { key, value }) {
                Ok(op) => {
                    let at = self.ms();
                    if let Err(reused) = self.truth.record(&op) {
                        if self.trace {
                            self.trace_copies(&op.origin, op.seq);
                        }
                        self.violations.record(no_lost_writes::NAME, at, reused);
                    }
                    self.created_at
                        .entry(op.origin.clone())
                        .or_default()
                        .push(now);
                    self.view.union.set(op.origin.clone(), op.seq);
                    self.written += 1;
                }
                Err(_) => self.faults.writes_refused += 1,
            }
            self.observe(w);
            self.dispatch(w);
        }
        if self.write_attempts < self.config.ops {
            let gap = -(1.0 - self.rng.random::<f64>()).ln() / self.config.rate * 1e6;
            let next = self.now + Duration::from_micros(gap as u64);
            self.push(next, EventKind::Write);
        } else {
            self.last_write_at = Some(self.now);
        }
    }

    /// Prints where copies of op (`origin`, `seq`) are (`TIDEMARK_SIM_TRACE`).
    fn trace_copies(&self, origin: &NodeId, seq: u64) {
        for (i, node) in self.nodes.iter().enumerate() {
            let r = &node.replica;
            eprintln!(
                "  node {i}: departed {} stopped {} crashed {} pending restart {} ever {} applied {} own_seq {} inc {} member {}",
                node.departed,
                node.stopped,
                node.crashed,
                self.pending_restarts.contains_key(&i),
                node.ever_applied.get(origin),
                r.applied().get(origin),
                r.own_seq(),
                r.incarnation(),
                r.is_member()
            );
        }
        let _ = seq;
    }

    /// Members in good standing that are not leaving.
    fn steady_members(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member && !self.nodes[i].replica.is_leaving())
            .collect()
    }

    /// The address slots of `ids`.
    fn slots_of(&self, ids: &[NodeId]) -> Vec<usize> {
        ids.iter().map(|id| self.addresses[id]).collect()
    }

    /// Up to three bootstrap peers among `members`; a joiner moves on only when one refuses.
    fn bootstrap_peers(&mut self, members: &[usize]) -> Vec<NodeId> {
        let mut sponsors = Vec::new();
        for _ in 0..3 {
            let pick = members[self.rng.random_range(0..members.len())];
            if !sponsors.contains(&pick) {
                sponsors.push(pick);
            }
        }
        sponsors.iter().map(|&i| self.ids[i].clone()).collect()
    }

    fn join(&mut self) {
        let members = self.steady_members();
        if members.is_empty() {
            return;
        }
        let node = self.new_slot_id(None);
        let sponsors = self.bootstrap_peers(&members);
        let degree = self.config.mesh_degree;
        self.mesh.add_node(&mut self.rng, degree, &members);
        let bootstrap = self.slots_of(&sponsors);
        let replica = Replica::joiner_via(
            self.ids[node].clone(),
            1,
            sponsors,
            self.replica_config(),
            self.node_seed(node),
            self.now,
        );
        let mut joiner = SimNode::new(replica);
        joiner.bootstrap = bootstrap;
        self.nodes.push(joiner);
        self.faults.joins += 1;
        self.observe(node);
        self.dispatch(node);
    }

    /// A random member starts a graceful leave (if any is left to go): a non-writing one,
    /// or with `writers_leave` any but the last writer still writing.
    fn leave(&mut self) {
        let steady = |i: usize| self.nodes[i].member && !self.nodes[i].replica.is_leaving();
        let writers = self.config.writers.min(self.nodes.len());
        let first = if self.config.faults.writers_leave {
            0
        } else {
            writers
        };
        let writing = (0..writers).filter(|&w| steady(w)).count();
        let candidates: Vec<usize> = (first..self.nodes.len())
            .filter(|&i| steady(i) && (i >= writers || writing > 1))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let n = candidates[self.rng.random_range(0..candidates.len())];
        if self.config.faults.crash_guard == CrashGuard::Seats && !self.seats_survive(None, Some(n))
        {
            return;
        }
        let now = self.now;
        if self.nodes[n].replica.leave(now).is_ok() {
            if self.trace {
                eprintln!(
                    "{:.3} s: node {n} starts to leave",
                    self.now.as_millis_f64() / 1e3
                );
            }
            self.faults.leaves += 1;
            self.observe(n);
            self.dispatch(n);
        }
    }

    /// The running nodes that are the first aggregator of a group in the layout of the
    /// lowest running member (`--crash-aggregators`); `None` without a layout.
    fn first_aggregators(&self, running: &[usize]) -> Option<Vec<usize>> {
        let observer = running.iter().find(|&&i| self.nodes[i].member)?;
        let layout = self.nodes[*observer].replica.aggregation_layout()?;
        let firsts: Vec<usize> = (0..layout.groups())
            .filter_map(|g| layout.aggregators(g).first())
            .filter_map(|id| self.index.get(id).copied())
            .filter(|i| running.contains(i))
            .collect();
        (!firsts.is_empty()).then_some(firsts)
    }

    /// A random running node crashes, unless a third of the nodes are already down (and,
    /// under [`CrashGuard::Seats`], unless the crash would lose more than a third of the
    /// seats of the newest agreed view or of a next view a node accepted).
    fn crash(&mut self) {
        let faults = self.config.faults.clone();
        self.reschedule_fault(faults.crash_rate, EventKind::Crash);
        let down = self.nodes.iter().filter(|n| n.crashed).count();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].stopped && !self.nodes[i].departed)
            .collect();
        if running.is_empty() || 3 * (down + 1) > running.len() + down {
            return;
        }
        let aggregators = faults
            .crash_aggregators
            .then(|| self.first_aggregators(&running))
            .flatten();
        let candidates = aggregators.as_deref().unwrap_or(&running);
        let n = candidates[self.rng.random_range(0..candidates.len())];
        if faults.crash_guard == CrashGuard::Seats && !self.seats_survive(Some(n), None) {
            return;
        }
        self.stale_since.remove(&n);
        let node = &mut self.nodes[n];
        node.stopped = true;
        node.crashed = true;
        node.wake = None;
        self.charges.drop_inbox(n);
        if node.member {
            self.crashed_at
                .insert((self.ids[n].clone(), node.incarnation), self.now);
            self.crashed_standing.insert(
                (self.ids[n].clone(), node.incarnation),
                (n, node.shadow.clone()),
            );
            let members = (0..self.nodes.len())
                .filter(|&i| i != n && self.nodes[i].member)
                .map(|i| (i, None))
                .collect();
            self.crash_watch.insert(
                (self.ids[n].clone(), self.nodes[n].incarnation),
                (self.now, self.nodes[n].shadow.clone(), members),
            );
        }
        self.drop_member(n);
        self.keep_fetch_of_crashed(n);
        self.faults.crashes += 1;
        if self.trace {
            eprintln!("{:.3} s: node {n} crashes", self.ms() / 1e3);
        }
        if self.rng.random_bool(faults.restart) {
            let lost_disk = self.rng.random_bool(faults.lost_disk);
            self.pending_restarts.insert(n, lost_disk);
            let at = self.now + self.draw(faults.downtime);
            if self.faults_end.is_some_and(|end| at < end) {
                self.push(at, EventKind::Restart { node: n });
            }
        } else {
            // down for good: the evictions only it held are forgotten
            self.release_holder(n);
        }
    }

    /// Whether at most a third of the seats would be lost if node `crashing` crashed now,
    /// or node `leaving` started to leave, in the newest view a running node installed, in
    /// that view without the seats of the nodes leaving (where their leaves take it), and
    /// in every next view some node has accepted (it may be decided yet): a seat is lost
    /// when no running node holds its id (its node is down, or came back under a new
    /// identity). A leave counts too: it shrinks the view, and a seat lost to a crash the
    /// others cannot tell yet from a slow member weighs more in a smaller view.
    fn seats_survive(&self, crashing: Option<usize>, leaving: Option<usize>) -> bool {
        let n = crashing.unwrap_or(usize::MAX);
        let running = |i: usize| !self.nodes[i].stopped && !self.nodes[i].departed && i != n;
        let Some(newest) = (0..self.nodes.len())
            .filter(|&i| running(i) || i == n)
            .map(|i| self.nodes[i].replica.view().clone())
            .max_by_key(|view| view.epoch)
        else {
            return true;
        };
        let pending: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|node| {
                let votes = node.replica.votes();
                let (_, change) = votes.accepted?;
                (votes.view.epoch == newest.epoch).then_some(change.next)
            })
            .collect();
        let held: BTreeSet<&NodeId> = (0..self.nodes.len())
            .filter(|&i| running(i))
            .map(|i| &self.ids[i])
            .collect();
        // the view the leaves under way head for: the newest without its leaving seats
        let mut after_leaves = newest.clone();
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_leaving() || Some(i) == leaving {
                after_leaves.members.remove(&self.ids[i]);
            }
        }
        [newest, after_leaves]
            .into_iter()
            .chain(pending)
            .all(|view| {
                let lost = view.members.keys().filter(|id| !held.contains(id)).count();
                3 * lost <= view.members.len()
            })
    }

    /// A crashed node due to restart comes back: from its durable state (it rejoins with a
    /// new incarnation and republishes what the network lacks) or with a lost disk (a new
    /// identity that joins from scratch).
    fn restart(&mut self, n: usize) {
        let Some(lost_disk) = self.pending_restarts.remove(&n) else {
            return;
        };
        // a durable restart replaces the crashed membership by a new incarnation of the
        // same node, which holds everything it had applied; a new identity does not, and
        // its old membership stays in good standing until the view evicts it
        let old_id = self.ids[n].clone();
        if !lost_disk {
            self.crashed_standing.retain(|(id, _), _| *id != old_id);
        }
        let members = self.steady_members();
        let now = self.now;
        if lost_disk {
            // a lost data dir keeps no fetch
            self.kept_fetches.remove(&n);
            if members.is_empty() {
                return;
            }
            self.absorb_stats(n);
            self.new_slot_id(Some(n));
            let sponsors = self.bootstrap_peers(&members);
            let bootstrap = self.slots_of(&sponsors);
            let replica = Replica::joiner_via(
                self.ids[n].clone(),
                1,
                sponsors,
                self.replica_config(),
                self.node_seed(n),
                now,
            );
            self.nodes[n] = SimNode::new(replica);
            self.nodes[n].bootstrap = bootstrap;
            self.faults.lost_disks += 1;
            self.release_holder(n);
        } else if self.nodes[n].backup.is_some() && self.draw_old_backup() {
            // the operator restores the data dir from its last backup and starts the node
            // as a restored backup: a new identity that republishes what the backup holds
            let backup = self.nodes[n].backup.take().expect("checked above");
            self.kept_fetches.remove(&n);
            self.absorb_stats(n);
            self.new_slot_id(Some(n));
            let replica = match Replica::resume_from_backup(
                self.ids[n].clone(),
                backup.checkpoint,
                backup.ops,
                self.replica_config(),
                self.node_seed(n),
                now,
            ) {
                Ok(replica) => replica,
                Err(e) => {
                    let at = self.ms();
                    let detail = format!("node {n} cannot start from its backup: {e}");
                    self.violations.record(no_lost_writes::NAME, at, detail);
                    return;
                }
            };
            let mut node = SimNode::new(replica);
            // what only the newer, lost state held is gone with it
            node.ever_applied = backup.ever_applied;
            // the operator starts it with the addresses of members that run now, which
            // its driver dials after a round through the nodes the backup knows
            if !members.is_empty() {
                let sponsors = self.bootstrap_peers(&members);
                node.bootstrap = self.slots_of(&sponsors);
            }
            self.nodes[n] = node;
            self.faults.old_backups += 1;
            self.release_holder(n);
        } else {
            let placeholder =
                Replica::genesis(self.ids[n].clone(), &[], self.replica_config(), 0, now);
            let crashed = std::mem::replace(&mut self.nodes[n].replica, placeholder);
            let resumed = self.resume_fetch(n, &crashed);
            let node = &mut self.nodes[n];
            node.replica = resumed.unwrap_or_else(|| crashed.restart(now));
            node.stopped = false;
            node.crashed = false;
            node.seen = SeenCache::default();
            self.faults.restarts += 1;
        }
        if self.trace {
            eprintln!(
                "{:.3} s: node {n} restarts as {:?}",
                self.ms() / 1e3,
                self.ids[n]
            );
        }
        self.observe(n);
        self.dispatch(n);
    }

    /// Whether a durable restart comes back from the node's old backup (draws nothing when
    /// the fault is off, so runs without it stay what they were).
    fn draw_old_backup(&mut self) -> bool {
        let share = self.config.faults.old_backup;
        share > 0.0 && self.rng.random_bool(share.min(1.0))
    }

    /// Backs up the data dir of every running node, every `backup_interval` (with
    /// `old_backup` faults).
    fn back_up(&mut self) {
        let faults = &self.config.faults;
        if faults.old_backup <= 0.0
            || !self.faults_on
            || self.now < self.last_backup + faults.backup_interval
        {
            return;
        }
        self.last_backup = self.now;
        for node in self.nodes.iter_mut().filter(|n| !n.stopped) {
            let (checkpoint, ops) = node.replica.durable_image();
            node.backup = Some(Backup {
                checkpoint,
                ops,
                ever_applied: node.ever_applied.clone(),
            });
        }
    }

    /// Splits the running nodes in two (a random minority or half against the rest);
    /// one-way partitions lose only one side's messages to the other.
    fn partition(&mut self) {
        let faults = self.config.faults.clone();
        self.reschedule_fault(faults.partition_rate, EventKind::Partition);
        if self.partition.is_some() {
            return;
        }
        let mut running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].stopped)
            .collect();
        if running.len() < 2 {
            return;
        }
        let size = self.rng.random_range(1..=running.len() / 2);
        let mut side = vec![false; self.ids.len()];
        for _ in 0..size {
            let pick = running.swap_remove(self.rng.random_range(0..running.len()));
            side[pick] = true;
        }
        let one_way = self.rng.random_bool(faults.one_way);
        if self.trace {
            let cut: Vec<usize> = (0..side.len()).filter(|&i| side[i]).collect();
            let how = if one_way {
                "deaf to the rest"
            } else {
                "cut off"
            };
            eprintln!("{:.3} s: nodes {cut:?} {how}", self.ms() / 1e3);
        }
        self.partition = Some(Partition { side, one_way });
        self.faults.partitions += 1;
        let at = self.now + self.draw(faults.partition_length);
        if self.faults_end.is_some_and(|end| at < end) {
            self.push(at, EventKind::Heal);
        }
    }

    fn heal(&mut self) {
        if self.partition.take().is_some() {
            self.last_heal = self.now;
            if self.trace {
                eprintln!("{:.3} s: the partition heals", self.ms() / 1e3);
            }
        }
        let now = self.now;
        for since in self.stale_since.values_mut() {
            since.get_or_insert(now);
        }
    }

    /// Churn: a join or a graceful leave, keeping at least half the founding size.
    fn churn(&mut self) {
        let rate = self.config.faults.churn_rate;
        self.reschedule_fault(rate, EventKind::Churn);
        // members that stay: ones already leaving do not count towards the half kept
        let members = self
            .nodes
            .iter()
            .filter(|n| n.member && !n.replica.is_leaving())
            .count();
        if self.rng.random_bool(0.5) || members <= self.config.nodes / 2 {
            self.join();
        } else {
            self.leave();
        }
    }

    /// The safety phase is over: partitions heal and crashed nodes due to restart come
    /// back; L1 must now hold within the liveness bound.
    fn faults_off(&mut self) {
        self.faults_on = false;
        self.heal();
        let due: Vec<usize> = self.pending_restarts.keys().copied().collect();
        for n in due {
            self.restart(n);
        }
        if let Some(after) = self.config.operator_forces_view_after {
            let at = self.now + after;
            self.push(at, EventKind::OperatorForcesView);
        }
    }

    /// The operator's way out of a majority loss, applied as a careful operator would: to
    /// every running member that is still isolated, and only when every member it does not
    /// hear from is really gone (no running node has that identity); a member cut off from
    /// live ones is left alone.
    fn operator_forces_view(&mut self) {
        let now = self.now;
        let running: std::collections::BTreeSet<tidemark::NodeId> = self
            .nodes
            .iter()
            .filter(|node| !node.stopped && !node.crashed)
            .map(|node| node.replica.id().clone())
            .collect();
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            if node.stopped || node.crashed || !node.replica.is_member() {
                continue;
            }
            if !node.replica.is_isolated() && node.replica.hears_view_quorum(now) {
                continue;
            }
            let silent = tidemark::network_map::monitor::Monitor::silent_members(
                now,
                node.replica.network_map(),
                &node.replica.config().gossip,
            );
            if silent.iter().any(|id| running.contains(id)) {
                continue;
            }
            if let Ok(evicted) = self.nodes[n].replica.force_new_view(now) {
                self.faults.forced_views += 1;
                if self.trace {
                    eprintln!(
                        "{:.3} s: node {n} forces a new view, evicting {evicted:?}",
                        now.as_millis_f64() / 1e3
                    );
                }
                self.observe(n);
                self.dispatch(n);
            }
        }
    }

    /// Whether node slot `i`'s storage still exists: it runs, left, or crashed and will
    /// restart.
    fn storage_survives(&self, i: usize) -> bool {
        !self.nodes[i].crashed || self.pending_restarts.contains_key(&i)
    }

    /// Every op a running node holds: its applied vector, and its own ops kept in its
    /// journal beyond it.
    fn held_by(node: &SimNode) -> VersionVector {
        let mut held = node.replica.applied().clone();
        let me = node.replica.id();
        let mut upto = held.get(me);
        for op in node.replica.own_ops().above(upto) {
            if op.seq != upto + 1 {
                break;
            }
            upto = op.seq;
        }
        held.raise(me, upto);
        held
    }

    /// I5 when a node that left stops: it must have handed over every op it held that
    /// surviving storage ever held (a leave that strands a write loses it for good).
    fn check_handed_over(&mut self, leaver: usize) {
        if !self.nodes[leaver].departed {
            return;
        }
        let mut others = VersionVector::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if i == leaver || node.departed {
                continue;
            }
            if !node.stopped {
                others.join(&Self::held_by(node));
            } else if self.storage_survives(i) {
                others.join(&node.ever_applied);
            }
        }
        let mine = Self::held_by(&self.nodes[leaver]);
        let stranded: Vec<String> = mine
            .iter()
            .filter(|(origin, seq)| *seq > others.get(origin))
            .map(|(origin, seq)| format!("{origin:?} seq {}..={seq}", others.get(origin) + 1))
            .collect();
        if !stranded.is_empty() {
            let at = self.ms();
            self.violations.record(
                no_lost_writes::NAME,
                at,
                format!(
                    "node {leaver} left holding ops no other node holds: {}",
                    stranded.join(", ")
                ),
            );
        }
    }

    /// Why L1 failed, as far as the end state tells (see `liveness::Cause`).
    fn liveness_cause(&self) -> liveness::Cause {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].stopped)
            .collect();
        let members: Vec<usize> = running
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].replica.is_member())
            .collect();
        if members.is_empty() {
            return liveness::Cause::NoMemberLeft;
        }
        // two running members that each count a set the other does not: groups that
        // evicted each other
        let counts =
            |a: usize, b: usize| self.nodes[a].replica.network_map().is_counted(&self.ids[b]);
        let split = members.iter().any(|&a| {
            members
                .iter()
                .any(|&b| a != b && !counts(a, b) && !counts(b, a))
        });
        if split {
            return liveness::Cause::SplitBrain;
        }
        // a member that counts more memberships that are gone (their node stopped, or runs
        // another incarnation now) than it can outvote
        let majority_lost = members.iter().any(|&a| {
            let map = self.nodes[a].replica.network_map();
            let gone = map
                .iter()
                .filter(|(id, e)| **id != self.ids[a] && e.record.state.counts())
                .filter(|(id, e)| {
                    self.index.get(*id).is_none_or(|&i| {
                        let n = &self.nodes[i];
                        n.stopped
                            || !n.replica.is_member()
                            || n.replica.incarnation() != e.record.incarnation
                    })
                })
                .count();
            2 * gone >= map.counted()
        });
        // or whose view has lost the quorum of its seats: a seat is gone when no running
        // node runs the membership it names (stopped, restarted and not yet admitted
        // again, or back under a new identity)
        let seats_lost = members.iter().any(|&a| {
            let view = self.nodes[a].replica.view();
            let gone = view
                .members
                .iter()
                .filter(|(id, incarnation)| {
                    self.index.get(*id).is_none_or(|&i| {
                        let n = &self.nodes[i];
                        n.stopped
                            || n.replica.id() != *id
                            || n.replica.incarnation() != **incarnation
                    })
                })
                .count();
            view.members.len() - gone < view.quorum()
        });
        if majority_lost || seats_lost {
            return liveness::Cause::MajorityLost;
        }
        let joiners: Vec<usize> = running
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].replica.join_progress().is_some())
            .collect();
        if joiners.is_empty() {
            return liveness::Cause::Other;
        }
        // a joiner none of whose possible sponsors is, at its address, a running member
        let cut_off = joiners.iter().any(|&j| {
            !self
                .slots_at(&self.known_to_joiner(j))
                .iter()
                .any(|slot| members.contains(slot))
        });
        if cut_off {
            liveness::Cause::NoSponsorReachable
        } else {
            liveness::Cause::JoinerStuck
        }
    }

    /// I5 when the run settles: every owed op (held at some point by storage that still
    /// exists) is still held by a running node. Counts the acknowledged ops the oracle
    /// excuses because only lost storage ever held them.
    fn check_nothing_lost(&mut self) {
        let mut owed = VersionVector::new();
        let mut held = VersionVector::new();
        for (i, node) in self.nodes.iter().enumerate() {
            // a node that left is gone for the network: its leave handed over what it held
            // (`check_handed_over`), and its data dir owes nothing more
            if self.storage_survives(i) && !node.departed {
                owed.join(&node.ever_applied);
            }
            if !node.stopped {
                held.join(&Self::held_by(node));
            }
        }
        let at = self.ms();
        let result = no_lost_writes::check_held(&owed, &held);
        if result.is_err() && self.trace {
            for (origin, upto) in owed.iter() {
                if upto > held.get(origin) {
                    eprintln!(
                        "  lost ops of {:?} (slot {:?}) up to {upto}",
                        origin,
                        self.index.get(origin)
                    );
                    self.trace_copies(origin, upto);
                }
            }
        }
        self.violations.check(no_lost_writes::NAME, at, result);
        self.excuses.counts.ops_lost_with_storage =
            no_lost_writes::lost_with_storage(self.truth.acknowledged(), &owed);
    }

    /// Adds the protocol counters of the replica in slot `n` (before it is replaced).
    fn absorb_stats(&mut self, n: usize) {
        let stats = self.nodes[n].replica.stats();
        self.faults.suspicions += stats.suspicions_raised;
        self.faults.refutations += stats.refutations;
        self.faults.rejoins += stats.rejoins;
        self.faults.ops_republished += stats.ops_republished;
        self.faults.stale_notices += stats.stale_notices;
    }

    fn sample(&mut self) {
        self.expire_excuses();
        self.back_up();
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
        let union = self.members_union().clone();
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
        let mut live = liveness::check(&union, members.iter().map(|(l, a, s)| (l.clone(), a, s)));
        if live.is_err() && self.trace {
            for (i, n) in self.nodes.iter().enumerate() {
                let r = &n.replica;
                let map = r.network_map();
                let counted: Vec<_> = map
                    .counted_peers()
                    .iter()
                    .map(|p| self.index.get(p).copied())
                    .collect();
                eprintln!(
                    "  node {i}: member {} stopped {} inc {} applied {} sp {} isolated {} counted {:?} stats {:?}",
                    n.member,
                    n.stopped,
                    r.incarnation(),
                    r.applied().total(),
                    r.snapshot_point().total(),
                    r.is_isolated(),
                    counted,
                    r.stats()
                );
            }
        }
        if live.is_ok() {
            if let Some(i) = (0..self.nodes.len()).find(|&i| {
                let n = &self.nodes[i];
                !n.stopped && !n.departed && !n.member
            }) {
                let node = &self.nodes[i];
                let r = &node.replica;
                let id = &self.ids[i];
                let evicted = self.evicted.get(&(id.clone(), r.incarnation()));
                let counted_by = self
                    .nodes
                    .iter()
                    .filter(|o| o.member && o.replica.network_map().is_counted(id))
                    .count();
                if self.trace {
                    for (k, o) in self.nodes.iter().enumerate() {
                        if let Some(e) = o.replica.network_map().get(id) {
                            eprintln!("  node {k} (member {} inc {} stopped {}) holds inc {} {:?} pending {}", o.member, o.replica.incarnation(), o.stopped, e.record.incarnation, e.record.state, o.replica.network_map().pending_len());
                        }
                    }
                }
                live = Err(format!(
                    "node {i} is running but not a member in good standing (joining: {}, incarnation {}, evicted by: {evicted:?}, isolated: {}, counted by {counted_by} members, stats {:?})",
                    !r.is_member(),
                    r.incarnation(),
                    r.is_isolated(),
                    r.stats()
                ));
            }
        }
        if live.is_ok() {
            // I5: whatever a running node ever applied reached every member
            if let Some(i) = (0..self.nodes.len()).find(|&i| {
                let n = &self.nodes[i];
                !n.stopped && !n.departed && !n.ever_applied.le(&union)
            }) {
                live = Err(format!(
                    "ops applied by node {i} never reached the members (I5)"
                ));
            }
        }
        if let (Ok(()), Some(calm), Some(conv)) = (&live, self.calm_since(), self.converged_at) {
            if conv > calm + self.liveness_bound() {
                live = Err(format!(
                    "converged {:.0} ms after faults and writes stopped, beyond the bound",
                    conv.since(calm).as_millis()
                ));
            }
        }
        self.faults.views_decided = self.view_history.epochs() as u64;
        self.faults.forced_view_conflicts = self.view_history.forced_conflicts;
        let liveness_failure = live.is_err();
        let liveness_cause = liveness_failure.then(|| self.liveness_cause());
        if liveness_failure && self.trace {
            for (i, n) in self.nodes.iter().enumerate() {
                let r = &n.replica;
                let view = r.view();
                let members: Vec<String> = view
                    .members
                    .iter()
                    .map(|(id, inc)| {
                        format!(
                            "{}@{inc}",
                            self.index.get(id).copied().unwrap_or(usize::MAX)
                        )
                    })
                    .collect();
                let counted: Vec<String> = r
                    .network_map()
                    .iter()
                    .filter(|(_, e)| e.record.state.counts())
                    .map(|(id, e)| {
                        format!(
                            "{}@{}",
                            self.index.get(id).copied().unwrap_or(usize::MAX),
                            e.record.incarnation
                        )
                    })
                    .collect();
                eprintln!(
                    "end: node {i} stopped={} member={} inc={} isolated={} view e{} [{}] counted [{}] join={:?}",
                    n.stopped,
                    r.is_member(),
                    r.incarnation(),
                    r.is_isolated(),
                    view.epoch,
                    members.join(" "),
                    counted.join(" "),
                    r.join_progress().map(|p| format!("{p:?}")),
                );
            }
        }
        if liveness_failure && self.trace {
            for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.member) {
                let applied = n.replica.applied();
                for (origin, seq) in union.iter() {
                    if applied.get(origin) < seq {
                        let buffered: Vec<u64> = n
                            .replica
                            .ops_log()
                            .buffered_ops()
                            .iter()
                            .filter(|op| op.origin == *origin)
                            .map(|op| op.seq)
                            .collect();
                        eprintln!(
                            "  end: node {i} lacks {:?} (slot {:?}) {}..={seq}, buffered {buffered:?}, stable cut {}",
                            origin,
                            self.index.get(origin),
                            applied.get(origin) + 1,
                            n.replica.stable_cut().get(origin)
                        );
                    }
                }
            }
            for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| !n.stopped) {
                let r = &n.replica;
                let counted: Vec<_> = r
                    .network_map()
                    .counted_peers()
                    .iter()
                    .map(|p| self.index.get(p).copied())
                    .collect();
                eprintln!(
                    "  end: node {i} member {} joining {} inc {} isolated {} counted {:?} join {:?}",
                    n.member,
                    r.join_progress().is_some(),
                    r.incarnation(),
                    r.is_isolated(),
                    counted,
                    r.join_progress()
                );
            }
        }
        self.check_nothing_lost();
        let mut merges = RecordMerges::default();
        for i in 0..self.nodes.len() {
            let stats = self.nodes[i].replica.stats().clone();
            merges.adopted += stats.records_adopted;
            merges.pending += stats.records_pending;
            merges.outdated += stats.records_outdated;
            self.absorb_stats(i);
        }
        let at = self.ms();
        self.violations.check(liveness::NAME, at, live);
        let calm = self.calm_since();
        Report::new(
            &self.config,
            ReportInputs {
                violations: self.violations,
                liveness_failure,
                liveness_cause,
                converged: !liveness_failure,
                convergence_ms: match (calm, self.converged_at) {
                    (Some(l), Some(c)) => Some(round3(c.since(l).as_micros() as f64 / 1_000.0)),
                    _ => None,
                },
                dissemination: self.dissemination,
                sp_lag: self.sp_lag,
                aggregated_sp_lag: self.config.aggregation.then_some(self.aggregated_sp_lag),
                dissemination_node_op: self.dissemination_node_op,
                sp_lag_node_op: self.sp_lag_node_op,
                longest_inbox: self.charges.longest_inbox(),
                traffic: self.traffic,
                written: self.written,
                events: self.events,
                cuts: self.agreement.cuts(),
                record_merges: merges,
                faults: self.faults,
                crash_to_drop: self.crash_to_drop,
                crash_to_sp_moves: self.crash_to_sp_moves,
                eviction_to_sp_moves: self.eviction_to_sp_moves,
                stale_to_rejoin: self.stale_to_rejoin,
                excuses: self.excuses.counts,
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
    pub liveness_cause: Option<liveness::Cause>,
    pub converged: bool,
    pub convergence_ms: Option<f64>,
    pub dissemination: Latencies,
    pub sp_lag: Latencies,
    pub aggregated_sp_lag: Option<Latencies>,
    pub dissemination_node_op: Histogram,
    pub sp_lag_node_op: Histogram,
    /// Most messages that waited for one node's CPU at once.
    pub longest_inbox: usize,
    pub traffic: Traffic,
    pub written: u64,
    pub events: u64,
    pub cuts: usize,
    pub record_merges: RecordMerges,
    pub faults: FaultStats,
    pub crash_to_drop: Latencies,
    pub crash_to_sp_moves: Latencies,
    pub eviction_to_sp_moves: Latencies,
    pub stale_to_rejoin: Latencies,
    pub excuses: ExcuseCounts,
    pub sim_time_s: f64,
    pub wall_s: f64,
    pub samples: Vec<Sample>,
}
