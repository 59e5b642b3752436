use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn ids(n: u64) -> Vec<NodeId> {
    (0..n).map(NodeId::synthetic).collect()
}

fn view(epoch: u64, members: &[NodeId]) -> View {
    View {
        epoch,
        members: members.iter().map(|id| (id.clone(), 1u64)).collect(),
    }
}

fn config() -> AggregationConfig {
    AggregationConfig {
        min_group_size: 4,
        ..AggregationConfig::default()
    }
}

#[test]
fn every_member_is_in_one_group_with_r_distinct_aggregators_and_the_covers_add_up() {
    for n in [1u64, 2, 3, 10, 100, 1_000] {
        let all = ids(n);
        let layout = Layout::new(&view(7, &all), &config());
        let mut seen = BTreeMap::new();
        let mut sum = Cover::default();
        for g in 0..layout.group_count() {
            for id in layout.members(g) {
                assert!(seen.insert(id.clone(), g).is_none(), "{id:?} in two groups");
                assert_eq!(layout.group_of(id), Some(g));
            }
            let aggregators = layout.aggregators(g);
            assert_eq!(aggregators.len(), 2.min(n as usize), "n = {n}, group {g}");
            assert!(aggregators.windows(2).all(|w| w[0] < w[1]), "distinct");
            sum = sum + layout.group_cover(g);
        }
        assert_eq!(seen.len(), n as usize);
        assert_eq!(sum, layout.cover());
        assert_eq!(layout.cover().members, n);
        // about 2√N members a group, never more than twice that
        let target = ((2.0 * (n as f64).sqrt()).ceil() as usize).max(4);
        assert_eq!(layout.group_count(), (n as usize).div_ceil(target).max(1));
        let largest = (0..layout.group_count())
            .map(|g| layout.members(g).len())
            .max()
            .unwrap();
        assert!(largest <= 2 * target + 8, "n = {n}: a group of {largest}");
    }
}

#[test]
fn the_layout_is_the_same_everywhere_and_changes_with_the_epoch() {
    let all = ids(400);
    let a = Layout::new(&view(3, &all), &config());
    assert_eq!(a, Layout::new(&view(3, &all), &config()));
    let b = Layout::new(&view(4, &all), &config());
    let moved = all
        .iter()
        .filter(|id| a.group_of(id) != b.group_of(id))
        .count();
    assert!(
        moved > 100,
        "a new epoch draws new groups ({moved} of 400 moved)"
    );
    // a view that differs in one member has another cover
    let fewer = Layout::new(&view(3, &all[1..]), &config());
    assert_ne!(fewer.cover(), a.cover());
    let other_incarnation = View {
        epoch: 3,
        members: all
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), if i == 0 { 2u64 } else { 1 }))
            .collect(),
    };
    assert_ne!(
        Layout::new(&other_incarnation, &config()).cover(),
        a.cover()
    );
}

/// A network of aggregation state machines over a bus with latency and loss.
struct Net {
    nodes: Vec<Aggregation>,
    applied: Vec<VersionVector>,
    /// What each node contributes: its applied vector, or less (joiner cover).
    cap: Vec<Option<VersionVector>>,
    down: Vec<bool>,
    queue: VecDeque<(Time, usize, usize, Arc<AggregateMessage>)>,
    index: BTreeMap<NodeId, usize>,
    rng: ChaCha8Rng,
    loss: f64,
    now: Time,
    /// Every snapshot point each node held, in order.
    history: Vec<Vec<(u64, KeyedVector)>>,
    messages: u64,
    /// Check the snapshot points after every step (off where only traffic is counted).
    check: bool,
    /// No timer of node i runs before `start[i]` (nodes that started one after another).
    start: Vec<Time>,
}

impl Net {
    fn new(n: u64, seed: u64, loss: f64) -> Self {
        Self::with_config(n, seed, loss, config())
    }

