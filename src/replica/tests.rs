use std::time::Duration;

use super::*;
use crate::gossip::PublishedOps;
use crate::ops_log::{LwwMap, LwwOp};
use crate::testing::LoopbackNet;

fn id(i: u64) -> NodeId {
    NodeId::synthetic(i)
}

fn put(k: &str, v: &str) -> LwwOp {
    LwwOp {
        key: k.into(),
        value: Some(v.into()),
    }
}

#[test]
fn writes_spread_and_the_snapshot_point_reaches_them_everywhere() {
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.write(0, put("a", "1"));
    net.write(2, put("b", "2"));
    net.run_for(Duration::from_millis(200));
    let expected = net.nodes[0].applied().clone();
    assert_eq!(expected.total(), 2);
    let mut digests = Vec::new();
    for r in &mut net.nodes {
        assert_eq!(r.applied(), &expected);
        assert_eq!(r.snapshot_point(), &expected, "snapshot point caught up");
        assert_eq!(r.stable_state().get("b").as_deref(), Some("2"));
        assert_eq!(r.ops_log().unstable_len(), 0, "stable ops are compacted");
        digests.push(r.stable_digest());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn anti_entropy_repairs_lost_publishes() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.drop_publishes = true;
    for k in 0..5 {
        net.write(1, put(&format!("k{k}"), "v"));
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.nodes[0].applied().total(), 0, "publishes were dropped");
    net.run_for(Duration::from_millis(2_900));
    for r in &net.nodes {
        assert_eq!(r.applied().total(), 5);
        assert_eq!(r.snapshot_point().total(), 5);
    }
}

#[test]
fn a_joiner_catches_up_and_is_counted_everywhere() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.write(0, put("x", "1"));
    net.run_for(Duration::from_millis(100));
    let j = net.add_joiner(id(10), id(1));
    let sps: Vec<u64> = net
        .nodes
        .iter()
        .map(|r| r.snapshot_point().total())
        .collect();
    assert_eq!(sps, vec![1, 1, 1, 0], "the joiner has not joined yet");
    net.run_for(Duration::from_millis(50));
    assert!(net.nodes[j].is_member());
    assert_eq!(net.nodes[j].applied_state().get("x").as_deref(), Some("1"));
    net.write(j, put("y", "2"));
    net.run_for(Duration::from_millis(250));
    for r in &net.nodes {
        assert_eq!(r.network_map().counted(), 4);
        assert_eq!(r.snapshot_point().total(), 2);
        assert_eq!(r.stable_state().get("y").as_deref(), Some("2"));
    }
}

#[test]
fn writes_before_joining_are_refused() {
    let mut r: Replica<LwwMap> =
        Replica::joiner(id(1), 1, id(2), ReplicaConfig::default(), 1, Time::ZERO);
    assert_eq!(
        r.write(Time::ZERO, put("k", "v")).unwrap_err(),
        WriteRefused::Joining
    );
    let actions: Vec<_> = std::iter::from_fn(|| r.poll_action()).collect();
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Send { to, message }
            if *to == id(2) && message.kind() == "join_request")));
}

#[test]
fn a_joiner_without_an_answer_asks_again_with_growing_waits() {
    let config = ReplicaConfig::default();
    let first = config.gossip.join_retry;
    let mut r: Replica<LwwMap> = Replica::joiner(id(1), 1, id(2), config, 1, Time::ZERO);
    let mut requests_at = Vec::new();
    let mut now = Time::ZERO;
    for _ in 0..5 {
        let mut wake = None;
        while let Some(action) = r.poll_action() {
            match action {
                Action::Send { message, .. } if message.kind() == "join_request" => {
                    requests_at.push(now)
                }
                Action::ScheduleWake { at } => wake = Some(at),
                _ => {}
            }
        }
        now = wake.expect("a joiner always has a retry pending");
        r.handle_timeout(now);
    }
    let gaps: Vec<Duration> = requests_at.windows(2).map(|w| w[1].since(w[0])).collect();
    // each wait is its nominal value ± 10% jitter: 1×, 2×, 4× the first
    let about = |gap: Duration, nominal: Duration| {
        gap >= nominal - nominal / 10 && gap <= nominal + nominal / 10
    };
    assert!(about(gaps[0], first), "{gaps:?}");
    assert!(about(gaps[1], first * 2), "{gaps:?}");
    assert!(about(gaps[2], first * 4), "{gaps:?}");
    let max = ReplicaConfig::default().gossip.join_retry_max;
    assert!(gaps.iter().all(|g| *g <= max + max / 10), "{gaps:?}");
}

#[test]
fn a_leaving_node_hands_over_its_ops_then_stops_holding_back_the_snapshot_point() {
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.drop_publishes = true; // node 3's ops reach others only through anti-entropy
    for k in 0..3 {
        net.write(3, put(&format!("k{k}"), "from-3"));
    }
    net.nodes[3].leave(net.now).unwrap();
    assert_eq!(
        net.nodes[3].write(net.now, put("late", "x")).unwrap_err(),
        WriteRefused::Leaving
    );
    net.flush(3);
    net.run_for(Duration::from_millis(50));
    assert!(
        net.nodes[3].is_leaving(),
        "it waits until every member has its ops"
    );
    net.drop_publishes = false;
    net.run_for(Duration::from_secs(3));
    assert!(net.nodes[3].has_left());
    assert_eq!(
        net.nodes[3].write(net.now, put("late", "x")).unwrap_err(),
        WriteRefused::Left
    );
    for r in &net.nodes[..3] {
        assert_eq!(
            r.applied_state().get("k2").as_deref(),
            Some("from-3"),
            "no write was lost"
        );
        assert_eq!(r.network_map().counted(), 3, "the leaver no longer counts");
    }
    // the rest keep writing; node 3 is gone (it no longer reports), yet every snapshot
    // point reaches the new ops
    net.write(0, put("after", "1"));
    net.run_for(Duration::from_millis(300));
    for r in &net.nodes[..3] {
        assert_eq!(r.snapshot_point().total(), 4);
        assert_eq!(r.stable_state().get("after").as_deref(), Some("1"));
    }
}

/// Three founders; node 0 wrote x=1; node 2 has left.
fn network_where_node_2_left() -> LoopbackNet<LwwMap> {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.write(0, put("x", "1"));
    net.run_for(Duration::from_millis(100));
    net.nodes[2].leave(net.now).unwrap();
    net.flush(2);
    net.run_for(Duration::from_millis(100));
    assert!(net.nodes[2].has_left());
    net
}

#[test]
fn a_joiner_refused_by_its_first_bootstrap_peer_asks_the_next() {
    let mut net = network_where_node_2_left();
    let j = net.add_joiner_via(id(9), vec![id(2), id(0)]);
    // a refusal is followed by a wait of about `join_retry` before the next request
    net.run_for(Duration::from_millis(500));
    assert!(net.nodes[j].is_member());
    assert_eq!(net.nodes[j].stats().join_refusals, 1);
    assert_eq!(net.nodes[j].applied_state().get("x").as_deref(), Some("1"));
    assert_eq!(
        net.nodes[0]
            .network_map()
            .get(&id(9))
            .unwrap()
            .record
            .sponsor
            .as_ref()
            .unwrap()
            .sponsor,
        id(0)
    );
}

#[test]
fn a_node_that_left_redirects_a_joiner_to_a_member() {
    let mut net = network_where_node_2_left();
    // the joiner knows only the node that left
    let j = net.add_joiner_via(id(9), vec![id(2)]);
    net.run_for(Duration::from_millis(500));
    assert!(
        net.nodes[j].is_member(),
        "redirected to a member and admitted"
    );
    assert_eq!(net.nodes[j].applied_state().get("x").as_deref(), Some("1"));
    let sponsor = net.nodes[j]
        .network_map()
        .own()
        .record
        .sponsor
        .clone()
        .unwrap();
    assert_ne!(sponsor.sponsor, id(2));
}

/// How long after its last report a crashed member is evicted at the latest, with the
/// default settings: silence, unrefuted suspicion, one check interval each, one heartbeat.
fn eviction_bound() -> Duration {
    let g = GossipConfig::default();
    g.heartbeat_interval + g.suspect_after + g.suspicion_timeout + 2 * g.failure_check_interval
}

