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
    /// How long its last answer took, from the round's send to its ack's handling.
    round_trip: Option<Duration>,
}

/// How much longer than the longer of this node's own delay (the median round trip of its
/// subjects' answers) and the subject's last round trip a silence must last before it
/// counts: see [`ProbeOverlay::is_unanswered`].
const DELAY_FACTOR: u32 = 3;
/// However late its answers come, a silence of this many `suspect_after` windows counts.
const MAX_WINDOW_STRETCH: u32 = 3;

/// This node's part of the monitoring overlay (see module doc).
#[derive(Clone, Debug)]
pub struct ProbeOverlay {
    rings: usize,
    /// The `membership_epoch` of the map the subjects were computed from.
    computed_for: Option<u64>,
    subjects: BTreeMap<NodeId, Watch>,
    next_round_at: Time,
    round: u64,
    /// When each recent round was sent, oldest first (rounds older than the longest
    /// suspicion window are dropped: a late ack of one proves nothing recent).
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
                round_trip: None,
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
        // a round is kept as long as an answer to it can still count (the window at its
        // longest stretch)
        while self
            .sent
            .front()
            .is_some_and(|&(_, at)| now.since(at) > window * MAX_WINDOW_STRETCH + interval)
        {
            self.sent.pop_front();
        }
        (!self.subjects.is_empty()).then_some(self.round)
    }

    /// `from` answered probe round `round` (the ack is handled at `now`): it was alive
    /// when that round was sent. Acks of rounds this node did not send recently, or from
    /// members it does not watch, are ignored.
    pub fn on_ack(&mut self, from: &NodeId, round: u64, now: Time) {
        let Some(watch) = self.subjects.get_mut(from) else {
            return;
        };
        let Some(&(_, sent_at)) = self.sent.iter().find(|(r, _)| *r == round) else {
            return;
        };
        watch.answered = Some(watch.answered.map_or(sent_at, |t| t.max(sent_at)));
        watch.round_trip = Some(now.since(sent_at));
    }

    /// This node's own delay: the median of its subjects' last round trips (the lower
    /// one of an even count; zero before any answer). One slow or silent subject does not
    /// move it; a node whose own event loop lags sees every answer late, and so does a
    /// node in a network where every member lags.
    pub fn own_delay(&self) -> Duration {
        let mut trips: Vec<Duration> = self
            .subjects
            .values()
            .filter_map(|w| w.round_trip)
            .collect();
        if trips.is_empty() {
            return Duration::ZERO;
        }
        trips.sort_unstable();
        trips[(trips.len() - 1) / 2]
    }

    /// Whether this node watches `id` and `id` answered no probe sent in the last `window`
    /// (and it has been watched that long). The window is stretched to [`DELAY_FACTOR`]
    /// times the longer of two delays, up to [`MAX_WINDOW_STRETCH`] windows:
    /// - this node's [own delay](Self::own_delay): a node that hears every answer late must
    ///   not take its own lateness for its subjects' silence (Lifeguard's local health, in
    ///   SWIM terms);
    /// - the subject's own last round trip: silence counts from when the last answered
    ///   round was *sent*, so a subject that answers every probe, but each after seconds
    ///   (its event loop behind a burst of work), would look silent all the time. A
    ///   retransmission timeout adapts to each peer's round trip the same way. A subject
    ///   that stops answering is still found, three of its round trips after the last
    ///   round it answered.
    ///
    /// Where answers take a fraction of a second, as they should, the window is `window`.
    pub fn is_unanswered(&self, id: &NodeId, now: Time, window: Duration) -> bool {
        // asked for every member in the map: the window is worked out for subjects only
        self.subjects.get(id).is_some_and(|watch| {
            let last = watch.answered.map_or(watch.since, |t| t.max(watch.since));
            let silence = now.since(last);
            let delay = self.own_delay().max(watch.round_trip.unwrap_or_default());
            silence
                > window
                    .max(delay * DELAY_FACTOR)
                    .min(window * MAX_WINDOW_STRETCH)
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

    /// The overlay of `all[0]` in a map of `all` founders, refreshed at time zero.
    fn first_watching_the_rest(all: &[NodeId]) -> ProbeOverlay {
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
        overlay
    }

    #[test]
    fn a_subject_is_unanswered_once_no_probe_of_the_window_was_acked() {
        let all = ids(3);
        let mut overlay = first_watching_the_rest(&all);
        assert_eq!(overlay.subjects().count(), 2);
        let second = Duration::from_secs(1);
        let window = 3 * second;
        let at = |s: u64| Time::ZERO + Duration::from_secs(s);
        for s in 0..=5 {
            let round = overlay.on_timeout(at(s), second, window).expect("a round");
            overlay.on_ack(&all[1], round, at(s)); // 1 answers, 2 never does
        }
        assert!(!overlay.is_unanswered(&all[1], at(5), window));
        assert!(overlay.is_unanswered(&all[2], at(5), window));
        // an ack of a round never sent, or from a member not watched, changes nothing
        overlay.on_ack(&all[2], 999, at(5));
        overlay.on_ack(&NodeId::synthetic(77), 6, at(5));
        assert!(overlay.is_unanswered(&all[2], at(5), window));
        // a late ack of an old round proves the subject alive when that round went out,
        // not now: after the 5 s that answer took, the window is at its longest (9 s from
        // the round, sent at 2 s), no longer
        overlay.on_ack(&all[2], 3, at(7));
        assert!(!overlay.is_unanswered(&all[2], at(7), window));
        let ms = |ms: u64| Time::ZERO + Duration::from_millis(ms);
        assert!(!overlay.is_unanswered(&all[2], ms(10_900), window));
        assert!(overlay.is_unanswered(&all[2], ms(11_100), window));
    }

    /// Five members: this node (the first) watches the other four. Rounds go out every
    /// second; `answer(round sent at, subject)` says after how long its ack is handled.
    fn overlay_after(
        until_ms: u64,
        answer: impl Fn(u64, usize) -> Option<u64>,
    ) -> (ProbeOverlay, Vec<NodeId>) {
        let all = ids(5);
        let mut overlay = first_watching_the_rest(&all);
        assert_eq!(overlay.subjects().count(), 4);
        let window = Duration::from_secs(3);
        let at = |ms: u64| Time::ZERO + Duration::from_millis(ms);
        // (handled at, subject, round), in the order they are handled
        let mut acks: Vec<(u64, usize, u64)> = Vec::new();
        for ms in (0..=until_ms).step_by(50) {
            if let Some(round) = overlay.on_timeout(at(ms), Duration::from_secs(1), window) {
                for subject in 1..5 {
                    if let Some(delay) = answer(ms, subject) {
                        acks.push((ms + delay, subject, round));
                    }
                }
            }
            acks.sort_unstable();
            while acks.first().is_some_and(|a| a.0 <= ms) {
                let (_, subject, round) = acks.remove(0);
                overlay.on_ack(&all[subject], round, at(ms));
            }
        }
        (overlay, all)
    }

    #[test]
    fn a_node_that_hears_every_answer_late_does_not_take_its_lateness_for_silence() {
        let window = Duration::from_secs(3);
        let now = Time::ZERO + Duration::from_millis(10_400);
        // subject 4 is silent; the others answer within 20 ms
        let (prompt, all) = overlay_after(10_400, |_, s| (s != 4).then_some(20));
        assert!(prompt.own_delay() <= Duration::from_millis(50));
        assert!(prompt.is_unanswered(&all[4], now, window));
        assert!((1..4).all(|s| !prompt.is_unanswered(&all[s], now, window)));
        // every answer is handled 2.5 s after its probe went out (this node's event loop
        // lags): the newest round answered by now went out 3.4 s ago, yet no one who
        // answers is taken for silent; the silent one still is, once the stretched window
        // has passed
        let (late, all) = overlay_after(10_400, |_, s| (s != 4).then_some(2_500));
        assert!(late.own_delay() >= Duration::from_millis(2_500));
        assert!((1..4).all(|s| !late.is_unanswered(&all[s], now, window)));
        assert!(late.is_unanswered(&all[4], now, window));
        // without the stretch the answering ones would be suspected
        assert!((1..4).all(|s| {
            let w = late.subjects.get(&all[s]).expect("watched");
            now.since(w.answered.expect("answered")) > window
        }));
        // one subject that answers every probe late is not taken for silent: its window
        // stretches to three of its own round trips, and only its own (the silent one is
        // found when the others answer promptly, as above)
        let (one_late, all) = overlay_after(10_400, |_, s| match s {
            4 => None,
            3 => Some(2_500),
            _ => Some(20),
        });
        assert!(one_late.own_delay() <= Duration::from_millis(50));
        let w = one_late.subjects.get(&all[3]).expect("watched");
        assert!(now.since(w.answered.expect("answered")) > window);
        assert!(!one_late.is_unanswered(&all[3], now, window));
        assert!(one_late.is_unanswered(&all[4], now, window));
        // ... and when that late subject stops answering, it is found three of its round
        // trips after the last round it answered: that round went out at 7.0 s, and its
        // answer came 2.5 s later
        let (stopped, all) = overlay_after(10_400, |sent, s| match s {
            3 if sent <= 7_000 => Some(2_500),
            3 | 4 => None,
            _ => Some(20),
        });
        let at = |ms: u64| Time::ZERO + Duration::from_millis(ms);
        assert!(!stopped.is_unanswered(&all[3], at(14_400), window));
        assert!(stopped.is_unanswered(&all[3], at(14_600), window));
        // an answer within a third of the window changes nothing: such a subject is found
        // after the window itself, as a prompt one
        let (brisk, all) = overlay_after(10_400, |sent, s| match s {
            3 if sent <= 7_000 => Some(900),
            3 | 4 => None,
            _ => Some(20),
        });
        assert!(!brisk.is_unanswered(&all[3], at(9_900), window));
        assert!(brisk.is_unanswered(&all[3], at(10_100), window));
        // a stretch is bounded: answers that take ever longer leave a silence of three
        // windows counted
        let (slow, all) = overlay_after(20_000, |_, s| (s != 4).then_some(5_000));
        assert!(slow.own_delay() >= Duration::from_millis(5_000));
        assert!(slow.is_unanswered(&all[4], Time::ZERO + Duration::from_millis(9_100), window));
        assert!(!slow.is_unanswered(&all[1], Time::ZERO + Duration::from_millis(20_000), window));
    }
}