    fn with_config(n: u64, seed: u64, loss: f64, config: AggregationConfig) -> Self {
        let all = ids(n);
        let v = view(1, &all);
        Net {
            nodes: all
                .iter()
                .map(|id| Aggregation::new(id.clone(), 1, &v, config.clone()))
                .collect(),
            applied: vec![VersionVector::new(); n as usize],
            cap: vec![None; n as usize],
            down: vec![false; n as usize],
            queue: VecDeque::new(),
            index: all
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, id)| (id, i))
                .collect(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss,
            now: Time::ZERO,
            history: vec![Vec::new(); n as usize],
            messages: 0,
            check: true,
            start: vec![Time::ZERO; n as usize],
        }
    }

    fn contribution(&self, i: usize) -> VersionVector {
        match &self.cap[i] {
            Some(cap) => self.applied[i].meet(cap),
            None => self.applied[i].clone(),
        }
    }

    /// Node i applies one more op of `origin`.
    fn apply(&mut self, i: usize, origin: &NodeId) {
        let next = self.applied[i].get(origin) + 1;
        self.applied[i].set(origin.clone(), next);
        let contribution = self.contribution(i);
        self.nodes[i].set_contribution(self.now, &contribution);
    }

    /// Runs until `until`, checking after every step that no snapshot point exceeds what
    /// every node applied and that none falls.
    fn run(&mut self, until: Time) {
        loop {
            let next_timer = (0..self.nodes.len())
                .filter(|i| !self.down[*i])
                .filter_map(|i| {
                    self.nodes[i]
                        .next_deadline()
                        .map(|t| (t.max(self.now).max(self.start[i]), i))
                })
                .min();
            let next_message = self.queue.front().map(|m| m.0);
            let at = match (next_timer, next_message) {
                (Some((t, _)), Some(m)) => t.min(m),
                (Some((t, _)), None) => t,
                (None, Some(m)) => m,
                (None, None) => break,
            };
            if at > until {
                break;
            }
            self.now = at;
            if next_message == Some(at) {
                let (_, from, to, message) = self.queue.pop_front().unwrap();
                if !self.down[to] {
                    let from_id = self.nodes[from].me.clone();
                    self.nodes[to].handle(at, &from_id, &message);
                    self.after(to);
                }
            } else if let Some((_, i)) = next_timer {
                self.nodes[i].on_timeout(at);
                self.after(i);
            }
        }
        self.now = until;
    }

    fn after(&mut self, i: usize) {
        for out in self.nodes[i].take_outgoing() {
            self.messages += 1;
            let to = self.index[&out.to];
            if self.down[i] || self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = Duration::from_millis(self.rng.random_range(1..20));
            let at = self.now + latency;
            // keep the queue ordered by delivery time
            let pos = self.queue.partition_point(|m| m.0 <= at);
            self.queue.insert(pos, (at, i, to, out.message));
        }
        if !self.check {
            return;
        }
        let sp = self.nodes[i].snapshot_point().clone();
        let epoch = self.nodes[i].layout().epoch();
        if let Some((at, last)) = self.history[i].last() {
            // a new view starts its snapshot point afresh
            assert!(
                *at != epoch || last.le(&sp),
                "node {i}'s snapshot point fell"
            );
        }
        let floor = (0..self.nodes.len())
            .map(|k| self.contribution(k))
            .reduce(|a, b| a.meet(&b))
            .unwrap();
        let floor = KeyedVector::of(&floor);
        assert!(
            sp.le(&floor),
            "node {i}'s snapshot point {sp:?} passes a member's contribution {floor:?}"
        );
        self.history[i].push((epoch, sp));
    }
}

