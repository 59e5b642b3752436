//! I6 single history (the part about views): no two nodes ever install different views
//! for the same epoch, over the whole run and across partitions. This protects the
//! agreed-view protocol itself: a view change decided without a quorum of the view
//! before it (two halves of a split deciding on their own) shows up here as two views
//! with one epoch, long before it could show up as lost writes.
//!
//! The operator's way out (`Replica::force_new_view`) founds a view without a quorum on
//! purpose; a conflict involving a forced view is counted as the operator's, not
//! reported.

use std::collections::BTreeMap;

use tidemark::network_map::view::View;

pub const NAME: &str = "I6 single history";

/// Every view installed anywhere in the run, by epoch.
#[derive(Debug, Default)]
pub struct ViewHistory {
    first: BTreeMap<u64, (View, bool)>,
    /// Conflicts where one of the two views was forced by the operator.
    pub forced_conflicts: u64,
}

impl ViewHistory {
    /// Node `node` installed `view` (`forced`: by its operator's way out). Errs when
    /// another node installed a different view for the same epoch.
    pub fn installed(&mut self, node: usize, view: &View, forced: bool) -> Result<(), String> {
        match self.first.get(&view.epoch) {
            None => {
                self.first.insert(view.epoch, (view.clone(), forced));
                Ok(())
            }
            Some((first, _)) if first == view => Ok(()),
            Some((_, first_forced)) if *first_forced || forced => {
                self.forced_conflicts += 1;
                Ok(())
            }
            Some((first, _)) => Err(format!(
                "node {node} installed view {} with {} members, but another node installed \
                 a different view for that epoch with {} members",
                view.epoch,
                view.members.len(),
                first.members.len()
            )),
        }
    }

    /// Views decided in the run (distinct epochs).
    pub fn epochs(&self) -> usize {
        self.first.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    fn view(epoch: u64, members: &[u64]) -> View {
        View {
            epoch,
            members: members
                .iter()
                .map(|m| (NodeId::synthetic(*m), 1u64))
                .collect(),
        }
    }

    #[test]
    fn the_same_view_twice_is_one_history_and_a_different_one_is_a_fork() {
        let mut h = ViewHistory::default();
        assert!(h.installed(0, &view(2, &[1, 2, 3]), false).is_ok());
        assert!(h.installed(1, &view(2, &[1, 2, 3]), false).is_ok());
        assert!(h.installed(2, &view(3, &[1, 2]), false).is_ok());
        assert!(h.installed(3, &view(2, &[1, 2]), false).is_err());
    }

    #[test]
    fn a_forced_view_is_the_operators_conflict() {
        let mut h = ViewHistory::default();
        assert!(h.installed(0, &view(2, &[1, 2, 3]), false).is_ok());
        assert!(h.installed(1, &view(2, &[1]), true).is_ok());
        assert_eq!(h.forced_conflicts, 1);
    }
}