#[test]
fn a_crashed_member_is_suspected_then_evicted_and_the_snapshot_point_moves_on() {
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.run_for(Duration::from_millis(100));
    net.crashed[3] = true;
    net.write(0, put("a", "1"));
    net.run_for(Duration::from_secs(2));
    for r in &net.nodes[..3] {
        assert_eq!(r.applied().total(), 1);
        assert_eq!(
            r.snapshot_point().total(),
            0,
            "the silent member holds it back"
        );
    }
    net.run_for(eviction_bound());
    for r in &net.nodes[..3] {
        let entry = r.network_map().get(&id(3)).unwrap();
        assert_eq!(entry.record.state, MemberState::Evicted);
        assert_eq!(
            r.snapshot_point().total(),
            1,
            "moved on without the crashed node"
        );
        assert_eq!(r.network_map().counted(), 3);
    }
    let issued: u64 = net.nodes[..3]
        .iter()
        .map(|r| r.stats().evictions_issued)
        .sum();
    assert!(issued >= 1);
}

#[test]
fn a_suspected_member_that_is_alive_refutes_and_is_never_evicted() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(100));
    // node 0 wrongly suspects node 1 (as if its reports had been lost)
    let record = net.nodes[0]
        .network_map()
        .get(&id(1))
        .unwrap()
        .record
        .clone();
    let suspicion = MemberRecord {
        state: MemberState::Suspect,
        ..(*record).clone()
    };
    let message = Message::Status(Records(vec![Arc::new(suspicion)]));
    net.nodes[0].handle_message(net.now, &id(2), &message);
    net.flush(0);
    assert_eq!(
        net.nodes[0].network_map().get(&id(1)).unwrap().record.state,
        MemberState::Suspect
    );
    net.run_for(Duration::from_secs(10));
    assert!(net.nodes[1].stats().refutations >= 1);
    for r in &net.nodes {
        assert_eq!(r.network_map().counted(), 3, "nobody was evicted");
        assert_eq!(
            r.network_map().get(&id(1)).unwrap().record.state,
            MemberState::Alive
        );
    }
}

#[test]
fn a_node_cut_off_is_evicted_then_rejoins_and_republishes_its_writes() {
    let mut net = LoopbackNet::<LwwMap>::genesis(5);
    net.run_for(Duration::from_millis(100));
    net.cut_off[4] = true;
    net.write(4, put("lonely", "4")); // nobody receives it
    net.write(0, put("main", "0"));
    net.run_for(eviction_bound() + Duration::from_secs(1));
    for r in &net.nodes[..4] {
        assert_eq!(
            r.network_map().get(&id(4)).unwrap().record.state,
            MemberState::Evicted
        );
        assert_eq!(r.snapshot_point().total(), 1, "the majority moves on");
    }
    // the cut-off node hears from nobody: it evicts no one and knows it is isolated
    assert!(net.nodes[4].is_isolated());
    assert_eq!(net.nodes[4].network_map().counted(), 5);
    assert_eq!(net.nodes[4].stats().evictions_issued, 0);
    assert!(
        net.nodes[4].is_member(),
        "it cannot know it was evicted yet"
    );

    net.cut_off[4] = false;
    net.run_for(Duration::from_secs(5));
    let rejoined = &net.nodes[4];
    assert!(rejoined.is_member());
    assert_eq!(rejoined.incarnation(), 2, "rejoined with a new incarnation");
    assert_eq!(rejoined.stats().rejoins, 1);
    assert_eq!(rejoined.stats().ops_republished, 1);
    for r in &net.nodes {
        assert_eq!(
            r.applied_state().get("lonely").as_deref(),
            Some("4"),
            "no write lost (I5)"
        );
        assert_eq!(r.snapshot_point().total(), 2);
        assert_eq!(r.network_map().counted(), 5);
    }
}

#[test]
fn only_the_observers_of_a_crashed_member_raise_the_alert_and_every_member_evicts_it() {
    let n = 12;
    let mut net = LoopbackNet::<LwwMap>::genesis(n);
    net.run_for(Duration::from_secs(1));
    let k = GossipConfig::default().monitor_rings;
    for r in &net.nodes {
        let watched = r.watched_members();
        assert!(!watched.is_empty() && watched.len() <= k, "{watched:?}");
    }
    let crashed = 5;
    let observers: Vec<usize> = (0..n as usize)
        .filter(|&i| net.nodes[i].watched_members().contains(&id(crashed as u64)))
        .collect();
    assert!(!observers.is_empty() && observers.len() <= k);
    net.crashed[crashed] = true;
    net.write(0, put("after", "0"));
    net.run_for(eviction_bound() + Duration::from_secs(1));
    for (i, r) in net.nodes.iter().enumerate().filter(|(i, _)| *i != crashed) {
        assert_eq!(
            r.network_map()
                .get(&id(crashed as u64))
                .unwrap()
                .record
                .state,
            MemberState::Evicted,
            "node {i}"
        );
        assert_eq!(r.snapshot_point().total(), 1, "node {i} moves on");
        if !observers.contains(&i) {
            let raised = r.stats().suspicions_raised;
            assert_eq!(
                raised, 0,
                "node {i} does not watch it: it adopted the alert"
            );
        }
    }
    let raised: u64 = observers
        .iter()
        .map(|&i| net.nodes[i].stats().suspicions_raised)
        .sum();
    assert!(raised >= 1, "an observer raised the alert");
}

#[test]
fn a_deaf_member_that_the_others_hear_is_evicted_instead_of_holding_the_snapshot_point() {
    let mut net = LoopbackNet::<LwwMap>::genesis(5);
    net.run_for(Duration::from_millis(100));
    net.deaf[4] = true; // its messages arrive; nothing reaches it
    net.write(0, put("main", "0"));
    net.write(4, put("deaf", "4"));
    let g = GossipConfig::default();
    // it finds itself cut off after `suspect_after`, says so in its next report, and the
    // others evict it once it said so for `suspicion_timeout`
    net.run_for(eviction_bound() + g.heartbeat_interval + Duration::from_secs(1));
    assert!(net.nodes[4].is_isolated());
    for r in &net.nodes[..4] {
        let entry = r.network_map().get(&id(4)).unwrap();
        assert_eq!(entry.record.state, MemberState::Evicted);
        assert!(
            !r.view().members.contains_key(&id(4)),
            "the view removed it"
        );
        assert_eq!(
            r.snapshot_point().total(),
            2,
            "the majority moves on, with the write the deaf node published"
        );
    }
    net.deaf[4] = false;
    net.run_for(Duration::from_secs(5));
    assert!(net.nodes[4].is_member());
    assert_eq!(
        net.nodes[4].incarnation(),
        2,
        "rejoined with a new incarnation"
    );
    for r in &net.nodes {
        assert_eq!(r.applied_state().get("deaf").as_deref(), Some("4"));
        assert_eq!(r.snapshot_point().total(), 2);
        assert_eq!(r.network_map().counted(), 5);
    }
}

#[test]
fn a_member_that_hears_only_a_minority_for_a_moment_is_not_evicted() {
    // 5 members: node 4 goes deaf for less than it takes to call it cut off and evict it
    let mut net = LoopbackNet::<LwwMap>::genesis(5);
    net.run_for(Duration::from_millis(100));
    let g = GossipConfig::default();
    net.deaf[4] = true;
    net.run_for(g.suspect_after + g.suspicion_timeout / 2);
    net.deaf[4] = false;
    net.write(0, put("after", "0"));
    net.run_for(Duration::from_secs(10));
    for r in &net.nodes {
        assert_eq!(r.network_map().counted(), 5, "nobody was evicted");
        assert_eq!(r.view().members.len(), 5);
        assert_eq!(r.snapshot_point().total(), 1);
    }
    assert_eq!(net.nodes[4].incarnation(), 1);
}