#[test]
fn the_snapshot_point_reaches_the_minimum_of_every_member_and_never_passes_it() {
    for n in [1u64, 3, 20, 150] {
        let mut net = Net::new(n, n, 0.0);
        let writers = ids(3);
        for step in 0..200u64 {
            let i = (step * 7 % n) as usize;
            net.apply(i, &writers[(step % 3) as usize]);
            let t = net.now + Duration::from_millis(3);
            net.run(t);
        }
        // everyone catches up with everything written
        let all: Vec<VersionVector> = net.applied.clone();
        let mut union = VersionVector::new();
        for a in &all {
            union.join(a);
        }
        for i in 0..n as usize {
            net.applied[i] = union.clone();
            net.nodes[i].set_contribution(net.now, &union);
        }
        let t = net.now + Duration::from_millis(500);
        net.run(t);
        for (i, node) in net.nodes.iter().enumerate() {
            assert_eq!(
                node.snapshot_point(),
                &KeyedVector::of(&union),
                "n = {n}: node {i}"
            );
        }
    }
}

#[test]
fn lost_messages_are_repaired_by_the_heartbeat_and_one_aggregator_down_stalls_nothing() {
    let n = 60;
    let mut net = Net::new(n, 5, 0.0);
    let origin = NodeId::synthetic(1_000);
    // the first aggregator of every group applies 10 ops, the others 5
    let layout = net.nodes[0].layout().clone();
    let failing: BTreeSet<usize> = (0..layout.group_count())
        .map(|g| net.index[&layout.aggregators(g)[0]])
        .collect();
    for i in 0..n as usize {
        let ops = if failing.contains(&i) { 10 } else { 5 };
        for _ in 0..ops {
            net.apply(i, &origin);
        }
    }
    net.run(Time::ZERO + Duration::from_secs(1));
    assert!(net
        .nodes
        .iter()
        .all(|node| node.snapshot_point().get(origin.key()) == 5));
    // they fail (a crashed member still counts with what it reported); a fifth of all
    // messages is lost from now on, and the others catch up with them: every hop is
    // repaired by the next heartbeat, so the remaining aggregators get there within
    // a few seconds
    for i in &failing {
        net.down[*i] = true;
    }
    net.loss = 0.2;
    for i in (0..n as usize).filter(|i| !failing.contains(i)) {
        for _ in 0..5 {
            net.apply(i, &origin);
        }
    }
    net.run(Time::ZERO + Duration::from_secs(10));
    for i in (0..n as usize).filter(|i| !net.down[*i]) {
        assert_eq!(
            net.nodes[i].snapshot_point().get(origin.key()),
            10,
            "node {i}"
        );
    }
}

#[test]
fn a_sponsor_holding_a_joiner_s_cut_holds_every_snapshot_point_at_that_cut() {
    let n = 30;
    let mut net = Net::new(n, 9, 0.0);
    let origin = NodeId::synthetic(1_000);
    for i in 0..n as usize {
        net.apply(i, &origin);
    }
    // node 4 registers a joiner at its applied vector (1), then everyone goes on to 10
    net.cap[4] = Some(net.applied[4].clone());
    let contribution = net.contribution(4);
    net.nodes[4].set_contribution(net.now, &contribution);
    for _ in 0..9 {
        for i in 0..n as usize {
            net.apply(i, &origin);
        }
    }
    net.run(Time::ZERO + Duration::from_secs(2));
    for node in &net.nodes {
        assert_eq!(
            node.snapshot_point().get(origin.key()),
            1,
            "held at the join cut"
        );
    }
    // the view admits the joiner: the sponsor's cover ends
    net.cap[4] = None;
    let contribution = net.contribution(4);
    net.nodes[4].set_contribution(net.now, &contribution);
    let t = net.now + Duration::from_secs(1);
    net.run(t);
    for node in &net.nodes {
        assert_eq!(node.snapshot_point().get(origin.key()), 10);
    }
}

