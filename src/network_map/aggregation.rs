//! Aggregation of the snapshot point: members report their applied vectors to a few
//! aggregators instead of to everyone, aggregators combine them, and every member takes the
//! largest snapshot point it can prove covers the whole view.
//!
//! **Layout** ([`Layout`]). The members of an agreed view are split into groups by a hash of
//! (node id, view epoch); a group holds about `2√N` members (at least `min_group_size`,
//! 128: smaller networks are one group, and a change travels two hops, not three).
//! Each group has `aggregators_per_group` (r ≥ 2) aggregators: its members of lowest
//! aggregator hash, topped up from the whole view when the group is smaller than r. Every
//! node computes the same layout from the same view, so nothing is elected.
//!
//! **The flow.** A member sends its *contribution* — its applied vector, lowered to the cut
//! of every joiner it registered that the view has not admitted yet — to its group's
//! aggregators: the entries that changed since its last one, coalesced over
//! `report_delay`, to the group's first aggregator, and the whole vector every `heartbeat`
//! to all of them. Changes travel only through first aggregators (contributions, group
//! minimums, pushes); the others take part once a heartbeat and so stand in, at heartbeat
//! pace, for a first aggregator that fails. An aggregator keeps, per member,
//! the pointwise maximum of the entries it received. Once it holds a contribution of every
//! member of a group it aggregates, it sends the group's minimum, with the group's cover
//! ([`Cover`]), to the aggregators of every group. Once it holds a minimum of every group of
//! the epoch, it pushes their minimum — a snapshot point — with the sum of their covers to
//! the members of its groups (and to the joiners that contribute to it). A member keeps the
//! pointwise maximum of the snapshot points it receives whose cover equals its view's.
//! At a new view every aggregator hands what it held of each member to that member's new
//! aggregators (`Handoff`), and so does each group's *witness* ([`Layout::witness`]) with
//! the aggregators' own whole contributions, which it alone keeps besides them: a member
//! that crashed sends nothing more, and the new groups need its last contribution until a
//! view evicts it.
//!
//! **Liveness** (with `liveness`). An aggregator notes when each member of its groups last
//! contributed; once a heartbeat it sends every other aggregator its groups' `Liveness`
//! (the members silent for `silence`), and pushes `Heard` — the fresh liveness of every
//! group — to its members. A member counts the members `Heard` does not name silent as
//! heard, and is *covered* ([`Aggregation::covered`]) while the newest `Heard` it got
//! covered every group: then it need not flood its own heartbeat. When both aggregators of
//! a group are down no `Heard` covers that group, and every member floods again.
//!
//! **Why it is safe** (each rule is checked by the simulator's invariants):
//! - *Monotone inputs.* Every entry a member sends is a past value of its own contribution,
//!   which only grows within a membership; the pointwise maximum of such entries is
//!   therefore at most the member's current applied vector. A contribution carries the
//!   epoch of its sender's view, and an aggregator uses it only at that epoch or a later
//!   one: a sponsor stops covering a joiner once it installs the view that admits it, and
//!   a view before that one does not count the joiner.
//! - *Joiner cover.* From the moment a sponsor registers a joiner at cut J (its own applied
//!   vector then) until a view admits the joiner, the sponsor's contribution is at most J.
//!   Contributions made before the registration are at most J too, since the applied vector
//!   only grows. So every aggregate that counts the sponsor is at most J ≤ A(joiner).
//! - *Final removals only.* A group's members are those of the agreed view: a member leaves
//!   every aggregate only once a decided view has removed it.
//! - *Completeness certificate.* A snapshot point carries its epoch, the number of members
//!   it covers and the sum (mod 2⁶⁴) of their membership hashes. A member accepts it only
//!   when both equal its installed view's, so it never takes a minimum that skipped a member.
//!   The pointwise maximum of two snapshot points that are each at most every member's
//!   applied vector is at most it too, so taking the maximum is safe — and it hides the
//!   failure of one aggregator behind the other r − 1.
//!
//! Pure state machine: no I/O, time passed in, iteration in key order only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::view::{Memberships, View};
use crate::node_id::NodeId;
use crate::time::Time;
use crate::version_vector::VersionVector;

/// Settings of aggregation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregationConfig {
    /// Aggregators of each group (r); at least 2, so that one failure hides behind another.
    pub aggregators_per_group: usize,
    /// Least members of a group: small networks have one group.
    pub min_group_size: usize,
    /// How long a member collects changes of its applied vector before it sends them, and
    /// an aggregator changes of its minimums.
    pub report_delay: Duration,
    /// Most time between two whole contributions of a member, and two pushes of an
    /// aggregator: what repairs a lost message.
    pub heartbeat: Duration,
    /// Whether aggregators also tell their members whom the view's aggregators hear
    /// (`Liveness`, `Heard`): how members learn that the others are alive without each
    /// flooding its own heartbeat to all (on where the aggregation decides).
    #[serde(default)]
    pub liveness: bool,
    /// A member none of whose contributions reached its aggregator for this long is named
    /// silent in the group's liveness (a little over one `heartbeat`: whole contributions
    /// go out once a heartbeat).
    #[serde(default = "default_silence")]
    pub silence: Duration,
}

fn default_silence() -> Duration {
    Duration::from_millis(1250)
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            aggregators_per_group: 2,
            min_group_size: 128,
            report_delay: Duration::from_millis(5),
            heartbeat: Duration::from_secs(1),
            liveness: false,
            silence: default_silence(),
        }
    }
}

/// A version vector whose origins are named by their 64-bit node key ([`NodeId::key`]),
/// as aggregation keeps and sends them: 8 bytes an origin instead of the whole id, and
/// integer comparisons. A node turns it back into a [`VersionVector`] with
/// [`KeyedVector::resolve`] against its own applied vector, which names every origin a
/// valid snapshot point of its can hold. (Two origins whose keys collide — a chance of
/// about 2⁻⁶⁴ a pair — would be taken for one.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyedVector(BTreeMap<u64, u64>);

impl KeyedVector {
    /// `vector` with its origins named by their keys.
    pub fn of(vector: &VersionVector) -> Self {
        KeyedVector(vector.iter().map(|(o, s)| (o.key(), s)).collect())
    }

