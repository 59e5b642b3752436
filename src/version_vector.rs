//! Version vectors: origin → highest contiguous seq. Zero entries are never stored, so two
//! vectors describing the same set of ops are structurally equal (and hash equal).
//!
//! Backed by `imbl::OrdMap`, so clones are O(1) and share structure: a node's applied vector
//! handed to a status report, an op's deps, and a network-map entry are one allocation.

use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;

/// origin → highest seq of that origin (a downward-closed set of ops).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct VersionVector(OrdMap<NodeId, u64>);

impl<'de> Deserialize<'de> for VersionVector {
    /// Grows with the entries received, never with the length the input claims; drops
    /// zero entries, so a received vector is structurally equal to any other describing
    /// the same ops.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map: OrdMap<NodeId, u64> = crate::serde_bounded::ord_map(deserializer)?;
        if map.values().all(|seq| *seq != 0) {
            return Ok(Self(map));
        }
        Ok(Self(map.into_iter().filter(|(_, seq)| *seq != 0).collect()))
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The seq for `origin` (0 when absent).
    pub fn get(&self, origin: &NodeId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Sets `origin` to `seq`; 0 removes the entry.
    pub fn set(&mut self, origin: NodeId, seq: u64) {
        if seq == 0 {
            self.0.remove(&origin);
        } else {
            self.0.insert(origin, seq);
        }
    }

    /// Sets `origin` to `seq` (0 removes it) and returns the previous value, in one lookup.
    pub fn replace(&mut self, origin: &NodeId, seq: u64) -> u64 {
        if seq == 0 {
            self.0.remove(origin).unwrap_or(0)
        } else {
            self.0.insert(origin.clone(), seq).unwrap_or(0)
        }
    }

    /// Raises `origin` to at least `seq`. Returns whether it changed.
    pub fn raise(&mut self, origin: &NodeId, seq: u64) -> bool {
        if seq > self.get(origin) {
            self.0.insert(origin.clone(), seq);
            true
        } else {
            false
        }
    }

    /// Entries in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.0.iter().map(|(k, v)| (k, *v))
    }

    /// Number of origins with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of ops the vector describes.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// `self ≤ other` pointwise. One ordered walk over both (imbl's diff, which skips the
    /// subtrees they share), not a lookup per entry.
    pub fn le(&self, other: &VersionVector) -> bool {
        if self.0.ptr_eq(&other.0) {
            return true;
        }
        self.0.diff(&other.0).all(|item| match item {
            DiffItem::Add(..) => true,
            DiffItem::Update { old, new } => old.1 <= new.1,
            DiffItem::Remove(..) => false,
        })
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, seq) in other.iter() {
            self.raise(origin, seq);
        }
    }

    /// Pointwise minimum.
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        let mut out = VersionVector::new();
        for (origin, seq) in self.iter() {
            out.set(origin.clone(), seq.min(other.get(origin)));
        }
        out
    }

    /// Whether both share the same allocation (then they are certainly equal).
    pub fn ptr_eq(&self, other: &VersionVector) -> bool {
        self.0.ptr_eq(&other.0)
    }

    /// Origins whose entry differs between `self` (old) and `new`, with (old, new) values, in
    /// origin order.
    pub fn changes_to(&self, new: &VersionVector) -> Vec<(NodeId, u64, u64)> {
        if self.ptr_eq(new) {
            return Vec::new();
        }
        // one ordered walk over both, skipping shared subtrees; the diff comes in key order
        self.0
            .diff(&new.0)
            .map(|item| match item {
                DiffItem::Add(origin, seq) => (origin.clone(), 0, *seq),
                DiffItem::Update { old, new } => (old.0.clone(), *old.1, *new.1),
                DiffItem::Remove(origin, seq) => (origin.clone(), *seq, 0),
            })
            .collect()
    }
}

impl std::fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (NodeId, u64)>>(iter: T) -> Self {
        let mut v = VersionVector::new();
        for (origin, seq) in iter {
            v.raise(&origin, seq);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> NodeId {
        NodeId::synthetic(i)
    }

    #[test]
    fn zero_entries_are_not_stored_so_equal_sets_compare_equal() {
        let mut a = VersionVector::new();
        a.set(id(1), 3);
        a.set(id(2), 0);
        let b: VersionVector = [(id(1), 3)].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn order_join_meet() {
        let a: VersionVector = [(id(1), 3), (id(2), 1)].into_iter().collect();
        let b: VersionVector = [(id(1), 2), (id(3), 5)].into_iter().collect();
        assert!(!a.le(&b) && !b.le(&a));
        let mut j = a.clone();
        j.join(&b);
        assert!(a.le(&j) && b.le(&j));
        assert_eq!(j.total(), 3 + 1 + 5);
        let m = a.meet(&b);
        assert_eq!(m, [(id(1), 2)].into_iter().collect());
        assert_eq!(a.changes_to(&b).len(), 3);
    }

    proptest::proptest! {
        /// `le` and `changes_to` walk both trees with imbl's diff: they agree with a
        /// lookup per entry, for vectors built apart and for one derived from the other
        /// (which share structure the diff skips).
        #[test]
        fn le_and_changes_to_agree_with_a_lookup_per_entry(
            a in proptest::collection::btree_map(0u64..300, 1u64..5, 0..200),
            edits in proptest::collection::vec((0u64..300, 0u64..5), 0..20),
        ) {
            let x: VersionVector = a.iter().map(|(o, s)| (id(*o), *s)).collect();
            let mut derived = x.clone();
            for (o, s) in &edits {
                derived.set(id(*o), *s);
            }
            let apart: VersionVector = derived.iter().map(|(o, s)| (o.clone(), s)).collect();
            for y in [&derived, &apart] {
                let le = x.iter().all(|(o, s)| s <= y.get(o));
                proptest::prop_assert_eq!(x.le(y), le);
                let mut changes: Vec<(NodeId, u64, u64)> = x
                    .iter()
                    .map(|(o, _)| o.clone())
                    .chain(y.iter().map(|(o, _)| o.clone()))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .map(|o| (o.clone(), x.get(&o), y.get(&o)))
                    .filter(|(_, a, b)| a != b)
                    .collect();
                changes.sort_by(|p, q| p.0.cmp(&q.0));
                proptest::prop_assert_eq!(x.changes_to(y), changes);
            }
        }
    }
}
