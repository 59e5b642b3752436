//! A replica: the sans-IO composer of the protocol's state machines — the ops log and the
//! own-op journal (`ops_log`), the network map, failure detection and the agreed
//! membership views (`network_map`: `Monitor`, `Membership`), the joiner and sponsor sides of the handshake (`join_protocol`: `Joiner`,
//! `AwaitedGrant`, `Sponsor`), dissemination (`gossip::Dissemination`), the aggregated
//! snapshot point (`network_map::aggregation`, taken in `aggregated.rs`), and, here, a
//! graceful leave (`Leave`), what a rejoin carries over (`Handover`) and durability
//! (`durability.rs`). Each owns its fields; the replica routes every event to them in a
//! fixed order, lends them what they need of each other, and keeps the phase (joining,
//! member, leaving, left) that decides which of them act.
//!
//! Drivers feed it events — [`Replica::handle_message`], [`Replica::handle_timeout`],
//! [`Replica::write`], [`Replica::leave`] — each with the current time, then drain
//! [`Replica::poll_action`]: send a message to a peer, publish one on the topic, or
//! schedule the next wake-up (a new `ScheduleWake` replaces the previous one; at that time
//! call `handle_timeout`). Outcomes leave as events: [`Replica::drain_applied_ops`],
//! [`Replica::drain_member_changes`], [`Replica::drain_rejected_ops`],
//! [`Replica::drain_evictions`], [`Replica::drain_installed_views`],
//! [`Replica::take_leave_failure`]. Its acceptor state on views ([`Replica::votes`]) must
//! be stored before the actions of the event that changed it are carried out
//! ([`Replica::vote_generation`]). The replica reads no clock and does no I/O; its
//! randomness comes from a seed.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gossip::dissemination::{self, Dissemination};
use crate::gossip::{AntiEntropyDigest, GossipConfig, Message, OpsBatch, Records, Repair};
use crate::join_protocol::awaited::{AwaitedGrant, HeldGrant};
use crate::join_protocol::sponsor::{self, Sponsor, SponsorContext, SponsorOutcome};
use crate::join_protocol::{
    self, JoinError, JoinGrant, JoinProgress, JoinRequest, JoinResponse, Joiner,
};
use crate::network_map::aggregation::{AggregateMessage, AggregationConfig};
use crate::network_map::membership::{Membership, Seat};
use crate::network_map::monitor::Monitor;
use crate::network_map::view::{Eviction, Installed, View, ViewMessage};
use crate::network_map::{MemberChange, MemberRecord, MemberState, MergeOutcome, NetworkMap};
use crate::node_id::NodeId;
use crate::ops_log::{
    Digest, Op, OpAuthenticator, OpError, OpsLog, OwnOps, Received, SignatureError, StateMachine,
    WriterRefused,
};
pub use crate::outbox::Action;
use crate::outbox::Outbox;
use crate::time::{jitter, Time};
use crate::version_vector::VersionVector;

/// Lends dissemination what it needs of the replica for one event (disjoint field borrows).
macro_rules! dissemination_ctx {
    ($replica:ident) => {
        dissemination::Context {
            gossip: &$replica.config.gossip,
            map: &mut $replica.map,
            applied: $replica.log.applied(),
            view_epoch: $replica.membership.view().epoch,
            rng: &mut $replica.rng,
            outbox: &mut $replica.outbox,
        }
    };
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
    /// Also aggregate the snapshot point (`network_map::aggregation`) next to the network
    /// map's, and expose it as [`Replica::aggregated_snapshot_point`]; it decides only with
    /// `aggregation_decides`. Nodes run it deciding, with its liveness; the simulator as
    /// asked. `None`: off.
    pub aggregation: Option<AggregationConfig>,
    /// With `aggregation`: the aggregated snapshot point is the snapshot point (what is
    /// folded, what the admission check and a leave compare with), and a change of the
    /// applied vector no longer re-issues the node's record in status.
    pub aggregation_decides: bool,
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
    /// Grants this joiner ignored because they registered an earlier incarnation of it
    /// (a sponsor's answer to a request it had already given up on).
    pub stale_grants: u64,
    pub joins_sponsored: u64,
    /// Suspicions this node raised (failure detection).
    pub suspicions_raised: u64,
    /// Evictions decided by this node's view proposals (or forced by its operator).
    pub evictions_issued: u64,
    /// Suspicions of this node that it refuted with a new report.
    pub refutations: u64,
    /// Times this node found itself evicted or stale and rejoined through the handshake.
    pub rejoins: u64,
    /// Ops republished after a rejoin because the new sponsor did not have them (I5).
    pub ops_republished: u64,
    /// State transfers given up (timed out, or the driver could not fetch the state).
    pub state_transfers_abandoned: u64,
    /// Ops received while a grant's state was being fetched, kept to be applied after the
    /// install.
    pub ops_kept_while_fetching: u64,
    /// Fetches given up because a member told this joiner that the registration they
    /// were for had been evicted.
    pub held_registrations_evicted: u64,
    /// Keepalive reports sent while a grant's state was being fetched.
    pub keepalives_sent: u64,
    /// Join requests this node refused to sponsor because it was cut off from most of the
    /// network, or had joined too recently to know who is alive.
    pub sponsorships_declined: u64,
    /// View changes this node's proposals decided.
    pub views_decided: u64,
    /// Views this node installed (decided here or elsewhere).
    pub views_installed: u64,
    /// Graceful leaves that gave up because this node's own ops did not become stable in
    /// time (the node stayed a member).
    pub leaves_failed: u64,
    /// Times the network showed an op of this node above the highest its data dir stored
    /// (the data dir was rolled back; see [`WriteRefused::DataDirBehind`]).
    pub own_seq_rollbacks: u64,
}

/// A received op this node did not take (see [`Replica::drain_rejected_ops`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedOp {
    pub origin: NodeId,
    pub seq: u64,
    /// The peer it came from (the propagation source on the topic).
    pub from: NodeId,
    pub reason: RejectReason,
}

/// The founding members of a network: their founding records and the founding view, built
/// once and shared by every replica founded from them ([`Replica::genesis_among`]).
#[derive(Clone, Debug)]
pub struct Founders {
    records: Vec<Arc<MemberRecord>>,
    view: View,
}

