//! Dissemination: when a member publishes its ops, re-issues its own record, relays the
//! records it adopted, and pulls what it lacks — the timing rules of the table in the
//! module doc of [`gossip`](super), as a state machine.
//!
//! It owns the ops waiting to be published, the status peers, and every gossip timer
//! (publish, report, status, anti-entropy, gap pull). The network map and the ops log stay
//! with the replica, which lends them for each event; what to send leaves through the
//! [`Outbox`]. Part of the sans-IO core: time comes in as a value, randomness from the
//! replica's seeded generator.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{AntiEntropyDigest, GossipConfig, Message, OpsBatch, PublishedOps, Records};
use crate::network_map::{MemberRecord, NetworkMap};
use crate::node_id::NodeId;
use crate::ops_log::{Op, StateMachine};
use crate::outbox::Outbox;
use crate::time::{jitter, Time};
use crate::version_vector::VersionVector;

/// The dissemination state of one member (see module doc).
#[derive(Debug)]
pub struct Dissemination<P> {
    /// Ops written here (or republished after a rejoin) that wait for the next batch.
    unpublished: Vec<Arc<Op<P>>>,
    /// When the next batch goes out (`None`: nothing waits).
    publish_at: Option<Time>,
    /// The own record changed since it was last re-issued (or a heartbeat is due).
    own_changed: bool,
    /// When the own record was last re-issued, by batch or by status.
    last_report: Time,
    /// When the last report rode on a published batch.
    last_batch_report: Option<Time>,
    /// Whether the own record is re-issued every `heartbeat_interval` (and rides on every
    /// published batch): off while the aggregation tells the members this one is alive.
    heartbeat: bool,
    /// No status report before this (`status_interval_for` the member count).
    status_allowed_at: Time,
    next_anti_entropy: Time,
    /// A pull for ops waiting on missing deps: when, from whom, and the backoff so far.
    gap_pull: Option<(Time, NodeId, Duration)>,
    peers: StatusPeers,
}

/// Who receives this node's status reports: `status_fanout` members picked at random
/// (`out`), plus members that report to this node (`inbound`), up to `max_status_peers`.
#[derive(Debug, Default)]
struct StatusPeers {
    out: BTreeSet<NodeId>,
    inbound: BTreeSet<NodeId>,
    /// The map's membership epoch `cache` was taken at.
    epoch: Option<u64>,
    /// The members in good standing but this node, at `epoch`.
    cache: Vec<NodeId>,
}

impl<P> Dissemination<P> {
    /// A member's dissemination at `now`; its first anti-entropy round is at
    /// `first_anti_entropy`.
    pub fn new(now: Time, first_anti_entropy: Time) -> Self {
        Self {
            unpublished: Vec::new(),
            publish_at: None,
            own_changed: false,
            last_report: now,
            last_batch_report: None,
            heartbeat: true,
            status_allowed_at: now,
            next_anti_entropy: first_anti_entropy,
            gap_pull: None,
            peers: StatusPeers::default(),
        }
    }

    // ---- ops to publish ---------------------------------------------------------------

    /// An op this node wrote: it goes out with the next batch, `op_batch_delay` from the
    /// first op waiting.
    pub fn queue_own(&mut self, op: Arc<Op<P>>, now: Time, gossip: &GossipConfig) {
        self.unpublished.push(op);
        if self.publish_at.is_none() {
            self.publish_at = Some(now + gossip.op_batch_delay);
        }
    }

    /// Ops to publish again at once (a rejoin's republishing).
    pub fn republish(&mut self, ops: Vec<Arc<Op<P>>>, now: Time) {
        self.unpublished.extend(ops);
        self.publish_at = Some(now);
    }

    /// Publishes what waits without the batching delay (a leave drains at once).
    pub fn publish_soon(&mut self, now: Time) {
        if !self.unpublished.is_empty() {
            self.publish_at = Some(now);
        }
    }