    /// The entry of the origin with key `key` (0 when absent).
    pub fn get(&self, key: u64) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many origins it names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(k, s)| (*k, *s))
    }

    /// The sum of the entries.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Raises the entry of `key` to at least `seq`; whether it changed.
    fn raise(&mut self, key: u64, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        let entry = self.0.entry(key).or_insert(0);
        if seq > *entry {
            *entry = seq;
            true
        } else {
            false
        }
    }

    /// `self ≤ other` pointwise.
    pub fn le(&self, other: &KeyedVector) -> bool {
        self.iter().all(|(k, s)| s <= other.get(k))
    }

    /// Pointwise maximum.
    fn join(&mut self, other: &KeyedVector) {
        for (k, s) in other.iter() {
            self.raise(k, s);
        }
    }

    /// Pointwise minimum.
    fn meet(&self, other: &KeyedVector) -> KeyedVector {
        KeyedVector(
            self.iter()
                .filter_map(|(k, s)| {
                    let m = s.min(other.get(k));
                    (m > 0).then_some((k, m))
                })
                .collect(),
        )
    }

    /// This vector with its origins named again: for every origin of `known`, the entry of
    /// its key. An origin `known` lacks is left out (a lower vector, never a higher one).
    pub fn resolve(&self, known: &VersionVector) -> VersionVector {
        known
            .iter()
            .filter_map(|(origin, _)| {
                let seq = self.get(origin.key());
                (seq > 0).then(|| (origin.clone(), seq))
            })
            .collect()
    }
}

/// A completeness certificate: how many memberships an aggregate covers, and the sum (mod
/// 2⁶⁴) of their hashes. Covers of disjoint sets add up; a snapshot point is valid only if
/// its cover equals the view's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cover {
    #[serde(rename = "m")]
    pub members: u64,
    #[serde(rename = "h")]
    pub hash: u64,
}

impl Cover {
    /// The cover of one membership.
    pub fn of(id: &NodeId, incarnation: u64) -> Self {
        Cover {
            members: 1,
            hash: spread(id, incarnation, SALT_COVER),
        }
    }
}

impl std::ops::Add for Cover {
    type Output = Cover;

    /// The cover of two disjoint sets of memberships.
    fn add(self, other: Cover) -> Cover {
        Cover {
            members: self.members + other.members,
            hash: self.hash.wrapping_add(other.hash),
        }
    }
}

const SALT_GROUP: u64 = 0x67_726f_7570;
const SALT_AGGREGATOR: u64 = 0x61_6767_7265;
const SALT_COVER: u64 = 0x63_6f76_6572;

/// A 64-bit hash of (id, n, salt): FNV-1a over the id's bytes, then a SplitMix64 finish.
/// Part of the protocol: every node must compute the same layout.
fn spread(id: &NodeId, n: u64, salt: u64) -> u64 {
    let h = crate::fnv::fnv1a(salt, id.as_bytes());
    let mut z = h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The group `id` falls in at `epoch`, of `count`.
fn group_by_hash(id: &NodeId, epoch: u64, count: usize) -> usize {
    (spread(id, epoch, SALT_GROUP) % count as u64) as usize
}

/// The groups and aggregators of one view (see module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    epoch: u64,
    /// Members of each group, in id order.
    groups: Vec<Vec<NodeId>>,
    /// The view's memberships (shared with the view: a member's group is its hash's).
    members: Memberships,
    /// Aggregators of each group.
    aggregators: Vec<Vec<NodeId>>,
    /// Each group's cover, and the view's.
    group_covers: Vec<Cover>,
    cover: Cover,
    /// Every aggregator, in id order.
    all_aggregators: Vec<NodeId>,
}

