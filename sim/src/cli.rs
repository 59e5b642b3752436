//! The simulator's command line: its flags and how they make a [`SimConfig`]. In the
//! library so that tests (the regression list) run seeds with exactly the flags a user
//! types.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rand::{Rng, SeedableRng};

use crate::config::{CrashGuard, FaultConfig};
use crate::costs::CostModel;
use crate::SimConfig;

/// Deterministic simulator of a tidemark network: the same seed gives the same run.
#[derive(Parser, Debug, Clone)]
#[command(name = "tidemark-sim", version)]
pub struct Args {
    /// Founding members.
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
    /// Ops written in total.
    #[arg(long, default_value_t = 1_000)]
    pub ops: u64,
    /// Seed of the run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run a batch of seeds FROM..TO (inclusive) and print one summary.
    #[arg(long, value_name = "FROM..TO", value_parser = parse_range)]
    pub seeds: Option<(u64, u64)>,
    /// Probability that a transmission is lost [default: 0; with `--faults all`, drawn
    /// from the seed].
    #[arg(long, value_parser = parse_probability)]
    pub loss: Option<f64>,
    /// Probability that a transmission is delivered twice [default: 0, or from the seed].
    #[arg(long, value_parser = parse_probability)]
    pub duplicate: Option<f64>,
    /// Probability that a transmission is delayed by up to twice its link latency
    /// [default: 0, or from the seed].
    #[arg(long, value_parser = parse_probability)]
    pub reorder: Option<f64>,
    /// How many founding members write.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Ops per simulated second over all writers [default: 1000; with faults, the ops
    /// spread over the safety phase].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Faults in a safety phase, after which faults stop and L1 must hold within the
    /// liveness bound: `none`, `all` (swarm testing: every fault parameter, network ones
    /// included, drawn from the seed), `partitions` (sequences of partitions and heals,
    /// one-way ones included, with network faults drawn from the seed; no crash or churn),
    /// or a comma list of `crash`, `restart`, `lost-disk`,
    /// `old-backup` (restarts from an old backup of the data dir), `partition`, `one-way`,
    /// `churn`, `writers-leave` (churn's graceful leaves pick writers too).
    #[arg(long, default_value = "none", value_parser = parse_faults)]
    pub faults: FaultKinds,
    /// Length of the safety phase in simulated seconds (with faults).
    #[arg(long, default_value_t = 20.0)]
    pub safety_phase_s: f64,
    /// Crashes per simulated second (with `crash`; default 0.1).
    #[arg(long)]
    pub crash_rate: Option<f64>,
    /// Partitions per simulated second (with `partition`; default 0.05).
    #[arg(long)]
    pub partition_rate: Option<f64>,
    /// Joins plus graceful leaves per simulated second (with `churn`; default 0.2).
    #[arg(long)]
    pub churn_rate: Option<f64>,
    /// Nodes that join through a sponsor while ops are written.
    #[arg(long, default_value_t = 0)]
    pub joins: usize,
    /// Non-writing members that leave gracefully while ops are written.
    #[arg(long, default_value_t = 0)]
    pub leaves: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 64)]
    pub keys: u64,
    /// Range of per-link base latencies in ms.
    #[arg(long, value_name = "MIN..MAX", default_value = "1..50", value_parser = parse_range)]
    pub latency_ms: (u64, u64),
    /// Degree of the gossipsub-like mesh.
    #[arg(long, default_value_t = 6)]
    pub mesh_degree: usize,
    /// Each node's uplink bandwidth in Mbit/s: a message's bytes take their time to leave
    /// and queue behind what the node is still sending (0: unlimited).
    #[arg(long, default_value_t = 100.0)]
    pub uplink_mbit: f64,
    /// CPU time, in µs, a node spends on each message it receives; messages queue for a
    /// busy CPU.
    #[arg(long, default_value_t = 25)]
    pub cpu_per_msg_us: u64,
    /// CPU time, in µs, a node spends per KiB of a message it receives.
    #[arg(long, default_value_t = 4)]
    pub cpu_per_kib_us: u64,
    /// No cost model: unlimited uplinks and free processing, as older scenario generators
    /// had (the runs in `sim/regressions.txt` found under them keep it).
    #[arg(long)]
    pub free_network: bool,
    /// The network map's snapshot point decides, made of every member's record flooded to
    /// every member, with every member flooding its heartbeat: the protocol before the
    /// aggregation (nodes run the aggregation; the default here too).
    #[arg(long, conflicts_with = "aggregation_decides")]
    pub map: bool,
    /// With --map: also run the aggregated snapshot point next to the network map's in
    /// every replica, check it after every event (I2 and I3, aggregated) and report its
    /// lag, deciding nothing.
    #[arg(long, conflicts_with = "aggregation_decides")]
    pub aggregation: bool,
    /// The aggregated snapshot point decides (the default, as in nodes): it is what is
    /// folded, what the admission check and a leave compare with, and applied vectors do
    /// not flood in status (membership changes do). Aggregators also tell their members
    /// whom they hear, so members in the view do not flood their heartbeats while every
    /// group's liveness reaches them.
    #[arg(long)]
    pub aggregation_decides: bool,
    /// With --aggregation-decides: keep every member flooding its heartbeat, as without
    /// the aggregation (for comparison).
    #[arg(long)]
    pub flood_heartbeats: bool,
    /// Aggregators of each group (r ≥ 2) [default: the protocol's, 2].
    #[arg(long, value_name = "R")]
    pub aggregators_per_group: Option<usize>,
    /// How long a member coalesces changes of its contribution, and an aggregator changes
    /// of its minimums, in ms [default: the protocol's, 5].
    #[arg(long, value_name = "MS")]
    pub aggregation_delay_ms: Option<u64>,
    /// Seconds after the last write within which every snapshot point must hold every op.
    #[arg(long, default_value_t = 30)]
    pub liveness_bound_s: u64,
    /// Fixed least time between two status reports of a node, in ms (default: the protocol's
    /// rule, 7 ms growing by 50 µs per member).
    #[arg(long)]
    pub status_interval_ms: Option<u64>,
    /// Status peers each node picks at random; up to as many more that report to it are
    /// added (protocol default if absent).
    #[arg(long)]
    pub status_fanout: Option<usize>,
    /// Hand every grant's stable state over as a snapshot the joiner fetches for this many
    /// simulated seconds, as a node does with a large state (a joiner that crashes and
    /// restarts from its data dir resumes the fetch). Off by default: grants hold the state.
    #[arg(long, value_name = "SECONDS")]
    pub state_transfer_s: Option<f64>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write snapshot-point progress over time to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Draw convergence over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Events one run may take before it is stopped and fails [default: 500,000 per node].
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Wall-clock seconds one run may take before it is stopped and fails.
    #[arg(long, default_value_t = 300.0)]
    pub max_wall_s: f64,
    /// How long I3's one excuse (a member whose registration is void at the deciding node)
    /// may stand once the two nodes can exchange records, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub excuse_bound_ms: u64,
    /// The operator's way out of a majority loss, used explicitly: this long after faults
    /// stop, every running member that is still isolated forces a new view
    /// (`Replica::force_new_view`), evicting the members it does not hear from. Off by
    /// default: the protocol never does it by itself.
    #[arg(long, value_name = "MS")]
    pub operator_forces_view_after_ms: Option<u64>,
    /// Which losses the fault scenario's crashes may not cause: `seats` takes down at most a
    /// third of the nodes and loses at most a third of the seats of the newest agreed view
    /// and of any next view a node accepted (replaced identities still seated count as
    /// lost); `nodes` counts nodes only, the
    /// rule of older scenario generators, under which runs can lose a majority of the seats.
    #[arg(long, value_enum, default_value_t = CrashGuard::Seats)]
    pub crash_guard: CrashGuard,
    /// With `crash`: each crash picks the first aggregator of a group (the one every
    /// change goes through) in the lowest running member's layout, to measure how long the
    /// snapshot point stalls when an aggregator fails.
    #[arg(long)]
    pub crash_aggregators: bool,
    /// Plant a bug in every replica, to see the oracle catch it: skip-causal-order,
    /// no-admission-check, counts-one-member-too-few, fold-forgets-an-op,
    /// seq-reused-after-rejoin, leave-without-handover, never-evict, short-quorum,
    /// suspects-leave-the-minimum (these with --map: they concern the map's snapshot point
    /// or its flood), and no-joiner-cover and aggregator-skips-a-member.
    #[arg(long, value_name = "BUG")]
    pub plant: Option<tidemark::replica::PlantedBug>,
    /// Parallel runs in batch mode.
    #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))]
    pub jobs: usize,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("expected FROM..TO, got {text:?}"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a > b {
        return Err(format!("range {a}..{b} is empty"));
    }
    Ok((a, b))
}

