//! A replica: the sans-IO composition of the ops log, the network map, the join protocol and
//! the gossip rules.
//!
//! Drivers feed it events — [`Replica::handle_message`], [`Replica::handle_timeout`],
//! [`Replica::write`] — each with the current time, then drain [`Replica::poll_action`]:
//! send a message to a peer, publish one on the topic, or schedule the next wake-up (a new
//! `ScheduleWake` replaces the previous one; at that time call `handle_timeout`). The
//! replica reads no clock and does no I/O; its randomness comes from a seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::gossip::{
    AntiEntropyDigest, GossipConfig, Message, OpsBatch, PublishedOps, Records, Repair,
};
use crate::join_protocol::{
    self, JoinError, JoinGrant, JoinProgress, JoinRequest, JoinResponse, Joiner,
};
use crate::network_map::{MemberRecord, MemberState, MergeOutcome, NetworkMap};
use crate::node_id::NodeId;
use crate::ops_log::{
    Digest, Op, OpAuthenticator, OpError, OpsLog, OwnOps, Received, SignatureError, StateMachine,
    WriterRefused,
};
use crate::time::{jitter, Time};
use crate::version_vector::VersionVector;

/// What the replica asks its driver to do.
#[derive(Debug, Clone)]
pub enum Action<S: StateMachine> {
    /// Send directly to one peer (request–response in the libp2p node).
    Send {
        to: NodeId,
        message: Arc<Message<S>>,
    },
    /// Publish on the network's topic (gossipsub in the libp2p node).
    Publish { message: Arc<Message<S>> },
    /// Call `handle_timeout` at `at`; replaces any earlier request.
    ScheduleWake { at: Time },
}

/// Settings of a replica.
#[derive(Clone, Debug, Default)]
pub struct ReplicaConfig {
    pub gossip: GossipConfig,
    /// This node's listen addresses, carried in its record.
    pub addrs: Vec<String>,
    /// Keep every applied op for [`Replica::drain_applied_ops`] (simulator, observers).
    pub journal_applied: bool,
    /// Signs this node's ops and checks every received op's signature (the node plugs in
    /// its libp2p key). Without one, ops are neither signed nor checked (the simulator).
    pub auth: Option<Arc<dyn OpAuthenticator>>,
    /// A bug planted by the simulator to show that its oracle catches it; `None` in a node.
    pub planted: Option<PlantedBug>,
    /// The only origins whose ops are accepted, this node's own writes included; `None`:
    /// every member may write. Every op must also come from a node that is, or was, a
    /// member of the network (see [`Replica::handle_message`]).
    pub writers: Option<Arc<BTreeSet<NodeId>>>,
}

/// Counters of what the replica has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub ops_created: u64,
    pub ops_applied: u64,
    pub ops_duplicate: u64,
    pub ops_invalid: u64,
    /// Ops refused by the causal buffer's limits (too far ahead, or the buffer full).
    pub ops_refused: u64,
    /// Ops rejected for carrying no signature (with an authenticator).
    pub ops_unsigned: u64,
    /// Ops rejected because their signature is not their origin's over their content:
    /// forged or mutated.
    pub ops_bad_signature: u64,
    /// Ops rejected because their origin is not, and never was, a member as this node
    /// knows it (they come back through anti-entropy once it learns of the member).
    pub ops_not_member: u64,
    /// Ops rejected because their origin is not on the writers list.
    pub ops_not_writer: u64,
    pub records_adopted: u64,
    pub records_pending: u64,
    pub records_outdated: u64,
    pub stale_notices: u64,
    pub join_refusals: u64,
    pub joins_sponsored: u64,
    /// Suspicions this node raised (failure detection).
    pub suspicions_raised: u64,
    /// Evictions this node issued after an unrefuted suspicion.
    pub evictions_issued: u64,
    /// Suspicions of this node that it refuted with a new report.
    pub refutations: u64,
    /// Times this node found itself evicted or stale and rejoined through the handshake.
    pub rejoins: u64,
    /// Ops republished after a rejoin because the new sponsor did not have them (I5).
    pub ops_republished: u64,
    /// State transfers given up (timed out, or the driver could not fetch the state).
    pub state_transfers_abandoned: u64,
    /// Keepalive reports sent while a grant's state was being fetched.
    pub keepalives_sent: u64,
    /// Join requests this node refused to sponsor because it was cut off from most of the
    /// network, or had joined too recently to know who is alive.
    pub sponsorships_declined: u64,
    /// Graceful leaves that gave up because this node's own ops did not become stable in
    /// time (the node stayed a member).
    pub leaves_failed: u64,
    /// Times the network showed an op of this node above the highest its data dir stored
    /// (the data dir was rolled back; see [`WriteRefused::DataDirBehind`]).
    pub own_seq_rollbacks: u64,
}

/// Why a local write (or a leave) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    #[error("this node has not joined the network yet")]
    Joining,
    #[error("this node is leaving the network")]
    Leaving,
    #[error("this node has left the network")]
    Left,
    /// A writers list is set and this node is not on it.
    #[error("this node is not on the writers list, so the network would refuse its ops")]
    NotWriter,
    /// Some of this node's own ops (up to `highest`) are not applied here: after a rejoin
    /// through nodes that lack them, or a restore from an old data dir. The next op would
    /// depend on them, and reusing their seqs would give one id to two ops.
    #[error(
        "this node's own ops {applied}..{highest} are not back yet; it writes again once they are"
    )]
    OwnOpsMissing { applied: u64, highest: u64 },
    /// The network holds an op of this node that its data dir never stored: the data dir
    /// is older than the node's last state (restored from a backup). Writing on could give
    /// one id to two ops, so the node writes no more under this identity.
    #[error("this node's data dir stored its ops up to seq {stored}, but the network has its op {seen}: the data dir is older than this node's last state; restart it with --restored-backup to rejoin under a new identity")]
    DataDirBehind { stored: u64, seen: u64 },
}

/// Why a graceful leave gave up (the node stays a member and keeps its writes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leave timed out: {unstable} of the ops this node held when it began to leave ({unstable_own} of them its own) are not yet under its snapshot point, so some member may lack them; it stays a member")]
pub struct LeaveFailed {
    /// Ops held at the start of the leave that are not stable yet.
    pub unstable: u64,
    /// How many of them are this node's own.
    pub unstable_own: u64,
}

/// Where a node stood when its checkpoint was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DurablePhase {
    /// Still joining, through these bootstrap peers.
    Joining {
        sponsors: Vec<NodeId>,
    },
    Member,
    Left,
}

/// What a node keeps on disk to come back after a crash or a stop (see
/// [`Replica::resume`]): everything but the op suffix above the stable cut, which the driver
/// stores op by op as the replica applies them ([`ReplicaConfig::journal_applied`]).
///
/// `T` is the stable state: `&S` when taken ([`Replica::checkpoint`]), `S` when read back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint<T> {
    pub id: NodeId,
    pub incarnation: u64,
    pub phase: DurablePhase,
    pub stable_state: T,
    pub stable_cut: VersionVector,
    pub lamport: u64,
    /// Every record of the network map, this node's own included.
    pub records: Vec<Arc<MemberRecord>>,
    /// The highest seq this node gave one of its ops (its next op gets the one after).
    #[serde(default)]
    pub own_seq: u64,
    /// The lowest seq of this node's ops that storage keeps, stable or not (its own-op
    /// journal); ops of other origins are kept above the stable cut only.
    #[serde(default)]
    pub own_kept_from: u64,
}

/// What a data dir holds: the checkpoint, and the ops stored beside it (see
/// [`Replica::durable_image`]).
pub type DurableImage<S> = (Checkpoint<S>, Vec<Arc<Op<<S as StateMachine>::Op>>>);

/// Why a checkpoint could not be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("the checkpoint has no record of its own node")]
    NoOwnRecord,
    #[error("the stored ops do not apply on the stored stable state: {0}")]
    Ops(#[from] crate::ops_log::InstallError),
}

#[derive(Debug, Clone)]
enum Phase {
    /// Asking sponsors for a grant (see [`Joiner`]).
    Joining(Joiner),
    Member {
        /// Set by `leave`: no more writes; announce `Left` once this node's own ops are
        /// inside its snapshot point (so every member has them), or at this deadline.
        leaving_by: Option<Time>,
    },
    /// Announced `Left`; still answers digests so its last record spreads.
    Left,
}

