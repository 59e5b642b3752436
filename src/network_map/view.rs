//! Agreed membership views: which memberships vote, and how the network changes that set
//! without ever letting two groups decide on their own.
//!
//! A [`View`] is an epoch number and a set of memberships (node id, incarnation). The next
//! view is decided by a quorum — a strict majority — of the current one, with one instance
//! of single-decree Paxos per epoch ([`ViewAgreement`]). Two quorums of the same view
//! intersect, and an acceptor answers only for the view it has installed, so for every epoch
//! at most one next view is ever decided: one history of views. A minority side of a
//! partition cannot gather a quorum, so it never changes its view; it waits, which is safe.
//!
//! Any voter may propose (a ballot is a round and the proposer's id, so ballots are totally
//! ordered); which voter proposes first, and what it proposes, is the replica's policy.
//! A proposer that learns of an accepted value proposes that value, as Paxos requires, and
//! proposes its own change for the following epoch once that one is decided.
//!
//! A seat in the view belongs to a node id, and a node keeps its seat across rejoins and
//! restarts because it keeps its acceptor state ([`Votes`]): the driver stores it, in one
//! synced transaction, whenever [`ViewAgreement::vote_generation`] moves and before any
//! message of that event leaves, and a restarted node resumes with it. A node that lost its
//! disk comes back under a new id, without a seat; the view evicts its old id like any
//! silent member.
//!
//! Pure state machine: no I/O, time passed in, iteration in key order only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;
use crate::time::Time;

/// The memberships of a view: node id → incarnation. A persistent map: cloning it is
/// O(1), and the views made from one another by a few changes share the rest, so the
/// nodes (and a simulator's thousands of replicas) holding one history of views hold most
/// of it once.
pub type Memberships = imbl::OrdMap<NodeId, u64>;

/// A membership view: the memberships (id → incarnation) that vote on the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    pub members: Memberships,
}

impl View {
    /// The founders' view: epoch 1, every founder at incarnation 1.
    pub fn founding(founders: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            epoch: 1,
            members: founders.into_iter().map(|id| (id, 1u64)).collect(),
        }
    }

    /// Votes a decision needs: a strict majority of the members.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Whether `id` at `incarnation` is a member of this view.
    pub fn has(&self, id: &NodeId, incarnation: u64) -> bool {
        self.members.get(id) == Some(&incarnation)
    }
}

/// A member removed by a view change without having left: an eviction. It carries the
/// number of registrations of that membership the proposer knew, so that every node that
/// installs the view counts the same joiners of it (see `NetworkMap::evict_decided`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Eviction {
    pub id: NodeId,
    pub incarnation: u64,
    pub registrations: u64,
}

/// A view and the evictions that made it from the view before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    pub next: View,
    pub evicted: Vec<Eviction>,
}

/// A view change as it travels. Every node that takes part in deciding epoch `e` has
/// installed view `e − 1`, so the ballot's messages and the decision sent to that view's
/// members carry only the difference from it ([`ViewDelta`]): a few memberships instead of
/// the whole member list, which at a thousand members is about 40 kB a message, sent to
/// every member. A node that may not hold the view before (one that is behind, a member
/// the change admits) gets it whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOnWire {
    Whole(ViewChange),
    Delta(ViewDelta),
}

/// The change from one view to the next as its difference: the memberships added (or
/// re-added at another incarnation), the ids removed, the evictions, and a hash of the
/// view it applies to, so that a node holding another view at that epoch (only a forced
/// view can make one) refuses it instead of building a different view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDelta {
    pub epoch: u64,
    pub base: u64,
    pub added: Vec<(NodeId, u64)>,
    pub removed: Vec<NodeId>,
    pub evicted: Vec<Eviction>,
}

impl View {
    /// A 64-bit hash of the epoch and every membership, in id order: equal on every node
    /// that holds this view.
    pub fn fingerprint(&self) -> u64 {
        let mix = |h: u64, x: u64| {
            (h ^ x)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29)
                .wrapping_mul(0xbf58_476d_1ce4_e5b9)
        };
        let mut h = mix(0x7469_6465_6d61_726b, self.epoch);
        for (id, incarnation) in &self.members {
            h = mix(mix(h, id.key()), *incarnation);
        }
        h
    }
}

