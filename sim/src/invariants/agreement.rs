//! I4 agreement: two nodes at the same cut have the same digest.
//!
//! Every time a node's snapshot point changes, the node's stable state must be folded at
//! exactly that cut, and its digest is compared with the first digest any node reported for
//! the same cut.

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
    }
}
