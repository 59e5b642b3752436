//! A grant whose stable state arrives separately: the sponsor offered a snapshot instead
//! of putting a large state in the grant, and the driver fetches it by chunks. Until the
//! state is installed (or the fetch is given up) the joiner holds the grant, asks its
//! sponsor nothing more, and keeps its registration alive with keepalive reports.
//!
//! [`AwaitedGrant`] owns the held grant, the keepalive timer and the `report_seq` of the
//! reports made so far; the replica lends it the outbox and its generator. Part of the
//! sans-IO core.

use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::JoinGrant;
use crate::gossip::{GossipConfig, Message, OpsBatch, Records};
use crate::network_map::{MemberRecord, MemberState};
use crate::node_id::NodeId;
use crate::ops_log::StateMachine;
use crate::outbox::Outbox;
use crate::time::Time;

/// A held grant as its driver stores it, so that a joiner that restarts while the state is
/// fetched resumes the fetch under the same registration ([`AwaitedGrant::resume`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct HeldGrant<S: StateMachine> {
    pub sponsor: NodeId,
    pub grant: JoinGrant<S>,
    /// The `report_seq` of the last keepalive report made when this was taken.
    pub reports_made: u64,
}

/// Ops published while a held grant's state is fetched: the peer they came from, their
/// publisher (when the batch carried its report), and the ops.
pub type LiveOps<O> = (NodeId, Option<NodeId>, OpsBatch<O>);

/// A held grant given up or taken to install: sponsor, grant, and the live ops kept.
pub type TakenGrant<S> = (NodeId, JoinGrant<S>, Vec<LiveOps<<S as StateMachine>::Op>>);

/// The joiner's held grant and its keepalive (see module doc).
#[derive(Debug)]
pub struct AwaitedGrant<S: StateMachine> {
    /// The grant whose state is being fetched, and its sponsor.
    held: Option<(NodeId, JoinGrant<S>)>,
    /// When the next keepalive report is due.
    next_keepalive: Time,
    /// The `report_seq` of the last report made this way (it survives the grant: the
    /// installed record must come after it).
    reports_made: u64,
    /// Ops published while the state is fetched (sender, publisher, ops), applied after
    /// the install instead of pulled again; at most `causal_buffer.max_ops` of them.
    live_ops: Vec<LiveOps<S::Op>>,
    live_ops_len: usize,
}

impl<S: StateMachine> AwaitedGrant<S> {
    pub fn new(now: Time) -> Self {
        Self {
            held: None,
            next_keepalive: now,
            reports_made: 0,
            live_ops: Vec::new(),
            live_ops_len: 0,
        }
    }

    /// Holds `grant` from `sponsor` while its state is fetched; false if one is held
    /// already (a second offer is ignored).
    pub fn hold(
        &mut self,
        sponsor: NodeId,
        grant: JoinGrant<S>,
        now: Time,
        gossip: &GossipConfig,
    ) -> bool {
        if self.held.is_some() {
            return false;
        }
        self.held = Some((sponsor, grant));
        self.next_keepalive = now + gossip.heartbeat_interval;
        true
    }

    /// Holds a grant stored by a process that stopped while it fetched the grant's state.
    /// Keepalives go on above every report that process can have made: it stored
    /// `reports_made` when its fetch began, and a hold lasts at most
    /// `state_transfer_timeout`, one keepalive per `heartbeat_interval`; a lower
    /// `report_seq` would be taken for a stale report. The first is due at once.
    pub fn resume(&mut self, held: HeldGrant<S>, now: Time, gossip: &GossipConfig) {
        let per_hold = gossip
            .state_transfer_timeout
            .as_micros()
            .div_ceil(gossip.heartbeat_interval.as_micros().max(1)) as u64;
        self.reports_made = held.reports_made + per_hold + 1;
        self.held = Some((held.sponsor, held.grant));
        self.next_keepalive = now;
    }