impl ChangeOnWire {
    /// `change` for a node that holds `base`: its difference from it, or whole if `base`
    /// is not the view before it.
    pub fn delta(base: &View, change: &ViewChange) -> Self {
        if change.next.epoch != base.epoch + 1 {
            return ChangeOnWire::Whole(change.clone());
        }
        let added = change
            .next
            .members
            .iter()
            .filter(|(id, incarnation)| base.members.get(*id) != Some(*incarnation))
            .map(|(id, incarnation)| (id.clone(), *incarnation))
            .collect();
        let removed = base
            .members
            .keys()
            .filter(|id| !change.next.members.contains_key(*id))
            .cloned()
            .collect();
        ChangeOnWire::Delta(ViewDelta {
            epoch: change.next.epoch,
            base: base.fingerprint(),
            added,
            removed,
            evicted: change.evicted.clone(),
        })
    }

    /// The epoch of the view it makes.
    pub fn epoch(&self) -> u64 {
        match self {
            ChangeOnWire::Whole(change) => change.next.epoch,
            ChangeOnWire::Delta(delta) => delta.epoch,
        }
    }

    /// The change, made from `installed` if it travels as a difference; `None` if that is
    /// not the view it applies to.
    pub fn resolve(&self, installed: &View) -> Option<ViewChange> {
        let delta = match self {
            ChangeOnWire::Whole(change) => return Some(change.clone()),
            ChangeOnWire::Delta(delta) => delta,
        };
        if delta.epoch != installed.epoch + 1 || delta.base != installed.fingerprint() {
            return None;
        }
        let mut members = installed.members.clone();
        for id in &delta.removed {
            members.remove(id);
        }
        for (id, incarnation) in &delta.added {
            members.insert(id.clone(), *incarnation);
        }
        Some(ViewChange {
            next: View {
                epoch: delta.epoch,
                members,
            },
            evicted: delta.evicted.clone(),
        })
    }
}

/// A Paxos ballot: ordered by round, then by proposer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    pub proposer: NodeId,
}

/// What nodes send each other to agree on the next view. `epoch` is always the epoch being
/// decided (the sender's installed epoch plus one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewMessage {
    /// Phase 1a: promise to ignore lower ballots for `epoch`.
    Prepare { epoch: u64, ballot: Ballot },
    /// Phase 1b: the promise, with the acceptor's accepted value for `epoch`, if any.
    Promise {
        epoch: u64,
        ballot: Ballot,
        accepted: Option<(Ballot, ChangeOnWire)>,
    },
    /// Phase 2a: accept `change` for `epoch`.
    Accept {
        epoch: u64,
        ballot: Ballot,
        change: ChangeOnWire,
    },
    /// Phase 2b.
    Accepted { epoch: u64, ballot: Ballot },
    /// The acceptor has promised a higher ballot.
    Outvoted { epoch: u64, promised: Ballot },
    /// A decided view: to every member after a decision (as a difference to the members
    /// of the view before), and whole to a node that is behind.
    Decided(ChangeOnWire),
}

impl ViewMessage {
    /// The epoch the message is about.
    pub fn epoch(&self) -> u64 {
        match self {
            ViewMessage::Prepare { epoch, .. }
            | ViewMessage::Promise { epoch, .. }
            | ViewMessage::Accept { epoch, .. }
            | ViewMessage::Accepted { epoch, .. }
            | ViewMessage::Outvoted { epoch, .. } => *epoch,
            ViewMessage::Decided(change) => change.epoch(),
        }
    }
}

/// What an acceptor must not forget across a restart: the view it installed, the highest
/// ballot it promised, and the value it accepted for the next epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Votes {
    pub view: View,
    pub promised: Option<Ballot>,
    pub accepted: Option<(Ballot, ViewChange)>,
}

/// A proposal this node is driving.
#[derive(Clone, Debug)]
struct Proposal {
    ballot: Ballot,
    /// What this node wants decided (used unless an acceptor reports an accepted value),
    /// as its policy last said; `None` once the policy wants nothing any more.
    wanted: Option<ViewChange>,
    phase: ProposalPhase,
    /// When to give up on this ballot and try a higher one.
    deadline: Time,
}

