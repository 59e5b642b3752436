//! Bugs the simulator can plant in the core, one at a time, to show that its oracle
//! catches each (the simulator's `planted_bugs` tests, and `tidemark-sim --plant`). An
//! invariant checker counts only once it has been seen to catch the bug it exists for.
//!
//! No node sets one: [`ReplicaConfig::planted`](super::ReplicaConfig::planted) is `None`
//! everywhere but in the simulator.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A deliberate bug, named after what it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlantedBug {
    /// I1: a received op that is next for its origin is applied at once, even when some of
    /// its deps are missing.
    SkipCausalOrder,
    /// I2: no admission check: a new membership below the snapshot point is counted, and
    /// the snapshot point falls.
    NoAdmissionCheck,
    /// I3: the snapshot point leaves out one member (the first other member counted, in id
    /// order), so it can pass what that member has applied.
    CountsOneMemberTooFew,
    /// I4: folding ops into the stable state forgets one (each origin's 5th), though the
    /// stable cut covers it.
    FoldForgetsAnOp,
    /// I5: after a rejoin, the node republishes nothing the grant lacks (neither its
    /// unstable suffix nor its own-op journal) and writes on anyway: its next seq comes
    /// from its applied vector, so ids are reused and writes made while cut off are lost.
    SeqReusedAfterRejoin,
    /// I5: a leaving node announces `Left` at once, dropping what it had not published and
    /// without waiting until the ops it holds are stable.
    LeaveWithoutHandover,
    /// L1: no member is ever evicted: a crashed member holds the snapshot point back for
    /// good.
    NeverEvict,
    /// I6: a view change is decided with one vote fewer than a majority of the view, so
    /// both halves of an even split can each decide their own next view.
    ShortQuorum,
    /// I3 (against a crashed member): the snapshot point leaves out suspected members, so
    /// it passes a crashed member's ops before any view has evicted it.
    SuspectsLeaveTheMinimum,
    /// I3 (aggregated): a sponsor's contribution is its applied vector even while a joiner
    /// it registered is not in the view yet (no joiner cover), so an aggregate can pass
    /// the cut the joiner was given.
    NoJoinerCover,
    /// I3 (aggregated): an aggregator leaves the member that holds its group back out of
    /// the group's minimum and still claims the whole group's cover.
    AggregatorSkipsAMember,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 11] = [
        PlantedBug::SkipCausalOrder,
        PlantedBug::NoAdmissionCheck,
        PlantedBug::CountsOneMemberTooFew,
        PlantedBug::FoldForgetsAnOp,
        PlantedBug::SeqReusedAfterRejoin,
        PlantedBug::LeaveWithoutHandover,
        PlantedBug::NeverEvict,
        PlantedBug::ShortQuorum,
        PlantedBug::SuspectsLeaveTheMinimum,
        PlantedBug::NoJoinerCover,
        PlantedBug::AggregatorSkipsAMember,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::SkipCausalOrder => "skip-causal-order",
            PlantedBug::NoAdmissionCheck => "no-admission-check",
            PlantedBug::CountsOneMemberTooFew => "counts-one-member-too-few",
            PlantedBug::FoldForgetsAnOp => "fold-forgets-an-op",
            PlantedBug::SeqReusedAfterRejoin => "seq-reused-after-rejoin",
            PlantedBug::LeaveWithoutHandover => "leave-without-handover",
            PlantedBug::NeverEvict => "never-evict",
            PlantedBug::ShortQuorum => "short-quorum",
            PlantedBug::SuspectsLeaveTheMinimum => "suspects-leave-the-minimum",
            PlantedBug::NoJoinerCover => "no-joiner-cover",
            PlantedBug::AggregatorSkipsAMember => "aggregator-skips-a-member",
        }
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PlantedBug {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|bug| bug.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|b| b.name()).collect();
                format!("unknown bug {s:?}; expected one of {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bug_parses_back_from_its_name() {
        for bug in PlantedBug::ALL {
            assert_eq!(bug.name().parse::<PlantedBug>(), Ok(bug));
        }
        assert!("no-such-bug".parse::<PlantedBug>().is_err());
    }
}