    /// Drops what waits to be published.
    pub fn drop_unpublished(&mut self) {
        self.unpublished.clear();
        self.publish_at = None;
    }

    /// Whether ops wait to be published.
    pub fn has_unpublished(&self) -> bool {
        !self.unpublished.is_empty()
    }

    // ---- the own record ---------------------------------------------------------------

    /// The own record changed (ops applied, a joiner registered): re-issue it.
    pub fn own_record_changed(&mut self) {
        self.own_changed = true;
    }

    /// Whether the own record waits to be re-issued.
    pub fn own_report_pending(&self) -> bool {
        self.own_changed
    }

    /// Whether this node makes itself heard by its own heartbeat (see the field).
    pub fn heartbeat(&self) -> bool {
        self.heartbeat
    }

    /// Sets whether this node makes itself heard by its own heartbeat (see the field).
    pub fn set_heartbeat(&mut self, on: bool) {
        self.heartbeat = on;
    }

    /// A suspicion of the current report arrived: re-issue the record at once.
    pub fn refute(&mut self, now: Time) {
        self.own_changed = true;
        self.status_allowed_at = self.status_allowed_at.min(now);
    }

    // ---- events -----------------------------------------------------------------------

    /// A status report arrived from `from`: a member that reports to this node gets its
    /// reports too, while there is room.
    pub fn on_status_from(&mut self, from: &NodeId, map: &NetworkMap, gossip: &GossipConfig) {
        let room = gossip.max_status_peers.saturating_sub(gossip.status_fanout);
        if map.is_counted(from) && !self.peers.out.contains(from) && self.peers.inbound.len() < room
        {
            self.peers.inbound.insert(from.clone());
        }
    }

    /// Ops from `from` wait for missing deps: pull them from it after `gap_pull_delay`,
    /// unless a pull is already planned.
    pub fn on_ops_waiting(&mut self, now: Time, from: &NodeId, gossip: &GossipConfig) {
        if self.gap_pull.is_none() {
            let delay = gossip.gap_pull_delay;
            self.gap_pull = Some((now + delay, from.clone(), delay));
        }
    }

    /// A member's timers, first part: publish the batch that is due, note a heartbeat that
    /// is due, and send the status report that is due.
    pub fn on_timeout_reports<S: StateMachine<Op = P>>(
        &mut self,
        now: Time,
        mut ctx: Context<'_, S>,
        is_member: bool,
    ) {
        if self.publish_at.is_some_and(|t| t <= now) {
            self.publish_ops(now, &mut ctx, is_member);
        }
        if self.heartbeat && now >= self.last_report + ctx.gossip.heartbeat_interval {
            self.own_changed = true;
        }
        if self
            .status_due(ctx.map, ctx.gossip)
            .is_some_and(|t| t <= now)
        {
            self.flush_status(now, &mut ctx);
        }
    }

    /// A member's timers, second part: the anti-entropy round that is due, and the gap
    /// pull that is due (`buffered`: ops still wait for deps).
    pub fn on_timeout_pulls<S: StateMachine<Op = P>>(
        &mut self,
        now: Time,
        ctx: Context<'_, S>,
        buffered: bool,
    ) {
        let Context {
            gossip,
            map,
            applied,
            view_epoch,
            rng,
            outbox,
        } = ctx;
        if self.next_anti_entropy <= now {
            self.next_anti_entropy = now + jitter(rng, gossip.anti_entropy_interval);
            if let Some(peer) = self.random_peer(map, gossip, rng) {
                // while no heartbeats flood, records rarely change: their fingerprint
                // stands for them, and only a mismatch costs the whole lists
                let compact = !self.heartbeat;
                outbox.send(peer, digest(applied, map, view_epoch, true, compact));
            }
        }
        if let Some((at, peer, backoff)) = self.gap_pull.clone() {
            if at <= now {
                self.gap_pull = None;
                if buffered {
                    outbox.send(peer, digest(applied, map, view_epoch, false, false));
                    let backoff = (backoff * 2).min(gossip.anti_entropy_interval);
                    if let Some(next) = self.random_peer(map, gossip, rng) {
                        self.gap_pull = Some((now + backoff, next, backoff));
                    }
                }
            }
        }
    }