#[test]
fn a_restarted_node_rejoins_from_its_durable_state_and_loses_nothing() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(100));
    net.drop_publishes = true;
    net.write(2, put("unsent", "2")); // applied and durable at 2, never published
    net.crashed[2] = true;
    net.drop_publishes = false;
    net.write(0, put("during", "0"));
    net.run_for(Duration::from_millis(500));
    net.restart(2);
    net.run_for(Duration::from_secs(3));
    assert!(net.nodes[2].is_member());
    assert_eq!(net.nodes[2].incarnation(), 2);
    for r in &net.nodes {
        assert_eq!(r.applied_state().get("unsent").as_deref(), Some("2"));
        assert_eq!(r.applied_state().get("during").as_deref(), Some("0"));
        assert_eq!(r.snapshot_point().total(), 2);
        assert_eq!(
            r.network_map().counted(),
            3,
            "the old incarnation was replaced"
        );
    }
}

#[test]
fn a_sponsor_that_dies_before_its_registration_spreads_loses_nothing_and_decides_nothing_unsafe() {
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.run_for(Duration::from_millis(100));
    // node 2 writes an op nobody else receives, then registers node 9 and dies before any
    // report of the registration leaves it: only the grant gets out
    net.drop_publishes = true;
    net.write(2, put("late", "2"));
    net.drop_publishes = false;
    let mut joiner = Replica::joiner(id(9), 1, id(2), ReplicaConfig::default(), 77, net.now);
    let request = loop {
        match joiner.poll_action() {
            Some(Action::Send { to, message }) if to == id(2) => break message,
            Some(_) => {}
            None => panic!("the joiner asks its sponsor"),
        }
    };
    net.nodes[2].handle_message(net.now, &id(9), &request);
    let grant = loop {
        match net.nodes[2].poll_action() {
            Some(Action::Send { to, message }) if to == id(9) => break message,
            Some(_) => {} // everything else dies with node 2
            None => panic!("the sponsor answers"),
        }
    };
    net.crashed[2] = true;
    let j = net.add_node(joiner);
    net.nodes[j].handle_message(net.now, &id(2), &grant);
    net.flush(j);
    assert!(net.nodes[j].is_member());
    let live = [0, 1, 3, j];
    // as the joiner's reports spread, nobody decides past its join cut (I3)
    for _ in 0..40 {
        net.run_for(Duration::from_millis(250));
        for &n in &live {
            assert!(
                net.nodes[n].snapshot_point().le(net.nodes[j].applied()),
                "node {n} decided past the joiner"
            );
        }
    }
    net.run_for(eviction_bound());
    net.write(0, put("after", "0"));
    net.run_for(Duration::from_secs(2));
    for &n in &live {
        let r = &net.nodes[n];
        assert_eq!(
            r.network_map().get(&id(2)).unwrap().record.state,
            MemberState::Evicted
        );
        assert!(
            r.network_map().is_counted(&id(9)),
            "the joiner counts everywhere"
        );
        assert_eq!(
            r.applied_state().get("late").as_deref(),
            Some("2"),
            "I5: the grant carried it"
        );
        assert_eq!(
            r.stable_state().get("after").as_deref(),
            Some("0"),
            "the point moved on"
        );
        assert_eq!(r.snapshot_point(), r.applied());
    }
}

/// Takes node `i`'s checkpoint and applied ops through CBOR, as a driver's disk would hold
/// them, and brings the node back from them.
fn resume_through_disk(net: &mut LoopbackNet<LwwMap>, i: usize, journal: &[Arc<Op<LwwOp>>]) {
    let mut bytes = Vec::new();
    ciborium::into_writer(&net.nodes[i].checkpoint(), &mut bytes).unwrap();
    let checkpoint: Checkpoint<LwwMap> = ciborium::from_reader(&bytes[..]).unwrap();
    let resumed = Replica::resume(
        checkpoint,
        journal.to_vec(),
        ReplicaConfig::default(),
        99,
        net.now,
    )
    .unwrap();
    net.crashed[i] = false;
    net.nodes[i] = resumed;
    net.flush(i);
}

#[test]
fn a_lone_founder_resumes_from_its_checkpoint_as_it_was() {
    let me = id(0);
    let config = ReplicaConfig {
        journal_applied: true,
        ..ReplicaConfig::default()
    };
    let mut node =
        Replica::<LwwMap>::genesis(me.clone(), std::slice::from_ref(&me), config, 1, Time::ZERO);
    for k in 0..5 {
        node.write(Time::from_millis(k), put(&format!("k{k}"), "v"))
            .unwrap();
    }
    let journal = node.drain_applied_ops();
    let mut bytes = Vec::new();
    ciborium::into_writer(&node.checkpoint(), &mut bytes).unwrap();
    let checkpoint: Checkpoint<LwwMap> = ciborium::from_reader(&bytes[..]).unwrap();
    let now = Time::from_millis(10);
    let mut back = Replica::resume(checkpoint, journal, ReplicaConfig::default(), 2, now).unwrap();
    assert!(back.is_member());
    assert_eq!(back.incarnation(), 1, "the whole network: no rejoin");
    assert_eq!(back.applied().get(&me), 5);
    assert_eq!(back.stable_digest(), node.stable_digest());
    back.write(now, put("after", "restart")).unwrap();
    assert_eq!(back.applied().get(&me), 6, "seqs continue, never reused");
}

#[test]
fn a_member_resumed_from_its_checkpoint_rejoins_and_keeps_its_unpublished_writes() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(100));
    net.write(1, put("early", "1"));
    net.run_for(Duration::from_secs(2));
    // node 2's disk: its checkpoint and the ops it applied above the stable cut
    net.drop_publishes = true;
    net.write(2, put("unsent", "2"));
    net.drop_publishes = false;
    let journal = net.nodes[2].ops_log().unstable_ops();
    net.crashed[2] = true;
    net.write(0, put("during", "0"));
    net.run_for(Duration::from_millis(500));
    resume_through_disk(&mut net, 2, &journal);
    net.run_for(Duration::from_secs(3));
    assert!(net.nodes[2].is_member());
    assert_eq!(net.nodes[2].incarnation(), 2, "it rejoined");
    for r in &net.nodes {
        for (k, v) in [("early", "1"), ("unsent", "2"), ("during", "0")] {
            assert_eq!(r.applied_state().get(k).as_deref(), Some(v));
        }
        assert_eq!(r.snapshot_point().total(), 3);
    }
}

#[test]
fn a_checkpoint_without_its_own_record_is_refused() {
    let mut node =
        Replica::<LwwMap>::genesis(id(0), &[id(0)], ReplicaConfig::default(), 1, Time::ZERO);
    let (mut owned, _) = node.durable_image();
    owned.records.clear();
    let err = Replica::resume(owned, Vec::new(), ReplicaConfig::default(), 1, Time::ZERO);
    assert_eq!(err.err(), Some(ResumeError::NoOwnRecord));
    node.write(Time::ZERO, put("still", "works")).unwrap();
}

/// Drives one replica by the millisecond from `from` to `to`, handing it the messages of
/// `inbox` at their times, and returns what it sent and published.
fn drive(
    r: &mut Replica<LwwMap>,
    from_ms: u64,
    to_ms: u64,
    mut write_at: impl FnMut(u64) -> bool,
    inbox: &mut [(u64, NodeId, Arc<Message<LwwMap>>)],
) -> Vec<Action<LwwMap>> {
    let mut out = Vec::new();
    for ms in from_ms..to_ms {
        let now = Time::from_millis(ms);
        for (_, from, message) in inbox.iter().filter(|(at, _, _)| *at == ms) {
            r.handle_message(now, from, message);
        }
        if write_at(ms) {
            r.write(now, put(&format!("k{ms}"), "v")).unwrap();
        }
        r.handle_timeout(now);
        while let Some(action) = r.poll_action() {
            if !matches!(action, Action::ScheduleWake { .. }) {
                out.push(action);
            }
        }
    }
    out
}

