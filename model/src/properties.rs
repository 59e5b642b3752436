//! The properties checked on every state: SPEC §3 invariants I1–I4 as `always`
//! properties, L1/I5 as an `always` property over quiescent states (a fault-free
//! continuation must converge, see [`crate::settle`]) and as a `sometimes` property, and
//! `sometimes` sanity properties so that a pass cannot be vacuous.
//!
//! "Members in good standing" are the nodes whose replica `is_member()` (joined, not yet
//! announced `Left`; a leaving node still counts) — crashed nodes included, until a view
//! decided on the path no longer seats them (their eviction). I6: no two views installed on
//! a path share an epoch (checked on transitions, see `model.rs`). The joiner counts in I3 from the moment a sponsor registered it, at its
//! registration cut (the state the sponsor hands it), until it is a member, then at its own
//! applied vector.
//!
//! stateright's `eventually` is not used: paths end at the time horizon, mostly before
//! anything could converge, so every such path would be a false counterexample.

use stateright::Property;
use tidemark::VersionVector;

use crate::model::{ModelState, Status, TidemarkModel};
use crate::scope::Scope;
use crate::settle;

pub const I1: &str = "I1 causal, exactly once";
pub const I2: &str = "I2 monotone, SP <= A";
pub const I3: &str = "I3 SP(n) <= A(m) for members in good standing";
pub const I4: &str = "I4 equal cuts have equal digests";
pub const I4_FOLDED: &str = "I4 stable state folded at the snapshot point";
pub const L1_SETTLE: &str = "L1/I5 quiescent crash-free states converge when faults stop";
pub const L1_REACHED: &str = "sometimes: every write is inside every member's snapshot point";
pub const JOINED: &str = "sometimes: the joiner becomes a member";
pub const SP_MOVES: &str = "sometimes: a snapshot point becomes non-empty";
pub const LEFT: &str = "sometimes: a founder announces Left";
pub const LOSS_HEALED: &str = "sometimes: every write is stable everywhere after a loss";
pub const I6: &str = "I6 one view per epoch";
pub const VIEW_CHANGED: &str = "sometimes: a view without the crashed member is decided";

/// Every property of the scope (the sanity ones only where the scope allows them).
pub fn all(scope: &Scope) -> Vec<Property<TidemarkModel>> {
    let mut properties = vec![
        Property::always(I1, |_, s| !violated(s, I1)),
        Property::always(I2, i2),
        Property::always(I3, i3),
        Property::always(I4, i4),
        Property::always(I4_FOLDED, i4_folded),
        Property::always(I6, |_, s| !violated(s, I6)),
        Property::sometimes(SP_MOVES, sp_moves),
        Property::sometimes(L1_REACHED, all_stable),
    ];
    if scope.settle.is_some() {
        properties.push(Property::always(L1_SETTLE, l1_settle));
    }
    if scope.joiner {
        properties.push(Property::sometimes(JOINED, joined));
    }
    if !scope.leavers.is_empty() && scope.membership_faults > 0 {
        properties.push(Property::sometimes(LEFT, |_, s: &ModelState| {
            s.nodes.iter().any(|n| n.left())
        }));
    }
    if scope.expect_view_change {
        properties.push(Property::sometimes(VIEW_CHANGED, view_changed));
    }
    if scope.losses > 0 {
        properties.push(Property::sometimes(LOSS_HEALED, |m, s: &ModelState| {
            s.lost && all_stable(m, s)
        }));
    }
    properties
}

fn violated(state: &ModelState, property: &str) -> bool {
    state
        .violation
        .as_ref()
        .is_some_and(|v| v.property == property)
}

fn i2(_: &TidemarkModel, state: &ModelState) -> bool {
    !violated(state, I2)
        && state
            .nodes
            .iter()
            .filter_map(|n| n.obs.as_ref())
            .all(|o| o.snapshot_point.le(&o.applied))
}

