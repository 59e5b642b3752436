use std::sync::Arc;

use super::*;
use crate::network_map::MergeOutcome;
use crate::ops_log::{LwwMap, LwwOp};

fn id(i: u64) -> NodeId {
    NodeId::synthetic(i)
}

fn put(k: &str) -> LwwOp {
    LwwOp {
        key: k.into(),
        value: Some("v".into()),
    }
}

struct Node {
    log: OpsLog<LwwMap>,
    map: NetworkMap,
}

impl Node {
    fn founder(i: u64, members: &[u64]) -> Self {
        let mut map = NetworkMap::new(MemberRecord::founder(id(i)), Time::ZERO);
        for &m in members.iter().filter(|&&m| m != i) {
            map.merge(Arc::new(MemberRecord::founder(id(m))), Time::ZERO);
        }
        Node {
            log: OpsLog::new(),
            map,
        }
    }

    /// Applies ops and re-issues the own record, as a replica's status report would.
    fn apply_and_report(&mut self, ops: &[Arc<crate::ops_log::Op<LwwOp>>]) {
        for op in ops {
            self.log.receive(op.clone()).unwrap();
        }
        self.report();
    }

    fn report(&mut self) {
        self.map
            .report_own(self.log.applied().clone(), Time::ZERO, |_| {});
        self.log.advance_stable(&self.map.snapshot_point().clone());
    }

    fn own(&self) -> Arc<MemberRecord> {
        self.map.own().record.clone()
    }

    fn hear(&mut self, record: Arc<MemberRecord>) -> MergeOutcome {
        let out = self.map.merge(record, Time::ZERO);
        self.log.advance_stable(&self.map.snapshot_point().clone());
        out
    }
}

/// The join race (SPEC §4): N5 joins via N2 while N2 holds only [A]. N1 must never decide
/// [A,B] without counting N5, even when N2's later reports reach N1 before anything else
/// about N5 does.
#[test]
fn a_joiner_registered_by_its_sponsor_holds_back_every_snapshot_point() {
    let members = [1, 2, 3, 4];
    let mut n: Vec<Node> = (0..=4).map(|i| Node::founder(i.max(1), &members)).collect();
    // op A by N1, op B by N1 (one origin, as in the seed)
    let a = n[1].log.create(&id(1), put("A"));
    let b = n[1].log.create(&id(1), put("B"));
    n[1].report();
    // N2 has only A; N3 and N4 have A and B
    n[2].apply_and_report(std::slice::from_ref(&a));
    n[3].apply_and_report(&[a.clone(), b.clone()]);
    n[4].apply_and_report(&[a.clone(), b.clone()]);
    // N1 has heard N2's report of [A]
    let before = n[2].own();
    n[1].hear(before);

    // N5 joins via N2: the sponsor registers it at cut [A] before replying.
    let request = JoinRequest {
        joiner: id(5),
        incarnation: 1,
        addrs: vec![],
    };
    let n2 = &mut n[2];
    let grant = register(&mut n2.log, &mut n2.map, &request, Time::ZERO).unwrap();
    assert_eq!(grant.registration.applied.get(&id(1)), 1, "join cut is [A]");
    let (log5, map5) = install(grant.clone(), &id(5), vec![], 0, Time::ZERO, None).unwrap();
    assert_eq!(log5.applied().get(&id(1)), 1);
    assert_eq!(log5.applied_state().get("A").as_deref(), Some("v"));
    assert!(map5.get(&id(2)).is_some() && map5.counted() == 5);

    // N2 then applies B and reports; N1 hears N3, N4 and that newer N2 report — but nothing
    // from N5 yet.
    n[2].apply_and_report(std::slice::from_ref(&b));
    let (r3, r4, r2) = (n[3].own(), n[4].own(), n[2].own());
    assert_eq!(r2.registrations, 1);
    n[1].hear(r3);
    n[1].hear(r4);
    assert_eq!(n[1].hear(r2.clone()), MergeOutcome::Pending);
    assert_eq!(
        n[1].map.snapshot_point().get(&id(1)),
        1,
        "N1 must not decide [A,B] while N5 may hold only [A]"
    );

    // Once N5's registration reaches N1 (relayed with any record of it), N2's report is
    // adopted and N5 counts at its cut.
    let registration = n[2].map.get(&id(5)).unwrap().record.clone();
    assert_eq!(n[1].hear(registration), MergeOutcome::Adopted);
    assert_eq!(n[1].map.counted(), 5);
    assert_eq!(
        n[1].map.get(&id(2)).unwrap().record.report_seq,
        r2.report_seq
    );
    assert_eq!(n[1].map.snapshot_point().get(&id(1)), 1);

    // When N5 reports [A,B], N1 may finally decide [A,B].
    let mut n5 = Node {
        log: log5,
        map: map5,
    };
    n5.apply_and_report(&[b]);
    n[1].hear(n5.own());
    assert_eq!(n[1].map.snapshot_point().get(&id(1)), 2);
}

