//! The snapshot schedule (Antelope producer-API parity): requests to take a snapshot at a
//! height, or every `spacing` heights between a start and an optional end, kept in
//! `<data_dir>/snapshot-schedule.cbor` with their id counter, so they survive restarts.
//!
//! A height is the number of ops inside a snapshot point (a monotone scalar, like a block
//! height). A scheduled height is taken at the first snapshot point whose height reaches
//! it; when the snapshot point jumps over several scheduled heights at once, one snapshot
//! serves them all, and the next due height is the first scheduled height above it. A
//! request with no scheduled height left removes itself.
//!
//! This book only decides and remembers; the driver takes the snapshots and says so with
//! [`ScheduleBook::record`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "snapshot-schedule.cbor";

/// Which state a scheduled snapshot captures.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotOf {
    /// The stable state at the snapshot point: final when written.
    #[default]
    Stable,
    /// Everything the node has applied: pending until the snapshot point covers it.
    Applied,
}

/// The body of `POST /v1/snapshots/schedule`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// First height to take [default: the next height].
    pub start_height: Option<u64>,
    /// Last height a snapshot may be scheduled at [default: none].
    pub end_height: Option<u64>,
    /// Heights between snapshots [default: one snapshot only].
    pub spacing: Option<u64>,
    pub description: Option<String>,
    pub of: Option<SnapshotOf>,
}

/// A snapshot a request took.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TakenSnapshot {
    pub snapshot_id: String,
    /// The scheduled height it served (the last one, if it served several).
    pub scheduled_height: u64,
    /// The height it was taken at.
    pub height: u64,
    pub created_unix_ms: u64,
}

/// A stored request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Schedule {
    pub request_id: u64,
    pub start_height: u64,
    pub end_height: Option<u64>,
    pub spacing: Option<u64>,
    pub description: String,
    pub of: SnapshotOf,
    /// The next scheduled height (`None` once none is left).
    pub next_height: Option<u64>,
    pub snapshots: Vec<TakenSnapshot>,
}

impl Schedule {
    /// The first scheduled height above `height`, if any is left.
    fn next_above(&self, height: u64) -> Option<u64> {
        let next = match self.spacing {
            _ if height < self.start_height => self.start_height,
            None => return None,
            Some(spacing) => {
                let steps = (height - self.start_height) / spacing + 1;
                self.start_height.checked_add(steps.checked_mul(spacing)?)?
            }
        };
        self.end_height
            .is_none_or(|end| next <= end)
            .then_some(next)
    }

    fn same_as(&self, other: &Schedule) -> bool {
        (self.start_height, self.end_height, self.spacing, self.of)
            == (
                other.start_height,
                other.end_height,
                other.spacing,
                other.of,
            )
    }
}

/// Why a schedule change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("the same snapshots are already scheduled by request {existing}")]
    Duplicate { existing: u64 },
    #[error("start_height {start} is after end_height {end}")]
    StartAfterEnd { start: u64, end: u64 },
    #[error("spacing {spacing} is beyond the range of {range} heights from start to end")]
    SpacingBeyondRange { spacing: u64, range: u64 },
    #[error("spacing must be at least 1")]
    ZeroSpacing,
    #[error("no schedule request {0}")]
    NotFound(u64),
    #[error("cannot store the schedule: {0}")]
    Io(#[from] std::io::Error),
    #[error("the stored schedule is corrupt: {0}")]
    Corrupt(String),
}

impl ScheduleError {
    /// The HTTP status that answers this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ScheduleError::Duplicate { .. } => 409,
            ScheduleError::StartAfterEnd { .. }
            | ScheduleError::SpacingBeyondRange { .. }
            | ScheduleError::ZeroSpacing => 400,
            ScheduleError::NotFound(_) => 404,
            ScheduleError::Io(_) | ScheduleError::Corrupt(_) => 500,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    next_id: u64,
    requests: BTreeMap<u64, Schedule>,
}

/// Every schedule request of one node (see module doc).
pub struct ScheduleBook {
    path: PathBuf,
    stored: Stored,
}

impl ScheduleBook {
    /// Opens the book of `data_dir` (empty if it has none yet).
    pub fn open(data_dir: &Path) -> Result<Self, ScheduleError> {
        let path = data_dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => ciborium::from_reader(bytes.as_slice())
                .map_err(|e| ScheduleError::Corrupt(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                next_id: 1,
                requests: BTreeMap::new(),
            },
            Err(e) => return Err(e.into()),
        };
        Ok(Self { path, stored })
    }

