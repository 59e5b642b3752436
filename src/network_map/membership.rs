//! The agreed-membership part of a member: its place in the agreement on views
//! ([`ViewAgreement`]), whose turn it is to propose a change ([`ProposerTurn`]), and whether
//! a leave waits for a view without it. It decides what to put to the view
//! (`view_policy::wanted_change`), carries out what a decided view means for the network
//! map (evictions), and tells the replica when a view no longer holds this membership.
//!
//! The replica lends it the map and the settings for each event. Part of the sans-IO core:
//! time comes in as a value, randomness from the replica's generator.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;

use super::view::{Installed, View, ViewAgreement, ViewMessage, Votes};
use super::view_policy::{self, Observations, ProposerTurn};
use super::NetworkMap;
use crate::gossip::GossipConfig;
use crate::node_id::NodeId;
use crate::time::{jitter, Time};

/// One member's part in the agreed membership (see module doc).
#[derive(Debug)]
pub struct Membership {
    views: ViewAgreement,
    turn: ProposerTurn,
    /// A leave whose ops are handed over, waiting for a view without this node.
    leave_ready: bool,
    /// (view epoch, records generation) at which the map last settled on no change (see
    /// [`view_policy::wanted_change_settled`]): until either moves, nothing is wanted.
    settled: Option<(u64, u64)>,
}

/// What an installed view means for this membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// Still in the view (or never was: a joiner not admitted yet).
    Kept,
    /// Removed without an eviction while a leave waited for it: the leave is done.
    LeaveDecided,
    /// Removed or evicted otherwise: this membership is out of good standing.
    Lost,
}

impl Membership {
    /// `me` at `incarnation`, having installed `view`.
    pub fn new(me: NodeId, incarnation: u64, view: View) -> Self {
        Self::with(ViewAgreement::new(me, incarnation, view))
    }

    /// `me` at `incarnation`, resuming with the acceptor state it stored.
    pub fn resume(me: NodeId, incarnation: u64, votes: Votes) -> Self {
        Self::with(ViewAgreement::resume(me, incarnation, votes))
    }

    fn with(views: ViewAgreement) -> Self {
        Self {
            views,
            turn: ProposerTurn::default(),
            leave_ready: false,
            settled: None,
        }
    }

    /// The agreement on views itself.
    pub fn views(&self) -> &ViewAgreement {
        &self.views
    }

    pub fn views_mut(&mut self) -> &mut ViewAgreement {
        &mut self.views
    }

    /// The installed view.
    pub fn view(&self) -> &View {
        self.views.view()
    }

    /// Whether a leave waits for a view without this node.
    pub fn leave_ready(&self) -> bool {
        self.leave_ready
    }

    /// A leave handed its ops over (`true`: ask for a view without this node), or ended.
    pub fn set_leave_ready(&mut self, ready: bool) {
        self.leave_ready = ready;
    }

