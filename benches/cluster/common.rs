//! What both sides of the cluster bench share: the load, the payloads, latency samples and
//! the report of one run.

use std::time::Duration;

/// One load point: `nodes` nodes on 127.0.0.1, together writing `rate` ops per second
/// (spread evenly over the nodes) for `duration`, then `grace` to let the last ops arrive
/// (the figures count arrivals within it). Tidemark is then observed up to `drain_bound`
/// after the last write, to see every op enter every snapshot point even under overload.
#[derive(Clone, Debug)]
pub struct Load {
    pub nodes: usize,
    pub rate: f64,
    pub duration: Duration,
    pub grace: Duration,
    pub drain_bound: Duration,
}

impl Load {
    /// Ops each node writes in the run.
    pub fn ops_per_node(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64() / self.nodes as f64).round() as u64
    }

    /// Time between two writes of one node.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.nodes as f64 / self.rate)
    }
}

/// The payload of op `i` of node `node`: the same key and value on both sides.
pub fn payload(node: usize, i: u64) -> (String, String) {
    (
        format!("node{node}/key{}", i % 1024),
        format!("value {i:08} of node {node:03} ........"),
    )
}

/// Latency samples.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// The `q` quantile (0..=1), or zero without samples.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index]
    }
}

/// What one run at one load point measured.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Ops written (published) by all nodes together.
    pub ops_written: u64,
    /// (op, receiving node) pairs expected: ops_written × (nodes − 1).
    pub deliveries_expected: u64,
    /// (op, receiving node) pairs observed by the end of the grace period.
    pub deliveries_seen: u64,
    /// Time from the write to its arrival (applied, for tidemark) at each other node.
    pub dissemination: Samples,
    /// Time from the write to its entry into each node's snapshot point (tidemark only).
    pub sp_lag: Option<Samples>,
    /// Per op that reached every other node: time from the write to its arrival at the
    /// last of them (the simulator's per-op figures).
    pub dissemination_per_op: Samples,
    /// Per op that entered every snapshot point: time from the write to the last entry.
    pub sp_lag_per_op: Option<Samples>,
    /// After the last write, how long until every op was in every snapshot point, when
    /// that happened within the bound it was observed for (tidemark only).
    pub drained_after: Option<Duration>,
    /// When the last op reached the last node (or entered its snapshot point), measured
    /// from the first write; ops/s over this is the rate the cluster kept up with.
    pub completion: Duration,
    /// Ops per second that reached every other node (for tidemark: were applied there)
    /// during the steady part of the writes ([`sustained_rate`]).
    pub sustained: f64,
    /// Tidemark only: the same for entries into every other node's snapshot point.
    pub sustained_into_sp: Option<f64>,
    /// CPU time of the bench process (every node of either side runs in it) from the first
    /// write until the run stopped waiting (every op delivered, or in every snapshot point).
    pub cpu: Duration,
    /// Bytes sent over all connections by all nodes in the run (libp2p bandwidth metrics:
    /// stream bytes, before yamux framing and noise).
    pub wire_bytes: u64,
    /// Of `wire_bytes`, the bytes spent on status and network-map traffic (tidemark only).
    pub status_bytes: Option<u64>,
}

impl RunReport {
    /// Whether every op reached every node.
    pub fn complete(&self) -> bool {
        self.deliveries_seen >= self.deliveries_expected
    }

    /// Ops per second that reached every node (or every snapshot point).
    pub fn ops_per_sec(&self) -> f64 {
        if self.completion.is_zero() {
            return 0.0;
        }
        self.ops_written as f64 / self.completion.as_secs_f64()
    }

    /// CPU per (op, receiving node) pair delivered.
    pub fn cpu_per_delivery(&self) -> Duration {
        self.cpu / self.dissemination.0.len().max(1) as u32
    }
}

/// Per op (keyed by `K`) that arrived at `receivers` nodes: when it was written and when it
/// arrived at the last of them, from (op, written, arrived) triples, one per arrival.
pub fn completions<K: Ord + Clone>(
    arrivals: &[(K, tokio::time::Instant, tokio::time::Instant)],
    receivers: usize,
) -> Vec<(tokio::time::Instant, tokio::time::Instant)> {
    let mut by_op: std::collections::BTreeMap<
        K,
        (usize, tokio::time::Instant, tokio::time::Instant),
    > = Default::default();
    for (op, written, arrived) in arrivals {
        let entry = by_op.entry(op.clone()).or_insert((0, *written, *arrived));
        entry.0 += 1;
        entry.2 = entry.2.max(*arrived);
    }
    by_op
        .into_values()
        .filter(|(count, _, _)| *count >= receivers)
        .map(|(_, written, last)| (written, last))
        .collect()
}

/// Per completed op ([`completions`]): the time from its write to its last arrival.
pub fn per_op_latest(completions: &[(tokio::time::Instant, tokio::time::Instant)]) -> Samples {
    Samples(
        completions
            .iter()
            .map(|(written, last)| last.saturating_duration_since(*written))
            .collect(),
    )
}

/// The throughput the cluster sustained while the load was steady: the completed ops
/// ([`completions`]) whose last arrival falls inside `window`, per second of it. Below
/// capacity this is the offered rate whatever the latency (a late op completes in the
/// window in place of an earlier one); above it, the rate the nodes kept pace with. The
/// window should start after a warm-up and end with the writes, so that neither the ramp
/// nor the drain counts.
pub fn sustained_rate(
    completions: &[(tokio::time::Instant, tokio::time::Instant)],
    window: (tokio::time::Instant, tokio::time::Instant),
) -> f64 {
    let (from, to) = window;
    let length = to.saturating_duration_since(from).as_secs_f64();
    if length <= 0.0 {
        return 0.0;
    }
    let completed = completions
        .iter()
        .filter(|(_, last)| (from..=to).contains(last))
        .count();
    completed as f64 / length
}

/// The steady part of a run whose writes span `first..=last`: from a quarter of the way
/// in (the warm-up: the first ops meet empty queues) to the last write.
pub fn steady_window(
    first: tokio::time::Instant,
    last: tokio::time::Instant,
) -> (tokio::time::Instant, tokio::time::Instant) {
    (first + last.saturating_duration_since(first) / 4, last)
}

/// Sum of the samples of the counter `name` in an OpenMetrics text whose line contains
/// `with` (a label, e.g. `direction="Outbound"`; empty for every sample).
pub fn metric_sum(text: &str, name: &str, with: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(with)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// CPU time (user and system) this process has used so far (the node's own reading of
/// `/proc/self/stat`); zero where it cannot be read.
pub fn process_cpu() -> Duration {
    tidemark::node::metrics::process_cpu_seconds().map_or(Duration::ZERO, Duration::from_secs_f64)
}
