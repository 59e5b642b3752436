//! The raw gossipsub baseline of the cluster bench: `load.nodes` bare gossipsub swarms on
//! 127.0.0.1, built with the transport and gossipsub settings of a tidemark node (tcp with
//! nodelay, noise, yamux, anonymous (unsigned) messages, messages relayed only once the
//! application accepted them (`validate_messages`), a content-hash message id, 4 MiB
//! frames, default mesh), fully connected, each publishing its ops one message per op, or
//! batched as a tidemark writer batches them (`RawMode::Batched`).
//!
//! This file owns building and connecting those swarms, offering the load, timing every
//! write and every arrival (in the receiving swarm's own task), reading the bandwidth
//! metrics, and turning what it saw into a [`RunReport`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAcceptance, MessageAuthenticity, PublishError, TopicHash,
    ValidationMode,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, Swarm};
use prometheus_client::registry::Registry;
use tidemark::gossip::MESSAGE_ID_BYTES;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::common::{
    completions, metric_sum, payload, per_op_latest, process_cpu, steady_window, sustained_rate,
    Load, RunReport, Samples,
};

const TOPIC: &str = "raw/ops";
/// Same frame limit as a tidemark node.
const MAX_TRANSMIT_SIZE: usize = 4 * 1024 * 1024;
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Short, so the mesh forms at the first heartbeat instead of after gossipsub's 5 s.
const HEARTBEAT_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// How long setup (listening, connecting, forming the mesh) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(10);
/// When the first writes start, after the load is set up.
const LOAD_LEAD: Duration = Duration::from_millis(20);
const BANDWIDTH_METRIC: &str = "libp2p_bandwidth_bytes_total";
const OUTBOUND: &str = "direction=\"Outbound\"";

/// How the baseline publishes.
#[derive(Clone, Copy, Debug)]
pub enum RawMode {
    /// One message per op.
    PerOp,
    /// A node's ops coalesced for `delay` after the first waiting one, at most `max_ops` a
    /// message: tidemark's `op_batch_delay` and `max_batch_ops`.
    Batched { delay: Duration, max_ops: usize },
}

/// Runs the baseline at one load point and reports what it measured.
pub async fn run_raw(load: &Load, mode: RawMode) -> RunReport {
    if load.nodes == 0 {
        return RunReport::default();
    }
    let cluster = Cluster::start(load.nodes, mode).await;
    let ready_in = cluster.wait_ready().await;
    eprintln!(
        "raw: {} nodes connected, mesh formed in {:.2} s",
        load.nodes,
        ready_in.as_secs_f64()
    );
    let bytes_before = cluster.outbound_bytes();
    let cpu_before = process_cpu();

    let writes = offer_load(load, &cluster).await;
    let ops_written: u64 = writes.iter().map(|w| w.len() as u64).sum();
    let expected = ops_written * (load.nodes as u64 - 1);
    let last_write = writes.iter().flatten().max().copied();
    let deadline = last_write.unwrap_or_else(Instant::now) + load.grace;
    let end = cluster.wait_delivered(expected, deadline).await;
    let cpu = process_cpu().saturating_sub(cpu_before);

    let wire_bytes = cluster.outbound_bytes().saturating_sub(bytes_before);
    let logs = cluster.stop().await;
    report_oddities(&logs);
    let mut report = measure(&writes, &logs, end);
    report.ops_written = ops_written;
    report.deliveries_expected = expected;
    report.wire_bytes = wire_bytes;
    report.cpu = cpu;
    report
}

/// What the bench asks of a node's swarm task.
enum Command {
    /// Publish one op (at once, or with the next batch).
    Publish(RawOp),
    /// Report what the node sees of the topic.
    Probe(oneshot::Sender<Readiness>),
    Stop,
}

/// What one node sees of the topic.
struct Readiness {
    /// Connected peers subscribed to the topic.
    subscribed: usize,
    /// Peers in the node's mesh for the topic.
    mesh: usize,
}

/// What one node's swarm task saw, handed back when it stops.
#[derive(Default)]
struct NodeLog {
    /// (writer, op index, arrival) of each distinct op received.
    received: Vec<(usize, u64, Instant)>,
    /// Refused publishes, by kind.
    publish_errors: BTreeMap<&'static str, u64>,
    /// Messages on the topic that were not an op of this bench.
    undecodable: u64,
    /// gossipsub `SlowPeer` events (messages dropped for a peer whose queue was full).
    slow_peers: u64,
}

/// One baseline node: its bandwidth metrics and its swarm task.
struct RawNode {
    registry: Registry,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<NodeLog>,
}