#[derive(Clone, Debug)]
enum ProposalPhase {
    Preparing {
        promises: BTreeMap<NodeId, Option<(Ballot, ViewChange)>>,
    },
    Accepting {
        change: ViewChange,
        accepted: BTreeSet<NodeId>,
    },
}

/// A view this node installed, with the view it replaced.
#[derive(Clone, Debug)]
pub struct Installed {
    pub before: View,
    pub change: ViewChange,
    /// Whether this node's own proposal decided it (rather than hearing of it).
    pub decided_here: bool,
    /// Whether it was forced by the operator, without a quorum.
    pub forced: bool,
}

/// One node's part in agreeing views: its installed view, its acceptor state for the next
/// epoch, and the proposal it drives, if any.
#[derive(Clone, Debug)]
pub struct ViewAgreement {
    me: NodeId,
    incarnation: u64,
    view: View,
    /// The change that made `view` (none for a founding view): sent to nodes that are behind.
    last_change: Option<ViewChange>,
    promised: Option<Ballot>,
    accepted: Option<(Ballot, ViewChange)>,
    proposal: Option<Proposal>,
    /// The highest round seen, so that the next ballot beats it.
    highest_round: u64,
    /// Views installed since the last `take_installed`, oldest first.
    installed: Vec<Installed>,
    /// Planted bug of the simulator's oracle tests: a decision counts one vote too few.
    short_quorum: bool,
    /// Raised whenever the acceptor state ([`Votes`]) changes.
    generation: u64,
}

impl ViewAgreement {
    /// `me` at `incarnation`, having installed `view`.
    pub fn new(me: NodeId, incarnation: u64, view: View) -> Self {
        Self {
            me,
            incarnation,
            view,
            last_change: None,
            promised: None,
            accepted: None,
            proposal: None,
            highest_round: 0,
            installed: Vec::new(),
            short_quorum: false,
            generation: 0,
        }
    }

    /// `me` at `incarnation`, resuming with the acceptor state it stored.
    pub fn resume(me: NodeId, incarnation: u64, votes: Votes) -> Self {
        let mut agreement = Self::new(me, incarnation, votes.view);
        agreement.promised = votes.promised;
        agreement.accepted = votes.accepted;
        agreement
    }

    /// The acceptor state to store (see [`ViewAgreement::vote_generation`]).
    pub fn votes(&self) -> Votes {
        Votes {
            view: self.view.clone(),
            promised: self.promised.clone(),
            accepted: self.accepted.clone(),
        }
    }

    /// Raised whenever [`ViewAgreement::votes`] changes: a driver stores the votes, synced,
    /// before it sends anything an event produced once this moved, because a promise or an
    /// acceptance forgotten in a crash could let two views be decided for one epoch.
    pub fn vote_generation(&self) -> u64 {
        self.generation
    }

    /// Plants the bug where a decision needs one vote fewer than a majority.
    pub fn plant_short_quorum(&mut self, on: bool) {
        self.short_quorum = on;
    }

    /// The installed view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The installed view as a change a node that is behind can install: the change that
    /// made it, or the view alone if it was founded or handed over.
    pub fn current_as_change(&self) -> ViewChange {
        match &self.last_change {
            Some(change) if change.next == self.view => change.clone(),
            _ => ViewChange {
                next: self.view.clone(),
                evicted: Vec::new(),
            },
        }
    }

    /// Whether this node holds a seat in the installed view.
    pub fn is_voter(&self) -> bool {
        self.view.members.contains_key(&self.me)
    }

    /// Whether a proposal of this node is under way.
    pub fn is_proposing(&self) -> bool {
        self.proposal.is_some()
    }

    /// This node now runs `incarnation` (a rejoin or restart). Its promises stand: they
    /// are its seat's, not its membership's.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// Views installed since the last call, oldest first.
    pub fn take_installed(&mut self) -> Vec<Installed> {
        std::mem::take(&mut self.installed)
    }

    /// When the proposal under way times out.
    pub fn deadline(&self) -> Option<Time> {
        self.proposal.as_ref().map(|p| p.deadline)
    }

    fn quorum(&self) -> usize {
        let q = self.view.quorum();
        if self.short_quorum {
            q.saturating_sub(1).max(1)
        } else {
            q
        }
    }