impl Layout {
    pub fn new(view: &View, config: &AggregationConfig) -> Self {
        let n = view.members.len();
        let target = ((2.0 * (n as f64).sqrt()).ceil() as usize).max(config.min_group_size.max(1));
        let count = n.div_ceil(target).max(1);
        let mut groups = vec![Vec::new(); count];
        let mut group_covers = vec![Cover::default(); count];
        let mut cover = Cover::default();
        for (id, incarnation) in &view.members {
            let g = group_by_hash(id, view.epoch, count);
            groups[g].push(id.clone());
            let c = Cover::of(id, *incarnation);
            group_covers[g] = group_covers[g] + c;
            cover = cover + c;
        }
        let r = config.aggregators_per_group.max(1);
        // a group of fewer than r members borrows aggregators from the whole view, by rank
        let mut ranked: Vec<(u64, &NodeId)> = Vec::new();
        if groups.iter().any(|members| members.len() < r.min(n)) {
            ranked = view
                .members
                .keys()
                .map(|id| (spread(id, view.epoch, SALT_AGGREGATOR), id))
                .collect();
            ranked.sort();
        }
        let aggregators = groups
            .iter()
            .map(|members| {
                let mut own: Vec<(u64, &NodeId)> = members
                    .iter()
                    .map(|id| (spread(id, view.epoch, SALT_AGGREGATOR), id))
                    .collect();
                own.sort();
                let mut chosen: Vec<NodeId> =
                    own.iter().take(r).map(|(_, id)| (*id).clone()).collect();
                for (_, id) in &ranked {
                    if chosen.len() >= r.min(n) {
                        break;
                    }
                    if !chosen.contains(id) {
                        chosen.push((*id).clone());
                    }
                }
                chosen.sort();
                chosen
            })
            .collect::<Vec<Vec<NodeId>>>();
        let all_aggregators: BTreeSet<NodeId> = aggregators.iter().flatten().cloned().collect();
        // every node keeps a layout: no spare capacity
        for members in &mut groups {
            members.shrink_to_fit();
        }
        Layout {
            epoch: view.epoch,
            groups,
            members: view.members.clone(),
            aggregators,
            group_covers,
            cover,
            all_aggregators: all_aggregators.into_iter().collect(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many groups the view is split into.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn group_of(&self, id: &NodeId) -> Option<usize> {
        self.members
            .contains_key(id)
            .then(|| group_by_hash(id, self.epoch, self.groups.len()))
    }

    /// The incarnation at which the view holds `id`.
    pub fn incarnation_of(&self, id: &NodeId) -> Option<u64> {
        self.members.get(id).copied()
    }

    pub fn members(&self, group: usize) -> &[NodeId] {
        &self.groups[group]
    }

    /// How many groups the view is split into.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    pub fn aggregators(&self, group: usize) -> &[NodeId] {
        &self.aggregators[group]
    }

    /// The group's witness: its first member that does not aggregate it, if any. It keeps
    /// the aggregators' own whole contributions and hands them over at the next view, so
    /// that each is held by a node other than the group's aggregators.
    pub fn witness(&self, group: usize) -> Option<&NodeId> {
        let aggregators = &self.aggregators[group];
        self.groups[group]
            .iter()
            .find(|id| !aggregators.contains(id))
    }

    /// The aggregators a node sends its contribution to: its group's, or for a node outside
    /// the view (a joiner), those of the group its id hashes to.
    pub fn aggregators_for(&self, id: &NodeId) -> &[NodeId] {
        &self.aggregators[group_by_hash(id, self.epoch, self.groups.len())]
    }

    /// The groups `id` aggregates, in order.
    pub fn aggregated_by(&self, id: &NodeId) -> Vec<usize> {
        (0..self.groups.len())
            .filter(|g| self.aggregators[*g].contains(id))
            .collect()
    }

    /// Every aggregator of the view, in id order.
    pub fn all_aggregators(&self) -> &[NodeId] {
        &self.all_aggregators
    }

    pub fn group_cover(&self, group: usize) -> Cover {
        self.group_covers[group]
    }

    /// The cover of the whole view: what a valid snapshot point carries.
    pub fn cover(&self) -> Cover {
        self.cover
    }
}

/// What aggregation sends (see module doc). Variants and fields go on the wire under short
/// names (docs/PROTOCOL.md), as records and ops do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggregateMessage {
    /// A member's contribution, to its aggregators: the entries that changed since its
    /// last one, or all of them (`whole`). Carries the sender's membership.
    #[serde(rename = "c")]
    Contribution {
        #[serde(rename = "e")]
        epoch: u64,
        #[serde(rename = "i")]
        incarnation: u64,
        #[serde(rename = "w")]
        whole: bool,
        /// (origin key, seq).
        #[serde(rename = "x")]
        entries: Vec<(u64, u64)>,
    },
    /// A group's minimum at `epoch`, from one of its aggregators to every aggregator.
    #[serde(rename = "g")]
    GroupMinimum {
        #[serde(rename = "e")]
        epoch: u64,
        #[serde(rename = "g")]
        group: u32,
        #[serde(rename = "m")]
        minimum: KeyedVector,
        #[serde(rename = "c")]
        cover: Cover,
    },
    /// At a new view (`epoch`), from an aggregator of the view before to the new
    /// aggregators of the members it held, and from a group's witness to those of the
    /// aggregators whose contributions it kept: (member, incarnation, its input). A member
    /// that crashed before the view changed sends nothing more; without its input the new
    /// groups could not be complete until a view evicts it. A receiver that has not
    /// installed `epoch` yet holds the inputs until it does: under its older layout it
    /// would not aggregate most of those members, and would drop them.
    #[serde(rename = "h")]
    Handoff {
        #[serde(rename = "e")]
        epoch: u64,
        #[serde(rename = "in")]
        inputs: Vec<(NodeId, u64, KeyedVector)>,
    },
    /// A snapshot point at `epoch`, from an aggregator to the members of its groups: the
    /// entries that rose since its last push, or all of them at a heartbeat.
    #[serde(rename = "s")]
    SnapshotPoint {
        #[serde(rename = "e")]
        epoch: u64,
        #[serde(rename = "s")]
        snapshot_point: KeyedVector,
        #[serde(rename = "c")]
        cover: Cover,
    },
    /// A group's liveness at `epoch`, from one of its aggregators to every aggregator once
    /// a heartbeat (and at once at a new view): the members, by their place in the group
    /// (id order), none of whose contributions reached it for `silence`.
    #[serde(rename = "l")]
    Liveness {
        #[serde(rename = "e")]
        epoch: u64,
        #[serde(rename = "g")]
        group: u32,
        #[serde(rename = "q")]
        silent: Vec<u32>,
    },
    /// From an aggregator to the members of its groups and its joiners, once a heartbeat:
    /// the liveness of every group it holds a fresh one of (its own groups' it makes).
    #[serde(rename = "hd")]
    Heard {
        #[serde(rename = "e")]
        epoch: u64,
        #[serde(rename = "gs")]
        groups: Vec<(u32, Vec<u32>)>,
    },
}

/// A message to send: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub message: Arc<AggregateMessage>,
}

/// What a received aggregation message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Taken into account.
    Taken,
    /// The node's snapshot point rose.
    SnapshotPointRose,
    /// Not for this node's view or role (another epoch, a group it does not aggregate, a
    /// sender that is not a member): dropped.
    Ignored,
    /// A snapshot point whose cover is not the view's: dropped and counted.
    IncompleteCover,
}

/// A contribution held for a view this node has not installed yet (see `ahead`).
#[derive(Clone, Debug)]
struct Ahead {
    epoch: u64,
    vector: KeyedVector,
    contributed_at: Option<Time>,
}