#[test]
fn a_snapshot_point_that_covers_less_than_the_view_is_refused_and_counted() {
    let all = ids(10);
    let mut member = Aggregation::new(all[0].clone(), 1, &view(1, &all), config());
    let origin = NodeId::synthetic(99);
    let sp = KeyedVector::of(&[(origin.clone(), 5)].into_iter().collect());
    let short = Layout::new(&view(1, &all[..9]), &config()).cover();
    let refused = member.handle(
        Time::ZERO,
        &all[1],
        &AggregateMessage::SnapshotPoint {
            epoch: 1,
            snapshot_point: sp.clone(),
            cover: short,
        },
    );
    assert_eq!(refused, Received::IncompleteCover);
    assert_eq!(member.incomplete_covers(), 1);
    assert!(member.snapshot_point().is_empty());
    // an earlier epoch's is ignored; the view's is taken
    let full = member.layout().cover();
    let other_epoch = AggregateMessage::SnapshotPoint {
        epoch: 0,
        snapshot_point: sp.clone(),
        cover: full,
    };
    assert_eq!(
        member.handle(Time::ZERO, &all[1], &other_epoch),
        Received::Ignored
    );
    let valid = AggregateMessage::SnapshotPoint {
        epoch: 1,
        snapshot_point: sp.clone(),
        cover: full,
    };
    assert_eq!(
        member.handle(Time::ZERO, &all[1], &valid),
        Received::SnapshotPointRose
    );
    assert_eq!(member.snapshot_point(), &sp);
}

#[test]
fn contributions_of_another_incarnation_than_the_views_are_not_counted() {
    let all = ids(3);
    let v = view(1, &all);
    let layout = Layout::new(&v, &config());
    let aggregator = layout.aggregators(0)[0].clone();
    let mut node = Aggregation::new(aggregator.clone(), 1, &v, config());
    let other = all.iter().find(|id| **id != aggregator).unwrap().clone();
    let origin = NodeId::synthetic(99);
    let newer = AggregateMessage::Contribution {
        epoch: 1,
        incarnation: 2,
        whole: true,
        entries: vec![(origin.key(), 9)],
    };
    assert_eq!(node.handle(Time::ZERO, &other, &newer), Received::Ignored);
    let current = AggregateMessage::Contribution {
        epoch: 1,
        incarnation: 1,
        whole: true,
        entries: vec![(origin.key(), 9)],
    };
    assert_eq!(node.handle(Time::ZERO, &other, &current), Received::Taken);
}

fn with_liveness() -> AggregationConfig {
    AggregationConfig {
        liveness: true,
        ..config()
    }
}

/// Who each live node heard of through aggregation during the last `window`.
fn heard_during(net: &mut Net, window: Duration) -> Vec<BTreeSet<NodeId>> {
    for node in &mut net.nodes {
        node.take_heard();
    }
    let until = net.now + window;
    net.run(until);
    net.nodes
        .iter_mut()
        .map(|node| node.take_heard().into_iter().collect())
        .collect()
}

#[test]
fn aggregators_tell_every_member_who_is_alive_and_soon_stop_naming_a_crashed_one() {
    let n = 60;
    let mut net = Net::with_config(n, 3, 0.0, with_liveness());
    assert!(net.nodes[0].layout().group_count() > 2);
    net.run(Time::ZERO + Duration::from_secs(2));
    let heard = heard_during(&mut net, Duration::from_secs(1));
    for (i, node) in net.nodes.iter().enumerate() {
        assert!(node.covered(net.now), "node {i} is covered");
        let others: BTreeSet<NodeId> = net
            .index
            .keys()
            .filter(|id| **id != node.me)
            .cloned()
            .collect();
        assert_eq!(heard[i], others, "node {i} hears of every other member");
    }
    // a member that is no aggregator crashes: within silence and one and a half
    // heartbeats no one hears of it any more, and everyone still hears of the rest
    let layout = net.nodes[0].layout().clone();
    let crashed = (0..n as usize)
        .find(|i| !layout.all_aggregators().contains(&net.nodes[*i].me))
        .unwrap();
    net.down[crashed] = true;
    let t = net.now + Duration::from_millis(2_800);
    net.run(t);
    let heard = heard_during(&mut net, Duration::from_secs(1));
    let gone = net.nodes[crashed].me.clone();
    for i in (0..n as usize).filter(|i| *i != crashed) {
        assert!(
            !heard[i].contains(&gone),
            "node {i} still hears of the crashed member"
        );
        assert_eq!(
            heard[i].len(),
            n as usize - 2,
            "node {i} hears of the others"
        );
        assert!(net.nodes[i].covered(net.now));
    }
}