    /// Starts proposing `wanted` as the next view, giving the ballot until `now + patience`
    /// before a higher one is tried (callers jitter it, so that two proposers do not keep
    /// outbidding each other). Ignored unless this node votes and `wanted` is for the next
    /// epoch.
    pub fn propose(
        &mut self,
        now: Time,
        patience: Duration,
        wanted: ViewChange,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        if !self.is_voter() || wanted.next.epoch != self.view.epoch + 1 {
            return;
        }
        self.start_ballot(now, patience, wanted, out);
    }

    fn start_ballot(
        &mut self,
        now: Time,
        patience: Duration,
        wanted: ViewChange,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        let round = self.highest_round + 1;
        self.highest_round = round;
        let ballot = Ballot {
            round,
            proposer: self.me.clone(),
        };
        let epoch = self.view.epoch + 1;
        self.proposal = Some(Proposal {
            ballot: ballot.clone(),
            wanted: Some(wanted),
            phase: ProposalPhase::Preparing {
                promises: BTreeMap::new(),
            },
            deadline: now + patience,
        });
        let prepare = ViewMessage::Prepare { epoch, ballot };
        self.send_to_voters(prepare, out);
    }

    /// Sends `message` to every voter of the installed view; this node's own copy is
    /// handled at once.
    fn send_to_voters(&mut self, message: ViewMessage, out: &mut Vec<(NodeId, ViewMessage)>) {
        let voters: Vec<NodeId> = self.view.members.keys().cloned().collect();
        for id in voters {
            if id == self.me {
                let me = self.me.clone();
                self.on_message(&me, &message, out);
            } else {
                out.push((id, message.clone()));
            }
        }
    }

    /// The policy's latest word on the proposal under way (it asks again on every failure
    /// check): what a stalled ballot retries with, or `None` to give the proposal up when
    /// its ballot next needs a free choice or times out. Conditions change while a ballot
    /// waits — a partition heals, a silent member speaks again — and a retry must not
    /// evict on what was true when it started.
    pub fn refresh_wanted(&mut self, wanted: Option<ViewChange>) {
        let epoch = self.view.epoch + 1;
        if let Some(p) = &mut self.proposal {
            p.wanted = wanted.filter(|w| w.next.epoch == epoch);
        }
    }

    /// The proposal's ballot timed out: try again with a higher one, with what the policy
    /// last wanted (or give up if it wants nothing now), with `patience` for the new
    /// ballot.
    pub fn on_timeout(
        &mut self,
        now: Time,
        patience: Duration,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        let Some(p) = &self.proposal else {
            return;
        };
        if p.deadline > now {
            return;
        }
        let wanted = p.wanted.clone();
        self.proposal = None;
        if let (true, Some(wanted)) = (self.is_voter(), wanted) {
            self.start_ballot(now, patience, wanted, out);
        }
    }

    /// Installs a view decided elsewhere (a grant, a `Decided` message). Views at or
    /// below the installed epoch are ignored.
    pub fn install(&mut self, change: ViewChange) -> bool {
        self.install_as(change, false, false)
    }

    fn install_as(&mut self, change: ViewChange, decided_here: bool, forced: bool) -> bool {
        if change.next.epoch <= self.view.epoch {
            return false;
        }
        self.generation += 1;
        let before = std::mem::replace(&mut self.view, change.next.clone());
        self.last_change = Some(change.clone());
        self.promised = None;
        self.accepted = None;
        self.proposal = None;
        self.installed.push(Installed {
            before,
            change,
            decided_here,
            forced,
        });
        true
    }

    /// The operator's way out of a lost majority: installs the next view with
    /// `members` without any quorum, and tells every member of the old and new views.
    /// Safe only if the members left out are gone for good (see `Replica::force_new_view`).
    pub fn force(
        &mut self,
        members: Memberships,
        evicted: Vec<Eviction>,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        let change = ViewChange {
            next: View {
                epoch: self.view.epoch + 1,
                members,
            },
            evicted,
        };
        self.tell_decided(&change, out);
        self.install_as(change, true, true);
    }