/// Ops batches of node `origin`, one every `every_ms` from `from_ms` to `to_ms`, each with a
/// report, as node 0 would receive them.
fn batches_of(
    origin: u64,
    members: &[NodeId],
    from_ms: u64,
    to_ms: u64,
    every_ms: u64,
) -> Vec<(u64, NodeId, Arc<Message<LwwMap>>)> {
    let mut writer: Replica<LwwMap> = Replica::genesis(
        id(origin),
        members,
        ReplicaConfig::default(),
        origin,
        Time::ZERO,
    );
    let mut inbox = Vec::new();
    let writes = |ms: u64| ms >= from_ms && (ms - from_ms).is_multiple_of(every_ms);
    for ms in 0..to_ms {
        for action in drive(&mut writer, ms, ms + 1, writes, &mut []) {
            if let Action::Publish { message } = action {
                // delivered one millisecond after it is published
                inbox.push((ms + 1, id(origin), message));
            }
        }
    }
    inbox
}

fn status_records(actions: &[Action<LwwMap>]) -> Vec<Arc<MemberRecord>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { message, .. } => match &**message {
                Message::Status(records) => Some(records.0.clone()),
                _ => None,
            },
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_steady_writer_reports_on_its_batches_and_not_in_status() {
    let members = [id(0), id(1), id(2)];
    let mut writer: Replica<LwwMap> =
        Replica::genesis(id(0), &members, ReplicaConfig::default(), 7, Time::ZERO);
    // node 1's ops arrive between node 0's own writes, so node 0's applied keeps changing
    let mut inbox: Vec<_> = (1..40)
        .map(|k| {
            let op = Arc::new(Op {
                origin: id(1),
                seq: k,
                lamport: k,
                deps: {
                    let mut deps = VersionVector::new();
                    deps.set(id(1), k - 1);
                    deps
                },
                payload: put("n1", "v"),
                signature: None,
            });
            let message = Message::Ops(PublishedOps {
                ops: OpsBatch(vec![op]),
                report: None,
            });
            (k * 5 + 2, id(1), Arc::new(message))
        })
        .collect();
    let every_10_ms = |ms: u64| ms.is_multiple_of(10) && ms < 200;
    let actions = drive(&mut writer, 0, 200, every_10_ms, &mut inbox);
    let published: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { message } => match &**message {
                Message::Ops(p) => Some(p.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 20, "one batch per write");
    let mut last_seq = 0;
    for p in &published {
        let report = p.report.as_ref().expect("every batch carries the report");
        assert_eq!(report.id, id(0));
        assert!(report.report_seq > last_seq, "each report is a new version");
        last_seq = report.report_seq;
        assert!(report.applied.get(&id(0)) >= p.ops.0.last().unwrap().seq);
    }
    assert!(
        published
            .last()
            .unwrap()
            .report
            .as_ref()
            .unwrap()
            .applied
            .get(&id(1))
            > 0,
        "reports say what the writer applied from others"
    );
    let own_in_status = status_records(&actions)
        .iter()
        .filter(|r| r.id == id(0))
        .count();
    assert_eq!(
        own_in_status, 0,
        "a steady writer sends no status of its own"
    );

    // once it stops writing, what it applies since is reported in status after the hold
    let hold = ReplicaConfig::default()
        .gossip
        .batch_report_hold
        .as_millis() as u64;
    let later = drive(&mut writer, 200, 200 + hold + 20, |_| false, &mut inbox);
    let own: Vec<_> = status_records(&later)
        .into_iter()
        .filter(|r| r.id == id(0))
        .collect();
    assert!(!own.is_empty(), "a writer that stopped reports in status");
    assert_eq!(own.last().unwrap().applied, *writer.applied());
}

#[test]
fn a_report_that_came_with_a_batch_is_adopted_but_not_relayed() {
    let members = [id(0), id(1), id(2)];
    let mut inbox = batches_of(1, &members, 1, 100, 10);
    assert!(!inbox.is_empty());
    let mut reader: Replica<LwwMap> =
        Replica::genesis(id(0), &members, ReplicaConfig::default(), 3, Time::ZERO);
    let actions = drive(&mut reader, 0, 150, |_| false, &mut inbox);
    let newest = inbox
        .iter()
        .filter_map(|(_, _, m)| match &**m {
            Message::Ops(p) => p.report.clone(),
            _ => None,
        })
        .max_by_key(|r| r.report_seq)
        .unwrap();
    let known = &reader.network_map().get(&id(1)).unwrap().record;
    assert_eq!(
        known.report_seq, newest.report_seq,
        "the report was adopted"
    );
    assert_eq!(known.applied, newest.applied);
    let records = status_records(&actions);
    assert!(
        records.iter().any(|r| r.id == id(0)),
        "the reader reports its own progress (it does not write)"
    );
    assert!(
        records.iter().all(|r| r.id != id(1)),
        "every member got the writer's reports with its batches: none is relayed"
    );
}

/// Four members holding one write, and a joiner (id 10, sponsored by id 1) whose grant
/// offers the state as a snapshot: it holds the grant while "fetching" it (the state
/// waits in `net.offered`). Returns the network and the joiner's index.
fn joiner_fetching_an_offered_state() -> (LoopbackNet<LwwMap>, usize) {
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.write(0, put("x", "1"));
    net.run_for(Duration::from_millis(200));
    net.offer_states = true;
    let j = net.add_joiner(id(10), id(1));
    net.run_for(Duration::from_millis(50));
    (net, j)
}

/// The joiner at `j` (id 10) installs the state offered to it; then a write of it reaches
/// every one of the five members' stable states.
fn install_offered_state_and_write(net: &mut LoopbackNet<LwwMap>, j: usize) {
    let (to, state) = net.offered.pop().expect("a state was offered");
    assert_eq!(to, id(10));
    let now = net.now;
    net.nodes[j].install_transferred(now, state).unwrap();
    net.flush(j);
    net.write(j, put("y", "2"));
    net.run_for(Duration::from_millis(500));
    for r in &net.nodes {
        assert_eq!(r.network_map().counted(), 5);
        assert_eq!(
            r.stable_state().get("y").as_deref(),
            Some("2"),
            "at {:?}",
            r.id()
        );
    }
}

#[test]
fn a_joiner_fetching_its_state_for_longer_than_the_eviction_bound_stays_a_member() {
    let (mut net, j) = joiner_fetching_an_offered_state();
    assert!(
        net.nodes[j].awaited_grant().is_some(),
        "the grant offers a snapshot"
    );
    assert!(!net.nodes[j].is_member());
    // the transfer takes three eviction bounds: the joiner keeps reporting
    net.run_for(3 * eviction_bound());
    for r in &net.nodes[..4] {
        let entry = r.network_map().get(&id(10)).expect("registered everywhere");
        assert_eq!(entry.record.state, MemberState::Alive, "at {:?}", r.id());
    }
    assert!(net.nodes[j].stats().keepalives_sent >= 3);
    install_offered_state_and_write(&mut net, j);
    // reports made as a member come after the keepalives, so they are not taken as stale
    let own = net.nodes[j]
        .network_map()
        .get(&id(10))
        .unwrap()
        .record
        .clone();
    assert_eq!(
        net.nodes[0]
            .network_map()
            .get(&id(10))
            .unwrap()
            .record
            .report_seq,
        own.report_seq
    );
    assert!(own.report_seq > net.nodes[j].stats().keepalives_sent);
}

#[test]
fn a_joiner_restarted_while_it_fetches_its_state_resumes_the_same_registration() {
    let (mut net, j) = joiner_fetching_an_offered_state();
    // long enough for keepalives to raise the registration's report_seq well above what
    // a resumed joiner that started its keepalives over would reach within an eviction
    // bound
    net.run_for(2 * eviction_bound());
    let held = net.nodes[j]
        .held_grant()
        .expect("the grant offers a snapshot");
    assert!(net.nodes[j].stats().keepalives_sent >= 2);
    let before = net.nodes[0]
        .network_map()
        .get(&id(10))
        .unwrap()
        .record
        .clone();
    // the process stops; the driver stored the grant when its fetch began, and a new
    // process resumes it within the failure detector's bound
    net.crashed[j] = true;
    net.run_for(Duration::from_millis(500));
    let now = net.now;
    let stored = HeldGrant {
        reports_made: 0,
        ..held.clone()
    };
    net.nodes[j] = Replica::resuming_held_grant(
        id(10),
        stored,
        vec![id(2)],
        ReplicaConfig::default(),
        99,
        now,
    )
    .unwrap();
    net.crashed[j] = false;
    assert!(net.nodes[j].awaited_grant().is_some());
    assert_eq!(net.nodes[j].incarnation(), before.incarnation);
    // its first keepalive goes out at once, above every report the stopped process made
    net.run_for(Duration::from_millis(100));
    let sponsor_sees = net.nodes[1]
        .network_map()
        .get(&id(10))
        .unwrap()
        .record
        .clone();
    assert!(
        sponsor_sees.report_seq > held.reports_made,
        "the resumed keepalive is taken as fresh: {} after {}",
        sponsor_sees.report_seq,
        held.reports_made
    );
    net.run_for(3 * eviction_bound());
    for r in &net.nodes[..4] {
        let entry = r.network_map().get(&id(10)).expect("registered everywhere");
        assert_eq!(entry.record.state, MemberState::Alive, "at {:?}", r.id());
        assert_eq!(entry.record.incarnation, before.incarnation);
    }
    assert_eq!(
        net.nodes[j].join_progress().map(|p| p.requests),
        Some(0),
        "no sponsor is asked while the fetch resumes"
    );
    install_offered_state_and_write(&mut net, j);
    let wrong = HeldGrant { ..held };
    assert!(matches!(
        Replica::resuming_held_grant(id(11), wrong, vec![], ReplicaConfig::default(), 1, now),
        Err(JoinError::NotForMe { .. })
    ));
}

#[test]
fn ops_published_while_a_joiner_fetches_its_state_are_applied_at_the_install() {
    let (mut net, j) = joiner_fetching_an_offered_state();
    assert!(net.nodes[j].awaited_grant().is_some());
    // the network goes on writing while the joiner fetches
    for i in 0..20 {
        net.write(i % 3, put(&format!("during{i}"), "v"));
    }
    net.run_for(Duration::from_millis(100));
    let written = net.nodes[0].applied().clone();
    assert_eq!(net.nodes[j].stats().ops_kept_while_fetching, 20);
    let (_, state) = net.offered.pop().expect("a state was offered");
    let now = net.now;
    net.nodes[j].install_transferred(now, state).unwrap();
    // at once, before any pull: the ops published during the fetch are applied
    assert_eq!(net.nodes[j].applied(), &written);
    assert_eq!(
        net.nodes[j].applied_state().get("during19").as_deref(),
        Some("v")
    );
    assert_eq!(
        net.nodes[j].stats().ops_duplicate,
        0,
        "ops the grant held already are not taken again"
    );
}

#[test]
fn a_fetching_joiner_told_that_its_registration_was_evicted_asks_again_with_a_new_incarnation() {
    let (mut net, j) = joiner_fetching_an_offered_state();
    assert_eq!(
        net.nodes[j]
            .awaited_grant()
            .unwrap()
            .1
            .registration
            .incarnation,
        1
    );
    // down for longer than the failure detector waits: the registration is evicted
    net.crashed[j] = true;
    net.run_for(3 * eviction_bound());
    for r in &net.nodes[..4] {
        let entry = r.network_map().get(&id(10)).unwrap();
        assert_eq!(entry.record.state, MemberState::Evicted);
    }
    // it comes back still holding the grant (a resumed fetch): its keepalive is answered
    // with the eviction, and it asks again at once instead of finishing a useless fetch
    net.crashed[j] = false;
    net.offered.clear();
    net.run_for(GossipConfig::default().heartbeat_interval + Duration::from_millis(100));
    assert_eq!(net.nodes[j].stats().held_registrations_evicted, 1);
    let (_, grant) = net.nodes[j]
        .awaited_grant()
        .expect("a new grant offers the state");
    assert_eq!(grant.registration.incarnation, 2);
    install_offered_state_and_write(&mut net, j);
}

#[test]
fn without_keepalives_a_silent_fetching_joiner_would_be_evicted() {
    // the control for the test above: a registration that never reports is evicted in
    // the same time (so the test above measures the keepalives, not a lenient detector)
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.run_for(Duration::from_millis(200));
    net.offer_states = true;
    let j = net.add_joiner(id(10), id(1));
    net.run_for(Duration::from_millis(50));
    assert!(net.nodes[j].awaited_grant().is_some());
    net.crashed[j] = true;
    net.run_for(3 * eviction_bound());
    for r in &net.nodes[..4] {
        let entry = r.network_map().get(&id(10)).expect("registered everywhere");
        assert_eq!(entry.record.state, MemberState::Evicted, "at {:?}", r.id());
    }
}

#[test]
fn ops_whose_deps_never_come_cannot_fill_a_members_memory_and_real_writes_go_on() {
    use crate::gossip::{OpsBatch, PublishedOps};
    use crate::ops_log::{BufferLimits, OpsLog};
    let mut net = LoopbackNet::<LwwMap>::genesis(4);
    net.run_for(Duration::from_millis(100));
    // a member sends 50,000 ops of its own whose first op never comes
    let forger = id(3);
    let mut forged = OpsLog::<LwwMap>::new();
    let ops: Vec<_> = (0..50_000)
        .map(|i| forged.create(&forger, put(&format!("f{i}"), "x")))
        .skip(1)
        .collect();
    let flood = Message::Ops(PublishedOps {
        ops: OpsBatch(ops),
        report: None,
    });
    let now = net.now;
    net.nodes[0].handle_message(now, &forger, &flood);
    net.flush(0);
    let limits = BufferLimits::default();
    let waiting = net.nodes[0].ops_log().buffered_len();
    assert!(waiting <= limits.max_ops, "{waiting} ops waiting");
    assert_eq!(
        waiting as u64,
        limits.max_ahead - 1,
        "seqs 2..=max_ahead wait"
    );
    assert_eq!(
        net.nodes[0].stats().ops_refused,
        50_000 - 1 - waiting as u64,
        "the rest were refused and counted"
    );
    net.write(1, put("real", "1"));
    net.run_for(Duration::from_millis(500));
    for r in &net.nodes {
        assert_eq!(r.stable_state().get("real").as_deref(), Some("1"));
        assert_eq!(
            r.applied_state().get("f1").as_deref(),
            None,
            "nothing forged applied"
        );
    }
}

#[test]
fn an_isolated_member_sponsors_no_one() {
    let mut net = LoopbackNet::<LwwMap>::genesis(5);
    net.run_for(Duration::from_millis(100));
    net.cut_off[4] = true;
    net.run_for(eviction_bound());
    assert!(net.nodes[4].is_isolated());
    // a joiner that can reach only the cut-off node
    let j = net.add_joiner_via(id(9), vec![id(4)]);
    net.cut_off[j] = true;
    net.run_for(Duration::from_secs(2));
    assert!(
        !net.nodes[j].is_member(),
        "a minority must not grow its view"
    );
    assert!(net.nodes[4].stats().sponsorships_declined >= 1);
    let progress = net.nodes[j].join_progress().expect("still joining");
    assert!(progress.refusals >= 1);
    assert!(
        progress
            .last_refusal
            .as_deref()
            .is_some_and(|r| r.contains("hears from too few members")),
        "{progress:?}"
    );
    assert_eq!(
        net.nodes[4]
            .network_map()
            .get(&id(9))
            .map(|e| e.record.state),
        None,
        "nothing registered"
    );
}

#[test]
fn a_node_that_just_joined_sponsors_no_one_and_sends_the_joiner_to_members() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    let a = net.add_joiner(id(7), id(0));
    net.run_for(Duration::from_millis(50));
    assert!(net.nodes[a].is_member());
    let b = net.add_joiner(id(8), id(7));
    net.run_for(Duration::from_secs(1));
    assert!(net.nodes[a].stats().sponsorships_declined >= 1);
    assert!(net.nodes[b].stats().join_refusals >= 1);
    assert!(
        net.nodes[b].is_member(),
        "redirected to a member that can sponsor"
    );
    let sponsor = net.nodes[b].network_map().own().record.sponsor.clone();
    assert_ne!(sponsor.map(|s| s.sponsor), Some(id(7)));
    // once it has been a member for `suspect_after`, it sponsors
    net.run_for(ReplicaConfig::default().gossip.suspect_after);
    let c = net.add_joiner(id(9), id(7));
    net.run_for(Duration::from_millis(100));
    assert!(net.nodes[c].is_member());
    assert_eq!(
        net.nodes[c]
            .network_map()
            .own()
            .record
            .sponsor
            .clone()
            .map(|s| s.sponsor),
        Some(id(7))
    );
}

