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
