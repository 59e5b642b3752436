//! Exhaustive model checking of the tidemark protocol core with stateright.
//!
//! The model drives the real sans-IO `tidemark::replica::Replica` through its public API —
//! no re-implementation of the protocol — inside a small network whose every interleaving
//! of deliveries, losses, timeouts, writes, a leave or a crash is explored, and checks the
//! invariants of SPEC §3 on every reachable state.
//!
//! - [`scope`] bounds a run (nodes, writes, faults, time horizon);
//! - [`node`] rebuilds a replica from its inputs and fingerprints it;
//! - [`model`] is the stateright `Model` (state, actions, transitions);
//! - [`properties`] states I1–I4, L1/I5 and the sanity properties;
//! - [`settle`] runs the fault-free continuation behind the L1 check;
//! - [`run`] runs a checker and summarises the outcome.

pub mod model;
pub mod node;
pub mod properties;
pub mod run;
pub mod scope;
pub mod settle;

pub use model::{ModelAction, ModelState, TidemarkModel};
pub use run::{check, Outcome, Search, Strategy};
pub use scope::Scope;
