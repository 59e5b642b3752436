//! What a node does with its snapshots besides storing them: takes the ones its schedule
//! asks for, answers whether each is `pending` or `final`, and applies retention. Shared by
//! the driver (which hands it the states to write when the snapshot point moves) and the
//! handle (the API); all file work happens on blocking threads.
//!
//! - A snapshot is *final* once the node's snapshot point covers its cut: snapshots of the
//!   stable state are final when written, snapshots of the applied state are pending until
//!   the snapshot point passes them.
//! - Retention keeps the most recent `keep` final snapshots (by height, then time) and
//!   never removes a pending one, one a transfer is reading, or one a schedule request in
//!   the book took (done requests included): those are kept, and not counted among the
//!   `keep`, until their request is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tracing::{info, warn};

use super::schedule::{Schedule, ScheduleBook, SnapshotOf, TakenSnapshot};
use super::snapshots::{SnapshotInfo, SnapshotStore};
use crate::ops_log::LwwMap;
use crate::snapshot::SnapshotError;
use crate::VersionVector;

/// A state to write, with the cut it is at.
pub type Cut = (LwwMap, VersionVector);

/// A snapshot point as the API shows it (origin in base58 → ops).
pub type PointJson = BTreeMap<String, u64>;

/// Whether the snapshot point `sp` covers `cut`.
pub fn covers(sp: &PointJson, cut: &PointJson) -> bool {
    cut.iter()
        .all(|(origin, n)| sp.get(origin).copied().unwrap_or(0) >= *n)
}

/// A request as `GET /v1/snapshots/requests/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct RequestView {
    #[serde(flatten)]
    pub request: Schedule,
    /// `active` while a scheduled height is left, `done` once every one was taken (the
    /// request then stays, with its snapshots, until it is deleted).
    pub status: &'static str,
    /// The request's snapshots with their status, replacing the stored list.
    pub snapshots: Vec<TakenView>,
}

/// One snapshot a request took, with its status.
#[derive(Debug, Serialize)]
pub struct TakenView {
    #[serde(flatten)]
    pub taken: TakenSnapshot,
    /// `pending` until the snapshot point covers the snapshot's cut, `final` after.
    pub status: &'static str,
    /// Whether the file is still held (retention removes old final ones).
    pub available: bool,
}

/// The snapshot store, the schedule and retention of one node.
pub struct SnapshotKeeper {
    pub store: Arc<SnapshotStore>,
    book: Mutex<ScheduleBook>,
    /// Requests whose snapshot is being written.
    taking: Mutex<BTreeSet<u64>>,
    /// Held while scheduled snapshots are written and recorded, and while retention runs:
    /// a snapshot written for a request but not yet recorded as its own would otherwise
    /// look unheld to a retention pass running meanwhile, which would then count it among
    /// the kept ones and remove an older one it should keep.
    retention: Mutex<()>,
    /// Final snapshots kept; `None` keeps all.
    keep: Option<usize>,
    taken: Counter,
    pruned: Counter,
}

impl SnapshotKeeper {
    pub fn new(
        store: Arc<SnapshotStore>,
        book: ScheduleBook,
        keep: Option<usize>,
        taken: Counter,
        pruned: Counter,
    ) -> Self {
        Self {
            store,
            book: Mutex::new(book),
            taking: Mutex::default(),
            retention: Mutex::default(),
            keep,
            taken,
            pruned,
        }
    }

