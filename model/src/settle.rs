//! The L1 check (SPEC §3 L1, and I5 for fault-free continuations): from a model state,
//! rebuild every running replica and continue with no more faults — every in-flight message
//! delivered in order, wake-ups fired in time order on one shared clock — for a bounded
//! window, and require that every member's applied vector and snapshot point reach the
//! union of all applied ops, and stay there until the window ends.

use std::collections::VecDeque;
use std::time::Duration;

use tidemark::ops_log::LwwMap;
use tidemark::replica::{Action, Replica};
use tidemark::{Time, VersionVector};

use crate::model::{ModelState, TidemarkModel};
use crate::node::{self, Msg};

/// How long after the start of the continuation every member converged, or why not.
pub fn settle(
    model: &TidemarkModel,
    state: &ModelState,
    window: Duration,
) -> Result<Duration, String> {
    let mut replicas: Vec<Option<Replica<LwwMap>>> = state
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.running()
                .then(|| model.setups[i].rebuild(n.start, &n.history))
        })
        .collect();
    let mut wakes: Vec<Option<Time>> = state.nodes.iter().map(|n| n.wake).collect();
    let mut queue: VecDeque<(usize, usize, Msg)> = state
        .network
        .iter()
        .map(|m| (m.from, m.to, m.message.clone()))
        .collect();
    let start = state
        .nodes
        .iter()
        .filter(|n| n.running())
        .map(|n| n.time)
        .max()
        .unwrap_or(Time::ZERO);
    let end = start + window;
    let mut now = start;
    let mut converged_at: Option<Time> = None;
    loop {
        match (converged(&replicas), converged_at) {
            (Ok(()), None) => converged_at = Some(now),
            (Err(why), Some(at)) => {
                return Err(format!(
                    "converged at +{} ms, then no longer at +{} ms: {why}",
                    at.since(start).as_millis(),
                    now.since(start).as_millis()
                ))
            }
            _ => {}
        }
        let i = if let Some((from, to, message)) = queue.pop_front() {
            let Some(replica) = replicas[to].as_mut() else {
                continue;
            };
            replica.handle_message(now, &model.ids[from], &message);
            to
        } else {
            let next = wakes
                .iter()
                .enumerate()
                .filter(|(i, _)| replicas[*i].is_some())
                .filter_map(|(i, w)| w.map(|t| (t, i)))
                .min();
            match next {
                Some((t, i)) if t <= end => {
                    now = now.max(t);
                    wakes[i] = None;
                    replicas[i]
                        .as_mut()
                        .expect("only running nodes wake")
                        .handle_timeout(now);
                    i
                }
                _ => break,
            }
        };
        let replica = replicas[i].as_mut().expect("a running node acted");
        let actions = node::actions(replica);
        replica.drain_applied_ops();
        replica.drain_installed_views();
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    if let Some(j) = model.ids.iter().position(|id| *id == to) {
                        queue.push_back((i, j, message));
                    }
                }
                Action::Publish { message } => {
                    for j in (0..replicas.len()).filter(|&j| j != i) {
                        queue.push_back((i, j, message.clone()));
                    }
                }
                Action::ScheduleWake { at } => wakes[i] = Some(at),
            }
        }
    }
    match (converged(&replicas), converged_at) {
        (Ok(()), Some(at)) => Ok(at.since(start)),
        (Err(why), _) => Err(format!(
            "not converged {} ms after faults stopped: {why}",
            window.as_millis()
        )),
        (Ok(()), None) => unreachable!("convergence is checked before every event"),
    }
}

/// Every running node has joined (or left), and every member has applied, and holds
/// inside its snapshot point, the union of what any node applied.
fn converged(replicas: &[Option<Replica<LwwMap>>]) -> Result<(), String> {
    let mut union = VersionVector::new();
    for r in replicas.iter().flatten() {
        union.join(r.applied());
    }
    for (i, r) in replicas.iter().enumerate() {
        let Some(r) = r else { continue };
        if r.has_left() {
            continue;
        }
        if !r.is_member() {
            return Err(format!("n{i} has not joined"));
        }
        if *r.applied() != union || *r.snapshot_point() != union {
            return Err(format!(
                "n{i} A={:?} SP={:?}, union {union:?}",
                r.applied(),
                r.snapshot_point()
            ));
        }
    }
    Ok(())
}