    /// Validates and stores a request; `current_height` is the snapshot point's height now.
    pub fn add(
        &mut self,
        request: ScheduleRequest,
        current_height: u64,
    ) -> Result<Schedule, ScheduleError> {
        let start = request
            .start_height
            .unwrap_or(current_height.saturating_add(1));
        if let Some(end) = request.end_height {
            if start > end {
                return Err(ScheduleError::StartAfterEnd { start, end });
            }
        }
        match (request.spacing, request.end_height) {
            (Some(0), _) => return Err(ScheduleError::ZeroSpacing),
            (Some(spacing), Some(end)) if spacing > end - start => {
                return Err(ScheduleError::SpacingBeyondRange {
                    spacing,
                    range: end - start,
                })
            }
            _ => {}
        }
        let mut schedule = Schedule {
            request_id: self.stored.next_id,
            start_height: start,
            end_height: request.end_height,
            spacing: request.spacing,
            description: request.description.unwrap_or_default(),
            of: request.of.unwrap_or_default(),
            next_height: Some(start),
            snapshots: Vec::new(),
        };
        if let Some(existing) = self.stored.requests.values().find(|r| r.same_as(&schedule)) {
            return Err(ScheduleError::Duplicate {
                existing: existing.request_id,
            });
        }
        schedule.next_height = Some(start);
        self.stored.next_id += 1;
        self.stored
            .requests
            .insert(schedule.request_id, schedule.clone());
        self.save()?;
        Ok(schedule)
    }

    pub fn get(&self, id: u64) -> Option<&Schedule> {
        self.stored.requests.get(&id)
    }

    /// Up to `limit` requests with id ≥ `start_id`, ascending, and the id of the next one.
    pub fn page(&self, start_id: u64, limit: usize) -> (Vec<&Schedule>, Option<u64>) {
        let mut from = self.stored.requests.range(start_id..).map(|(_, r)| r);
        let page: Vec<&Schedule> = from.by_ref().take(limit).collect();
        (page, from.next().map(|r| r.request_id))
    }

    /// Removes request `id`.
    pub fn remove(&mut self, id: u64) -> Result<Schedule, ScheduleError> {
        let removed = self
            .stored
            .requests
            .remove(&id)
            .ok_or(ScheduleError::NotFound(id))?;
        self.save()?;
        Ok(removed)
    }

    /// Requests with a scheduled height at or below `height`: `(request id, of, the highest
    /// scheduled height at or below it)`.
    pub fn due(&self, height: u64) -> Vec<(u64, SnapshotOf, u64)> {
        self.stored
            .requests
            .values()
            .filter_map(|r| {
                let next = r.next_height?;
                if next > height {
                    return None;
                }
                let served = match r.spacing {
                    None => next,
                    Some(spacing) => {
                        let last = r.end_height.unwrap_or(u64::MAX).min(height);
                        r.start_height + (last - r.start_height) / spacing * spacing
                    }
                };
                Some((r.request_id, r.of, served))
            })
            .collect()
    }

    /// Records that request `id` took `taken`: every scheduled height up to `taken.height`
    /// is consumed. Returns whether the request is done (and removed). An unknown id (the
    /// request was removed meanwhile) records nothing.
    pub fn record(&mut self, id: u64, taken: TakenSnapshot) -> Result<bool, ScheduleError> {
        let Some(request) = self.stored.requests.get_mut(&id) else {
            return Ok(false);
        };
        request.next_height = request.next_above(taken.height);
        request.snapshots.push(taken);
        let done = request.next_height.is_none();
        if done {
            self.stored.requests.remove(&id);
        }
        self.save()?;
        Ok(done)
    }

    fn save(&self) -> Result<(), ScheduleError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(&self.stored, &mut bytes)
            .map_err(|e| ScheduleError::Io(std::io::Error::other(e.to_string())))?;
        let tmp = self.path.with_extension("cbor.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(start: Option<u64>, end: Option<u64>, spacing: Option<u64>) -> ScheduleRequest {
        ScheduleRequest {
            start_height: start,
            end_height: end,
            spacing,
            ..Default::default()
        }
    }

