//! The SPEC §3 invariants, one per file, checked by the engine after every event.
//!
//! Each check is a pure function (or a small stateful table) over what the simulator
//! observes from outside the replicas: the ops each replica reports as applied, its applied
//! vector, its snapshot point and its stable digest. The engine keeps the observations
//! (`crate::sim::GlobalView`) and records every failure as a violation.

pub mod agreement;
pub mod causal_delivery;
pub mod liveness;
pub mod monotone;
pub mod safety;

/// The violations found in a run: a count and the first few descriptions.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Violations {
    const KEEP: usize = 20;

    pub fn record(&mut self, invariant: &str, at_ms: f64, detail: String) {
        self.count += 1;
        if self.samples.len() < Self::KEEP {
            self.samples
                .push(format!("{invariant} at {at_ms:.3} ms: {detail}"));
        }
    }

    /// Records `result` under `invariant` if it is an error.
    pub fn check(&mut self, invariant: &str, at_ms: f64, result: Result<(), String>) {
        if let Err(detail) = result {
            self.record(invariant, at_ms, detail);
        }
    }
}