    pub fn book(&self) -> MutexGuard<'_, ScheduleBook> {
        self.book.lock().expect("schedule lock")
    }

    /// Scheduled snapshots due at `height` that are not being taken already; they are
    /// marked as being taken.
    pub fn claim_due(&self, height: u64) -> Vec<(u64, SnapshotOf, u64)> {
        let due = self.book().due(height);
        let mut taking = self.taking.lock().expect("taking lock");
        due.into_iter()
            .filter(|(id, ..)| taking.insert(*id))
            .collect()
    }

    /// Writes one snapshot per kind the claimed requests ask for, records it for each of
    /// them, then applies retention. Call from a blocking thread.
    pub fn take_scheduled(
        &self,
        claimed: Vec<(u64, SnapshotOf, u64)>,
        stable: Cut,
        applied: Cut,
        sp: &PointJson,
    ) {
        let retention = self.retention.lock().expect("retention lock");
        let mut made: BTreeMap<SnapshotOf, Option<SnapshotInfo>> = BTreeMap::new();
        for (request, of, scheduled_height) in &claimed {
            let info = made
                .entry(*of)
                .or_insert_with(|| {
                    let (state, cut) = match of {
                        SnapshotOf::Stable => &stable,
                        SnapshotOf::Applied => &applied,
                    };
                    match self.store.create(state, cut) {
                        Ok(info) => {
                            self.taken.inc();
                            info!(snapshot = %info.id, height = info.height, "scheduled snapshot taken");
                            Some(info)
                        }
                        Err(error) => {
                            warn!(%error, "cannot take a scheduled snapshot");
                            None
                        }
                    }
                })
                .clone();
            if let Some(info) = info {
                let taken = TakenSnapshot {
                    snapshot_id: info.id.clone(),
                    scheduled_height: *scheduled_height,
                    height: info.height,
                    created_unix_ms: info.created_unix_ms,
                };
                if let Err(error) = self.book().record(*request, taken) {
                    warn!(request, %error, "cannot record a scheduled snapshot");
                }
            }
        }
        {
            let mut taking = self.taking.lock().expect("taking lock");
            for (request, ..) in &claimed {
                taking.remove(request);
            }
        }
        self.prune_locked(sp, &retention);
    }

    /// Writes a snapshot of `state` at `cut` now, then applies retention. Call from a
    /// blocking thread.
    pub fn create_now(
        &self,
        state: &LwwMap,
        cut: &VersionVector,
        sp: &PointJson,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let retention = self.retention.lock().expect("retention lock");
        let info = self.store.create(state, cut)?;
        self.taken.inc();
        self.prune_locked(sp, &retention);
        Ok(info)
    }

    /// Every snapshot file, by height, with its status at `sp`.
    pub fn list(&self, sp: &PointJson) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut list = self.store.list()?;
        for info in &mut list {
            info.status = status(covers(sp, &info.snapshot_point)).into();
        }
        Ok(list)
    }

    /// A request with the status of each of its snapshots at `sp`.
    pub fn request(&self, id: u64, sp: &PointJson) -> Option<RequestView> {
        let request = self.book().get(id)?.clone();
        self.views(vec![request], sp).pop()
    }

    /// Views of requests, with their snapshots' status at `sp` (the snapshot directory is
    /// read once for all of them). Call from a blocking thread.
    pub fn views(&self, requests: Vec<Schedule>, sp: &PointJson) -> Vec<RequestView> {
        let held: BTreeMap<String, SnapshotInfo> = self
            .store
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|info| (info.id.clone(), info))
            .collect();
        requests
            .into_iter()
            .map(|request| {
                let snapshots = request
                    .snapshots
                    .iter()
                    .map(|taken| {
                        let held = held.get(&taken.snapshot_id);
                        TakenView {
                            taken: taken.clone(),
                            // retention removes final snapshots only
                            status: status(
                                held.is_none_or(|info| covers(sp, &info.snapshot_point)),
                            ),
                            available: held.is_some(),
                        }
                    })
                    .collect();
                let status = if request.is_done() { "done" } else { "active" };
                RequestView {
                    request,
                    status,
                    snapshots,
                }
            })
            .collect()
    }

    /// Removes final snapshots beyond the most recent `keep`, sparing any a transfer is
    /// reading; snapshots a schedule request in the book took are neither removed nor
    /// counted.
    pub fn prune(&self, sp: &PointJson) {
        let retention = self.retention.lock().expect("retention lock");
        self.prune_locked(sp, &retention);
    }

    /// [`SnapshotKeeper::prune`], with the retention lock held by the caller.
    fn prune_locked(&self, sp: &PointJson, _held: &MutexGuard<'_, ()>) {
        let Some(keep) = self.keep else { return };
        let held = self.book().held_snapshots();
        let Ok(list) = self.store.list() else { return };
        let mut finals: Vec<&SnapshotInfo> = list
            .iter()
            .filter(|info| !held.contains(&info.id) && covers(sp, &info.snapshot_point))
            .collect();
        finals.sort_by_key(|info| (info.height, info.created_unix_ms));
        let excess = finals.len().saturating_sub(keep);
        for info in &finals[..excess] {
            if self.store.is_leased(&info.id) {
                continue;
            }
            match self.store.remove(&info.id) {
                Ok(()) => {
                    self.pruned.inc();
                    info!(snapshot = %info.id, "snapshot removed by retention");
                }
                Err(error) => warn!(snapshot = %info.id, %error, "cannot remove a snapshot"),
            }
        }
    }
}

fn status(is_final: bool) -> &'static str {
    if is_final {
        "final"
    } else {
        "pending"
    }
}