/// One tidemark replica (see module doc).
#[derive(Debug)]
pub struct Replica<S: StateMachine> {
    id: NodeId,
    incarnation: u64,
    config: ReplicaConfig,
    phase: Phase,
    log: OpsLog<S>,
    /// This node's own-op counter and journal (durable; survives grants and rejoins).
    own: OwnOps<S::Op>,
    map: NetworkMap,
    rng: ChaCha8Rng,
    outbox: VecDeque<Action<S>>,
    journal: Vec<Arc<Op<S::Op>>>,
    unpublished: Vec<Arc<Op<S::Op>>>,
    publish_at: Option<Time>,
    own_changed: bool,
    last_report: Time,
    /// When the last report rode on a published batch.
    last_batch_report: Option<Time>,
    status_allowed_at: Time,
    next_anti_entropy: Time,
    gap_pull: Option<(Time, NodeId, Duration)>,
    out_peers: BTreeSet<NodeId>,
    in_peers: BTreeSet<NodeId>,
    peers_epoch: Option<u64>,
    peers_cache: Vec<NodeId>,
    wake_announced: Option<Time>,
    next_failure_check: Time,
    /// Whether the last failure check heard from at most half of the members.
    isolated: bool,
    /// When this node's current membership was installed from a grant (`None` for a
    /// founder): it sponsors no one for `suspect_after` after that.
    joined_at: Option<Time>,
    /// A graceful leave that gave up since the last [`Replica::take_leave_failure`].
    leave_failure: Option<LeaveFailed>,
    /// The snapshot point [`PlantedBug::CountsOneMemberTooFew`] computes instead.
    planted_sp: Option<VersionVector>,
    /// While leaving: every op this node held when the leave began. It leaves once all of
    /// them are under its snapshot point, so that leaving drops no op only it held.
    leave_cut: VersionVector,
    /// Set when the network showed an op of this node its storage never had: (highest seq
    /// stored, highest seen). No more writes under this identity.
    rolled_back: Option<(u64, u64)>,
    /// Applied ops of the previous incarnation, kept while rejoining: after the new grant
    /// is installed, the ones it lacks are applied and republished (I5).
    retired_ops: Vec<Arc<Op<S::Op>>>,
    /// The previous incarnation's records, merged into the new map after a rejoin so that
    /// what it knew (evictions above all) is not forgotten.
    retired_records: Vec<Arc<MemberRecord>>,
    /// When each evicted node that kept talking was last sent its eviction.
    told_evicted: BTreeMap<NodeId, Time>,
    /// Evictions adopted by the map, kept for observers when `journal_applied` is on.
    eviction_journal: Vec<(NodeId, u64)>,
    /// A grant whose state is being fetched by the driver (joining only), and its sponsor.
    awaited_grant: Option<(NodeId, JoinGrant<S>)>,
    /// While a grant's state is fetched: when the next keepalive report is due, and the
    /// `report_seq` of the last one sent (see [`Replica::send_keepalive`]).
    next_keepalive: Time,
    keepalive_seq: u64,
    /// How many times a grant replaced this replica's ops log. Within one generation each
    /// stable state is the one before with the newly stable ops folded in, which lets a
    /// store keep the stable state incrementally.
    log_generation: u64,
    stats: ReplicaStats,
}

impl<S: StateMachine> Replica<S> {
    #[allow(clippy::too_many_arguments)] // private: every constructor's parts, once
    fn with_parts(
        id: NodeId,
        incarnation: u64,
        config: ReplicaConfig,
        phase: Phase,
        map: NetworkMap,
        log: OpsLog<S>,
        own: OwnOps<S::Op>,
        seed: u64,
        now: Time,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let first_ae = now + jitter(&mut rng, config.gossip.anti_entropy_interval);
        let first_failure_check = now + jitter(&mut rng, config.gossip.failure_check_interval);
        let mut log = log;
        log.set_buffer_limits(config.gossip.causal_buffer);
        log.plant(config.planted);
        let mut map = map;
        map.plant(config.planted);
        let mut replica = Self {
            id,
            incarnation,
            config,
            phase,
            log,
            own,
            map,
            rng,
            outbox: VecDeque::new(),
            journal: Vec::new(),
            unpublished: Vec::new(),
            publish_at: None,
            own_changed: false,
            last_report: now,
            last_batch_report: None,
            status_allowed_at: now,
            next_anti_entropy: first_ae,
            gap_pull: None,
            out_peers: BTreeSet::new(),
            in_peers: BTreeSet::new(),
            peers_epoch: None,
            peers_cache: Vec::new(),
            wake_announced: None,
            next_failure_check: first_failure_check,
            isolated: false,
            joined_at: None,
            leave_failure: None,
            leave_cut: VersionVector::new(),
            planted_sp: None,
            rolled_back: None,
            retired_ops: Vec::new(),
            retired_records: Vec::new(),
            told_evicted: BTreeMap::new(),
            eviction_journal: Vec::new(),
            awaited_grant: None,
            next_keepalive: now,
            keepalive_seq: 0,
            log_generation: 0,
            stats: ReplicaStats::default(),
        };
        replica.finish(now);
        replica
    }

    /// A member of a network founded with the given members (all at the empty state).
    pub fn genesis(
        id: NodeId,
        members: &[NodeId],
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        let records: Vec<_> = members
            .iter()
            .map(|m| Arc::new(MemberRecord::founder(m.clone())))
            .collect();
        Self::genesis_with_records(id, &records, config, seed, now)
    }

    /// Like [`Replica::genesis`], sharing the founding records (`MemberRecord::founder` of
    /// every member) between replicas, as a simulator of many nodes does.
    pub fn genesis_with_records(
        id: NodeId,
        founders: &[Arc<MemberRecord>],
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        Self::founded(id, founders, OpsLog::new(), config, seed, now)
    }

    /// The founder of a new network that starts from `state` at `cut` (a snapshot of a
    /// network that was lost): its applied vector and snapshot point start at `cut`, and
    /// its own writes carry Lamport times above `lamport`.
    pub fn restored(
        id: NodeId,
        state: S,
        cut: VersionVector,
        lamport: u64,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        let log = OpsLog::from_stable(state, cut, lamport);
        Self::founded(id, &[], log, config, seed, now)
    }

    /// A founding member starting from `log`, with the other founders' records.
    fn founded(
        id: NodeId,
        founders: &[Arc<MemberRecord>],
        log: OpsLog<S>,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        let mut own = MemberRecord::founder(id.clone());
        own.addrs = config.addrs.clone();
        own.applied = log.applied().clone();
        let mut map = NetworkMap::new(own, now);
        for record in founders.iter().filter(|r| r.id != id) {
            map.merge(record.clone(), now);
        }
        map.take_dirty();
        let own_ops = OwnOps::new(log.applied().get(&id));
        Self::with_parts(
            id,
            1,
            config,
            Phase::Member { leaving_by: None },
            map,
            log,
            own_ops,
            seed,
            now,
        )
    }

    /// A node that joins through `sponsor`; it sends its join request at once.
    pub fn joiner(
        id: NodeId,
        incarnation: u64,
        sponsor: NodeId,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        Self::joiner_via(id, incarnation, vec![sponsor], config, seed, now)
    }

    /// A node that joins through the first of `sponsors` that does not refuse it.
    ///
    /// # Panics
    /// If `sponsors` is empty.
    pub fn joiner_via(
        id: NodeId,
        incarnation: u64,
        sponsors: Vec<NodeId>,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        let placeholder = MemberRecord {
            incarnation,
            ..MemberRecord::founder(id.clone())
        };
        let map = NetworkMap::new(placeholder, now);
        let phase = Phase::Joining(Joiner::new(sponsors, now));
        let mut replica = Self::with_parts(
            id,
            incarnation,
            config,
            phase,
            map,
            OpsLog::new(),
            OwnOps::new(0),
            seed,
            now,
        );
        replica.ask_sponsor(now);
        replica.finish(now);
        replica
    }

    /// The joiner's next request is due: asks its current sponsor (with a new incarnation
    /// if the joiner says so).
    fn ask_sponsor(&mut self, now: Time) {
        let Phase::Joining(joiner) = &mut self.phase else {
            return;
        };
        let map = &self.map;
        let me = &self.id;
        let ask = joiner.ask(now, &self.config.gossip, &mut self.rng, || {
            known_nodes(map, me)
        });
        if ask.new_incarnation {
            // the silent sponsor may have registered the old one: a registration that
            // never reports is evicted like any silent member
            self.incarnation += 1;
        }
        self.send_join_request(ask.sponsor);
    }

    fn send_join_request(&mut self, sponsor: NodeId) {
        let request = JoinRequest {
            joiner: self.id.clone(),
            incarnation: self.incarnation,
            addrs: self.config.addrs.clone(),
        };
        self.send(sponsor, Message::JoinRequest(request));
    }

