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
use crate::join_protocol::{self, JoinError, JoinGrant, JoinRequest, JoinResponse};
use crate::network_map::{MemberRecord, MemberState, MergeOutcome, NetworkMap};
use crate::node_id::NodeId;
use crate::ops_log::{
    Digest, Op, OpAuthenticator, OpError, OpsLog, Received, SignatureError, StateMachine,
};
use crate::time::Time;
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
}

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
    Joining {
        /// Bootstrap peers to ask, in order; the joiner moves to the next one only when
        /// the current one refuses (a refusal registers nothing, while a silent sponsor
        /// may have registered it, so it is asked again).
        sponsors: Vec<NodeId>,
        current: usize,
        retry_at: Time,
        backoff: Duration,
        /// Requests to the current sponsor left unanswered.
        unanswered: u32,
    },
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
        seed: u64,
        now: Time,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let first_ae = now + jitter(&mut rng, config.gossip.anti_entropy_interval);
        let first_failure_check = now + jitter(&mut rng, config.gossip.failure_check_interval);
        let mut log = log;
        log.set_buffer_limits(config.gossip.causal_buffer);
        let mut replica = Self {
            id,
            incarnation,
            config,
            phase,
            log,
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
        Self::with_parts(
            id,
            1,
            config,
            Phase::Member { leaving_by: None },
            map,
            log,
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
        assert!(!sponsors.is_empty(), "a joiner needs a bootstrap peer");
        let placeholder = MemberRecord {
            incarnation,
            ..MemberRecord::founder(id.clone())
        };
        let map = NetworkMap::new(placeholder, now);
        let first = sponsors[0].clone();
        let phase = Phase::Joining {
            sponsors,
            current: 0,
            retry_at: now + config.gossip.join_retry,
            backoff: config.gossip.join_retry,
            unanswered: 0,
        };
        let mut replica = Self::with_parts(
            id,
            incarnation,
            config,
            phase,
            map,
            OpsLog::new(),
            seed,
            now,
        );
        replica.send_join_request(first);
        replica.finish(now);
        replica
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
            self.map.snapshot_point()
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
            Phase::Joining { .. } => return Err(WriteRefused::Joining),
            Phase::Member {
                leaving_by: Some(_),
            } => return Err(WriteRefused::Leaving),
            Phase::Left => return Err(WriteRefused::Left),
            Phase::Member { leaving_by: None } => {}
        }
        let op = self
            .log
            .create_signed(&self.id, payload, self.config.auth.as_deref());
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
    /// pending, wait until this node's own ops are inside its snapshot point — so every
    /// member has them — and every joiner it registered has reported by itself (or until
    /// `leave_drain_timeout`), then announce a `Left` record; every member drops this node
    /// from its snapshot point as soon as that record arrives.
    pub fn leave(&mut self, now: Time) -> Result<(), WriteRefused> {
        match self.phase {
            Phase::Joining { .. } => return Err(WriteRefused::Joining),
            Phase::Left => return Err(WriteRefused::Left),
            Phase::Member {
                leaving_by: Some(_),
            } => return Ok(()),
            Phase::Member { leaving_by: None } => {}
        }
        self.phase = Phase::Member {
            leaving_by: Some(now + self.config.gossip.leave_drain_timeout),
        };
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
            (Phase::Joining { .. }, Message::JoinResponse(response)) => {
                self.on_join_response(now, from, response)
            }
            (Phase::Joining { .. }, Message::JoinRequest(_)) => {
                self.refuse_join(from, "this node has not joined the network yet")
            }
            (Phase::Joining { .. }, _) => {}
            (Phase::Left, Message::JoinRequest(request)) => {
                self.on_join_request(now, from, request)
            }
            (Phase::Left, Message::Digest(digest)) => self.on_digest(from, digest),
            (Phase::Left, _) => {}
            (Phase::Member { .. }, Message::Ops(published)) => {
                self.on_ops(now, from, &published.ops);
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
                self.on_ops(now, from, &repair.ops);
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
        self.send(
            to.clone(),
            Message::JoinResponse(Box::new(JoinResponse::Refused {
                reason: reason.into(),
                suggestions: Vec::new(),
            })),
        );
    }

    /// Up to three random members in good standing, for a joiner this node turns away.
    fn suggest_sponsors(&mut self) -> Vec<NodeId> {
        let mut peers = self.map.counted_peers();
        let mut picked = Vec::new();
        while picked.len() < 3 && !peers.is_empty() {
            picked.push(peers.swap_remove(self.rng.random_range(0..peers.len())));
        }
        picked
    }

    /// The wake-up time requested by the last `ScheduleWake` has come (or passed).
    pub fn handle_timeout(&mut self, now: Time) {
        self.wake_announced = None;
        if let Phase::Joining {
            sponsors,
            current,
            retry_at,
            backoff,
            unanswered,
        } = &mut self.phase
        {
            if *retry_at <= now && self.awaited_grant.take().is_some() {
                // the offered state did not arrive in time: ask the sponsor again
                self.stats.state_transfers_abandoned += 1;
                *unanswered = 0;
            }
            if *retry_at > now && self.awaited_grant.is_some() && self.next_keepalive <= now {
                self.send_keepalive(now);
                self.finish(now);
                return;
            }
            if *retry_at <= now {
                *unanswered += 1;
                if *unanswered >= self.config.gossip.join_attempts_per_sponsor && sponsors.len() > 1
                {
                    // The sponsor may be down. It may also have registered this node, so
                    // the next sponsor is asked with a new incarnation: a registration of
                    // the old one that never reports is evicted like any silent member.
                    *current = (*current + 1) % sponsors.len();
                    *unanswered = 0;
                    *backoff = self.config.gossip.join_retry;
                    self.incarnation += 1;
                    if *current == 0 {
                        // a whole round unanswered: add nodes this one knew (a rejoining
                        // node still holds its previous map), so that it never waits on
                        // the same dead peers forever
                        let mut known: Vec<NodeId> = self
                            .map
                            .iter()
                            .map(|(id, _)| id.clone())
                            .filter(|id| *id != self.id && !sponsors.contains(id))
                            .collect();
                        for _ in 0..3 {
                            if known.is_empty() {
                                break;
                            }
                            let pick = known.swap_remove(self.rng.random_range(0..known.len()));
                            sponsors.push(pick);
                        }
                    }
                } else {
                    *backoff = (*backoff * 2).min(self.config.gossip.join_retry_max);
                }
                *retry_at = now + *backoff;
                let sponsor = sponsors[*current].clone();
                self.send_join_request(sponsor);
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

    fn on_ops(&mut self, now: Time, from: &NodeId, batch: &OpsBatch<S::Op>) {
        for op in &batch.0 {
            match self
                .log
                .receive_verified(op.clone(), self.config.auth.as_deref())
            {
                Ok(Received::Applied(_)) | Ok(Received::Buffered) => {}
                Ok(Received::Duplicate) => self.stats.ops_duplicate += 1,
                Ok(Received::Refused) => self.stats.ops_refused += 1,
                Err(OpError::Signature(SignatureError::Unsigned)) => self.stats.ops_unsigned += 1,
                Err(OpError::Signature(SignatureError::BadSignature)) => {
                    self.stats.ops_bad_signature += 1
                }
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
        let outcome = self.map.merge(record.clone(), now);
        match outcome {
            MergeOutcome::Adopted => self.stats.records_adopted += 1,
            MergeOutcome::Pending => self.stats.records_pending += 1,
            MergeOutcome::Outdated => self.stats.records_outdated += 1,
            MergeOutcome::AboutSelf => self.on_record_about_self(now, record),
        }
        outcome
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
    /// `suspicion_timeout`, but only while this node hears from a majority of the members
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
        if !self.isolated {
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
        match self.phase {
            Phase::Member {
                leaving_by: Some(_),
            } => self.phase = Phase::Left,
            Phase::Member { leaving_by: None } => self.begin_rejoin(now),
            _ => {}
        }
    }

    /// Starts a rejoin: keeps the applied ops that are not yet stable (to republish the
    /// ones the new sponsor lacks), raises the incarnation and asks up to three members
    /// this node knows in good standing, or any known node if there is none.
    fn begin_rejoin(&mut self, now: Time) {
        let mut candidates = self.map.counted_peers();
        if candidates.is_empty() {
            candidates = self
                .map
                .iter()
                .map(|(id, _)| id.clone())
                .filter(|id| *id != self.id)
                .collect();
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
        self.retired_ops = self.log.unstable_ops();
        self.retired_records = self.map.records();
        self.unpublished.clear();
        self.publish_at = None;
        self.gap_pull = None;
        self.own_changed = false;
        self.incarnation += 1;
        self.stats.rejoins += 1;
        let first = sponsors[0].clone();
        self.phase = Phase::Joining {
            sponsors,
            current: 0,
            retry_at: now + self.config.gossip.join_retry,
            backoff: self.config.gossip.join_retry,
            unanswered: 0,
        };
        self.send_join_request(first);
    }

    /// This node's durable state, apart from the op suffix (see [`Checkpoint`]).
    pub fn checkpoint(&self) -> Checkpoint<&S> {
        let phase = match &self.phase {
            Phase::Joining { sponsors, .. } => DurablePhase::Joining {
                sponsors: sponsors.clone(),
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
        }
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
        let mut suffix: Vec<_> = suffix
            .into_iter()
            .filter(|op| op.seq > cut.get(&op.origin))
            .collect();
        suffix.sort_by_key(|op| op.lamport);
        // this node's own journal: its ops were checked when they arrived
        let mut log = OpsLog::install(
            checkpoint.stable_state,
            cut,
            checkpoint.lamport,
            suffix,
            None,
        )?;
        log.drain_applied();
        let id = checkpoint.id;
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
            DurablePhase::Joining { sponsors } if !sponsors.is_empty() => (
                Phase::Joining {
                    sponsors,
                    current: 0,
                    retry_at: now,
                    backoff: config.gossip.join_retry,
                    unanswered: 0,
                },
                false,
            ),
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
        match &mut self.phase {
            Phase::Member { .. } => self.begin_rejoin(now),
            Phase::Joining {
                sponsors,
                current,
                retry_at,
                backoff,
                ..
            } => {
                *backoff = self.config.gossip.join_retry;
                *retry_at = now + *backoff;
                let sponsor = sponsors[*current].clone();
                self.send_join_request(sponsor);
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
        let response = if &request.joiner != from {
            JoinResponse::Refused {
                reason: "a join request must come from the joiner itself".into(),
                suggestions: Vec::new(),
            }
        } else if !retry && !matches!(self.phase, Phase::Member { leaving_by: None }) {
            // a leaving node registers no one new (a retry of its own registration is
            // granted again: the joiner must reach at least that cut); it redirects
            JoinResponse::Refused {
                reason: "this node is leaving the network".into(),
                suggestions: self.suggest_sponsors(),
            }
        } else {
            match join_protocol::register(&mut self.log, &mut self.map, request, now) {
                Ok(grant) => {
                    self.stats.joins_sponsored += 1;
                    self.own_changed = true;
                    JoinResponse::Granted(grant)
                }
                Err(e) => JoinResponse::Refused {
                    reason: e.to_string(),
                    suggestions: Vec::new(),
                },
            }
        };
        self.send(from.clone(), Message::JoinResponse(Box::new(response)));
    }

    fn on_join_response(&mut self, now: Time, from: &NodeId, response: &JoinResponse<S>) {
        let Phase::Joining {
            sponsors,
            current,
            retry_at,
            unanswered,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if &sponsors[*current] != from {
            return;
        }
        let grant = match response {
            JoinResponse::Granted(grant) => grant.clone(),
            JoinResponse::Refused { suggestions, .. } => {
                // nothing was registered: ask the next bootstrap peer now, including any
                // the refuser suggested
                self.stats.join_refusals += 1;
                for s in suggestions {
                    if !sponsors.contains(s) && *s != self.id {
                        sponsors.push(s.clone());
                    }
                }
                *current = (*current + 1) % sponsors.len();
                *retry_at = now + self.config.gossip.join_retry;
                *unanswered = 0;
                let next = sponsors[*current].clone();
                self.send_join_request(next);
                return;
            }
        };
        if grant.offer().is_some() {
            // the driver fetches the offered snapshot; until it is installed (or the
            // transfer is given up) the sponsor is not asked again
            if self.awaited_grant.is_none() {
                *retry_at = now + self.config.gossip.state_transfer_timeout;
                *unanswered = 0;
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
            if let Phase::Joining { retry_at, .. } = &mut self.phase {
                *retry_at = now;
            }
        }
        self.finish(now);
    }

    fn install_grant(&mut self, now: Time, grant: JoinGrant<S>) -> Result<(), JoinError> {
        let reports_made = self.keepalive_seq;
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
                // the suffix applied while installing is part of the handed-over state
                log.drain_applied();
                log.set_buffer_limits(self.config.gossip.causal_buffer);
                self.log = log;
                self.log_generation += 1;
                self.map = map;
                self.phase = Phase::Member { leaving_by: None };
                self.own_changed = true;
                self.last_report = now;
                self.next_anti_entropy =
                    now + jitter(&mut self.rng, self.config.gossip.anti_entropy_interval);
                self.next_failure_check = now + self.config.gossip.suspect_after;
                self.republish_retired(now);
                Ok(())
            }
            Err(e) => {
                self.stats.join_refusals += 1;
                Err(e)
            }
        }
    }

    /// After a rejoin: merges the previous incarnation's records, then applies its ops
    /// that the grant lacks and publishes them again, so ops created (or received) while
    /// cut off are not lost (I5).
    fn republish_retired(&mut self, now: Time) {
        let records = std::mem::take(&mut self.retired_records);
        self.on_records(now, &records);
        let retired = std::mem::take(&mut self.retired_ops);
        let before = self.log.applied().clone();
        for op in &retired {
            if op.seq > self.log.applied().get(&op.origin) {
                // an op whose deps the grant lacks waits in the causal buffer
                let _ = self.log.receive(op.clone());
            }
        }
        let applied = self.log.applied();
        let republish: Vec<_> = retired
            .into_iter()
            .filter(|op| op.seq > before.get(&op.origin) && op.seq <= applied.get(&op.origin))
            .collect();
        if republish.is_empty() {
            return;
        }
        self.stats.ops_republished += republish.len() as u64;
        self.after_apply();
        self.unpublished.extend(republish);
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
        if self.is_member() && self.map.snapshot_point() != self.log.stable_cut() {
            let sp = self.map.snapshot_point().clone();
            self.log.advance_stable(&sp);
        }
        if let Phase::Member {
            leaving_by: Some(deadline),
        } = self.phase
        {
            // drained: every member has this node's ops, and every joiner it registered has
            // reported by itself
            let drained = self.unpublished.is_empty()
                && self.map.snapshot_point().get(&self.id) >= self.log.applied().get(&self.id)
                && !join_protocol::has_unconfirmed_registrations(&self.map);
            if drained || now >= deadline {
                self.announce_left(now);
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
            Phase::Joining { retry_at, .. } => match self.awaited_grant {
                Some(_) => Some((*retry_at).min(self.next_keepalive)),
                None => Some(*retry_at),
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

/// `base` ± 10%, so periodic work of many nodes does not synchronise.
fn jitter(rng: &mut ChaCha8Rng, base: Duration) -> Duration {
    let micros = base.as_micros() as u64;
    let spread = micros / 10;
    Duration::from_micros(micros - spread + rng.random_range(0..=2 * spread))
}

#[cfg(test)]
mod tests;
