//! I3 safety: for any two members n, m in good standing, `SP(n) ≤ A(m)` — including members
//! that joined through a sponsor whose reports n has not yet seen (seed obstacle 1).
//!
//! Good standing: a replica that has installed a membership (founded, joined or rejoined),
//! is running, has not announced `Left`, and whose membership no map holds as evicted.
//!
//! The engine maintains the pointwise minimum of `A(m)` over every member in good standing.
//! `SP(n) ≤ that minimum` is checked whenever `SP(n)` changes, and for every n whenever a
//! member enters good standing (the only event that can lower the minimum). When the
//! check fails, the engine looks at each member m below `SP(n)` and excuses exactly one
//! case: n has never seen m's membership, and m's registration chain leads to a sponsor
//! membership that n had evicted or replaced before learning of the registration. Then n
//! may have decided past m without any fault of the protocol; n evicts m on arrival (the
//! admission check), and m rejoins. Every other member n has not seen is still checked —
//! that is the join argument of SPEC §4.

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
