//! I4 agreement: two nodes at the same cut have the same digest.
//!
//! Every time a node's snapshot point changes, and whenever it installs a stable state
//! handed over by a sponsor, the node's stable state must be folded at exactly that cut, and
//! its digest is compared with the first digest any node reported for the same cut and
//! with the digest of the state the ground truth's ops give at that cut. The second
//! comparison sees what the first cannot: a fault every node shares, such as a stable state
//! that lost an op, or an op id that names different ops in different places.

use std::collections::HashMap;

use tidemark::ops_log::Digest;
use tidemark::VersionVector;

pub const NAME: &str = "I4 agreement";

/// First digest seen per cut.
#[derive(Debug, Default)]
pub struct Agreement {
    digests: HashMap<VersionVector, Digest>,
}

impl Agreement {
    /// `folded` is the cut of the node's stable state, `digest` that state's digest.
    pub fn check(
        &mut self,
        cut: &VersionVector,
        folded: &VersionVector,
        digest: Digest,
    ) -> Result<(), String> {
        if cut != folded {
            return Err(format!(
                "stable state folded at {folded:?}, not at the snapshot point {cut:?}"
            ));
        }
        match self.digests.get(cut) {
            Some(first) if *first != digest => Err(format!(
                "digest {digest:?} at cut {cut:?}, where another node had {first:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(cut.clone(), digest);
                Ok(())
            }
        }
    }

    /// Distinct cuts seen.
    pub fn cuts(&self) -> usize {
        self.digests.len()
    }
}

/// The stable state at `cut` must be the one the ops created inside `cut` give.
pub fn check_ground_truth(
    cut: &VersionVector,
    digest: Digest,
    expected: Digest,
) -> Result<(), String> {
    if digest == expected {
        Ok(())
    } else {
        Err(format!(
            "stable state at {cut:?} has digest {digest:?}, but the ops created inside that cut give {expected:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    #[test]
    fn a_different_digest_at_a_seen_cut_or_a_wrongly_folded_state_is_a_violation() {
        let cut: VersionVector = [(NodeId::synthetic(1), 3)].into_iter().collect();
        let other: VersionVector = [(NodeId::synthetic(1), 2)].into_iter().collect();
        let mut a = Agreement::default();
        assert!(a.check(&cut, &cut, Digest([1; 32])).is_ok());
        assert!(a.check(&cut, &cut, Digest([1; 32])).is_ok());
        assert!(a.check(&cut, &cut, Digest([2; 32])).is_err());
        assert!(a.check(&cut, &other, Digest([1; 32])).is_err());
        assert_eq!(a.cuts(), 1);
        assert!(check_ground_truth(&cut, Digest([1; 32]), Digest([1; 32])).is_ok());
        assert!(check_ground_truth(&cut, Digest([1; 32]), Digest([2; 32])).is_err());
    }
}
