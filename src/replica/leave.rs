//! A graceful leave (SPEC §5): a member that leaves stops writing and registering
//! joiners, and announces `Left` only once every op it held when the leave began is under
//! its snapshot point — so every member has them — and every joiner it registered has
//! reported by itself. If that does not happen by `leave_drain_timeout`, the leave gives
//! up ([`LeaveFailed`]) and the node stays a member: leaving then could lose writes.
//!
//! [`Leave`] owns the leave's deadline and the cut it must hand over; the replica asks it
//! after every event what to do. Part of the sans-IO core.

use crate::node_id::NodeId;
use crate::time::Time;
use crate::version_vector::VersionVector;

/// A leave in progress.
#[derive(Clone, Debug)]
pub(super) struct Leave {
    /// Past this, a leave whose ops are not handed over gives up.
    deadline: Time,
    /// Every op this node held when the leave began (its own up to the highest it gave).
    cut: VersionVector,
}

/// What a leave does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaveStep {
    /// Keep waiting.
    Wait,
    /// Announce `Left` now.
    Announce,
    /// Give up: the node stays a member.
    GiveUp,
}

/// Why a graceful leave gave up (the node stays a member and keeps its writes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LeaveFailed {
    /// Ops held at the start of the leave that are not stable yet.
    pub unstable: u64,
    /// How many of them are this node's own.
    pub unstable_own: u64,
    /// Its ops were handed over, but no view without this node was decided in time: it
    /// holds a seat in the view, and leaving without giving it up would leave the view one
    /// vote short for good.
    pub seat_not_given_up: bool,
}

impl LeaveFailed {
    fn describe(&self) -> String {
        if self.unstable == 0 && self.seat_not_given_up {
            return "leave timed out: no view without this node was decided in time (a quorum of the view must agree to it), so it keeps its seat and stays a member".into();
        }
        format!("leave timed out: {} of the ops this node held when it began to leave ({} of them its own) are not yet under its snapshot point, so some member may lack them; it stays a member", self.unstable, self.unstable_own)
    }
}

impl Leave {
    /// A leave that begins at `now` holding the ops `applied`, and this node's (`me`) own
    /// up to `own_highest`, with `drain_timeout` to hand them over.
    pub(super) fn begin(
        now: Time,
        me: &NodeId,
        applied: &VersionVector,
        own_highest: u64,
        drain_timeout: std::time::Duration,
    ) -> Self {
        let mut cut = applied.clone();
        cut.raise(me, own_highest);
        Self {
            deadline: now + drain_timeout,
            cut,
        }
    }

    /// When the leave gives up if its ops are not handed over.
    pub(super) fn deadline(&self) -> Time {
        self.deadline
    }

    /// What to do at `now`, given the snapshot point, whether ops still wait to be
    /// published, and whether a joiner this node registered has not reported yet.
    pub(super) fn step(
        &self,
        now: Time,
        snapshot_point: &VersionVector,
        unpublished: bool,
        unconfirmed_registrations: bool,
    ) -> LeaveStep {
        // The ops it holds are safe to leave behind once they are under its snapshot
        // point: every member it counts has applied them, and so has every member it
        // has not heard of yet (their join cuts lie above that point, I3).
        let handed_over = !unpublished && self.cut.le(snapshot_point);
        // every joiner it registered has reported by itself (its `Left` record would
        // count them anyway, so this is not waited for past the deadline)
        let drained = handed_over && !unconfirmed_registrations;
        if drained || (handed_over && now >= self.deadline) {
            LeaveStep::Announce
        } else if now >= self.deadline {
            // leaving now could lose writes: give up the leave and stay a member
            LeaveStep::GiveUp
        } else {
            LeaveStep::Wait
        }
    }

    /// What is not handed over, by `snapshot_point`, for the failure report.
    pub(super) fn failure(&self, me: &NodeId, snapshot_point: &VersionVector) -> LeaveFailed {
        LeaveFailed {
            unstable: self
                .cut
                .iter()
                .map(|(origin, seq)| seq.saturating_sub(snapshot_point.get(origin)))
                .sum(),
            unstable_own: self.cut.get(me).saturating_sub(snapshot_point.get(me)),
            seat_not_given_up: false,
        }
    }
}
