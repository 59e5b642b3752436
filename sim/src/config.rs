//! Simulation parameters.

use std::time::Duration;

use serde::Serialize;
use tidemark::gossip::GossipConfig;

/// Everything that shapes one simulated run. The same config and seed give the same run.
#[derive(Clone, Debug, Serialize)]
pub struct SimConfig {
    pub seed: u64,
    /// Founding members.
    pub nodes: usize,
    /// Ops written in total.
    pub ops: u64,
    /// How many of the founding members write (the first ones).
    pub writers: usize,
    /// Ops per simulated second, over all writers.
    pub rate: f64,
    /// Nodes that join through a sponsor while ops are being written.
    pub joins: usize,
    /// Non-writing members that leave gracefully while ops are being written.
    pub leaves: usize,
    /// Distinct keys the writers pick from.
    pub keys: u64,
    /// Per-transmission probabilities.
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    /// Each link's base latency is drawn uniformly from this range; each transmission adds
    /// up to 10% jitter.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Degree of the gossipsub-like mesh.
    pub mesh_degree: usize,
    /// How long after the last write every snapshot point must have reached every op (L1).
    pub liveness_bound: Duration,
    /// Interval of the samples behind the progress bar, `--csv` and `--plot`.
    pub sample_interval: Duration,
    #[serde(skip)]
    pub gossip: GossipConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            nodes: 20,
            ops: 1_000,
            writers: 8,
            rate: 1_000.0,
            joins: 0,
            leaves: 0,
            keys: 64,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(50),
            mesh_degree: 6,
            liveness_bound: Duration::from_secs(30),
            sample_interval: Duration::from_millis(100),
            gossip: GossipConfig::default(),
        }
    }
}
