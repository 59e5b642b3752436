//! Holds ops that arrived before their causal dependencies, and hands them out once they can
//! be applied. Duplicates (already applied or already buffered) are recognised and dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Op;
use crate::node_id::NodeId;
use crate::version_vector::VersionVector;

/// Ops waiting for their deps, by origin then seq.
#[derive(Debug)]
pub struct CausalBuffer<P> {
    waiting: BTreeMap<NodeId, BTreeMap<u64, Arc<Op<P>>>>,
    len: usize,
}

impl<P> Default for CausalBuffer<P> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<P> CausalBuffer<P> {
    /// Buffers `op` unless it is already applied (per `applied`) or already waiting.
    /// Returns whether it was added.
    pub fn insert(&mut self, op: Arc<Op<P>>, applied: &VersionVector) -> bool {
        if op.seq <= applied.get(&op.origin) {
            return false;
        }
        let slot = self.waiting.entry(op.origin.clone()).or_default();
        if slot.contains_key(&op.seq) {
            return false;
        }
        slot.insert(op.seq, op);
        self.len += 1;
        true
    }

    /// Removes and returns one op that can be applied on top of `applied`: the next seq of its
    /// origin, with every dep satisfied. Ops made obsolete by `applied` are discarded.
    pub fn pop_deliverable(&mut self, applied: &VersionVector) -> Option<Arc<Op<P>>> {
        let mut found = None;
        let mut emptied = Vec::new();
        for (origin, ops) in self.waiting.iter_mut() {
            let have = applied.get(origin);
            while let Some(entry) = ops.first_entry() {
                if *entry.key() <= have {
                    entry.remove();
                    self.len -= 1;
                } else {
                    break;
                }
            }
            if let Some(entry) = ops.first_entry() {
                if *entry.key() == have + 1 && entry.get().deps.le(applied) {
                    found = Some(entry.remove());
                    self.len -= 1;
                }
            }
            if ops.is_empty() {
                emptied.push(origin.clone());
            }
            if found.is_some() {
                break;
            }
        }
        for origin in emptied {
            self.waiting.remove(&origin);
        }
        found
    }

    /// Number of ops waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
