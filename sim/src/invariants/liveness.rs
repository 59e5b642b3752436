//! L1 liveness: once faults stop, within a bounded time every member's snapshot point equals
//! the union of all applied ops, and stays there while nothing new is written.
//!
//! Checked at the end of the run, after writes and faults stopped: every running node must
//! be a member in good standing (evicted and stale nodes have rejoined), every member's
//! applied vector and snapshot point must equal the union of the members' applied vectors,
//! every op a running node ever applied must be inside that union (I5: ops written while
//! cut off were republished), and the run must have reached that state within the
//! configured bound. Ops only a crashed node with a lost disk ever had are gone with it.

use serde::Serialize;
use tidemark::VersionVector;

pub const NAME: &str = "L1 liveness";

/// Why a run failed L1, read off its end state: what a reader of a sweep needs to tell a
/// known limit of the protocol from a new bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// No running node is a member: every member crashed or left, and whoever is left is
    /// joining with no one to join through.
    NoMemberLeft,
    /// Two running members do not count each other: groups that evicted each other.
    SplitBrain,
    /// A member counts at least as many members that no longer run as it can outvote: it
    /// cannot evict them, and its snapshot point waits for them.
    MajorityLost,
    /// A node is still joining and none of the nodes it knows (its bootstrap peers, the
    /// nodes it learned of) is a running member at its address: it cannot reach the
    /// network.
    NoSponsorReachable,
    /// Members run and count each other, but a node is still joining.
    JoinerStuck,
    /// None of the above.
    Other,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::NoMemberLeft => "no_member_left",
            Cause::SplitBrain => "split_brain",
            Cause::MajorityLost => "majority_lost",
            Cause::NoSponsorReachable => "no_sponsor_reachable",
            Cause::JoinerStuck => "joiner_stuck",
            Cause::Other => "other",
        }
    }
}

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
