//! The snapshot schedule (Antelope producer-API parity): requests to take a snapshot at a
//! height, or every `spacing` heights between a start and an optional end, kept in
//! `<data_dir>/snapshot-schedule.cbor` with their id counter, so they survive restarts and
//! ids are never reused.
//!
//! A height is the number of ops inside a snapshot point (a monotone scalar, like a block
//! height). A scheduled height is taken at the first snapshot point whose height reaches
//! it; when the snapshot point jumps over several scheduled heights at once, one snapshot
//! serves them all, and the next due height is the first scheduled height above it.
//!
//! A request is *done* once the snapshot that consumes its last scheduled height is
//! recorded: it stays in the book, readable with its snapshots, until it is deleted
//! ([`ScheduleBook::remove`]); while it is there, retention keeps its snapshots. A request
//! can never be left behind with its end passed and nothing due: while it has a scheduled
//! height left, any height at or past that height makes it due, so the next snapshot point
//! consumes it (a request whose heights are all in the past when it is added gets one
//! snapshot at once, then is done). If taking that snapshot fails, the request simply stays
//! due for the next snapshot point.
//!
//! This book only decides and remembers; the driver takes the snapshots and says so with
//! [`ScheduleBook::record`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name of the book's file inside the data dir.
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
    /// First height to take [default: the next height, current height + 1].
    pub start_height: Option<u64>,
    /// Last height a snapshot may be scheduled at [default: none, repeats forever].
    pub end_height: Option<u64>,
    /// Heights between snapshots [default: one snapshot only].
    pub spacing: Option<u64>,
    /// Free text kept with the request [default: empty].
    pub description: Option<String>,
    /// Which state to capture [default: `stable`].
    pub of: Option<SnapshotOf>,
}

/// A snapshot a request took.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TakenSnapshot {
    /// The id of the snapshot file (as `GET /v1/snapshots/{id}` serves it).
    pub snapshot_id: String,
    /// The scheduled height it served (the highest one, if it served several).
    pub scheduled_height: u64,
    /// The height it was taken at (at or above `scheduled_height`).
    pub height: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// A stored request, also its JSON view (the driver adds each snapshot's status).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The request's id: assigned in ascending order, never reused.
    pub request_id: u64,
    /// The first scheduled height.
    pub start_height: u64,
    /// The last height a snapshot may be scheduled at (`None`: no end).
    pub end_height: Option<u64>,
    /// Heights between scheduled heights (`None`: `start_height` only).
    pub spacing: Option<u64>,
    /// The request's free text.
    pub description: String,
    /// Which state the request's snapshots capture.
    pub of: SnapshotOf,
    /// The next scheduled height not yet taken (`None` once none is left).
    pub next_height: Option<u64>,
    /// The snapshots taken for this request, oldest first.
    pub snapshots: Vec<TakenSnapshot>,
}

impl Schedule {
    /// Whether every scheduled height was taken: the request stays until deleted.
    pub fn is_done(&self) -> bool {
        self.next_height.is_none()
    }

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

    /// The highest scheduled height at or below `height`, if there is one.
    fn last_at_or_below(&self, height: u64) -> Option<u64> {
        let last = self.end_height.map_or(height, |end| end.min(height));
        if last < self.start_height {
            return None;
        }
        Some(match self.spacing {
            None => self.start_height,
            Some(spacing) => self.start_height + (last - self.start_height) / spacing * spacing,
        })
    }

    /// Whether `other` schedules the same snapshots (start, end, spacing and kind).
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

/// Why a schedule change was refused or failed; the message is the HTTP reason.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The same snapshots are scheduled already (HTTP 409).
    #[error("the same snapshots are already scheduled by request {existing}")]
    Duplicate {
        /// The id of the request that schedules them.
        existing: u64,
    },
    /// The (effective) start is after the end (HTTP 400).
    #[error("start_height {start} is after end_height {end}")]
    StartAfterEnd {
        /// The effective start (current height + 1 if none was given).
        start: u64,
        /// The requested end.
        end: u64,
    },
    /// The spacing does not fit between start and end (HTTP 400).
    #[error(
        "spacing {spacing} is beyond the range of {range} heights from start_height to end_height"
    )]
    SpacingBeyondRange {
        /// The requested spacing.
        spacing: u64,
        /// `end_height - start_height`.
        range: u64,
    },
    /// A spacing of 0 (HTTP 400).
    #[error("spacing must be at least 1")]
    ZeroSpacing,
    /// No request has this id (HTTP 404).
    #[error("no schedule request {0}")]
    NotFound(u64),
    /// The book's file could not be read or written (HTTP 500).
    #[error("cannot store the schedule: {0}")]
    Io(#[from] std::io::Error),
    /// The book's file holds something else than a book (HTTP 500).
    #[error("the stored schedule is corrupt: {0}")]
    Corrupt(String),
}

