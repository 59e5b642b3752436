//! What a node carries from one membership to the next: when it loses its membership
//! (evicted, stale, restarted, or restored from a backup) it keeps the ops it held above
//! its stable cut and the records its map held; once a new grant is installed, the records
//! are merged into the new map (so that evictions it knew are not forgotten) and every op
//! the grant lacks is applied and published again, so that ops created or received while
//! cut off are not lost (I5).
//!
//! [`Handover`] owns those ops and records between the loss and the grant. Part of the
//! sans-IO core.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::network_map::MemberRecord;
use crate::node_id::NodeId;
use crate::ops_log::Op;
use crate::version_vector::VersionVector;

/// Ops and records kept across a rejoin (see module doc).
#[derive(Debug)]
pub(super) struct Handover<P> {
    ops: Vec<Arc<Op<P>>>,
    records: Vec<Arc<MemberRecord>>,
}

impl<P> Default for Handover<P> {
    fn default() -> Self {
        Self {
            ops: Vec::new(),
            records: Vec::new(),
        }
    }
}

impl<P> Handover<P> {
    /// Keeps `ops` and `records` for the next grant (replacing what was kept).
    pub(super) fn keep(&mut self, ops: Vec<Arc<Op<P>>>, records: Vec<Arc<MemberRecord>>) {
        self.ops = ops;
        self.records = records;
    }

    /// The records kept, to merge into the new map.
    pub(super) fn take_records(&mut self) -> Vec<Arc<MemberRecord>> {
        std::mem::take(&mut self.records)
    }

    /// Forgets the ops kept.
    pub(super) fn drop_ops(&mut self) {
        self.ops.clear();
    }

    /// The ops kept, and `own` (this node's journal), that the grant lacks — above
    /// `granted` — once each, in Lamport order, which extends causal order. Forgets the
    /// ops kept.
    pub(super) fn lacking(
        &mut self,
        granted: &VersionVector,
        own: impl IntoIterator<Item = Arc<Op<P>>>,
    ) -> Vec<Arc<Op<P>>> {
        let mut lacking: BTreeMap<(NodeId, u64), Arc<Op<P>>> = BTreeMap::new();
        for op in std::mem::take(&mut self.ops).into_iter().chain(own) {
            if op.seq > granted.get(&op.origin) {
                lacking.entry((op.origin.clone(), op.seq)).or_insert(op);
            }
        }
        let mut lacking: Vec<_> = lacking.into_values().collect();
        lacking.sort_by(|a, b| (a.lamport, &a.origin, a.seq).cmp(&(b.lamport, &b.origin, b.seq)));
        lacking
    }
}
