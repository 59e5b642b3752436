//! Holds ops that arrived before their causal dependencies, and hands them out once they can
//! be applied. Duplicates (already applied or already buffered) are recognised and dropped.
//!
//! The buffer is bounded ([`BufferLimits`]): an op too far ahead of what its origin has
//! applied here, or one that arrives when the buffer is full, is refused. Nothing is lost by
//! refusing: ops whose deps never arrive are what a peer sending garbage, or a faulty one,
//! would fill memory with, while a real op comes back through anti-entropy once its deps
//! are in.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Op;
use crate::node_id::NodeId;
use crate::version_vector::VersionVector;

/// How much the buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BufferLimits {
    /// Ops waiting in all.
    pub max_ops: usize,
    /// How far beyond its origin's applied seq an op may be (an op with seq `applied + n`
    /// for `n` above this is refused).
    pub max_ahead: u64,
}

impl Default for BufferLimits {
    fn default() -> Self {
        Self {
            max_ops: 65_536,
            max_ahead: 16_384,
        }
    }
}

/// What [`CausalBuffer::insert`] did with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Added,
    /// Already applied or already waiting.
    Duplicate,
    /// Refused by the [`BufferLimits`]: too far ahead, or the buffer is full.
    Refused,
}

/// Ops waiting for their deps, by origin then seq.
#[derive(Debug)]
pub struct CausalBuffer<P> {
    waiting: BTreeMap<NodeId, BTreeMap<u64, Arc<Op<P>>>>,
    len: usize,
    limits: BufferLimits,
}

impl<P> Default for CausalBuffer<P> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            len: 0,
            limits: BufferLimits::default(),
        }
    }
}

impl<P> CausalBuffer<P> {
    pub fn set_limits(&mut self, limits: BufferLimits) {
        self.limits = limits;
    }

    /// Buffers `op` unless it is already applied (per `applied`) or already waiting, or
    /// the limits refuse it. An op that can be applied at once is never refused.
    pub fn insert(&mut self, op: Arc<Op<P>>, applied: &VersionVector) -> Insert {
        if self.holds(&op, applied) {
            return Insert::Duplicate;
        }
        let have = applied.get(&op.origin);
        let deliverable = op.seq == have + 1 && op.deps.le(applied);
        if !deliverable
            && (op.seq - have > self.limits.max_ahead || self.len >= self.limits.max_ops)
        {
            return Insert::Refused;
        }
        self.waiting
            .entry(op.origin.clone())
            .or_default()
            .insert(op.seq, op);
        self.len += 1;
        Insert::Added
    }

    /// Whether `op` is already applied (per `applied`) or already waiting here.
    pub fn holds(&self, op: &Op<P>, applied: &VersionVector) -> bool {
        op.seq <= applied.get(&op.origin)
            || self
                .waiting
                .get(&op.origin)
                .is_some_and(|slot| slot.contains_key(&op.seq))
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

    /// Every op waiting, by origin then seq.
    pub fn ops(&self) -> impl Iterator<Item = &Arc<Op<P>>> {
        self.waiting.values().flat_map(|ops| ops.values())
    }

    /// Number of ops waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