#[test]
fn a_leave_that_cannot_hand_over_its_ops_fails_and_the_node_stays_a_member() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(100));
    net.cut_off[2] = true;
    net.write(2, put("only-here", "2"));
    net.nodes[2].leave(net.now).unwrap();
    net.flush(2);
    let timeout = ReplicaConfig::default().gossip.leave_drain_timeout;
    net.run_for(timeout + Duration::from_millis(500));
    let failure = net.nodes[2]
        .take_leave_failure()
        .expect("the leave gave up");
    assert_eq!(failure.unstable_own, 1, "{failure}");
    assert!(net.nodes[2].is_member() && !net.nodes[2].is_leaving());
    assert!(!net.nodes[2].has_left());
    net.write(2, put("still", "writes"));
    // after the heal it hands everything over, and a new leave goes through
    net.cut_off[2] = false;
    net.run_for(eviction_bound() + Duration::from_secs(3));
    net.nodes[2].leave(net.now).unwrap();
    net.flush(2);
    net.run_for(Duration::from_secs(2));
    assert!(net.nodes[2].has_left() || !net.nodes[2].is_member());
    for r in &net.nodes[..2] {
        assert_eq!(
            r.applied_state().get("only-here").as_deref(),
            Some("2"),
            "no write lost"
        );
        assert_eq!(r.applied_state().get("still").as_deref(), Some("writes"));
    }
}