    /// This node now runs `incarnation` (a rejoin, with a map of its new membership): any
    /// leave is over.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.views.set_incarnation(incarnation);
        self.leave_ready = false;
        self.settled = None;
    }

    /// Puts to the view the change the map and the failure detector call for, when it is
    /// this node's turn: `overdue` are the suspects to evict. Returns the messages to send.
    pub fn propose(
        &mut self,
        now: Time,
        map: &NetworkMap,
        overdue: &[NodeId],
        gossip: &GossipConfig,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(NodeId, ViewMessage)> {
        let mut out = Vec::new();
        if !self.views.is_voter() {
            return out;
        }
        let seen = Observations {
            map,
            overdue,
            leaving: self.leave_ready,
            now,
            suspect_after: gossip.suspect_after,
        };
        let view = self.views.view();
        let key = (view.epoch, map.records_generation());
        let wanted = if overdue.is_empty() && !self.leave_ready && self.settled == Some(key) {
            None
        } else {
            let (wanted, settled) = view_policy::wanted_change_settled(view, &seen);
            self.settled = settled.then_some(key);
            wanted
        };
        if self.views.is_proposing() {
            // a ballot under way goes on with what is wanted now
            self.views.refresh_wanted(wanted);
            return out;
        }
        // the rank matters only to a change (it is O(members))
        let rank = match &wanted {
            Some(_) => view_policy::rank(view, map, now, gossip.suspect_after),
            None => 0,
        };
        let patience = gossip.view_ballot_patience;
        let due = self
            .turn
            .due(now, wanted.is_some(), rank, self.leave_ready, patience);
        if let (true, Some(wanted)) = (due, wanted) {
            let patience = jitter(rng, patience);
            self.views.propose(now, patience, wanted, &mut out);
        }
        out
    }

    /// A stalled ballot is tried again, with `patience` jittered from `patience`.
    pub fn on_timeout(
        &mut self,
        now: Time,
        patience: Duration,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(NodeId, ViewMessage)> {
        let mut out = Vec::new();
        let patience = jitter(rng, patience);
        self.views.on_timeout(now, patience, &mut out);
        out
    }

    /// Carries out one installed view on `map` — the evictions it decided, and, after
    /// epochs this node missed, the members they removed as far as the map knows them — and
    /// says what it means for this membership (`me` at `incarnation`).
    pub fn apply(
        &mut self,
        installed: &Installed,
        now: Time,
        map: &mut NetworkMap,
        me: &NodeId,
        incarnation: u64,
    ) -> Seat {
        self.turn.on_installed();
        let Installed { before, change, .. } = installed;
        for eviction in &change.evicted {
            map.evict_decided(eviction, now);
        }
        if change.next.epoch > before.epoch + 1 && before.epoch > 0 {
            // epochs this node missed: a member they removed that this map suspects was
            // evicted; one it does not suspect probably left through a view (its `Left`
            // record is on its way, and evicting it would evict a running node). Either
            // way its record settles it; counting it until then is safe
            for (id, member_incarnation) in &before.members {
                let removed = !change.next.members.contains_key(id);
                let held = map.get(id).is_some_and(|e| {
                    e.record.incarnation == *member_incarnation
                        && e.record.state == super::MemberState::Suspect
                });
                if removed && held && id != me {
                    map.evict(id, now);
                }
            }
        }
        let evicted_me = change
            .evicted
            .iter()
            .any(|e| e.id == *me && e.incarnation == incarnation);
        let dropped_me = before.has(me, incarnation) && !change.next.has(me, incarnation);
        match (evicted_me, dropped_me) {
            (false, false) => Seat::Kept,
            (false, true) if self.leave_ready => Seat::LeaveDecided,
            _ => Seat::Lost,
        }
    }

    /// Whether this node hears from a majority of its view's seats (itself included, if it
    /// holds one) within `suspect_after`.
    pub fn hears_quorum(
        &self,
        now: Time,
        map: &NetworkMap,
        me: &NodeId,
        suspect_after: Duration,
    ) -> bool {
        let view = self.views.view();
        let heard = view
            .members
            .keys()
            .filter(|id| {
                if *id == me {
                    return self.views.is_voter();
                }
                map.get(id)
                    .is_some_and(|e| now.since(e.last_heard) <= suspect_after)
            })
            .count();
        heard >= view.quorum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;

    use super::*;
    use crate::network_map::{MemberRecord, MemberState};

    fn id(i: u64) -> NodeId {
        NodeId::synthetic(i)
    }

    /// Node 0's map of founders 0, 1, 2, and its membership in their founding view.
    fn founder_zero() -> (Membership, NetworkMap) {
        let mut map = NetworkMap::new(MemberRecord::founder(id(0)), Time::ZERO);
        for i in 1..3 {
            map.merge(Arc::new(MemberRecord::founder(id(i))), Time::ZERO);
        }
        let membership = Membership::new(id(0), 1, View::founding((0..3).map(id)));
        (membership, map)
    }

    /// Whether node 0 puts a change to the view within a few ballot patiences of `from`
    /// (its turn may wait for the voters ranked before it).
    fn proposes_by(membership: &mut Membership, map: &NetworkMap, from: Time) -> bool {
        let gossip = GossipConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..8).any(|k| {
            let now = from + gossip.view_ballot_patience * k;
            !membership
                .propose(now, map, &[], &gossip, &mut rng)
                .is_empty()
        })
    }

    #[test]
    fn a_settled_no_change_is_looked_at_again_once_a_record_changes() {
        let (mut membership, mut map) = founder_zero();
        let t = Time::ZERO + Duration::from_millis(500);
        assert!(
            !proposes_by(&mut membership, &map, t),
            "the map agrees with the view"
        );
        // node 2 leaves: only its record says so
        let left = MemberRecord {
            state: MemberState::Left,
            report_seq: 2,
            ..MemberRecord::founder(id(2))
        };
        map.merge(Arc::new(left), t);
        assert!(
            proposes_by(&mut membership, &map, t),
            "a view without the member that left"
        );
    }

    #[test]
    fn a_joiner_in_the_map_keeps_the_answer_unsettled_until_it_is_heard() {
        let (mut membership, mut map) = founder_zero();
        let joiner = MemberRecord {
            report_seq: 1,
            ..MemberRecord::founder(id(5))
        };
        map.merge(Arc::new(joiner), Time::ZERO);
        // long after its report, so not heard recently: not admitted yet (the founders are)
        let later = Time::ZERO + Duration::from_secs(60);
        let hear_founders =
            |map: &mut NetworkMap, at| (1..3).for_each(|i| map.heard_from(&id(i), at));
        hear_founders(&mut map, later);
        assert!(!proposes_by(&mut membership, &map, later));
        // news from it without a new record (a direct message)
        let heard_at = later + Duration::from_secs(60);
        hear_founders(&mut map, heard_at);
        map.heard_from(&id(5), heard_at);
        assert!(
            proposes_by(&mut membership, &map, heard_at),
            "a joiner heard from again is admitted though no record changed"
        );
    }
}
