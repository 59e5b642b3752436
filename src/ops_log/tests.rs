use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn id(i: u64) -> NodeId {
    NodeId::synthetic(i)
}

fn put(key: &str, value: &str) -> LwwOp {
    LwwOp {
        key: key.into(),
        value: Some(value.into()),
    }
}

#[test]
fn ops_arriving_before_their_deps_wait_then_apply_in_causal_order() {
    let (a, b) = (id(1), id(2));
    let mut at_a = OpsLog::<LwwMap>::new();
    let a1 = at_a.create(&a, put("x", "1"));
    let mut at_b = OpsLog::<LwwMap>::new();
    at_b.receive(a1.clone()).unwrap();
    let b1 = at_b.create(&b, put("x", "2"));
    let a2 = at_a.create(&a, put("y", "1"));

    let mut c = OpsLog::<LwwMap>::new();
    assert_eq!(c.receive(b1.clone()).unwrap(), Received::Buffered);
    assert_eq!(c.receive(a2.clone()).unwrap(), Received::Buffered);
    assert_eq!(c.applied().total(), 0);
    assert_eq!(c.receive(a1.clone()).unwrap(), Received::Applied(3));
    assert_eq!(c.receive(a1).unwrap(), Received::Duplicate);
    assert_eq!(c.applied_state().get("x").as_deref(), Some("2"));
    assert_eq!(c.applied_state().get("y").as_deref(), Some("1"));
    let order: Vec<_> = c
        .drain_applied()
        .iter()
        .map(|o| (o.origin.clone(), o.seq))
        .collect();
    assert_eq!(order[0], (a.clone(), 1));
    assert_eq!(c.buffered_len(), 0);
}

#[test]
fn malformed_ops_are_refused() {
    let a = id(1);
    let mut log = OpsLog::<LwwMap>::new();
    let good = log.create(&a, put("k", "v"));
    let mut gap = (*good).clone();
    gap.seq = 3;
    assert_eq!(
        log.receive(Arc::new(gap)),
        Err(OpError::GapInOrigin { seq: 3, dep: 0 })
    );
    let mut zero = (*good).clone();
    zero.seq = 0;
    assert_eq!(log.receive(Arc::new(zero)), Err(OpError::ZeroSeq));
}

#[test]
fn folding_the_stable_cut_compacts_the_log_and_matches_a_fresh_replay() {
    let (a, b) = (id(1), id(2));
    let mut log = OpsLog::<LwwMap>::new();
    for i in 0..5 {
        log.create(&a, put(&format!("k{i}"), "a"));
    }
    let mut other = OpsLog::<LwwMap>::new();
    for op in log.drain_applied() {
        other.receive(op).unwrap();
    }
    for i in 0..3 {
        other.create(&b, put(&format!("k{i}"), "b"));
    }
    for op in other.unstable_ops() {
        log.receive(op).unwrap();
    }
    assert_eq!(log.unstable_len(), 8);
    let cut: VersionVector = [(a.clone(), 3), (b.clone(), 0)].into_iter().collect();
    log.advance_stable(&cut);
    assert_eq!(log.unstable_len(), 5);
    assert_eq!(log.stable_cut(), &cut);

    // A peer at the cut can be served; one below it is stale.
    let served = log.missing_for(&cut, usize::MAX);
    assert_eq!((served.ops.len(), served.compacted), (5, None));
    // below the cut for origin a, but b can still be served
    let below: VersionVector = [(a.clone(), 1)].into_iter().collect();
    let partly = log.missing_for(&below, usize::MAX);
    assert_eq!(
        partly.compacted.as_ref().map(|c| c.origin.clone()),
        Some(a.clone())
    );
    assert_eq!(
        partly.ops.len(),
        3,
        "b's ops are served even though a's are compacted"
    );
    assert!(partly.ops.iter().all(|op| op.origin == b));

    // Installing the stable state plus the suffix reproduces the applied state.
    let installed = OpsLog::<LwwMap>::install(
        log.stable_state().clone(),
        cut.clone(),
        0,
        log.unstable_ops(),
        None,
    )
    .unwrap();
    assert_eq!(installed.applied(), log.applied());
    assert_eq!(installed.applied_state(), log.applied_state());

    // Folding everything gives the applied state.
    let all = log.applied().clone();
    log.advance_stable(&all);
    assert_eq!(log.stable_state(), log.applied_state());
    assert_eq!(log.unstable_len(), 0);
}

#[test]
fn install_refuses_an_incomplete_suffix() {
    let a = id(1);
    let mut log = OpsLog::<LwwMap>::new();
    log.create(&a, put("k", "1"));
    let second = log.create(&a, put("k", "2"));
    let err = OpsLog::<LwwMap>::install(LwwMap::default(), VersionVector::new(), 0, [second], None);
    assert_eq!(err.unwrap_err(), InstallError::Incomplete(1));
}

