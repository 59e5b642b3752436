//! The tidemark side of the cluster bench: `load.nodes` real nodes (the library's `Node`)
//! on 127.0.0.1 that join through the first one, each writing its share of the load with
//! `NodeHandle::put`.
//!
//! This file owns starting and warming up that network, offering the load, timing every
//! write, every arrival (a change of a node's applied vector) and every entry into a
//! node's snapshot point (from the nodes' watch channels), reading the nodes' metrics, and
//! turning what it saw into a [`RunReport`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidemark::gossip::GossipConfig;
use tidemark::node::{Node, NodeConfig, NodeHandle};
use tidemark::NodeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::common::{
    completions, metric_sum, payload, per_op_latest, process_cpu, steady_window, sustained_rate,
    Load, RunReport, Samples,
};

/// How long joining and warming up may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(20);
const BANDWIDTH_METRIC: &str = "tidemark_libp2p_bandwidth_bytes_total";
const OUTBOUND: &str = "direction=\"Outbound\"";
/// Message kinds that are status and membership traffic, as the simulator's
/// `status_share` counts them.
use tidemark::gossip::STATUS_KINDS;
/// Message kinds sent directly (on the direct streams), not published; `report` rides on
/// published batches and is counted apart.
const DIRECT_KINDS: [&str; 11] = [
    "status",
    "digest",
    "repair",
    "stale",
    "join_request",
    "join_response",
    "view",
    "probe",
    "probe_ack",
    "aggregate",
    "report",
];

/// (origin peer id, seq) of an op.
type OpKey = (Arc<str>, u64);