/// One node's part in aggregation: as a member (its contribution and the snapshot point it
/// accepted) and, when the layout makes it one, as an aggregator.
#[derive(Clone, Debug)]
pub struct Aggregation {
    me: NodeId,
    incarnation: u64,
    config: AggregationConfig,
    layout: Layout,
    /// The contribution to send (see [`Aggregation::set_contribution`]), the one last sent,
    /// and when the last whole one went out.
    current_source: VersionVector,
    current: KeyedVector,
    sent: KeyedVector,
    last_whole: Option<Time>,
    /// When the next contribution goes out (`None`: nothing changed).
    contribute_at: Option<Time>,
    /// The largest valid snapshot point received for the installed view, and how often
    /// it changed.
    snapshot_point: KeyedVector,
    generation: u64,
    /// As an aggregator: every view member's contribution received (by id, with its
    /// incarnation), kept across views for the members that stay.
    inputs: BTreeMap<NodeId, (u64, KeyedVector)>,
    /// As the witness of its group: the aggregators' own whole contributions (by id, with
    /// their incarnation), handed over at the next view like inputs. Without a third
    /// holder, an aggregator that crashed after the other aggregator of its group took its
    /// own contribution with it, and the new groups stayed incomplete until a view evicted
    /// it too.
    witnessed: BTreeMap<NodeId, (u64, KeyedVector)>,
    /// As an aggregator: contributions made at an epoch this node has not installed yet,
    /// by (id, incarnation), with their epoch and when the member itself last sent one
    /// (not a handoff): taken in when it installs that epoch.
    ahead: BTreeMap<(NodeId, u64), Ahead>,
    /// Snapshot points pushed for a view this node has not installed yet (the newest such
    /// epoch, its cover, and the join of what came): taken once it installs that view. A
    /// push between heartbeats carries only what rose, so a node that dropped the first
    /// push of a view would otherwise wait for the next whole one.
    ahead_snapshot_point: Option<(u64, Cover, KeyedVector)>,
    /// As an aggregator: the newest minimum of each group at the layout's epoch.
    minimums: BTreeMap<usize, (KeyedVector, Cover)>,
    /// As an aggregator: joiners outside the view that contribute, and when they last did.
    subscribers: BTreeMap<NodeId, Time>,
    /// As an aggregator: the groups whose minimum changed, the snapshot point last
    /// pushed, when the last heartbeat (whole minimums and a whole push) was, and when the
    /// next send of changes is due.
    changed_groups: BTreeSet<usize>,
    pushed: Option<KeyedVector>,
    last_push: Option<Time>,
    aggregate_at: Option<Time>,
    outgoing: Vec<Outgoing>,
    incomplete_covers: u64,
    /// The simulator's planted bug: group minimums leave the group's first member out.
    skips_a_member: bool,
    /// The groups this node aggregates in the layout, in order.
    my_groups: Vec<usize>,
    /// Whether the layout places this node in a group (it is in the view).
    in_layout: bool,
    /// When the layout was installed here (or the aggregation started).
    layout_since: Time,
    /// As an aggregator (with `config.liveness`): when each member of its groups last
    /// contributed (a member it never heard from is silent), and when its liveness is due
    /// before the next heartbeat. After a new view no liveness goes out for a quarter
    /// heartbeat, until the members' whole contributions are in: an aggregator new to a
    /// group has heard none of them yet, and would call the whole group silent.
    contributed_at: BTreeMap<NodeId, Time>,
    liveness_at: Option<Time>,
    /// As an aggregator: when it last sent its liveness and pushed `Heard` (once a
    /// heartbeat, whatever snapshot points it pushed in between), and whether it pushed
    /// one that covered every group in this layout yet (the first goes out as soon as it
    /// can, not at the next heartbeat).
    last_liveness: Option<Time>,
    pushed_complete_heard: bool,
    /// As an aggregator: the newest liveness of each group of the layout, and when it was
    /// made or came.
    liveness: BTreeMap<usize, (Time, Vec<u32>)>,
    /// As a member: when the last `Heard` that covered every group arrived (or was made
    /// here), and whether the newest one did.
    last_complete_heard: Option<Time>,
    newest_heard_complete: bool,
    /// When this node last took each group's liveness, and the members it heard of since
    /// [`Aggregation::take_heard`] was last called.
    refreshed: BTreeMap<usize, Time>,
    heard: Vec<NodeId>,
}

impl Aggregation {
    pub fn new(me: NodeId, incarnation: u64, view: &View, config: AggregationConfig) -> Self {
        let layout = Layout::new(view, &config);
        Self {
            me,
            incarnation,
            config,
            layout,
            current_source: VersionVector::new(),
            current: KeyedVector::default(),
            sent: KeyedVector::default(),
            last_whole: None,
            contribute_at: None,
            snapshot_point: KeyedVector::default(),
            generation: 0,
            inputs: BTreeMap::new(),
            witnessed: BTreeMap::new(),
            ahead: BTreeMap::new(),
            ahead_snapshot_point: None,
            minimums: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            changed_groups: BTreeSet::new(),
            pushed: None,
            last_push: None,
            aggregate_at: None,
            outgoing: Vec::new(),
            incomplete_covers: 0,
            skips_a_member: false,
            my_groups: Vec::new(),
            in_layout: false,
            layout_since: Time::ZERO,
            contributed_at: BTreeMap::new(),
            liveness_at: None,
            last_liveness: None,
            pushed_complete_heard: false,
            liveness: BTreeMap::new(),
            last_complete_heard: None,
            newest_heard_complete: false,
            refreshed: BTreeMap::new(),
            heard: Vec::new(),
        }
        .with_my_groups()
    }

    fn with_my_groups(mut self) -> Self {
        self.my_groups = self.layout.aggregated_by(&self.me);
        self.in_layout = self.layout.group_of(&self.me).is_some();
        self
    }

    /// The aggregation starts at `now`: within its first heartbeat it pushes no liveness
    /// that misses a group.
    pub fn starting_at(mut self, now: Time) -> Self {
        self.layout_since = now;
        self.liveness_at =
            (self.config.liveness && self.is_aggregator()).then(|| now + self.config.heartbeat / 4);
        self
    }

    /// Plants the simulator's `AggregatorSkipsAMember` bug (see `replica::PlantedBug`).
    pub fn plant_skipping_a_member(&mut self, on: bool) {
        self.skips_a_member = on;
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The largest valid snapshot point received for the installed view.
    pub fn snapshot_point(&self) -> &KeyedVector {
        &self.snapshot_point
    }

    /// Snapshot points dropped because their cover was not the view's.
    pub fn incomplete_covers(&self) -> u64 {
        self.incomplete_covers
    }

    /// Whether this node aggregates some group of the current view.
    pub fn is_aggregator(&self) -> bool {
        !self.my_groups.is_empty()
    }

    /// Whether this member learns through aggregation that the view's members are alive
    /// (with `config.liveness`): it is in the view, and the newest `Heard` it got, at most
    /// two heartbeats ago, covered every group. Else it must make itself heard by
    /// flooding its own heartbeat, as must everyone while any group's liveness is missing
    /// (both its aggregators down or cut off): the aggregation falls back on the flood.
    pub fn covered(&self, now: Time) -> bool {
        self.config.liveness
            && self.in_layout
            && self.newest_heard_complete
            && self
                .last_complete_heard
                .is_some_and(|at| now < at + self.config.heartbeat * 2)
    }

    /// The members this node heard of through aggregation since the last call: alive, per
    /// an aggregator that heard from them within `silence`.
    pub fn take_heard(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.heard)
    }

