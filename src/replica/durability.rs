//! Durability: what a replica keeps on disk ([`Checkpoint`], [`DurableImage`]) and how it
//! comes back from it — after a crash or a stop ([`Replica::resume`], [`Replica::restart`]),
//! or from a backup under a new identity ([`Replica::resume_from_backup`]). A node that
//! comes back rejoins through the handshake and republishes what the network lacks; its
//! own-op counter ([`OwnOps`]) comes back with it, so that no op id is given twice.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Phase, Replica, ReplicaConfig};
use crate::join_protocol::Joiner;
use crate::network_map::membership::Membership;
use crate::network_map::view::{Memberships, View, Votes};
use crate::network_map::{MemberRecord, MemberState, NetworkMap};
use crate::node_id::NodeId;
use crate::ops_log::{Op, OpsLog, OwnOps, StateMachine};
use crate::time::Time;
use crate::version_vector::VersionVector;

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
    /// This node's acceptor state in the agreement on views: it keeps its seat's promises
    /// across a restart. Storage keeps the newest apart from the header (it is written
    /// whenever it changes, before the node answers); absent in a data dir of a node that
    /// never voted.
    #[serde(default)]
    pub votes: Option<Votes>,
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

impl<S: StateMachine> Replica<S> {
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
            votes: Some(self.membership.views().votes()),
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
            votes: c.votes,
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
        replica.handover.keep(retired, checkpoint.records);
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
            DurablePhase::Member | DurablePhase::Left => (Phase::Member { leaving: None }, true),
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
        if let Some(votes) = checkpoint.votes {
            replica.membership = Membership::resume(replica.id.clone(), replica.incarnation, votes);
            replica.plant_in_views();
        }
        if rejoin && replica.map.counted_peers().is_empty() {
            // the only member: nobody can have moved on without it
            let applied = replica.log.applied().clone();
            replica
                .map
                .report_own(applied, now, |own| own.state = MemberState::Alive);
            replica.dissemination.own_record_changed();
            // its view is itself alone (what it stored could still name members it has
            // since evicted): the next epoch, so that no stored promise is contradicted
            let members = Memberships::unit(replica.id.clone(), replica.incarnation);
            let epoch = replica.membership.view().epoch + 1;
            replica.found_view(View { epoch, members });
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
        self.dissemination.restart(now);
        self.awaited.clear();
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