#[test]
fn with_both_aggregators_of_a_group_down_no_member_is_covered_and_all_fall_back_on_the_flood() {
    let n = 60;
    let mut net = Net::with_config(n, 4, 0.0, with_liveness());
    net.run(Time::ZERO + Duration::from_secs(2));
    assert!(net.nodes.iter().all(|node| node.covered(net.now)));
    let layout = net.nodes[0].layout().clone();
    for id in layout.aggregators(0) {
        net.down[net.index[id]] = true;
    }
    let t = net.now + Duration::from_secs(3);
    net.run(t);
    for i in (0..n as usize).filter(|i| !net.down[*i]) {
        assert!(!net.nodes[i].covered(net.now), "node {i} is still covered");
    }
    // the members of the other groups are still heard of
    let heard = heard_during(&mut net, Duration::from_secs(1));
    let outside = layout.members(1)[0].clone();
    let i = (0..n as usize)
        .find(|i| !net.down[*i] && net.nodes[*i].me != outside)
        .unwrap();
    assert!(heard[i].contains(&outside));
}

#[test]
fn views_in_quick_succession_leave_every_member_heard_by_every_other() {
    // Each view regroups the members, and an aggregator new to a group has heard none of
    // them yet. Seven views 400 ms apart, each installed over 60 ms: every member must
    // still be heard of by every other within a heartbeat and a half, or the failure
    // detector would soon find most members silent and call itself cut off.
    let n = 60u64;
    let mut net = Net::with_config(n, 5, 0.0, with_liveness());
    net.run(Time::ZERO + Duration::from_secs(2));
    let all = ids(n);
    let mut last_heard = vec![BTreeMap::<NodeId, Time>::new(); n as usize];
    for node in &mut net.nodes {
        node.take_heard();
    }
    let start = net.now;
    let window = Duration::from_millis(1_500);
    let step = Duration::from_millis(10);
    for epoch in 2..=8u64 {
        for k in 0..40 {
            for i in (0..n as usize).filter(|i| i % 7 == k) {
                net.nodes[i].on_view(&view(epoch, &all), net.now);
                net.after(i);
            }
            let until = net.now + step;
            net.run(until);
            for (i, node) in net.nodes.iter_mut().enumerate() {
                for id in node.take_heard() {
                    last_heard[i].insert(id, net.now);
                }
            }
            if net.now < start + window {
                continue;
            }
            for (i, heard) in last_heard.iter().enumerate() {
                let fresh = heard.values().filter(|at| net.now < **at + window).count();
                assert_eq!(
                    fresh,
                    n as usize - 1,
                    "at epoch {epoch}, {:?}: node {i} heard of {fresh} members within {window:?}",
                    net.now
                );
            }
        }
    }
}

#[test]
fn status_messages_per_heartbeat_stay_within_eight_per_member() {
    // idle network: only heartbeats; count every message of one heartbeat interval, with
    // the liveness too
    for (n, config) in [(100u64, config()), (400, config()), (400, with_liveness())] {
        let mut net = Net::with_config(n, 1, 0.0, config);
        net.check = false;
        net.run(Time::ZERO + Duration::from_secs(2));
        let before = net.messages;
        net.run(Time::ZERO + Duration::from_secs(3));
        let per_interval = net.messages - before;
        assert!(
            per_interval <= 8 * n,
            "n = {n}: {per_interval} messages in one heartbeat"
        );
    }
}

