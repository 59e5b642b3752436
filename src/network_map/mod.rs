//! The network map `M(n)`: for every member this node knows, the member's latest record —
//! membership state, incarnation, sponsor, and the best known lower bound of its applied
//! vector — and, derived from it incrementally, the snapshot point `SP(n)`.
//!
//! Records are versioned by [`RecordVersion`]: (incarnation, report_seq, rank). Only the
//! member itself raises its report_seq; a sponsor's registration of a joiner is report 0 of
//! the joiner's incarnation. Other nodes issue two kinds of records about a member: a
//! `Suspect` copy of its latest report (same report_seq, higher rank, so the member's next
//! report refutes it) and an `Evicted` record, which outranks every record of that
//! incarnation and is therefore final for it. Records are immutable and shared (`Arc`), so
//! relaying one costs a pointer copy.
//!
//! Join safety (SPEC §4, the join race): a member's record states how many joiners it has
//! registered in its incarnation (`registrations`). A record is adopted only once every one
//! of those registrations is known here; until then it waits in `pending`. So this map never
//! holds a sponsor's applied vector newer than a registration without also counting the
//! joiner, whose registered cut bounds the snapshot point from above.
//!
//! Admission check: a record that starts a membership this map did not know (a new member,
//! or a new incarnation) is counted only if its applied vector is at or above this map's
//! snapshot point. Otherwise counting it would lower the snapshot point (I2): it can only be
//! a member registered by a sponsor this map has already evicted or replaced, and this map
//! evicts it on arrival. In a network without evictions this never fires (the join
//! argument in `join_protocol` shows every join cut is at or above every snapshot point).
//!
//! Pure state machine: no I/O, no clocks (time is passed in), iteration in key order only.

pub mod aggregation;
pub mod membership;
mod min_tracker;
pub mod monitor;
pub mod probes;
pub mod view;
pub mod view_policy;

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

/// The order of records about the same member: (incarnation, report_seq, rank). Rank 0
/// is the member's own report (`Alive`, `Left`), rank 1 another node's suspicion of that
/// report. An `Evicted` record has version (incarnation, `u64::MAX`, registrations): it
/// outranks every record of its incarnation, and of two evictions the one that accounts
/// for more registrations wins.
pub type RecordVersion = (u64, u64, u64);

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
    /// The member's last failure check heard from at most half of the members it counts
    /// (it is isolated: [`monitor::Monitor::is_isolated`]). A member that others hear but
    /// that says so for `suspicion_timeout` cannot hear the network (a one-way partition):
    /// the view evicts it rather than count it forever.
    #[serde(default)]
    pub cut_off: bool,
}

/// A change of another member's standing that a map adopted (see
/// [`NetworkMap::take_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub id: NodeId,
    /// The membership the change is about.
    pub incarnation: u64,
    pub change: Standing,
}

/// What changed of a member's standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A membership this map did not know, in good standing.
    Joined,
    /// A new membership of a node this map knew under an earlier one.
    Rejoined,
    /// Suspected of having failed.
    Suspected,
    /// A suspicion refuted by the member's next report.
    Refuted,
    /// The member left gracefully.
    Left,
    /// The membership was evicted.
    Evicted,
}