    /// The held grant as a driver stores it to resume after a restart.
    pub fn to_store(&self) -> Option<HeldGrant<S>> {
        let (sponsor, grant) = self.held.as_ref()?;
        Some(HeldGrant {
            sponsor: sponsor.clone(),
            grant: grant.clone(),
            reports_made: self.reports_made,
        })
    }

    /// The held grant and its sponsor.
    pub fn get(&self) -> Option<(&NodeId, &JoinGrant<S>)> {
        let (sponsor, grant) = self.held.as_ref()?;
        Some((sponsor, grant))
    }

    /// Whether a grant is held.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Takes the held grant, with the ops kept while its state was fetched (oldest first),
    /// to install it or to give it up: the kept ops never outlive their grant.
    pub fn take(&mut self) -> Option<TakenGrant<S>> {
        let (sponsor, grant) = self.held.take()?;
        self.live_ops_len = 0;
        Some((sponsor, grant, std::mem::take(&mut self.live_ops)))
    }

    /// Drops the held grant (a restart: the fetch is gone with the process).
    pub fn clear(&mut self) {
        self.take();
    }

    /// Keeps ops published while the held grant's state is fetched, from `from` (by
    /// `publisher`, when the batch carried its report), up to `max_ops` in all: the ones
    /// beyond are dropped, to be pulled after the install like any missing op. Returns how
    /// many were kept. Nothing is kept while no grant is held.
    pub fn keep_live_ops(
        &mut self,
        from: &NodeId,
        publisher: Option<&NodeId>,
        ops: &OpsBatch<S::Op>,
        max_ops: usize,
    ) -> usize {
        if self.held.is_none() || ops.0.is_empty() {
            return 0;
        }
        let room = max_ops.saturating_sub(self.live_ops_len);
        let kept: Vec<_> = ops.0.iter().take(room).cloned().collect();
        if kept.is_empty() {
            return 0;
        }
        self.live_ops_len += kept.len();
        let n = kept.len();
        self.live_ops
            .push((from.clone(), publisher.cloned(), OpsBatch(kept)));
        n
    }

    /// The `report_seq` of the last keepalive report.
    pub fn reports_made(&self) -> u64 {
        self.reports_made
    }

    /// When the next keepalive is due, while a grant is held.
    pub fn keepalive_due(&self) -> Option<Time> {
        self.held.as_ref().map(|_| self.next_keepalive)
    }

    /// While the held grant's state is fetched, the joiner is registered but cannot report
    /// as members do (it has no state to report on), and a fetch of a large state
    /// outlasts `suspect_after` and `suspicion_timeout`. So it reports its registration
    /// again every `heartbeat_interval`, with a raised `report_seq` and the registration's
    /// `applied` (the join cut, which the state it installs reaches), to the sponsor and
    /// up to two other members; they adopt it as a fresh report (which also refutes a
    /// suspicion) and relay it. Its first report as a member comes after these. Returns
    /// whether a keepalive went out.
    pub fn send_keepalive(
        &mut self,
        now: Time,
        me: &NodeId,
        addrs: &[String],
        gossip: &GossipConfig,
        rng: &mut ChaCha8Rng,
        outbox: &mut Outbox<S>,
    ) -> bool {
        self.next_keepalive = now + gossip.heartbeat_interval;
        let Some((sponsor, grant)) = &self.held else {
            return false;
        };
        let registration = &grant.registration;
        self.reports_made = self.reports_made.max(registration.report_seq) + 1;
        let report = Arc::new(MemberRecord {
            state: MemberState::Alive,
            report_seq: self.reports_made,
            addrs: addrs.to_vec(),
            ..(**registration).clone()
        });
        let mut others: Vec<NodeId> = grant
            .members
            .0
            .iter()
            .filter(|r| r.state.counts() && r.id != *sponsor && r.id != *me)
            .map(|r| r.id.clone())
            .collect();
        let mut to = vec![sponsor.clone()];
        while to.len() < 3 && !others.is_empty() {
            to.push(others.swap_remove(rng.random_range(0..others.len())));
        }
        let message = Arc::new(Message::Status(Records(vec![report])));
        for peer in to {
            outbox.send_shared(peer, message.clone());
        }
        true
    }
}
