//! The join handshake (SPEC §4, the join race): a joiner asks a sponsor directly, never
//! through gossip, so the sponsor knows exactly what state the joiner starts from.
//!
//! ## Mechanism
//! 1. The joiner sends [`JoinRequest`] `{joiner, incarnation}` to its bootstrap peer.
//! 2. The sponsor, **before replying**, registers the joiner in its network map: a record of
//!    the joiner with `report_seq` 0, `applied` = the sponsor's applied vector (the *join
//!    cut*), and a [`Sponsorship`] naming the sponsor, its incarnation and the registration's
//!    number. It then re-issues its own record with `registrations` raised to that number.
//! 3. The sponsor replies with a [`JoinGrant`]: its stable state at its snapshot point, the
//!    op suffix up to its applied vector (so the joiner starts exactly at the join cut), and
//!    every record of its network map.
//! 4. A large stable state does not travel in the grant: the node's driver replaces it by a
//!    [`StateOffer`] (a snapshot file's header and id), and the joiner fetches the snapshot
//!    by chunks, verifies it, and completes the install with
//!    [`JoinGrant::with_state`]. The core only ever installs a grant that holds its state.
//!
//! ## Why no node can decide past the joiner
//! Every later record of the sponsor states `registrations ≥ n`. A network map adopts a
//! record only once it knows every registration that record counts (`network_map`), so any
//! node that uses the sponsor's post-registration applied vector also counts the joiner, at
//! a lower bound of at most the join cut. Any snapshot point decided before that used a
//! pre-registration record of the sponsor, which is ≤ the join cut, because the sponsor's
//! applied vector only grows. Hence `SP(n) ≤ join cut ≤ A(joiner)` for every node n: the
//! joiner starts at or above every snapshot point any node could have decided (I3).
//!
//! A retried request (the grant was lost) is granted again with the sponsor's current
//! state, which is at or above the registered cut, so the registration stays a lower bound.
//!
//! Pure functions over the ops log and the network map: no I/O.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gossip::{OpsBatch, Records};
use crate::network_map::{MemberRecord, MemberState, MergeOutcome, NetworkMap, Sponsorship};
use crate::node_id::NodeId;
use crate::ops_log::{InstallError, OpAuthenticator, OpsLog, StateMachine};
use crate::snapshot::SnapshotHeader;
use crate::time::Time;
use crate::version_vector::VersionVector;

pub mod awaited;
mod joiner;
pub mod sponsor;
pub use joiner::{Ask, JoinProgress, Joiner};

/// A joiner's request to its sponsor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub joiner: NodeId,
    pub incarnation: u64,
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// Everything a joiner needs to start at the join cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinGrant<S: StateMachine> {
    /// The joiner's registration as the sponsor recorded it (its `applied` is the join cut).
    pub registration: Arc<MemberRecord>,
    pub stable_state: HandedOverState<S>,
    pub stable_cut: VersionVector,
    pub lamport: u64,
    /// The ops between the stable cut and the join cut, in causal order.
    pub suffix: OpsBatch<S::Op>,
    /// Every record of the sponsor's network map.
    pub members: Records,
    /// The sponsor's installed membership view.
    #[serde(default)]
    pub view: crate::network_map::view::View,
}

/// The stable state a grant hands over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum HandedOverState<S: StateMachine> {
    /// In the grant itself.
    Inline(S),
    /// As a snapshot the joiner fetches by chunks (from the sponsor, or any node holding a
    /// snapshot with the same id).
    Snapshot(StateOffer),
}

/// A snapshot offered for a state transfer: its id in the offering node's snapshot store,
/// and its header (which the joiner verifies every chunk against).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateOffer {
    pub snapshot_id: String,
    pub header: SnapshotHeader,
}

impl<S: StateMachine> JoinGrant<S> {
    /// The snapshot this grant's state is to be fetched as, if it is not inline.
    pub fn offer(&self) -> Option<&StateOffer> {
        match &self.stable_state {
            HandedOverState::Snapshot(offer) => Some(offer),
            HandedOverState::Inline(_) => None,
        }
    }

    /// The grant with its state in place (after a transfer).
    pub fn with_state(mut self, state: S) -> Self {
        self.stable_state = HandedOverState::Inline(state);
        self
    }
}

/// The sponsor's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum JoinResponse<S: StateMachine> {
    Granted(JoinGrant<S>),
    Refused {
        reason: String,
        /// Members in good standing the joiner may ask instead; empty when the refuser
        /// knows none.
        #[serde(default)]
        suggestions: Vec<NodeId>,
        /// The incarnation at which the refuser already knows the joiner, when that is
        /// why it refused: the joiner asks again with a higher one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_incarnation: Option<u64>,
    },
    /// The sponsor registered the joiner at `incarnation` and is writing a snapshot of
    /// its stable state to offer (too large to send inline); the grant follows once the
    /// file is written. The joiner keeps its incarnation and asks again only after
    /// `join_retry_max`: a joiner that took this silence for a dead sponsor would ask with a
    /// new incarnation, and the sponsor would write a snapshot for that one too.
    Preparing {
        incarnation: u64,
    },
}