impl Standing {
    /// The change from `before` (the incarnation and state held, if any) to `record`.
    fn change(before: Option<(u64, MemberState)>, record: &MemberRecord) -> Option<Self> {
        use MemberState::*;
        let same = before.filter(|(incarnation, _)| *incarnation == record.incarnation);
        match (before, same.map(|(_, state)| state), record.state) {
            (_, Some(Alive), Suspect) => Some(Standing::Suspected),
            (_, Some(Suspect), Alive) => Some(Standing::Refuted),
            (_, Some(Left), Left) | (_, Some(Evicted), Evicted) => None,
            (_, Some(_), Left) => Some(Standing::Left),
            (_, Some(_), Evicted) => Some(Standing::Evicted),
            (_, Some(_), _) => None,
            // a membership this map sees for the first time
            (_, None, Left) => Some(Standing::Left),
            (_, None, Evicted) => Some(Standing::Evicted),
            (None, None, _) => Some(Standing::Joined),
            (Some(_), None, _) => Some(Standing::Rejoined),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Joined => "joined",
            Standing::Rejoined => "rejoined",
            Standing::Suspected => "suspected",
            Standing::Refuted => "no longer suspected",
            Standing::Left => "left",
            Standing::Evicted => "evicted",
        }
    }
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
            cut_off: false,
        }
    }

    /// The version order of records about the same member (see [`RecordVersion`]).
    pub fn version(&self) -> RecordVersion {
        match self.state {
            MemberState::Alive | MemberState::Left => (self.incarnation, self.report_seq, 0),
            MemberState::Suspect => (self.incarnation, self.report_seq, 1),
            MemberState::Evicted => (self.incarnation, u64::MAX, self.registrations),
        }
    }

    /// Whether this record is a report made by the member itself (proof it was alive).
    pub fn is_own_report(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Left)
    }

    pub fn supersedes(&self, other: &MemberRecord) -> bool {
        self.version() > other.version()
    }
}

/// A known member: its latest adopted record, when this node last had news from it, and
/// since when it is suspected.
#[derive(Clone, Debug)]
pub struct MemberEntry {
    pub record: Arc<MemberRecord>,
    /// When a new report of the member was adopted, or a message from it arrived.
    pub last_heard: Time,
    /// What only some entries hold, boxed: a map holds an entry per member, and with these
    /// inline an entry was three times the size.
    rare: Option<Box<RareFields>>,
}

/// The fields of a [`MemberEntry`] that most entries do not have.
#[derive(Clone, Debug, Default)]
struct RareFields {
    suspect_since: Option<Time>,
    cut_off_since: Option<Time>,
    heard_applied: VersionVector,
}

impl MemberEntry {
    fn new(
        record: Arc<MemberRecord>,
        last_heard: Time,
        suspect_since: Option<Time>,
        cut_off_since: Option<Time>,
        heard_applied: VersionVector,
    ) -> Self {
        let any = suspect_since.is_some() || cut_off_since.is_some() || !heard_applied.is_empty();
        let rare = any.then(|| {
            Box::new(RareFields {
                suspect_since,
                cut_off_since,
                heard_applied,
            })
        });
        Self {
            record,
            last_heard,
            rare,
        }
    }

    /// When this node adopted a suspicion of the member's current report.
    pub fn suspect_since(&self) -> Option<Time> {
        self.rare.as_ref().and_then(|r| r.suspect_since)
    }

    /// Since when the member's records of its current incarnation say it is cut off
    /// ([`MemberRecord::cut_off`]), without a break.
    pub fn cut_off_since(&self) -> Option<Time> {
        self.rare.as_ref().and_then(|r| r.cut_off_since)
    }

    /// The largest applied vector the member itself sent this node (in its digests), if
    /// any: a lower bound of its applied vector that its record, re-issued only when its
    /// standing changes, may lag. Only the write concern reads it.
    pub fn heard_applied(&self) -> Option<&VersionVector> {
        self.rare.as_ref().map(|r| &r.heard_applied)
    }
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
    /// Returns whether the registration was news.
    fn insert(&mut self, reg_no: u64) -> bool {
        if reg_no <= self.contiguous || !self.beyond.insert(reg_no) {
            return false;
        }
        while self.beyond.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }
}

