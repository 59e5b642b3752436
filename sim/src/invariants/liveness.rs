//! L1 liveness: once faults stop, within a bounded time every member's snapshot point equals
//! the union of all applied ops, and stays there while nothing new is written.
//!
//! Checked at the end of the run, after writes and faults stopped: every running node must
//! be a member in good standing (evicted and stale nodes have rejoined), every member's
//! applied vector and snapshot point must equal the union of the members' applied vectors,
//! every op a running node ever applied must be inside that union (I5: ops written while
//! cut off were republished), and the run must have reached that state within the
//! configured bound. Ops only a crashed node with a lost disk ever had are gone with it.

use tidemark::VersionVector;

pub const NAME: &str = "L1 liveness";

/// `members` yields (node label, applied, snapshot point) of every member in good standing.
pub fn check<'a>(
    union: &VersionVector,
    members: impl IntoIterator<Item = (String, &'a VersionVector, &'a VersionVector)>,
) -> Result<(), String> {
    for (node, applied, sp) in members {
        if applied != union {
            return Err(format!(
                "{node} applied {} of {} ops",
                applied.total(),
                union.total()
            ));
        }
        if sp != union {
            return Err(format!(
                "{node}'s snapshot point covers {} of {} ops",
                sp.total(),
                union.total()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    #[test]
    fn a_member_short_of_the_union_fails_liveness() {
        let v = |s: u64| -> VersionVector { [(NodeId::synthetic(1), s)].into_iter().collect() };
        let (all, less) = (v(5), v(4));
        assert!(check(&all, [("a".to_string(), &all, &all)]).is_ok());
        assert!(check(&all, [("a".to_string(), &all, &less)]).is_err());
        assert!(check(&all, [("a".to_string(), &less, &less)]).is_err());
    }
}
