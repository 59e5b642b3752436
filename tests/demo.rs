//! `tidemark demo` end to end, shortened: real nodes, a node killed halfway, and a summary in
//! which every surviving node reached the same snapshot point.

use std::time::Duration;

use tidemark::node::demo::{run, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_kills_a_node_and_still_ends_with_every_node_at_the_same_snapshot_point() {
    let summary = run(DemoConfig {
        nodes: 5,
        duration: Duration::from_secs(6),
        rate: 10.0,
        crash: true,
        settle: Duration::from_secs(30),
    })
    .await
    .expect("the demo runs");
    assert!(summary.crashed.is_some(), "a node was killed");
    assert!(
        summary.evicted_at.is_some(),
        "the demo saw the killed node evicted: {summary:?}"
    );
    assert_eq!(summary.nodes.len(), 4, "the four survivors report");
    assert!(summary.converged, "{summary:?}");
    let (_, sp, applied, digest) = &summary.nodes[0];
    assert!(*sp > 0 && sp == applied);
    // every op written is applied everywhere, but those the killed node acknowledged and
    // never published
    assert_eq!(
        summary.ops_written,
        applied + summary.unpublished,
        "{summary:?}"
    );
    for (_, other_sp, _, other_digest) in &summary.nodes {
        assert_eq!((other_sp, other_digest), (sp, digest));
    }
}
