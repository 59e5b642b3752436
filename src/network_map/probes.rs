//! The monitoring overlay: whom this node watches, its probes and their acks, and which of
//! the members it watches stopped answering.
//!
//! Each member watches at most `K` others and is watched by at most `K`: its successors on
//! `K` rings over the members it counts (the view's seats and the joiners their sponsors
//! cover), each ring ordered by a hash of the ring number and the node id, as Rapid's
//! expander rings. Every `probe_interval` an observer probes each of its subjects
//! directly; a subject answers every probe at once. A subject none of whose probes sent in
//! the last `suspect_after` were answered is *unanswered*: the [`super::monitor::Monitor`]
//! suspects it, and the suspicion (a `Suspect` record) is the alert that spreads to every
//! member and feeds the next view change. So the monitoring messages a member handles per
//! second depend on `K`, not on the size of the network.
//!
//! Owns the rings (rebuilt when the members counted change), the probe rounds and the
//! acks. Part of the sans-IO core: time comes in as a value, iteration in key order only.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::NetworkMap;
use crate::node_id::NodeId;
use crate::time::Time;

/// One subject this node watches.
#[derive(Clone, Debug)]
struct Watch {
    /// Since when it is watched: it is not unanswered before `suspect_after` has passed.
    since: Time,
    /// When the newest probe round it answered was sent.
    answered: Option<Time>,
}

/// This node's part of the monitoring overlay (see module doc).
#[derive(Clone, Debug)]
pub struct ProbeOverlay {
    rings: usize,
    /// The `membership_epoch` of the map the subjects were computed from.
    computed_for: Option<u64>,
    subjects: BTreeMap<NodeId, Watch>,
    next_round_at: Time,
    round: u64,
    /// When each recent round was sent, oldest first (rounds older than the suspicion
    /// window are dropped: a late ack of one proves nothing recent).
    sent: VecDeque<(u64, Time)>,
}

impl ProbeOverlay {
    /// An overlay of `rings` rings whose first round goes out at `first_round`.
    pub fn new(rings: usize, first_round: Time) -> Self {
        Self {
            rings,
            computed_for: None,
            subjects: BTreeMap::new(),
            next_round_at: first_round,
            round: 0,
            sent: VecDeque::new(),
        }
    }

    /// When the next probe round is due.
    pub fn next_round_at(&self) -> Time {
        self.next_round_at
    }

    /// The members this node watches, in id order.
    pub fn subjects(&self) -> impl Iterator<Item = &NodeId> {
        self.subjects.keys()
    }

    /// Brings the subjects up to date with the members `map` counts: new subjects are
    /// watched from `now`, those that stay keep their acks.
    pub fn refresh(&mut self, map: &NetworkMap, now: Time) {
        if self.computed_for == Some(map.membership_epoch()) {
            return;
        }
        self.computed_for = Some(map.membership_epoch());
        let me = &map.own().record.id;
        let members: Vec<&NodeId> = map
            .iter()
            .filter(|(_, e)| e.record.state.counts())
            .map(|(id, _)| id)
            .collect();
        let chosen = ring_successors(me, &members, self.rings);
        let mut subjects = BTreeMap::new();
        for id in chosen {
            let watch = self.subjects.remove(&id).unwrap_or(Watch {
                since: now,
                answered: None,
            });
            subjects.insert(id, watch);
        }
        self.subjects = subjects;
    }

    /// A probe round, if one is due: the round number to send to every subject (the
    /// caller sends them), and the next round scheduled `interval` later.
    pub fn on_timeout(&mut self, now: Time, interval: Duration, window: Duration) -> Option<u64> {
        if self.next_round_at > now {
            return None;
        }
        self.next_round_at = now + interval;
        self.round += 1;
        self.sent.push_back((self.round, now));
        while self
            .sent
            .front()
            .is_some_and(|&(_, at)| now.since(at) > window + interval)
        {
            self.sent.pop_front();
        }
        (!self.subjects.is_empty()).then_some(self.round)
    }

    /// `from` answered probe round `round`: it was alive when that round was sent. Acks
    /// of rounds this node did not send recently, or from members it does not watch, are
    /// ignored.
    pub fn on_ack(&mut self, from: &NodeId, round: u64) {
        let Some(watch) = self.subjects.get_mut(from) else {
            return;
        };
        let Some(&(_, sent_at)) = self.sent.iter().find(|(r, _)| *r == round) else {
            return;
        };
        watch.answered = Some(watch.answered.map_or(sent_at, |t| t.max(sent_at)));
    }

