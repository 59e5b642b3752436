//! Failure detection (SWIM-like probes on an overlay of K rings, suspicions as the alerts,
//! and Lifeguard's local health): which members this node suspects and evicts, whether it
//! is cut off from most of the network, and telling an evicted node that still talks that
//! it was evicted.
//!
//! The [`Monitor`] owns its timer, the monitoring overlay ([`ProbeOverlay`]: whom this node
//! probes), the isolation flag and whom it told of their eviction; the records themselves
//! live in the [`NetworkMap`], which the replica lends it. Part of the sans-IO core: time
//! comes in as a value.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;

use super::probes::ProbeOverlay;
use super::{MemberState, NetworkMap};
use crate::gossip::{GossipConfig, Message, Records};
use crate::node_id::NodeId;
use crate::ops_log::StateMachine;
use crate::outbox::Outbox;
use crate::time::{jitter, Time};

/// One member's failure detector (see module doc).
#[derive(Debug)]
pub struct Monitor {
    /// When the next failure check runs (every `failure_check_interval`, jittered).
    next_check: Time,
    /// Whether the last check heard from at most half of the members.
    isolated: bool,
    /// When each evicted node that kept talking was last sent its eviction.
    told_evicted: BTreeMap<NodeId, Time>,
    /// The members this node watches, and their answers.
    probes: ProbeOverlay,
}

/// What one failure check did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Whether the check was due and ran.
    pub ran: bool,
    /// Members newly suspected.
    pub suspected: u64,
    /// Suspects silent and unrefuted past the suspicion timeout, in id order: the members
    /// this node asks the next view to evict. Empty while it is isolated.
    pub overdue: Vec<NodeId>,
    /// A probe round that is due: its number, and the subjects to probe, in id order.
    pub probe: Option<(u64, Vec<NodeId>)>,
}

impl Monitor {
    /// A detector whose first check and first probe round are at `first_check`, watching
    /// its successors on `rings` rings.
    pub fn new(first_check: Time, rings: usize) -> Self {
        Self {
            next_check: first_check,
            isolated: false,
            told_evicted: BTreeMap::new(),
            probes: ProbeOverlay::new(rings, first_check),
        }
    }

    /// `from` answered probe round `round`; the ack is handled at `now`.
    pub fn on_probe_ack(&mut self, from: &NodeId, round: u64, now: Time) {
        self.probes.on_ack(from, round, now);
    }

    /// The members this node watches, in id order.
    pub fn subjects(&self) -> impl Iterator<Item = &NodeId> {
        self.probes.subjects()
    }

    /// Whether the last check heard from at most half of the members in good standing:
    /// this node is then probably the one cut off, so it evicts no one.
    pub fn is_isolated(&self) -> bool {
        self.isolated
    }

    /// When the next check or probe round is due.
    pub fn next_check(&self) -> Time {
        self.next_check.min(self.probes.next_round_at())
    }

    /// No check before `at` (a node that just joined has heard from no one yet).
    pub fn hold_until(&mut self, at: Time) {
        self.next_check = at;
    }

    /// Returns the probe round that is due, if any (the caller sends it), and runs the
    /// check if it is due. The check suspects the members this node watches that answered
    /// no probe for `suspect_after` (the alert). It names as overdue the suspects, whoever
    /// raised the alert, that stayed unrefuted for `suspicion_timeout` and that this node
    /// has not heard from for `suspect_after` either, and the members whose reports said
    /// they are cut off for as long (a one-way partition: heard, but deaf). It names them
    /// only while this node hears from a strict majority of the members it counts
    /// (Lifeguard's local health: a node cut off from most of the network must not ask to
    /// evict the network), and only if `may_evict` (a leaving node evicts no one). The
    /// eviction itself is a view change, which a quorum of the view decides.
    pub fn on_timeout(
        &mut self,
        now: Time,
        map: &mut NetworkMap,
        gossip: &GossipConfig,
        rng: &mut ChaCha8Rng,
        may_evict: bool,
    ) -> CheckOutcome {
        self.probes.refresh(map, now);
        let probe = self
            .probes
            .on_timeout(
                now,
                jitter(rng, gossip.probe_interval),
                gossip.suspect_after,
            )
            .map(|round| (round, self.probes.subjects().cloned().collect()));
        if self.next_check > now {
            return CheckOutcome {
                probe,
                ..CheckOutcome::default()
            };
        }
        self.next_check = now + jitter(rng, gossip.failure_check_interval);
        CheckOutcome {
            probe,
            ..self.check(now, map, gossip, may_evict)
        }
    }

