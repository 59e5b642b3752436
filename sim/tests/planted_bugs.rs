//! Every invariant checker catches the bug it exists for: a bug planted in every replica
//! (`tidemark-sim --plant`) is reported under the invariant it breaks, with the seed and
//! flags that reproduce it, and the same run without the bug is clean. A checker that no
//! test has seen fail would count for nothing.

use clap::Parser;
use tidemark_sim::cli::Args;
use tidemark_sim::invariants::{
    agreement, causal_delivery, liveness, monotone, no_lost_writes, safety,
};
use tidemark_sim::Report;

fn run(flags: &str) -> Report {
    let args =
        Args::try_parse_from(std::iter::once("tidemark-sim").chain(flags.split_whitespace()))
            .expect("valid flags");
    tidemark_sim::run(args.config(args.seed))
}

/// Runs `flags` with `--plant bug`: `invariant` must be violated and the summary must say
/// how to reproduce it; the same run without the bug must not violate `invariant`.
fn caught(bug: &str, flags: &str, invariant: &str) {
    let report = run(&format!("{flags} --plant {bug}"));
    let found = report
        .violations_by_invariant
        .get(invariant)
        .copied()
        .unwrap_or(0);
    assert!(
        found > 0,
        "{bug}: no {invariant} violation in `{flags}`: {:?}",
        report.violations_by_invariant
    );
    let summary = report.summary();
    let reproduce = format!("reproduce with: tidemark-sim --seed {}", report.seed);
    assert!(summary.contains(&reproduce), "{summary}");
    assert!(summary.contains(&format!("--plant {bug}")), "{summary}");
    let clean = run(flags);
    assert_eq!(
        clean.violations, 0,
        "without {bug}, `{flags}` must be clean: {:?}",
        clean.violation_samples
    );
}

const FAULTS: &str = "--faults all --nodes 10 --ops 300";
const SPLITS: &str =
    "--faults partition,churn --partition-rate 0.3 --churn-rate 1.0 --rate 15 --ops 600 --nodes 10";

#[test]
fn i1_catches_an_op_applied_before_its_deps() {
    caught(
        "skip-causal-order",
        &format!("{FAULTS} --seed 2"),
        causal_delivery::NAME,
    );
}

#[test]
fn i2_catches_a_snapshot_point_that_falls() {
    caught(
        "no-admission-check",
        &format!("{SPLITS} --seed 21"),
        monotone::NAME,
    );
}

#[test]
fn i3_catches_a_replica_that_counts_one_member_too_few() {
    caught(
        "counts-one-member-too-few",
        &format!("{FAULTS} --seed 1"),
        safety::NAME,
    );
}

#[test]
fn i4_catches_a_fold_that_forgets_an_op_on_every_node_alike() {
    // every node forgets the same op, so the nodes agree with each other: only the
    // ground truth sees it
    caught(
        "fold-forgets-an-op",
        "--nodes 5 --ops 100 --seed 1",
        agreement::NAME,
    );
}

#[test]
fn i5_catches_a_seq_reused_after_a_rejoin() {
    let report = run(&format!(
        "{SPLITS} --seed 1 --plant seq-reused-after-rejoin"
    ));
    assert!(
        report
            .violation_samples
            .iter()
            .any(|v| v.starts_with(no_lost_writes::NAME) && v.contains("created op seq")),
        "{:?}",
        report.violation_samples
    );
    caught(
        "seq-reused-after-rejoin",
        &format!("{SPLITS} --seed 1"),
        no_lost_writes::NAME,
    );
}

#[test]
fn i5_catches_a_leave_that_drops_writes() {
    caught(
        "leave-without-handover",
        "--faults churn,writers-leave --churn-rate 1.0 --loss 0.2 --nodes 10 --ops 300 --seed 13",
        no_lost_writes::NAME,
    );
}

#[test]
fn l1_catches_a_snapshot_point_held_back_by_a_crashed_member() {
    caught("never-evict", &format!("{FAULTS} --seed 1"), liveness::NAME);
}
