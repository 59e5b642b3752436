//! `tidemark-sim`: run the protocol core over a simulated network and report convergence.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tidemark_sim::config::FaultConfig;
use tidemark_sim::{Report, Sim, SimConfig};

/// Deterministic simulator of a tidemark network: the same seed gives the same run.
#[derive(Parser, Debug)]
#[command(name = "tidemark-sim", version)]
struct Args {
    /// Founding members.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Ops written in total.
    #[arg(long, default_value_t = 1_000)]
    ops: u64,
    /// Seed of the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run a batch of seeds FROM..TO (inclusive) and print one summary.
    #[arg(long, value_name = "FROM..TO", value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Probability that a transmission is lost [default: 0; with `--faults all`, drawn
    /// from the seed].
    #[arg(long, value_parser = parse_probability)]
    loss: Option<f64>,
    /// Probability that a transmission is delivered twice [default: 0, or from the seed].
    #[arg(long, value_parser = parse_probability)]
    duplicate: Option<f64>,
    /// Probability that a transmission is delayed by up to twice its link latency
    /// [default: 0, or from the seed].
    #[arg(long, value_parser = parse_probability)]
    reorder: Option<f64>,
    /// How many founding members write.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Ops per simulated second over all writers [default: 1000; with faults, the ops
    /// spread over the safety phase].
    #[arg(long)]
    rate: Option<f64>,
    /// Faults in a safety phase, after which faults stop and L1 must hold within the
    /// liveness bound: `none`, `all` (swarm testing: every fault parameter, network ones
    /// included, drawn from the seed), or a comma list of `crash`, `restart`, `lost-disk`,
    /// `partition`, `one-way`, `churn`.
    #[arg(long, default_value = "none", value_parser = parse_faults)]
    faults: FaultKinds,
    /// Length of the safety phase in simulated seconds (with faults).
    #[arg(long, default_value_t = 20.0)]
    safety_phase_s: f64,
    /// Crashes per simulated second (with `crash`; default 0.1).
    #[arg(long)]
    crash_rate: Option<f64>,
    /// Partitions per simulated second (with `partition`; default 0.05).
    #[arg(long)]
    partition_rate: Option<f64>,
    /// Joins plus graceful leaves per simulated second (with `churn`; default 0.2).
    #[arg(long)]
    churn_rate: Option<f64>,
    /// Nodes that join through a sponsor while ops are written.
    #[arg(long, default_value_t = 0)]
    joins: usize,
    /// Non-writing members that leave gracefully while ops are written.
    #[arg(long, default_value_t = 0)]
    leaves: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 64)]
    keys: u64,
    /// Range of per-link base latencies in ms.
    #[arg(long, value_name = "MIN..MAX", default_value = "1..50", value_parser = parse_range)]
    latency_ms: (u64, u64),
    /// Degree of the gossipsub-like mesh.
    #[arg(long, default_value_t = 6)]
    mesh_degree: usize,
    /// Seconds after the last write within which every snapshot point must hold every op.
    #[arg(long, default_value_t = 30)]
    liveness_bound_s: u64,
    /// Fixed least time between two status reports of a node, in ms (default: the protocol's
    /// rule, 7 ms growing by 50 µs per member).
    #[arg(long)]
    status_interval_ms: Option<u64>,
    /// Status peers each node picks at random; up to as many more that report to it are
    /// added (protocol default if absent).
    #[arg(long)]
    status_fanout: Option<usize>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write snapshot-point progress over time to this CSV file.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw convergence over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Parallel runs in batch mode.
    #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))]
    jobs: usize,
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
struct FaultKinds {
    all: bool,
    crash: bool,
    restart: bool,
    lost_disk: bool,
    partition: bool,
    one_way: bool,
    churn: bool,
}

impl FaultKinds {
    fn any(&self) -> bool {
        *self != FaultKinds::default()
    }
}