impl ScheduleError {
    /// The HTTP status that answers this error: 400, 404, 409 or 500.
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

/// What the book's file holds.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The id the next request gets: above every id ever assigned.
    next_id: u64,
    requests: BTreeMap<u64, Schedule>,
}

impl Stored {
    /// Refuses a decoded book whose ids disagree (which could make ids be reused).
    fn check(&self) -> Result<(), ScheduleError> {
        for (id, request) in &self.requests {
            if *id != request.request_id {
                return Err(ScheduleError::Corrupt(format!(
                    "request {} is stored under id {id}",
                    request.request_id
                )));
            }
            if *id >= self.next_id {
                return Err(ScheduleError::Corrupt(format!(
                    "request {id} is not below the next id {}",
                    self.next_id
                )));
            }
        }
        Ok(())
    }
}

/// Every schedule request of one node, persisted in its data dir (see module doc).
pub struct ScheduleBook {
    path: PathBuf,
    stored: Stored,
}

impl ScheduleBook {
    /// Opens `<data_dir>/snapshot-schedule.cbor` (an empty book if there is none yet; the
    /// file is created on the first change). A file that is not a book is
    /// [`ScheduleError::Corrupt`].
    pub fn open(data_dir: &Path) -> Result<Self, ScheduleError> {
        let path = data_dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: Stored = ciborium::from_reader(bytes.as_slice())
                    .map_err(|e| ScheduleError::Corrupt(e.to_string()))?;
                stored.check()?;
                stored
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                next_id: 1,
                requests: BTreeMap::new(),
            },
            Err(e) => return Err(e.into()),
        };
        Ok(Self { path, stored })
    }

    /// Validates a request, fills in its defaults (start: `current_height + 1`, the height
    /// of the snapshot point now plus one; `of`: stable), refuses duplicates, assigns the
    /// next id and stores it before returning. On error the book is unchanged.
    pub fn add(
        &mut self,
        request: ScheduleRequest,
        current_height: u64,
    ) -> Result<Schedule, ScheduleError> {
        let start = request
            .start_height
            .unwrap_or(current_height.saturating_add(1));
        if request.spacing == Some(0) {
            return Err(ScheduleError::ZeroSpacing);
        }
        if let Some(end) = request.end_height {
            if start > end {
                return Err(ScheduleError::StartAfterEnd { start, end });
            }
            if let Some(spacing) = request.spacing {
                let range = end - start;
                if spacing > range {
                    return Err(ScheduleError::SpacingBeyondRange { spacing, range });
                }
            }
        }
        let schedule = Schedule {
            request_id: self.stored.next_id,
            start_height: start,
            end_height: request.end_height,
            spacing: request.spacing,
            description: request.description.unwrap_or_default(),
            of: request.of.unwrap_or_default(),
            next_height: Some(start),
            snapshots: Vec::new(),
        };
        // a done request schedules nothing any more: the same heights may be asked again
        if let Some(existing) = self
            .stored
            .requests
            .values()
            .find(|r| !r.is_done() && r.same_as(&schedule))
        {
            return Err(ScheduleError::Duplicate {
                existing: existing.request_id,
            });
        }
        let id = schedule.request_id;
        self.stored.next_id += 1;
        self.stored.requests.insert(id, schedule.clone());
        if let Err(e) = self.save() {
            self.stored.requests.remove(&id);
            self.stored.next_id -= 1;
            return Err(e);
        }
        Ok(schedule)
    }

    /// Request `id`, if the book holds it.
    pub fn get(&self, id: u64) -> Option<&Schedule> {
        self.stored.requests.get(&id)
    }

    /// Up to `limit` requests with id ≥ `start_id`, ascending, and the id of the next one
    /// after them (`None` if there is none).
    pub fn page(&self, start_id: u64, limit: usize) -> (Vec<&Schedule>, Option<u64>) {
        let mut from = self.stored.requests.range(start_id..).map(|(_, r)| r);
        let page: Vec<&Schedule> = from.by_ref().take(limit).collect();
        (page, from.next().map(|r| r.request_id))
    }

    /// The ids of every snapshot a request in the book took (done requests included):
    /// retention keeps them while their request is there.
    pub fn held_snapshots(&self) -> std::collections::BTreeSet<String> {
        self.stored
            .requests
            .values()
            .flat_map(|r| r.snapshots.iter().map(|t| t.snapshot_id.clone()))
            .collect()
    }

    /// Removes request `id`, done or not, and returns it (its snapshot files stay, now
    /// subject to retention); stored before returning. Its id is never given again.
    pub fn remove(&mut self, id: u64) -> Result<Schedule, ScheduleError> {
        let removed = self
            .stored
            .requests
            .remove(&id)
            .ok_or(ScheduleError::NotFound(id))?;
        if let Err(e) = self.save() {
            self.stored.requests.insert(id, removed);
            return Err(e);
        }
        Ok(removed)
    }

    /// Requests with a scheduled height at or below `height`, ascending by id, as
    /// `(request id, of, the highest scheduled height at or below height)`. The driver
    /// takes one snapshot per distinct `of` and records it for each of them.
    pub fn due(&self, height: u64) -> Vec<(u64, SnapshotOf, u64)> {
        self.stored
            .requests
            .values()
            .filter(|r| r.next_height.is_some_and(|next| next <= height))
            .filter_map(|r| Some((r.request_id, r.of, r.last_at_or_below(height)?)))
            .collect()
    }

    /// Records that request `id` took `taken`: every scheduled height up to `taken.height`
    /// (and up to `taken.scheduled_height`) is consumed and `next_height` becomes the first
    /// scheduled height above them; a request with none left is done (and stays until
    /// deleted). Returns whether it is done now. Stored before returning.
    ///
    /// Records nothing (and returns `false`) for an unknown id (the request was removed
    /// while its snapshot was being written) or a snapshot that consumes no scheduled
    /// height.
    pub fn record(&mut self, id: u64, taken: TakenSnapshot) -> Result<bool, ScheduleError> {
        let Some(request) = self.stored.requests.get_mut(&id) else {
            return Ok(false);
        };
        let reached = taken.height.max(taken.scheduled_height);
        if request.next_height.is_none_or(|next| next > reached) {
            return Ok(false);
        }
        let before = request.clone();
        request.next_height = request.next_above(reached);
        request.snapshots.push(taken);
        let done = request.is_done();
        if let Err(e) = self.save() {
            self.stored.requests.insert(id, before);
            return Err(e);
        }
        Ok(done)
    }

    /// Writes the book to `<file>.tmp`, syncs it and renames it over the file.
    fn save(&self) -> Result<(), ScheduleError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(&self.stored, &mut bytes)
            .map_err(|e| ScheduleError::Io(std::io::Error::other(e.to_string())))?;
        let tmp = self.path.with_extension("cbor.tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // make the rename itself durable; best effort (not every platform can sync a dir)
        if let Some(dir) = self.path.parent() {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
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

    fn taken(id: &str, scheduled_height: u64, height: u64) -> TakenSnapshot {
        TakenSnapshot {
            snapshot_id: id.into(),
            scheduled_height,
            height,
            created_unix_ms: 1_700_000_000_000,
        }
    }

    /// Plays the driver: takes one snapshot at `height` for every due request.
    fn take_due(book: &mut ScheduleBook, height: u64, name: &str) -> Vec<(u64, bool)> {
        book.due(height)
            .into_iter()
            .map(|(id, _, scheduled)| {
                let removed = book.record(id, taken(name, scheduled, height)).unwrap();
                (id, removed)
            })
            .collect()
    }

    #[test]
    fn defaults_take_the_next_height_once_and_the_request_is_then_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let added = book.add(req(None, None, None), 41).unwrap();
        assert_eq!((added.start_height, added.next_height), (42, Some(42)));
        assert_eq!((added.end_height, added.spacing), (None, None));
        assert_eq!(added.of, SnapshotOf::Stable);
        assert_eq!(added.description, "");
        assert!(book.due(41).is_empty(), "the current height is not due");
        assert_eq!(
            book.due(45),
            vec![(added.request_id, SnapshotOf::Stable, 42)]
        );
        assert!(
            book.record(added.request_id, taken("s", 42, 45)).unwrap(),
            "one snapshot only: done"
        );
        let done = book.get(added.request_id).expect("a done request stays");
        assert!(done.is_done());
        assert_eq!(done.snapshots, vec![taken("s", 42, 45)]);
        assert_eq!(book.held_snapshots(), ["s".to_string()].into());
        assert!(book.due(u64::MAX).is_empty(), "a done request is never due");
        // the same heights may be asked again: a done request is no duplicate
        let again = book.add(req(Some(42), None, None), 45).unwrap();
        assert!(again.request_id > added.request_id);
        // deleting the done request releases its snapshot
        book.remove(added.request_id).unwrap();
        assert!(book.get(added.request_id).is_none());
        assert!(book.held_snapshots().is_empty());
    }

    #[test]
    fn no_end_repeats_forever() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let id = book.add(req(None, None, Some(5)), 0).unwrap().request_id;
        for round in 0..100u64 {
            let height = 1 + round * 5;
            assert_eq!(book.due(height - 1), vec![], "round {round}");
            assert_eq!(take_due(&mut book, height, "s"), vec![(id, false)]);
        }
        let request = book.get(id).unwrap();
        assert_eq!(request.snapshots.len(), 100);
        assert_eq!(request.next_height, Some(501));
    }

    #[test]
    fn a_jump_over_several_heights_takes_one_snapshot_and_the_next_is_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let id = book
            .add(req(Some(10), None, Some(10)), 0)
            .unwrap()
            .request_id;
        assert!(book.due(9).is_empty());
        // 10, 20 and 30 are all reached by the snapshot point at 37
        assert_eq!(book.due(37), vec![(id, SnapshotOf::Stable, 30)]);
        assert!(
            !book.record(id, taken("a", 30, 37)).unwrap(),
            "no end: goes on"
        );
        let request = book.get(id).unwrap();
        assert_eq!(request.next_height, Some(40));
        assert_eq!(request.snapshots, vec![taken("a", 30, 37)]);
        assert!(book.due(39).is_empty());
        assert_eq!(book.due(40), vec![(id, SnapshotOf::Stable, 40)]);
        // a height landing exactly on a scheduled one consumes only it
        assert!(!book.record(id, taken("b", 40, 40)).unwrap());
        assert_eq!(book.get(id).unwrap().next_height, Some(50));
    }

    #[test]
    fn a_jump_past_the_end_takes_one_snapshot_and_the_request_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let id = book
            .add(req(Some(10), Some(25), Some(5)), 0)
            .unwrap()
            .request_id;
        assert_eq!(take_due(&mut book, 12, "a"), vec![(id, false)]);
        assert_eq!(book.get(id).unwrap().next_height, Some(15));
        // 15, 20 and 25 (the last) all jumped over: one snapshot serves the last one
        assert_eq!(book.due(1000), vec![(id, SnapshotOf::Stable, 25)]);
        assert_eq!(take_due(&mut book, 1000, "b"), vec![(id, true)]);
        assert!(book.get(id).unwrap().is_done());
        assert!(book.due(u64::MAX).is_empty());
    }

    #[test]
    fn a_request_entirely_in_the_past_is_taken_once_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let id = book
            .add(req(Some(10), Some(20), Some(5)), 100)
            .unwrap()
            .request_id;
        assert_eq!(book.due(100), vec![(id, SnapshotOf::Stable, 20)]);
        assert_eq!(take_due(&mut book, 100, "late"), vec![(id, true)]);
        assert!(book.get(id).unwrap().is_done());
    }

    #[test]
    fn a_failed_or_stale_record_neither_loses_nor_repeats_heights() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let id = book
            .add(req(Some(10), None, Some(10)), 0)
            .unwrap()
            .request_id;
        // the driver could not take the snapshot at 12: still due at the next point
        assert_eq!(book.due(12), vec![(id, SnapshotOf::Stable, 10)]);
        assert_eq!(book.due(13), vec![(id, SnapshotOf::Stable, 10)]);
        book.record(id, taken("a", 30, 31)).unwrap();
        // a snapshot below what is consumed already consumes nothing and is not kept
        assert!(!book.record(id, taken("old", 10, 12)).unwrap());
        let request = book.get(id).unwrap();
        assert_eq!(request.next_height, Some(40));
        assert_eq!(request.snapshots, vec![taken("a", 30, 31)]);
        // an unknown id (removed meanwhile) records nothing
        assert!(!book.record(999, taken("x", 1, 1)).unwrap());
    }

    #[test]
    fn kinds_are_due_separately() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let stable = book.add(req(Some(5), None, None), 0).unwrap().request_id;
        let applied = book
            .add(
                ScheduleRequest {
                    of: Some(SnapshotOf::Applied),
                    description: Some("before the upgrade".into()),
                    ..req(Some(5), None, None)
                },
                0,
            )
            .unwrap();
        assert_eq!(applied.description, "before the upgrade");
        assert_eq!(
            book.due(5),
            vec![
                (stable, SnapshotOf::Stable, 5),
                (applied.request_id, SnapshotOf::Applied, 5)
            ]
        );
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
        assert!((400..500).contains(&dup.http_status()));
        assert!(
            dup.to_string()
                .contains(&format!("request {}", first.request_id)),
            "{dup}"
        );
        // an omitted start is the effective start: the same as an explicit one
        let next = book.add(req(None, None, None), 41).unwrap();
        let dup = book.add(req(Some(42), None, None), 0).unwrap_err();
        assert!(
            matches!(dup, ScheduleError::Duplicate { existing } if existing == next.request_id)
        );
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
        assert!(
            e.to_string()
                .contains("start_height 50 is after end_height 10"),
            "{e}"
        );
        let e = book.add(req(None, Some(10), None), 10).unwrap_err();
        assert!(e.to_string().contains("start_height 11 is after"), "{e}");
        let e = book.add(req(Some(10), Some(20), Some(11)), 0).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert!(
            e.to_string()
                .contains("spacing 11 is beyond the range of 10"),
            "{e}"
        );
        let e = book.add(req(Some(10), Some(10), Some(1)), 0).unwrap_err();
        assert!(matches!(
            e,
            ScheduleError::SpacingBeyondRange {
                spacing: 1,
                range: 0
            }
        ));
        let e = book.add(req(None, None, Some(0)), 0).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert!(e.to_string().contains("spacing must be at least 1"), "{e}");
        // spacing equal to the range: start and end
        let both = book.add(req(Some(10), Some(20), Some(10)), 0).unwrap();
        assert!(book
            .due(20)
            .contains(&(both.request_id, SnapshotOf::Stable, 20)));
        // refusals assign no id
        let after = book.add(req(Some(77), None, None), 0).unwrap();
        assert_eq!(after.request_id, both.request_id + 1);
    }

    #[test]
    fn unknown_fields_are_refused_and_of_is_lowercase() {
        let parsed: ScheduleRequest =
            serde_json::from_str(r#"{"start_height": 5, "of": "applied"}"#).unwrap();
        assert_eq!(parsed.start_height, Some(5));
        assert_eq!(parsed.of, Some(SnapshotOf::Applied));
        assert!(serde_json::from_str::<ScheduleRequest>(r#"{"start": 5}"#).is_err());
        assert!(serde_json::from_str::<ScheduleRequest>(r#"{"of": "Stable"}"#).is_err());
        let json = serde_json::to_value(Schedule {
            request_id: 3,
            start_height: 10,
            end_height: None,
            spacing: Some(5),
            description: "d".into(),
            of: SnapshotOf::Stable,
            next_height: Some(15),
            snapshots: vec![taken("s", 10, 12)],
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "request_id": 3, "start_height": 10, "end_height": null, "spacing": 5,
                "description": "d", "of": "stable", "next_height": 15,
                "snapshots": [{"snapshot_id": "s", "scheduled_height": 10, "height": 12,
                               "created_unix_ms": 1_700_000_000_000u64}]
            })
        );
    }

    #[test]
    fn requests_page_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        for start in 1..=5 {
            book.add(req(Some(start), None, None), 0).unwrap();
        }
        book.remove(3).unwrap();
        let ids = |page: Vec<&Schedule>| page.iter().map(|r| r.request_id).collect::<Vec<_>>();
        let (page, next) = book.page(0, 2);
        assert_eq!((ids(page), next), (vec![1, 2], Some(4)));
        let (page, next) = book.page(4, 2);
        assert_eq!((ids(page), next), (vec![4, 5], None));
        let (page, next) = book.page(3, 10);
        assert_eq!((ids(page), next), (vec![4, 5], None));
        let (page, next) = book.page(6, 10);
        assert_eq!((ids(page), next), (vec![], None));
        let (page, next) = book.page(0, 0);
        assert_eq!((ids(page), next), (vec![], Some(1)));
    }

    #[test]
    fn a_deleted_request_is_gone_and_its_id_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let first = book.add(req(Some(10), None, None), 0).unwrap();
        let removed = book.remove(first.request_id).unwrap();
        assert_eq!(removed, first);
        assert!(book.get(first.request_id).is_none());
        assert!(book.due(10).is_empty());
        let e = book.remove(first.request_id).unwrap_err();
        assert!(matches!(e, ScheduleError::NotFound(id) if id == first.request_id));
        assert_eq!(e.http_status(), 404);
        // the same request again is no duplicate of a deleted one, and gets a new id
        let again = book.add(req(Some(10), None, None), 0).unwrap();
        assert!(again.request_id > first.request_id);
    }

    #[test]
    fn requests_taken_snapshots_and_ids_survive_a_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = ScheduleBook::open(dir.path()).unwrap();
        assert!(
            !dir.path().join(FILE).exists(),
            "created on the first change"
        );
        let kept = book
            .add(req(Some(10), None, Some(10)), 0)
            .unwrap()
            .request_id;
        let once = book.add(req(Some(11), None, None), 0).unwrap().request_id;
        let removed = book.add(req(Some(99), None, None), 0).unwrap().request_id;
        book.record(kept, taken("snap", 10, 12)).unwrap();
        assert!(book.record(once, taken("snap", 11, 12)).unwrap());
        book.remove(removed).unwrap();
        drop(book);

        let mut book = ScheduleBook::open(dir.path()).unwrap();
        let again = book.get(kept).unwrap();
        assert_eq!(again.snapshots, vec![taken("snap", 10, 12)]);
        assert_eq!(again.next_height, Some(20));
        let once = book.get(once).expect("a done request survives a reopen");
        assert!(once.is_done());
        assert_eq!(once.snapshots, vec![taken("snap", 11, 12)]);
        let once = once.request_id;
        assert!(book.get(removed).is_none(), "a deleted request stays gone");
        let next = book.add(req(Some(7), None, None), 0).unwrap().request_id;
        assert!(
            next > kept && next > once && next > removed,
            "ids are never reused"
        );
        assert!(!dir.path().join("snapshot-schedule.cbor.tmp").exists());
    }

    #[test]
    fn a_failed_write_leaves_the_book_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        let mut book = ScheduleBook::open(&data_dir).unwrap();
        let id = book
            .add(req(Some(10), None, Some(10)), 0)
            .unwrap()
            .request_id;
        std::fs::remove_dir_all(&data_dir).unwrap();
        let e = book.add(req(Some(5), None, None), 0).unwrap_err();
        assert!(matches!(e, ScheduleError::Io(_)), "{e}");
        assert_eq!(e.http_status(), 500);
        assert!(!(400..500).contains(&e.http_status()));
        assert!(book.record(id, taken("s", 10, 10)).is_err());
        assert!(book.remove(id).is_err());
        let request = book.get(id).unwrap();
        assert_eq!(
            (request.next_height, request.snapshots.len()),
            (Some(10), 0)
        );
        assert_eq!(book.page(0, 10).0.len(), 1);
        std::fs::create_dir(&data_dir).unwrap();
        let next = book.add(req(Some(5), None, None), 0).unwrap().request_id;
        assert_eq!(next, id + 1, "a failed add assigned no id");
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        for bytes in [&b"\xff\x00garbage"[..], b"", b"\xa0"] {
            std::fs::write(&path, bytes).unwrap();
            let opened = ScheduleBook::open(dir.path());
            assert!(
                matches!(opened, Err(ScheduleError::Corrupt(_))),
                "{bytes:?}"
            );
        }
        // a book whose id counter is not above its ids would reuse ids
        let request = Schedule {
            request_id: 1,
            start_height: 1,
            end_height: None,
            spacing: None,
            description: String::new(),
            of: SnapshotOf::Stable,
            next_height: Some(1),
            snapshots: vec![],
        };
        let reusing = Stored {
            next_id: 1,
            requests: BTreeMap::from([(1, request)]),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&reusing, &mut bytes).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let e = ScheduleBook::open(dir.path()).err().expect("refused");
        assert!(matches!(e, ScheduleError::Corrupt(_)), "{e}");
        assert_eq!(e.http_status(), 500);
    }
}
