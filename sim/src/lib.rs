//! tidemark-sim: a deterministic discrete-event simulator that drives the tidemark protocol
//! core (`tidemark::replica::Replica`, the same state machine the node runs) with a seeded
//! RNG, a simulated clock, and a network with latency, loss, duplication and reordering,
//! and checks the SPEC §3 invariants after every event.

pub mod cli;
pub mod config;
pub mod costs;
pub mod ground_truth;
pub mod invariants;
pub mod metrics;
pub mod network;
pub mod queue;
pub mod report;
pub mod sim;

pub use config::SimConfig;
pub use report::Report;
pub use sim::Sim;

/// Runs one simulation with no progress reporting.
pub fn run(config: SimConfig) -> Report {
    Sim::new(config).run(&mut |_, _, _| {})
}
