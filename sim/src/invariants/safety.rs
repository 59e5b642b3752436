//! I3 safety: for any two members n, m in good standing, `SP(n) ≤ A(m)` — including members
//! that joined through a sponsor whose reports n has not yet seen (seed obstacle 1).
//!
//! The engine maintains the pointwise minimum of `A(m)` over every member in good standing
//! (a replica that has joined and is running). `SP(n) ≤ that minimum` is checked whenever
//! `SP(n)` changes, and for every n whenever a member joins (the only event that can lower
//! the minimum).

use tidemark::VersionVector;

pub const NAME: &str = "I3 safety";

pub fn check(sp: &VersionVector, min_applied_of_members: &VersionVector) -> Result<(), String> {
    if sp.le(min_applied_of_members) {
        Ok(())
    } else {
        Err(format!(
            "snapshot point {sp:?} includes ops some member has not applied (members' minimum {min_applied_of_members:?})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    #[test]
    fn a_snapshot_point_above_some_member_is_a_violation() {
        let v = |s: u64| -> VersionVector { [(NodeId::synthetic(1), s)].into_iter().collect() };
        assert!(check(&v(2), &v(2)).is_ok());
        assert!(check(&v(1), &v(2)).is_ok());
        assert!(check(&v(3), &v(2)).is_err());
    }
}
