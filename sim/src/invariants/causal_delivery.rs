//! I1 causal, exactly once: an op is applied only after all ops in its deps, and at most once.
//!
//! The engine keeps a shadow of each replica's applied vector built only from the ops the
//! replica reports applying; each reported op must be the next of its origin and have its
//! deps inside the shadow, and after every event the replica's own vector must equal the
//! shadow (so nothing was applied unreported, skipped, or applied twice).

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