#[test]
fn snapshot_points_pushed_for_a_view_not_yet_installed_are_taken_when_it_is() {
    // the aggregators push a new view's first snapshot point before this member installed
    // the view, and then only what rose: the member must not wait for the next whole push
    let all = ids(10);
    let mut member = Aggregation::new(all[0].clone(), 1, &view(1, &all), config());
    let (a, b) = (NodeId::synthetic(98), NodeId::synthetic(99));
    let v2 = view(2, &all[..9]);
    let cover = Layout::new(&v2, &config()).cover();
    let push = |entries: &[(NodeId, u64)], cover: Cover| AggregateMessage::SnapshotPoint {
        epoch: 2,
        snapshot_point: KeyedVector::of(&entries.iter().cloned().collect()),
        cover,
    };
    let whole = push(&[(a.clone(), 5), (b.clone(), 3)], cover);
    let rose = push(&[(b.clone(), 7)], cover);
    assert_eq!(member.handle(Time::ZERO, &all[1], &whole), Received::Taken);
    assert_eq!(member.handle(Time::ZERO, &all[1], &rose), Received::Taken);
    assert!(member.snapshot_point().is_empty(), "not valid at epoch 1");
    member.on_view(&v2, Time::ZERO);
    let expected = KeyedVector::of(&[(a.clone(), 5), (b.clone(), 7)].into_iter().collect());
    assert_eq!(member.snapshot_point(), &expected);
    // one held with a cover that is not the view's is refused when the view comes
    let mut other = Aggregation::new(all[0].clone(), 1, &view(1, &all), config());
    let short = Layout::new(&view(2, &all[..8]), &config()).cover();
    other.handle(Time::ZERO, &all[1], &push(&[(a, 5)], short));
    other.on_view(&v2, Time::ZERO);
    assert!(other.snapshot_point().is_empty());
    assert_eq!(other.incomplete_covers(), 1);
}

#[test]
fn a_contribution_made_under_a_later_view_waits_until_the_aggregator_installs_it() {
    // the sponsor's contribution made after the view admitting its joiner no longer
    // covers the joiner: an aggregator still at the earlier view must not count it there
    let all = ids(3);
    let v1 = view(1, &all);
    // every member aggregates, at both epochs
    let config = AggregationConfig {
        aggregators_per_group: 3,
        ..config()
    };
    let aggregator = all[0].clone();
    let others: Vec<NodeId> = all[1..].to_vec();
    let mut node = Aggregation::new(aggregator.clone(), 1, &v1, config);
    let origin = NodeId::synthetic(99);
    let at = |epoch: u64, seq: u64| AggregateMessage::Contribution {
        epoch,
        incarnation: 1,
        whole: true,
        entries: vec![(origin.key(), seq)],
    };
    node.handle(Time::ZERO, &others[0], &at(1, 3));
    node.handle(Time::ZERO, &others[1], &at(2, 9));
    let own: VersionVector = [(origin.clone(), 9)].into_iter().collect();
    node.set_contribution(Time::ZERO, &own);
    node.on_timeout(Time::ZERO);
    let t = Time::ZERO + Duration::from_millis(10);
    node.on_timeout(t);
    assert_eq!(
        node.inputs
            .get(&others[1])
            .map(|(_, v)| v.get(origin.key())),
        None,
        "not counted at epoch 1"
    );
    assert!(
        node.snapshot_point().is_empty(),
        "epoch 1 lacks a member's contribution"
    );
    // at epoch 2 it counts
    node.on_view(&view(2, &all), t);
    assert_eq!(
        node.inputs
            .get(&others[1])
            .map(|(_, v)| v.get(origin.key())),
        Some(9)
    );
}

