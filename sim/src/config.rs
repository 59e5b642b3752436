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
    /// What each node's uplink and CPU charge for bytes and messages.
    pub costs: crate::costs::CostModel,
    /// Run the aggregated snapshot point next to the map's in every replica, and check it.
    pub aggregation: bool,
    /// The aggregated snapshot point decides (folds, admits, lets leaves go), and applied
    /// vectors no longer flood in status.
    pub aggregation_decides: bool,
    /// With `aggregation_decides`: members keep flooding their heartbeats (the
    /// aggregation's liveness is off).
    pub flood_heartbeats: bool,
    /// The aggregation's settings (with `aggregation`).
    #[serde(skip)]
    pub aggregation_config: tidemark::network_map::aggregation::AggregationConfig,
    /// How long after the last write every snapshot point must have reached every op (L1).
    pub liveness_bound: Duration,
    /// Interval of the samples behind the progress bar, `--csv` and `--plot` (I3's open
    /// excuses are re-examined at each sample too).
    pub sample_interval: Duration,
    /// How long I3's one excuse (a member whose registration is void at the deciding node)
    /// may stand once the two nodes can exchange records.
    pub excuse_bound: Duration,
    /// When set: this long after faults stop, every running member still isolated forces
    /// a new view, as an operator would after a majority loss.
    pub operator_forces_view_after: Option<Duration>,
    /// Events one run may take before it is stopped and fails (0: `500_000 × nodes`).
    pub max_events: u64,
    /// Wall-clock time one run may take before it is stopped and fails.
    pub max_wall: Duration,
    /// A bug planted in every replica, to show that the oracle catches it.
    pub planted: Option<tidemark::replica::PlantedBug>,
    /// When set, every grant hands its stable state over as a snapshot that the joiner
    /// fetches for this long (as a node does with a large state): keepalives carry the
    /// registration meanwhile, and a joiner that crashes and restarts from its data dir
    /// resumes the fetch with the part it had kept.
    pub state_transfer: Option<Duration>,
    /// Faults injected during the safety phase.
    pub faults: FaultConfig,
    #[serde(skip)]
    pub gossip: GossipConfig,
}

/// Faults injected during the safety phase; after it, faults stop (partitions heal,
/// crashed nodes due to restart come back) and L1 must hold within `liveness_bound`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultConfig {
    /// Length of the safety phase; 0 means no faults (the phase ends with the last write).
    pub safety_phase: Duration,
    /// Crashes per simulated second.
    pub crash_rate: f64,
    /// Share of crashed nodes that restart (the rest stay down for good).
    pub restart: f64,
    /// Share of restarts that come back with a lost disk (a new identity).
    pub lost_disk: f64,
    /// Share of the other restarts that come back from an old backup of the node's data
    /// dir (its last backup) instead of its latest durable state.
    pub old_backup: f64,
    /// How often every node's data dir is backed up (what an old-backup restart returns to).
    pub backup_interval: Duration,
    /// Downtime of a node that restarts, drawn uniformly from this range.
    pub downtime: (Duration, Duration),
    /// Partitions per simulated second (one at a time).
    pub partition_rate: f64,
    /// Share of partitions that are one-way (one side's messages to the other are lost).
    pub one_way: f64,
    /// How long a partition lasts, drawn uniformly from this range.
    pub partition_length: (Duration, Duration),
    /// Joins and graceful leaves per simulated second (each half of the events).
    pub churn_rate: f64,
    /// Whether churn's graceful leaves pick writers too (one writer always stays).
    pub writers_leave: bool,
    /// Which losses a crash may not cause (see [`CrashGuard`]).
    pub crash_guard: CrashGuard,
    /// Whether each crash picks a group's first aggregator (the one that takes every
    /// change) instead of any running node.
    pub crash_aggregators: bool,
}

/// The fault model's limit on crashes: a crash that would break it is skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CrashGuard {
    /// At most a third of the nodes down at once, and at most a third of the seats lost,
    /// in the newest agreed view and in any next view a node accepted: held by a node that is down, or by an identity that no
    /// longer runs (its node came back from a lost disk or an old backup) and that no view
    /// has removed yet. A strict majority of the seats then always survives, which the
    /// protocol needs to change views (a larger loss is a majority loss: the operator's way
    /// out, `--operator-forces-view-after-ms`).
    #[default]
    Seats,
    /// At most a third of the nodes down at once, counting nodes only: replaced identities
    /// still seated do not count, so the runs can lose a majority of the seats. The rule of
    /// older scenario generators, kept so that recorded runs reproduce exactly.
    Nodes,
}

