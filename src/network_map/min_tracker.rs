//! Incremental pointwise minimum of a changing set of version vectors.
//!
//! Per origin it keeps a multiset (value → count) of the non-zero entries and how many
//! vectors have one; the minimum for that origin is 0 while some vector lacks the origin,
//! else the smallest value. Changing one entry of one vector costs O(log N); adding or
//! removing a whole vector costs O(origins · log N).

use std::collections::BTreeMap;

use crate::node_id::NodeId;
use crate::version_vector::VersionVector;

#[derive(Debug, Default, Clone)]
struct OriginCounts {
    nonzero: u32,
    values: BTreeMap<u64, u32>,
    /// The minimum as last published in `MinTracker::min`.
    published: u64,
}

impl OriginCounts {
    fn insert(&mut self, value: u64) {
        if value > 0 {
            self.nonzero += 1;
            *self.values.entry(value).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, value: u64) {
        if value == 0 {
            return;
        }
        let count = self
            .values
            .get_mut(&value)
            .expect("removing a value the tracker does not hold");
        *count -= 1;
        if *count == 0 {
            self.values.remove(&value);
        }
        self.nonzero -= 1;
    }
}

/// Pointwise minimum over a multiset of version vectors.
#[derive(Debug, Default, Clone)]
pub struct MinTracker {
    vectors: u32,
    per_origin: BTreeMap<NodeId, OriginCounts>,
    min: VersionVector,
}

impl MinTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pointwise minimum (empty when no vector is tracked).
    pub fn min(&self) -> &VersionVector {
        &self.min
    }

    /// Number of vectors tracked.
    pub fn len(&self) -> usize {
        self.vectors as usize
    }

    pub fn is_empty(&self) -> bool {
        self.vectors == 0
    }

    pub fn add(&mut self, v: &VersionVector) {
        self.vectors += 1;
        for (origin, seq) in v.iter() {
            self.per_origin
                .entry(origin.clone())
                .or_default()
                .insert(seq);
        }
        self.refresh_all();
    }

    pub fn remove(&mut self, v: &VersionVector) {
        self.vectors -= 1;
        for (origin, seq) in v.iter() {
            if let Some(counts) = self.per_origin.get_mut(origin) {
                counts.remove(seq);
            }
        }
        self.per_origin.retain(|_, c| c.nonzero > 0);
        self.refresh_all();
    }

    /// One tracked vector's entry for `origin` went from `old` to `new`.
    pub fn change(&mut self, origin: &NodeId, old: u64, new: u64) {
        if old == new {
            return;
        }
        let vectors = self.vectors;
        match self.per_origin.get_mut(origin) {
            Some(counts) => {
                counts.remove(old);
                counts.insert(new);
                if counts.nonzero == 0 {
                    self.per_origin.remove(origin);
                    self.min.set(origin.clone(), 0);
                } else {
                    let min = Self::min_of(counts, vectors);
                    if min != counts.published {
                        counts.published = min;
                        self.min.set(origin.clone(), min);
                    }
                }
            }
            None => {
                let mut counts = OriginCounts::default();
                counts.insert(new);
                counts.published = Self::min_of(&counts, vectors);
                self.min.set(origin.clone(), counts.published);
                self.per_origin.insert(origin.clone(), counts);
            }
        }
    }

    fn min_of(counts: &OriginCounts, vectors: u32) -> u64 {
        if counts.nonzero == vectors {
            counts.values.keys().next().copied().unwrap_or(0)
        } else {
            0
        }
    }

    fn refresh_all(&mut self) {
        let mut min = VersionVector::new();
        let vectors = self.vectors;
        for (origin, counts) in self.per_origin.iter_mut() {
            counts.published = Self::min_of(counts, vectors);
            min.set(origin.clone(), counts.published);
        }
        if min != self.min {
            self.min = min;
        }
    }
}