    /// A new view was installed: a new layout; a whole contribution goes out at once to the
    /// (new) aggregators. Inputs of members that stay are kept; minimums are per epoch.
    pub fn on_view(&mut self, view: &View, now: Time) {
        if view.epoch == self.layout.epoch {
            return;
        }
        self.layout = Layout::new(view, &self.config);
        self.my_groups = self.layout.aggregated_by(&self.me);
        self.in_layout = self.layout.group_of(&self.me).is_some();
        self.layout_since = now;
        self.inputs
            .retain(|id, (incarnation, _)| view.members.get(id) == Some(incarnation));
        self.contributed_at
            .retain(|id, _| view.members.contains_key(id));
        self.liveness.clear();
        self.refreshed.clear();
        self.liveness_at =
            (self.config.liveness && self.is_aggregator()).then(|| now + self.config.heartbeat / 4);
        self.pushed_complete_heard = false;
        // hand what this node held over to the members' new aggregators
        let mut handoffs: BTreeMap<NodeId, Vec<(NodeId, u64, KeyedVector)>> = BTreeMap::new();
        for (id, (incarnation, input)) in &self.inputs {
            for to in self.layout.aggregators_for(id) {
                if *to != self.me {
                    handoffs.entry(to.clone()).or_default().push((
                        id.clone(),
                        *incarnation,
                        input.clone(),
                    ));
                }
            }
        }
        // and what it witnessed, for the aggregators the view keeps
        let witnessed = std::mem::take(&mut self.witnessed);
        for (id, (incarnation, input)) in witnessed {
            if view.members.get(&id) != Some(&incarnation) {
                continue;
            }
            for to in self.layout.aggregators_for(&id).to_vec() {
                if to == self.me {
                    let entries: Vec<(u64, u64)> = input.iter().collect();
                    self.merge_input(&id, incarnation, &entries, now);
                } else {
                    handoffs
                        .entry(to)
                        .or_default()
                        .push((id.clone(), incarnation, input.clone()));
                }
            }
        }
        for (to, inputs) in handoffs {
            self.outgoing.push(Outgoing {
                to,
                message: Arc::new(AggregateMessage::Handoff {
                    epoch: view.epoch,
                    inputs,
                }),
            });
        }
        let ahead = std::mem::take(&mut self.ahead);
        for ((id, incarnation), held) in ahead {
            if held.epoch > view.epoch {
                self.ahead.insert((id, incarnation), held);
            } else {
                let entries: Vec<(u64, u64)> = held.vector.iter().collect();
                if let Some(at) = held.contributed_at {
                    if self.layout.incarnation_of(&id) == Some(incarnation)
                        && self.layout.aggregators_for(&id).contains(&self.me)
                    {
                        let last = self.contributed_at.entry(id.clone()).or_insert(at);
                        *last = (*last).max(at);
                    }
                }
                self.merge_input(&id, incarnation, &entries, now);
            }
        }
        self.minimums.clear();
        // a snapshot point is valid for the view it covers: the node bounds it by members
        // outside the view, which a later view may admit (see `replica/aggregated.rs`)
        self.snapshot_point = KeyedVector::default();
        self.generation += 1;
        match self.ahead_snapshot_point.take() {
            Some((epoch, cover, held)) if epoch == view.epoch => {
                if cover == self.layout.cover() {
                    self.accept(&held);
                } else {
                    self.incomplete_covers += 1;
                }
            }
            Some(later) if later.0 > view.epoch => self.ahead_snapshot_point = Some(later),
            _ => {}
        }
        self.changed_groups = self.my_groups.iter().copied().collect();
        self.pushed = None;
        self.last_whole = None;
        self.contribute_at = Some(now);
        self.aggregate_at = self.is_aggregator().then_some(now);
    }

    /// This node's membership.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's contribution: its applied vector lowered to the cut of every joiner it
    /// registered that the view has not admitted (joiner cover). A change goes out after
    /// `report_delay`.
    pub fn set_contribution(&mut self, now: Time, contribution: &VersionVector) {
        if contribution.ptr_eq(&self.current_source) {
            return;
        }
        self.current_source = contribution.clone();
        let keyed = KeyedVector::of(contribution);
        if keyed == self.current {
            return;
        }
        self.current = keyed;
        if self.contribute_at.is_none() {
            self.contribute_at = Some(now + self.delay());
        }
    }