impl FaultConfig {
    pub fn any(&self) -> bool {
        !self.safety_phase.is_zero()
    }

    /// Swarm testing: every fault parameter derived from the seed, each fault kind on or
    /// off by a coin flip, so that runs explore different mixes.
    pub fn from_seed(seed: u64, safety_phase: Duration) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_5eed);
        let on = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_bool(0.5);
        let crash = on(&mut rng);
        let partition = on(&mut rng);
        let churn = on(&mut rng);
        // a range starting in [lo, lo_max) and up to 15 s wide
        let span = |rng: &mut rand_chacha::ChaCha8Rng, lo: f64, lo_max: f64| {
            let start = Duration::from_secs_f64(rng.random_range(lo..lo_max));
            (
                start,
                start + Duration::from_secs_f64(rng.random_range(0.1..15.0)),
            )
        };
        let downtime = span(&mut rng, 0.2, 5.0);
        let partition_length = span(&mut rng, 0.5, 5.0);
        // Fault kinds added later draw from their own stream, so that the draws above (and
        // the runs of seeds where the new kinds are off) stay what they were.
        let mut later = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x01d_bac0);
        let old_backup = if on(&mut later) {
            later.random_range(0.2..1.0)
        } else {
            0.0
        };
        let backup_interval = Duration::from_secs_f64(later.random_range(0.5..8.0));
        let writers_leave = on(&mut later);
        FaultConfig {
            safety_phase,
            crash_rate: if crash {
                rng.random_range(0.02..0.5)
            } else {
                0.0
            },
            restart: rng.random_range(0.0..1.0),
            lost_disk: rng.random_range(0.0..0.6),
            old_backup,
            backup_interval,
            downtime,
            partition_rate: if partition {
                rng.random_range(0.02..0.3)
            } else {
                0.0
            },
            one_way: rng.random_range(0.0..1.0),
            partition_length,
            churn_rate: if churn {
                rng.random_range(0.05..1.0)
            } else {
                0.0
            },
            writers_leave,
            crash_guard: CrashGuard::default(),
            crash_aggregators: false,
        }
    }

    /// `--faults partitions`: sequences of partitions and heals, and nothing else — no
    /// crash, no churn. From the seed: how often (0.2 to 1 per second, one at a time), how
    /// long (from a range starting between 0.2 and 5 s, up to 15 s wide) and how many are
    /// one-way (up to 60%).
    pub fn partitions_from_seed(seed: u64, safety_phase: Duration) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x9a47_1710);
        let start = Duration::from_secs_f64(rng.random_range(0.2..5.0));
        let partition_length = (
            start,
            start + Duration::from_secs_f64(rng.random_range(0.1..15.0)),
        );
        FaultConfig {
            safety_phase,
            partition_rate: rng.random_range(0.2..1.0),
            one_way: rng.random_range(0.0..0.6),
            partition_length,
            backup_interval: Duration::from_secs(3),
            downtime: (Duration::from_secs(1), Duration::from_secs(10)),
            ..FaultConfig::default()
        }
    }
}

impl SimConfig {
    /// The event budget of one run: `max_events`, or `500_000 × nodes` when that is 0.
    pub fn event_budget(&self) -> u64 {
        if self.max_events > 0 {
            self.max_events
        } else {
            500_000 * self.nodes.max(1) as u64
        }
    }
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
            costs: crate::costs::CostModel::default(),
            aggregation: false,
            aggregation_decides: false,
            flood_heartbeats: false,
            aggregation_config: Default::default(),
            liveness_bound: Duration::from_secs(30),
            sample_interval: Duration::from_millis(100),
            excuse_bound: Duration::from_secs(5),
            operator_forces_view_after: None,
            max_events: 0,
            max_wall: Duration::from_secs(300),
            planted: None,
            state_transfer: None,
            faults: FaultConfig::default(),
            gossip: GossipConfig::default(),
        }
    }
}
