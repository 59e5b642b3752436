//! What view a member asks for: the change its network map and failure detector call for,
//! and when it is this member's turn to propose it. The agreement itself
//! ([`super::view::ViewAgreement`]) decides; this module only says what to put to it.
//!
//! Pure functions and a small timer; iteration in id order only.

use std::time::Duration;

use super::view::{Eviction, Memberships, View, ViewChange};
use super::{MemberState, NetworkMap};
use crate::node_id::NodeId;
use crate::time::Time;

/// What a proposer knows that shapes the next view.
pub struct Observations<'a> {
    pub map: &'a NetworkMap,
    /// Members this node's failure detector wants evicted (suspected and silent past the
    /// suspicion timeout). Empty while the node is isolated, or leaving.
    pub overdue: &'a [NodeId],
    /// This node is leaving and its ops are stable: it asks to be removed.
    pub leaving: bool,
    pub now: Time,
    pub suspect_after: Duration,
}

/// The next view `view` should give way to, from what this node observes, or `None` when
/// the installed view is what it would ask for.
///
/// - A member of a newer incarnation replaces its old one, once it has reported; if the
///   new incarnation is overdue, the member is removed and that incarnation evicted.
/// - A member that left, or that the map already holds as evicted, is removed.
/// - An overdue suspect is removed and evicted, with the registrations the map knows.
/// - A member the map counts that the view lacks (a joiner that has reported, was heard
///   from recently and does not say it is cut off) is added; one that is overdue is
///   evicted instead.
/// - A member that is heard but says it is cut off (deaf) is evicted only if the next view
///   keeps a strict majority of live seats (heard, not cut off) after one more loss.
/// - No change is asked for while the members this node heard from recently would not be a
///   strict majority of the next view: it waits until the silent ones are overdue too.
pub fn wanted_change(view: &View, seen: &Observations) -> Option<ViewChange> {
    wanted_change_settled(view, seen).0
}