    fn check(
        &mut self,
        now: Time,
        map: &mut NetworkMap,
        gossip: &GossipConfig,
        may_evict: bool,
    ) -> CheckOutcome {
        let me = map.own().record.id.clone();
        let mut fresh = 1; // this node
        let mut unanswered = Vec::new();
        let mut overdue = Vec::new();
        for (id, entry) in map.iter() {
            if *id == me || !entry.record.state.counts() {
                continue;
            }
            let deaf = entry
                .cut_off_since()
                .is_some_and(|since| now.since(since) >= gossip.suspicion_timeout);
            if deaf {
                // heard, but it says it hears no one: it cannot take part, and it would
                // hold the snapshot point still for as long as the one-way cut lasts
                fresh += 1;
                overdue.push(id.clone());
                continue;
            }
            let silent = now.since(entry.last_heard) > gossip.suspect_after;
            if !silent {
                fresh += 1;
            }
            match (entry.record.state, entry.suspect_since()) {
                // only its observers suspect a member: the ones whose probes it left
                // unanswered; the suspicion is the alert every other member adopts
                (MemberState::Alive, _)
                    if self.probes.is_unanswered(id, now, gossip.suspect_after) =>
                {
                    unanswered.push(id.clone())
                }
                (MemberState::Suspect, Some(since))
                    if silent && now.since(since) >= gossip.suspicion_timeout =>
                {
                    overdue.push(id.clone())
                }
                _ => {}
            }
        }
        self.isolated = 2 * fresh <= map.counted();
        map.note_cut_off(self.isolated);
        let mut outcome = CheckOutcome {
            ran: true,
            ..CheckOutcome::default()
        };
        for id in unanswered {
            if map.suspect(&id, now) {
                outcome.suspected += 1;
            }
        }
        if !self.isolated && may_evict {
            outcome.overdue = overdue;
        }
        outcome
    }

    /// Whether this node is isolated, judged again now (after its view changed).
    pub fn reassess(&mut self, now: Time, map: &mut NetworkMap, gossip: &GossipConfig) {
        let silent = Self::silent_members(now, map, gossip).len();
        let counted = map.counted();
        let fresh = counted - silent.min(counted);
        self.isolated = 2 * fresh <= counted;
        map.note_cut_off(self.isolated);
    }

    /// The members in good standing, but this node, that it has not heard from for
    /// `suspect_after`, in id order.
    pub fn silent_members(now: Time, map: &NetworkMap, gossip: &GossipConfig) -> Vec<NodeId> {
        let me = &map.own().record.id;
        map.iter()
            .filter(|(id, e)| *id != me && e.record.state.counts())
            .filter(|(_, e)| now.since(e.last_heard) > gossip.suspect_after)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A node `map` holds as evicted is still gossiping (it has not heard yet): send it
    /// its eviction record directly, at most once per anti-entropy interval, so that an
    /// evicted node learns it within one round trip of reaching any member that knows.
    pub fn tell_if_evicted<S: StateMachine>(
        &mut self,
        now: Time,
        from: &NodeId,
        map: &NetworkMap,
        gossip: &GossipConfig,
        outbox: &mut Outbox<S>,
    ) {
        let Some(entry) = map.get(from) else {
            return;
        };
        if entry.record.state != MemberState::Evicted {
            return;
        }
        let every = gossip.anti_entropy_interval;
        if self
            .told_evicted
            .get(from)
            .is_some_and(|t| now < *t + every)
        {
            return;
        }
        let record = entry.record.clone();
        self.told_evicted.retain(|_, t| now < *t + every);
        self.told_evicted.insert(from.clone(), now);
        outbox.send(from.clone(), Message::Status(Records(vec![record])));
    }
}
