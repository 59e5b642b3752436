//! `tidemark-sim`: run the protocol core over a simulated network and report convergence.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tidemark_sim::cli::Args;
use tidemark_sim::invariants::safety::ExcuseCounts;
use tidemark_sim::{Report, Sim};

#[derive(Serialize)]
struct BatchSummary {
    seeds: String,
    runs: u64,
    violations: u64,
    /// Violations of I1–I5, summed over the runs.
    safety_violations: u64,
    violations_by_invariant: BTreeMap<String, u64>,
    liveness_failures: u64,
    /// Seeds with any violation (safety, liveness or budget).
    failed_seeds: Vec<u64>,
    /// Seeds with a safety violation.
    safety_failed_seeds: Vec<u64>,
    /// Seeds that failed L1 liveness only.
    liveness_failed_seeds: Vec<u64>,
    /// The same seeds by the cause read off their end state.
    liveness_causes: BTreeMap<&'static str, Vec<u64>>,
    /// Seeds stopped for exceeding their event or wall-clock budget.
    budget_failed_seeds: Vec<u64>,
    /// Every excuse the oracle granted, summed (the longest: the worst run's).
    excuses: ExcuseCounts,
    /// Worst run: from a crash until a member stopped counting the crashed node.
    crash_to_drop_max_ms: f64,
    /// The seed of that run (absent when no member dropped a crashed node).
    crash_to_drop_max_seed: Option<u64>,
    /// Worst run: from when an evicted node could know it until it started to rejoin.
    stale_to_rejoin_max_ms: f64,
    /// The seed of that run (absent when no evicted node rejoined).
    stale_to_rejoin_max_seed: Option<u64>,
    /// Fault counts summed over the runs.
    evictions: u64,
    evictions_of_running: u64,
    rejoins: u64,
    ops_republished: u64,
    /// Stale notices taken (a member told it was below a snapshot point, which rejoined).
    stale_notices: u64,
    /// Joiners the simulated operator restarted with new bootstrap addresses.
    rebootstraps: u64,
    /// States fetched by joiners (with `--state-transfer-s`), and fetches a restarted
    /// joiner resumed.
    transfers: u64,
    transfers_resumed: u64,
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
                let mut report = tidemark_sim::run(args.config(seed));
                report.samples = Vec::new();
                if report.violations > 0 {
                    // at once, so that a batch that takes long (or is stopped) still
                    // names every seed that failed so far
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "seed {seed} failed:\n{}", report.summary());
                }
                results
                    .lock()
                    .expect("no panics hold the lock")
                    .push(report);
            });
        }
    });
    let mut results = results.into_inner().expect("threads joined");
    results.sort_by_key(|r| r.seed);
    let seeds_where = |pick: &dyn Fn(&Report) -> bool| -> Vec<u64> {
        results.iter().filter(|r| pick(r)).map(|r| r.seed).collect()
    };
    // the largest of a per-run figure, and the run it came from (none if every run had 0)
    let worst = |figure: &dyn Fn(&Report) -> f64| -> (f64, Option<u64>) {
        results
            .iter()
            .filter(|r| figure(r) > 0.0)
            .fold((0.0, None), |(max, seed), r| {
                if figure(r) > max {
                    (figure(r), Some(r.seed))
                } else {
                    (max, seed)
                }
            })
    };
    let failed = seeds_where(&|r| r.violations > 0);
    let mut by_invariant = BTreeMap::new();
    let mut excuses = ExcuseCounts::default();
    for r in &results {
        for (name, count) in &r.violations_by_invariant {
            *by_invariant.entry(name.clone()).or_default() += count;
        }
        excuses.i3_voided_registration += r.excuses.i3_voided_registration;
        excuses.ops_lost_with_storage += r.excuses.ops_lost_with_storage;
        excuses.i3_voided_registration_longest_ms = excuses
            .i3_voided_registration_longest_ms
            .max(r.excuses.i3_voided_registration_longest_ms);
    }
    let summary = BatchSummary {
        seeds: format!("{from}..{to}"),
        runs: results.len() as u64,
        violations: results.iter().map(|r| r.violations).sum(),
        safety_violations: results.iter().map(|r| r.safety_violations).sum(),
        violations_by_invariant: by_invariant,
        liveness_failures: results.iter().filter(|r| r.liveness_failure).count() as u64,
        failed_seeds: failed.clone(),
        safety_failed_seeds: seeds_where(&|r| r.safety_violations > 0),
        liveness_failed_seeds: seeds_where(&|r| {
            r.liveness_failure && r.safety_violations == 0 && !r.budget_exceeded
        }),
        liveness_causes: {
            let mut causes: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
            for r in &results {
                if let Some(cause) = r.liveness_cause {
                    causes.entry(cause.name()).or_default().push(r.seed);
                }
            }
            causes
        },
        budget_failed_seeds: seeds_where(&|r| r.budget_exceeded),
        excuses,
        crash_to_drop_max_ms: worst(&|r| r.crash_to_drop_ms.max).0,
        crash_to_drop_max_seed: worst(&|r| r.crash_to_drop_ms.max).1,
        stale_to_rejoin_max_ms: worst(&|r| r.stale_to_rejoin_ms.max).0,
        stale_to_rejoin_max_seed: worst(&|r| r.stale_to_rejoin_ms.max).1,
        evictions: results.iter().map(|r| r.faults.evictions).sum(),
        evictions_of_running: results.iter().map(|r| r.faults.evictions_of_running).sum(),
        rejoins: results.iter().map(|r| r.faults.rejoins).sum(),
        ops_republished: results.iter().map(|r| r.faults.ops_republished).sum(),
        stale_notices: results.iter().map(|r| r.faults.stale_notices).sum(),
        rebootstraps: results.iter().map(|r| r.faults.rebootstraps).sum(),
        transfers: results.iter().map(|r| r.faults.transfers).sum(),
        transfers_resumed: results.iter().map(|r| r.faults.transfers_resumed).sum(),
        wall_s: (started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary).expect("serialisable"));
    } else {
        println!(
            "{} runs (seeds {}), {} violations ({} of safety), {} liveness failures, {} over budget, {:.1} s",
            summary.runs,
            summary.seeds,
            summary.violations,
            summary.safety_violations,
            summary.liveness_failures,
            summary.budget_failed_seeds.len(),
            summary.wall_s
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
