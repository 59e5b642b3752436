//! The network map `M(n)`: for every member this node knows, the member's latest record —
//! membership state, incarnation, sponsor, and the best known lower bound of its applied
//! vector — and, derived from it incrementally, the snapshot point `SP(n)`.
//!
//! Records are versioned by (incarnation, report_seq). Only the member itself raises its
//! report_seq; a sponsor's registration of a joiner is report 0 of the joiner's incarnation.
//! Records are immutable and shared (`Arc`), so relaying one costs a pointer copy.
//!
//! Join safety (SPEC §4, seed obstacle 1): a member's record states how many joiners it has
//! registered in its incarnation (`registrations`). A record is adopted only once every one
//! of those registrations is known here; until then it waits in `pending`. So this map never
//! holds a sponsor's applied vector newer than a registration without also counting the
//! joiner, whose registered cut bounds the snapshot point from above.
//!
//! Pure state machine: no I/O, no clocks (time is passed in), iteration in key order only.

mod min_tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use min_tracker::MinTracker;

use crate::node_id::NodeId;
use crate::time::Time;
use crate::version_vector::VersionVector;

/// A member's standing. Only `Alive` and `Suspect` members count in the snapshot point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Left,
    Evicted,
}

impl MemberState {
    /// Whether a member in this state is in good standing (counted in the minimum).
    pub fn counts(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Left => "left",
            MemberState::Evicted => "evicted",
        }
    }
}

/// Who registered a member, and which of the sponsor's registrations it was.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sponsorship {
    pub sponsor: NodeId,
    pub sponsor_incarnation: u64,
    /// 1-based count of the sponsor's registrations in that incarnation.
    pub reg_no: u64,
}

/// One version of what is known about a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: NodeId,
    pub incarnation: u64,
    pub state: MemberState,
    pub sponsor: Option<Sponsorship>,
    /// Raised by the member on every report it makes; 0 for its sponsor's registration.
    pub report_seq: u64,
    /// A lower bound of the member's applied vector.
    pub applied: VersionVector,
    /// How many joiners this member has registered in this incarnation.
    pub registrations: u64,
    /// Where the member listens (multiaddr strings), so peers can reach it without a
    /// bootstrap node. Empty in the simulator.
    #[serde(default)]
    pub addrs: Vec<String>,
}

impl MemberRecord {
    /// A founding member's first record.
    pub fn founder(id: NodeId) -> Self {
        Self {
            id,
            incarnation: 1,
            state: MemberState::Alive,
            sponsor: None,
            report_seq: 1,
            applied: VersionVector::new(),
            registrations: 0,
            addrs: Vec::new(),
        }
    }

    /// The version order of records about the same member.
    pub fn version(&self) -> (u64, u64) {
        (self.incarnation, self.report_seq)
    }

    pub fn supersedes(&self, other: &MemberRecord) -> bool {
        self.version() > other.version()
    }
}

/// A known member: its latest adopted record and when it was adopted.
#[derive(Clone, Debug)]
pub struct MemberEntry {
    pub record: Arc<MemberRecord>,
    pub last_heard: Time,
}

/// What `merge` did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The record is now the member's entry (possibly releasing pending records too).
    Adopted,
    /// Newer than what is held, but waits for registrations of its member not yet known.
    Pending,
    /// Not newer than what is held.
    Outdated,
    /// A record about this node itself; the node owns its own record.
    AboutSelf,
}

/// Registrations of one sponsor incarnation that this node knows about.
#[derive(Clone, Debug, Default)]
struct Registrations {
    contiguous: u64,
    beyond: BTreeSet<u64>,
}