/// Why a join could not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("a node cannot sponsor itself")]
    SelfSponsor,
    #[error(
        "{joiner} is already a member with incarnation {incarnation}; rejoin with a higher one"
    )]
    AlreadyMember { joiner: NodeId, incarnation: u64 },
    #[error("the grant registers {registered}, not this node")]
    NotForMe { registered: NodeId },
    #[error("the handed-over state ends at {installed:?}, below the registered cut {cut:?}")]
    BelowCut {
        installed: VersionVector,
        cut: VersionVector,
    },
    #[error("the grant's state has not been fetched yet")]
    StateNotHere,
    #[error("the grant offers no state to fetch")]
    NothingToFetch,
    #[error("cannot install the handed-over state: {0}")]
    Install(#[from] InstallError),
}

/// Whether `map` (owned by a sponsor) holds a registration of `request`'s joiner made by
/// the sponsor and not yet superseded by a report of the joiner itself.
pub fn is_pending_registration(map: &NetworkMap, request: &JoinRequest) -> bool {
    map.get(&request.joiner).is_some_and(|entry| {
        entry.record.incarnation == request.incarnation
            && entry.record.report_seq == 0
            && entry
                .record
                .sponsor
                .as_ref()
                .is_some_and(|s| &s.sponsor == map.me())
    })
}

/// Whether any joiner this node registered has not reported by itself yet (its
/// registration, at the join cut, still bounds every snapshot point).
pub fn has_unconfirmed_registrations(map: &NetworkMap) -> bool {
    let me = map.own().record.clone();
    map.iter().any(|(_, entry)| {
        entry.record.report_seq == 0
            && entry
                .record
                .sponsor
                .as_ref()
                .is_some_and(|s| s.sponsor == me.id && s.sponsor_incarnation == me.incarnation)
    })
}

/// Sponsor side: registers the joiner in `map` (whose owner is the sponsor), then builds
/// the grant. `addrs` are the sponsor's own listen addresses for its re-issued record.
pub fn register<S: StateMachine>(
    log: &mut OpsLog<S>,
    map: &mut NetworkMap,
    request: &JoinRequest,
    now: Time,
) -> Result<JoinGrant<S>, JoinError> {
    let sponsor = map.own().record.clone();
    if request.joiner == sponsor.id {
        return Err(JoinError::SelfSponsor);
    }
    let registration = match map.get(&request.joiner) {
        // A retry of a join this node already registered: grant again.
        Some(entry) if is_pending_registration(map, request) => entry.record.clone(),
        Some(entry) if entry.record.incarnation >= request.incarnation => {
            return Err(JoinError::AlreadyMember {
                joiner: request.joiner.clone(),
                incarnation: entry.record.incarnation,
            })
        }
        _ => {
            let reg_no = sponsor.registrations + 1;
            let registration = Arc::new(MemberRecord {
                id: request.joiner.clone(),
                incarnation: request.incarnation,
                state: MemberState::Alive,
                sponsor: Some(Sponsorship {
                    sponsor: sponsor.id.clone(),
                    sponsor_incarnation: sponsor.incarnation,
                    reg_no,
                }),
                report_seq: 0,
                applied: log.applied().clone(),
                registrations: 0,
                addrs: request.addrs.clone(),
                cut_off: false,
            });
            let outcome = map.merge(registration.clone(), now);
            debug_assert_eq!(outcome, MergeOutcome::Adopted);
            map.report_own(log.applied().clone(), now, |own| own.registrations = reg_no);
            registration
        }
    };
    log.advance_stable(map.snapshot_point());
    Ok(JoinGrant {
        registration,
        stable_state: HandedOverState::Inline(log.stable_state().clone()),
        stable_cut: log.stable_cut().clone(),
        lamport: log.lamport(),
        suffix: OpsBatch(log.unstable_ops()),
        members: Records(map.records()),
        view: Default::default(),
    })
}

/// Joiner side: installs a grant, giving the joiner's ops log and network map.
pub fn install<S: StateMachine>(
    grant: JoinGrant<S>,
    me: &NodeId,
    addrs: Vec<String>,
    reports_made: u64,
    now: Time,
    auth: Option<&dyn OpAuthenticator>,
) -> Result<(OpsLog<S>, NetworkMap), JoinError> {
    let registration = grant.registration;
    if &registration.id != me {
        return Err(JoinError::NotForMe {
            registered: registration.id.clone(),
        });
    }
    let HandedOverState::Inline(stable_state) = grant.stable_state else {
        return Err(JoinError::StateNotHere);
    };
    let log = OpsLog::install(
        stable_state,
        grant.stable_cut,
        grant.lamport,
        grant.suffix.0,
        auth,
    )?;
    if !registration.applied.le(log.applied()) {
        return Err(JoinError::BelowCut {
            installed: log.applied().clone(),
            cut: registration.applied.clone(),
        });
    }
    let own = MemberRecord {
        id: me.clone(),
        incarnation: registration.incarnation,
        state: MemberState::Alive,
        sponsor: registration.sponsor.clone(),
        // above the registration and any keepalive the joiner sent while fetching its
        // state, or the first report would be taken for a stale one
        report_seq: registration.report_seq.max(reports_made) + 1,
        applied: log.applied().clone(),
        registrations: 0,
        addrs,
        cut_off: false,
    };
    Ok((log, NetworkMap::load(own, grant.members.0, now)))
}

#[cfg(test)]
mod tests;