#[test]
fn a_keyed_vector_names_its_origins_again_from_a_known_vector_and_never_rises() {
    let (a, b, c) = (
        NodeId::synthetic(1),
        NodeId::synthetic(2),
        NodeId::synthetic(3),
    );
    let full: VersionVector = [(a.clone(), 4), (b.clone(), 7), (c.clone(), 2)]
        .into_iter()
        .collect();
    let keyed = KeyedVector::of(&full);
    assert_eq!(keyed.get(b.key()), 7);
    assert_eq!(
        keyed.resolve(&full),
        full,
        "a vector that knows every origin"
    );
    // an origin the known vector lacks is left out: lower, never higher
    let known: VersionVector = [(a.clone(), 1), (b.clone(), 1)].into_iter().collect();
    let resolved = keyed.resolve(&known);
    assert_eq!(resolved.get(&a), 4);
    assert_eq!(resolved.get(&c), 0);
    assert!(resolved.le(&full));
    // 8 bytes an origin on the wire, not the whole id
    let as_ids = crate::gossip::encoded_len(&full);
    let as_keys = crate::gossip::encoded_len(&keyed);
    assert!(
        as_keys * 2 < as_ids,
        "{as_keys} bytes keyed, {as_ids} by id"
    );
}

#[test]
fn at_a_new_view_aggregators_hand_a_crashed_member_s_input_to_its_new_aggregators() {
    hand_over_a_crashed_member_s_input(Duration::ZERO);
}

#[test]
fn a_handoff_that_reaches_a_new_aggregator_before_its_view_is_kept_until_it_installs_it() {
    // the crashed member's new aggregators install the view 50 ms after everyone else:
    // the handoffs reach them first, under a layout in which they aggregate other members
    hand_over_a_crashed_member_s_input(Duration::from_millis(50));
}

/// A member that aggregates nothing crashes, and a new view regroups everyone; the
/// crashed member's new aggregators install it `late` after the others.
fn hand_over_a_crashed_member_s_input(late: Duration) {
    let n = 30;
    let mut net = Net::new(n, 11, 0.0);
    let origin = NodeId::synthetic(1_000);
    let layout = net.nodes[0].layout().clone();
    let all = ids(n);
    let next = view(2, &all);
    let next_layout = Layout::new(&next, &config());
    // a member that aggregates nothing, none of whose new aggregators held its input
    let crashed = (0..n as usize)
        .find(|i| {
            let id = &net.nodes[*i].me;
            !layout.all_aggregators().contains(id)
                && next_layout
                    .aggregators_for(id)
                    .iter()
                    .all(|a| !layout.aggregators_for(id).contains(a))
        })
        .expect("a member that aggregates nothing");
    // it applies 8 ops, the others 5; the snapshot point is 5 everywhere
    for i in 0..n as usize {
        for _ in 0..(if i == crashed { 8 } else { 5 }) {
            net.apply(i, &origin);
        }
    }
    net.run(Time::ZERO + Duration::from_secs(1));
    assert!(net
        .nodes
        .iter()
        .all(|a| a.snapshot_point().get(origin.key()) == 5));
    // it crashes; the others go on to 10, and a new view (same members) regroups everyone
    net.down[crashed] = true;
    for i in (0..n as usize).filter(|i| *i != crashed) {
        for _ in 0..5 {
            net.apply(i, &origin);
        }
    }
    let new_aggregators = next_layout.aggregators_for(&net.nodes[crashed].me).to_vec();
    let (early, late_ones): (Vec<usize>, Vec<usize>) = (0..n as usize)
        .filter(|i| *i != crashed)
        .partition(|i| late.is_zero() || !new_aggregators.contains(&net.nodes[*i].me));
    for (group, at) in [(early, net.now), (late_ones, net.now + late)] {
        net.run(at);
        for i in group {
            net.nodes[i].on_view(&next, at);
            net.after(i);
        }
    }
    net.run(Time::ZERO + Duration::from_secs(3));
    // the crashed member's 8, handed over, completes the new groups
    for i in (0..n as usize).filter(|i| *i != crashed) {
        assert_eq!(
            net.nodes[i].snapshot_point().get(origin.key()),
            8,
            "node {i}"
        );
    }
}

