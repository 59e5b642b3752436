//! `tidemark-sim`: run the protocol core over a simulated network and report convergence.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
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
    /// Probability that a transmission is lost.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    loss: f64,
    /// Probability that a transmission is delivered twice.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    duplicate: f64,
    /// Probability that a transmission is delayed by up to twice its link latency.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    reorder: f64,
    /// How many founding members write.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Ops per simulated second over all writers.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
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
        SimConfig {
            gossip,
            seed,
            nodes: self.nodes,
            ops: self.ops,
            writers: self.writers,
            rate: self.rate,
            joins: self.joins,
            leaves: self.leaves,
            keys: self.keys,
            loss: self.loss,
            duplicate: self.duplicate,
            reorder: self.reorder,
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
    wall_s: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.nodes == 0 {
        eprintln!("error: --nodes must be at least 1");
        return ExitCode::from(2);
    }
    if args.rate <= 0.0 {
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