    fn taken(id: &str, height: u64) -> TakenSnapshot {
        TakenSnapshot {
            snapshot_id: id.into(),
            scheduled_height: height,
            height,
            created_unix_ms: 0,
        }
    }

    #[test]
    fn defaults_take_the_next_height_once_and_the_request_then_removes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let added = book.add(req(None, None, None), 41).unwrap();
        assert_eq!((added.start_height, added.next_height), (42, Some(42)));
        assert_eq!(added.of, SnapshotOf::Stable);
        assert!(book.due(41).is_empty());
        assert_eq!(
            book.due(45),
            vec![(added.request_id, SnapshotOf::Stable, 42)]
        );
        assert!(
            book.record(added.request_id, taken("s", 45)).unwrap(),
            "done"
        );
        assert!(book.get(added.request_id).is_none());
    }

    #[test]
    fn a_jump_over_several_heights_takes_one_snapshot_and_the_next_is_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let id = book
            .add(req(Some(10), None, Some(10)), 0)
            .unwrap()
            .request_id;
        assert_eq!(book.due(37), vec![(id, SnapshotOf::Stable, 30)]);
        assert!(!book.record(id, taken("a", 37)).unwrap(), "no end: goes on");
        assert_eq!(book.get(id).unwrap().next_height, Some(40));
        assert!(book.due(39).is_empty());
        assert_eq!(book.due(40), vec![(id, SnapshotOf::Stable, 40)]);
        // an end: the request removes itself after its last height
        let bounded = book.add(req(Some(10), Some(25), Some(5)), 0).unwrap();
        assert_eq!(
            book.due(26),
            vec![(bounded.request_id, SnapshotOf::Stable, 25)]
        );
        assert!(book.record(bounded.request_id, taken("b", 26)).unwrap());
    }

    #[test]
    fn duplicates_and_invalid_ranges_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let first = book.add(req(Some(5), Some(100), Some(10)), 0).unwrap();
        let dup = book.add(req(Some(5), Some(100), Some(10)), 3).unwrap_err();
        assert!(
            matches!(dup, ScheduleError::Duplicate { existing } if existing == first.request_id)
        );
        assert_eq!(dup.http_status(), 409);
        let of_applied = ScheduleRequest {
            of: Some(SnapshotOf::Applied),
            ..req(Some(5), Some(100), Some(10))
        };
        assert!(
            book.add(of_applied, 0).is_ok(),
            "another kind is no duplicate"
        );
        let e = book.add(req(Some(50), Some(10), None), 0).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert!(e.to_string().contains("after end_height"), "{e}");
        let e = book.add(req(Some(10), Some(20), Some(11)), 0).unwrap_err();
        assert!(e.to_string().contains("beyond the range"), "{e}");
        assert_eq!(
            book.add(req(None, None, Some(0)), 0)
                .unwrap_err()
                .http_status(),
            400
        );
    }

    #[test]
    fn requests_page_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        for start in 1..=5 {
            book.add(req(Some(start), None, None), 0).unwrap();
        }
        let (page, next) = book.page(0, 2);
        assert_eq!(
            page.iter().map(|r| r.request_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(next, Some(3));
        let (page, next) = book.page(4, 10);
        assert_eq!(page.len(), 2);
        assert_eq!(next, None);
    }

    #[test]
    fn requests_taken_snapshots_and_ids_survive_a_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let kept = book
            .add(req(Some(10), None, Some(10)), 0)
            .unwrap()
            .request_id;
        let removed = book.add(req(Some(99), None, None), 0).unwrap().request_id;
        book.record(kept, taken("snap", 12)).unwrap();
        assert_eq!(book.remove(removed).unwrap().request_id, removed);
        assert_eq!(book.remove(removed).unwrap_err().http_status(), 404);
        drop(book);
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let again = book.get(kept).unwrap();
        assert_eq!(again.snapshots, vec![taken("snap", 12)]);
        assert_eq!(again.next_height, Some(20));
        assert!(book.get(removed).is_none());
        let next = book.add(req(Some(7), None, None), 0).unwrap().request_id;
        assert!(next > removed, "ids are never reused");
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"\xff\x00garbage").unwrap();
        assert!(matches!(
            ScheduleBook::open(dir.path()),
            Err(ScheduleError::Corrupt(_))
        ));
    }
}