/// Runs tidemark at one load point and reports what it measured.
pub async fn run_tidemark(load: &Load, gossip: &GossipConfig) -> RunReport {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = start_network(load.nodes, dir.path(), gossip).await;
    let handles: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    let warm = warm_up(&handles).await;
    eprintln!(
        "tidemark: {} nodes joined and warmed up in {:.2} s",
        load.nodes,
        warm.as_secs_f64()
    );
    let before = Counters::read(&handles);
    let cpu_before = process_cpu();
    let observers: Vec<Observer> = handles.iter().map(Observer::start).collect();

    let writes = offer_load(load, &handles).await;
    let last_write = Instant::now();
    let flooding_at_last_write = Counters::read(&handles).flooding;
    let ops_written = writes.len() as u64;
    let expected = ops_written * (load.nodes as u64 - 1);
    // wait until every op is inside every snapshot point: the figures count what arrived
    // within the grace period, and the wait goes on up to the drain bound to see whether
    // every op still gets there under overload (and when)
    let targets = Arc::new(writes.keys().cloned().collect::<Vec<_>>());
    let mut drained_after = None;
    loop {
        let done = observers.iter().all(|o| o.sp_holds_all(&targets));
        if done {
            drained_after = Some(last_write.elapsed());
            break;
        }
        if last_write.elapsed() >= load.grace.max(load.drain_bound) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let cpu = process_cpu().saturating_sub(cpu_before);
    let grace_end = last_write + load.grace;
    let after = Counters::read(&handles);
    let seen: Vec<Seen> = observers.into_iter().map(Observer::stop).collect();
    for node in nodes {
        node.kill().await;
    }

    let mut report = RunReport {
        ops_written,
        deliveries_expected: expected,
        ..RunReport::default()
    };
    let first_write = writes.values().min().copied();
    let mut dissemination = Vec::new();
    let mut sp_lag = Vec::new();
    let mut applied_at = Vec::new();
    let mut in_sp_at = Vec::new();
    let mut latest = None::<Instant>;
    for (node, seen) in seen.iter().enumerate() {
        let me = handles[node].peer_id();
        for (op, written) in &writes {
            if &*op.0 == me {
                continue;
            }
            if let Some(at) = seen.applied.get(op).filter(|at| **at <= grace_end) {
                dissemination.push(at.saturating_duration_since(*written));
                applied_at.push((op.clone(), *written, *at));
            }
            if let Some(at) = seen.in_sp.get(op).filter(|at| **at <= grace_end) {
                report.deliveries_seen += 1;
                sp_lag.push(at.saturating_duration_since(*written));
                in_sp_at.push((op.clone(), *written, *at));
                latest = latest.max(Some(*at));
            }
        }
    }
    let receivers = load.nodes - 1;
    report.dissemination = Samples(dissemination);
    report.sp_lag = Some(Samples(sp_lag));
    let applied_everywhere = completions(&applied_at, receivers);
    let in_every_sp = completions(&in_sp_at, receivers);
    report.dissemination_per_op = per_op_latest(&applied_everywhere);
    report.sp_lag_per_op = Some(per_op_latest(&in_every_sp));
    report.drained_after = drained_after;
    report.cpu = cpu;
    if let (Some(first), Some(last)) = (first_write, latest) {
        report.completion = last - first;
    }
    if let (Some(first), Some(last)) = (first_write, writes.values().max().copied()) {
        let window = steady_window(first, last);
        report.sustained = sustained_rate(&applied_everywhere, window);
        report.sustained_into_sp = Some(sustained_rate(&in_every_sp, window));
    }
    report.wire_bytes = after.wire - before.wire;
    report.status_bytes = Some(after.status_share_bytes(&before));
    let per_op = |kind: &str| {
        let sent = after.messages.get(kind).copied().unwrap_or(0)
            - before.messages.get(kind).copied().unwrap_or(0);
        sent as f64 / ops_written.max(1) as f64
    };
    eprintln!(
        "tidemark: messages sent per op: ops (published) {:.2}, status {:.1}, digest {:.2}, repair {:.2}, aggregate {:.2}, probe {:.2}",
        per_op("ops"),
        per_op("status"),
        per_op("digest"),
        per_op("repair"),
        per_op("aggregate"),
        per_op("probe")
    );
    let kinds: Vec<String> = DIRECT_KINDS
        .iter()
        .chain(["ops"].iter())
        .map(|kind| (kind, after.sent(&before, kind)))
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(kind, bytes)| format!("{kind} {:.0}", bytes as f64 / ops_written.max(1) as f64))
        .collect();
    eprintln!(
        "tidemark: payload bytes sent per op, by kind (before relaying and framing): {}",
        kinds.join(", ")
    );
    eprintln!(
        "tidemark: while writing: {} suspicions raised, {} refuted, {} direct messages dropped; members flooding their heartbeat: {} before, {} at the last write, {} after",
        after.suspicions - before.suspicions,
        after.refutations - before.refutations,
        after.dropped - before.dropped,
        before.flooding,
        flooding_at_last_write,
        after.flooding
    );
    eprintln!(
        "tidemark: {} op arrivals were of ops the receiver already held (one copy of each came by repair)",
        after.replayed - before.replayed,
    );
    let per_node_op = |n: u64| n as f64 / (ops_written.max(1) * handles.len() as u64) as f64;
    eprintln!(
        "tidemark: storage per (node, op): {:.3} synced commits, {:.3} unsynced commits, {:.3} ops stored as ops",
        per_node_op(after.commits_synced - before.commits_synced),
        per_node_op(after.commits_unsynced - before.commits_unsynced),
        per_node_op(after.ops_stored - before.ops_stored),
    );
    report
}

/// Starts node 0, then every other node with node 0 as its bootstrap peer.
async fn start_network(n: usize, dir: &std::path::Path, gossip: &GossipConfig) -> Vec<Node> {
    let config = |i: usize| NodeConfig {
        api: None,
        gossip: gossip.clone(),
        network: "bench".into(),
        ..NodeConfig::local(dir.join(format!("node{i}")))
    };
    let first = Node::start(config(0)).await.expect("node 0 starts");
    let bootstrap = first.listen_addrs()[0].clone();
    let mut nodes = vec![first];
    for i in 1..n {
        let node = Node::start(NodeConfig {
            bootstrap: vec![bootstrap.clone()],
            ..config(i)
        })
        .await
        .expect("node starts");
        nodes.push(node);
    }
    nodes
}

/// Waits until every node counts every node as a member and its installed view holds them
/// all, then until one op of every node is inside every snapshot point (so gossip reaches
/// everyone). Returns how long it took.
async fn warm_up(handles: &[NodeHandle]) -> Duration {
    let started = Instant::now();
    let deadline = started + SETUP_TIMEOUT;
    let n = handles.len();
    loop {
        let mut members = 0;
        for h in handles {
            let status = h.status().await.expect("node runs");
            // joined, and admitted by the installed view: a member outside the view still
            // floods its heartbeat and its applied vector
            if status.phase == "member" && status.members == n && status.view.members.len() == n {
                members += 1;
            }
        }
        if members == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{members}/{n} nodes joined in time"
        );
        tokio::time::sleep(POLL).await;
    }
    for h in handles {
        h.put("warm-up", Some(h.peer_id()))
            .await
            .expect("warm-up write");
    }
    loop {
        let everywhere = handles.iter().all(|h| {
            let sp = h.watch_snapshot_point().borrow().snapshot_point.clone();
            handles
                .iter()
                .all(|o| sp.get(o.peer_id()).copied().unwrap_or(0) >= 1)
        });
        if everywhere {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "warm-up ops did not converge");
        tokio::time::sleep(POLL).await;
    }
}