#[test]
fn a_retried_join_is_granted_again_and_a_member_cannot_join_twice() {
    let mut sponsor = Node::founder(1, &[1]);
    sponsor.log.create(&id(1), put("x"));
    sponsor.report();
    let request = JoinRequest {
        joiner: id(2),
        incarnation: 1,
        addrs: vec![],
    };
    let first = register(&mut sponsor.log, &mut sponsor.map, &request, Time::ZERO).unwrap();
    sponsor.log.create(&id(1), put("y"));
    let again = register(&mut sponsor.log, &mut sponsor.map, &request, Time::ZERO).unwrap();
    assert_eq!(first.registration, again.registration);
    assert_eq!(sponsor.own().registrations, 1, "one registration, not two");
    let (log, _) = install(again, &id(2), vec![], 0, Time::ZERO, None).unwrap();
    assert_eq!(
        log.applied().get(&id(1)),
        2,
        "the retry hands over the current state"
    );

    // once the joiner has reported, a duplicate request is refused
    let mut joined = (*first.registration).clone();
    joined.report_seq = 1;
    sponsor.hear(Arc::new(joined));
    assert!(matches!(
        register(&mut sponsor.log, &mut sponsor.map, &request, Time::ZERO),
        Err(JoinError::AlreadyMember { .. })
    ));
    let self_request = JoinRequest {
        joiner: id(1),
        incarnation: 5,
        addrs: vec![],
    };
    assert_eq!(
        register(
            &mut sponsor.log,
            &mut sponsor.map,
            &self_request,
            Time::ZERO
        )
        .unwrap_err(),
        JoinError::SelfSponsor
    );
}

#[test]
fn a_grant_for_someone_else_is_refused() {
    let mut sponsor = Node::founder(1, &[1]);
    let request = JoinRequest {
        joiner: id(2),
        incarnation: 1,
        addrs: vec![],
    };
    let grant = register(&mut sponsor.log, &mut sponsor.map, &request, Time::ZERO).unwrap();
    assert!(matches!(
        install(grant, &id(3), vec![], 0, Time::ZERO, None),
        Err(JoinError::NotForMe { .. })
    ));
}

/// A node that is joining itself cannot sponsor, but it points the asker at the members it
/// knows of, those of its newest installed view included (a rejoining node may have heard
/// of a view whose newest members its map has no record of).
#[test]
fn a_joining_node_that_refuses_suggests_the_members_of_its_newest_view() {
    use rand::SeedableRng;
    let map = NetworkMap::new(MemberRecord::founder(id(7)), Time::ZERO);
    let view = crate::network_map::view::View::founding([id(7), id(10), id(11)]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let response: JoinResponse<LwwMap> = sponsor::refusal(
        "this node has not joined the network yet",
        &map,
        &view,
        &mut rng,
    );
    let JoinResponse::Refused { suggestions, .. } = response else {
        panic!("a joining node grants nothing");
    };
    let mut suggestions = suggestions;
    suggestions.sort();
    let mut expected = vec![id(10), id(11)];
    expected.sort();
    assert_eq!(suggestions, expected, "the view's members, not itself");
}