    /// Sends the decided `change` (of the installed view) to the members of both views: as
    /// a difference to those of the installed one, whole to those it admits.
    fn tell_decided(&self, change: &ViewChange, out: &mut Vec<(NodeId, ViewMessage)>) {
        let delta = ChangeOnWire::delta(&self.view, change);
        let whole = ChangeOnWire::Whole(change.clone());
        let mut told: BTreeSet<NodeId> = self.view.members.keys().cloned().collect();
        told.extend(change.next.members.keys().cloned());
        told.remove(&self.me);
        for id in told {
            let held = self.view.members.contains_key(&id);
            let message = if held { delta.clone() } else { whole.clone() };
            out.push((id, ViewMessage::Decided(message)));
        }
    }

    /// The installed view, whole, for a node that is behind.
    pub fn current_as_message(&self) -> ViewMessage {
        ViewMessage::Decided(ChangeOnWire::Whole(self.current_as_change()))
    }

    /// A message from `from`.
    pub fn on_message(
        &mut self,
        from: &NodeId,
        message: &ViewMessage,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        if let ViewMessage::Decided(change) = message {
            // a difference to a view this node does not hold waits for the whole view,
            // which anti-entropy brings
            if let Some(change) = change.resolve(&self.view) {
                self.install(change);
            }
            return;
        }
        let epoch = message.epoch();
        let next = self.view.epoch + 1;
        if epoch <= self.view.epoch {
            // the sender is behind: tell it what was decided
            if matches!(
                message,
                ViewMessage::Prepare { .. } | ViewMessage::Accept { .. }
            ) {
                out.push((from.clone(), self.current_as_message()));
            }
            return;
        }
        if epoch > next {
            // this node is behind; the sender will tell it the view when it answers
            return;
        }
        match message {
            ViewMessage::Prepare { ballot, .. } => self.on_prepare(from, ballot, out),
            ViewMessage::Accept { ballot, change, .. } => {
                if let Some(change) = change.resolve(&self.view) {
                    self.on_accept(from, ballot, &change, out);
                }
            }
            ViewMessage::Promise {
                ballot, accepted, ..
            } => {
                // a promise whose accepted value cannot be made counts for nothing (Paxos
                // must not miss an accepted value)
                let accepted = match accepted {
                    None => Some(None),
                    Some((b, change)) => change.resolve(&self.view).map(|c| Some((b.clone(), c))),
                };
                if let Some(accepted) = accepted {
                    self.on_promise(from, ballot, &accepted, out);
                }
            }
            ViewMessage::Accepted { ballot, .. } => self.on_accepted(from, ballot, out),
            ViewMessage::Outvoted { promised, .. } => self.on_outvoted(promised),
            ViewMessage::Decided(_) => {}
        }
    }

    fn note_round(&mut self, ballot: &Ballot) {
        self.highest_round = self.highest_round.max(ballot.round);
    }

    /// The refusal an acceptor owes `ballot` when it promised a higher one.
    fn outvoted(&self, ballot: &Ballot) -> Option<ViewMessage> {
        let promised = self.promised.as_ref().filter(|p| *p > ballot)?;
        Some(ViewMessage::Outvoted {
            epoch: self.view.epoch + 1,
            promised: promised.clone(),
        })
    }

    fn on_prepare(&mut self, from: &NodeId, ballot: &Ballot, out: &mut Vec<(NodeId, ViewMessage)>) {
        self.note_round(ballot);
        if !self.is_voter() {
            return;
        }
        let epoch = self.view.epoch + 1;
        let reply = match self.outvoted(ballot) {
            Some(refusal) => refusal,
            None => {
                self.promised = Some(ballot.clone());
                self.generation += 1;
                ViewMessage::Promise {
                    epoch,
                    ballot: ballot.clone(),
                    accepted: self
                        .accepted
                        .as_ref()
                        .map(|(b, change)| (b.clone(), ChangeOnWire::delta(&self.view, change))),
                }
            }
        };
        self.reply(from, reply, out);
    }

    fn on_accept(
        &mut self,
        from: &NodeId,
        ballot: &Ballot,
        change: &ViewChange,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        self.note_round(ballot);
        if !self.is_voter() || change.next.epoch != self.view.epoch + 1 {
            return;
        }
        let epoch = self.view.epoch + 1;
        let reply = match self.outvoted(ballot) {
            Some(refusal) => refusal,
            None => {
                self.promised = Some(ballot.clone());
                self.accepted = Some((ballot.clone(), change.clone()));
                self.generation += 1;
                ViewMessage::Accepted {
                    epoch,
                    ballot: ballot.clone(),
                }
            }
        };
        self.reply(from, reply, out);
    }

