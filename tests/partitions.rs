//! Partitions between real nodes (hardening): in-process nodes on 127.0.0.1 whose links are
//! cut and healed with `NodeHandle::cut_links` (connections closed and refused both ways,
//! as a firewall would), while every node keeps writing. After the heal, each test checks
//! that no acknowledged write is lost, that the snapshot points converge and that the
//! digests (and states) are equal. A node cut off from the others cannot leave: its leave
//! fails and it stays a member.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{cluster, converged, eventually, http, wait_members};
use tidemark::node::views::At;
use tidemark::node::Node;
use tidemark::node::{NodeError, NodeHandle};

const SETTLE: Duration = Duration::from_secs(60);

/// Writes `w-<node>-<i>` from every node every 25 ms until stopped; collects the keys whose
/// write was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(handles: &[NodeHandle]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let tasks = handles
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let (h, stop, acked) = (h.clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w-{n}-{i:05}");
                        // refused while the node rejoins: not acknowledged, not expected
                        if h.put(&key, Some("v")).await.is_ok() {
                            acked.lock().unwrap().insert(key);
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                })
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    /// Stops writing; returns the acknowledged keys.
    async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Four nodes, members of one network, every one of them writing.
async fn writing_cluster(dir: &std::path::Path) -> (Vec<Node>, Vec<NodeHandle>, Writers) {
    let nodes = cluster(dir, 4).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 4, SETTLE).await;
    let writers = Writers::start(&handles);
    tokio::time::sleep(Duration::from_secs(1)).await;
    (nodes, handles, writers)
}

/// Cuts every link between the two sides.
async fn partition(left: &[NodeHandle], right: &[NodeHandle]) {
    let ids = |side: &[NodeHandle]| {
        side.iter()
            .map(|h| h.peer_id().to_owned())
            .collect::<Vec<_>>()
    };
    let (left_ids, right_ids) = (ids(left), ids(right));
    for (side, other) in [(left, &right_ids), (right, &left_ids)] {
        let other: Vec<&str> = other.iter().map(String::as_str).collect();
        for h in side {
            h.cut_links(&other).await.unwrap();
        }
    }
}

async fn heal(handles: &[NodeHandle]) {
    for h in handles {
        h.cut_links(&[]).await.unwrap();
    }
}

/// After the heal: one snapshot point, digest and state everywhere, holding every
/// acknowledged write.
async fn assert_converged_without_loss(handles: &[NodeHandle], acked: &BTreeSet<String>) {
    assert!(
        eventually(SETTLE, || converged(handles, handles.len(), acked.len() as u64)).await,
        "equal snapshot points, digests and states after the heal, with all {} acknowledged writes: {:?}",
        acked.len(),
        futures::future::join_all(handles.iter().map(|h| h.status())).await
    );
    let state = handles[0].state(At::Snapshot).await.unwrap();
    let keys: BTreeSet<String> = state.entries.into_iter().map(|e| e.key).collect();
    let lost: Vec<_> = acked.difference(&keys).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let digests: BTreeSet<String> = futures::future::join_all(handles.iter().map(|h| h.status()))
        .await
        .into_iter()
        .map(|s| s.unwrap().digest)
        .collect();
    assert_eq!(digests.len(), 1, "one digest: {digests:?}");
}

/// Two against two: neither side is a majority, so no one is evicted and the snapshot
/// point cannot take in a write the other side has not applied; both sides go on
/// accepting writes, and everything meets after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_even_split_holds_the_snapshot_point_back_and_converges_after_the_heal() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, handles, writers) = writing_cluster(dir.path()).await;

    let (left, right) = handles.split_at(2);
    partition(left, right).await;
    let cut_at = handles[0].status().await.unwrap();
    // over several suspicion timeouts, on each side: the snapshot point never holds an op
    // the other side has not applied
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (side, other) in [(left, right), (right, left)] {
            let far = other[0].status().await.unwrap();
            for h in side {
                let near = h.status().await.unwrap();
                for (origin, seq) in &near.snapshot_point {
                    let there = far.applied.get(origin).copied().unwrap_or(0);
                    assert!(
                        *seq <= there,
                        "{} took {origin}'s op {seq} into its snapshot point; the other side has only {there}",
                        h.peer_id()
                    );
                }
            }
        }
    }
    for h in &handles {
        assert_eq!(
            h.status().await.unwrap().members,
            4,
            "no one evicted in an even split"
        );
    }
    // the cut holds: the right side has not seen the left side's recent writes
    let (near, far) = (
        left[0].status().await.unwrap(),
        right[0].status().await.unwrap(),
    );
    let origin = left[0].peer_id();
    let far_has = far.applied.get(origin).copied().unwrap_or(0);
    assert!(
        near.applied[origin] > far_has + 50,
        "the left node wrote {} ops, the right side has {far_has}",
        near.applied[origin]
    );
    let during = handles[0].status().await.unwrap();
    assert!(
        during.applied.values().sum::<u64>() > cut_at.applied.values().sum::<u64>(),
        "writes went on during the partition"
    );

    heal(&handles).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writers.stop().await;
    assert_converged_without_loss(&handles, &acked).await;
    for node in nodes {
        node.leave().await.unwrap();
    }
}

