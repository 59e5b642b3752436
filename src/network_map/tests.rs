use proptest::prelude::*;

use super::*;

fn id(i: u64) -> NodeId {
    NodeId::synthetic(i)
}

fn vv(entries: &[(u64, u64)]) -> VersionVector {
    entries.iter().map(|&(o, s)| (id(o), s)).collect()
}

fn record(member: u64, report_seq: u64, applied: &[(u64, u64)]) -> MemberRecord {
    MemberRecord {
        report_seq,
        applied: vv(applied),
        ..MemberRecord::founder(id(member))
    }
}

#[test]
fn snapshot_point_is_the_pointwise_minimum_of_members() {
    // Seen from N1, single origin O: N1 [A,B], N2 [A,B,D→3], N3 [A,B,C→3].
    let mut map = NetworkMap::new(record(1, 1, &[(9, 2)]), Time::ZERO);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 2)]));
    map.merge(Arc::new(record(2, 1, &[(9, 3)])), Time::ZERO);
    map.merge(Arc::new(record(3, 1, &[(9, 3), (8, 1)])), Time::ZERO);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 2)]));
    map.report_own(vv(&[(9, 3), (8, 1)]), Time::ZERO, |_| {});
    assert_eq!(map.own().record.report_seq, 2);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 3)]));
    map.merge(Arc::new(record(2, 2, &[(9, 3), (8, 1)])), Time::ZERO);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 3), (8, 1)]));
}

#[test]
fn older_records_are_ignored_and_left_members_stop_counting() {
    let mut map = NetworkMap::load(
        record(1, 1, &[(9, 5)]),
        vec![Arc::new(record(2, 3, &[(9, 4)]))],
        Time::ZERO,
    );
    assert_eq!(
        map.merge(Arc::new(record(2, 2, &[(9, 1)])), Time::ZERO),
        MergeOutcome::Outdated
    );
    assert_eq!(map.snapshot_point(), &vv(&[(9, 4)]));
    let mut gone = record(2, 4, &[(9, 4)]);
    gone.state = MemberState::Left;
    map.merge(Arc::new(gone), Time::ZERO);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 5)]));
    assert_eq!(map.counted(), 1);
    assert_eq!(map.len(), 2);
}

#[test]
fn a_sponsor_record_waits_until_its_registrations_are_known() {
    let mut map = NetworkMap::load(
        record(1, 1, &[(9, 2)]),
        vec![Arc::new(record(2, 1, &[(9, 1)]))],
        Time::ZERO,
    );
    // N2 registered N5 at cut [O:1], then advanced to 2: its record says 1 registration.
    let mut sponsor = record(2, 2, &[(9, 2)]);
    sponsor.registrations = 1;
    assert_eq!(
        map.merge(Arc::new(sponsor), Time::ZERO),
        MergeOutcome::Pending
    );
    assert_eq!(
        map.snapshot_point(),
        &vv(&[(9, 1)]),
        "N2's newer report must not count yet"
    );
    let joiner = MemberRecord {
        report_seq: 0,
        sponsor: Some(Sponsorship {
            sponsor: id(2),
            sponsor_incarnation: 1,
            reg_no: 1,
        }),
        ..record(5, 0, &[(9, 1)])
    };
    assert_eq!(
        map.merge(Arc::new(joiner), Time::ZERO),
        MergeOutcome::Adopted
    );
    assert_eq!(map.pending_len(), 0);
    assert_eq!(map.get(&id(2)).unwrap().record.report_seq, 2);
    assert_eq!(
        map.snapshot_point(),
        &vv(&[(9, 1)]),
        "N5 holds the point at its cut"
    );
    assert_eq!(map.counted(), 3);
}

