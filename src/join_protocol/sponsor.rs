//! The sponsor's side of the handshake: whether this node may register a joiner now, and
//! the answer it sends — a grant ([`register`](super::register)) or a refusal with
//! suggestions of other members to ask.
//!
//! [`Sponsor`] owns when this node's own membership began (a node that joined less than
//! `suspect_after` ago cannot know yet which members are alive). The ops log and the
//! network map, which a registration changes, are lent by the replica. Part of the sans-IO
//! core.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{is_pending_registration, register, JoinError, JoinRequest, JoinResponse};
use crate::gossip::GossipConfig;
use crate::network_map::view::View;
use crate::network_map::NetworkMap;
use crate::node_id::NodeId;
use crate::ops_log::{OpsLog, StateMachine};
use crate::time::Time;

/// A member's sponsor side (see module doc).
#[derive(Debug, Default)]
pub struct Sponsor {
    /// When this node's current membership was installed from a grant (`None` for a
    /// founder, and while not a member).
    joined_at: Option<Time>,
}

/// What answering a join request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SponsorOutcome {
    /// The joiner was registered (or its pending registration granted again).
    Granted,
    /// Refused because this node cannot vouch for the network now (cut off, or joined too
    /// recently); another member may grant it.
    Declined,
    /// Refused for any other reason.
    Refused,
}

/// What the sponsor side borrows from the replica for one request.
pub struct SponsorContext<'a, S: StateMachine> {
    pub gossip: &'a GossipConfig,
    pub log: &'a mut OpsLog<S>,
    pub map: &'a mut NetworkMap,
    pub rng: &'a mut ChaCha8Rng,
    /// Whether this node registers new joiners at all: a member that is not leaving.
    pub accepting: bool,
    /// Whether the last failure check heard from at most half of the members.
    pub isolated: bool,
}

impl Sponsor {
    /// This node's membership was installed from a grant at `now`.
    pub fn on_joined(&mut self, now: Time) {
        self.joined_at = Some(now);
    }

    /// This node is no longer a member.
    pub fn on_membership_lost(&mut self) {
        self.joined_at = None;
    }

    /// The answer to `request` from `from`, and what it did.
    pub fn answer<S: StateMachine>(
        &self,
        now: Time,
        from: &NodeId,
        request: &JoinRequest,
        ctx: SponsorContext<'_, S>,
    ) -> (JoinResponse<S>, SponsorOutcome) {
        let retry = is_pending_registration(ctx.map, request);
        let mut outcome = SponsorOutcome::Refused;
        let refusal = if &request.joiner != from {
            Some("a join request must come from the joiner itself")
        } else if retry {
            // a retry of a registration this node made is granted again, even while it
            // leaves or is cut off: the joiner must reach at least that cut
            None
        } else if !ctx.accepting {
            Some("this node is leaving the network")
        } else if let Some(reason) = self.cannot_sponsor_now(now, &request.joiner, &ctx) {
            outcome = SponsorOutcome::Declined;
            Some(reason)
        } else {
            None
        };
        let response = match refusal {
            Some(reason) => JoinResponse::Refused {
                reason: reason.into(),
                suggestions: if &request.joiner == from {
                    suggest_sponsors(ctx.map, ctx.rng)
                } else {
                    Vec::new()
                },
                member_incarnation: None,
            },
            None => match register(ctx.log, ctx.map, request, now) {
                Ok(grant) => {
                    outcome = SponsorOutcome::Granted;
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
        (response, outcome)
    }

    /// Why this member cannot register `joiner` now, if it cannot: it is cut off from most
    /// of the members it counts (a minority must not grow its view), or it joined less than
    /// `suspect_after` ago and cannot know yet which members are alive. A member it counts
    /// that rejoins with a new incarnation is always registered: that replaces a silent
    /// member by a live one and grows no view (refusing it could leave a two-member view
    /// waiting forever for the old incarnation).
    fn cannot_sponsor_now<S: StateMachine>(
        &self,
        now: Time,
        joiner: &NodeId,
        ctx: &SponsorContext<'_, S>,
    ) -> Option<&'static str> {
        if ctx.map.is_counted(joiner) {
            return None;
        }
        if ctx.isolated {
            return Some("this node hears from too few members to sponsor a join; ask another");
        }
        if self
            .joined_at
            .is_some_and(|at| now < at + ctx.gossip.suspect_after)
        {
            return Some(
                "this node joined too recently to know which members are alive; ask another",
            );
        }
        None
    }
}

/// A refusal from a node that cannot sponsor at all (it is joining itself), with
/// suggestions: the members it counts and those of the newest view it installed (a
/// rejoining node may have learned of members its map has no record of yet).
pub fn refusal<S: StateMachine>(
    reason: &str,
    map: &NetworkMap,
    view: &View,
    rng: &mut ChaCha8Rng,
) -> JoinResponse<S> {
    let mut candidates = map.counted_peers();
    candidates.extend(view.members.keys().cloned());
    candidates.sort();
    candidates.dedup();
    JoinResponse::Refused {
        reason: reason.into(),
        suggestions: pick_suggestions(candidates, &map.own().record.id, rng),
        member_incarnation: None,
    }
}

/// Up to three random members in good standing (as far as `map` knows), but the map's own
/// node, for a joiner it turns away.
fn suggest_sponsors(map: &NetworkMap, rng: &mut ChaCha8Rng) -> Vec<NodeId> {
    pick_suggestions(map.counted_peers(), &map.own().record.id, rng)
}

/// Up to three of `peers` but `me`, drawn at random.
fn pick_suggestions(mut peers: Vec<NodeId>, me: &NodeId, rng: &mut ChaCha8Rng) -> Vec<NodeId> {
    peers.retain(|p| p != me);
    let mut picked = Vec::new();
    while picked.len() < 3 && !peers.is_empty() {
        picked.push(peers.swap_remove(rng.random_range(0..peers.len())));
    }
    picked
}
