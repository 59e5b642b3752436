//! The SPEC §3 invariants, one per file, checked by the engine after every event.
//!
//! Each check is a pure function (or a small stateful table) over what the simulator
//! observes from outside the replicas: the ops each replica reports as applied, its applied
//! vector, its snapshot point and its stable digest. The engine keeps the observations
//! (`crate::sim::GlobalView`) and records every failure as a violation.

pub mod aggregated;
pub mod agreement;
pub mod causal_delivery;
pub mod liveness;
pub mod monotone;
pub mod no_lost_writes;
pub mod safety;
pub mod single_history;

/// Not an invariant: a run that exceeds its event or wall-clock budget fails under this name
/// (a protocol that floods or loops must not hang a batch of seeds).
pub const BUDGET: &str = "budget";

/// The violations found in a run: a count, a count per invariant, and the first few
/// descriptions.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    pub count: u64,
    pub by_invariant: std::collections::BTreeMap<&'static str, u64>,
    pub samples: Vec<String>,
}

impl Violations {
    const KEEP: usize = 20;

    pub fn record(&mut self, invariant: &'static str, at_ms: f64, detail: String) {
        self.count += 1;
        *self.by_invariant.entry(invariant).or_default() += 1;
        if self.samples.len() < Self::KEEP {
            self.samples
                .push(format!("{invariant} at {at_ms:.3} ms: {detail}"));
        }
    }

    /// Records `result` under `invariant` if it is an error.
    pub fn check(&mut self, invariant: &'static str, at_ms: f64, result: Result<(), String>) {
        if let Err(detail) = result {
            self.record(invariant, at_ms, detail);
        }
    }

    /// Violations of the safety invariants (every one but L1 liveness and the budget).
    pub fn safety(&self) -> u64 {
        let not_safety: u64 = [liveness::NAME, BUDGET]
            .iter()
            .filter_map(|name| self.by_invariant.get(name))
            .sum();
        self.count - not_safety
    }
}