/// The applied vectors (or lower bounds) of every member in good standing, with the
/// registered joiner at its registration cut until it is a member.
fn counted(model: &TidemarkModel, state: &ModelState) -> Vec<VersionVector> {
    // a crashed member stays in good standing until a decided view no longer seats it
    let latest = state.views.values().next_back();
    let evicted = |k: usize| {
        state.nodes[k].status == Status::Crashed
            && latest.is_some_and(|v| !v.members.contains_key(&model.ids[k]))
    };
    let mut out: Vec<VersionVector> = state
        .nodes
        .iter()
        .enumerate()
        .filter(|(k, _)| !evicted(*k))
        .filter_map(|(_, n)| n.obs.as_ref())
        .filter(|o| o.member)
        .map(|o| o.applied.clone())
        .collect();
    if let Some(j) = model.scope.joiner_index() {
        let joiner = &state.nodes[j];
        if !joiner.member() && !joiner.left() {
            if let Some(cut) = &state.join_cut {
                out.push(cut.clone());
            }
        }
    }
    out
}

fn i3(model: &TidemarkModel, state: &ModelState) -> bool {
    let counted = counted(model, state);
    state
        .nodes
        .iter()
        .filter_map(|n| n.obs.as_ref())
        .filter(|o| o.member)
        .all(|o| counted.iter().all(|a| o.snapshot_point.le(a)))
}

fn i4(_: &TidemarkModel, state: &ModelState) -> bool {
    let observed: Vec<_> = state.nodes.iter().filter_map(|n| n.obs.as_ref()).collect();
    observed.iter().enumerate().all(|(k, a)| {
        observed[k + 1..]
            .iter()
            .all(|b| a.stable_cut != b.stable_cut || a.digest == b.digest)
    })
}

fn i4_folded(_: &TidemarkModel, state: &ModelState) -> bool {
    state
        .nodes
        .iter()
        .filter_map(|n| n.obs.as_ref())
        .filter(|o| o.member)
        .all(|o| o.stable_cut == o.snapshot_point)
}

fn sp_moves(_: &TidemarkModel, state: &ModelState) -> bool {
    state
        .nodes
        .iter()
        .filter_map(|n| n.obs.as_ref())
        .any(|o| o.member && !o.snapshot_point.is_empty())
}

fn joined(model: &TidemarkModel, state: &ModelState) -> bool {
    model
        .scope
        .joiner_index()
        .is_some_and(|j| state.nodes[j].member())
}

/// Every write was made, the joiner (if any) is a member, and every member's applied
/// vector and snapshot point equal the union of all applied ops.
pub fn all_stable(model: &TidemarkModel, state: &ModelState) -> bool {
    if state.nodes.iter().any(|n| n.writes_left > 0) {
        return false;
    }
    if !model
        .scope
        .joiner_index()
        .is_none_or(|j| state.nodes[j].member())
    {
        return false;
    }
    let mut union = VersionVector::new();
    for o in state.nodes.iter().filter_map(|n| n.obs.as_ref()) {
        union.join(&o.applied);
    }
    union.total() == model.scope.total_writes()
        && state
            .nodes
            .iter()
            .filter_map(|n| n.obs.as_ref())
            .filter(|o| o.member)
            .all(|o| o.applied == union && o.snapshot_point == union)
}

fn l1_settle(model: &TidemarkModel, state: &ModelState) -> bool {
    let Some(window) = model.scope.settle else {
        return true;
    };
    if !model.quiescent(state) || state.nodes.iter().any(|n| n.status == Status::Crashed) {
        return true;
    }
    match settle::settle(model, state, window) {
        Ok(took) => {
            crate::model::note_settle(model, took.as_micros() as u64);
            true
        }
        Err(_) => false,
    }
}

/// A view that seats none of the crashed nodes, decided after a crash.
fn view_changed(model: &TidemarkModel, state: &ModelState) -> bool {
    let crashed: Vec<usize> = (0..state.nodes.len())
        .filter(|&k| state.nodes[k].status == Status::Crashed)
        .collect();
    !crashed.is_empty()
        && state.views.values().any(|v| {
            crashed
                .iter()
                .all(|&k| !v.members.contains_key(&model.ids[k]))
        })
}
