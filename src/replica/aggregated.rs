//! The aggregated snapshot point as this replica takes it: its part in aggregation
//! (`network_map::aggregation`), kept at its membership and installed view, and the rules
//! that stay on the node's side of the aggregation:
//!
//! - *Joiner cover* ([`contribution`]): a sponsor contributes its applied vector lowered
//!   to what every joiner it registered in this incarnation, and the view has not admitted,
//!   has applied (at least the cut it was given).
//! - *Members outside the view*: the members its map counts that no view has admitted and
//!   none removed (joiners whose sponsor a view evicted cover themselves) bound the
//!   snapshot point here; memberships a view removed never do, whatever their last record
//!   still says.
//! - *Evictions still waiting*: while an eviction of an installed view waits in the map
//!   for the registrations it accounts for, no new aggregate is taken: the view no longer
//!   counts the sponsor of a joiner this node may not know yet.
//!
//! Part of the sans-IO core: time comes in as a value; iteration in key order only.

use std::collections::BTreeSet;

use super::PlantedBug;
use crate::network_map::aggregation::{Aggregation, AggregationConfig, Outgoing};
use crate::network_map::view::{Memberships, View};
use crate::network_map::NetworkMap;
use crate::node_id::NodeId;
use crate::time::Time;
use crate::version_vector::VersionVector;

/// What the replica lends for one update.
pub(super) struct Inputs<'a> {
    pub config: &'a AggregationConfig,
    pub me: &'a NodeId,
    pub incarnation: u64,
    pub view: &'a View,
    pub map: &'a NetworkMap,
    /// This node's contribution (see [`contribution`]).
    pub contribution: VersionVector,
    /// This node's applied vector: names the origins of the aggregate.
    pub applied: &'a VersionVector,
    pub stable_cut: &'a VersionVector,
    pub planted: Option<PlantedBug>,
}

/// This node's part in aggregating the snapshot point, and what it took from it.
#[derive(Debug, Default)]
pub(super) struct AggregatedSnapshotPoint {
    aggregation: Option<Aggregation>,
    /// The largest of the valid aggregates of each installed view, each bounded by the
    /// members outside that view when it was taken.
    snapshot_point: VersionVector,
    /// Evictions of installed views that the map has not adopted yet.
    unadopted_evictions: Vec<(NodeId, u64)>,
    /// Counted members outside the view that no view removed, cached at (map membership
    /// epoch, view epoch).
    outside_view: Option<((u64, u64), Vec<NodeId>)>,
    /// The members of the view last seen, and every membership a view removed since this
    /// membership began (left or evicted: out for good).
    last_view: Memberships,
    last_view_epoch: u64,
    removed: BTreeSet<(NodeId, u64)>,
    /// `snapshot_point` joined with the stable cut (a grant's cut was a valid snapshot
    /// point at its sponsor): the snapshot point when the aggregation decides, and the
    /// stable cut it was made with.
    deciding: VersionVector,
    deciding_cut: VersionVector,
    /// The aggregation's generation the snapshot point was last taken at, when that took
    /// every origin of the aggregate: with no member outside the view, nothing new can
    /// come of it until the generation moves (the applied vector only grows, and it
    /// already names every origin of the aggregate).
    taken: Option<u64>,
}

impl AggregatedSnapshotPoint {
    pub fn snapshot_point(&self) -> &VersionVector {
        &self.snapshot_point
    }

    pub fn deciding(&self) -> &VersionVector {
        &self.deciding
    }

    pub fn aggregation(&self) -> Option<&Aggregation> {
        self.aggregation.as_ref()
    }

    pub fn aggregation_mut(&mut self) -> Option<&mut Aggregation> {
        self.aggregation.as_mut()
    }

    pub fn next_deadline(&self) -> Option<Time> {
        self.aggregation
            .as_ref()
            .and_then(Aggregation::next_deadline)
    }

    /// A view installed here evicted these memberships.
    pub fn views_evicted(&mut self, evicted: impl IntoIterator<Item = (NodeId, u64)>) {
        self.unadopted_evictions.extend(evicted);
    }

