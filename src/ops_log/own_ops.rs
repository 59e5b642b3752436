//! This node's own ops: the highest seq it ever gave one of them, and a journal of its
//! recent ops kept past the stable cut.
//!
//! - **Ids are never reused.** The next op's seq comes from `highest`, not from the applied
//!   vector: a grant that lacks some of this node's ops (a rejoin through nodes that never
//!   had them) or a data dir restored from an old backup lowers the applied vector, not
//!   `highest`. `highest` is durable (the node stores it in the same transaction as each
//!   new op), and it rises whenever any record or op shows that an op of this node with a
//!   higher seq exists somewhere. A node writes only while it has applied every one of its
//!   own ops up to `highest` (the next op depends on the last one).
//! - **Own ops outlive the stable cut for a while.** After a rejoin, a node republishes
//!   each op of its own that the grant lacks, from this journal. An op under this node's
//!   snapshot point is held by every member it counts, so a sponsor lacks it only if the
//!   two were in groups that did not count each other (a split, see docs/MEMBERSHIP.md).
//!   The journal therefore keeps each own op until it has been stable here for
//!   `retention`: a split that heals within that time loses none of this node's writes.
//!   Past it, an op is republished only if still in the unstable suffix; a rejoin through
//!   a group that lacks an older one leaves this node unable to write (its next op would
//!   depend on an op it no longer has), which it reports instead of reusing the id.
//!
//! Pure state: time is passed in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Op;
use crate::time::Time;

/// This node's own-op counter and journal (see the module doc).
#[derive(Debug, Clone)]
pub struct OwnOps<P> {
    highest: u64,
    /// Own ops kept, by seq, each with when it became stable here (`None`: not yet).
    kept: BTreeMap<u64, (Arc<Op<P>>, Option<Time>)>,
    /// Kept ops up to this seq have their stable time set (so marking is incremental).
    marked_upto: u64,
    /// Set when an op of this node above the highest stored was seen: (highest stored,
    /// highest seen). The data dir was rolled back; no more writes under this identity.
    rolled_back: Option<(u64, u64)>,
}

impl<P> Default for OwnOps<P> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<P> OwnOps<P> {
    /// A journal that knows ops of this node up to `highest` exist.
    pub fn new(highest: u64) -> Self {
        Self {
            highest,
            kept: BTreeMap::new(),
            marked_upto: 0,
            rolled_back: None,
        }
    }

