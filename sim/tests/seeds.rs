//! Many seeds through the library, with loss, duplication, reordering, joins and graceful
//! leaves: zero
//! invariant violations and convergence every time.

use std::time::Duration;

use tidemark_sim::{run, SimConfig};

fn faulty(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        nodes: 20,
        ops: 150,
        writers: 6,
        rate: 500.0,
        joins: 3,
        leaves: 3,
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.2,
        liveness_bound: Duration::from_secs(30),
        ..SimConfig::default()
    }
}

#[test]
fn forty_seeds_with_faults_joins_and_leaves_have_no_violations_and_converge() {
    for seed in 1..=40 {
        let report = run(faulty(seed));
        assert_eq!(
            report.violations, 0,
            "seed {seed}: {:?}",
            report.violation_samples
        );
        assert!(report.converged, "seed {seed} did not converge");
        assert_eq!(report.ops, 150);
    }
}

#[test]
fn a_network_without_loss_converges_soon_after_the_last_write() {
    let report = run(SimConfig {
        seed: 9,
        nodes: 30,
        ops: 300,
        ..SimConfig::default()
    });
    assert_eq!(report.violations, 0);
    let after = report.convergence_ms.expect("converged");
    // every node must hear that every node has the last op: a few link latencies (≤ 55 ms
    // each) and status intervals, far below a second
    assert!(after < 1_000.0, "converged {after} ms after the last write");
}