#[test]
fn anti_entropy_digest_finds_what_a_peer_lacks() {
    let mut a = NetworkMap::new(record(1, 1, &[]), Time::ZERO);
    a.merge(Arc::new(record(2, 5, &[(9, 1)])), Time::ZERO);
    let mut b = NetworkMap::new(record(3, 1, &[]), Time::ZERO);
    b.merge(Arc::new(record(2, 3, &[])), Time::ZERO);
    let newer: Vec<_> = a
        .newer_than(&b.versions())
        .iter()
        .map(|r| r.id.clone())
        .collect();
    let mut expected = vec![id(1), id(2)];
    expected.sort();
    assert_eq!(
        newer, expected,
        "a's own record and its newer record of 2, not b's"
    );
    assert!(b.behind(&a.versions()));
    for r in a.newer_than(&b.versions()) {
        b.merge(r, Time::ZERO);
    }
    assert!(!b.behind(&a.versions()));
}

#[test]
fn apply_delta_moves_the_minimum() {
    let mut map = NetworkMap::load(
        record(1, 1, &[(9, 3)]),
        vec![Arc::new(record(2, 1, &[(9, 1)]))],
        Time::ZERO,
    );
    assert!(map.apply_delta(&id(2), &[(id(9), 2)]));
    assert_eq!(map.snapshot_point(), &vv(&[(9, 2)]));
    assert!(!map.apply_delta(&id(77), &[(id(9), 2)]));
}

#[test]
fn a_new_membership_below_the_snapshot_point_is_evicted_on_arrival() {
    let mut map = NetworkMap::new(record(1, 1, &[(9, 3)]), Time::ZERO);
    assert_eq!(
        map.merge(Arc::new(record(2, 1, &[(9, 3)])), Time::ZERO),
        MergeOutcome::Adopted
    );
    // counting 4 at [9:1] would lower the snapshot point from [9:3]
    map.merge(Arc::new(record(4, 1, &[(9, 1)])), Time::ZERO);
    assert_eq!(map.get(&id(4)).unwrap().record.state, MemberState::Evicted);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 3)]));
    assert_eq!(map.evicted_on_arrival(), 1);
    assert_eq!(map.take_evictions(), vec![(id(4), 1)]);
    // a known member's newer report is never subject to it
    map.merge(Arc::new(record(2, 2, &[(9, 4)])), Time::ZERO);
    assert_eq!(map.get(&id(2)).unwrap().record.state, MemberState::Alive);
}

#[test]
fn a_suspicion_is_refuted_by_the_next_report_and_an_eviction_is_final() {
    let t = Time::from_millis;
    let mut map = NetworkMap::load(record(1, 1, &[]), vec![Arc::new(record(2, 4, &[]))], t(0));
    assert!(map.suspect(&id(2), t(10)));
    let entry = map.get(&id(2)).unwrap();
    assert_eq!(entry.record.state, MemberState::Suspect);
    assert_eq!(entry.suspect_since(), Some(t(10)));
    assert_eq!(map.counted(), 2, "a suspect still counts");
    // a stale copy of the suspected report does not clear the suspicion
    assert_eq!(
        map.merge(Arc::new(record(2, 4, &[])), t(20)),
        MergeOutcome::Outdated
    );
    // the member's next report does, and counts as news from it
    map.merge(Arc::new(record(2, 5, &[])), t(30));
    let entry = map.get(&id(2)).unwrap();
    assert_eq!(entry.record.state, MemberState::Alive);
    assert_eq!(entry.suspect_since(), None);
    assert_eq!(entry.last_heard, t(30));

    assert!(map.evict(&id(2), t(40)));
    assert_eq!(map.counted(), 1);
    // nothing the member says in that incarnation brings it back
    assert_eq!(
        map.merge(Arc::new(record(2, 1_000, &[])), t(50)),
        MergeOutcome::Outdated
    );
    // a new incarnation (a rejoin through a sponsor) does
    let rejoined = MemberRecord {
        incarnation: 2,
        ..record(2, 1, &[])
    };
    assert_eq!(map.merge(Arc::new(rejoined), t(60)), MergeOutcome::Adopted);
    assert_eq!(map.counted(), 2);
}