impl Founders {
    /// The founders `ids` (a repeated id counts once).
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let view = View::founding(ids);
        let records = view
            .members
            .keys()
            .map(|id| Arc::new(MemberRecord::founder(id.clone())))
            .collect();
        Self { records, view }
    }
}

/// Why a received op was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Already applied, waiting, or compacted: a replay, or a benign duplicate of
    /// overlapping repairs.
    Duplicate,
    /// Not applicable yet and refused by the causal buffer's limits.
    Refused,
    /// It carries no signature.
    Unsigned,
    /// Its signature is not its origin's over its content: forged or mutated.
    BadSignature,
    /// Its origin is not, and never was, a member of the network.
    NotMember,
    /// Its origin is not on this node's writers list.
    NotWriter,
    /// Malformed (a zero seq or Lamport time, a gap in its origin's deps).
    Invalid,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Duplicate,
        RejectReason::Refused,
        RejectReason::Unsigned,
        RejectReason::BadSignature,
        RejectReason::NotMember,
        RejectReason::NotWriter,
        RejectReason::Invalid,
    ];

    /// The reason as the node's metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Duplicate => "replayed",
            RejectReason::Refused => "refused",
            RejectReason::Unsigned => "unsigned",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::NotMember => "not_member",
            RejectReason::NotWriter => "not_writer",
            RejectReason::Invalid => "invalid",
        }
    }
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

#[derive(Debug, Clone)]
enum Phase {
    /// Asking sponsors for a grant (see [`Joiner`]).
    Joining(Joiner),
    Member {
        /// Set by `leave`: no more writes; `Left` is announced once the ops this node held
        /// are under its snapshot point (see [`Leave`]).
        leaving: Option<Leave>,
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
    outbox: Outbox<S>,
    journal: Vec<Arc<Op<S::Op>>>,
    /// Publishing, reporting, relaying and pulling: the gossip timing rules.
    dissemination: Dissemination<S::Op>,
    wake_announced: Option<Time>,
    /// Failure detection: suspicion, eviction, local health.
    monitor: Monitor,
    /// The agreed membership view and this node's part in changing it.
    membership: Membership,
    /// Views installed, for observers (journaled like applied ops).
    view_journal: Vec<Installed>,
    /// The sponsor side of the join handshake.
    sponsor: Sponsor,
    /// A graceful leave that gave up since the last [`Replica::take_leave_failure`].
    leave_failure: Option<LeaveFailed>,
    /// The snapshot point a planted bug (`CountsOneMemberTooFew`, `SuspectsLeaveTheMinimum`)
    /// computes instead.
    planted_sp: Option<VersionVector>,
    /// The ops and records of the previous membership, kept for the next grant.
    handover: Handover<S::Op>,
    /// Evictions adopted by the map, kept for observers when `journal_applied` is on.
    eviction_journal: Vec<(NodeId, u64)>,
    /// Changes of other members' standing adopted by the map, kept for observers when
    /// `journal_applied` is on.
    member_changes: Vec<MemberChange>,
    /// Ops received and not taken, kept for the driver when `journal_applied` is on.
    rejected_ops: Vec<RejectedOp>,
    /// A grant whose state the driver fetches (joining only), and its keepalive.
    awaited: AwaitedGrant<S>,
    /// How many times a grant replaced this replica's ops log. Within one generation each
    /// stable state is the one before with the newly stable ops folded in, which lets a
    /// store keep the stable state incrementally.
    log_generation: u64,
    /// The aggregated snapshot point, with `config.aggregation` (see `run_aggregation`).
    aggregated: AggregatedSnapshotPoint,
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
        let monitor = Monitor::new(first_failure_check, config.gossip.monitor_rings);
        let mut log = log;
        log.set_buffer_limits(config.gossip.causal_buffer);
        log.plant(config.planted);
        let mut map = map;
        map.plant(config.planted);
        let short_quorum = config.planted == Some(PlantedBug::ShortQuorum);
        let view_owner = id.clone();
        let mut replica = Self {
            id,
            incarnation,
            config,
            phase,
            log,
            own,
            map,
            rng,
            outbox: Outbox::default(),
            journal: Vec::new(),
            dissemination: Dissemination::new(now, first_ae),
            wake_announced: None,
            monitor,
            membership: Membership::new(view_owner, incarnation, View::default()),
            view_journal: Vec::new(),
            sponsor: Sponsor::default(),
            leave_failure: None,
            planted_sp: None,
            handover: Handover::default(),
            eviction_journal: Vec::new(),
            member_changes: Vec::new(),
            rejected_ops: Vec::new(),
            awaited: AwaitedGrant::new(now),
            log_generation: 0,
            aggregated: AggregatedSnapshotPoint::default(),
            stats: ReplicaStats::default(),
        };
        replica
            .membership
            .views_mut()
            .plant_short_quorum(short_quorum);
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
        let founders = Founders::new(members.iter().cloned().chain([id.clone()]));
        Self::genesis_among(id, &founders, config, seed, now)
    }