/// One node cut off from three: the majority evicts it and its snapshot point moves on
/// without it; the cut-off node goes on acknowledging writes. After the heal it learns of
/// its eviction, rejoins, and republishes those writes: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_rejoins_after_the_heal_and_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, handles, writers) = writing_cluster(dir.path()).await;

    let (majority, alone) = handles.split_at(3);
    partition(majority, alone).await;
    let lone = alone[0].peer_id().to_owned();
    let own_writes = async || {
        let status = alone[0].status().await.unwrap();
        status.applied.get(&lone).copied().unwrap_or(0)
    };
    let at_cut = own_writes().await;
    assert!(
        eventually(SETTLE, || async {
            let mut ok = true;
            for h in majority {
                let s = h.status().await.unwrap();
                ok &= s.members == 3;
            }
            ok
        })
        .await,
        "the majority evicts the cut-off node"
    );
    // the majority's snapshot point moves on without it
    let before = majority[0].status().await.unwrap().snapshot_point;
    assert!(
        eventually(SETTLE, || async {
            let now = majority[0].status().await.unwrap().snapshot_point;
            now.values().sum::<u64>() > before.values().sum::<u64>()
        })
        .await,
        "the majority's snapshot point advances"
    );
    let written_alone = own_writes().await - at_cut;

    heal(&handles).await;
    assert!(
        eventually(SETTLE, || async {
            alone[0]
                .status()
                .await
                .is_ok_and(|s| s.incarnation > 1 && s.phase == "member")
        })
        .await,
        "the cut-off node rejoins with a new incarnation"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writers.stop().await;
    assert!(
        written_alone > 0,
        "the cut-off node acknowledged writes while cut off"
    );
    assert_converged_without_loss(&handles, &acked).await;
    for node in nodes {
        node.leave().await.unwrap();
    }
}

/// A member cut off from the other two writes an op only it holds, then tries to leave: the
/// op cannot become stable, so the leave gives up (leaving would lose it) with an error that
/// says why, and the node stays a member that goes on writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_that_would_lose_an_op_fails_and_the_node_stays_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 3, SETTLE).await;
    let (others, alone) = handles.split_at(2);
    let alone = &alone[0];
    partition(others, std::slice::from_ref(alone)).await;
    alone.put("only-here", Some("v")).await.unwrap();

    let started = tokio::time::Instant::now();
    let left = tokio::time::timeout(Duration::from_secs(30), alone.leave())
        .await
        .expect("the leave is answered within 30 s");
    let failure = match left {
        Err(NodeError::LeaveFailed(failure)) => failure,
        other => panic!("the leave fails, got {other:?}"),
    };
    assert!(
        failure.unstable_own >= 1,
        "its own op is not stable: {failure:?}"
    );
    assert!(
        failure.to_string().contains("stays a member"),
        "the error says what became of the node: {failure}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it gave up only at the drain timeout (5 s), after {:?}",
        started.elapsed()
    );
    let status = alone.status().await.unwrap();
    assert_eq!(status.phase, "member", "it stays a member: {status:?}");
    alone
        .put("after-the-failed-leave", Some("v"))
        .await
        .expect("a member that is not leaving writes");
    for node in nodes {
        node.kill().await;
    }
}

/// `GET /readyz` of a node cut off from both others turns 503 and says it is isolated
/// (it hears from no one), while the majority stays ready; after the heal the node is
/// ready again (it rejoined, evicted meanwhile, or was kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_is_not_ready_until_the_heal() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 3, SETTLE).await;
    let apis: Vec<_> = nodes.iter().map(|n| n.api_addr().unwrap()).collect();
    let ready = |api| async move { http(api, "GET", "/readyz", None).await };
    for api in &apis {
        assert!(
            eventually(SETTLE, || async { ready(*api).await.status == 200 }).await,
            "every member is ready: {}",
            ready(*api).await.body
        );
    }
    let (majority, cut_off) = handles.split_at(2);
    partition(majority, cut_off).await;
    assert!(
        eventually(SETTLE, || async {
            let r = ready(apis[2]).await;
            r.status == 503 && r.json()["isolated"] == true
        })
        .await,
        "the cut-off node is not ready: {}",
        ready(apis[2]).await.body
    );
    let r = ready(apis[2]).await.json();
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("isolated")),
        "{r}"
    );
    for api in &apis[..2] {
        let r = ready(*api).await;
        assert_eq!(r.status, 200, "the majority stays ready: {}", r.body);
    }
    heal(&handles).await;
    assert!(
        eventually(SETTLE, || async { ready(apis[2]).await.status == 200 }).await,
        "ready again after the heal: {}",
        ready(apis[2]).await.body
    );
    for node in nodes {
        node.kill().await;
    }
}
