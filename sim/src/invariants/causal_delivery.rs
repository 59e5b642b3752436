//! I1 causal, exactly once: an op is applied only after all ops in its deps, and at most once,
//! and with the content its origin created it with.
//!
//! The engine keeps a shadow of each replica's applied vector built only from the ops the
//! replica reports applying; each reported op must be the next of its origin and have its
//! deps inside the shadow, and after every event the replica's own vector must equal the
//! shadow (so nothing was applied unreported, skipped, or applied twice). A replica that
//! installs a sponsor's state starts its shadow at the installed stable cut, and the ops of
//! the handed-over suffix are reported like any others. Every reported op is compared with
//! the ground truth (`GroundTruth::check_content`): same lamport time, deps and payload as
//! the op first created under its id.

use tidemark::ops_log::Op;
use tidemark::VersionVector;

pub const NAME: &str = "I1 causal-exactly-once";

/// Checks one applied op against the shadow of what the replica had applied before it.
pub fn check_op<P>(shadow: &VersionVector, op: &Op<P>) -> Result<(), String> {
    let have = shadow.get(&op.origin);
    if op.seq != have + 1 {
        return Err(format!(
            "op {:?}/{} applied with {:?} at {} (duplicate or gap)",
            op.origin, op.seq, op.origin, have
        ));
    }
    if !op.deps.le(shadow) {
        return Err(format!(
            "op {:?}/{} applied before its deps {:?} (had {:?})",
            op.origin, op.seq, op.deps, shadow
        ));
    }
    Ok(())
}

/// The replica's applied vector must be exactly what its reported ops add up to.
pub fn check_vector(shadow: &VersionVector, applied: &VersionVector) -> Result<(), String> {
    if shadow == applied {
        Ok(())
    } else {
        Err(format!(
            "applied vector {applied:?} differs from the ops reported {shadow:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    fn op(origin: u64, seq: u64, deps: &[(u64, u64)]) -> Op<()> {
        Op {
            origin: NodeId::synthetic(origin),
            seq,
            lamport: seq,
            deps: deps
                .iter()
                .map(|&(o, s)| (NodeId::synthetic(o), s))
                .collect(),
            payload: (),
            signature: None,
        }
    }

    #[test]
    fn duplicates_gaps_and_missing_deps_are_violations() {
        let shadow: VersionVector = [(NodeId::synthetic(1), 2)].into_iter().collect();
        assert!(check_op(&shadow, &op(1, 3, &[(1, 2)])).is_ok());
        assert!(
            check_op(&shadow, &op(1, 2, &[(1, 1)])).is_err(),
            "duplicate"
        );
        assert!(check_op(&shadow, &op(1, 4, &[(1, 3)])).is_err(), "gap");
        assert!(
            check_op(&shadow, &op(2, 1, &[(1, 2), (3, 1)])).is_err(),
            "missing dep"
        );
        assert!(check_vector(&shadow, &VersionVector::new()).is_err());
    }
}