    /// The next time [`Aggregation::on_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        let heartbeat = self
            .last_whole
            .map_or(Some(Time::ZERO), |at| Some(at + self.config.heartbeat));
        let push = if self.is_aggregator() {
            self.last_push
                .map_or(Some(Time::ZERO), |at| Some(at + self.config.heartbeat))
        } else {
            None
        };
        let liveness =
            (self.config.liveness && self.is_aggregator()).then(|| self.liveness_heartbeat());
        [
            self.contribute_at,
            heartbeat,
            self.aggregate_at,
            push,
            self.liveness_at,
            liveness,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sends what is due.
    pub fn on_timeout(&mut self, now: Time) {
        let whole_due = self
            .last_whole
            .is_none_or(|at| now >= at + self.config.heartbeat);
        if whole_due || self.contribute_at.is_some_and(|at| at <= now) {
            let contribution = self.current.clone();
            self.contribute(now, &contribution, whole_due);
        }
        if !self.is_aggregator() {
            self.aggregate_at = None;
        } else {
            let push_due = self
                .last_push
                .is_none_or(|at| now >= at + self.config.heartbeat);
            if push_due {
                // the heartbeat is spent even when no snapshot point can be pushed yet
                self.last_push = Some(now);
            }
            if push_due || self.aggregate_at.is_some_and(|at| at <= now) {
                self.aggregate(now, push_due);
            }
            if self.config.liveness {
                let heartbeat = now >= self.liveness_heartbeat();
                if heartbeat || self.liveness_at.is_some_and(|at| at <= now) {
                    self.send_liveness(now);
                }
                if heartbeat {
                    self.last_liveness = Some(now);
                    self.push_heard(now);
                } else {
                    self.push_first_complete_heard(now);
                }
            }
        }
    }

    /// As an aggregator: when its next liveness heartbeat is due — a heartbeat after the
    /// last, and never within a quarter heartbeat of a new layout (see `contributed_at`).
    fn liveness_heartbeat(&self) -> Time {
        let next = self
            .last_liveness
            .map_or(Time::ZERO, |at| at + self.config.heartbeat);
        next.max(self.layout_since + self.config.heartbeat / 4)
    }

    /// As an aggregator: makes the liveness of its groups and sends it to every other
    /// aggregator.
    fn send_liveness(&mut self, now: Time) {
        self.liveness_at = None;
        for g in self.my_groups.clone() {
            let silent: Vec<u32> = self
                .layout
                .members(g)
                .iter()
                .enumerate()
                .filter(|(_, id)| **id != self.me)
                .filter(|(_, id)| {
                    self.contributed_at
                        .get(*id)
                        .is_none_or(|at| now.since(*at) > self.config.silence)
                })
                .map(|(i, _)| i as u32)
                .collect();
            self.liveness.insert(g, (now, silent.clone()));
            let message = Arc::new(AggregateMessage::Liveness {
                epoch: self.layout.epoch,
                group: g as u32,
                silent,
            });
            for to in self.layout.all_aggregators() {
                if *to != self.me {
                    self.outgoing.push(Outgoing {
                        to: to.clone(),
                        message: message.clone(),
                    });
                }
            }
        }
    }

    /// As an aggregator: pushes `Heard` at once when it holds every group's liveness for
    /// the first time in this layout (after a new view, or at the start).
    fn push_first_complete_heard(&mut self, now: Time) {
        if self.pushed_complete_heard || self.liveness.len() < self.layout.group_count() {
            return;
        }
        let fresh = self.config.heartbeat + self.config.heartbeat / 2;
        if self.liveness.values().all(|(at, _)| now < *at + fresh) {
            self.push_heard(now);
        }
    }

    /// As an aggregator: tells the members of its groups and its joiners whom the
    /// aggregators hear, from every group's fresh liveness (one made or received within
    /// one and a half heartbeats). Right after a new view it waits one heartbeat for every
    /// group's liveness rather than push an incomplete one (that would make every member
    /// flood its heartbeat).
    fn push_heard(&mut self, now: Time) {
        let fresh = self.config.heartbeat + self.config.heartbeat / 2;
        let groups: Vec<(u32, Vec<u32>)> = self
            .liveness
            .iter()
            .filter(|(_, (at, _))| now < *at + fresh)
            .map(|(g, (_, silent))| (*g as u32, silent.clone()))
            .collect();
        if groups.len() < self.layout.group_count()
            && now < self.layout_since + self.config.heartbeat
        {
            return;
        }
        self.pushed_complete_heard |= groups.len() == self.layout.group_count();
        self.take_heard_groups(now, &groups);
        let message = Arc::new(AggregateMessage::Heard {
            epoch: self.layout.epoch,
            groups,
        });
        for to in self.recipients(now, false) {
            self.outgoing.push(Outgoing {
                to,
                message: message.clone(),
            });
        }
    }

    /// As a member: takes the liveness of `groups` (each at most once per half heartbeat),
    /// and notes whether it covered every group.
    fn take_heard_groups(&mut self, now: Time, groups: &[(u32, Vec<u32>)]) {
        let count = self.layout.group_count();
        let covered: BTreeSet<u32> = groups
            .iter()
            .map(|(g, _)| *g)
            .filter(|g| (*g as usize) < count)
            .collect();
        let complete = covered.len() == count;
        self.newest_heard_complete = complete;
        if complete {
            self.last_complete_heard = Some(now);
        }
        let again = self.config.heartbeat / 2;
        for (g, silent) in groups {
            let g = *g as usize;
            if g >= count || self.refreshed.get(&g).is_some_and(|at| now < *at + again) {
                continue;
            }
            self.refreshed.insert(g, now);
            let silent: BTreeSet<u32> = silent.iter().copied().collect();
            for (i, id) in self.layout.members(g).iter().enumerate() {
                if *id != self.me && !silent.contains(&(i as u32)) {
                    self.heard.push(id.clone());
                }
            }
        }
    }

    /// Whom an aggregator pushes to: the members of its groups and the joiners that
    /// contributed within three heartbeats, but itself; with `first_only`, only those of
    /// the groups whose first aggregator it is (a change; every aggregator pushes at a
    /// heartbeat).
    fn recipients(&mut self, now: Time, first_only: bool) -> BTreeSet<NodeId> {
        let horizon = self.config.heartbeat * 3;
        self.subscribers.retain(|_, at| now < *at + horizon);
        let me = &self.me;
        let first = |aggregators: &[NodeId]| !first_only || aggregators.first() == Some(me);
        let mut to: BTreeSet<NodeId> = BTreeSet::new();
        for g in &self.my_groups {
            if first(self.layout.aggregators(*g)) {
                to.extend(self.layout.members(*g).iter().cloned());
            }
        }
        for id in self.subscribers.keys() {
            if first(self.layout.aggregators_for(id)) {
                to.insert(id.clone());
            }
        }
        to.remove(&self.me);
        to
    }

    fn contribute(&mut self, now: Time, contribution: &KeyedVector, whole: bool) {
        self.contribute_at = None;
        let entries: Vec<(u64, u64)> = if whole {
            contribution.iter().collect()
        } else {
            contribution
                .iter()
                .filter(|(k, s)| *s > self.sent.get(*k))
                .collect()
        };
        self.sent = contribution.clone();
        if whole {
            self.last_whole = Some(now);
        } else if entries.is_empty() {
            return;
        }
        let message = Arc::new(AggregateMessage::Contribution {
            epoch: self.layout.epoch,
            incarnation: self.incarnation,
            whole,
            entries,
        });
        // a change goes to the group's first aggregator only; the whole vector, every
        // heartbeat, to all of them, and an aggregator's own also to its group's witness
        let aggregators = self.layout.aggregators_for(&self.me);
        let take = if whole { aggregators.len() } else { 1 };
        let mut targets: Vec<NodeId> = aggregators.iter().take(take).cloned().collect();
        if whole && aggregators.contains(&self.me) {
            if let Some(witness) = self
                .layout
                .group_of(&self.me)
                .and_then(|g| self.layout.witness(g))
            {
                targets.push(witness.clone());
            }
        }
        for to in targets {
            if to == self.me {
                // an aggregator's own contribution goes straight in
                self.take_contribution(&self.me.clone(), self.incarnation, &message, now);
            } else {
                self.outgoing.push(Outgoing {
                    to,
                    message: message.clone(),
                });
            }
        }
    }

    /// A message from `from` (a member at `incarnation` per its own message, or per the
    /// sender's membership for minimums and snapshot points).
    pub fn handle(&mut self, now: Time, from: &NodeId, message: &AggregateMessage) -> Received {
        match message {
            AggregateMessage::Contribution { incarnation, .. } => {
                self.take_contribution(from, *incarnation, message, now)
            }
            AggregateMessage::Handoff { epoch, inputs } => {
                for (id, incarnation, input) in inputs {
                    let entries: Vec<(u64, u64)> = input.iter().collect();
                    if *epoch > self.layout.epoch {
                        // handed over: the member's data, but no sign that it is alive
                        self.hold_ahead(id, *incarnation, *epoch, &entries, None);
                    } else {
                        self.merge_input(id, *incarnation, &entries, now);
                    }
                }
                Received::Taken
            }
            AggregateMessage::GroupMinimum {
                epoch,
                group,
                minimum,
                cover,
            } => {
                let g = *group as usize;
                if *epoch != self.layout.epoch
                    || !self.is_aggregator()
                    || g >= self.layout.group_count()
                    || *cover != self.layout.group_cover(g)
                {
                    return Received::Ignored;
                }
                let merged = match self.minimums.get(&g) {
                    Some((held, _)) if minimum.le(held) => return Received::Taken,
                    Some((held, _)) => {
                        let mut m = held.clone();
                        m.join(minimum);
                        m
                    }
                    None => minimum.clone(),
                };
                self.minimums.insert(g, (merged, *cover));
                self.schedule_aggregate(now);
                Received::Taken
            }
            AggregateMessage::Liveness {
                epoch,
                group,
                silent,
            } => {
                let g = *group as usize;
                if *epoch != self.layout.epoch
                    || !self.is_aggregator()
                    || g >= self.layout.group_count()
                    || !self.layout.aggregators(g).contains(from)
                {
                    return Received::Ignored;
                }
                self.liveness.insert(g, (now, silent.clone()));
                self.push_first_complete_heard(now);
                Received::Taken
            }
            AggregateMessage::Heard { epoch, groups } => {
                if *epoch != self.layout.epoch
                    || !self.layout.aggregators_for(&self.me).contains(from)
                {
                    return Received::Ignored;
                }
                self.take_heard_groups(now, groups);
                Received::Taken
            }
            AggregateMessage::SnapshotPoint {
                epoch,
                snapshot_point,
                cover,
            } => {
                if *epoch > self.layout.epoch {
                    self.hold_ahead_snapshot_point(*epoch, *cover, snapshot_point);
                    return Received::Taken;
                }
                if *epoch != self.layout.epoch {
                    return Received::Ignored;
                }
                if *cover != self.layout.cover() {
                    self.incomplete_covers += 1;
                    return Received::IncompleteCover;
                }
                if self.accept(snapshot_point) {
                    Received::SnapshotPointRose
                } else {
                    Received::Taken
                }
            }
        }
    }

    /// Keeps a push for `epoch`, a view this node has not installed (see
    /// `ahead_snapshot_point`): joined with the others of that epoch, replaced by a newer.
    fn hold_ahead_snapshot_point(&mut self, epoch: u64, cover: Cover, pushed: &KeyedVector) {
        match &mut self.ahead_snapshot_point {
            Some((held_epoch, held_cover, held))
                if *held_epoch == epoch && *held_cover == cover =>
            {
                held.join(pushed);
            }
            Some((held_epoch, ..)) if *held_epoch > epoch => {}
            _ => self.ahead_snapshot_point = Some((epoch, cover, pushed.clone())),
        }
    }

    fn accept(&mut self, snapshot_point: &KeyedVector) -> bool {
        if snapshot_point.le(&self.snapshot_point) {
            return false;
        }
        self.snapshot_point.join(snapshot_point);
        self.generation += 1;
        true
    }

    /// Raised whenever [`Aggregation::snapshot_point`] changes: a caller that derives
    /// something from it recomputes only when this moved.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn take_contribution(
        &mut self,
        from: &NodeId,
        incarnation: u64,
        message: &AggregateMessage,
        now: Time,
    ) -> Received {
        let AggregateMessage::Contribution { epoch, entries, .. } = message else {
            return Received::Ignored;
        };
        if *epoch > self.layout.epoch {
            // made under a view this node has not installed: it may drop a cover that
            // this node's view still needs
            let contributed = self.config.liveness.then_some(now);
            self.hold_ahead(from, incarnation, *epoch, entries, contributed);
            return Received::Taken;
        }
        let Some(group) = self.layout.group_of(from) else {
            // a joiner outside the view: pushed to, not counted
            if self.layout.aggregators_for(from).contains(&self.me) {
                self.subscribers.insert(from.clone(), now);
                return Received::Taken;
            }
            return Received::Ignored;
        };
        if self.layout.witness(group) == Some(&self.me)
            && self.layout.aggregators(group).contains(from)
            && self.layout.incarnation_of(from) == Some(incarnation)
        {
            // an aggregator's own contribution, kept for the next view's aggregators
            let (_, held) = self
                .witnessed
                .entry(from.clone())
                .or_insert_with(|| (incarnation, KeyedVector::default()));
            for (origin, seq) in entries {
                held.raise(*origin, *seq);
            }
            return Received::Taken;
        }
        // only the membership the view holds counts: a newer incarnation of the same node
        // is another membership, whose vector bounds nothing of the one the view holds
        if !self.layout.aggregators(group).contains(&self.me)
            || self.layout.incarnation_of(from) != Some(incarnation)
        {
            return Received::Ignored;
        }
        if self.config.liveness {
            self.contributed_at.insert(from.clone(), now);
        }
        self.merge_input(from, incarnation, entries, now);
        Received::Taken
    }