#[test]
fn an_eviction_accounts_for_every_registration_the_evictor_knows() {
    let mut map = NetworkMap::load(
        record(1, 1, &[]),
        vec![Arc::new(record(2, 1, &[]))],
        Time::ZERO,
    );
    // 2 registered 5; this map learned it from 5's own record before 2 reported it
    let joiner = MemberRecord {
        sponsor: Some(Sponsorship {
            sponsor: id(2),
            sponsor_incarnation: 1,
            reg_no: 1,
        }),
        ..record(5, 1, &[])
    };
    map.merge(Arc::new(joiner), Time::ZERO);
    assert!(map.evict(&id(2), Time::ZERO));
    let evicted = map.get(&id(2)).unwrap().record.clone();
    assert_eq!(evicted.registrations, 1);
    // a map that does not know 5 yet must not adopt the eviction without it
    let mut other = NetworkMap::load(
        record(3, 1, &[]),
        vec![Arc::new(record(2, 1, &[]))],
        Time::ZERO,
    );
    assert_eq!(other.merge(evicted, Time::ZERO), MergeOutcome::Pending);
    assert!(other.is_counted(&id(2)));
}

#[derive(Debug, Clone)]
enum Step {
    Report {
        member: u64,
        bumps: Vec<(u64, u64)>,
        leave: bool,
    },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u64..6,
            prop::collection::vec((0u64..5, 0u64..4), 0..4),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(member, bumps, leave)| Step::Report {
                member,
                bumps,
                leave,
            }),
        1..60,
    )
}

proptest! {
    /// The incremental minimum equals a naive recompute over the adopted records, whatever
    /// order records arrive in, including stale and duplicate deliveries.
    #[test]
    fn merge_matches_a_naive_model(steps in steps(), redeliver in prop::collection::vec(any::<prop::sample::Index>(), 0..30)) {
        let mut map = NetworkMap::new(record(100, 1, &[]), Time::ZERO);
        let mut latest: BTreeMap<u64, MemberRecord> = BTreeMap::new();
        let mut sent: Vec<Arc<MemberRecord>> = Vec::new();
        for Step::Report { member, bumps, leave } in steps {
            let prev = latest.get(&member).cloned().unwrap_or_else(|| record(member, 0, &[]));
            if prev.state == MemberState::Left { continue; }
            let mut next = prev.clone();
            next.report_seq += 1;
            for (origin, by) in bumps {
                let cur = next.applied.get(&id(origin));
                next.applied.set(id(origin), cur + by);
            }
            if leave { next.state = MemberState::Left; }
            latest.insert(member, next.clone());
            let arc = Arc::new(next);
            sent.push(arc.clone());
            map.merge(arc, Time::ZERO);
        }
        for i in redeliver {
            if !sent.is_empty() {
                let r = sent[i.index(sent.len())].clone();
                prop_assert_ne!(map.merge(r, Time::ZERO), MergeOutcome::Adopted);
            }
        }
        // naive: min over own (empty) and every counted member
        let mut naive: Option<VersionVector> = Some(VersionVector::new());
        for r in latest.values().filter(|r| r.state.counts()) {
            naive = naive.map(|n| n.meet(&r.applied));
        }
        prop_assert_eq!(map.snapshot_point(), &naive.unwrap());

        // now with a non-empty own vector: set own to the join of everything
        let mut all = VersionVector::new();
        for r in latest.values() { all.join(&r.applied); }
        map.report_own(all.clone(), Time::ZERO, |_| {});
        let mut naive = all;
        for r in latest.values().filter(|r| r.state.counts()) {
            naive = naive.meet(&r.applied);
        }
        prop_assert_eq!(map.snapshot_point(), &naive);
        prop_assert_eq!(map.counted(), 1 + latest.values().filter(|r| r.state.counts()).count());
    }

    #[test]
    fn min_tracker_matches_naive(vectors in prop::collection::vec(prop::collection::vec((0u64..4, 0u64..5), 0..4), 1..8),
                                 changes in prop::collection::vec((any::<prop::sample::Index>(), 0u64..4, 0u64..9), 0..20),
                                 removals in prop::collection::vec(any::<prop::sample::Index>(), 0..3)) {
        let mut vs: Vec<VersionVector> = vectors.iter().map(|v| v.iter().map(|&(o, s)| (id(o), s)).collect()).collect();
        let mut t = MinTracker::new();
        for v in &vs { t.add(v); }
        for (i, origin, seq) in changes {
            let i = i.index(vs.len());
            let old = vs[i].get(&id(origin));
            vs[i].set(id(origin), seq);
            t.change(&id(origin), old, seq);
        }
        for r in removals {
            if vs.len() > 1 {
                let v = vs.remove(r.index(vs.len()));
                t.remove(&v);
            }
        }
        let naive = vs.iter().skip(1).fold(vs[0].clone(), |acc, v| acc.meet(v));
        prop_assert_eq!(t.min(), &naive);
    }
}