fn parse_faults(text: &str) -> Result<FaultKinds, String> {
    let mut kinds = FaultKinds::default();
    for word in text.split(',').map(str::trim) {
        match word {
            "none" => {}
            "all" => kinds.all = true,
            "crash" => kinds.crash = true,
            "restart" => kinds.restart = true,
            "lost-disk" => kinds.lost_disk = true,
            "partition" => kinds.partition = true,
            "one-way" => kinds.one_way = true,
            "churn" => kinds.churn = true,
            other => {
                return Err(format!(
                    "unknown fault {other:?}; expected none, all, or a list of crash, restart, lost-disk, partition, one-way, churn"
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
    fn config(&self, seed: u64) -> SimConfig {
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
        } else if k.any() {
            let crash = k.crash || k.restart || k.lost_disk;
            let partition = k.partition || k.one_way;
            FaultConfig {
                safety_phase: phase,
                crash_rate: if crash { 0.1 } else { 0.0 },
                restart: if k.restart || k.lost_disk { 1.0 } else { 0.0 },
                lost_disk: if k.lost_disk { 0.5 } else { 0.0 },
                downtime: (Duration::from_secs(1), Duration::from_secs(10)),
                partition_rate: if partition { 0.05 } else { 0.0 },
                one_way: if k.one_way { 0.5 } else { 0.0 },
                partition_length: (Duration::from_secs(1), Duration::from_secs(10)),
                churn_rate: if k.churn { 0.2 } else { 0.0 },
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
        // network faults: explicit flags win; `--faults all` draws the rest from the seed
        let mut net = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0e7_fa17);
        let mut draw = |given: Option<f64>, hi: f64| {
            given.unwrap_or_else(|| {
                if k.all {
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
            liveness_bound: Duration::from_secs(self.liveness_bound_s),
            ..SimConfig::default()
        }
    }
}

#[derive(Serialize)]
struct BatchSummary {
    seeds: String,
    runs: u64,
    violations: u64,
    liveness_failures: u64,
    failed_seeds: Vec<u64>,
    /// Worst run: from a crash until a member stopped counting the crashed node.
    crash_to_drop_max_ms: f64,
    /// Worst run: from when an evicted node could know it until it started to rejoin.
    stale_to_rejoin_max_ms: f64,
    /// Fault counts summed over the runs.
    evictions: u64,
    evictions_of_running: u64,
    rejoins: u64,
    ops_republished: u64,
    wall_s: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.nodes == 0 {
        eprintln!("error: --nodes must be at least 1");
        return ExitCode::from(2);
    }
    if args.rate.is_some_and(|r| r <= 0.0) {
        eprintln!("error: --rate must be positive");
        return ExitCode::from(2);
    }
    match args.seeds {
        Some(range) => run_batch(&args, range),
        None => run_one(&args),
    }
}

fn run_one(args: &Args) -> ExitCode {
    let config = args.config(args.seed);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(args.ops), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ops written · {msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let report: Report = Sim::new(config).run(&mut |t_ms, written, stable| {
        bar.set_position(written);
        bar.set_message(format!("{stable} stable everywhere · t={:.1}s", t_ms / 1e3));
    });
    bar.finish_and_clear();
    if let Some(path) = &args.csv {
        if let Err(e) = report.write_csv(path) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.plot {
        if let Err(e) = report.write_plot(path) {
            eprintln!("error: drawing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    if report.violations > 0 {
        eprintln!(
            "{} invariant violation(s); reproduce with --seed {}",
            report.violations, report.seed
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run_batch(args: &Args, (from, to): (u64, u64)) -> ExitCode {
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = (from..=to).collect();
    let jobs = args.jobs.max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let report = tidemark_sim::run(args.config(seed));
                results
                    .lock()
                    .expect("no panics hold the lock")
                    .push(report);
            });
        }
    });
    let mut results = results.into_inner().expect("threads joined");
    results.sort_by_key(|r| r.seed);
    let mut failed = Vec::new();
    for r in &results {
        if r.violations > 0 {
            failed.push(r.seed);
            eprintln!("seed {} failed:\n{}", r.seed, r.summary());
        }
    }
    let summary = BatchSummary {
        seeds: format!("{from}..{to}"),
        runs: results.len() as u64,
        violations: results.iter().map(|r| r.violations).sum(),
        liveness_failures: results.iter().filter(|r| r.liveness_failure).count() as u64,
        failed_seeds: failed.clone(),
        crash_to_drop_max_ms: results
            .iter()
            .map(|r| r.crash_to_drop_ms.max)
            .fold(0.0, f64::max),
        stale_to_rejoin_max_ms: results
            .iter()
            .map(|r| r.stale_to_rejoin_ms.max)
            .fold(0.0, f64::max),
        evictions: results.iter().map(|r| r.faults.evictions).sum(),
        evictions_of_running: results.iter().map(|r| r.faults.evictions_of_running).sum(),
        rejoins: results.iter().map(|r| r.faults.rejoins).sum(),
        ops_republished: results.iter().map(|r| r.faults.ops_republished).sum(),
        wall_s: (started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary).expect("serialisable"));
    } else {
        println!(
            "{} runs (seeds {}), {} violations, {} liveness failures, {:.1} s",
            summary.runs,
            summary.seeds,
            summary.violations,
            summary.liveness_failures,
            summary.wall_s
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
