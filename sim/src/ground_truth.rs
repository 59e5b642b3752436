//! Ground truth: every op ever created in the run, by id, exactly as its origin created it,
//! and the state that any cut must hold according to those ops.
//!
//! The invariants compare what replicas report against this record rather than against
//! each other, so that a fault every replica shares (an op id given to two different ops,
//! a stable state that lost an op on every node alike) is still seen.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidemark::ops_log::{Digest, LwwMap, LwwOp, Op, StateMachine};
use tidemark::{NodeId, VersionVector};

pub type SimOp = Op<LwwOp>;

/// Every op created, by origin and seq.
#[derive(Debug, Default)]
pub struct GroundTruth {
    /// `created[origin][seq - 1]` is the first op created under (origin, seq).
    created: BTreeMap<NodeId, Vec<Arc<SimOp>>>,
    /// Every acknowledged write: the highest seq created per origin.
    acknowledged: VersionVector,
}

impl GroundTruth {
    /// Records an op its origin just created (and acknowledged). An id that already names
    /// an op is an error: the first op keeps the id, and every later application of the
    /// second one is a content mismatch.
    pub fn record(&mut self, op: &Arc<SimOp>) -> Result<(), String> {
        let ops = self.created.entry(op.origin.clone()).or_default();
        let have = ops.len() as u64;
        if op.seq <= have {
            let first = &ops[op.seq as usize - 1];
            return Err(format!(
                "{:?} created op seq {} again: was (lamport {}, {}), now (lamport {}, {})",
                op.origin,
                op.seq,
                first.lamport,
                describe(&first.payload),
                op.lamport,
                describe(&op.payload)
            ));
        }
        if op.seq != have + 1 {
            return Err(format!(
                "{:?} created op seq {} after seq {have}: a gap in its own ops",
                op.origin, op.seq
            ));
        }
        ops.push(op.clone());
        self.acknowledged.set(op.origin.clone(), op.seq);
        Ok(())
    }

    /// The op first created under (origin, seq).
    pub fn get(&self, origin: &NodeId, seq: u64) -> Option<&Arc<SimOp>> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.created.get(origin)?.get(index)
    }

    /// Whether `op` is, in every field that the state or causality depend on, the op its
    /// origin created under that id.
    pub fn check_content(&self, op: &SimOp) -> Result<(), String> {
        let Some(original) = self.get(&op.origin, op.seq) else {
            return Err(format!(
                "op {:?}/{} applied, but its origin never created it",
                op.origin, op.seq
            ));
        };
        if original.lamport != op.lamport
            || original.payload != op.payload
            || original.deps != op.deps
        {
            return Err(format!(
                "op {:?}/{} applied as (lamport {}, {}), but it was created as (lamport {}, {})",
                op.origin,
                op.seq,
                op.lamport,
                describe(&op.payload),
                original.lamport,
                describe(&original.payload)
            ));
        }
        Ok(())
    }

    /// The highest seq created per origin: every acknowledged write lies inside it.
    pub fn acknowledged(&self) -> &VersionVector {
        &self.acknowledged
    }

    /// Applies to `state` every op inside `to` and outside `from`, failing if `to` names
    /// an op that was never created.
    fn apply_between(
        &self,
        state: &mut LwwMap,
        from: &VersionVector,
        to: &VersionVector,
    ) -> Result<(), String> {
        for (origin, upto) in to.iter() {
            let below = from.get(origin);
            for seq in below + 1..=upto {
                let op = self.get(origin, seq).ok_or_else(|| {
                    format!("the cut holds {origin:?}/{seq}, which was never created")
                })?;
                state.apply(&op.meta(), &op.payload);
            }
        }
        Ok(())
    }
}

fn describe(op: &LwwOp) -> String {
    match &op.value {
        Some(v) => format!("{}={v}", op.key),
        None => format!("delete {}", op.key),
    }
}

/// The state one node's stable cut must hold according to the ground truth, kept
/// incrementally as the cut moves up (and rebuilt when it moves elsewhere, after a rejoin).
#[derive(Debug, Default, Clone)]
pub struct ExpectedState {
    state: LwwMap,
    cut: VersionVector,
}

impl ExpectedState {
    /// The digest of the state at `cut` according to `truth`.
    pub fn digest_at(
        &mut self,
        truth: &GroundTruth,
        cut: &VersionVector,
    ) -> Result<Digest, String> {
        if !self.cut.le(cut) {
            *self = ExpectedState::default();
        }
        if self.cut != *cut {
            let from = std::mem::take(&mut self.cut);
            truth.apply_between(&mut self.state, &from, cut)?;
            self.cut = cut.clone();
        }
        self.state.refresh_digest();
        Ok(self.state.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(origin: u64, seq: u64, lamport: u64, key: &str, value: &str) -> Arc<SimOp> {
        let origin = NodeId::synthetic(origin);
        let deps: VersionVector = [(origin.clone(), seq - 1)].into_iter().collect();
        Arc::new(Op {
            origin,
            seq,
            lamport,
            deps,
            payload: LwwOp {
                key: key.into(),
                value: Some(value.into()),
            },
            signature: None,
        })
    }

    #[test]
    fn an_id_created_twice_is_reported_and_the_first_op_keeps_it() {
        let mut truth = GroundTruth::default();
        truth.record(&op(1, 1, 1, "a", "x")).unwrap();
        let again = op(1, 1, 5, "b", "y");
        let err = truth.record(&again).unwrap_err();
        assert!(err.contains("created op seq 1 again"), "{err}");
        assert!(truth.check_content(&op(1, 1, 1, "a", "x")).is_ok());
        assert!(truth.check_content(&again).is_err());
        assert!(
            truth.check_content(&op(1, 2, 2, "a", "z")).is_err(),
            "never created"
        );
    }

    #[test]
    fn the_expected_state_follows_the_cut_up_and_rebuilds_when_it_moves_elsewhere() {
        let mut truth = GroundTruth::default();
        for (seq, value) in [(1, "x"), (2, "y"), (3, "z")] {
            truth.record(&op(1, seq, seq, "k", value)).unwrap();
        }
        let at = |s: u64| -> VersionVector { [(NodeId::synthetic(1), s)].into_iter().collect() };
        let fresh = |s| ExpectedState::default().digest_at(&truth, &at(s)).unwrap();
        let (d1, d3) = (fresh(1), fresh(3));
        assert_ne!(d1, d3);
        let mut moving = ExpectedState::default();
        assert_eq!(moving.digest_at(&truth, &at(1)).unwrap(), d1);
        assert_eq!(moving.digest_at(&truth, &at(3)).unwrap(), d3);
        assert_eq!(moving.digest_at(&truth, &at(1)).unwrap(), d1, "moved down");
        assert!(
            moving.digest_at(&truth, &at(4)).is_err(),
            "op 4 never created"
        );
    }
}