#[test]
fn a_registration_superseded_by_a_newer_incarnation_still_counts_as_known() {
    let sponsorship = |reg_no| Sponsorship {
        sponsor: id(0),
        sponsor_incarnation: 1,
        reg_no,
    };
    // 0 registered 3 (its first joiner); 3 later rejoined elsewhere with incarnation 2
    let registration = Arc::new(MemberRecord {
        sponsor: Some(sponsorship(1)),
        ..record(3, 0, &[])
    });
    let mut sponsor_record = record(0, 2, &[]);
    sponsor_record.registrations = 1;
    let sponsor_record = Arc::new(sponsor_record);

    let mut a = NetworkMap::new(record(7, 1, &[]), Time::ZERO);
    a.merge(registration.clone(), Time::ZERO);
    a.merge(sponsor_record.clone(), Time::ZERO);
    let rejoined = MemberRecord {
        incarnation: 2,
        ..record(3, 1, &[])
    };
    a.merge(Arc::new(rejoined), Time::ZERO);
    // a hands over its map: the superseded registration travels with the sponsor's record
    let handed = a.records();
    assert!(handed.iter().any(|r| Arc::ptr_eq(r, &registration)));

    // a map that only ever sees the newer incarnation adopts the sponsor's record anyway
    let b = NetworkMap::load(record(9, 1, &[]), handed, Time::ZERO);
    assert_eq!(b.pending_len(), 0);
    assert_eq!(b.get(&id(0)).unwrap().record.registrations, 1);

    // and so does the joiner itself, for whom its old registration is a record about itself
    let own = MemberRecord {
        incarnation: 3,
        ..record(3, 1, &[])
    };
    let c = NetworkMap::load(own, a.records(), Time::ZERO);
    assert_eq!(c.pending_len(), 0, "0's record waits for nothing");
    assert!(c.is_counted(&id(0)));
}

#[test]
fn a_newer_record_with_an_older_bound_never_lowers_what_a_member_is_known_to_have_applied() {
    // Two copies of member 2's report 3 left different nodes with different bounds (its
    // own entry grows between reports); a suspicion copied from the lower one supersedes
    // the higher one here. Seed 7239's snapshot point fell this way.
    let mut map = NetworkMap::new(record(1, 1, &[(9, 6)]), Time::ZERO);
    map.merge(Arc::new(record(2, 3, &[(9, 6)])), Time::ZERO);
    assert_eq!(map.snapshot_point(), &vv(&[(9, 6)]));
    let suspicion = MemberRecord {
        state: MemberState::Suspect,
        ..record(2, 3, &[(9, 5)])
    };
    assert_eq!(
        map.merge(Arc::new(suspicion), Time::ZERO),
        MergeOutcome::Adopted
    );
    let held = &map.get(&id(2)).unwrap().record;
    assert_eq!(held.state, MemberState::Suspect, "the suspicion is adopted");
    assert_eq!(held.applied, vv(&[(9, 6)]), "with the higher bound kept");
    assert_eq!(
        map.snapshot_point(),
        &vv(&[(9, 6)]),
        "the snapshot point holds"
    );
}

