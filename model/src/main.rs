//! `tidemark-model`: explores a scope and prints what it found; exits 1 on a counterexample
//! (printing its path), or, after an exhaustive run, on a `sometimes` property never met.
//!
//! ```text
//! cargo run --release -p tidemark-model -- [--scope small|join|full] [--bfs|--dfs|--simulate SEED]
//!     [--budget-s S] [--threads N] [--max-depth D] [--horizon-ms MS] [--losses N]
//!     [--founders N] [--no-joiner] [--writes W0,W1,..] [--status-fanout N]
//!     [--global-clock] [--no-settle]
//! ```
//!
//! Without `--scope`, the full scope is checked the way `Scope::full` documents.

use std::process::ExitCode;
use std::time::Duration;

use stateright::Expectation;
use tidemark::Time;
use tidemark_model::run::{Search, Verdict};
use tidemark_model::scope::Clock;
use tidemark_model::{check, properties, settle, Scope, Strategy, TidemarkModel};

const USAGE: &str =
    "usage: tidemark-model [--scope small|join|full] [--bfs|--dfs|--simulate SEED] \
[--budget-s S] [--threads N] [--max-depth D] [--horizon-ms MS] [--losses N] [--founders N] \
[--no-joiner] [--writes W0,W1,..] [--status-fanout N] [--global-clock] [--no-settle]";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Some((scope, search)) => run(scope, search),
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Option<(Scope, Search)> {
    let mut scope = Scope::full();
    let mut search = Search {
        strategy: scope.strategy,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        budget: scope.budget,
        progress: Some(Duration::from_secs(10)),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next();
        match arg.as_str() {
            "--scope" => {
                scope = Scope::by_name(&value()?)?;
                search.strategy = scope.strategy;
                search.budget = scope.budget;
            }
            "--bfs" => search.strategy = Strategy::Bfs,
            "--dfs" => search.strategy = Strategy::Dfs,
            "--simulate" => {
                search.strategy = Strategy::Simulate {
                    seed: value()?.parse().ok()?,
                }
            }
            "--budget-s" => search.budget = Some(Duration::from_secs(value()?.parse().ok()?)),
            "--threads" => search.threads = value()?.parse().ok()?,
            "--max-depth" => scope.max_depth = value()?.parse().ok()?,
            "--horizon-ms" => scope.horizon = Time::from_millis(value()?.parse().ok()?),
            "--losses" => scope.losses = value()?.parse().ok()?,
            "--founders" => scope.founders = value()?.parse().ok()?,
            "--no-joiner" => scope.joiner = false,
            "--writes" => {
                scope.writes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?
            }
            "--status-fanout" => {
                let n: usize = value()?.parse().ok()?;
                scope.gossip.status_fanout = n;
                scope.gossip.max_status_peers = 2 * n;
            }
            "--global-clock" => scope.clock = Clock::Global,
            "--no-settle" => scope.settle = None,
            _ => return None,
        }
    }
    Some((scope, search))
}

fn run(scope: Scope, search: Search) -> ExitCode {
    println!("scope: {scope:?}");
    println!(
        "search: {:?}, threads {} (BFS runs on one), budget {:?}",
        search.strategy, search.threads, search.budget
    );
    let outcome = check(scope, search);
    let coverage = match (outcome.exhaustive, outcome.depth_bounded) {
        (true, false) => "exhaustive: every reachable state within the bounds".to_string(),
        (true, true) => format!(
            "every state reachable in at most {} steps (states at the depth bound are \
             generated, not checked)",
            outcome.scope.max_depth.saturating_sub(2)
        ),
        (false, _) => "NOT exhaustive (budget used up, or random walks)".to_string(),
    };
    println!(
        "states explored: {}, unique states: {}, max depth: {}, time: {:.1} s\ncoverage: {coverage}",
        outcome.states,
        outcome.unique_states,
        outcome.max_depth,
        outcome.elapsed.as_secs_f64(),
    );
    println!(
        "L1 continuations from quiescent states: {}, longest time to converge: {} ms",
        outcome.settle_checks,
        outcome.settle_max.as_millis()
    );
    println!(
        "replica steps: {} computed, {} reused from the step cache",
        outcome.step_misses, outcome.step_hits
    );
    let model = TidemarkModel::new(outcome.scope.clone());
    for verdict in &outcome.verdicts {
        let word = match (verdict.expectation.clone(), verdict.holds()) {
            (Expectation::Sometimes, true) => "example found",
            (Expectation::Sometimes, false) => "not met",
            (_, true) => "holds",
            (_, false) => "COUNTEREXAMPLE",
        };
        println!("  [{word}] {}", verdict.name);
    }
    for verdict in &outcome.verdicts {
        if !verdict.holds() && verdict.expectation != Expectation::Sometimes {
            print_path(&model, verdict);
        }
    }
    if outcome.passed() {
        println!("all properties hold");
        ExitCode::SUCCESS
    } else {
        println!("FAILED");
        ExitCode::FAILURE
    }
}

fn print_path(model: &TidemarkModel, verdict: &Verdict) {
    let Some(path) = &verdict.path else { return };
    println!("\ncounterexample to {}:", verdict.name);
    let steps = path.clone().into_vec();
    for (k, (state, action)) in steps.iter().enumerate() {
        match action {
            Some(a) => println!("{k:3}. {a:?}"),
            None => println!("final state:\n{state:?}"),
        }
    }
    if verdict.name == properties::L1_SETTLE {
        if let Some((last, _)) = steps.last() {
            let window = model.scope.settle.unwrap_or(Duration::from_secs(20));
            if let Err(why) = settle::settle(model, last, window) {
                println!("fault-free continuation: {why}");
            }
        }
    }
}