    /// After every event of a member: follows its membership and view, hands over its
    /// contribution, and takes the aggregated snapshot point. Returns what to send.
    pub fn update(&mut self, now: Time, inputs: Inputs<'_>) -> Vec<Outgoing> {
        let Inputs {
            config,
            me,
            incarnation,
            view,
            map,
            contribution,
            applied,
            stable_cut,
            planted,
        } = inputs;
        match &mut self.aggregation {
            Some(a) if a.incarnation() == incarnation => a.on_view(view, now),
            _ => {
                // a new membership starts afresh (I2 holds per membership)
                *self = Self {
                    last_view: view.members.clone(),
                    last_view_epoch: view.epoch,
                    ..Self::default()
                };
                let mut aggregation =
                    Aggregation::new(me.clone(), incarnation, view, config.clone())
                        .starting_at(now);
                aggregation
                    .plant_skipping_a_member(planted == Some(PlantedBug::AggregatorSkipsAMember));
                self.aggregation = Some(aggregation);
            }
        }
        let aggregation = self.aggregation.as_mut().expect("set above");
        aggregation.set_contribution(now, &contribution);
        let outgoing = aggregation.take_outgoing();
        self.unadopted_evictions.retain(|(id, incarnation)| {
            map.get(id)
                .is_some_and(|e| e.record.incarnation == *incarnation && e.record.state.counts())
        });
        if !self.unadopted_evictions.is_empty() {
            return outgoing;
        }
        // a view's epoch names its members: compare members only when the epoch moved
        if self.last_view_epoch != view.epoch && self.last_view != view.members {
            for (id, incarnation) in &self.last_view {
                if !view.has(id, *incarnation) {
                    self.removed.insert((id.clone(), *incarnation));
                }
            }
            self.last_view = view.members.clone();
        }
        self.last_view_epoch = view.epoch;
        let key = (map.membership_epoch(), view.epoch);
        if self.outside_view.as_ref().is_none_or(|(k, _)| *k != key) {
            let removed = &self.removed;
            let outside = map
                .iter()
                .filter(|(id, e)| {
                    let incarnation = e.record.incarnation;
                    e.record.state.counts()
                        && view.members.get(*id).is_none_or(|held| *held < incarnation)
                        && !removed.contains(&((*id).clone(), incarnation))
                })
                .map(|(id, _)| id.clone())
                .collect();
            self.outside_view = Some((key, outside));
        }
        let aggregation = self.aggregation.as_ref().expect("set above");
        let outside = &self.outside_view.as_ref().expect("set above").1;
        let generation = aggregation.generation();
        let mut rose = false;
        if !outside.is_empty() || self.taken != Some(generation) {
            // every origin a valid snapshot point of this node holds is one it has applied
            let aggregate = aggregation.snapshot_point();
            let mut sp = aggregate.resolve(applied);
            let whole = sp.len() == aggregate.len();
            for id in outside {
                if let Some(e) = map.get(id) {
                    sp = sp.meet(&e.record.applied);
                }
            }
            self.taken = (outside.is_empty() && whole).then_some(generation);
            // The aggregate is the view's, and this bound is taken with it: a member
            // outside the view bounds what this node takes while it is outside, and once a
            // later view admits it, that view's aggregates count it. So the bounded values
            // accumulate, never the aggregate alone.
            if !sp.le(&self.snapshot_point) {
                self.snapshot_point.join(&sp);
                rose = true;
            }
        }
        if rose || !self.deciding_cut.ptr_eq(stable_cut) {
            self.deciding = self.snapshot_point.clone();
            self.deciding.join(stable_cut);
            self.deciding_cut = stable_cut.clone();
        }
        outgoing
    }
}

/// This node's contribution: its applied vector, lowered to what every joiner it registered
/// in this incarnation, and the view has not admitted yet, has applied (at least the cut
/// it was given): joiner cover.
pub(super) fn contribution(
    me: &NodeId,
    incarnation: u64,
    applied: &VersionVector,
    map: &NetworkMap,
    view: &View,
    planted: Option<PlantedBug>,
) -> VersionVector {
    if map.own().record.registrations == 0 || planted == Some(PlantedBug::NoJoinerCover) {
        return applied.clone();
    }
    let mut contribution = applied.clone();
    for (id, entry) in map.iter() {
        let record = &entry.record;
        let mine = record
            .sponsor
            .as_ref()
            .is_some_and(|s| s.sponsor == *me && s.sponsor_incarnation == incarnation);
        if mine && record.state.counts() && !view.has(id, record.incarnation) {
            contribution = contribution.meet(&record.applied);
        }
    }
    contribution
}
