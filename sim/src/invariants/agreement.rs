//! I4 agreement: two nodes at the same cut have the same digest.
//!
//! Every time a node's snapshot point changes, the digest of its stable state is compared
//! with the first digest any node reported for that same cut.

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
    pub fn check(&mut self, cut: &VersionVector, digest: Digest) -> Result<(), String> {
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