    /// A node that left: its last records go out when status is due.
    pub fn on_timeout_left<S: StateMachine<Op = P>>(&mut self, now: Time, mut ctx: Context<'_, S>) {
        if self
            .status_due(ctx.map, ctx.gossip)
            .is_some_and(|t| t <= now)
        {
            self.flush_status(now, &mut ctx);
        }
    }

    /// This node's `Left` record was just issued (in `map`): send it at once.
    pub fn announce_left<S: StateMachine<Op = P>>(&mut self, now: Time, mut ctx: Context<'_, S>) {
        self.own_changed = false;
        self.status_allowed_at = now;
        self.flush_status(now, &mut ctx);
    }

    /// The node lost its membership and asks to join again: nothing of the old one goes
    /// out any more.
    pub fn reset_for_rejoin(&mut self) {
        self.drop_unpublished();
        self.gap_pull = None;
        self.own_changed = false;
    }

    /// A grant was installed: report at once, and start anti-entropy afresh.
    pub fn on_joined(&mut self, now: Time, gossip: &GossipConfig, rng: &mut ChaCha8Rng) {
        self.own_changed = true;
        self.last_report = now;
        self.next_anti_entropy = now + jitter(rng, gossip.anti_entropy_interval);
    }

    /// A restart: the status peers are chosen again, and status may go out at once.
    pub fn restart(&mut self, now: Time) {
        self.peers = StatusPeers::default();
        self.status_allowed_at = now;
    }

    // ---- deadlines --------------------------------------------------------------------