    // ---- queries -------------------------------------------------------------------

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    pub fn id(&self) -> &NodeId {
        &self.id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether the node is a member in good standing (joined, not yet announced `Left`).
    pub fn is_member(&self) -> bool {
        matches!(self.phase, Phase::Member { .. })
    }

    /// Whether `leave` was called and `Left` is not yet announced.
    pub fn is_leaving(&self) -> bool {
        matches!(
            self.phase,
            Phase::Member {
                leaving_by: Some(_)
            }
        )
    }

    /// Whether the node has announced that it left.
    pub fn has_left(&self) -> bool {
        matches!(self.phase, Phase::Left)
    }

    /// Whether the last failure check heard from at most half of the members in good
    /// standing: this node is then probably the one cut off, so it evicts no one, and it
    /// cannot vouch that it is still a member itself.
    pub fn is_isolated(&self) -> bool {
        self.isolated
    }

    pub fn applied(&self) -> &VersionVector {
        self.log.applied()
    }

    /// The snapshot point as the network map decides it (while joining: the empty cut).
    pub fn snapshot_point(&self) -> &VersionVector {
        if self.is_member() {
            self.planted_sp
                .as_ref()
                .unwrap_or(self.map.snapshot_point())
        } else {
            self.log.stable_cut()
        }
    }

    /// The cut folded into the stable state (equal to the snapshot point after every event).
    pub fn stable_cut(&self) -> &VersionVector {
        self.log.stable_cut()
    }

    pub fn applied_state(&self) -> &S {
        self.log.applied_state()
    }

    pub fn stable_state(&self) -> &S {
        self.log.stable_state()
    }

    pub fn stable_digest(&mut self) -> Digest {
        self.log.stable_digest()
    }

    pub fn applied_digest(&mut self) -> Digest {
        self.log.applied_digest()
    }

    pub fn network_map(&self) -> &NetworkMap {
        &self.map
    }

    pub fn ops_log(&self) -> &OpsLog<S> {
        &self.log
    }

    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// How the current join is going (while joining).
    pub fn join_progress(&self) -> Option<&JoinProgress> {
        match &self.phase {
            Phase::Joining(joiner) => Some(joiner.progress()),
            _ => None,
        }
    }

    /// While joining: the possible sponsors it asks in turn (the bootstrap list, widened).
    pub fn join_sponsors(&self) -> Option<&[NodeId]> {
        match &self.phase {
            Phase::Joining(joiner) => Some(joiner.sponsors()),
            _ => None,
        }
    }

    /// While joining: adds possible sponsors, such as the peers a driver found at the
    /// addresses of nodes this one knows (a node that came back under a new identity keeps
    /// its address). Does nothing once joined.
    pub fn add_bootstrap_peers(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        if let Phase::Joining(joiner) = &mut self.phase {
            joiner.add_sponsors(ids, &self.id);
        }
    }

    /// The highest seq this node gave one of its ops (durable: see [`Checkpoint::own_seq`]).
    pub fn own_seq(&self) -> u64 {
        self.own.highest()
    }

    /// This node's own-op journal: its ops kept past the stable cut, for republishing.
    pub fn own_ops(&self) -> &OwnOps<S::Op> {
        &self.own
    }

    /// Why the last graceful leave gave up, if one did since the last call: the node
    /// stayed a member because the ops it held were not stable everywhere by
    /// `leave_drain_timeout`, or it learned it was evicted while leaving (it then rejoins
    /// to hand them over).
    pub fn take_leave_failure(&mut self) -> Option<LeaveFailed> {
        self.leave_failure.take()
    }

    /// Ops applied since the last call (only with `journal_applied`).
    pub fn drain_applied_ops(&mut self) -> Vec<Arc<Op<S::Op>>> {
        std::mem::take(&mut self.journal)
    }

    /// (member, incarnation) of every eviction this node's map adopted since the last
    /// call (only with `journal_applied`).
    pub fn drain_evictions(&mut self) -> Vec<(NodeId, u64)> {
        std::mem::take(&mut self.eviction_journal)
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action<S>> {
        self.outbox.pop_front()
    }

    // ---- events --------------------------------------------------------------------

    /// A local write: creates the next op of this node, applies it, and queues it for
    /// publishing.
    pub fn write(&mut self, now: Time, payload: S::Op) -> Result<Arc<Op<S::Op>>, WriteRefused> {
        match self.phase {
            Phase::Joining(_) => return Err(WriteRefused::Joining),
            Phase::Member {
                leaving_by: Some(_),
            } => return Err(WriteRefused::Leaving),
            Phase::Left => return Err(WriteRefused::Left),
            Phase::Member { leaving_by: None } => {}
        }
        if !self.may_write(&self.id) {
            return Err(WriteRefused::NotWriter);
        }
        let reuse_seqs = self.config.planted == Some(PlantedBug::SeqReusedAfterRejoin);
        if let Some((stored, seen)) = self.rolled_back.filter(|_| !reuse_seqs) {
            return Err(WriteRefused::DataDirBehind { stored, seen });
        }
        let applied = self.log.applied().get(&self.id);
        if applied < self.own.highest() && !reuse_seqs {
            return Err(WriteRefused::OwnOpsMissing {
                applied,
                highest: self.own.highest(),
            });
        }
        let op = self
            .log
            .create_signed(&self.id, payload, self.config.auth.as_deref());
        debug_assert!(reuse_seqs || op.seq == self.own.highest() + 1);
        self.own.keep(op.clone());
        self.stats.ops_created += 1;
        self.after_apply();
        self.unpublished.push(op.clone());
        if self.publish_at.is_none() {
            self.publish_at = Some(now + self.config.gossip.op_batch_delay);
        }
        self.finish(now);
        Ok(op)
    }

    /// Graceful leave (SPEC §5): stop writing and registering joiners, publish what is
    /// pending, wait until every op this node holds — its own above all — is inside its
    /// snapshot point, so every member has it, and every joiner it registered has reported
    /// by itself, then announce a `Left` record; every member drops this node from its
    /// snapshot point as soon as that record arrives. If its ops are not stable within
    /// `leave_drain_timeout`, the leave gives up ([`Replica::take_leave_failure`]) and the
    /// node stays a member: leaving then could lose writes.
    pub fn leave(&mut self, now: Time) -> Result<(), WriteRefused> {
        match self.phase {
            Phase::Joining(_) => return Err(WriteRefused::Joining),
            Phase::Left => return Err(WriteRefused::Left),
            Phase::Member {
                leaving_by: Some(_),
            } => return Ok(()),
            Phase::Member { leaving_by: None } => {}
        }
        self.phase = Phase::Member {
            leaving_by: Some(now + self.config.gossip.leave_drain_timeout),
        };
        self.leave_cut = self.log.applied().clone();
        self.leave_cut.raise(&self.id, self.own.highest());
        if self.config.planted == Some(PlantedBug::LeaveWithoutHandover) {
            self.unpublished.clear();
            self.publish_at = None;
            self.announce_left(now);
            self.finish(now);
            return Ok(());
        }
        if !self.unpublished.is_empty() {
            self.publish_at = Some(now);
        }
        self.finish(now);
        Ok(())
    }

    /// A message from `from`.
    pub fn handle_message(&mut self, now: Time, from: &NodeId, message: &Message<S>) {
        if self.is_member() {
            self.map.heard_from(from, now);
            self.tell_if_evicted(now, from, message);
        }
        match (&self.phase, message) {
            (Phase::Joining(_), Message::JoinResponse(response)) => {
                self.on_join_response(now, from, response)
            }
            (Phase::Joining(_), Message::JoinRequest(_)) => {
                self.refuse_join(from, "this node has not joined the network yet")
            }
            (Phase::Joining(_), _) => {}
            (Phase::Left, Message::JoinRequest(request)) => {
                self.on_join_request(now, from, request)
            }
            (Phase::Left, Message::Digest(digest)) => self.on_digest(from, digest),
            (Phase::Left, _) => {}
            (Phase::Member { .. }, Message::Ops(published)) => {
                let publisher = published.report.as_ref().map(|r| &r.id);
                self.on_ops(now, from, &published.ops, publisher);
                if let Some(report) = &published.report {
                    self.on_published_report(now, report);
                }
            }
            (Phase::Member { .. }, Message::Status(records)) => {
                let gossip = &self.config.gossip;
                let room = gossip.max_status_peers.saturating_sub(gossip.status_fanout);
                if self.map.is_counted(from)
                    && !self.out_peers.contains(from)
                    && self.in_peers.len() < room
                {
                    self.in_peers.insert(from.clone());
                }
                self.on_records(now, &records.0);
            }
            (Phase::Member { .. }, Message::Digest(digest)) => self.on_digest(from, digest),
            (Phase::Member { .. }, Message::Repair(repair)) => {
                self.on_records(now, &repair.records.0);
                self.on_ops(now, from, &repair.ops, None);
                if repair.more {
                    let digest = self.digest(false);
                    self.send(from.clone(), digest);
                }
            }
            (Phase::Member { .. }, Message::Stale { snapshot_point }) => {
                // A digest that was overtaken by newer ops is not staleness: only act when
                // this node really is below the sender's snapshot point. Then some member
                // decided past this node, which it can only do once this node is out of
                // good standing (I3): it rejoins.
                if !snapshot_point.le(self.log.applied()) {
                    self.stats.stale_notices += 1;
                    self.lose_membership(now);
                }
            }
            (Phase::Member { .. }, Message::JoinRequest(request)) => {
                self.on_join_request(now, from, request)
            }
            (Phase::Member { .. }, Message::JoinResponse(_)) => {}
        }
        self.finish(now);
    }

    fn refuse_join(&mut self, to: &NodeId, reason: &str) {
        let suggestions = self.suggest_sponsors();
        self.send(
            to.clone(),
            Message::JoinResponse(Box::new(JoinResponse::Refused {
                reason: reason.into(),
                suggestions,
                member_incarnation: None,
            })),
        );
    }

    /// Up to three random members in good standing (as far as this node knows), for a
    /// joiner it turns away.
    fn suggest_sponsors(&mut self) -> Vec<NodeId> {
        let mut peers = self.map.counted_peers();
        peers.retain(|p| p != &self.id);
        let mut picked = Vec::new();
        while picked.len() < 3 && !peers.is_empty() {
            picked.push(peers.swap_remove(self.rng.random_range(0..peers.len())));
        }
        picked
    }

    /// The wake-up time requested by the last `ScheduleWake` has come (or passed).
    pub fn handle_timeout(&mut self, now: Time) {
        self.wake_announced = None;
        if let Phase::Joining(joiner) = &mut self.phase {
            let due = joiner.retry_at() <= now;
            if due && self.awaited_grant.take().is_some() {
                // the offered state did not arrive in time: ask the sponsor again
                self.stats.state_transfers_abandoned += 1;
                joiner.retry_now(now);
            }
            if !due && self.awaited_grant.is_some() && self.next_keepalive <= now {
                self.send_keepalive(now);
                self.finish(now);
                return;
            }
            if due {
                self.ask_sponsor(now);
            }
            self.finish(now);
            return;
        }
        if self.has_left() {
            if self.status_due().is_some_and(|t| t <= now) {
                self.flush_status(now);
            }
            self.finish(now);
            return;
        }
        if self.publish_at.is_some_and(|t| t <= now) {
            self.publish_ops(now);
        }
        if now >= self.last_report + self.config.gossip.heartbeat_interval {
            self.own_changed = true;
        }
        if self.status_due().is_some_and(|t| t <= now) {
            self.flush_status(now);
        }
        if self.next_failure_check <= now {
            self.next_failure_check =
                now + jitter(&mut self.rng, self.config.gossip.failure_check_interval);
            self.detect_failures(now);
        }
        if self.next_anti_entropy <= now {
            self.next_anti_entropy =
                now + jitter(&mut self.rng, self.config.gossip.anti_entropy_interval);
            if let Some(peer) = self.random_peer() {
                let digest = self.digest(true);
                self.send(peer, digest);
            }
        }
        if let Some((at, peer, backoff)) = self.gap_pull.clone() {
            if at <= now {
                self.gap_pull = None;
                if self.log.buffered_len() > 0 {
                    let digest = self.digest(false);
                    self.send(peer, digest);
                    let backoff = (backoff * 2).min(self.config.gossip.anti_entropy_interval);
                    if let Some(next) = self.random_peer() {
                        self.gap_pull = Some((now + backoff, next, backoff));
                    }
                }
            }
        }
        self.finish(now);
    }

    // ---- handlers ------------------------------------------------------------------

    /// Whether `origin` may write at all: it is on the writers list, if there is one.
    fn may_write(&self, origin: &NodeId) -> bool {
        self.config
            .writers
            .as_ref()
            .is_none_or(|writers| writers.contains(origin))
    }

    /// Whether this node accepts ops of `origin`: it may write, and it is or was a member
    /// of the network. The map never forgets a member (left and evicted ones included),
    /// so the right to have written is never lost; a member whose record waits for
    /// registrations, or the publisher of the batch (its report rides with the ops and is
    /// merged next), is known too. Ops of a member this node has not heard of yet are
    /// refused now and pulled again by anti-entropy, whose answer carries the record.
    fn admit(&self, origin: &NodeId, publisher: Option<&NodeId>) -> Result<(), WriterRefused> {
        if !self.may_write(origin) {
            return Err(WriterRefused::NotWriter);
        }
        let known = self.map.get(origin).is_some()
            || self.map.pending_record(origin).is_some()
            || publisher == Some(origin);
        if !known {
            return Err(WriterRefused::NotMember);
        }
        Ok(())
    }

    fn on_ops(
        &mut self,
        now: Time,
        from: &NodeId,
        batch: &OpsBatch<S::Op>,
        publisher: Option<&NodeId>,
    ) {
        for op in &batch.0 {
            let admitted = self.admit(&op.origin, publisher);
            match self
                .log
                .receive_admitted(op.clone(), self.config.auth.as_deref(), |_| admitted)
            {
                Ok(Received::Buffered) if op.origin == self.id => self.note_own_seq(op.seq),
                Ok(Received::Applied(_)) | Ok(Received::Buffered) => {}
                Ok(Received::Duplicate) => self.stats.ops_duplicate += 1,
                Ok(Received::Refused) => self.stats.ops_refused += 1,
                Err(OpError::Signature(SignatureError::Unsigned)) => self.stats.ops_unsigned += 1,
                Err(OpError::Signature(SignatureError::BadSignature)) => {
                    self.stats.ops_bad_signature += 1
                }
                Err(OpError::Writer(WriterRefused::NotMember)) => self.stats.ops_not_member += 1,
                Err(OpError::Writer(WriterRefused::NotWriter)) => self.stats.ops_not_writer += 1,
                Err(_) => self.stats.ops_invalid += 1,
            }
        }
        self.after_apply();
        if self.log.buffered_len() > 0 && self.gap_pull.is_none() {
            let delay = self.config.gossip.gap_pull_delay;
            self.gap_pull = Some((now + delay, from.clone(), delay));
        }
    }

    fn on_records(&mut self, now: Time, records: &[Arc<MemberRecord>]) {
        for record in records {
            self.on_record(now, record);
        }
    }

    fn on_record(&mut self, now: Time, record: &Arc<MemberRecord>) -> MergeOutcome {
        // a member that applied an op of this node proves the op exists
        self.note_own_seq(record.applied.get(&self.id));
        let outcome = self.map.merge(record.clone(), now);
        match outcome {
            MergeOutcome::Adopted => self.stats.records_adopted += 1,
            MergeOutcome::Pending => self.stats.records_pending += 1,
            MergeOutcome::Outdated => self.stats.records_outdated += 1,
            MergeOutcome::AboutSelf => self.on_record_about_self(now, record),
        }
        outcome
    }

    /// Some op of this node with seq `seq` exists. Every op a node creates is stored before
    /// it leaves the node, so one above the highest this node's storage holds proves that
    /// its data dir lost acknowledged ops (it was restored from an older copy): the seq is
    /// taken, and the node writes no more under this identity.
    fn note_own_seq(&mut self, seq: u64) {
        let stored = self.own.highest();
        if self.own.learn(seq) {
            self.stats.own_seq_rollbacks += 1;
            let stored = self.rolled_back.map_or(stored, |(s, _)| s);
            self.rolled_back = Some((stored, seq));
        }
    }

    /// A writer's report that came with its published ops. Every member receives the
    /// topic, so the record is adopted without being relayed by status.
    fn on_published_report(&mut self, now: Time, report: &Arc<MemberRecord>) {
        if self.on_record(now, report) == MergeOutcome::Adopted {
            self.map.forget_dirty(&report.id);
        }
    }

    /// Another node's record about this node: refute a suspicion of the current report
    /// at once; an eviction of the current incarnation is final, so rejoin.
    fn on_record_about_self(&mut self, now: Time, record: &MemberRecord) {
        self.stats.records_outdated += 1;
        if !self.is_member() || record.incarnation != self.incarnation {
            return;
        }
        match record.state {
            MemberState::Suspect
                if record.report_seq >= self.map.own().record.report_seq && !self.own_changed =>
            {
                self.stats.refutations += 1;
                self.own_changed = true;
                self.status_allowed_at = self.status_allowed_at.min(now);
            }
            MemberState::Evicted => self.lose_membership(now),
            _ => {}
        }
    }

    /// A node this map holds as evicted is still gossiping (it has not heard yet): send it
    /// its eviction record directly, at most once per anti-entropy interval, so that an
    /// evicted node learns it within one round trip of reaching any member that knows.
    fn tell_if_evicted(&mut self, now: Time, from: &NodeId, message: &Message<S>) {
        if matches!(message, Message::JoinRequest(_) | Message::JoinResponse(_)) {
            return;
        }
        let Some(entry) = self.map.get(from) else {
            return;
        };
        if entry.record.state != MemberState::Evicted {
            return;
        }
        let every = self.config.gossip.anti_entropy_interval;
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
        self.send(from.clone(), Message::Status(Records(vec![record])));
    }

    /// Failure detection (SWIM-like, with reports as heartbeats): suspect members silent
    /// for `suspect_after`; evict suspects that stayed silent and unrefuted for
    /// `suspicion_timeout`, but never while leaving, and only while this node hears from a
    /// majority of the members
    /// (Lifeguard's local health: a node cut off from most of the network must not evict
    /// the network, and a minority cannot split off and decide on its own).
    fn detect_failures(&mut self, now: Time) {
        let gossip = &self.config.gossip;
        let mut fresh = 1; // this node
        let mut silent_alive = Vec::new();
        let mut overdue = Vec::new();
        for (id, entry) in self.map.iter() {
            if *id == self.id || !entry.record.state.counts() {
                continue;
            }
            let silent = now.since(entry.last_heard) > gossip.suspect_after;
            if !silent {
                fresh += 1;
                continue;
            }
            match (entry.record.state, entry.suspect_since) {
                (MemberState::Alive, _) => silent_alive.push(id.clone()),
                (MemberState::Suspect, Some(since))
                    if now.since(since) >= gossip.suspicion_timeout =>
                {
                    overdue.push(id.clone())
                }
                _ => {}
            }
        }
        let counted = self.map.counted();
        self.isolated = 2 * fresh <= counted;
        for id in silent_alive {
            if self.map.suspect(&id, now) {
                self.stats.suspicions_raised += 1;
            }
        }
        // a leaving node evicts no one: it is on its way out, and evicting the members that
        // hold back its snapshot point would let it leave a network with no member in it
        if !self.isolated
            && !self.is_leaving()
            && self.config.planted != Some(PlantedBug::NeverEvict)
        {
            for id in overdue {
                if self.map.evict(&id, now) {
                    self.stats.evictions_issued += 1;
                }
            }
        }
    }

    /// This node learned that it is no longer a member in good standing (evicted, or
    /// below another member's snapshot point). A leaving node just stops; any other
    /// rejoins through the handshake with a new incarnation.
    fn lose_membership(&mut self, now: Time) {
        if self.is_leaving() {
            // leaving now would strand what only this node holds: the leave fails, and
            // the node rejoins like any other to hand its ops over (it may leave again)
            self.fail_leave();
        }
        if matches!(self.phase, Phase::Member { leaving_by: None }) {
            self.begin_rejoin(now);
        }
    }

    /// Starts a rejoin: keeps the applied ops that are not yet stable (to republish the
    /// ones the new sponsor lacks), raises the incarnation and asks up to three members
    /// this node knows in good standing, or any known node if there is none.
    fn begin_rejoin(&mut self, now: Time) {
        let mut candidates = self.map.counted_peers();
        if candidates.is_empty() {
            candidates = known_nodes(&self.map, &self.id);
        }
        let mut sponsors = Vec::new();
        while sponsors.len() < 3 && !candidates.is_empty() {
            sponsors.push(candidates.swap_remove(self.rng.random_range(0..candidates.len())));
        }
        if sponsors.is_empty() {
            // nobody to ask: this node cannot rejoin on its own
            self.phase = Phase::Left;
            return;
        }
        // every op this node holds above its stable cut, applied or waiting for deps
        let mut retired = self.log.unstable_ops();
        retired.extend(self.log.buffered_ops());
        self.retired_ops = retired;
        self.retired_records = self.map.records();
        self.unpublished.clear();
        self.publish_at = None;
        self.gap_pull = None;
        self.own_changed = false;
        self.incarnation += 1;
        self.joined_at = None;
        self.stats.rejoins += 1;
        self.phase = Phase::Joining(Joiner::new(sponsors, now));
        self.ask_sponsor(now);
    }

    /// This node's durable state, apart from the op suffix (see [`Checkpoint`]).
    pub fn checkpoint(&self) -> Checkpoint<&S> {
        let phase = match &self.phase {
            Phase::Joining(joiner) => DurablePhase::Joining {
                sponsors: joiner.sponsors().to_vec(),
            },
            Phase::Member { .. } => DurablePhase::Member,
            Phase::Left => DurablePhase::Left,
        };
        Checkpoint {
            id: self.id.clone(),
            incarnation: self.incarnation,
            phase,
            stable_state: self.log.stable_state(),
            stable_cut: self.log.stable_cut().clone(),
            lamport: self.log.lamport(),
            records: self.map.records(),
            own_seq: self.own.highest(),
            own_kept_from: self.own.kept_from(),
        }
    }

    /// Everything a data dir holds for this node, owned: the checkpoint and the ops stored
    /// beside it (the applied suffix above the stable cut, and this node's own ops kept
    /// below it). [`Replica::resume`] takes it
    /// back; a simulator keeps it as a backup to restore a node from an old data dir.
    pub fn durable_image(&self) -> DurableImage<S> {
        let c = self.checkpoint();
        let checkpoint = Checkpoint {
            id: c.id,
            incarnation: c.incarnation,
            phase: c.phase,
            stable_state: c.stable_state.clone(),
            stable_cut: c.stable_cut,
            lamport: c.lamport,
            records: c.records,
            own_seq: c.own_seq,
            own_kept_from: c.own_kept_from,
        };
        let mut ops = self.log.unstable_ops();
        let cut = self.log.stable_cut().get(&self.id);
        ops.extend(self.own.kept().filter(|op| op.seq <= cut).cloned());
        (checkpoint, ops)
    }

    /// A node started from a data dir restored from a backup, under a new identity `id`.
    ///
    /// A backup may be older than the node's last state: ops of the old identity that the
    /// backup never saw may exist in the network, so giving out the old identity's next
    /// seqs could name two ops with one id. The node therefore joins as a new member
    /// (incarnation 1), through the members the backup's map counted, and once its grant
    /// is installed it republishes every op the backup holds that the network lacks — the
    /// old identity's too (they carry its signatures). The old identity, silent, is
    /// evicted like any crashed member.
    pub fn resume_from_backup(
        id: NodeId,
        checkpoint: Checkpoint<S>,
        ops: Vec<Arc<Op<S::Op>>>,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Result<Self, ResumeError> {
        let old_id = checkpoint.id;
        let cut = checkpoint.stable_cut;
        let (suffix, old_own_stable): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .filter(|op| op.seq > cut.get(&op.origin) || op.origin == old_id)
            .partition(|op| op.seq > cut.get(&op.origin));
        // the backup's log, held while joining as a rejoining node holds its old one
        let log = stored_log(checkpoint.stable_state, cut, checkpoint.lamport, suffix)?;
        let others = |counted_only: bool| -> Vec<NodeId> {
            checkpoint
                .records
                .iter()
                .filter(|r| r.id != old_id && r.id != id && (!counted_only || r.state.counts()))
                .map(|r| r.id.clone())
                .collect()
        };
        let mut sponsors = others(true);
        if sponsors.is_empty() {
            sponsors = others(false);
        }
        // the backup's records (the old identity's included) are merged after the grant,
        // like a rejoining node's previous map
        let placeholder = MemberRecord::founder(id.clone());
        let mut map = NetworkMap::new(placeholder, now);
        for record in &checkpoint.records {
            if record.id != id {
                map.merge(record.clone(), now);
            }
        }
        map.take_dirty();
        map.take_evictions();
        let phase = if sponsors.is_empty() {
            // a backup of a lone node: nobody to join through
            Phase::Left
        } else {
            Phase::Joining(Joiner::new(sponsors, now))
        };
        let mut retired = log.unstable_ops();
        retired.extend(old_own_stable);
        let mut replica =
            Self::with_parts(id, 1, config, phase, map, log, OwnOps::new(0), seed, now);
        replica.retired_ops = retired;
        replica.retired_records = checkpoint.records;
        replica.ask_sponsor(now);
        replica.finish(now);
        Ok(replica)
    }

    /// A node back from its checkpoint and the ops it had applied above the stable cut (in
    /// any order; ops at or below the cut are skipped). It comes back as
    /// [`Replica::restart`] does — a member rejoins through the handshake with a new
    /// incarnation, republishing what the network lacks — except that a node that had
    /// left rejoins too (an operator restarting it wants it back), and a member that knows
    /// no other member resumes as it was: it is the whole network.
    pub fn resume(
        checkpoint: Checkpoint<S>,
        suffix: Vec<Arc<Op<S::Op>>>,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Result<Self, ResumeError> {
        let cut = checkpoint.stable_cut;
        let id = checkpoint.id;
        // this node's own ops are its journal, stable or not; the others count above the cut
        let mut own_ops = OwnOps::new(checkpoint.own_seq.max(cut.get(&id)));
        let mut kept_stable = Vec::new();
        let suffix: Vec<_> = suffix
            .into_iter()
            .filter(|op| {
                let above = op.seq > cut.get(&op.origin);
                if op.origin == id && !above {
                    kept_stable.push(op.clone());
                }
                above
            })
            .collect();
        kept_stable.sort_by_key(|op| op.seq);
        for op in kept_stable {
            // its retention starts again: when it became stable was not stored
            own_ops.keep_stable(op, now);
        }
        for op in suffix.iter().filter(|op| op.origin == id) {
            own_ops.keep(op.clone());
        }
        let log = stored_log(checkpoint.stable_state, cut, checkpoint.lamport, suffix)?;
        let mut own = None;
        let mut others = Vec::new();
        for record in checkpoint.records {
            if record.id == id {
                own = Some(record);
            } else {
                others.push(record);
            }
        }
        let mut own = (*own.ok_or(ResumeError::NoOwnRecord)?).clone();
        own.addrs = config.addrs.clone();
        let mut map = NetworkMap::load(own, others, now);
        map.take_dirty();
        map.take_evictions();
        let (phase, rejoin) = match checkpoint.phase {
            DurablePhase::Joining { sponsors } if !sponsors.is_empty() => {
                (Phase::Joining(Joiner::new(sponsors, now)), false)
            }
            DurablePhase::Joining { .. } => (Phase::Left, false),
            DurablePhase::Member | DurablePhase::Left => (Phase::Member { leaving_by: None }, true),
        };
        let mut replica = Self::with_parts(
            id,
            checkpoint.incarnation,
            config,
            phase,
            map,
            log,
            own_ops,
            seed,
            now,
        );
        if rejoin && replica.map.counted_peers().is_empty() {
            // the only member: nobody can have moved on without it
            let applied = replica.log.applied().clone();
            replica
                .map
                .report_own(applied, now, |own| own.state = MemberState::Alive);
            replica.own_changed = true;
            replica.finish(now);
            return Ok(replica);
        }
        Ok(replica.restart(now))
    }

    /// The same node after a crash, restarted from its durable state (its ops log and
    /// network map): volatile state is dropped and it rejoins through the handshake with
    /// a new incarnation, republishing the ops the network lacks. A node that was still
    /// joining asks its bootstrap peer again; one that had left stays gone.
    pub fn restart(mut self, now: Time) -> Self {
        self.outbox.clear();
        self.wake_announced = None;
        self.out_peers.clear();
        self.in_peers.clear();
        self.peers_epoch = None;
        self.status_allowed_at = now;
        self.awaited_grant = None;
        match &mut self.phase {
            Phase::Member { .. } => self.begin_rejoin(now),
            Phase::Joining(joiner) => {
                // the sponsor may have registered this incarnation: ask it again
                joiner.retry_now(now);
                self.ask_sponsor(now);
            }
            Phase::Left => {}
        }
        self.finish(now);
        self
    }

    fn on_digest(&mut self, from: &NodeId, digest: &AntiEntropyDigest) {
        let max = self.config.gossip.max_repair_ops;
        // Compatibility, not equality (SPEC §5): serve ops only to a peer at or above this
        // node's snapshot point; tell one below it that it is stale. The peer decides
        // whether it really is: its vector may have been overtaken on the way.
        let mut ops = if self.log.stable_cut().le(&digest.applied) {
            self.log.missing_for(&digest.applied, max + 1).ops
        } else {
            let snapshot_point = self.log.stable_cut().clone();
            self.send(from.clone(), Message::Stale { snapshot_point });
            Vec::new()
        };
        let more = ops.len() > max;
        ops.truncate(max);
        let records = self.map.newer_than(&digest.members);
        if !ops.is_empty() || !records.is_empty() {
            let repair = Repair {
                ops: OpsBatch(ops),
                records: Records(records),
                more,
            };
            self.send(from.clone(), Message::Repair(repair));
        }
        let lacking_ops = digest
            .applied
            .iter()
            .any(|(origin, seq)| seq > self.log.applied().get(origin));
        if digest.initiator && (lacking_ops || self.map.behind(&digest.members)) {
            let mine = self.digest(false);
            self.send(from.clone(), mine);
        }
    }

    fn on_join_request(&mut self, now: Time, from: &NodeId, request: &JoinRequest) {
        let retry = join_protocol::is_pending_registration(&self.map, request);
        let refusal = if &request.joiner != from {
            Some("a join request must come from the joiner itself")
        } else if retry {
            // a retry of a registration this node made is granted again, even while it
            // leaves or is cut off: the joiner must reach at least that cut
            None
        } else if !matches!(self.phase, Phase::Member { leaving_by: None }) {
            Some("this node is leaving the network")
        } else if let Some(reason) = self.cannot_sponsor_now(now, &request.joiner) {
            self.stats.sponsorships_declined += 1;
            Some(reason)
        } else {
            None
        };
        let response = match refusal {
            Some(reason) => JoinResponse::Refused {
                reason: reason.into(),
                suggestions: if &request.joiner == from {
                    self.suggest_sponsors()
                } else {
                    Vec::new()
                },
                member_incarnation: None,
            },
            None => match join_protocol::register(&mut self.log, &mut self.map, request, now) {
                Ok(grant) => {
                    self.stats.joins_sponsored += 1;
                    self.own_changed = true;
                    JoinResponse::Granted(grant)
                }
                Err(e) => JoinResponse::Refused {
                    member_incarnation: match &e {
                        JoinError::AlreadyMember { incarnation, .. } => Some(*incarnation),
                        _ => None,
                    },
                    reason: e.to_string(),
                    suggestions: Vec::new(),
                },
            },
        };
        self.send(from.clone(), Message::JoinResponse(Box::new(response)));
    }

    /// Why this member cannot register `joiner` now, if it cannot: it is cut off from most
    /// of the members it counts (a minority must not grow its view), or it joined less than
    /// `suspect_after` ago and cannot know yet which members are alive. A member it counts
    /// that rejoins with a new incarnation is always registered: that replaces a silent
    /// member by a live one and grows no view (refusing it could leave a two-member view
    /// waiting forever for the old incarnation).
    fn cannot_sponsor_now(&self, now: Time, joiner: &NodeId) -> Option<&'static str> {
        if self.map.is_counted(joiner) {
            return None;
        }
        if self.isolated {
            return Some("this node hears from too few members to sponsor a join; ask another");
        }
        if self
            .joined_at
            .is_some_and(|at| now < at + self.config.gossip.suspect_after)
        {
            return Some(
                "this node joined too recently to know which members are alive; ask another",
            );
        }
        None
    }

    fn on_join_response(&mut self, now: Time, from: &NodeId, response: &JoinResponse<S>) {
        let Phase::Joining(joiner) = &mut self.phase else {
            return;
        };
        if joiner.current() != from {
            return;
        }
        let grant = match response {
            JoinResponse::Granted(grant) => grant.clone(),
            JoinResponse::Refused {
                reason,
                suggestions,
                member_incarnation,
            } => {
                // nothing was registered: the next sponsor is asked after a backoff
                self.stats.join_refusals += 1;
                let map = &self.map;
                let me = &self.id;
                let raise = joiner.refused(
                    now,
                    reason,
                    suggestions,
                    *member_incarnation,
                    self.incarnation,
                    me,
                    &self.config.gossip,
                    &mut self.rng,
                    || known_nodes(map, me),
                );
                if let Some(incarnation) = raise {
                    self.incarnation = incarnation;
                }
                return;
            }
        };
        if grant.offer().is_some() {
            // the driver fetches the offered snapshot; until it is installed (or the
            // transfer is given up) the sponsor is not asked again
            if self.awaited_grant.is_none() {
                joiner.hold(now + self.config.gossip.state_transfer_timeout);
                self.awaited_grant = Some((from.clone(), grant));
                self.next_keepalive = now + self.config.gossip.heartbeat_interval;
            }
            return;
        }
        self.awaited_grant = None;
        let _ = self.install_grant(now, grant);
    }

    /// How many times a grant replaced this replica's ops log. Within one generation each
    /// stable state is the one before with the newly stable ops folded in, which lets a
    /// store keep the stable state incrementally.
    pub fn log_generation(&self) -> u64 {
        self.log_generation
    }

    /// The grant whose offered snapshot is being fetched, and the sponsor that granted it.
    pub fn awaited_grant(&self) -> Option<(&NodeId, &JoinGrant<S>)> {
        let (sponsor, grant) = self.awaited_grant.as_ref()?;
        Some((sponsor, grant))
    }

    /// The driver fetched and verified the awaited grant's state: install it. Fails when no
    /// grant awaits a state (it was given up meanwhile) or the grant does not install.
    pub fn install_transferred(&mut self, now: Time, state: S) -> Result<(), JoinError> {
        let Some((_, grant)) = self.awaited_grant.take() else {
            return Err(JoinError::StateNotHere);
        };
        let installed = self.install_grant(now, grant.with_state(state));
        self.finish(now);
        installed
    }

    /// While the awaited grant's state is fetched, the joiner is registered but cannot
    /// report as members do (it has no state to report on), and a fetch of a large state
    /// outlasts `suspect_after` and `suspicion_timeout`. So it reports its registration
    /// again every `heartbeat_interval`, with a raised `report_seq` and the registration's
    /// `applied` (the join cut, which the state it installs reaches), to the sponsor and
    /// up to two other members; they adopt it as a fresh report (which also refutes a
    /// suspicion) and relay it. Its first report as a member comes after these.
    fn send_keepalive(&mut self, now: Time) {
        self.next_keepalive = now + self.config.gossip.heartbeat_interval;
        let Some((sponsor, grant)) = &self.awaited_grant else {
            return;
        };
        let registration = &grant.registration;
        self.keepalive_seq = self.keepalive_seq.max(registration.report_seq) + 1;
        let report = Arc::new(MemberRecord {
            state: MemberState::Alive,
            report_seq: self.keepalive_seq,
            addrs: self.config.addrs.clone(),
            ..(**registration).clone()
        });
        let mut others: Vec<NodeId> = grant
            .members
            .0
            .iter()
            .filter(|r| r.state.counts() && r.id != *sponsor && r.id != self.id)
            .map(|r| r.id.clone())
            .collect();
        let mut to = vec![sponsor.clone()];
        while to.len() < 3 && !others.is_empty() {
            to.push(others.swap_remove(self.rng.random_range(0..others.len())));
        }
        let message = Arc::new(Message::Status(Records(vec![report])));
        for peer in to {
            self.outbox.push_back(Action::Send {
                to: peer,
                message: message.clone(),
            });
        }
        self.stats.keepalives_sent += 1;
    }

    /// The driver could not fetch the awaited state: ask the sponsor again now.
    pub fn abandon_transfer(&mut self, now: Time) {
        if self.awaited_grant.take().is_some() {
            self.stats.state_transfers_abandoned += 1;
            if let Phase::Joining(joiner) = &mut self.phase {
                joiner.retry_now(now);
            }
        }
        self.finish(now);
    }

    fn install_grant(&mut self, now: Time, grant: JoinGrant<S>) -> Result<(), JoinError> {
        let reports_made = self.keepalive_seq;
        // what the sponsor's records say this node had applied of its own ops: ops of this
        // node up to there exist, and their seqs are taken
        let own_seen = grant
            .members
            .0
            .iter()
            .map(|r| r.applied.get(&self.id))
            .max()
            .unwrap_or(0);
        match join_protocol::install(
            grant,
            &self.id,
            self.config.addrs.clone(),
            reports_made,
            now,
            // the sponsor checked these ops when it received them; a grant is no back door
            self.config.auth.as_deref(),
        ) {
            Ok((mut log, map)) => {
                // the suffix applied while installing is part of the handed-over state;
                // observers see it applied on top of the stable state (after any ops of
                // the previous membership they have not drained yet)
                let suffix = log.drain_applied();
                if self.config.journal_applied {
                    self.journal.extend(suffix);
                }
                log.set_buffer_limits(self.config.gossip.causal_buffer);
                log.plant(self.config.planted);
                self.log = log;
                self.log_generation += 1;
                self.map = map;
                self.map.plant(self.config.planted);
                self.phase = Phase::Member { leaving_by: None };
                self.own_changed = true;
                self.last_report = now;
                self.next_anti_entropy =
                    now + jitter(&mut self.rng, self.config.gossip.anti_entropy_interval);
                self.next_failure_check = now + self.config.gossip.suspect_after;
                self.joined_at = Some(now);
                self.note_own_seq(own_seen.max(self.log.applied().get(&self.id)));
                self.own.unstable_above(self.log.stable_cut().get(&self.id));
                self.republish_retired(now);
                Ok(())
            }
            Err(e) => {
                self.stats.join_refusals += 1;
                Err(e)
            }
        }
    }

    /// After a rejoin: merges the previous incarnation's records, then applies the ops it
    /// held that the grant lacks — its unstable suffix, the ops waiting in its causal
    /// buffer, and this node's own ops from its journal — and publishes them all again, so
    /// that ops created (or received) while cut off are not lost (I5).
    fn republish_retired(&mut self, now: Time) {
        let records = std::mem::take(&mut self.retired_records);
        self.on_records(now, &records);
        if self.config.planted == Some(PlantedBug::SeqReusedAfterRejoin) {
            self.retired_ops.clear();
            return;
        }
        let before = self.log.applied().clone();
        let own = self.own.above(before.get(&self.id)).cloned();
        let mut lacking: BTreeMap<(NodeId, u64), Arc<Op<S::Op>>> = BTreeMap::new();
        for op in std::mem::take(&mut self.retired_ops).into_iter().chain(own) {
            if op.seq > before.get(&op.origin) {
                lacking.entry((op.origin.clone(), op.seq)).or_insert(op);
            }
        }
        let mut lacking: Vec<_> = lacking.into_values().collect();
        // Lamport order extends causal order; an op whose deps the grant lacks waits in
        // the causal buffer (and an own op stays in the journal for the next rejoin)
        lacking.sort_by(|a, b| (a.lamport, &a.origin, a.seq).cmp(&(b.lamport, &b.origin, b.seq)));
        for op in &lacking {
            let _ = self.log.receive(op.clone());
        }
        self.after_apply();
        if lacking.is_empty() {
            return;
        }
        // All of them are published again, those that wait here for deps too: anti-entropy
        // serves only applied ops, so ops that wait in buffers on ops that wait in other
        // buffers would otherwise come loose one round trip at a time.
        self.stats.ops_republished += lacking.len() as u64;
        self.unpublished.extend(lacking);
        self.publish_at = Some(now);
    }

    // ---- gossip rules --------------------------------------------------------------

    /// Records newly applied ops in the own map entry (so the snapshot point sees them).
    fn after_apply(&mut self) {
        let applied = self.log.drain_applied();
        if applied.is_empty() {
            return;
        }
        self.stats.ops_applied += applied.len() as u64;
        let mut changes: Vec<(NodeId, u64)> = Vec::new();
        for op in &applied {
            if op.origin == self.id {
                // created here, or one of this node's ops come back from the network
                self.note_own_seq(op.seq);
                self.own.keep(op.clone());
            }
            match changes.iter_mut().find(|(o, _)| *o == op.origin) {
                Some(entry) => entry.1 = entry.1.max(op.seq),
                None => changes.push((op.origin.clone(), op.seq)),
            }
        }
        self.map.apply_delta(&self.id, &changes);
        self.own_changed = true;
        if self.config.journal_applied {
            self.journal.extend(applied);
        }
    }

    fn publish_ops(&mut self, now: Time) {
        let take = self.unpublished.len().min(self.config.gossip.max_batch_ops);
        let batch: Vec<_> = self.unpublished.drain(..take).collect();
        self.publish_at = if self.unpublished.is_empty() {
            None
        } else {
            Some(now)
        };
        if !batch.is_empty() {
            let report = self.is_member().then(|| self.report_with_batch(now));
            self.outbox.push_back(Action::Publish {
                message: Arc::new(Message::Ops(PublishedOps {
                    ops: OpsBatch(batch),
                    report,
                })),
            });
        }
    }

    /// Re-issues this node's record to ride on the batch it is publishing. Every member
    /// receives the batch, so the record is not sent again in status.
    fn report_with_batch(&mut self, now: Time) -> Arc<MemberRecord> {
        self.map.report_own(self.log.applied().clone(), now, |_| {});
        self.map.forget_dirty(&self.id);
        self.own_changed = false;
        self.last_report = now;
        self.last_batch_report = Some(now);
        self.map.own().record.clone()
    }

    /// When the own record is to go out in a status report: once it changed and status
    /// may be sent, but not while a batch is waiting to be published (the batch carries
    /// it, sooner and to everyone), and, after a batch carried the last report, not before
    /// `batch_report_hold` has passed without another batch (a writer's reports ride on
    /// its batches).
    fn own_report_at(&self) -> Option<Time> {
        if !self.own_changed || self.publish_at.is_some() {
            return None;
        }
        let held = self
            .last_batch_report
            .filter(|at| *at >= self.last_report)
            .map(|at| at + self.config.gossip.batch_report_hold);
        Some(held.map_or(self.status_allowed_at, |h| h.max(self.status_allowed_at)))
    }

    fn status_due(&self) -> Option<Time> {
        let relay = self.map.has_dirty().then_some(self.status_allowed_at);
        match (self.own_report_at(), relay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn flush_status(&mut self, now: Time) {
        if self.own_report_at().is_some_and(|at| at <= now) {
            self.map.report_own(self.log.applied().clone(), now, |_| {});
            self.own_changed = false;
            self.last_report = now;
        }
        let records = self.map.take_dirty();
        self.status_allowed_at = now + self.config.gossip.status_interval_for(self.map.counted());
        if records.is_empty() {
            return;
        }
        let message = Arc::new(Message::Status(Records(records)));
        for peer in self.status_peers() {
            self.outbox.push_back(Action::Send {
                to: peer,
                message: message.clone(),
            });
        }
    }

    fn refresh_peers(&mut self) {
        let epoch = self.map.membership_epoch();
        if self.peers_epoch == Some(epoch) {
            return;
        }
        self.peers_epoch = Some(epoch);
        self.peers_cache = self.map.counted_peers();
        let map = &self.map;
        self.out_peers.retain(|p| map.is_counted(p));
        self.in_peers.retain(|p| map.is_counted(p));
        let want = self.config.gossip.status_fanout.min(self.peers_cache.len());
        while self.out_peers.len() < want {
            let pick = self.peers_cache[self.rng.random_range(0..self.peers_cache.len())].clone();
            self.out_peers.insert(pick);
        }
    }

    fn status_peers(&mut self) -> Vec<NodeId> {
        self.refresh_peers();
        self.out_peers.union(&self.in_peers).cloned().collect()
    }

    fn random_peer(&mut self) -> Option<NodeId> {
        self.refresh_peers();
        if self.peers_cache.is_empty() {
            return None;
        }
        Some(self.peers_cache[self.rng.random_range(0..self.peers_cache.len())].clone())
    }

    fn digest(&self, initiator: bool) -> Message<S> {
        Message::Digest(AntiEntropyDigest {
            applied: self.log.applied().clone(),
            members: self.map.versions(),
            initiator,
        })
    }

    fn send(&mut self, to: NodeId, message: Message<S>) {
        self.outbox.push_back(Action::Send {
            to,
            message: Arc::new(message),
        });
    }

    /// After every event: fold what became stable, announce a pending leave when it is
    /// time, then ask for the next wake-up.
    fn finish(&mut self, now: Time) {
        let evictions = self.map.take_evictions();
        if self.config.journal_applied {
            self.eviction_journal.extend(evictions);
        }
        if self.is_member() {
            if self.config.planted == Some(PlantedBug::CountsOneMemberTooFew) {
                self.planted_sp = Some(self.sp_without_one_member());
            }
            if self.snapshot_point() != self.log.stable_cut() {
                let sp = self.snapshot_point().clone();
                self.log.advance_stable(&sp);
            }
            let stable = self.log.stable_cut().get(&self.id);
            let retention = self.config.gossip.own_ops_retention;
            self.own.stable_upto(stable, now, retention);
        }
        if let Phase::Member {
            leaving_by: Some(deadline),
        } = self.phase
        {
            // The ops it holds are safe to leave behind once they are under its snapshot
            // point: every member it counts has applied them, and so has every member it
            // has not heard of yet (their join cuts lie above that point, I3).
            let sp = self.map.snapshot_point();
            let handed_over = self.unpublished.is_empty() && self.leave_cut.le(sp);
            // every joiner it registered has reported by itself (its `Left` record would
            // count them anyway, so this is not waited for past the deadline)
            let drained = handed_over && !join_protocol::has_unconfirmed_registrations(&self.map);
            if drained || (handed_over && now >= deadline) {
                self.announce_left(now);
            } else if now >= deadline {
                // leaving now could lose writes: give up the leave and stay a member
                self.fail_leave();
            }
        }
        let next = self.next_deadline();
        if let Some(at) = next {
            let at = at.max(now);
            if self.wake_announced != Some(at) {
                self.wake_announced = Some(at);
                self.outbox.push_back(Action::ScheduleWake { at });
            }
        }
    }

    /// Gives up a leave (see [`LeaveFailed`]): the node stays a member.
    fn fail_leave(&mut self) {
        let sp = self.map.snapshot_point();
        let unstable_own = self
            .leave_cut
            .get(&self.id)
            .saturating_sub(sp.get(&self.id));
        let unstable = self
            .leave_cut
            .iter()
            .map(|(origin, seq)| seq.saturating_sub(sp.get(origin)))
            .sum();
        self.phase = Phase::Member { leaving_by: None };
        self.leave_cut = VersionVector::new();
        self.stats.leaves_failed += 1;
        self.leave_failure = Some(LeaveFailed {
            unstable,
            unstable_own,
        });
    }

    /// [`PlantedBug::CountsOneMemberTooFew`]: the minimum over the counted members but the
    /// first other one in id order, kept monotone so that only I3 can see the bug.
    fn sp_without_one_member(&self) -> VersionVector {
        let mut skipped = false;
        let mut min: Option<VersionVector> = None;
        for (id, entry) in self.map.iter() {
            if !entry.record.state.counts() {
                continue;
            }
            if !skipped && *id != self.id {
                skipped = true;
                continue;
            }
            min = Some(match min {
                None => entry.record.applied.clone(),
                Some(m) => m.meet(&entry.record.applied),
            });
        }
        let mut sp = min.unwrap_or_default().meet(self.log.applied());
        if let Some(before) = &self.planted_sp {
            sp.join(before);
        }
        sp
    }

    fn announce_left(&mut self, now: Time) {
        self.map.report_own(self.log.applied().clone(), now, |own| {
            own.state = MemberState::Left
        });
        self.own_changed = false;
        self.phase = Phase::Left;
        self.status_allowed_at = now;
        self.flush_status(now);
    }

    fn next_deadline(&self) -> Option<Time> {
        match &self.phase {
            Phase::Joining(joiner) => match self.awaited_grant {
                Some(_) => Some(joiner.retry_at().min(self.next_keepalive)),
                None => Some(joiner.retry_at()),
            },
            Phase::Left => self.status_due(),
            Phase::Member { leaving_by } => [
                self.publish_at,
                self.status_due(),
                // once the own record is due, `status_due` covers it
                (!self.own_changed)
                    .then(|| self.last_report + self.config.gossip.heartbeat_interval),
                Some(self.next_anti_entropy),
                Some(self.next_failure_check),
                self.gap_pull.as_ref().map(|g| g.0),
                *leaving_by,
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }
}

/// The ops log a data dir holds: its stable state at `cut`, and the ops stored above the cut
/// applied on it in Lamport order. They are this node's own journal: their signatures were
/// checked when they arrived.
fn stored_log<S: StateMachine>(
    state: S,
    cut: VersionVector,
    lamport: u64,
    mut above: Vec<Arc<Op<S::Op>>>,
) -> Result<OpsLog<S>, crate::ops_log::InstallError> {
    above.sort_by_key(|op| op.lamport);
    let mut log = OpsLog::install(state, cut, lamport, above, None)?;
    log.drain_applied();
    Ok(log)
}

/// Every node `map` holds a record of, but `me`, in id order: who a joiner that still holds
/// its previous map can ask.
fn known_nodes(map: &NetworkMap, me: &NodeId) -> Vec<NodeId> {
    map.iter()
        .map(|(id, _)| id.clone())
        .filter(|id| id != me)
        .collect()
}

mod planted;
pub use planted::PlantedBug;

#[cfg(test)]
mod tests;