/// A lone founder `x` that wrote `keys`, all stable; its data dir, with a record of
/// founder 0 added so that it rejoins through node 0 of another network.
fn lone_writer_disk(
    keys: &[&str],
    gossip: crate::gossip::GossipConfig,
) -> (Checkpoint<LwwMap>, Vec<Arc<Op<LwwOp>>>) {
    let config = ReplicaConfig {
        gossip,
        ..ReplicaConfig::default()
    };
    let mut x = Replica::<LwwMap>::genesis(id(7), &[id(7)], config, 7, Time::ZERO);
    for k in keys {
        x.write(Time::ZERO, put(k, "x")).unwrap();
    }
    x.handle_timeout(Time::from_millis(10));
    assert_eq!(x.stable_cut().get(&id(7)), keys.len() as u64, "stable");
    let (mut checkpoint, ops) = x.durable_image();
    checkpoint
        .records
        .push(Arc::new(MemberRecord::founder(id(0))));
    (checkpoint, ops)
}

#[test]
fn own_ops_that_only_a_vanished_group_made_stable_are_republished_after_a_rejoin() {
    // x's ops are stable in x's own view, and the network it rejoins through never had
    // them (what a split brain leaves behind): its journal still holds them
    let (checkpoint, ops) = lone_writer_disk(&["a", "b", "c"], Default::default());
    assert_eq!(
        ops.len(),
        3,
        "the data dir keeps the journal past the stable cut"
    );
    let mut net = LoopbackNet::<LwwMap>::genesis(1);
    let x = Replica::resume(checkpoint, ops, ReplicaConfig::default(), 1, net.now).unwrap();
    let x = net.add_node(x);
    net.run_for(Duration::from_secs(2));
    assert!(net.nodes[x].is_member());
    assert_eq!(net.nodes[x].stats().ops_republished, 3);
    for r in &net.nodes {
        assert_eq!(
            r.applied_state().get("c").as_deref(),
            Some("x"),
            "no write lost"
        );
    }
    net.write(x, put("d", "x"));
    assert_eq!(
        net.nodes[x].applied().get(&id(7)),
        4,
        "seqs go on, never reused"
    );
}

#[test]
fn past_the_journal_retention_a_lost_own_op_stops_writes_instead_of_reusing_its_id() {
    let gossip = crate::gossip::GossipConfig {
        own_ops_retention: Duration::ZERO,
        ..Default::default()
    };
    let (checkpoint, ops) = lone_writer_disk(&["a", "b"], gossip);
    assert!(ops.is_empty(), "nothing kept past the stable cut");
    let mut net = LoopbackNet::<LwwMap>::genesis(1);
    let x = Replica::resume(checkpoint, ops, ReplicaConfig::default(), 1, net.now).unwrap();
    let x = net.add_node(x);
    net.run_for(Duration::from_secs(2));
    assert!(net.nodes[x].is_member());
    assert_eq!(net.nodes[x].own_seq(), 2);
    assert_eq!(
        net.nodes[x].write(net.now, put("c", "x")).unwrap_err(),
        WriteRefused::OwnOpsMissing {
            applied: 0,
            highest: 2
        }
    );
}

#[test]
fn a_data_dir_older_than_the_network_stops_writes_under_its_identity() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.write(2, put("a", "1"));
    net.run_for(Duration::from_millis(200));
    let (backup, backup_ops) = net.nodes[2].durable_image();
    net.write(2, put("b", "2"));
    net.write(2, put("c", "3"));
    net.run_for(Duration::from_millis(200));
    net.crashed[2] = true;
    net.run_for(Duration::from_millis(100));
    // the data dir is put back to the backup: it knows only op 1 of its own
    let resumed =
        Replica::resume(backup, backup_ops, ReplicaConfig::default(), 5, net.now).unwrap();
    assert_eq!(resumed.own_seq(), 1);
    net.crashed[2] = false;
    net.nodes[2] = resumed;
    net.flush(2);
    net.run_for(Duration::from_secs(2));
    let node = &mut net.nodes[2];
    assert!(node.is_member());
    assert_eq!(node.stats().own_seq_rollbacks, 1);
    assert_eq!(
        node.write(net.now, put("d", "4")).unwrap_err(),
        WriteRefused::DataDirBehind { stored: 1, seen: 3 },
        "its next seq could name an op that exists"
    );
}

#[test]
fn a_node_restored_from_a_backup_rejoins_under_a_new_identity_and_republishes_its_ops() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(100));
    net.drop_publishes = true;
    net.write(2, put("only-on-2", "2")); // never published: only node 2's disk has it
    net.drop_publishes = false;
    let (backup, backup_ops) = net.nodes[2].durable_image();
    net.crashed[2] = true;
    let restored = Replica::resume_from_backup(
        id(9),
        backup,
        backup_ops,
        ReplicaConfig::default(),
        9,
        net.now,
    )
    .unwrap();
    let n = net.add_node(restored);
    net.run_for(eviction_bound() + Duration::from_secs(2));
    assert!(net.nodes[n].is_member());
    assert_eq!(net.nodes[n].incarnation(), 1, "a new member");
    for i in [0, 1, n] {
        assert_eq!(
            net.nodes[i].applied_state().get("only-on-2").as_deref(),
            Some("2")
        );
    }
    net.write(n, put("fresh", "9"));
    assert_eq!(
        net.nodes[n].applied().get(&id(9)),
        1,
        "its own seqs start at 1"
    );
    assert_eq!(
        net.nodes[n].applied().get(&id(2)),
        1,
        "the old identity's op kept"
    );
}

#[test]
fn a_leaving_node_that_learns_it_was_evicted_rejoins_to_hand_over_instead_of_going() {
    let mut net = LoopbackNet::<LwwMap>::genesis(5);
    net.run_for(Duration::from_millis(100));
    net.cut_off[4] = true;
    net.write(4, put("stranded", "4")); // only node 4 has it
    net.nodes[4].leave(net.now).unwrap();
    net.flush(4);
    net.run_for(eviction_bound() + Duration::from_secs(1));
    assert_eq!(
        net.nodes[0].network_map().get(&id(4)).unwrap().record.state,
        MemberState::Evicted
    );
    assert!(
        net.nodes[4].take_leave_failure().is_some(),
        "its ops are not stable"
    );
    net.nodes[4].leave(net.now).unwrap();
    net.flush(4);
    net.cut_off[4] = false;
    net.run_for(Duration::from_secs(3));
    // it learned of its eviction while leaving: going now would lose the write
    assert!(net.nodes[4].take_leave_failure().is_some());
    assert_eq!(net.nodes[4].stats().rejoins, 1);
    for r in &net.nodes {
        assert_eq!(
            r.applied_state().get("stranded").as_deref(),
            Some("4"),
            "no write lost"
        );
    }
}