#[test]
fn both_aggregators_of_a_group_crashing_leave_their_own_contributions_with_the_witness() {
    // The second aggregator of a group to crash held its own contribution alone (the
    // first was down): without a third holder, the view that evicts only the first could
    // never complete the group that the second still belongs to.
    let n = 30;
    let mut net = Net::new(n, 12, 0.0);
    let origin = NodeId::synthetic(1_000);
    let layout = net.nodes[0].layout().clone();
    let group = (0..layout.groups())
        .find(|g| {
            layout
                .aggregators(*g)
                .iter()
                .all(|a| layout.group_of(a) == Some(*g))
        })
        .expect("a group aggregated by its own members");
    let aggregators: Vec<usize> = layout
        .aggregators(group)
        .iter()
        .map(|id| net.index[id])
        .collect();
    let witness = layout.witness(group).expect("a witness").clone();
    assert!(!layout.aggregators(group).contains(&witness));
    for i in 0..n as usize {
        for _ in 0..5 {
            net.apply(i, &origin);
        }
    }
    net.run(Time::ZERO + Duration::from_millis(2_500));
    // both crash, one after the other; the others go on to 10
    for a in &aggregators {
        net.down[*a] = true;
    }
    let live: Vec<usize> = (0..n as usize).filter(|i| !net.down[*i]).collect();
    for &i in &live {
        for _ in 0..5 {
            net.apply(i, &origin);
        }
    }
    // a view evicts the first only (the second's eviction is still to come)
    let first = net.nodes[aggregators[0]].me.clone();
    let rest: Vec<NodeId> = ids(n).into_iter().filter(|id| *id != first).collect();
    let now = net.now;
    for &i in &live {
        net.nodes[i].on_view(&view(2, &rest), now);
        net.after(i);
    }
    net.run(now + Duration::from_secs(3));
    // the second's last whole contribution, 5, handed over by the witness, completes the
    // new groups: the snapshot point of the new view is 5 everywhere
    for &i in &live {
        assert_eq!(
            net.nodes[i].snapshot_point().get(origin.key()),
            5,
            "node {i}"
        );
    }
}

#[test]
fn with_a_group_s_first_aggregator_down_the_second_pushes_once_a_heartbeat() {
    // Changes go through the first aggregator, which crashed (its last contribution is
    // far ahead of the others); the second takes the members' whole contributions, which
    // keep rising as the members apply ops, and must still push to the group once a
    // heartbeat.
    let n = 12;
    let mut net = Net::new(n, 21, 0.0);
    // the members started one after another, so their whole contributions arrive spread
    // over the heartbeat
    for i in 0..n as usize {
        net.start[i] = Time::ZERO + Duration::from_millis(83 * i as u64);
    }
    let origin = NodeId::synthetic(1_000);
    let layout = net.nodes[0].layout().clone();
    let first = net.index[&layout.aggregators(0)[0]];
    for _ in 0..100 {
        net.apply(first, &origin);
    }
    net.run(Time::ZERO + Duration::from_secs(2));
    net.down[first] = true;
    let live: Vec<usize> = (0..n as usize).filter(|i| *i != first).collect();
    // every live member applies an op every 100 ms for 4 s
    for _ in 0..40 {
        for &i in &live {
            net.apply(i, &origin);
        }
        let until = net.now + Duration::from_millis(100);
        net.run(until);
    }
    // what every live member had applied 2.5 s ago is in every snapshot point
    for &i in &live {
        let sp = net.nodes[i].snapshot_point().get(origin.key());
        assert!(sp >= 15, "node {i}'s snapshot point is {sp}");
    }
}