    /// Sends an acceptor's reply; to itself, handled at once.
    fn reply(&mut self, to: &NodeId, reply: ViewMessage, out: &mut Vec<(NodeId, ViewMessage)>) {
        if *to == self.me {
            let me = self.me.clone();
            self.on_message(&me, &reply, out);
        } else {
            out.push((to.clone(), reply));
        }
    }

    /// The proposal an answer under `ballot` is for, if `from` holds a seat (answers of
    /// anyone else do not count towards a quorum).
    fn answered(&mut self, from: &NodeId, ballot: &Ballot) -> Option<&mut Proposal> {
        if !self.view.members.contains_key(from) {
            return None;
        }
        self.proposal.as_mut().filter(|p| p.ballot == *ballot)
    }

    fn on_promise(
        &mut self,
        from: &NodeId,
        ballot: &Ballot,
        accepted: &Option<(Ballot, ViewChange)>,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        let quorum = self.quorum();
        if !self.view.members.contains_key(from) {
            return;
        }
        let view = &self.view;
        let Some(p) = self.proposal.as_mut().filter(|p| p.ballot == *ballot) else {
            return;
        };
        let ProposalPhase::Preparing { promises } = &mut p.phase else {
            return;
        };
        promises.insert(from.clone(), accepted.clone());
        if promises.len() < quorum {
            return;
        }
        // Paxos: propose the value accepted at the highest ballot, if any, else our own
        let accepted = promises
            .values()
            .flatten()
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, c)| c.clone());
        let change = match (accepted, &p.wanted) {
            (Some(accepted), _) => Some(accepted),
            (None, Some(wanted)) => spare_promisers(wanted, promises, view),
            // the policy wants nothing now, and nothing was accepted
            (None, None) => None,
        };
        let Some(change) = change else {
            // nothing to decide (sparing the promisers may have left nothing): give up
            self.proposal = None;
            return;
        };
        p.phase = ProposalPhase::Accepting {
            change: change.clone(),
            accepted: BTreeSet::new(),
        };
        let accept = ViewMessage::Accept {
            epoch: self.view.epoch + 1,
            ballot: ballot.clone(),
            change: ChangeOnWire::delta(view, &change),
        };
        self.send_to_voters(accept, out);
    }

    fn on_accepted(
        &mut self,
        from: &NodeId,
        ballot: &Ballot,
        out: &mut Vec<(NodeId, ViewMessage)>,
    ) {
        let quorum = self.quorum();
        let Some(p) = self.answered(from, ballot) else {
            return;
        };
        let ProposalPhase::Accepting { change, accepted } = &mut p.phase else {
            return;
        };
        accepted.insert(from.clone());
        if accepted.len() < quorum {
            return;
        }
        let change = change.clone();
        // tell the old view and the new one (the admitted members learn they vote)
        self.tell_decided(&change, out);
        self.install_as(change, true, false);
    }

    fn on_outvoted(&mut self, promised: &Ballot) {
        self.note_round(promised);
        // a higher ballot is under way: let it run, and try again only if it stalls (the
        // proposal's deadline stays as it was)
    }
}

/// A free choice does not evict a seat that promised this very ballot: its promise proves
/// that it runs and hears the proposer, whatever the failure detector said when the
/// proposal was made. It keeps its seat at the incarnation the view holds. `None` when
/// sparing them leaves nothing to change.
fn spare_promisers(
    wanted: &ViewChange,
    promises: &BTreeMap<NodeId, Option<(Ballot, ViewChange)>>,
    view: &View,
) -> Option<ViewChange> {
    let mut change = wanted.clone();
    change.evicted.retain(|eviction| {
        let seat = view.members.get(&eviction.id);
        let spared = promises.contains_key(&eviction.id) && seat == Some(&eviction.incarnation);
        if spared {
            change
                .next
                .members
                .insert(eviction.id.clone(), eviction.incarnation);
        }
        !spared
    });
    let nothing_left =
        change != *wanted && change.next.members == view.members && change.evicted.is_empty();
    (!nothing_left).then_some(change)
}

#[cfg(test)]
mod tests;