/// [`wanted_change`], and whether its answer is a settled "no change": nothing overdue, no
/// leave, every member of the view held as the view holds it, and no joiner waiting in
/// the map. Such an answer depends on neither the time nor the failure detector, so it
/// stands until the view or a record in the map changes
/// ([`NetworkMap::records_generation`]): a node need not look at every member again.
pub fn wanted_change_settled(view: &View, seen: &Observations) -> (Option<ViewChange>, bool) {
    let me = &seen.map.own().record.id;
    // the next view starts as this one (a persistent map: the clone shares it) and only
    // the memberships that change are written
    let mut next: Memberships = view.members.clone();
    let mut evicted: Vec<Eviction> = Vec::new();
    for (id, incarnation) in &view.members {
        if id == me {
            if seen.leaving {
                next.remove(id);
            }
            continue;
        }
        let Some(entry) = seen.map.get(id) else {
            continue;
        };
        let record = &entry.record;
        if record.incarnation < *incarnation {
            // this map is behind: keep what the view says
        } else if record.incarnation > *incarnation {
            if record.state.counts() && seen.overdue.contains(id) {
                // its new membership went silent too (registered, then crashed before it
                // reported, say): both go, or the seat would wait for it forever
                let known = seen.map.known_registrations(id, record.incarnation);
                next.remove(id);
                evicted.push(Eviction {
                    id: id.clone(),
                    incarnation: record.incarnation,
                    registrations: record.registrations.max(known),
                });
            } else if record.state.counts() && record.report_seq >= 1 {
                next.insert(id.clone(), record.incarnation);
            } else if !record.state.counts() {
                next.remove(id);
            }
            // else registered, not reported yet: the old incarnation stays until then
        } else {
            match record.state {
                MemberState::Left => {
                    next.remove(id);
                }
                MemberState::Evicted => {
                    next.remove(id);
                    evicted.push(Eviction {
                        id: id.clone(),
                        incarnation: *incarnation,
                        registrations: record.registrations,
                    });
                }
                MemberState::Alive | MemberState::Suspect => {
                    if seen.overdue.contains(id) {
                        let known = seen.map.known_registrations(id, *incarnation);
                        next.remove(id);
                        evicted.push(Eviction {
                            id: id.clone(),
                            incarnation: *incarnation,
                            registrations: record.registrations.max(known),
                        });
                    }
                }
            }
        }
    }
    for id in seen.overdue {
        // a registered joiner that never reported, or went silent before the view admitted
        // it: it holds the snapshot point back like a member, and is evicted like one
        if view.members.contains_key(id) || id == me {
            continue;
        }
        if let Some(entry) = seen.map.get(id) {
            let record = &entry.record;
            if record.state.counts() {
                let known = seen.map.known_registrations(id, record.incarnation);
                evicted.push(Eviction {
                    id: id.clone(),
                    incarnation: record.incarnation,
                    registrations: record.registrations.max(known),
                });
            }
        }
    }
    let mut joiners = false;
    for (id, entry) in seen.map.iter() {
        let record = &entry.record;
        let joined = record.state == MemberState::Alive && record.report_seq >= 1;
        if id == me || !joined || view.members.contains_key(id) {
            continue;
        }
        joiners = true;
        let heard = seen.now.since(entry.last_heard) <= seen.suspect_after;
        let wanted = !record.cut_off && !seen.overdue.contains(id);
        if heard && wanted {
            next.insert(id.clone(), record.incarnation);
        }
    }
    let settled = seen.overdue.is_empty()
        && !seen.leaving
        && !joiners
        && evicted.is_empty()
        && next.ptr_eq(&view.members);
    if settled {
        return (None, true);
    }
    let heard = |id: &NodeId| {
        id == me
            || seen
                .map
                .get(id)
                .is_some_and(|e| seen.now.since(e.last_heard) <= seen.suspect_after)
    };
    // Evicting a member that is heard (one that says it is cut off: deaf, but running)
    // shrinks the view by choice: only while the next view keeps one loss to spare, a
    // strict majority of its seats heard and not cut off even without one of them. Else
    // the deaf members keep their seats until they hear again.
    let deaf: Vec<usize> = (0..evicted.len())
        .filter(|&i| heard(&evicted[i].id))
        .collect();
    if !deaf.is_empty() {
        let live = next
            .keys()
            .filter(|id| heard(id))
            .filter(|id| *id == me || !seen.map.get(id).is_some_and(|e| e.record.cut_off))
            .count();
        if 2 * live.saturating_sub(1) <= next.len() {
            for i in deaf.into_iter().rev() {
                let kept = evicted.remove(i);
                if let Some(seat) = view.members.get(&kept.id) {
                    next.insert(kept.id, *seat);
                }
            }
        }
    }
    // A view in which the seats this node hears from are not a strict majority could not
    // change again (one more crash and it is stuck): wait until the silent ones are overdue
    // too and go in the same change, rather than leave them a majority. (A last seat that
    // leaves asks for a view with none: nothing is left to change it.)
    if !next.is_empty() && 2 * next.keys().filter(|id| heard(id)).count() <= next.len() {
        return (None, false);
    }
    if next == view.members
        && evicted
            .iter()
            .all(|e| !seen.map.get(&e.id).is_some_and(|m| m.record.state.counts()))
    {
        return (None, false);
    }
    let change = ViewChange {
        next: View {
            epoch: view.epoch + 1,
            members: next,
        },
        evicted,
    };
    (Some(change), false)
}

/// When this member proposes: the voters it hears from take turns in id order, each
/// `patience` after the one before, so that one proposer usually runs alone; a member
/// asking for its own removal (a leave) goes at once.
#[derive(Debug, Default, Clone)]
pub struct ProposerTurn {
    /// Since when this node has wanted a change it has not seen decided.
    wanting_since: Option<Time>,
}