    /// A member's next dissemination deadline.
    pub fn next_deadline(&self, map: &NetworkMap, gossip: &GossipConfig) -> Option<Time> {
        [
            self.publish_at,
            self.status_due(map, gossip),
            // once the own record is due, `status_due` covers it
            (self.heartbeat && !self.own_changed)
                .then(|| self.last_report + gossip.heartbeat_interval),
            Some(self.next_anti_entropy),
            self.gap_pull.as_ref().map(|g| g.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the next status report is due: the own record's, or relayed records'.
    pub fn status_due(&self, map: &NetworkMap, gossip: &GossipConfig) -> Option<Time> {
        let relay = map.has_dirty().then_some(self.status_allowed_at);
        match (self.own_report_at(gossip), relay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- the rules --------------------------------------------------------------------

    fn publish_ops<S: StateMachine<Op = P>>(
        &mut self,
        now: Time,
        ctx: &mut Context<'_, S>,
        is_member: bool,
    ) {
        let take = self.unpublished.len().min(ctx.gossip.max_batch_ops);
        let batch: Vec<_> = self.unpublished.drain(..take).collect();
        self.publish_at = if self.unpublished.is_empty() {
            None
        } else {
            Some(now)
        };
        if !batch.is_empty() {
            // a batch carries the own record as a heartbeat, or when it changed
            let report = (is_member && (self.heartbeat || self.own_changed))
                .then(|| self.report_with_batch(now, ctx.map, ctx.applied));
            ctx.outbox.publish(Message::Ops(PublishedOps {
                ops: OpsBatch(batch),
                report,
            }));
        }
    }

    /// Re-issues this node's record to ride on the batch it is publishing. Every member
    /// receives the batch, so the record is not sent again in status.
    fn report_with_batch(
        &mut self,
        now: Time,
        map: &mut NetworkMap,
        applied: &VersionVector,
    ) -> Arc<MemberRecord> {
        map.report_own(applied.clone(), now, |_| {});
        let me = map.own().record.id.clone();
        map.forget_dirty(&me);
        self.own_changed = false;
        self.last_report = now;
        self.last_batch_report = Some(now);
        map.own().record.clone()
    }

    /// When the own record is to go out in a status report: once it changed and status
    /// may be sent, but not while a batch is waiting to be published (the batch carries
    /// it, sooner and to everyone), and, after a batch carried the last report, not before
    /// `batch_report_hold` has passed without another batch (a writer's reports ride on
    /// its batches).
    fn own_report_at(&self, gossip: &GossipConfig) -> Option<Time> {
        if !self.own_changed || self.publish_at.is_some() {
            return None;
        }
        let held = self
            .last_batch_report
            .filter(|at| *at >= self.last_report)
            .map(|at| at + gossip.batch_report_hold);
        Some(held.map_or(self.status_allowed_at, |h| h.max(self.status_allowed_at)))
    }

    fn flush_status<S: StateMachine<Op = P>>(&mut self, now: Time, ctx: &mut Context<'_, S>) {
        let Context {
            gossip,
            map,
            applied,
            rng,
            outbox,
            ..
        } = ctx;
        let (gossip, applied) = (*gossip, *applied);
        if self.own_report_at(gossip).is_some_and(|at| at <= now) {
            map.report_own(applied.clone(), now, |_| {});
            self.own_changed = false;
            self.last_report = now;
        }
        let records = map.take_dirty();
        self.status_allowed_at = now + gossip.status_interval_for(map.counted());
        if records.is_empty() {
            return;
        }
        let message = Arc::new(Message::Status(Records(records)));
        for peer in self.status_peers(map, gossip, rng) {
            outbox.send_shared(peer, message.clone());
        }
    }

    fn refresh_peers(&mut self, map: &NetworkMap, gossip: &GossipConfig, rng: &mut ChaCha8Rng) {
        let epoch = map.membership_epoch();
        let peers = &mut self.peers;
        if peers.epoch == Some(epoch) {
            return;
        }
        peers.epoch = Some(epoch);
        peers.cache = map.counted_peers();
        peers.out.retain(|p| map.is_counted(p));
        peers.inbound.retain(|p| map.is_counted(p));
        let want = gossip.status_fanout.min(peers.cache.len());
        while peers.out.len() < want {
            let pick = peers.cache[rng.random_range(0..peers.cache.len())].clone();
            peers.out.insert(pick);
        }
    }

    fn status_peers(
        &mut self,
        map: &NetworkMap,
        gossip: &GossipConfig,
        rng: &mut ChaCha8Rng,
    ) -> Vec<NodeId> {
        self.refresh_peers(map, gossip, rng);
        self.peers.out.union(&self.peers.inbound).cloned().collect()
    }

    fn random_peer(
        &mut self,
        map: &NetworkMap,
        gossip: &GossipConfig,
        rng: &mut ChaCha8Rng,
    ) -> Option<NodeId> {
        self.refresh_peers(map, gossip, rng);
        let cache = &self.peers.cache;
        if cache.is_empty() {
            return None;
        }
        Some(cache[rng.random_range(0..cache.len())].clone())
    }
}

/// What dissemination borrows from the replica for one event.
pub struct Context<'a, S: StateMachine> {
    pub gossip: &'a GossipConfig,
    pub map: &'a mut NetworkMap,
    /// This node's applied vector.
    pub applied: &'a VersionVector,
    /// The epoch of this node's installed view (sent in digests).
    pub view_epoch: u64,
    pub rng: &'a mut ChaCha8Rng,
    pub outbox: &'a mut Outbox<S>,
}

/// An anti-entropy digest of this node: its applied vector and the versions of the records
/// it holds.
pub fn digest<S: StateMachine>(
    applied: &VersionVector,
    map: &NetworkMap,
    view_epoch: u64,
    initiator: bool,
    compact: bool,
) -> Message<S> {
    let (members, fingerprint) = if compact {
        (Vec::new(), Some(map.fingerprint()))
    } else {
        (map.versions(), None)
    };
    Message::Digest(AntiEntropyDigest {
        applied: applied.clone(),
        members,
        fingerprint,
        initiator,
        view_epoch,
    })
}