    /// Keeps entries of member `id` made at `epoch`, a view this node has not installed,
    /// until it does (the newest epoch of what is kept decides when), and when the member
    /// itself sent them (`contributed`; `None` for a handoff).
    fn hold_ahead(
        &mut self,
        id: &NodeId,
        incarnation: u64,
        epoch: u64,
        entries: &[(u64, u64)],
        contributed: Option<Time>,
    ) {
        let held = self
            .ahead
            .entry((id.clone(), incarnation))
            .or_insert_with(|| Ahead {
                epoch,
                vector: KeyedVector::default(),
                contributed_at: None,
            });
        held.epoch = held.epoch.max(epoch);
        held.contributed_at = held.contributed_at.max(contributed);
        for (origin, seq) in entries {
            held.vector.raise(*origin, *seq);
        }
    }

    /// Takes `entries` into member `id`'s input (the view holds it at `incarnation`, in a
    /// group this node aggregates).
    fn merge_input(&mut self, id: &NodeId, incarnation: u64, entries: &[(u64, u64)], now: Time) {
        let Some(group) = self.layout.group_of(id) else {
            return;
        };
        if self.layout.incarnation_of(id) != Some(incarnation)
            || !self.layout.aggregators(group).contains(&self.me)
        {
            return;
        }
        let fresh = !self.inputs.contains_key(id);
        let held = self
            .inputs
            .entry(id.clone())
            .or_insert_with(|| (incarnation, KeyedVector::default()));
        let mut raised = false;
        for (origin, seq) in entries {
            raised |= held.1.raise(*origin, *seq);
        }
        if raised || fresh || !self.minimums.contains_key(&group) {
            self.changed_groups.insert(group);
            self.schedule_aggregate(now);
        }
    }