    /// Whether this node watches `id` and `id` answered no probe sent in the last `window`
    /// (and it has been watched that long).
    pub fn is_unanswered(&self, id: &NodeId, now: Time, window: Duration) -> bool {
        self.subjects.get(id).is_some_and(|watch| {
            let last = watch.answered.map_or(watch.since, |t| t.max(watch.since));
            now.since(last) > window
        })
    }
}

/// `me`'s successor on each of `rings` rings over `members` (which include `me`), without
/// `me` and without repeats, in id order. With at most `rings` + 1 members, every other
/// member.
pub fn ring_successors(me: &NodeId, members: &[&NodeId], rings: usize) -> Vec<NodeId> {
    if members.len() <= rings + 1 {
        let mut all: Vec<NodeId> = members
            .iter()
            .filter(|id| **id != me)
            .map(|id| (*id).clone())
            .collect();
        all.sort();
        return all;
    }
    let mut chosen = std::collections::BTreeSet::new();
    for ring in 0..rings as u64 {
        // my successor on the ring: the least key above mine, or the least key of all when
        // mine is the greatest (one pass, no sort: this runs at every node)
        let mine = (ring_key(ring, me), me);
        let mut least: Option<([u8; 32], &NodeId)> = None;
        let mut above: Option<([u8; 32], &NodeId)> = None;
        let mut seen_me = false;
        for id in members {
            seen_me |= *id == me;
            let key = (ring_key(ring, id), *id);
            if least.is_none_or(|l| key < l) {
                least = Some(key);
            }
            if key > mine && above.is_none_or(|a| key < a) {
                above = Some(key);
            }
        }
        if !seen_me {
            // not on the rings: it watches no one
            return Vec::new();
        }
        if let Some((_, next)) = above.or(least) {
            if next != me {
                chosen.insert(next.clone());
            }
        }
    }
    chosen.into_iter().collect()
}

fn ring_key(ring: u64, id: &NodeId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&ring.to_le_bytes());
    hasher.update(id.as_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (0..n).map(NodeId::synthetic).collect()
    }

    #[test]
    fn every_member_watches_and_is_watched_by_at_most_k_and_at_least_one() {
        for n in [2u64, 5, 6, 30, 300] {
            let all = ids(n);
            let refs: Vec<&NodeId> = all.iter().collect();
            let mut observers: BTreeMap<&NodeId, usize> = BTreeMap::new();
            for me in &all {
                let subjects = ring_successors(me, &refs, 4);
                assert!(!subjects.is_empty() && subjects.len() <= 4, "n={n}");
                assert!(!subjects.contains(me));
                for s in &subjects {
                    *observers
                        .entry(all.iter().find(|i| *i == s).unwrap())
                        .or_default() += 1;
                }
            }
            assert_eq!(observers.len(), n as usize, "everyone is watched (n={n})");
            assert!(observers.values().all(|&k| (1..=4).contains(&k)), "n={n}");
        }
    }

    #[test]
    fn a_node_outside_the_members_watches_no_one() {
        let all = ids(30);
        let refs: Vec<&NodeId> = all[1..].iter().collect();
        assert!(ring_successors(&all[0], &refs, 4).is_empty());
        assert!(!ring_successors(&all[1], &refs, 4).is_empty());
    }

    #[test]
    fn a_subject_is_unanswered_once_no_probe_of_the_window_was_acked() {
        let all = ids(3);
        let mut map = NetworkMap::new(
            crate::network_map::MemberRecord::founder(all[0].clone()),
            Time::ZERO,
        );
        for id in &all[1..] {
            map.merge(
                std::sync::Arc::new(crate::network_map::MemberRecord::founder(id.clone())),
                Time::ZERO,
            );
        }
        let mut overlay = ProbeOverlay::new(4, Time::ZERO);
        overlay.refresh(&map, Time::ZERO);
        assert_eq!(overlay.subjects().count(), 2);
        let second = Duration::from_secs(1);
        let window = 3 * second;
        let at = |s: u64| Time::ZERO + Duration::from_secs(s);
        for s in 0..=5 {
            let round = overlay.on_timeout(at(s), second, window).expect("a round");
            overlay.on_ack(&all[1], round); // 1 answers, 2 never does
        }
        assert!(!overlay.is_unanswered(&all[1], at(5), window));
        assert!(overlay.is_unanswered(&all[2], at(5), window));
        // an ack of a round never sent, or from a member not watched, changes nothing
        overlay.on_ack(&all[2], 999);
        overlay.on_ack(&NodeId::synthetic(77), 6);
        assert!(overlay.is_unanswered(&all[2], at(5), window));
        // a late ack of an old round does not make the subject look alive now
        overlay.on_ack(&all[2], 3);
        assert!(overlay.is_unanswered(&all[2], at(7), window));
    }
}
