//! I2 monotone: `A(n)` and `SP(n)` never decrease, and `SP(n) ≤ A(n)` pointwise.
//!
//! `A(n)` only grows by construction of the I1 shadow (each op raises one entry by one), so
//! this file checks the snapshot point each time it changes.

use tidemark::VersionVector;

pub const NAME: &str = "I2 monotone";

pub fn check(
    previous_sp: &VersionVector,
    sp: &VersionVector,
    applied: &VersionVector,
) -> Result<(), String> {
    if !previous_sp.le(sp) {
        return Err(format!(
            "snapshot point fell from {previous_sp:?} to {sp:?}"
        ));
    }
    if !sp.le(applied) {
        return Err(format!(
            "snapshot point {sp:?} is above the node's applied vector {applied:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    #[test]
    fn a_falling_snapshot_point_or_one_above_applied_is_a_violation() {
        let v = |s: u64| -> VersionVector { [(NodeId::synthetic(1), s)].into_iter().collect() };
        assert!(check(&v(1), &v(2), &v(3)).is_ok());
        assert!(check(&v(2), &v(1), &v(3)).is_err());
        assert!(check(&v(1), &v(4), &v(3)).is_err());
    }
}