/// Which faults `--faults` asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultKinds {
    all: bool,
    partitions: bool,
    crash: bool,
    restart: bool,
    lost_disk: bool,
    old_backup: bool,
    partition: bool,
    one_way: bool,
    churn: bool,
    writers_leave: bool,
}

impl FaultKinds {
    pub fn any(&self) -> bool {
        *self != FaultKinds::default()
    }
}

fn parse_faults(text: &str) -> Result<FaultKinds, String> {
    let mut kinds = FaultKinds::default();
    for word in text.split(',').map(str::trim) {
        match word {
            "none" => {}
            "all" => kinds.all = true,
            "partitions" => kinds.partitions = true,
            "crash" => kinds.crash = true,
            "restart" => kinds.restart = true,
            "lost-disk" => kinds.lost_disk = true,
            "old-backup" => kinds.old_backup = true,
            "partition" => kinds.partition = true,
            "one-way" => kinds.one_way = true,
            "churn" => kinds.churn = true,
            "writers-leave" => kinds.writers_leave = true,
            other => {
                return Err(format!(
                    "unknown fault {other:?}; expected none, all, partitions, or a list of crash, restart, lost-disk, old-backup, partition, one-way, churn, writers-leave"
                ))
            }
        }
    }
    Ok(kinds)
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let p: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in [0, 1]"))
    }
}