impl Drop for RawNode {
    /// A swarm never outlives its node, even if the run is abandoned half-way.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawNode {
    fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    async fn probe(&self) -> Option<Readiness> {
        let (reply, answer) = oneshot::channel();
        if !self.send(Command::Probe(reply)) {
            return None;
        }
        answer.await.ok()
    }

    fn outbound_bytes(&self) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String");
        metric_sum(&text, BANDWIDTH_METRIC, OUTBOUND)
    }

    async fn stop(mut self) -> NodeLog {
        self.send(Command::Stop);
        match (&mut self.task).await {
            Ok(log) => log,
            Err(e) => {
                eprintln!("raw: a swarm task failed: {e}");
                NodeLog::default()
            }
        }
    }
}

/// The baseline nodes, fully connected, all subscribed to [`TOPIC`].
struct Cluster {
    nodes: Vec<RawNode>,
    /// Distinct (op, receiver) pairs seen so far by all nodes together.
    delivered: Arc<AtomicU64>,
    /// The mesh size each node must reach before the load starts.
    mesh_wanted: usize,
}

impl Cluster {
    /// Starts `n` nodes; node i dials nodes 0..i.
    async fn start(n: usize, mode: RawMode) -> Cluster {
        let topic = IdentTopic::new(TOPIC);
        let delivered = Arc::new(AtomicU64::new(0));
        let mut nodes = Vec::with_capacity(n);
        let mut addrs: Vec<Multiaddr> = Vec::with_capacity(n);
        for _ in 0..n {
            let mut registry = Registry::default();
            let mut swarm = build_swarm(&mut registry);
            swarm
                .behaviour_mut()
                .subscribe(&topic)
                .expect("subscribing to the topic");
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("listen address"))
                .expect("listening on 127.0.0.1");
            let addr = listen_addr(&mut swarm).await;
            for earlier in &addrs {
                swarm
                    .dial(earlier.clone())
                    .expect("dialling an earlier node");
            }
            addrs.push(addr.with(Protocol::P2p(*swarm.local_peer_id())));
            let (commands, receiver) = mpsc::unbounded_channel();
            let task = tokio::spawn(drive(
                swarm,
                topic.hash(),
                receiver,
                delivered.clone(),
                mode,
            ));
            nodes.push(RawNode {
                registry,
                commands,
                task,
            });
        }
        Cluster {
            nodes,
            delivered,
            mesh_wanted: gossip_config().mesh_n_low().min(n - 1),
        }
    }

    /// Waits until every node sees every other node subscribed and its mesh has formed;
    /// returns how long that took. Panics after [`SETUP_TIMEOUT`].
    async fn wait_ready(&self) -> Duration {
        let started = Instant::now();
        let others = self.nodes.len() - 1;
        loop {
            let mut lagging = 0;
            for node in &self.nodes {
                let ready = node
                    .probe()
                    .await
                    .is_some_and(|r| r.subscribed >= others && r.mesh >= self.mesh_wanted);
                if !ready {
                    lagging += 1;
                }
            }
            if lagging == 0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < SETUP_TIMEOUT,
                "raw: {lagging} of {} nodes not connected or meshed after {SETUP_TIMEOUT:?}",
                self.nodes.len()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `expected` deliveries were seen or `deadline` passed; returns when it
    /// stopped waiting.
    async fn wait_delivered(&self, expected: u64, deadline: Instant) -> Instant {
        loop {
            let now = Instant::now();
            if self.delivered.load(Ordering::Relaxed) >= expected || now >= deadline {
                return now;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    /// Bytes all nodes have sent so far.
    fn outbound_bytes(&self) -> u64 {
        self.nodes.iter().map(RawNode::outbound_bytes).sum()
    }

    /// Stops every swarm task and collects what each saw.
    async fn stop(self) -> Vec<NodeLog> {
        for node in &self.nodes {
            node.send(Command::Stop);
        }
        let mut logs = Vec::with_capacity(self.nodes.len());
        for node in self.nodes {
            logs.push(node.stop().await);
        }
        logs
    }
}

/// gossipsub as a tidemark node configures it (anonymous messages, relayed only once
/// accepted, a message id from the content), except for a short initial heartbeat delay.
fn gossip_config() -> gossipsub::Config {
    gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(MAX_TRANSMIT_SIZE)
        .message_id_fn(|message: &gossipsub::Message| {
            // as long as a tidemark node's ids (16 bytes: a BLAKE3 of the batch's op range,
            // else of its bytes), since IHAVE, IWANT and IDONTWANT carry them
            gossipsub::MessageId::new(&blake3::hash(&message.data).as_bytes()[..MESSAGE_ID_BYTES])
        })
        .heartbeat_initial_delay(HEARTBEAT_INITIAL_DELAY)
        .build()
        .expect("gossipsub config")
}

/// A swarm with tidemark's transport, its bandwidth counted in `registry`.
fn build_swarm(registry: &mut Registry) -> Swarm<gossipsub::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_bandwidth_metrics(registry)
        .with_behaviour(|_| {
            gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_config())
                .expect("gossipsub behaviour")
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build()
}

/// The first address `swarm` listens on.
async fn listen_addr(swarm: &mut Swarm<gossipsub::Behaviour>) -> Multiaddr {
    let wait = async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, wait)
        .await
        .expect("a listen address")
}

/// A node's swarm task: runs the swarm, publishes what it is told to, and records every
/// op that arrives, timed here as it arrives.
async fn drive(
    mut swarm: Swarm<gossipsub::Behaviour>,
    topic: TopicHash,
    mut commands: mpsc::UnboundedReceiver<Command>,
    delivered: Arc<AtomicU64>,
    mode: RawMode,
) -> NodeLog {
    let mut log = NodeLog::default();
    let mut seen = HashSet::new();
    // batched: the ops waiting, and when they go out
    let mut waiting: Vec<RawOp> = Vec::new();
    let mut flush_at: Option<Instant> = None;
    loop {
        let flush = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(event) = event {
                    on_gossip(event, &mut swarm, &mut log, &mut seen, &delivered);
                }
            }
            _ = flush => {
                flush_at = None;
                publish(&mut swarm, &topic, &mut log, std::mem::take(&mut waiting));
            }
            command = commands.recv() => match command {
                Some(Command::Publish(op)) => match mode {
                    RawMode::PerOp => publish(&mut swarm, &topic, &mut log, vec![op]),
                    RawMode::Batched { delay, max_ops } => {
                        waiting.push(op);
                        if waiting.len() >= max_ops {
                            flush_at = None;
                            publish(&mut swarm, &topic, &mut log, std::mem::take(&mut waiting));
                        } else if flush_at.is_none() {
                            flush_at = Some(Instant::now() + delay);
                        }
                    }
                },
                Some(Command::Probe(reply)) => {
                    let _ = reply.send(readiness(&swarm, &topic));
                }
                Some(Command::Stop) | None => break,
            },
        }
    }
    log
}

/// Publishes `ops` as one message.
fn publish(
    swarm: &mut Swarm<gossipsub::Behaviour>,
    topic: &TopicHash,
    log: &mut NodeLog,
    ops: Vec<RawOp>,
) {
    if ops.is_empty() {
        return;
    }
    let mut data = Vec::new();
    ciborium::into_writer(&ops, &mut data).expect("CBOR encoding into a Vec");
    if let Err(e) = swarm.behaviour_mut().publish(topic.clone(), data) {
        *log.publish_errors.entry(error_kind(&e)).or_default() += ops.len() as u64;
    }
}

fn on_gossip(
    event: gossipsub::Event,
    swarm: &mut Swarm<gossipsub::Behaviour>,
    log: &mut NodeLog,
    seen: &mut HashSet<(usize, u64)>,
    delivered: &AtomicU64,
) {
    match event {
        gossipsub::Event::Message {
            message,
            message_id,
            propagation_source,
        } => {
            let arrived = Instant::now();
            let Some(ops) = decode_ops(&message.data) else {
                log.undecodable += 1;
                swarm.behaviour_mut().report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    MessageAcceptance::Reject,
                );
                return;
            };
            // as a tidemark node does once it checked a batch: relay it
            swarm.behaviour_mut().report_message_validation_result(
                &message_id,
                &propagation_source,
                MessageAcceptance::Accept,
            );
            for (writer, i) in ops {
                if seen.insert((writer, i)) {
                    log.received.push((writer, i, arrived));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        gossipsub::Event::SlowPeer { .. } => log.slow_peers += 1,
        _ => {}
    }
}

fn readiness(swarm: &Swarm<gossipsub::Behaviour>, topic: &TopicHash) -> Readiness {
    let gossip = swarm.behaviour();
    Readiness {
        subscribed: gossip
            .all_peers()
            .filter(|(_, topics)| topics.contains(&topic))
            .count(),
        mesh: gossip.mesh_peers(topic).count(),
    }
}

fn error_kind(error: &PublishError) -> &'static str {
    match error {
        PublishError::Duplicate => "Duplicate",
        PublishError::SigningError(_) => "SigningError",
        PublishError::NoPeersSubscribedToTopic => "NoPeersSubscribedToTopic",
        PublishError::MessageTooLarge => "MessageTooLarge",
        PublishError::TransformFailed(_) => "TransformFailed",
        PublishError::AllQueuesFull(_) => "AllQueuesFull",
        // `Partial`, with gossipsub's `partial-messages` feature
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// One op of this bench: `(writer, i, key, value)`; a message is a CBOR array of them.
type RawOp = (u32, u64, String, String);

/// Op `i` of node `writer`.
fn make_op(writer: usize, i: u64) -> RawOp {
    let (key, value) = payload(writer, i);
    (writer as u32, i, key, value)
}

/// The (writer, op index) of each op of a message of this bench.
fn decode_ops(data: &[u8]) -> Option<Vec<(usize, u64)>> {
    let ops: Vec<RawOp> = ciborium::from_reader(data).ok()?;
    Some(
        ops.into_iter()
            .map(|(w, i, _, _)| (w as usize, i))
            .collect(),
    )
}

/// Has every node write its ops at the load's rate, node k starting k/nodes of an interval
/// after node 0; returns each node's write instants, indexed by op.
async fn offer_load(load: &Load, cluster: &Cluster) -> Vec<Vec<Instant>> {
    let interval = load.interval().max(Duration::from_micros(1));
    let start = Instant::now() + LOAD_LEAD;
    let writers: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let first = start + interval.mul_f64(k as f64 / load.nodes as f64);
            let commands = node.commands.clone();
            tokio::spawn(write_ops(k, load.ops_per_node(), first, interval, commands))
        })
        .collect();
    let mut writes = Vec::with_capacity(writers.len());
    for writer in writers {
        writes.push(writer.await.expect("a writer task"));
    }
    writes
}

/// Node `writer`'s load: op i at `first + i × interval` (late ticks fire at once, so the
/// offered rate holds), each handed to the node's swarm task to publish.
async fn write_ops(
    writer: usize,
    ops: u64,
    first: Instant,
    interval: Duration,
    commands: mpsc::UnboundedSender<Command>,
) -> Vec<Instant> {
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut writes = Vec::with_capacity(ops as usize);
    for i in 0..ops {
        ticks.tick().await;
        let written = Instant::now();
        if commands.send(Command::Publish(make_op(writer, i))).is_err() {
            break;
        }
        writes.push(written);
    }
    writes
}

/// Deliveries, dissemination and completion from the writes and the nodes' logs, counting
/// arrivals up to `end`.
fn measure(writes: &[Vec<Instant>], logs: &[NodeLog], end: Instant) -> RunReport {
    let mut dissemination = Vec::new();
    let mut last_arrival = None;
    let mut arrivals = Vec::new();
    for (writer, i, arrived) in logs.iter().flat_map(|log| &log.received) {
        let Some(written) = writes.get(*writer).and_then(|w| w.get(*i as usize)) else {
            continue;
        };
        if *arrived > end {
            continue;
        }
        dissemination.push(arrived.saturating_duration_since(*written));
        arrivals.push(((*writer, *i), *written, *arrived));
        last_arrival = last_arrival.max(Some(*arrived));
    }
    let receivers = logs.len().saturating_sub(1);
    let first_write = writes.iter().filter_map(|w| w.first()).min();
    let completion = match (first_write, last_arrival) {
        (Some(first), Some(last)) => last.saturating_duration_since(*first),
        _ => Duration::ZERO,
    };
    let completed = completions(&arrivals, receivers);
    let last_write = writes.iter().filter_map(|w| w.last()).max();
    let sustained = match (first_write, last_write) {
        (Some(first), Some(last)) => sustained_rate(&completed, steady_window(*first, *last)),
        _ => 0.0,
    };
    RunReport {
        sustained,
        deliveries_seen: dissemination.len() as u64,
        dissemination_per_op: per_op_latest(&completed),
        dissemination: Samples(dissemination),
        sp_lag: None,
        completion,
        status_bytes: None,
        ..RunReport::default()
    }
}

/// Publish errors, slow peers and foreign messages, summed over the nodes, on stderr.
fn report_oddities(logs: &[NodeLog]) {
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for (kind, count) in logs.iter().flat_map(|log| &log.publish_errors) {
        *errors.entry(kind).or_default() += count;
    }
    for (kind, count) in errors {
        eprintln!("raw: {count} publishes refused: {kind}");
    }
    let slow_peers: u64 = logs.iter().map(|log| log.slow_peers).sum();
    if slow_peers > 0 {
        eprintln!("raw: {slow_peers} SlowPeer events (messages dropped for full queues)");
    }
    let undecodable: u64 = logs.iter().map(|log| log.undecodable).sum();
    if undecodable > 0 {
        eprintln!("raw: {undecodable} messages that were not ops");
    }
}