#[test]
fn leaving_nodes_evict_no_one_so_they_cannot_leave_an_empty_network_behind() {
    // nodes 1 and 2 leave while node 0 is cut off: evicting it would let both leave and
    // strand node 0, and their writes with it, in a network with no member left
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(100));
    net.cut_off[0] = true;
    net.run_for(Duration::from_secs(2));
    for i in [1, 2] {
        net.write(i, put(&format!("k{i}"), "v"));
        net.nodes[i].leave(net.now).unwrap();
        net.flush(i);
    }
    let timeout = ReplicaConfig::default().gossip.leave_drain_timeout;
    net.run_for(timeout - Duration::from_millis(100));
    for i in [1, 2] {
        assert!(net.nodes[i].is_leaving(), "its ops wait for node 0");
        assert_eq!(
            net.nodes[i].stats().evictions_issued,
            0,
            "it is on its way out"
        );
    }
    assert_eq!(
        net.nodes[1].network_map().get(&id(0)).unwrap().record.state,
        MemberState::Suspect,
        "overdue for eviction by now, but suspected only"
    );
}

fn repair_of(ops: Vec<Arc<Op<LwwOp>>>) -> Message<LwwMap> {
    use crate::gossip::{OpsBatch, Records, Repair};
    Message::Repair(Repair {
        ops: OpsBatch(ops),
        records: Records(Vec::new()),
        more: false,
    })
}

#[test]
fn ops_of_a_node_that_never_was_a_member_are_refused_and_counted() {
    use crate::gossip::{OpsBatch, PublishedOps};
    let mut net = LoopbackNet::<LwwMap>::genesis_with(
        3,
        ReplicaConfig {
            journal_applied: true,
            ..ReplicaConfig::default()
        },
    );
    net.run_for(Duration::from_millis(100));
    // an outsider writes in its own name, and a member relays its op
    let outsider = id(77);
    let mut outside = crate::ops_log::OpsLog::<LwwMap>::new();
    let op = outside.create(&outsider, put("intruder", "1"));
    let now = net.now;
    net.nodes[0].handle_message(now, &outsider, &repair_of(vec![op.clone()]));
    let relayed = Message::Ops(PublishedOps {
        ops: OpsBatch(vec![op]),
        report: None,
    });
    net.nodes[1].handle_message(now, &id(0), &relayed);
    net.flush(0);
    net.flush(1);
    net.run_for(Duration::from_millis(500));
    for r in &net.nodes[..2] {
        assert_eq!(r.stats().ops_not_member, 1);
    }
    // the core says which op it turned down, who brought it and why
    let rejected = |n: usize, net: &mut LoopbackNet<LwwMap>| {
        net.nodes[n]
            .drain_rejected_ops()
            .into_iter()
            .filter(|r| r.origin == outsider)
            .collect::<Vec<_>>()
    };
    for (n, brought_by) in [(0, outsider.clone()), (1, id(0))] {
        assert_eq!(
            rejected(n, &mut net),
            vec![RejectedOp {
                origin: outsider.clone(),
                seq: 1,
                from: brought_by,
                reason: RejectReason::NotMember,
            }]
        );
    }
    for r in &net.nodes {
        assert_eq!(
            r.applied().get(&outsider),
            0,
            "the outsider's op is not applied"
        );
        assert_eq!(r.snapshot_point().get(&outsider), 0);
    }
}

#[test]
fn a_member_that_left_keeps_the_right_to_have_written() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.drop_publishes = true;
    let now = net.now;
    // node 2 writes; its op reaches no one before it leaves
    let op = net.nodes[2].write(now, put("late", "1")).unwrap();
    net.crashed[2] = true;
    let left = Arc::new(MemberRecord {
        state: MemberState::Left,
        report_seq: 1_000,
        applied: op.deps.clone(),
        ..MemberRecord::founder(id(2))
    });
    net.nodes[0].handle_message(
        now,
        &id(1),
        &Message::Status(crate::gossip::Records(vec![left])),
    );
    assert_eq!(
        net.nodes[0].network_map().get(&id(2)).unwrap().record.state,
        MemberState::Left
    );
    net.nodes[0].handle_message(now, &id(1), &repair_of(vec![op]));
    assert_eq!(net.nodes[0].stats().ops_not_member, 0);
    assert_eq!(
        net.nodes[0].applied_state().get("late").as_deref(),
        Some("1")
    );
}

#[test]
fn with_a_writers_list_only_listed_origins_write() {
    let ids = [id(0), id(1)];
    let listed = ReplicaConfig {
        writers: Some(Arc::new(BTreeSet::from([id(0)]))),
        ..ReplicaConfig::default()
    };
    let mut a = Replica::<LwwMap>::genesis(id(0), &ids, listed.clone(), 1, Time::ZERO);
    let mut unlisted = Replica::<LwwMap>::genesis(id(1), &ids, listed, 2, Time::ZERO);
    assert_eq!(
        unlisted.write(Time::ZERO, put("k", "v")).unwrap_err(),
        WriteRefused::NotWriter,
        "a node not on the list does not write"
    );
    // a member without the list writes anyway: the listed node refuses its op
    let mut b = Replica::<LwwMap>::genesis(id(1), &ids, ReplicaConfig::default(), 3, Time::ZERO);
    let op = b.write(Time::ZERO, put("k", "v")).unwrap();
    a.handle_message(Time::ZERO, &id(1), &repair_of(vec![op]));
    assert_eq!(a.stats().ops_not_writer, 1);
    assert_eq!(a.applied().get(&id(1)), 0);
    assert!(
        a.write(Time::ZERO, put("mine", "1")).is_ok(),
        "a listed node writes"
    );
}

/// The stale rule (SPEC §5): a node serves ops only to a peer at or above its snapshot
/// point; a peer below it is told it is stale and gets no ops (those are compacted).
#[test]
fn a_digest_from_below_the_snapshot_point_is_answered_stale_without_ops() {
    let a = id(1);
    // a founder restored at a cut: its snapshot point starts there (the state's content
    // does not matter to the rule)
    let cut = VersionVector::from_iter([(a.clone(), 3)]);
    let mut founder = Replica::restored(
        a.clone(),
        LwwMap::default(),
        cut.clone(),
        3,
        ReplicaConfig::default(),
        1,
        Time::ZERO,
    );
    while founder.poll_action().is_some() {}
    let digest = |applied: VersionVector| {
        Message::Digest(AntiEntropyDigest {
            applied,
            members: Vec::new(),
            fingerprint: None,
            initiator: false,
            view_epoch: 1,
        })
    };
    let answers = |r: &mut Replica<LwwMap>| {
        let mut out = Vec::new();
        while let Some(action) = r.poll_action() {
            if let Action::Send { message, .. } = action {
                out.push(message);
            }
        }
        out
    };
    // below the snapshot point: Stale with it, and no op
    founder.handle_message(Time::ZERO, &id(2), &digest(VersionVector::new()));
    let sent = answers(&mut founder);
    assert!(
        sent.iter()
            .any(|m| matches!(&**m, Message::Stale { snapshot_point } if *snapshot_point == cut)),
        "told it is stale: {sent:?}"
    );
    assert!(
        sent.iter()
            .all(|m| !matches!(&**m, Message::Repair(r) if !r.ops.is_empty())),
        "no ops below the snapshot point"
    );
    // at the snapshot point: no Stale
    founder.handle_message(Time::ZERO, &id(2), &digest(cut.clone()));
    let sent = answers(&mut founder);
    assert!(
        sent.iter().all(|m| !matches!(&**m, Message::Stale { .. })),
        "a peer at the snapshot point is not stale: {sent:?}"
    );
}

