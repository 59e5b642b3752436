//! Runs a stateright checker over a scope and summarises what it found: counts, depth,
//! time, and for each property whether it holds (an `always` property with no
//! counterexample, a `sometimes` property with an example) with the path that decides it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, Expectation, Model, Path, UniformChooser};

use crate::model::{ModelAction, ModelState, TidemarkModel};
use crate::scope::Scope;

/// How the state space is searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Breadth first: with a budget, every behaviour of up to (max depth − 1) steps is
    /// covered when time runs out.
    Bfs,
    /// Depth first: least memory; reaches the deep states (convergence) first.
    Dfs,
    /// Random walks from the initial state to the horizon (stateright's uniform chooser,
    /// seeded): no coverage guarantee, but every walk is a complete bounded run.
    Simulate { seed: u64 },
}

/// How a run is done.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    pub strategy: Strategy,
    pub threads: usize,
    /// Stop after this long (then the exploration is not exhaustive).
    pub budget: Option<Duration>,
    /// Print counts to stderr at this interval.
    pub progress: Option<Duration>,
}

/// One property's verdict.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub name: &'static str,
    pub expectation: Expectation,
    /// The counterexample (`always`) or example (`sometimes`), if one was found.
    pub path: Option<Path<ModelState, ModelAction>>,
}

impl Verdict {
    /// An `always` property without counterexample, or a `sometimes` one with an example.
    pub fn holds(&self) -> bool {
        match self.expectation {
            Expectation::Always | Expectation::Eventually => self.path.is_none(),
            Expectation::Sometimes => self.path.is_some(),
        }
    }
}

/// What a run found.
pub struct Outcome {
    pub scope: Scope,
    /// States generated, repeats included.
    pub states: usize,
    pub unique_states: usize,
    pub max_depth: usize,
    pub elapsed: Duration,
    pub verdicts: Vec<Verdict>,
    /// Quiescent states the L1 check continued from, and the longest time they needed.
    pub settle_checks: u64,
    pub settle_max: Duration,
    /// Transitions served from the step cache, and computed by rebuilding a replica.
    pub step_hits: u64,
    pub step_misses: u64,
    /// Whether every reachable state within the scope's bounds was visited (then an unmet
    /// `sometimes` property is a failure too).
    pub exhaustive: bool,
    /// Whether paths were cut at the scope's `max_depth` (then "exhaustive" means: every
    /// behaviour of at most that many steps).
    pub depth_bounded: bool,
}

impl Outcome {
    /// No counterexample, and (for an exhaustive run) every `sometimes` property met.
    pub fn passed(&self) -> bool {
        self.verdicts
            .iter()
            .all(|v| v.holds() || (!self.exhaustive && v.expectation == Expectation::Sometimes))
    }

    /// Every property holds, `sometimes` ones included.
    pub fn all_hold(&self) -> bool {
        self.verdicts.iter().all(Verdict::holds)
    }
}

/// Explores the bounded state space of `scope` as `search` says.
pub fn check(scope: Scope, search: Search) -> Outcome {
    let max_depth = scope.max_depth;
    // stateright's BFS visits a state first at its least depth only on one thread (each
    // thread keeps its own queue); a depth-bounded search is complete only then
    let threads = match search.strategy {
        Strategy::Bfs => 1,
        _ => search.threads.max(1),
    };
    let started = Instant::now();
    let mut builder = TidemarkModel::new(scope)
        .checker()
        .threads(threads)
        .target_max_depth(max_depth);
    if let Some(budget) = search.budget {
        builder = builder.timeout(budget);
    }
    let mut progress = Progress {
        every: search.progress,
        last: Instant::now(),
    };
    let mut outcome = match search.strategy {
        Strategy::Bfs => summarise(builder.spawn_bfs().join_and_report(&mut progress), started),
        Strategy::Dfs => summarise(builder.spawn_dfs().join_and_report(&mut progress), started),
        Strategy::Simulate { seed } => summarise(
            builder
                .spawn_simulation(seed, UniformChooser)
                .join_and_report(&mut progress),
            started,
        ),
    };
    // a run that used up its budget (or walked at random) covered part of the space only
    let cut = search
        .budget
        .is_some_and(|b| outcome.elapsed + Duration::from_millis(200) >= b);
    outcome.depth_bounded = outcome.max_depth >= outcome.scope.max_depth;
    outcome.exhaustive = !cut && !matches!(search.strategy, Strategy::Simulate { .. });
    outcome
}

/// Prints the checker's counts to stderr at an interval (nothing when `every` is `None`).
struct Progress {
    every: Option<Duration>,
    last: Instant,
}

impl Reporter<TidemarkModel> for Progress {
    fn report_checking(&mut self, data: ReportData) {
        let due = self.every.is_some_and(|every| self.last.elapsed() >= every);
        if due && !data.done {
            self.last = Instant::now();
            eprintln!(
                "  … {:.0} s: {} states, {} unique, depth {}",
                data.duration.as_secs_f64(),
                data.total_states,
                data.unique_states,
                data.max_depth
            );
        }
    }

    fn report_discoveries(
        &mut self,
        _: &TidemarkModel,
        _: BTreeMap<&'static str, ReportDiscovery<TidemarkModel>>,
    ) {
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(50)
    }
}

fn summarise(checker: impl Checker<TidemarkModel>, started: Instant) -> Outcome {
    let elapsed = started.elapsed();
    let mut discoveries: HashMap<&'static str, Path<ModelState, ModelAction>> =
        checker.discoveries();
    let model = checker.model();
    let verdicts = model
        .properties()
        .into_iter()
        .map(|p| Verdict {
            name: p.name,
            expectation: p.expectation,
            path: discoveries.remove(p.name),
        })
        .collect();
    Outcome {
        scope: model.scope.clone(),
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        verdicts,
        settle_checks: model.settle_checks.load(Ordering::Relaxed),
        settle_max: Duration::from_micros(model.settle_max_micros.load(Ordering::Relaxed)),
        exhaustive: false,
        depth_bounded: false,
        step_hits: model.step_hits.load(Ordering::Relaxed),
        step_misses: model.step_misses.load(Ordering::Relaxed),
    }
}