    fn schedule_aggregate(&mut self, now: Time) {
        if self.aggregate_at.is_none() {
            self.aggregate_at = Some(now + self.delay());
        }
    }

    /// How long changes are coalesced: `report_delay`, or nothing when this node is the
    /// whole view (there is nothing to coalesce for: its snapshot point is its own).
    fn delay(&self) -> Duration {
        if self.layout.cover().members == 1 && self.layout.group_of(&self.me).is_some() {
            Duration::ZERO
        } else {
            self.config.report_delay
        }
    }

    /// As an aggregator: sends the minimums of its groups that changed (or all, at a
    /// heartbeat) to every aggregator, and pushes the snapshot point when it rose.
    fn aggregate(&mut self, now: Time, heartbeat: bool) {
        self.aggregate_at = None;
        let groups: Vec<usize> = if heartbeat {
            self.my_groups.clone()
        } else {
            std::mem::take(&mut self.changed_groups)
                .into_iter()
                .collect()
        };
        if heartbeat {
            self.changed_groups.clear();
        }
        // a change goes to every group's first aggregator; a heartbeat to every aggregator
        let others: Vec<NodeId> = if heartbeat {
            self.layout
                .all_aggregators()
                .iter()
                .filter(|a| **a != self.me)
                .cloned()
                .collect()
        } else {
            let firsts: BTreeSet<NodeId> = (0..self.layout.group_count())
                .filter_map(|g| self.layout.aggregators(g).first())
                .filter(|a| **a != self.me)
                .cloned()
                .collect();
            firsts.into_iter().collect()
        };
        for g in groups {
            let Some(minimum) = self.group_minimum(g) else {
                continue;
            };
            let cover = self.layout.group_cover(g);
            let held = self.minimums.get(&g).map(|(m, _)| m);
            if !heartbeat && held.is_some_and(|h| minimum.le(h)) {
                continue;
            }
            let merged = match held {
                Some(h) => {
                    let mut m = h.clone();
                    m.join(&minimum);
                    m
                }
                None => minimum,
            };
            self.minimums.insert(g, (merged.clone(), cover));
            let message = Arc::new(AggregateMessage::GroupMinimum {
                epoch: self.layout.epoch,
                group: g as u32,
                minimum: merged,
                cover,
            });
            for to in &others {
                self.outgoing.push(Outgoing {
                    to: to.clone(),
                    message: message.clone(),
                });
            }
        }
        self.push(now, heartbeat);
    }

    /// The minimum over the contributions of every member of group `g`, once it holds all.
    fn group_minimum(&self, g: usize) -> Option<KeyedVector> {
        let mut minimum: Option<KeyedVector> = None;
        let members = self.layout.members(g);
        // the planted bug leaves out the member that holds the group back
        let skipped = (self.skips_a_member && members.len() > 1)
            .then(|| {
                members
                    .iter()
                    .min_by_key(|id| self.inputs.get(*id).map_or(0, |(_, v)| v.total()))
            })
            .flatten();
        for id in members.iter().filter(|id| Some(*id) != skipped) {
            let (_, input) = self.inputs.get(id)?;
            minimum = Some(match minimum {
                None => input.clone(),
                Some(m) => m.meet(input),
            });
        }
        minimum
    }

    /// Pushes the snapshot point of the epoch to the members of its groups and to its
    /// subscribers, once it holds a minimum of every group and it rose (or at a heartbeat).
    fn push(&mut self, now: Time, heartbeat: bool) {
        if self.minimums.len() < self.layout.group_count() {
            return;
        }
        let mut cover = Cover::default();
        let mut sp: Option<KeyedVector> = None;
        for (minimum, c) in self.minimums.values() {
            cover = cover + *c;
            sp = Some(match sp {
                None => minimum.clone(),
                Some(s) => s.meet(minimum),
            });
        }
        let sp = sp.unwrap_or_default();
        if !heartbeat && self.pushed.as_ref().is_some_and(|p| sp.le(p)) {
            return;
        }
        // between heartbeats only the entries that rose go out: each entry of a valid
        // snapshot point is a valid bound by itself, so a member may join them one by one
        let sent = match (&self.pushed, heartbeat) {
            (Some(before), false) => {
                KeyedVector(sp.iter().filter(|(k, s)| *s > before.get(*k)).collect())
            }
            _ => sp.clone(),
        };
        // only the heartbeat sets when the next heartbeat push is due (see `on_timeout`):
        // pushes of changes in between must not put it off, or a second aggregator, whose
        // change pushes go to no one while its group's first aggregator is down, would
        // never push while whole contributions keep rising
        self.pushed = Some(sp.clone());
        self.accept(&sp);
        let message = Arc::new(AggregateMessage::SnapshotPoint {
            epoch: self.layout.epoch,
            snapshot_point: sent,
            cover,
        });
        for id in self.recipients(now, !heartbeat) {
            self.outgoing.push(Outgoing {
                to: id,
                message: message.clone(),
            });
        }
    }

    /// What to send, in order.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outgoing)
    }
}

#[cfg(test)]
mod tests;