/// The hash of one (member, record version) that [`NetworkMap::fingerprint`] sums.
fn version_hash(id: &NodeId, (a, b, c): RecordVersion) -> u64 {
    let mut h = crate::fnv::fnv1a(0, id.as_bytes());
    for part in [a, b, c] {
        h = (h ^ part).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    h ^ (h >> 32)
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
    /// Raised whenever a record is adopted (see [`NetworkMap::records_generation`]).
    records_generation: u64,
    /// [`NetworkMap::fingerprint`], kept up to date by every adoption.
    fingerprint: u64,
    /// Off while a joiner loads its sponsor's map (see [`NetworkMap::load`]).
    admission_check: bool,
    /// Off for good when the simulator plants `PlantedBug::NoAdmissionCheck`.
    admission_planted_off: bool,
    /// The snapshot point the admission check compares with, when something other than
    /// this map decides it (the aggregated snapshot point); `None`: this map's minimum.
    admission_floor: Option<VersionVector>,
    /// Whether this node's failure detector finds it cut off: its next report says so.
    cut_off: bool,
    /// (member, incarnation) of every eviction adopted since the last `take_evictions`.
    evictions: Vec<(NodeId, u64)>,
    /// Changes of other members' standing adopted since the last `take_changes`.
    changes: Vec<MemberChange>,
    /// Memberships this map evicted on arrival (admission check), in total.
    evicted_on_arrival: u64,
    /// Registration records superseded by a newer incarnation of their joiner, by sponsor
    /// membership: the evidence that lets other maps count those registrations as known.
    /// Sent along with the sponsor's records (see `with_evidence`).
    evidence: BTreeMap<(NodeId, u64), Vec<Arc<MemberRecord>>>,
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
            records_generation: 0,
            fingerprint: 0,
            admission_check: true,
            admission_planted_off: false,
            admission_floor: None,
            cut_off: false,
            evictions: Vec::new(),
            changes: Vec::new(),
            evicted_on_arrival: 0,
            evidence: BTreeMap::new(),
        };
        map.adopt(Arc::new(own), now);
        map
    }

    /// A joiner's map: its own record plus every record its sponsor handed over. The
    /// sponsor's map is consistent, so the admission check is off while loading it (a map
    /// that knows only the joiner would otherwise see every older member as below it).
    pub fn load(own: MemberRecord, records: Vec<Arc<MemberRecord>>, now: Time) -> Self {
        let mut map = Self::new(own, now);
        map.admission_check = false;
        for record in records {
            map.merge(record, now);
        }
        map.admission_check = true;
        map.evictions.clear();
        map.changes.clear();
        map.compact();
        map
    }

    /// Packs the member table after a bulk load. Records merged one by one in id order
    /// leave its B-tree's nodes about half full; rebuilt from the sorted entries they are
    /// full, which at a thousand members and more is most of a node's memory.
    pub fn compact(&mut self) {
        self.members = std::mem::take(&mut self.members).into_iter().collect();
    }

    /// The snapshot point the admission check compares a new membership's record with,
    /// when something other than this map decides it (see [`NetworkMap::merge`]).
    pub fn set_admission_floor(&mut self, floor: Option<VersionVector>) {
        self.admission_floor = floor;
    }

    /// Plants a bug of the simulator's oracle tests (only `NoAdmissionCheck` concerns the
    /// map); `None` removes it.
    pub fn plant(&mut self, bug: Option<crate::replica::PlantedBug>) {
        self.admission_planted_off = bug == Some(crate::replica::PlantedBug::NoAdmissionCheck);
    }

    /// Merges a record received from anyone. See the module doc for the adoption rule.
    pub fn merge(&mut self, record: Arc<MemberRecord>, now: Time) -> MergeOutcome {
        if let Some(current) = self.members.get(&record.id) {
            if record.id == self.me || !record.supersedes(&current.record) {
                // A registration superseded by a newer incarnation of its joiner (this
                // node's own earlier memberships included) is still a registration its
                // sponsor's records count: note it, or they would wait for it forever.
                if record.incarnation < current.record.incarnation {
                    if let Some(s) = &record.sponsor {
                        if self.note_registration(s) {
                            self.keep_evidence(record.clone());
                            self.release_pending(now);
                        }
                    }
                }
                return if record.id == self.me {
                    MergeOutcome::AboutSelf
                } else {
                    MergeOutcome::Outdated
                };
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
        record.cut_off = self.cut_off;
        edit(&mut record);
        debug_assert_eq!(record.id, self.me, "a report cannot change the node's id");
        self.adopt(Arc::new(record), now);
        self.release_pending(now);
    }

    /// Raises what `member` is known to have applied, entry by entry: O(changes · log N).
    /// Returns false when the member is unknown. Another member's record is then relayed
    /// by the next status report; this node's own is not until it reports (`report_own`).
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
        // the own record reaches others only as a report (`report_own`)
        if *member != self.me {
            self.dirty.insert(member.clone());
        }
        true
    }

    /// Takes `member` off the records the next status report relays: its record reached
    /// every member by another way (a published batch).
    pub fn forget_dirty(&mut self, member: &NodeId) {
        self.dirty.remove(member);
    }

    /// `member` itself said it applied `applied` (its digest).
    pub fn note_applied(&mut self, member: &NodeId, applied: &VersionVector) {
        if let Some(entry) = self.members.get_mut(member) {
            if entry.heard_applied().is_none_or(|heard| !applied.le(heard)) && !applied.is_empty() {
                let rare = entry.rare.get_or_insert_with(Default::default);
                rare.heard_applied.join(applied);
            }
        }
    }

    /// Notes news from `member` that carries no record (a direct message).
    pub fn heard_from(&mut self, member: &NodeId, now: Time) {
        if let Some(entry) = self.members.get_mut(member) {
            entry.last_heard = entry.last_heard.max(now);
        }
    }

    /// Issues a suspicion of `member`'s current report; false if the member is unknown,
    /// this node, or not `Alive`. The member refutes it with its next report.
    pub fn suspect(&mut self, member: &NodeId, now: Time) -> bool {
        match self.members.get(member) {
            Some(e) if *member != self.me && e.record.state == MemberState::Alive => {
                let record = MemberRecord {
                    state: MemberState::Suspect,
                    ..(*e.record).clone()
                };
                self.adopt(Arc::new(record), now);
                true
            }
            _ => false,
        }
    }

    /// Issues the eviction of `member`'s current incarnation; false if the member is
    /// unknown, this node, or not in good standing. The record accounts for every
    /// registration of that incarnation this node knows, so registrations it names are
    /// known wherever it is adopted, and any later one is voided by the admission check.
    pub fn evict(&mut self, member: &NodeId, now: Time) -> bool {
        match self.members.get(member) {
            Some(e) if *member != self.me && e.record.state.counts() => {
                let known = self.known_registrations(member, e.record.incarnation);
                let record = MemberRecord {
                    state: MemberState::Evicted,
                    registrations: e.record.registrations.max(known),
                    ..(*e.record).clone()
                };
                self.adopt(Arc::new(record), now);
                self.release_pending(now);
                true
            }
            _ => false,
        }
    }

    /// Evicts a membership that an agreed view removed (see [`view::Eviction`]). The
    /// record accounts for at least the registrations the proposer knew; it waits, like
    /// any record, until they are known here. False if this map does not hold that
    /// membership in good standing (it may hold a newer one, or not know it yet: the
    /// eviction then reaches it as a record).
    pub fn evict_decided(&mut self, eviction: &view::Eviction, now: Time) -> bool {
        match self.members.get(&eviction.id) {
            Some(e)
                if eviction.id != self.me
                    && e.record.incarnation == eviction.incarnation
                    && e.record.state.counts() =>
            {
                let known = self.known_registrations(&eviction.id, eviction.incarnation);
                let record = MemberRecord {
                    state: MemberState::Evicted,
                    registrations: e
                        .record
                        .registrations
                        .max(known)
                        .max(eviction.registrations),
                    ..(*e.record).clone()
                };
                self.merge(Arc::new(record), now) != MergeOutcome::Outdated
            }
            _ => false,
        }
    }

    /// (member, incarnation) of every eviction adopted since the last call, in order.
    pub fn take_evictions(&mut self) -> Vec<(NodeId, u64)> {
        std::mem::take(&mut self.evictions)
    }

    /// Every change of another member's standing this map adopted since the last call, in
    /// order (a loaded map starts with none: what it loaded is its starting view).
    pub fn take_changes(&mut self) -> Vec<MemberChange> {
        std::mem::take(&mut self.changes)
    }

    /// Memberships this map evicted on arrival because they were below its snapshot point.
    pub fn evicted_on_arrival(&self) -> u64 {
        self.evicted_on_arrival
    }

    /// How many joiners of `sponsor`'s incarnation `incarnation` this map knows, counting
    /// from the first without a gap.
    pub fn known_registrations(&self, sponsor: &NodeId, incarnation: u64) -> u64 {
        self.registrations
            .get(&(sponsor.clone(), incarnation))
            .map_or(0, |r| r.contiguous)
    }

    fn registrations_known(&self, record: &MemberRecord) -> bool {
        if record.registrations == 0 {
            return true;
        }
        self.known_registrations(&record.id, record.incarnation) >= record.registrations
    }

    /// Notes a registration; true if it was news.
    fn note_registration(&mut self, s: &Sponsorship) -> bool {
        self.registrations
            .entry((s.sponsor.clone(), s.sponsor_incarnation))
            .or_default()
            .insert(s.reg_no)
    }

    fn keep_evidence(&mut self, record: Arc<MemberRecord>) {
        if let Some(s) = &record.sponsor {
            let kept = self
                .evidence
                .entry((s.sponsor.clone(), s.sponsor_incarnation))
                .or_default();
            let reg_no = s.reg_no;
            if !kept
                .iter()
                .any(|r| r.sponsor.as_ref().is_some_and(|k| k.reg_no == reg_no))
            {
                kept.push(record);
            }
        }
    }

    /// `records` followed by the evidence of the registrations they count.
    fn with_evidence(&self, mut records: Vec<Arc<MemberRecord>>) -> Vec<Arc<MemberRecord>> {
        if self.evidence.is_empty() {
            return records;
        }
        let mut extra = Vec::new();
        for r in &records {
            if let Some(kept) = self.evidence.get(&(r.id.clone(), r.incarnation)) {
                extra.extend(kept.iter().cloned());
            }
        }
        records.extend(extra);
        records
    }

    fn adopt(&mut self, mut record: Arc<MemberRecord>, now: Time) {
        self.records_generation += 1;
        if let Some(s) = record.sponsor.clone() {
            self.note_registration(&s);
        }
        if let Some(old) = self.members.get(&record.id) {
            if old.record.incarnation < record.incarnation && old.record.sponsor.is_some() {
                let old = old.record.clone();
                self.keep_evidence(old);
            }
        }
        if self
            .pending
            .get(&record.id)
            .is_some_and(|p| !p.supersedes(&record))
        {
            self.pending.remove(&record.id);
        }
        let old = self.members.get(&record.id);
        let new_membership = old.is_none_or(|e| e.record.incarnation < record.incarnation);
        if let Some(old) = old.filter(|_| !new_membership) {
            // Within one membership a member's applied vector only grows, so two records
            // of it are two lower bounds and their join is one too. Keeping the join means
            // a newer record that carries an older bound (a suspicion copied from an
            // earlier copy of the same report, say) never lowers the snapshot point.
            if !old.record.applied.le(&record.applied) {
                let mut applied = record.applied.clone();
                applied.join(&old.record.applied);
                record = Arc::new(MemberRecord {
                    applied,
                    ..(*record).clone()
                });
            }
        }
        if self.admission_check
            && !self.admission_planted_off
            && new_membership
            && record.state.counts()
            && !self
                .admission_floor
                .as_ref()
                .unwrap_or(self.tracker.min())
                .le(&record.applied)
        {
            record = Arc::new(MemberRecord {
                state: MemberState::Evicted,
                ..(*record).clone()
            });
            self.evicted_on_arrival += 1;
        }
        let fresh_report = record.is_own_report()
            && old.is_none_or(|e| {
                (record.incarnation, record.report_seq)
                    > (e.record.incarnation, e.record.report_seq)
            });
        let last_heard = match old {
            Some(e) if !fresh_report => e.last_heard,
            _ => now,
        };
        let suspect_since = match (record.state, old) {
            (MemberState::Suspect, Some(e)) if e.record.state == MemberState::Suspect => {
                e.suspect_since()
            }
            (MemberState::Suspect, _) => Some(now),
            _ => None,
        };
        let cut_off_since = match old {
            _ if !record.cut_off => None,
            Some(e) if e.record.incarnation == record.incarnation => {
                e.cut_off_since().or(Some(now))
            }
            _ => Some(now),
        };
        if record.state == MemberState::Evicted && record.id != self.me {
            self.evictions.push((record.id.clone(), record.incarnation));
        }
        if record.id != self.me {
            let before = old.map(|e| (e.record.incarnation, e.record.state));
            if let Some(change) = Standing::change(before, &record) {
                self.changes.push(MemberChange {
                    id: record.id.clone(),
                    incarnation: record.incarnation,
                    change,
                });
            }
        }
        let old = self.members.insert(
            record.id.clone(),
            MemberEntry::new(
                record.clone(),
                last_heard,
                suspect_since,
                cut_off_since,
                old.and_then(|e| e.heard_applied().cloned())
                    .unwrap_or_default(),
            ),
        );
        if let Some(old) = &old {
            let gone = version_hash(&old.record.id, old.record.version());
            self.fingerprint = self.fingerprint.wrapping_sub(gone);
        }
        let added = version_hash(&record.id, record.version());
        self.fingerprint = self.fingerprint.wrapping_add(added);
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
        let records = self.members.values().map(|e| e.record.clone()).collect();
        self.with_evidence(records)
    }

    /// Notes whether this node's failure detector finds it cut off; its next report says
    /// so ([`MemberRecord::cut_off`]).
    pub fn note_cut_off(&mut self, cut_off: bool) {
        self.cut_off = cut_off;
    }

    /// Members in good standing (counted in the snapshot point), this node included.
    pub fn counted(&self) -> usize {
        self.tracker.len()
    }

    /// Raised whenever a record is adopted: what the members' records say (incarnation,
    /// state, report sequence, registrations, cut off) is the same as long as it is.
    /// Applied vectors raised in place ([`NetworkMap::apply_delta`]) and news without a
    /// record ([`NetworkMap::heard_from`]) do not raise it.
    pub fn records_generation(&self) -> u64 {
        self.records_generation
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

    /// The record of `id` waiting for registrations this node has not seen yet, if any.
    pub fn pending_record(&self, id: &NodeId) -> Option<&Arc<MemberRecord>> {
        self.pending.get(id)
    }

    /// Records waiting for registrations this node has not seen yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Records adopted since the last call (what a status report should relay), in id order.
    pub fn take_dirty(&mut self) -> Vec<Arc<MemberRecord>> {
        let dirty = std::mem::take(&mut self.dirty);
        let records = dirty
            .into_iter()
            .filter_map(|id| self.members.get(&id).map(|e| e.record.clone()))
            .collect();
        self.with_evidence(records)
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// (member, version) of every entry: the map's anti-entropy digest.
    pub fn versions(&self) -> Vec<(NodeId, RecordVersion)> {
        self.members
            .iter()
            .map(|(id, e)| (id.clone(), e.record.version()))
            .collect()
    }

    /// A 64-bit fingerprint of [`NetworkMap::versions`]: the sum (mod 2⁶⁴) of a hash of
    /// each (member, record version). Two maps that hold the same versions have the same
    /// fingerprint, whatever order they learned them in. Part of the protocol. Kept as
    /// records are adopted (a sum: the old version's hash out, the new one's in), so it
    /// costs nothing to read.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Records newer than, or missing from, a peer's digest (both lists in id order).
    pub fn newer_than(&self, digest: &[(NodeId, RecordVersion)]) -> Vec<Arc<MemberRecord>> {
        let theirs: BTreeMap<&NodeId, RecordVersion> =
            digest.iter().map(|(id, v)| (id, *v)).collect();
        let records = self
            .members
            .iter()
            .filter(|(id, e)| theirs.get(id).is_none_or(|v| e.record.version() > *v))
            .map(|(_, e)| e.record.clone())
            .collect();
        self.with_evidence(records)
    }

    /// Whether a peer's digest names a record newer than ours (or one we lack).
    pub fn behind(&self, digest: &[(NodeId, RecordVersion)]) -> bool {
        digest.iter().any(|(id, v)| {
            self.members.get(id).is_none_or(|e| *v > e.record.version())
                && self.pending.get(id).is_none_or(|p| *v > p.version())
        })
    }
}

#[cfg(test)]
mod tests;