/// What a map tells its node about other members: each change of standing once, in order,
/// nothing about the node itself, and nothing for a view it loaded.
#[test]
fn a_map_reports_each_change_of_another_members_standing_once() {
    let change = |member: u64, incarnation: u64, change: Standing| MemberChange {
        id: id(member),
        incarnation,
        change,
    };
    let mut map = NetworkMap::new(record(1, 1, &[]), Time::ZERO);
    assert_eq!(map.take_changes(), vec![], "nothing about itself");
    map.merge(Arc::new(record(2, 1, &[])), Time::ZERO);
    map.merge(Arc::new(record(3, 1, &[])), Time::ZERO);
    map.merge(Arc::new(record(2, 2, &[])), Time::ZERO); // a newer report: no change
    assert!(map.suspect(&id(2), Time::ZERO));
    map.merge(Arc::new(record(2, 3, &[])), Time::ZERO); // the refutation
    assert!(map.suspect(&id(3), Time::ZERO));
    assert!(map.evict(&id(3), Time::ZERO));
    map.merge(
        Arc::new(MemberRecord {
            state: MemberState::Left,
            ..record(2, 4, &[])
        }),
        Time::ZERO,
    );
    map.merge(
        Arc::new(MemberRecord {
            incarnation: 2,
            ..record(3, 1, &[])
        }),
        Time::ZERO,
    );
    assert_eq!(
        map.take_changes(),
        vec![
            change(2, 1, Standing::Joined),
            change(3, 1, Standing::Joined),
            change(2, 1, Standing::Suspected),
            change(2, 1, Standing::Refuted),
            change(3, 1, Standing::Suspected),
            change(3, 1, Standing::Evicted),
            change(2, 1, Standing::Left),
            change(3, 2, Standing::Rejoined),
        ]
    );
    assert_eq!(map.take_changes(), vec![], "each once");
    let loaded = NetworkMap::load(record(5, 1, &[]), map.records(), Time::ZERO);
    assert_eq!(
        { loaded }.take_changes(),
        vec![],
        "a loaded view is where the node starts, not news"
    );
}

/// The fingerprint digests carry, counted afresh from the versions a map holds.
fn recounted_fingerprint(map: &NetworkMap) -> u64 {
    map.versions()
        .iter()
        .fold(0u64, |sum, (id, v)| sum.wrapping_add(version_hash(id, *v)))
}

#[test]
fn the_fingerprint_kept_through_every_kind_of_record_change_is_the_one_counted_afresh() {
    let at = |s: u64| Time::ZERO + std::time::Duration::from_secs(s);
    let mut map = NetworkMap::new(record(0, 1, &[]), at(0));
    for i in 1..6 {
        map.merge(Arc::new(record(i, 1, &[])), at(0));
    }
    assert_eq!(map.fingerprint(), recounted_fingerprint(&map));
    assert!(map.suspect(&id(2), at(1)));
    assert!(map.evict(&id(3), at(2)));
    map.report_own(vv(&[(0, 4)]), at(3), |_| {});
    map.merge(Arc::new(record(4, 7, &[(0, 2)])), at(4));
    assert!(map.apply_delta(&id(5), &[(id(0), 3)]));
    assert_eq!(map.fingerprint(), recounted_fingerprint(&map));
    // another map that learns the same records in another order agrees
    let mut other = NetworkMap::new(record(0, 1, &[]), at(0));
    for r in map.versions().iter().rev().filter_map(|(m, _)| map.get(m)) {
        other.merge(r.record.clone(), at(5));
    }
    other.report_own(vv(&[(0, 4)]), at(5), |_| {});
    assert_eq!(other.versions(), map.versions());
    assert_eq!(other.fingerprint(), map.fingerprint());
}