impl Args {
    /// The cost model the flags ask for.
    pub fn costs(&self) -> CostModel {
        if self.free_network {
            return CostModel::FREE;
        }
        CostModel {
            uplink_bytes_per_s: (self.uplink_mbit.max(0.0) * 1e6 / 8.0) as u64,
            cpu_per_message: Duration::from_micros(self.cpu_per_msg_us),
            cpu_per_kib: Duration::from_micros(self.cpu_per_kib_us),
        }
    }

    /// The configuration of the run of `seed` (in batch mode, each seed's).
    /// Whether the aggregated snapshot point decides: unless `--map` or `--aggregation`
    /// (the map's decides then).
    pub fn aggregation_decides(&self) -> bool {
        !self.map && !self.aggregation
    }

    pub fn config(&self, seed: u64) -> SimConfig {
        let mut gossip = tidemark::gossip::GossipConfig::default();
        if let Some(ms) = self.status_interval_ms {
            gossip.status_interval = Duration::from_millis(ms);
            gossip.status_interval_per_member = Duration::ZERO;
        }
        if let Some(f) = self.status_fanout {
            gossip.status_fanout = f;
            gossip.max_status_peers = 2 * f;
        }
        let k = &self.faults;
        let phase = Duration::from_secs_f64(self.safety_phase_s.max(0.0));
        let mut faults = if k.all {
            FaultConfig::from_seed(seed, phase)
        } else if k.partitions {
            FaultConfig::partitions_from_seed(seed, phase)
        } else if k.any() {
            let crash = k.crash || k.restart || k.lost_disk || k.old_backup;
            let partition = k.partition || k.one_way;
            let churn = k.churn || k.writers_leave;
            FaultConfig {
                safety_phase: phase,
                crash_rate: if crash { 0.1 } else { 0.0 },
                restart: if k.restart || k.lost_disk || k.old_backup {
                    1.0
                } else {
                    0.0
                },
                lost_disk: if k.lost_disk { 0.5 } else { 0.0 },
                old_backup: if k.old_backup { 0.5 } else { 0.0 },
                backup_interval: Duration::from_secs(3),
                downtime: (Duration::from_secs(1), Duration::from_secs(10)),
                partition_rate: if partition { 0.05 } else { 0.0 },
                one_way: if k.one_way { 0.5 } else { 0.0 },
                partition_length: (Duration::from_secs(1), Duration::from_secs(10)),
                churn_rate: if churn { 0.2 } else { 0.0 },
                writers_leave: k.writers_leave,
                crash_guard: CrashGuard::default(),
                crash_aggregators: false,
            }
        } else {
            FaultConfig::default()
        };
        if let Some(r) = self.crash_rate {
            faults.crash_rate = r;
        }
        if let Some(r) = self.partition_rate {
            faults.partition_rate = r;
        }
        if let Some(r) = self.churn_rate {
            faults.churn_rate = r;
        }
        if faults.safety_phase.is_zero() && k.any() {
            faults = FaultConfig::default();
        }
        faults.crash_guard = self.crash_guard;
        faults.crash_aggregators = self.crash_aggregators;
        // network faults: explicit flags win; `--faults all` draws the rest from the seed
        let mut net = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0e7_fa17);
        let mut draw = |given: Option<f64>, hi: f64| {
            given.unwrap_or_else(|| {
                if k.all || k.partitions {
                    net.random_range(0.0..hi)
                } else {
                    0.0
                }
            })
        };
        let (loss, duplicate, reorder) = (
            draw(self.loss, 0.1),
            draw(self.duplicate, 0.05),
            draw(self.reorder, 0.2),
        );
        let rate = self.rate.unwrap_or(if faults.any() {
            (self.ops as f64 / faults.safety_phase.as_secs_f64()).max(1e-3)
        } else {
            1_000.0
        });
        SimConfig {
            gossip,
            seed,
            nodes: self.nodes,
            ops: self.ops,
            writers: self.writers,
            rate,
            joins: self.joins,
            leaves: self.leaves,
            keys: self.keys,
            loss,
            duplicate,
            reorder,
            faults,
            latency_min: Duration::from_millis(self.latency_ms.0),
            latency_max: Duration::from_millis(self.latency_ms.1),
            mesh_degree: self.mesh_degree,
            costs: self.costs(),
            aggregation: self.aggregation || self.aggregation_decides(),
            aggregation_config: {
                let mut c = tidemark::network_map::aggregation::AggregationConfig::default();
                if let Some(r) = self.aggregators_per_group {
                    c.aggregators_per_group = r.max(2);
                }
                if let Some(ms) = self.aggregation_delay_ms {
                    c.report_delay = Duration::from_millis(ms);
                }
                c
            },
            aggregation_decides: self.aggregation_decides(),
            flood_heartbeats: self.flood_heartbeats,
            liveness_bound: Duration::from_secs(self.liveness_bound_s),
            excuse_bound: Duration::from_millis(self.excuse_bound_ms),
            operator_forces_view_after: self
                .operator_forces_view_after_ms
                .map(Duration::from_millis),
            max_events: self.max_events.unwrap_or(0),
            max_wall: Duration::from_secs_f64(self.max_wall_s.max(0.0)),
            planted: self.plant,
            state_transfer: self
                .state_transfer_s
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
            ..SimConfig::default()
        }
    }
}