#[test]
fn install_counts_a_suffix_op_the_causal_buffer_refuses_as_missing() {
    // An op further ahead of its origin than the buffer will hold is refused rather than
    // buffered; the install must still report it instead of succeeding without it.
    let a = id(1);
    let mut origin = OpsLog::<LwwMap>::new();
    let ahead = BufferLimits::default().max_ahead as usize + 2;
    let far = (0..ahead)
        .map(|i| origin.create(&a, put(&format!("k{i}"), "v")))
        .last()
        .unwrap();
    let err = OpsLog::<LwwMap>::install(LwwMap::default(), VersionVector::new(), 0, [far], None);
    assert_eq!(err.unwrap_err(), InstallError::Incomplete(1));
}

/// Naive model of causal delivery: an op is applicable when its origin's previous op and all
/// deps are applied. Delivering a set in any order, with duplicates, through the buffer must
/// apply exactly the ops the model can reach, each once, in an order the model accepts.
fn history(writers: usize, steps: &[(usize, bool)]) -> Vec<Arc<Op<LwwOp>>> {
    let ids: Vec<NodeId> = (0..writers as u64).map(id).collect();
    let mut logs: Vec<OpsLog<LwwMap>> = (0..writers).map(|_| OpsLog::new()).collect();
    let mut all = Vec::new();
    for &(w, sync) in steps {
        let w = w % writers;
        if sync {
            // writer w catches up with everything created so far
            for op in &all {
                let _ = logs[w].receive(Arc::clone(op));
            }
        }
        let op = logs[w].create(&ids[w], put("k", &format!("{w}")));
        all.push(op);
    }
    all
}

proptest! {
    #[test]
    fn causal_buffer_matches_a_naive_model(
        steps in prop::collection::vec((0usize..4, any::<bool>()), 1..40),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
    ) {
        let ops = history(4, &steps);
        // delivery sequence: a shuffle drawn from `order`, plus duplicates, then everything
        let mut delivery: Vec<Arc<Op<LwwOp>>> = order.iter().map(|i| ops[i.index(ops.len())].clone()).collect();
        delivery.extend(ops.iter().rev().cloned());
        let mut log = OpsLog::<LwwMap>::new();
        let mut model: Vec<(NodeId, u64)> = Vec::new();
        let mut model_applied = VersionVector::new();
        for op in delivery {
            log.receive(op).unwrap();
            for applied in log.drain_applied() {
                prop_assert_eq!(applied.seq, model_applied.get(&applied.origin) + 1, "gap or duplicate");
                prop_assert!(applied.deps.le(&model_applied), "applied before its deps");
                model_applied.set(applied.origin.clone(), applied.seq);
                model.push((applied.origin.clone(), applied.seq));
            }
        }
        prop_assert_eq!(model.len(), ops.len());
        prop_assert_eq!(log.buffered_len(), 0);
        prop_assert_eq!(log.applied(), &model_applied);
    }
}

#[test]
fn the_causal_buffer_refuses_ops_too_far_ahead_or_when_full_but_never_an_applicable_one() {
    let a = id(1);
    let mut origin = OpsLog::<LwwMap>::new();
    let ops: Vec<_> = (0..10)
        .map(|i| origin.create(&a, put(&format!("k{i}"), "v")))
        .collect();
    let mut log = OpsLog::<LwwMap>::new();
    log.set_buffer_limits(BufferLimits {
        max_ops: 3,
        max_ahead: 5,
    });
    // seq 7 is 7 ahead of applied 0: refused; seq 5 is within reach: buffered
    assert_eq!(log.receive(ops[6].clone()).unwrap(), Received::Refused);
    assert_eq!(log.receive(ops[4].clone()).unwrap(), Received::Buffered);
    assert_eq!(log.receive(ops[3].clone()).unwrap(), Received::Buffered);
    assert_eq!(log.receive(ops[2].clone()).unwrap(), Received::Buffered);
    // full (3 waiting): another op that cannot apply yet is refused
    assert_eq!(log.receive(ops[1].clone()).unwrap(), Received::Refused);
    assert_eq!(log.buffered_len(), 3);
    // the op that applies at once is taken even though the buffer is full, and unblocks
    // nothing further (seq 2 was refused)
    assert_eq!(log.receive(ops[0].clone()).unwrap(), Received::Applied(1));
    // seq 2 sent again (as anti-entropy would) applies and releases 3, 4, 5
    assert_eq!(log.receive(ops[1].clone()).unwrap(), Received::Applied(4));
    assert_eq!(log.buffered_len(), 0);
    assert_eq!(log.applied().get(&a), 5);
}