/// Each node writes its ops at its share of the rate (nodes staggered over one interval);
/// returns the write instant of every op, by op id.
async fn offer_load(load: &Load, handles: &[NodeHandle]) -> BTreeMap<OpKey, Instant> {
    let writes = Arc::new(Mutex::new(BTreeMap::new()));
    let interval = load.interval();
    let start = Instant::now() + Duration::from_millis(20);
    let mut writers = Vec::new();
    for (k, handle) in handles.iter().enumerate() {
        let handle = handle.clone();
        let writes = writes.clone();
        let ops = load.ops_per_node();
        let offset = interval.mul_f64(k as f64 / handles.len() as f64);
        writers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(start + offset, interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut puts = Vec::new();
            for i in 0..ops {
                ticks.tick().await;
                let handle = handle.clone();
                let writes = writes.clone();
                puts.push(tokio::spawn(async move {
                    let (key, value) = payload(k, i);
                    let written = Instant::now();
                    match handle.put(&key, Some(&value)).await {
                        Ok(id) => {
                            let op: OpKey = (id.origin.into(), id.seq);
                            writes.lock().expect("not poisoned").insert(op, written);
                        }
                        Err(e) => eprintln!("tidemark: write refused: {e}"),
                    }
                }));
            }
            for put in puts {
                let _ = put.await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    Arc::try_unwrap(writes)
        .expect("writers are done")
        .into_inner()
        .expect("not poisoned")
}

/// When each op was first seen applied, and first seen inside the snapshot point, at one node.
#[derive(Default)]
struct Seen {
    applied: HashMap<OpKey, Instant>,
    in_sp: HashMap<OpKey, Instant>,
}

/// Watches one node's applied vector and snapshot point, timing every op's arrival.
struct Observer {
    seen: Arc<Mutex<Seen>>,
    /// Latest snapshot point seen, by origin.
    sp: watch::Receiver<tidemark::node::views::SnapshotPointView>,
    tasks: [JoinHandle<()>; 2],
}

impl Observer {
    fn start(handle: &NodeHandle) -> Observer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut applied = handle.watch_applied();
        let mut sp = handle.watch_snapshot_point();
        let applied_task = {
            let seen = seen.clone();
            // by origin: its peer id string (made once) and the highest seq seen
            let mut known: BTreeMap<NodeId, (Arc<str>, u64)> = applied
                .borrow_and_update()
                .iter()
                .map(|(o, s)| (o.clone(), (o.to_string().into(), s)))
                .collect();
            tokio::spawn(async move {
                while applied.changed().await.is_ok() {
                    let now = Instant::now();
                    let vector = applied.borrow_and_update().clone();
                    let mut seen = seen.lock().expect("not poisoned");
                    for (origin, seq) in vector.iter() {
                        let (name, from) = known
                            .entry(origin.clone())
                            .or_insert_with(|| (origin.to_string().into(), 0));
                        for s in *from + 1..=seq {
                            seen.applied.entry((name.clone(), s)).or_insert(now);
                        }
                        *from = (*from).max(seq);
                    }
                }
            })
        };
        let sp_task = {
            let seen = seen.clone();
            let mut sp = sp.clone();
            let mut known = sp.borrow_and_update().snapshot_point.clone();
            tokio::spawn(async move {
                while sp.changed().await.is_ok() {
                    let now = Instant::now();
                    let view = sp.borrow_and_update().snapshot_point.clone();
                    let mut seen = seen.lock().expect("not poisoned");
                    for (origin, &seq) in &view {
                        let from = known.get(origin).copied().unwrap_or(0);
                        if seq > from {
                            let name: Arc<str> = origin.as_str().into();
                            for s in from + 1..=seq {
                                seen.in_sp.entry((name.clone(), s)).or_insert(now);
                            }
                            known.insert(origin.clone(), seq);
                        }
                    }
                }
            })
        };
        sp.borrow_and_update();
        Observer {
            seen,
            sp,
            tasks: [applied_task, sp_task],
        }
    }

    /// Whether this node's snapshot point holds every op in `ops`.
    fn sp_holds_all(&self, ops: &[OpKey]) -> bool {
        let view = self.sp.borrow();
        ops.iter()
            .all(|(origin, seq)| view.snapshot_point.get(&**origin).copied().unwrap_or(0) >= *seq)
    }

    fn stop(self) -> Seen {
        for task in &self.tasks {
            task.abort();
        }
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}

/// Byte counters summed over all nodes.
struct Counters {
    /// Stream bytes sent (libp2p bandwidth metrics).
    wire: u64,
    /// Payload bytes sent, by message kind.
    by_kind: BTreeMap<&'static str, u64>,
    /// Messages sent, by message kind.
    messages: BTreeMap<&'static str, u64>,
    /// Suspicions raised and refuted, over all nodes.
    suspicions: u64,
    refutations: u64,
    /// Direct messages dropped (a full queue to a peer, or a failed stream).
    dropped: u64,
    /// Members flooding their heartbeat when read (not covered by the aggregation).
    flooding: u64,
    /// Op arrivals of ops the receiver already held, applied or waiting
    /// (`ops_rejected_total{reason="replayed"}`). Gossipsub drops repeated copies of a
    /// topic message itself, so one copy of each such op came by repair.
    replayed: u64,
    /// Storage transactions committed, synced and not, and ops written as ops.
    commits_synced: u64,
    commits_unsynced: u64,
    ops_stored: u64,
}

impl Counters {
    fn read(handles: &[NodeHandle]) -> Counters {
        let mut counters = Counters {
            wire: 0,
            by_kind: BTreeMap::new(),
            messages: BTreeMap::new(),
            suspicions: 0,
            refutations: 0,
            dropped: 0,
            flooding: 0,
            replayed: 0,
            commits_synced: 0,
            commits_unsynced: 0,
            ops_stored: 0,
        };
        for h in handles {
            let metrics = h.metrics();
            let text = metrics.encode();
            counters.wire += metric_sum(&text, BANDWIDTH_METRIC, OUTBOUND);
            counters.suspicions += metric_sum(&text, "tidemark_suspicions_raised_total", "");
            counters.refutations += metric_sum(&text, "tidemark_refutations_total", "");
            counters.dropped += metric_sum(&text, "tidemark_direct_dropped_total", "");
            counters.flooding += metric_sum(&text, "tidemark_heartbeat_flooding", "");
            counters.replayed += metric_sum(&text, "tidemark_ops_rejected_total", "replayed");
            counters.commits_synced +=
                metric_sum(&text, "tidemark_storage_commits_total", "\"synced\"");
            counters.commits_unsynced +=
                metric_sum(&text, "tidemark_storage_commits_total", "\"unsynced\"");
            counters.ops_stored += metric_sum(&text, "tidemark_ops_stored_total", "");
            for kind in DIRECT_KINDS.iter().chain(["ops"].iter()) {
                *counters.by_kind.entry(kind).or_default() += metrics.bytes_total(&[*kind]).1;
                *counters.messages.entry(kind).or_default() += metrics.messages_total(&[*kind]).1;
            }
        }
        counters
    }

    fn sent(&self, before: &Counters, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
            - before.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Wire bytes of status and map traffic in the interval: status payload as sent, plus
    /// the report share of the published bytes, scaled to the gossip traffic on the wire
    /// (wire bytes less every directly sent payload): every published message is relayed
    /// alike, so reports take the same share of it on the wire as in what was published.
    fn status_share_bytes(&self, before: &Counters) -> u64 {
        let wire = self.wire - before.wire;
        let direct: u64 = DIRECT_KINDS
            .iter()
            .filter(|k| **k != "report")
            .map(|k| self.sent(before, k))
            .sum();
        let published = self.sent(before, "ops") + self.sent(before, "report");
        let report_fraction = if published == 0 {
            0.0
        } else {
            self.sent(before, "report") as f64 / published as f64
        };
        let gossip_wire = wire.saturating_sub(direct);
        STATUS_KINDS
            .iter()
            .filter(|k| **k != "report")
            .map(|k| self.sent(before, k))
            .sum::<u64>()
            + (report_fraction * gossip_wire as f64) as u64
    }
}
