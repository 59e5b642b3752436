//! I5 no lost writes (a safety property): an acknowledged op is eventually applied, with the
//! content it was created with, by every member, and its id (origin, seq) never names
//! another op.
//!
//! What each part protects, and where it is checked:
//! - **ids are never reused**: every op a replica creates is recorded in the ground truth
//!   (`GroundTruth::record`); an id that already names an op is a violation at once. This
//!   is what a node that takes its next seq from a vector that lost some of its own ops
//!   (a rejoin through a group that never had them, a restore from an old backup) does.
//! - **content**: every application is compared with the op created under its id (I1's
//!   file does it on application, I4's on every stable state).
//! - **nothing acknowledged is lost**: when the run settles, every acknowledged op that
//!   some surviving storage ever held must still be held by a running node
//!   ([`check_held`]). An op that is held somewhere but has not reached every member is
//!   not lost (it may still spread); that is L1's failure.
//! - **a leave hands everything over**: a node that left is gone for the network, so when
//!   it stops, no op it holds may be missing from every other running node and surviving
//!   storage (the engine's `check_handed_over`); after that its data dir owes nothing.
//!
//! *Owed* ops: an op is owed once a node held it in storage that still exists at the end
//! of the run: a running node, or a crashed node due to restart (each with the ops of its
//! current disk: a lost disk or a restore from an old backup takes away what that disk
//! alone held). Acknowledged ops that no surviving storage
//! ever held are gone with the disks that had them; the oracle excuses them and counts them
//! in the report (`excuses.ops_lost_with_storage`).

use tidemark::VersionVector;

pub const NAME: &str = "I5 no lost writes";

/// Every owed op must be inside what the running nodes hold.
pub fn check_held(owed: &VersionVector, held: &VersionVector) -> Result<(), String> {
    let lost: Vec<String> = owed
        .iter()
        .filter(|(origin, upto)| *upto > held.get(origin))
        .map(|(origin, upto)| format!("{origin:?} seq {}..={upto}", held.get(origin) + 1))
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    let count: u64 = owed
        .iter()
        .map(|(origin, upto)| upto.saturating_sub(held.get(origin)))
        .sum();
    Err(format!(
        "{count} acknowledged ops are held by no running node any more: {}",
        lost.join(", ")
    ))
}

/// Acknowledged ops outside `owed`: lost with the only storage that held them.
pub fn lost_with_storage(acknowledged: &VersionVector, owed: &VersionVector) -> u64 {
    acknowledged
        .iter()
        .map(|(origin, upto)| upto.saturating_sub(owed.get(origin)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    fn v(entries: &[(u64, u64)]) -> VersionVector {
        entries
            .iter()
            .map(|&(o, s)| (NodeId::synthetic(o), s))
            .collect()
    }

    #[test]
    fn an_owed_op_that_no_running_node_holds_is_lost() {
        assert!(check_held(&v(&[(1, 5), (2, 3)]), &v(&[(1, 5), (2, 4)])).is_ok());
        let err = check_held(&v(&[(1, 5), (2, 3)]), &v(&[(1, 2), (2, 3)])).unwrap_err();
        assert!(err.starts_with("3 acknowledged ops"), "{err}");
    }

    #[test]
    fn acknowledged_ops_no_surviving_storage_held_are_counted_as_excused() {
        assert_eq!(lost_with_storage(&v(&[(1, 5), (2, 3)]), &v(&[(1, 4)])), 4);
        assert_eq!(lost_with_storage(&v(&[(1, 5)]), &v(&[(1, 5)])), 0);
    }
}