    /// Like [`Replica::genesis`], sharing the founders' records and view between replicas,
    /// as a simulator of many nodes does. `id` must be one of the founders.
    pub fn genesis_among(
        id: NodeId,
        founders: &Founders,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Self {
        let log = OpsLog::new();
        Self::founded(
            id,
            &founders.records,
            founders.view.clone(),
            log,
            config,
            seed,
            now,
        )
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
        let view = View::founding([id.clone()]);
        Self::founded(id, &[], view, log, config, seed, now)
    }

    /// A founding member starting from `log`, with the other founders' records and the
    /// founding view (which holds `id`).
    fn founded(
        id: NodeId,
        founders: &[Arc<MemberRecord>],
        view: View,
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
        map.compact();
        map.take_dirty();
        let own_ops = OwnOps::new(log.applied().get(&id));
        let mut replica = Self::with_parts(
            id,
            1,
            config,
            Phase::Member { leaving: None },
            map,
            log,
            own_ops,
            seed,
            now,
        );
        replica.found_view(view);
        replica
    }

    /// Starts from `view` as this node's installed view (a founder's, or a lone member's).
    fn found_view(&mut self, view: View) {
        self.membership = Membership::new(self.id.clone(), self.incarnation, view);
        self.plant_in_views();
    }

    /// Plants [`PlantedBug::ShortQuorum`] in the agreement on views, if configured.
    fn plant_in_views(&mut self) {
        let short = self.config.planted == Some(PlantedBug::ShortQuorum);
        self.membership.views_mut().plant_short_quorum(short);
    }

    /// The agreed view this node has installed.
    pub fn view(&self) -> &View {
        self.membership.view()
    }

    /// This node's acceptor state in the agreement on views, to store (see
    /// [`Replica::vote_generation`]).
    pub fn votes(&self) -> crate::network_map::view::Votes {
        self.membership.views().votes()
    }

    /// Moves whenever [`Replica::votes`] changes. A driver stores the votes, synced, before
    /// it carries out the actions of the event that moved it: a promise forgotten in a
    /// crash could let two views be decided for one epoch.
    pub fn vote_generation(&self) -> u64 {
        self.membership.views().vote_generation()
    }

    /// Whether this node hears from a quorum of its view's seats (itself included, if it
    /// votes) within `suspect_after`: if not, no view change can be decided where it is —
    /// the view lost its majority, or this node is on a minority side.
    pub fn hears_view_quorum(&self, now: Time) -> bool {
        let suspect_after = self.config.gossip.suspect_after;
        self.membership
            .hears_quorum(now, &self.map, &self.id, suspect_after)
    }

    /// Views this node installed since the last call, oldest first (journaled only with
    /// `journal_applied`).
    pub fn drain_installed_views(&mut self) -> Vec<Installed> {
        std::mem::take(&mut self.view_journal)
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

    /// A node that joins through the first of `sponsors` that does not refuse it. With no
    /// sponsors it asks no one until [`add_bootstrap_peers`](Self::add_bootstrap_peers)
    /// brings some (a driver learning its bootstrap peers' ids by dialling their addresses).
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

    /// A joiner that stopped while it fetched the state a grant offered, and stored that
    /// grant ([`Replica::held_grant`]): it holds the grant again under the same
    /// registration and incarnation, sends a keepalive at once, and asks no sponsor while
    /// its driver fetches the rest of the state. A fetch that fails, or outlasts
    /// `state_transfer_timeout`, asks the grant's sponsor again, then `sponsors`, as any
    /// join does.
    pub fn resuming_held_grant(
        id: NodeId,
        held: HeldGrant<S>,
        sponsors: Vec<NodeId>,
        config: ReplicaConfig,
        seed: u64,
        now: Time,
    ) -> Result<Self, JoinError> {
        if held.grant.registration.id != id {
            return Err(JoinError::NotForMe {
                registered: held.grant.registration.id.clone(),
            });
        }
        if held.grant.offer().is_none() {
            return Err(JoinError::NothingToFetch);
        }
        let incarnation = held.grant.registration.incarnation;
        let mut ask = vec![held.sponsor.clone()];
        ask.extend(sponsors.into_iter().filter(|s| *s != held.sponsor));
        let placeholder = MemberRecord {
            incarnation,
            ..MemberRecord::founder(id.clone())
        };
        let map = NetworkMap::new(placeholder, now);
        let mut joiner = Joiner::new(ask, now);
        joiner.hold(now + config.gossip.state_transfer_timeout);
        let mut replica = Self::with_parts(
            id,
            incarnation,
            config,
            Phase::Joining(joiner),
            map,
            OpsLog::new(),
            OwnOps::new(0),
            seed,
            now,
        );
        replica.awaited.resume(held, now, &replica.config.gossip);
        replica.send_keepalive(now);
        replica.finish(now);
        Ok(replica)
    }

    /// The grant whose offered state is being fetched, as a driver stores it to resume
    /// the fetch after a restart ([`Replica::resuming_held_grant`]).
    pub fn held_grant(&self) -> Option<HeldGrant<S>> {
        self.awaited.to_store()
    }

    /// The joiner's next request is due: asks its current sponsor (with a new incarnation
    /// if the joiner says so).
    fn ask_sponsor(&mut self, now: Time) {
        let Phase::Joining(joiner) = &mut self.phase else {
            return;
        };
        let (map, view, me) = (&self.map, self.membership.view(), &self.id);
        let Some(ask) = joiner.ask(now, &self.config.gossip, &mut self.rng, || {
            known_nodes(map, view, me)
        }) else {
            return;
        };
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
    /// Whether this member floods its own heartbeat, because the aggregation's liveness
    /// does not cover it (or the aggregation is off).
    pub fn floods_heartbeat(&self) -> bool {
        self.is_member() && self.dissemination.heartbeat()
    }

    pub fn is_member(&self) -> bool {
        matches!(self.phase, Phase::Member { .. })
    }

    /// Whether `leave` was called and `Left` is not yet announced.
    pub fn is_leaving(&self) -> bool {
        matches!(self.phase, Phase::Member { leaving: Some(_) })
    }

    /// Whether the node has announced that it left.
    pub fn has_left(&self) -> bool {
        matches!(self.phase, Phase::Left)
    }

    /// The members this node watches on the monitoring overlay (it probes them), in id
    /// order: at most `monitor_rings` of them.
    pub fn watched_members(&self) -> Vec<NodeId> {
        self.monitor.subjects().cloned().collect()
    }

    /// Whether the last failure check heard from at most half of the members in good
    /// standing: this node is then probably the one cut off, so it evicts no one, and it
    /// cannot vouch that it is still a member itself.
    pub fn is_isolated(&self) -> bool {
        self.monitor.is_isolated()
    }

    pub fn applied(&self) -> &VersionVector {
        self.log.applied()
    }

    /// The snapshot point as the network map decides it, or the aggregation with
    /// `aggregation_decides` (while joining: the stable cut).
    pub fn snapshot_point(&self) -> &VersionVector {
        if self.is_member() && self.aggregation_decides() {
            self.aggregated.deciding()
        } else if self.is_member() {
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

    /// Every change of another member's standing (joined, rejoined, suspected, no longer
    /// suspected, left, evicted) this node's map adopted since the last call, in order
    /// (only with `journal_applied`). The members a grant handed over are not changes:
    /// they are the view this node joined.
    pub fn drain_member_changes(&mut self) -> Vec<MemberChange> {
        std::mem::take(&mut self.member_changes)
    }

    /// Every received op this node did not take since the last call, with the peer it
    /// came from and why, in order (only with `journal_applied`).
    pub fn drain_rejected_ops(&mut self) -> Vec<RejectedOp> {
        std::mem::take(&mut self.rejected_ops)
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action<S>> {
        self.outbox.pop()
    }

    // ---- events --------------------------------------------------------------------

    /// A local write: creates the next op of this node, applies it, and queues it for
    /// publishing.
    pub fn write(&mut self, now: Time, payload: S::Op) -> Result<Arc<Op<S::Op>>, WriteRefused> {
        match self.phase {
            Phase::Joining(_) => return Err(WriteRefused::Joining),
            Phase::Member { leaving: Some(_) } => return Err(WriteRefused::Leaving),
            Phase::Left => return Err(WriteRefused::Left),
            Phase::Member { leaving: None } => {}
        }
        if !self.may_write(&self.id) {
            return Err(WriteRefused::NotWriter);
        }
        let reuse_seqs = self.config.planted == Some(PlantedBug::SeqReusedAfterRejoin);
        if let Some((stored, seen)) = self.own.rolled_back().filter(|_| !reuse_seqs) {
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
        self.dissemination
            .queue_own(op.clone(), now, &self.config.gossip);
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
            Phase::Member { leaving: Some(_) } => return Ok(()),
            Phase::Member { leaving: None } => {}
        }
        let leave = Leave::begin(
            now,
            &self.id,
            self.log.applied(),
            self.own.highest(),
            self.config.gossip.leave_drain_timeout,
        );
        self.phase = Phase::Member {
            leaving: Some(leave),
        };
        if self.config.planted == Some(PlantedBug::LeaveWithoutHandover) {
            self.dissemination.drop_unpublished();
            self.announce_left(now);
            self.finish(now);
            return Ok(());
        }
        self.dissemination.publish_soon(now);
        self.finish(now);
        Ok(())
    }

    /// The operator's way out of a majority loss: evicts, at once and without a majority,
    /// every member in good standing this node has not heard from for `suspect_after`,
    /// so that the survivors form the next view and their snapshot point moves again.
    /// Returns the evicted memberships.
    ///
    /// Only for when the silent members are known to be gone for good (their machines
    /// lost, say), like etcd's `--force-new-cluster`: if they are alive behind a partition,
    /// both sides now decide on their own, and when they meet again the side that is
    /// evicted loses its stable writes (split brain). The protocol never does this by
    /// itself: without it, a minority waits for the majority.
    pub fn force_new_view(&mut self, now: Time) -> Result<Vec<(NodeId, u64)>, WriteRefused> {
        match self.phase {
            Phase::Joining(_) => return Err(WriteRefused::Joining),
            Phase::Left => return Err(WriteRefused::Left),
            Phase::Member { .. } => {}
        }
        let mut evicted = Vec::new();
        for id in Monitor::silent_members(now, &self.map, &self.config.gossip) {
            let incarnation = self.map.get(&id).map(|e| e.record.incarnation);
            if self.map.evict(&id, now) {
                self.stats.evictions_issued += 1;
                evicted.extend(incarnation.map(|i| (id, i)));
            }
        }
        // the next view: this node and the members it still counts, without a quorum
        let mut members: crate::network_map::view::Memberships = self
            .map
            .iter()
            .filter(|(_, e)| e.record.state.counts())
            .map(|(id, e)| (id.clone(), e.record.incarnation))
            .collect();
        members.insert(self.id.clone(), self.incarnation);
        let evictions = evicted
            .iter()
            .map(|(id, incarnation)| Eviction {
                id: id.clone(),
                incarnation: *incarnation,
                registrations: self.map.get(id).map_or(0, |e| e.record.registrations),
            })
            .collect();
        let mut out = Vec::new();
        self.membership
            .views_mut()
            .force(members, evictions, &mut out);
        self.send_view_messages(out);
        self.monitor
            .reassess(now, &mut self.map, &self.config.gossip);
        self.finish(now);
        Ok(evicted)
    }

    /// A message from `from`.
    pub fn handle_message(&mut self, now: Time, from: &NodeId, message: &Message<S>) {
        if self.is_member() {
            self.map.heard_from(from, now);
            self.tell_if_evicted(now, from, message);
        }
        match message {
            // anyone that probes gets its answer, whatever this node's phase
            Message::Probe { round } => {
                self.send(from.clone(), Message::ProbeAck { round: *round });
            }
            Message::ProbeAck { round } => self.monitor.on_probe_ack(from, *round, now),
            _ => {}
        }
        if let Message::View(message) = message {
            // a seat votes whatever its node's phase (a rejoining node keeps its seat)
            let mut out = Vec::new();
            self.membership
                .views_mut()
                .on_message(from, message, &mut out);
            self.send_view_messages(out);
        }
        match (&self.phase, message) {
            (Phase::Joining(_), Message::JoinResponse(response)) => {
                self.on_join_response(now, from, response)
            }
            (Phase::Joining(_), Message::JoinRequest(_)) => {
                self.refuse_join(from, "this node has not joined the network yet")
            }
            (Phase::Joining(_), Message::Status(records)) => {
                self.on_status_while_fetching(now, &records.0)
            }
            (Phase::Joining(_), Message::Ops(published)) => {
                // the state is being fetched: these ops are applied once it is installed
                let publisher = published.report.as_ref().map(|r| &r.id);
                let max = self.config.gossip.causal_buffer.max_ops;
                let kept = self
                    .awaited
                    .keep_live_ops(from, publisher, &published.ops, max);
                self.stats.ops_kept_while_fetching += kept as u64;
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
                self.dissemination
                    .on_status_from(from, &self.map, &self.config.gossip);
                self.on_records(now, &records.0);
            }
            (Phase::Member { .. }, Message::Digest(digest)) => self.on_digest(from, digest),
            (Phase::Member { .. }, Message::Repair(repair)) => {
                self.on_records(now, &repair.records.0);
                self.on_ops(now, from, &repair.ops, None);
                if repair.more {
                    let digest = self.digest(false, false);
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
            (Phase::Member { .. }, Message::Aggregate(message)) => {
                if let Some(aggregation) = self.aggregated.aggregation_mut() {
                    aggregation.handle(now, from, message);
                }
            }
            // handled above, whatever the phase
            (
                Phase::Member { .. },
                Message::View(_) | Message::Probe { .. } | Message::ProbeAck { .. },
            ) => {}
        }
        self.finish(now);
    }

    /// A member told this joiner that the registration whose state it fetches is evicted
    /// (its keepalives stopped for longer than the failure detector waits: the process
    /// was down, or cut off). The fetch is for nothing: the joiner gives the grant up and
    /// asks again at once, with the next incarnation.
    fn on_status_while_fetching(&mut self, now: Time, records: &[Arc<MemberRecord>]) {
        let Some((_, grant)) = self.awaited.get() else {
            return;
        };
        let held = grant.registration.incarnation;
        let evicted = records
            .iter()
            .find(|r| r.id == self.id && r.incarnation >= held && r.state == MemberState::Evicted);
        let Some(evicted) = evicted else {
            return;
        };
        self.incarnation = self.incarnation.max(evicted.incarnation + 1);
        self.awaited.take();
        self.stats.state_transfers_abandoned += 1;
        self.stats.held_registrations_evicted += 1;
        if let Phase::Joining(joiner) = &mut self.phase {
            joiner.retry_now(now);
        }
        self.ask_sponsor(now);
    }

    fn refuse_join(&mut self, to: &NodeId, reason: &str) {
        let view = self.membership.view();
        let response = sponsor::refusal(reason, &self.map, view, &mut self.rng);
        self.send(to.clone(), Message::JoinResponse(Box::new(response)));
    }

    /// The wake-up time requested by the last `ScheduleWake` has come (or passed).
    pub fn handle_timeout(&mut self, now: Time) {
        self.wake_announced = None;
        if let Phase::Joining(joiner) = &mut self.phase {
            let due = joiner.retry_at() <= now;
            if due && self.awaited.take().is_some() {
                // the offered state did not arrive in time: ask the sponsor again
                self.stats.state_transfers_abandoned += 1;
                joiner.retry_now(now);
            }
            if !due && self.awaited.keepalive_due().is_some_and(|t| t <= now) {
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
            self.dissemination
                .on_timeout_left(now, dissemination_ctx!(self));
            self.finish(now);
            return;
        }
        let is_member = self.is_member();
        self.dissemination
            .on_timeout_reports(now, dissemination_ctx!(self), is_member);
        // a leaving node evicts no one: it is on its way out, and evicting the members that
        // hold back its snapshot point would let it leave a network with no member in it
        let may_evict = !self.is_leaving() && self.config.planted != Some(PlantedBug::NeverEvict);
        let checked = self.monitor.on_timeout(
            now,
            &mut self.map,
            &self.config.gossip,
            &mut self.rng,
            may_evict,
        );
        self.stats.suspicions_raised += checked.suspected;
        if let Some((round, subjects)) = &checked.probe {
            for subject in subjects {
                self.send(subject.clone(), Message::Probe { round: *round });
            }
        }
        if checked.ran {
            self.propose_view_change(now, &checked.overdue);
        }
        let patience = self.config.gossip.view_ballot_patience;
        let out = self.membership.on_timeout(now, patience, &mut self.rng);
        self.send_view_messages(out);
        let buffered = self.log.buffered_len() > 0;
        self.dissemination
            .on_timeout_pulls(now, dissemination_ctx!(self), buffered);
        if let Some(aggregation) = self.aggregated.aggregation_mut() {
            aggregation.on_timeout(now);
        }
        self.finish(now);
    }

    // ---- membership views -------------------------------------------------------------

    /// Puts to the view the change this node's map and failure detector call for, when it
    /// is this node's turn (see `view_policy`). `overdue`: suspects to evict.
    fn propose_view_change(&mut self, now: Time, overdue: &[NodeId]) {
        if !self.is_member() {
            return;
        }
        let gossip = &self.config.gossip;
        let out = self
            .membership
            .propose(now, &self.map, overdue, gossip, &mut self.rng);
        self.send_view_messages(out);
    }

    fn send_view_messages(&mut self, out: Vec<(NodeId, ViewMessage)>) {
        for (to, message) in out {
            self.send(to, Message::View(message));
        }
    }

    /// Acts on the views installed during this event: evicts what they evicted, and, if
    /// a view no longer holds this membership, leaves (a leave waiting for it) or rejoins.
    fn on_views_installed(&mut self, now: Time) {
        for installed in self.membership.views_mut().take_installed() {
            self.stats.views_installed += 1;
            if installed.decided_here {
                self.stats.views_decided += 1;
                self.stats.evictions_issued += installed.change.evicted.len() as u64;
            }
            if self.config.aggregation.is_some() {
                let evicted = installed.change.evicted.iter();
                self.aggregated
                    .views_evicted(evicted.map(|e| (e.id.clone(), e.incarnation)));
            }
            let seat =
                self.membership
                    .apply(&installed, now, &mut self.map, &self.id, self.incarnation);
            match seat {
                Seat::LeaveDecided if self.is_member() => self.announce_left(now),
                Seat::Lost if self.is_member() => self.lose_membership(now),
                _ => {}
            }
            if self.config.journal_applied {
                self.view_journal.push(installed);
            }
        }
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
            let received =
                self.log
                    .receive_admitted(op.clone(), self.config.auth.as_deref(), |_| admitted);
            let reason = match received {
                Ok(Received::Buffered) if op.origin == self.id => {
                    self.note_own_seq(op.seq);
                    continue;
                }
                Ok(Received::Applied(_)) | Ok(Received::Buffered) => continue,
                Ok(Received::Duplicate) => RejectReason::Duplicate,
                Ok(Received::Refused) => RejectReason::Refused,
                Err(OpError::Signature(SignatureError::Unsigned)) => RejectReason::Unsigned,
                Err(OpError::Signature(SignatureError::BadSignature)) => RejectReason::BadSignature,
                Err(OpError::Writer(WriterRefused::NotMember)) => RejectReason::NotMember,
                Err(OpError::Writer(WriterRefused::NotWriter)) => RejectReason::NotWriter,
                Err(_) => RejectReason::Invalid,
            };
            self.reject(op, from, reason);
        }
        self.after_apply();
        if self.log.buffered_len() > 0 {
            self.dissemination
                .on_ops_waiting(now, from, &self.config.gossip);
        }
    }

    /// Counts an op not taken, and journals it for the driver (with `journal_applied`).
    fn reject(&mut self, op: &Op<S::Op>, from: &NodeId, reason: RejectReason) {
        let stats = &mut self.stats;
        *match reason {
            RejectReason::Duplicate => &mut stats.ops_duplicate,
            RejectReason::Refused => &mut stats.ops_refused,
            RejectReason::Unsigned => &mut stats.ops_unsigned,
            RejectReason::BadSignature => &mut stats.ops_bad_signature,
            RejectReason::NotMember => &mut stats.ops_not_member,
            RejectReason::NotWriter => &mut stats.ops_not_writer,
            RejectReason::Invalid => &mut stats.ops_invalid,
        } += 1;
        if self.config.journal_applied {
            self.rejected_ops.push(RejectedOp {
                origin: op.origin.clone(),
                seq: op.seq,
                from: from.clone(),
                reason,
            });
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

    /// Some op of this node with seq `seq` exists: one above the highest its storage holds
    /// proves a rolled-back data dir (see [`OwnOps::note_exists`]).
    fn note_own_seq(&mut self, seq: u64) {
        if self.own.note_exists(seq) {
            self.stats.own_seq_rollbacks += 1;
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
                if record.report_seq >= self.map.own().record.report_seq
                    && !self.dissemination.own_report_pending() =>
            {
                self.stats.refutations += 1;
                self.dissemination.refute(now);
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
        self.monitor
            .tell_if_evicted(now, from, &self.map, &self.config.gossip, &mut self.outbox);
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
        if matches!(self.phase, Phase::Member { leaving: None }) {
            self.begin_rejoin(now);
        }
    }

    /// Starts a rejoin: keeps the applied ops that are not yet stable (to republish the
    /// ones the new sponsor lacks), raises the incarnation and asks up to three members
    /// this node knows in good standing, or any known node if there is none.
    fn begin_rejoin(&mut self, now: Time) {
        let mut candidates = self.map.counted_peers();
        if candidates.is_empty() {
            candidates = known_nodes(&self.map, self.membership.view(), &self.id);
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
        self.handover.keep(retired, self.map.records());
        self.dissemination.reset_for_rejoin();
        self.incarnation += 1;
        self.membership.set_incarnation(self.incarnation);
        self.sponsor.on_membership_lost();
        self.stats.rejoins += 1;
        self.phase = Phase::Joining(Joiner::new(sponsors, now));
        self.ask_sponsor(now);
    }

    fn on_digest(&mut self, from: &NodeId, digest: &AntiEntropyDigest) {
        self.map.note_applied(from, &digest.applied);
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
        // a compact digest names its records by their fingerprint: equal, nothing to
        // repair; else only the lists can tell who lacks what, and ours goes back
        let (records, behind, mismatch) = match digest.fingerprint {
            None => (
                self.map.newer_than(&digest.members),
                self.map.behind(&digest.members),
                false,
            ),
            Some(fingerprint) if fingerprint == self.map.fingerprint() => {
                (Vec::new(), false, false)
            }
            Some(_) => (Vec::new(), false, true),
        };
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
        if digest.initiator && (lacking_ops || behind || mismatch) {
            // after a mismatch ours goes as an initiator's: the peer repairs what we lack
            // and sends its list back if it lacks something
            let compact = digest.fingerprint.is_some() && !mismatch;
            let mine = self.digest(mismatch, compact);
            self.send(from.clone(), mine);
        }
        if self.is_member() && digest.view_epoch < self.membership.view().epoch {
            // the peer missed a view change: send it the installed view
            let current = self.membership.views().current_as_message();
            self.send(from.clone(), Message::View(current));
        }
    }

    fn on_join_request(&mut self, now: Time, from: &NodeId, request: &JoinRequest) {
        let ctx = SponsorContext {
            gossip: &self.config.gossip,
            log: &mut self.log,
            map: &mut self.map,
            rng: &mut self.rng,
            accepting: matches!(self.phase, Phase::Member { leaving: None }),
            isolated: self.monitor.is_isolated(),
        };
        let (mut response, outcome) = self.sponsor.answer(now, from, request, ctx);
        if let JoinResponse::Granted(grant) = &mut response {
            grant.view = self.membership.view().clone();
        }
        match outcome {
            SponsorOutcome::Granted => {
                self.stats.joins_sponsored += 1;
                self.dissemination.own_record_changed();
            }
            SponsorOutcome::Declined => self.stats.sponsorships_declined += 1,
            SponsorOutcome::Refused => {}
        }
        self.send(from.clone(), Message::JoinResponse(Box::new(response)));
    }

    fn on_join_response(&mut self, now: Time, from: &NodeId, response: &JoinResponse<S>) {
        let Phase::Joining(joiner) = &mut self.phase else {
            return;
        };
        if joiner.current() != Some(from) {
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
                let (map, view, me) = (&self.map, self.membership.view(), &self.id);
                let raise = joiner.refused(
                    now,
                    reason,
                    suggestions,
                    *member_incarnation,
                    self.incarnation,
                    me,
                    &self.config.gossip,
                    &mut self.rng,
                    || known_nodes(map, view, me),
                );
                if let Some(incarnation) = raise {
                    self.incarnation = incarnation;
                }
                return;
            }
            JoinResponse::Preparing { incarnation } => {
                // an answer about a request given up on says nothing about the current one
                if *incarnation == self.incarnation {
                    joiner.preparing(now, &self.config.gossip, &mut self.rng);
                }
                return;
            }
        };
        if grant.registration.incarnation != self.incarnation {
            // An answer to a request this joiner gave up on: the sponsor has registered the
            // incarnation asked with since (or will), and ignores reports of this one. Were
            // it installed, this node would report an incarnation the network has left
            // behind, and its registration, never reporting, would hold the snapshot point
            // at its join cut until it is evicted. The current request is answered later.
            self.stats.stale_grants += 1;
            return;
        }
        if grant.offer().is_some() {
            // the driver fetches the offered snapshot; until it is installed (or the
            // transfer is given up) the sponsor is not asked again
            if !self.awaited.is_held() {
                joiner.hold(now + self.config.gossip.state_transfer_timeout);
                self.awaited
                    .hold(from.clone(), grant, now, &self.config.gossip);
            }
            return;
        }
        self.awaited.clear();
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
        self.awaited.get()
    }

    /// The driver fetched and verified the awaited grant's state: install it. Fails when no
    /// grant awaits a state (it was given up meanwhile) or the grant does not install.
    pub fn install_transferred(&mut self, now: Time, state: S) -> Result<(), JoinError> {
        let Some((_, grant, live)) = self.awaited.take() else {
            return Err(JoinError::StateNotHere);
        };
        let installed = self.install_grant(now, grant.with_state(state));
        if installed.is_ok() {
            // the ops published while the state was fetched, less those the grant held
            for (from, publisher, ops) in live {
                let applied = self.log.applied();
                let fresh: Vec<_> = ops
                    .0
                    .into_iter()
                    .filter(|op| op.seq > applied.get(&op.origin))
                    .collect();
                if !fresh.is_empty() {
                    self.on_ops(now, &from, &OpsBatch(fresh), publisher.as_ref());
                }
            }
        }
        self.finish(now);
        installed
    }

    /// A keepalive report of the held registration (see [`AwaitedGrant::send_keepalive`]).
    fn send_keepalive(&mut self, now: Time) {
        let sent = self.awaited.send_keepalive(
            now,
            &self.id,
            &self.config.addrs,
            &self.config.gossip,
            &mut self.rng,
            &mut self.outbox,
        );
        if sent {
            self.stats.keepalives_sent += 1;
        }
    }

    /// The driver could not fetch the awaited state: ask the sponsor again now.
    pub fn abandon_transfer(&mut self, now: Time) {
        if self.awaited.take().is_some() {
            self.stats.state_transfers_abandoned += 1;
            if let Phase::Joining(joiner) = &mut self.phase {
                joiner.retry_now(now);
            }
        }
        self.finish(now);
    }

    fn install_grant(&mut self, now: Time, grant: JoinGrant<S>) -> Result<(), JoinError> {
        let reports_made = self.awaited.reports_made();
        // what the sponsor's records say this node had applied of its own ops: ops of this
        // node up to there exist, and their seqs are taken
        let view = grant.view.clone();
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
                self.phase = Phase::Member { leaving: None };
                self.membership.set_incarnation(self.incarnation);
                self.membership
                    .views_mut()
                    .install(crate::network_map::view::ViewChange {
                        next: view,
                        evicted: Vec::new(),
                    });
                self.dissemination
                    .on_joined(now, &self.config.gossip, &mut self.rng);
                self.monitor
                    .hold_until(now + self.config.gossip.suspect_after);
                self.sponsor.on_joined(now);
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
        let records = self.handover.take_records();
        self.on_records(now, &records);
        if self.config.planted == Some(PlantedBug::SeqReusedAfterRejoin) {
            self.handover.drop_ops();
            return;
        }
        let before = self.log.applied().clone();
        let own = self.own.above(before.get(&self.id)).cloned();
        // an op whose deps the grant lacks waits in the causal buffer (and an own op stays
        // in the journal for the next rejoin)
        let lacking = self.handover.lacking(&before, own);
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
        self.dissemination.republish(lacking, now);
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
        let in_view = self.membership.view().has(&self.id, self.incarnation);
        if !self.aggregation_decides() || !in_view {
            // the record carries the applied vector the map's snapshot point is made of;
            // with the aggregation deciding, that of a member no view admitted yet still
            // bounds every snapshot point (a joiner outside the view)
            self.dissemination.own_record_changed();
        }
        if self.config.journal_applied {
            self.journal.extend(applied);
        }
    }

    fn digest(&self, initiator: bool, compact: bool) -> Message<S> {
        dissemination::digest(
            self.log.applied(),
            &self.map,
            self.membership.view().epoch,
            initiator,
            compact,
        )
    }

    fn send(&mut self, to: NodeId, message: Message<S>) {
        self.outbox.send(to, message);
    }

    /// After every event: fold what became stable, announce a pending leave when it is
    /// time, then ask for the next wake-up.
    fn finish(&mut self, now: Time) {
        self.on_views_installed(now);
        let evictions = self.map.take_evictions();
        let changes = self.map.take_changes();
        if self.config.journal_applied {
            self.eviction_journal.extend(evictions);
            self.member_changes.extend(changes);
        }
        self.run_aggregation(now);
        if self.is_member() {
            match self.config.planted {
                Some(PlantedBug::CountsOneMemberTooFew) => {
                    self.planted_sp = Some(self.planted_minimum(|skipped, id, _| {
                        // every counted member but the first other one in id order
                        let skip = !*skipped && id != &self.id;
                        *skipped |= skip;
                        skip
                    }));
                }
                Some(PlantedBug::SuspectsLeaveTheMinimum) => {
                    self.planted_sp =
                        Some(self.planted_minimum(|_, _, state| state == MemberState::Suspect));
                }
                _ => {}
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
            leaving: Some(leave),
        } = &self.phase
        {
            let step = leave.step(
                now,
                self.snapshot_point(),
                self.dissemination.has_unpublished(),
                join_protocol::has_unconfirmed_registrations(&self.map),
            );
            let deadline = leave.deadline();
            match step {
                // a voter leaves through a view without it; without one by the deadline it
                // keeps its seat, and the leave fails
                LeaveStep::Announce if self.membership.views().is_voter() && now < deadline => {
                    if !self.membership.leave_ready() {
                        self.membership.set_leave_ready(true);
                        self.propose_view_change(now, &[]);
                    }
                }
                LeaveStep::Announce if self.membership.views().is_voter() => {
                    self.fail_leave();
                    if let Some(failure) = &mut self.leave_failure {
                        failure.seat_not_given_up = true;
                    }
                }
                LeaveStep::Announce => self.announce_left(now),
                LeaveStep::GiveUp => self.fail_leave(),
                LeaveStep::Wait => {}
            }
        }
        let next = self.next_deadline();
        if let Some(at) = next {
            let at = at.max(now);
            if self.wake_announced != Some(at) {
                self.wake_announced = Some(at);
                self.outbox.schedule_wake(at);
            }
        }
    }

    /// With `config.aggregation`: hands this node's aggregation its membership, view and
    /// contribution, sends what it has to send, and takes the aggregated snapshot point
    /// (see `aggregated.rs`).
    fn run_aggregation(&mut self, now: Time) {
        let Some(config) = &self.config.aggregation else {
            return;
        };
        if !self.is_member() {
            self.aggregated = AggregatedSnapshotPoint::default();
            return;
        }
        let planted = self.config.planted;
        let view = self.membership.view();
        let contribution = aggregated::contribution(
            &self.id,
            self.incarnation,
            self.log.applied(),
            &self.map,
            view,
            planted,
        );
        let outgoing = self.aggregated.update(
            now,
            aggregated::Inputs {
                config,
                me: &self.id,
                incarnation: self.incarnation,
                view,
                map: &self.map,
                contribution,
                applied: self.log.applied(),
                stable_cut: self.log.stable_cut(),
                planted,
            },
        );
        // a message to many recipients is one shared message (they come one after another)
        let mut last: Option<(Arc<AggregateMessage>, Arc<Message<S>>)> = None;
        for out in outgoing {
            let message = match &last {
                Some((aggregate, message)) if Arc::ptr_eq(aggregate, &out.message) => {
                    message.clone()
                }
                _ => {
                    let message = Arc::new(Message::Aggregate((*out.message).clone()));
                    last = Some((out.message.clone(), message.clone()));
                    message
                }
            };
            self.outbox.send_shared(out.to, message);
        }
        if self.config.aggregation_decides {
            let floor = self.aggregated.deciding().clone();
            self.map.set_admission_floor(Some(floor));
            if config.liveness {
                self.take_liveness(now);
            }
        }
    }

    /// With the aggregation's liveness: the members the aggregators heard are heard here,
    /// and this node floods its own heartbeat only while the aggregation does not cover it
    /// (see [`Aggregation::covered`](crate::network_map::aggregation::Aggregation::covered)).
    fn take_liveness(&mut self, now: Time) {
        let Some(aggregation) = self.aggregated.aggregation_mut() else {
            return;
        };
        let covered = aggregation.covered(now);
        for id in aggregation.take_heard() {
            self.map.heard_from(&id, now);
        }
        self.dissemination.set_heartbeat(!covered);
    }

    fn aggregation_decides(&self) -> bool {
        self.config.aggregation_decides && self.config.aggregation.is_some()
    }

    /// The snapshot point aggregated next to the map's (with `config.aggregation`; the
    /// empty cut otherwise, and while joining).
    /// The aggregation's groups and aggregators under this node's installed view (`None`
    /// without the aggregation).
    pub fn aggregation_layout(&self) -> Option<&crate::network_map::aggregation::Layout> {
        self.aggregated.aggregation().map(|a| a.layout())
    }

    pub fn aggregated_snapshot_point(&self) -> &VersionVector {
        self.aggregated.snapshot_point()
    }

    /// Gives up a leave (see [`LeaveFailed`]): the node stays a member.
    fn fail_leave(&mut self) {
        let Phase::Member {
            leaving: Some(leave),
        } = &self.phase
        else {
            return;
        };
        let failure = leave.failure(&self.id, self.snapshot_point());
        self.phase = Phase::Member { leaving: None };
        self.membership.set_leave_ready(false);
        self.stats.leaves_failed += 1;
        self.leave_failure = Some(failure);
    }

    /// A planted snapshot point: the minimum over the counted members that `skip` does not
    /// leave out (it is told whether it skipped one already), kept monotone so that only
    /// I3 can see the bug.
    fn planted_minimum(
        &self,
        mut skip: impl FnMut(&mut bool, &NodeId, MemberState) -> bool,
    ) -> VersionVector {
        let mut skipped = false;
        let mut min: Option<VersionVector> = None;
        for (id, entry) in self.map.iter() {
            if !entry.record.state.counts() || skip(&mut skipped, id, entry.record.state) {
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
        self.phase = Phase::Left;
        self.dissemination
            .announce_left(now, dissemination_ctx!(self));
    }

    fn next_deadline(&self) -> Option<Time> {
        match &self.phase {
            Phase::Joining(joiner) => match self.awaited.keepalive_due() {
                Some(keepalive) => Some(joiner.retry_at().min(keepalive)),
                None => Some(joiner.retry_at()),
            },
            Phase::Left => self
                .dissemination
                .status_due(&self.map, &self.config.gossip),
            Phase::Member { leaving } => [
                self.dissemination
                    .next_deadline(&self.map, &self.config.gossip),
                Some(self.monitor.next_check()),
                self.membership.views().deadline(),
                leaving.as_ref().map(Leave::deadline),
                self.aggregated.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }
}

/// Every node `map` holds a record of and every member of `view`, but `me`, in id order:
/// who a joiner that still holds its previous map can ask (a rejoining node may have
/// installed a view whose newest members its map has no record of yet).
fn known_nodes(map: &NetworkMap, view: &View, me: &NodeId) -> Vec<NodeId> {
    let known: BTreeSet<&NodeId> = map
        .iter()
        .map(|(id, _)| id)
        .chain(view.members.keys())
        .collect();
    known.into_iter().filter(|id| *id != me).cloned().collect()
}

mod aggregated;
use aggregated::AggregatedSnapshotPoint;
mod durability;
impl Replica<crate::ops_log::LwwMap> {
    /// Keeps the state's entries in `store`, which has just been given the stable state at
    /// the stable cut (see [`OpsLog::keep_in_store`]): memory keeps only what the store
    /// does not hold yet.
    pub fn keep_state_in_store(
        &mut self,
        store: Arc<dyn crate::ops_log::StoredEntries>,
        written: Option<&[String]>,
    ) {
        self.log.keep_in_store(store, written);
    }
}

pub use durability::{Checkpoint, DurableImage, DurablePhase, ResumeError};
mod handover;
use handover::Handover;
mod leave;
pub use leave::LeaveFailed;
use leave::{Leave, LeaveStep};
mod planted;
pub use planted::PlantedBug;

#[cfg(test)]
mod tests;