    /// The highest seq of an op of this node known to exist.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Notes that an op of this node with seq `seq` exists somewhere; true if news.
    pub fn learn(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            self.highest = seq;
            true
        } else {
            false
        }
    }

    /// Notes that an op of this node with seq `seq` exists somewhere. Every op a node
    /// creates is stored before it leaves the node, so one above the highest this node's
    /// storage holds proves that its data dir lost acknowledged ops (it was restored from
    /// an older copy): the seq is taken, and the node must write no more under this
    /// identity. True when this call found such a rollback.
    pub fn note_exists(&mut self, seq: u64) -> bool {
        let stored = self.highest;
        if !self.learn(seq) {
            return false;
        }
        let stored = self.rolled_back.map_or(stored, |(s, _)| s);
        self.rolled_back = Some((stored, seq));
        true
    }

    /// (highest seq stored, highest seen) once the network showed an op of this node its
    /// storage never had (see [`OwnOps::note_exists`]).
    pub fn rolled_back(&self) -> Option<(u64, u64)> {
        self.rolled_back
    }

    /// Keeps an op of this node (created here, or received back from the network). An op
    /// already kept stays as it is.
    pub fn keep(&mut self, op: Arc<Op<P>>) {
        self.learn(op.seq);
        if let std::collections::btree_map::Entry::Vacant(slot) = self.kept.entry(op.seq) {
            // an op below the marked ones gets its stable time at the next marking
            self.marked_upto = self.marked_upto.min(op.seq - 1);
            slot.insert((op, None));
        }
    }

    /// Keeps an op already stable here (read back from a data dir): its retention runs
    /// from `now`.
    pub fn keep_stable(&mut self, op: Arc<Op<P>>, now: Time) {
        self.learn(op.seq);
        self.marked_upto = self.marked_upto.max(op.seq);
        self.kept.entry(op.seq).or_insert((op, Some(now)));
    }

    /// Own ops up to `upto` are stable here: each one's retention starts now (if it had not
    /// started yet), and ops stable for at least `retention` are dropped.
    pub fn stable_upto(&mut self, upto: u64, now: Time, retention: Duration) {
        if upto > self.marked_upto {
            for (_, (_, since)) in self.kept.range_mut(self.marked_upto + 1..=upto) {
                since.get_or_insert(now);
            }
            self.marked_upto = upto;
        }
        while let Some(entry) = self.kept.first_entry() {
            match entry.get().1 {
                Some(since) if now >= since + retention => {
                    entry.remove();
                }
                _ => break,
            }
        }
    }

    /// Ops above `seq` are no longer stable here (a grant installed a lower cut): their
    /// retention starts again when they become stable again.
    pub fn unstable_above(&mut self, seq: u64) {
        for (_, (_, since)) in self.kept.range_mut(seq + 1..) {
            *since = None;
        }
        self.marked_upto = self.marked_upto.min(seq);
    }

    /// Kept ops above `seq`, in seq order.
    pub fn above(&self, seq: u64) -> impl Iterator<Item = &Arc<Op<P>>> {
        self.kept.range(seq + 1..).map(|(_, (op, _))| op)
    }

    /// Every kept op, in seq order.
    pub fn kept(&self) -> impl Iterator<Item = &Arc<Op<P>>> {
        self.kept.values().map(|(op, _)| op)
    }

    /// The lowest seq kept (`highest + 1` when none is): storage keeps this node's ops from
    /// there on.
    pub fn kept_from(&self) -> u64 {
        self.kept.keys().next().copied().unwrap_or(self.highest + 1)
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_id::NodeId;
    use crate::version_vector::VersionVector;

    fn op(seq: u64) -> Arc<Op<()>> {
        let origin = NodeId::synthetic(1);
        let deps: VersionVector = [(origin.clone(), seq - 1)].into_iter().collect();
        Arc::new(Op {
            origin,
            seq,
            lamport: seq,
            deps,
            payload: (),
            signature: None,
        })
    }

    #[test]
    fn the_counter_only_rises_and_learns_from_ops_seen_elsewhere() {
        let mut own = OwnOps::new(3);
        assert!(!own.learn(2));
        assert!(own.learn(7));
        assert_eq!(own.highest(), 7);
        own.keep(op(9));
        assert_eq!(own.highest(), 9);
        assert_eq!(own.kept_from(), 9);
    }

    #[test]
    fn own_ops_are_kept_for_the_retention_after_they_become_stable() {
        let minute = Duration::from_secs(60);
        let t = |s: u64| Time::ZERO + Duration::from_secs(s);
        let mut own = OwnOps::new(0);
        for seq in 1..=5 {
            own.keep(op(seq));
        }
        own.stable_upto(2, t(10), minute);
        own.stable_upto(4, t(40), minute);
        own.stable_upto(4, t(69), minute);
        assert_eq!(own.kept_from(), 1, "nothing stable for a minute yet");
        own.stable_upto(4, t(70), minute);
        assert_eq!(own.kept_from(), 3, "1 and 2 were stable for a minute");
        own.unstable_above(3);
        own.stable_upto(3, t(100), minute);
        assert_eq!(own.kept_from(), 4, "3 went; 4 is unstable again");
        assert_eq!(own.above(3).map(|o| o.seq).collect::<Vec<_>>(), vec![4, 5]);
        own.stable_upto(5, t(100), minute);
        own.stable_upto(5, t(160), minute);
        assert!(own.is_empty());
        assert_eq!(own.kept_from(), 6);
    }
}