/// A member told it is stale checks the notice against its applied vector now: below the
/// sender's snapshot point it has lost good standing and rejoins with a new incarnation;
/// a notice its own progress overtook is ignored.
#[test]
fn a_stale_notice_makes_a_member_below_it_rejoin_and_an_overtaken_one_is_ignored() {
    let ids = [id(1), id(2)];
    let mut member = Replica::<LwwMap>::genesis(
        ids[1].clone(),
        &ids,
        ReplicaConfig::default(),
        2,
        Time::ZERO,
    );
    let op = member.write(Time::ZERO, put("mine", "1")).unwrap();
    let now = Time::ZERO + Duration::from_millis(10);
    // overtaken: the sender's snapshot point is within what this member applied
    let overtaken = VersionVector::from_iter([(ids[1].clone(), op.seq)]);
    member.handle_message(
        now,
        &ids[0],
        &Message::Stale {
            snapshot_point: overtaken,
        },
    );
    assert!(member.is_member(), "an overtaken notice is ignored");
    assert_eq!(member.stats().stale_notices, 0);
    assert_eq!(member.incarnation(), 1);
    // below: the sender decided past this member
    let ahead = VersionVector::from_iter([(ids[0].clone(), 5)]);
    member.handle_message(
        now,
        &ids[0],
        &Message::Stale {
            snapshot_point: ahead,
        },
    );
    assert_eq!(member.stats().stale_notices, 1);
    assert!(!member.is_member(), "it lost good standing");
    assert_eq!(member.incarnation(), 2, "it rejoins with a new incarnation");
    assert_eq!(
        member.join_sponsors(),
        Some(&ids[..1]),
        "through the member it knows"
    );
}

/// A survivor of a majority loss waits for the silent members forever (it cannot outvote
/// them), until the operator forces a new view: then it evicts them, and its writes become
/// stable. Without the operator it never does so by itself.
#[test]
fn a_survivor_of_a_majority_loss_moves_on_only_when_the_operator_forces_a_new_view() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(200));
    net.crashed[1] = true;
    net.crashed[2] = true;
    net.run_for(Duration::from_secs(20));
    let now = net.now;
    let op = net.nodes[0].write(now, put("after", "1")).unwrap();
    net.flush(0);
    net.run_for(Duration::from_secs(20));
    let survivor = &net.nodes[0];
    assert!(survivor.is_isolated(), "it hears from one member of three");
    assert!(
        survivor.snapshot_point().get(&op.origin) < op.seq,
        "its write waits for the lost members"
    );
    assert_eq!(survivor.stats().evictions_issued, 0, "never by itself");
    assert_eq!(survivor.network_map().counted(), 3);

    let now = net.now;
    let evicted = net.nodes[0].force_new_view(now).unwrap();
    assert_eq!(
        evicted.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        vec![id(1), id(2)]
    );
    net.run_for(Duration::from_millis(100));
    let survivor = &net.nodes[0];
    assert_eq!(
        survivor.network_map().counted(),
        1,
        "a view of the survivor"
    );
    assert!(
        survivor.snapshot_point().get(&op.origin) >= op.seq,
        "its write is stable now"
    );
    assert_eq!(survivor.stable_state().get("after").as_deref(), Some("1"));
}

/// Forcing a new view evicts only the members this node does not hear from: a live
/// member stays.
#[test]
fn forcing_a_new_view_spares_the_members_that_are_heard() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(200));
    net.crashed[2] = true;
    net.run_for(Duration::from_secs(5));
    let now = net.now;
    let evicted = net.nodes[0].force_new_view(now).unwrap();
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].0, id(2));
    assert!(net.nodes[0].network_map().is_counted(&id(1)));
}

#[test]
fn a_voter_resumed_from_its_data_dir_keeps_its_view_and_its_promises() {
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.run_for(Duration::from_millis(300));
    net.crashed[2] = true;
    net.run_for(2 * eviction_bound());
    let before = net.nodes[1].votes();
    assert_eq!(before.view.epoch, 2, "a view without the crashed member");
    assert!(net.nodes[1].vote_generation() > 0, "node 1 voted for it");
    let (checkpoint, ops) = net.nodes[1].durable_image();
    assert_eq!(checkpoint.votes.as_ref(), Some(&before));
    let resumed = Replica::resume(checkpoint, ops, ReplicaConfig::default(), 9, net.now).unwrap();
    // its installed view and whatever it promised for the next epoch (the agreement's own
    // tests show why a forgotten promise could fork the history)
    assert_eq!(
        resumed.votes(),
        before,
        "the seat's votes survive the restart"
    );
    assert_eq!(resumed.view(), &before.view);
}

/// No proper subset of the members holds all of its own observers (on each ring, a
/// member's observer is its predecessor, and a ring is one cycle): of a group cut off
/// together, some member is watched from outside and evicted, the rings re-form without
/// it, and the next one is watched from outside.
#[test]
fn a_minority_member_whose_observers_are_all_cut_off_with_it_is_still_evicted() {
    // 10 members; find one whose observers are few, and cut it off together with them
    let n = 10;
    let mut net = LoopbackNet::<LwwMap>::genesis(n);
    net.run_for(Duration::from_secs(1));
    let observers_of = |net: &LoopbackNet<LwwMap>, x: usize| -> Vec<usize> {
        (0..n as usize)
            .filter(|&o| net.nodes[o].watched_members().contains(&id(x as u64)))
            .collect()
    };
    let (x, observers) = (0..n as usize)
        .map(|x| (x, observers_of(&net, x)))
        .min_by_key(|(_, o)| o.len())
        .unwrap();
    assert!(
        observers.len() <= 3,
        "a member with few observers: {observers:?}"
    );
    for &i in std::iter::once(&x).chain(&observers) {
        net.cut_off[i] = true;
    }
    // its observers are evicted first (each has an observer outside), then it is
    net.run_for(3 * eviction_bound());
    for (i, r) in net
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !net.cut_off[*i])
    {
        for &gone in std::iter::once(&x).chain(&observers) {
            let state = r.network_map().get(&id(gone as u64)).unwrap().record.state;
            assert_eq!(state, MemberState::Evicted, "node {i} evicted {gone}");
        }
        assert!(r.watched_members().iter().all(|m| {
            let i = (0..n as usize).find(|&j| &id(j as u64) == m).unwrap();
            !net.cut_off[i]
        }));
    }
}

/// A grant that answers a request the joiner has given up on (the sponsor was slow to
/// prepare it, say) registers an incarnation the sponsor has since replaced: installed, it
/// would make a member whose reports the network ignores, holding the snapshot point at its
/// join cut. The joiner ignores it and installs the grant of the incarnation it asks with.
#[test]
fn a_grant_for_an_incarnation_the_joiner_gave_up_is_ignored() {
    let mut net = LoopbackNet::<LwwMap>::genesis(1);
    net.write(0, put("before", "0"));
    net.record = true;
    let j = net.add_joiner(id(9), id(0));
    net.deaf[j] = true; // the sponsor's answers are late
    net.run_for(Duration::from_millis(200));
    let late_grant = net
        .recorded
        .iter()
        .find(|m| matches!(m.as_ref(), Message::JoinResponse(r) if matches!(r.as_ref(), JoinResponse::Granted(_))))
        .expect("the sponsor granted the first request")
        .clone();
    net.record = false;
    net.run_for(Duration::from_secs(10));
    assert!(
        net.nodes[j].incarnation() > 1,
        "the joiner gave up on its first request and asks with a new incarnation"
    );
    net.deaf[j] = false;
    let now = net.now;
    net.nodes[j].handle_message(now, &id(0), &late_grant);
    assert!(!net.nodes[j].is_member(), "the late grant is not installed");
    assert_eq!(net.nodes[j].stats().stale_grants, 1);

    net.run_for(Duration::from_secs(5));
    let joiner = &net.nodes[j];
    assert!(joiner.is_member(), "the grant of the current request is");
    let incarnation = joiner.incarnation();
    assert_eq!(
        net.nodes[0]
            .network_map()
            .get(&id(9))
            .unwrap()
            .record
            .incarnation,
        incarnation,
        "the sponsor knows the incarnation the joiner runs as"
    );
    net.write(j, put("joiner", "9"));
    net.run_for(Duration::from_secs(5));
    for r in &net.nodes {
        assert_eq!(
            r.snapshot_point().total(),
            2,
            "the joiner's write reaches every snapshot point"
        );
    }
}