impl ProposerTurn {
    /// Whether to propose now, given whether a change is wanted, this node's rank among
    /// the voters it hears from (0 = lowest id), and whether the change is its own leave.
    pub fn due(
        &mut self,
        now: Time,
        wanted: bool,
        rank: usize,
        own_leave: bool,
        patience: Duration,
    ) -> bool {
        if !wanted {
            self.wanting_since = None;
            return false;
        }
        let since = *self.wanting_since.get_or_insert(now);
        own_leave || now.since(since) >= patience * rank as u32
    }

    /// A view was installed: whatever was wanted starts waiting again.
    pub fn on_installed(&mut self) {
        self.wanting_since = None;
    }
}

/// This node's rank among the voters of `view` it has heard from within `suspect_after`
/// (itself included), in id order.
pub fn rank(view: &View, map: &NetworkMap, now: Time, suspect_after: Duration) -> usize {
    let me = &map.own().record.id;
    view.members
        .keys()
        .take_while(|id| *id != me)
        .filter(|id| {
            map.get(id).is_some_and(|e| {
                e.record.state.counts() && now.since(e.last_heard) <= suspect_after
            })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::network_map::{MemberRecord, Sponsorship};

    fn id(i: u64) -> NodeId {
        NodeId::synthetic(i)
    }

    fn seen<'a>(map: &'a NetworkMap, overdue: &'a [NodeId], now: Time) -> Observations<'a> {
        Observations {
            map,
            overdue,
            leaving: false,
            now,
            suspect_after: Duration::from_secs(3),
        }
    }

    /// A map at node 0 that knows founders 0, 1, 2 (their first reports, adopted at `at`).
    fn founders_map(at: Time) -> NetworkMap {
        let mut map = NetworkMap::new(MemberRecord::founder(id(0)), at);
        for i in 1..3 {
            map.merge(Arc::new(MemberRecord::founder(id(i))), at);
        }
        map
    }

    #[test]
    fn a_seat_whose_new_incarnation_went_silent_before_reporting_is_evicted() {
        let mut map = founders_map(Time::ZERO + Duration::from_secs(9));
        // node 2 restarted and was registered again (incarnation 2), then crashed before
        // its first report
        map.merge(
            Arc::new(MemberRecord {
                incarnation: 2,
                report_seq: 0,
                sponsor: Some(Sponsorship {
                    sponsor: id(1),
                    sponsor_incarnation: 1,
                    reg_no: 1,
                }),
                ..MemberRecord::founder(id(2))
            }),
            Time::ZERO + Duration::from_secs(1),
        );
        let view = View::founding((0..3).map(id));
        let now = Time::ZERO + Duration::from_secs(10);
        assert_eq!(
            wanted_change(&view, &seen(&map, &[], now)),
            None,
            "not overdue: the old seat waits for the new incarnation's first report"
        );
        let overdue = [id(2)];
        let change = wanted_change(&view, &seen(&map, &overdue, now)).expect("a change");
        assert!(!change.next.members.contains_key(&id(2)));
        assert_eq!(change.evicted.len(), 1);
        assert_eq!(change.evicted[0].id, id(2));
        assert_eq!(
            change.evicted[0].incarnation, 2,
            "the newest membership goes"
        );
    }

    #[test]
    fn a_joiner_that_says_it_is_cut_off_is_not_admitted() {
        let mut map = founders_map(Time::ZERO);
        let joiner = |cut_off| {
            Arc::new(MemberRecord {
                report_seq: 1,
                cut_off,
                ..MemberRecord::founder(id(7))
            })
        };
        map.merge(joiner(true), Time::ZERO);
        let view = View::founding((0..3).map(id));
        assert_eq!(wanted_change(&view, &seen(&map, &[], Time::ZERO)), None);
        map.merge(
            Arc::new(MemberRecord {
                report_seq: 2,
                ..(*joiner(false)).clone()
            }),
            Time::ZERO,
        );
        let change = wanted_change(&view, &seen(&map, &[], Time::ZERO)).expect("admitted");
        assert!(change.next.has(&id(7), 1));
    }

    fn seats(change: &ViewChange) -> std::collections::BTreeSet<NodeId> {
        change.next.members.keys().cloned().collect()
    }

    fn ids(of: &[u64]) -> std::collections::BTreeSet<NodeId> {
        of.iter().map(|&i| id(i)).collect()
    }

    /// A map at node 0 with members 0..n: those in `silent` last reported at 0 s, the
    /// others at 9 s, those in `deaf` saying they are cut off. The clock then reads 10 s.
    fn map_at_ten_seconds(n: u64, silent: &[u64], deaf: &[u64]) -> (NetworkMap, Time) {
        let at = |s: u64| Time::ZERO + Duration::from_secs(s);
        let mut map = NetworkMap::new(MemberRecord::founder(id(0)), at(9));
        for i in 1..n {
            let when = if silent.contains(&i) { at(0) } else { at(9) };
            let record = MemberRecord {
                cut_off: deaf.contains(&i),
                ..MemberRecord::founder(id(i))
            };
            map.merge(Arc::new(record), when);
        }
        (map, at(10))
    }

    #[test]
    fn deaf_members_keep_their_seats_when_evicting_them_leaves_no_loss_to_spare() {
        let view = View::founding((0..4).map(id));
        // 1 and 2 are deaf (heard, cut off) and overdue; 3 is silent, not overdue yet
        let (map, now) = map_at_ten_seconds(4, &[3], &[1, 2]);
        let overdue = [id(1), id(2)];
        assert_eq!(
            wanted_change(&view, &seen(&map, &overdue, now)),
            None,
            "a view of 0 and the silent 3 would be stuck at the next loss"
        );
        // once 3 is overdue too, it goes; the deaf ones stay until they hear again
        let overdue = [id(1), id(2), id(3)];
        let change = wanted_change(&view, &seen(&map, &overdue, now)).expect("a change");
        assert_eq!(seats(&change), ids(&[0, 1, 2]));
        assert_eq!(change.evicted.len(), 1);
        assert_eq!(change.evicted[0].id, id(3));
        // in a larger view the deaf are evicted: the rest can lose one more and go on
        let view = View::founding((0..7).map(id));
        let (map, now) = map_at_ten_seconds(7, &[], &[5, 6]);
        let overdue = [id(5), id(6)];
        let change = wanted_change(&view, &seen(&map, &overdue, now)).expect("a change");
        assert_eq!(change.next.members.len(), 5);
        assert_eq!(change.evicted.len(), 2);
    }

    #[test]
    fn no_view_is_asked_for_in_which_the_silent_seats_are_half() {
        let view = View::founding((0..5).map(id));
        // 1 and 2 silent (suspected, not overdue yet); 3 overdue
        let (map, now) = map_at_ten_seconds(5, &[1, 2, 3], &[]);
        let overdue = [id(3)];
        assert_eq!(wanted_change(&view, &seen(&map, &overdue, now)), None);
        let overdue = [id(1), id(2), id(3)];
        let change = wanted_change(&view, &seen(&map, &overdue, now)).expect("a change");
        assert_eq!(seats(&change), ids(&[0, 4]));
        assert_eq!(change.evicted.len(), 3);
    }

    #[test]
    fn the_last_seat_that_leaves_asks_for_a_view_without_seats() {
        let map = NetworkMap::new(MemberRecord::founder(id(0)), Time::ZERO);
        let view = View::founding([id(0)]);
        let leaving = Observations {
            leaving: true,
            ..seen(&map, &[], Time::ZERO)
        };
        let change = wanted_change(&view, &leaving).expect("a view without it");
        assert!(change.next.members.is_empty());
    }
}