impl Registrations {
    fn insert(&mut self, reg_no: u64) {
        if reg_no <= self.contiguous {
            return;
        }
        self.beyond.insert(reg_no);
        while self.beyond.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

/// The network map of one node.
#[derive(Clone, Debug)]
pub struct NetworkMap {
    me: NodeId,
    members: BTreeMap<NodeId, MemberEntry>,
    pending: BTreeMap<NodeId, Arc<MemberRecord>>,
    registrations: BTreeMap<(NodeId, u64), Registrations>,
    tracker: MinTracker,
    dirty: BTreeSet<NodeId>,
    membership_epoch: u64,
}

impl NetworkMap {
    /// A map holding only this node's own record.
    pub fn new(own: MemberRecord, now: Time) -> Self {
        let mut map = Self {
            me: own.id.clone(),
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            registrations: BTreeMap::new(),
            tracker: MinTracker::new(),
            dirty: BTreeSet::new(),
            membership_epoch: 0,
        };
        map.adopt(Arc::new(own), now);
        map
    }

    /// Merges a record received from anyone. See the module doc for the adoption rule.
    pub fn merge(&mut self, record: Arc<MemberRecord>, now: Time) -> MergeOutcome {
        if record.id == self.me {
            return MergeOutcome::AboutSelf;
        }
        if let Some(current) = self.members.get(&record.id) {
            if !record.supersedes(&current.record) {
                return MergeOutcome::Outdated;
            }
        }
        if !self.registrations_known(&record) {
            match self.pending.get(&record.id) {
                Some(waiting) if !record.supersedes(waiting) => {}
                _ => {
                    self.pending.insert(record.id.clone(), record);
                }
            }
            return MergeOutcome::Pending;
        }
        self.adopt(record, now);
        self.release_pending(now);
        MergeOutcome::Adopted
    }

    /// Issues this node's next record (its report): `report_seq` raised by one, `applied`
    /// as given, and `edit` applied to the rest (state, registrations). Only the member
    /// itself raises its `report_seq`; this is the one place where that happens.
    pub fn report_own(
        &mut self,
        applied: VersionVector,
        now: Time,
        edit: impl FnOnce(&mut MemberRecord),
    ) {
        let mut record = (*self.own().record).clone();
        record.report_seq += 1;
        record.applied = applied;
        edit(&mut record);
        debug_assert_eq!(record.id, self.me, "a report cannot change the node's id");
        self.adopt(Arc::new(record), now);
        self.release_pending(now);
    }

    /// Raises what `member` is known to have applied, entry by entry: O(changes · log N).
    /// Returns false when the member is unknown.
    pub fn apply_delta(&mut self, member: &NodeId, changes: &[(NodeId, u64)]) -> bool {
        let Some(entry) = self.members.get_mut(member) else {
            return false;
        };
        let counts = entry.record.state.counts();
        let record = Arc::make_mut(&mut entry.record);
        for (origin, seq) in changes {
            let old = record.applied.replace(origin, *seq);
            if *seq > old {
                if counts {
                    self.tracker.change(origin, old, *seq);
                }
            } else if *seq < old {
                // not a raise: put the known value back
                record.applied.replace(origin, old);
            }
        }
        self.dirty.insert(member.clone());
        true
    }

    fn registrations_known(&self, record: &MemberRecord) -> bool {
        if record.registrations == 0 {
            return true;
        }
        self.registrations
            .get(&(record.id.clone(), record.incarnation))
            .is_some_and(|r| r.contiguous >= record.registrations)
    }

    fn adopt(&mut self, record: Arc<MemberRecord>, now: Time) {
        if let Some(s) = &record.sponsor {
            self.registrations
                .entry((s.sponsor.clone(), s.sponsor_incarnation))
                .or_default()
                .insert(s.reg_no);
        }
        if self
            .pending
            .get(&record.id)
            .is_some_and(|p| !p.supersedes(&record))
        {
            self.pending.remove(&record.id);
        }
        let old = self.members.insert(
            record.id.clone(),
            MemberEntry {
                record: record.clone(),
                last_heard: now,
            },
        );
        let was_counted = old.as_ref().filter(|e| e.record.state.counts());
        if was_counted.is_some() != record.state.counts() {
            self.membership_epoch += 1;
        }
        match (was_counted, record.state.counts()) {
            (Some(old), true) => {
                for (origin, before, after) in old.record.applied.changes_to(&record.applied) {
                    self.tracker.change(&origin, before, after);
                }
            }
            (Some(old), false) => self.tracker.remove(&old.record.applied),
            (None, true) => self.tracker.add(&record.applied),
            (None, false) => {}
        }
        self.dirty.insert(record.id.clone());
    }

    fn release_pending(&mut self, now: Time) {
        loop {
            let ready: Vec<NodeId> = self
                .pending
                .iter()
                .filter(|(_, r)| self.registrations_known(r))
                .map(|(id, _)| id.clone())
                .collect();
            if ready.is_empty() {
                return;
            }
            for id in ready {
                let record = self.pending.remove(&id).expect("listed above");
                let newer = self
                    .members
                    .get(&id)
                    .is_none_or(|cur| record.supersedes(&cur.record));
                if newer {
                    self.adopt(record, now);
                }
            }
        }
    }

    /// The snapshot point: pointwise minimum of the applied vectors of counted members.
    pub fn snapshot_point(&self) -> &VersionVector {
        self.tracker.min()
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// This node's own entry.
    pub fn own(&self) -> &MemberEntry {
        self.members
            .get(&self.me)
            .expect("own record is always present")
    }

    pub fn get(&self, id: &NodeId) -> Option<&MemberEntry> {
        self.members.get(id)
    }

    /// Every known member, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &MemberEntry)> {
        self.members.iter()
    }

    /// Every record, in id order (what a sponsor hands a joiner).
    pub fn records(&self) -> Vec<Arc<MemberRecord>> {
        self.members.values().map(|e| e.record.clone()).collect()
    }

    /// Members in good standing (counted in the snapshot point), this node included.
    pub fn counted(&self) -> usize {
        self.tracker.len()
    }

    /// Raised whenever a member enters or leaves good standing.
    pub fn membership_epoch(&self) -> u64 {
        self.membership_epoch
    }

    /// Members in good standing other than this node, in id order.
    pub fn counted_peers(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(id, e)| **id != self.me && e.record.state.counts())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether `id` is a member in good standing.
    pub fn is_counted(&self, id: &NodeId) -> bool {
        self.members
            .get(id)
            .is_some_and(|e| e.record.state.counts())
    }

    /// Members known in any state.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Records waiting for registrations this node has not seen yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Records adopted since the last call (what a status report should relay), in id order.
    pub fn take_dirty(&mut self) -> Vec<Arc<MemberRecord>> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|id| self.members.get(&id).map(|e| e.record.clone()))
            .collect()
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// (member, incarnation, report_seq) of every entry: the map's anti-entropy digest.
    pub fn versions(&self) -> Vec<(NodeId, u64, u64)> {
        self.members
            .iter()
            .map(|(id, e)| (id.clone(), e.record.incarnation, e.record.report_seq))
            .collect()
    }

    /// Records newer than, or missing from, a peer's digest (both lists in id order).
    pub fn newer_than(&self, digest: &[(NodeId, u64, u64)]) -> Vec<Arc<MemberRecord>> {
        let theirs: BTreeMap<&NodeId, (u64, u64)> = digest
            .iter()
            .map(|(id, inc, seq)| (id, (*inc, *seq)))
            .collect();
        self.members
            .iter()
            .filter(|(id, e)| theirs.get(id).is_none_or(|v| e.record.version() > *v))
            .map(|(_, e)| e.record.clone())
            .collect()
    }

    /// Whether a peer's digest names a record newer than ours (or one we lack).
    pub fn behind(&self, digest: &[(NodeId, u64, u64)]) -> bool {
        digest.iter().any(|(id, inc, seq)| {
            self.members
                .get(id)
                .is_none_or(|e| (*inc, *seq) > e.record.version())
                && self
                    .pending
                    .get(id)
                    .is_none_or(|p| (*inc, *seq) > p.version())
        })
    }
}

#[cfg(test)]
mod tests;
