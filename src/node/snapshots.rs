//! A node's snapshot files, in `<data_dir>/snapshots/`: made on request from the stable
//! state (a persistent map, so taking it is O(1)) and written on a blocking thread while the
//! node goes on applying ops; listed from their headers; served by id.
//!
//! A file is written as `<id>.partial`, synced, then renamed, so a listed snapshot is always
//! whole. Its id is `<height, 20 digits>-<first 16 hex digits of the digest>`: the same
//! state makes the same file, and chunks are cut the same way everywhere, so two nodes
//! holding a snapshot with one id serve the same chunks.
//!
//! Snapshots made to hand a stable state to a joiner go to `snapshots/transfers/`: they are
//! not listed and not counted by retention, and are removed once no transfer has used them
//! for [`TRANSFER_LINGER`]. Chunks are served from either directory by id; every served
//! chunk renews a lease on its snapshot, and retention never removes a leased one.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::io_budget::{IoBudget, Throttled};
use super::metrics::{IntGauge, Raised};
use super::views::vector_json;
use crate::ops_log::LwwMap;
use crate::snapshot::{
    read_header, write_snapshot, write_snapshot_spooled, SnapshotError, SnapshotHeader,
    DEFAULT_CHUNK_BYTES,
};
use crate::VersionVector;

const SUFFIX: &str = ".tmsnap";
/// How long a snapshot stays leased after a transfer last read from it, and how long a
/// transfer snapshot is kept unused.
pub const TRANSFER_LINGER: Duration = Duration::from_secs(60);

/// One snapshot file, as the API shows it (and the client reads it back).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotInfo {
    pub id: String,
    pub height: u64,
    pub snapshot_point: std::collections::BTreeMap<String, u64>,
    pub digest: String,
    pub created_unix_ms: u64,
    pub entries: u64,
    pub chunks: usize,
    pub bytes: u64,
    /// `final`: a snapshot of the stable state is final when written.
    pub status: std::borrow::Cow<'static, str>,
}

impl SnapshotInfo {
    fn new(id: String, header: &SnapshotHeader, bytes: u64) -> Self {
        Self {
            id,
            height: header.height,
            snapshot_point: vector_json(&header.snapshot_point),
            digest: header.digest.to_hex(),
            created_unix_ms: header.created_unix_ms,
            entries: header.entries,
            chunks: header.chunks.len(),
            bytes,
            status: "final".into(),
        }
    }
}

/// The snapshot directory of one node.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    transfers: PathBuf,
    /// Headers of files chunks were served from, with where their body starts.
    headers: Mutex<BTreeMap<String, (SnapshotHeader, u64)>>,
    /// When a transfer last read each snapshot.
    leases: Mutex<BTreeMap<String, Instant>>,
    /// What writing files and serving chunks may spend.
    budget: Arc<IoBudget>,
    /// Snapshot files being written now (`tidemark_snapshot_files_being_written`).
    pub files_being_written: IntGauge,
}

impl SnapshotStore {
    /// Opens (creating it if needed) `<data_dir>/snapshots`, removing unfinished files.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("snapshots");
        let transfers = dir.join("transfers");
        std::fs::create_dir_all(&transfers)?;
        for dir in [&dir, &transfers] {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                // unfinished files, and transfer snapshots of an earlier run
                if path.extension().is_some_and(|e| e == "partial")
                    || (*dir == transfers && path.is_file())
                {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(Self {
            dir,
            transfers,
            headers: Mutex::default(),
            leases: Mutex::default(),
            budget: Arc::default(),
            files_being_written: IntGauge::default(),
        })
    }

    /// Caps the bytes per second spent writing snapshot files and serving their chunks.
    pub fn with_io_limit(mut self, bytes_per_s: Option<u64>) -> Self {
        self.budget = Arc::new(IoBudget::new(bytes_per_s));
        self
    }

    /// The budget chunk serving spends.
    pub fn io_budget(&self) -> &IoBudget {
        &self.budget
    }

    /// Writes `state` at `cut` as a snapshot file (on the calling thread: call it from a
    /// blocking task).
    pub fn create(
        &self,
        state: &LwwMap,
        cut: &VersionVector,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let (id, header, bytes) = self.write_into(&self.dir, state, cut, true)?;
        Ok(SnapshotInfo::new(id, &header, bytes))
    }

    /// A snapshot of `state` at `cut` to hand to a joiner: one already stored with the id
    /// that `digest` gives, or a new file among the transfer snapshots (not synced: it is
    /// only needed while this process runs). Returns its id and header.
    pub fn offer(
        &self,
        state: &LwwMap,
        cut: &VersionVector,
        digest: Option<crate::ops_log::Digest>,
    ) -> Result<(String, SnapshotHeader), SnapshotError> {
        self.remove_unused_transfers();
        if let Some(digest) = digest {
            let id = snapshot_id(cut.total(), &digest);
            if let Some((header, _)) = self.cached_header(&id)? {
                self.lease(&id);
                return Ok((id, header));
            }
        }
        let (id, header, _) = self.write_into(&self.transfers, state, cut, false)?;
        self.lease(&id);
        Ok((id, header))
    }

    fn write_into(
        &self,
        dir: &Path,
        state: &LwwMap,
        cut: &VersionVector,
        sync: bool,
    ) -> Result<(String, SnapshotHeader, u64), SnapshotError> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial = dir.join(format!("{created}-{}-{n}.partial", std::process::id()));
        let _writing = Raised::new(&self.files_being_written);
        let written = (|| {
            let file = Throttled::new(std::fs::File::create(&partial)?, self.budget.clone());
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let header = if state.rereads_cheaply() {
                // a state mostly in its base file (or in memory) is read twice: once to
                // hash the chunks for the header, once to write them
                write_snapshot(&mut out, state, cut, created, DEFAULT_CHUNK_BYTES)?
            } else {
                // a state read from the database's B-tree is read once: its chunks are
                // spooled to a scratch file, unlinked at once, and copied after the header
                let spool_path = partial.with_extension("spool");
                let spool = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&spool_path)?;
                let _ = std::fs::remove_file(&spool_path);
                let mut spool = Throttled::new(spool, self.budget.clone());
                write_snapshot_spooled(
                    &mut out,
                    &mut spool,
                    state,
                    cut,
                    created,
                    DEFAULT_CHUNK_BYTES,
                )?
            };
            let file = out.into_inner().map_err(|e| e.into_error())?.into_inner();
            if sync {
                file.sync_all()?;
            }
            Ok::<_, SnapshotError>(header)
        })();
        let header = match written {
            Ok(header) => header,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        let id = snapshot_id(header.height, &header.digest);
        let path = dir.join(format!("{id}{SUFFIX}"));
        std::fs::rename(&partial, &path)?;
        let bytes = std::fs::metadata(&path)?.len();
        Ok((id, header, bytes))
    }

    /// Chunk `index` of snapshot `id` as stored (not verified here: the receiver verifies
    /// it against the header), or `None` if this node has no such snapshot or chunk. Call
    /// it from a blocking task. Renews the snapshot's lease.
    pub fn read_chunk(&self, id: &str, index: usize) -> Result<Option<Vec<u8>>, SnapshotError> {
        let Some((header, body_start)) = self.cached_header(id)? else {
            return Ok(None);
        };
        let Some(info) = header.chunks.get(index) else {
            return Ok(None);
        };
        let Some(path) = self.any_file(id) else {
            return Ok(None);
        };
        self.lease(id);
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(body_start + header.chunk_offset(index)))?;
        let mut bytes = vec![0; info.len as usize];
        file.read_exact(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Whether a transfer read from snapshot `id` within the last [`TRANSFER_LINGER`].
    pub fn is_leased(&self, id: &str) -> bool {
        let leases = self.leases.lock().expect("lease lock");
        leases
            .get(id)
            .is_some_and(|at| at.elapsed() < TRANSFER_LINGER)
    }

    fn lease(&self, id: &str) {
        let mut leases = self.leases.lock().expect("lease lock");
        leases.retain(|_, at| at.elapsed() < TRANSFER_LINGER);
        leases.insert(id.to_string(), Instant::now());
    }

    fn cached_header(&self, id: &str) -> Result<Option<(SnapshotHeader, u64)>, SnapshotError> {
        if let Some(found) = self.headers.lock().expect("header lock").get(id) {
            if self.any_file(id).is_some() {
                return Ok(Some(found.clone()));
            }
        }
        let Some(path) = self.any_file(id) else {
            return Ok(None);
        };
        let mut input = BufReader::new(std::fs::File::open(path)?);
        let header = read_header(&mut input)?;
        let body_start = input.stream_position()?;
        let mut headers = self.headers.lock().expect("header lock");
        if headers.len() > 64 {
            headers.clear();
        }
        headers.insert(id.to_string(), (header.clone(), body_start));
        Ok(Some((header, body_start)))
    }

    /// Removes transfer snapshots no transfer has read from for [`TRANSFER_LINGER`].
    fn remove_unused_transfers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.transfers) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = id_of(&path) else {
                continue;
            };
            if !self.is_leased(id) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The file of snapshot `id` among the listed snapshots or the transfer snapshots.
    fn any_file(&self, id: &str) -> Option<PathBuf> {
        self.file(id).or_else(|| {
            let path = self.transfers.join(format!("{id}{SUFFIX}"));
            (well_formed_id(id) && path.is_file()).then_some(path)
        })
    }

    /// Removes snapshot `id` (a listed one).
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match self.file(id) {
            Some(path) => std::fs::remove_file(path),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// Every snapshot, by height.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(id) = id_of(&path) else {
                continue;
            };
            let mut input = BufReader::new(std::fs::File::open(&path)?);
            let header = read_header(&mut input)?;
            let bytes = std::fs::metadata(&path)?.len();
            out.push(SnapshotInfo::new(id.to_string(), &header, bytes));
        }
        out.sort_by(|a, b| (a.height, &a.id).cmp(&(b.height, &b.id)));
        Ok(out)
    }

    /// The file of snapshot `id`, if there is one (ids other than the store's own form are
    /// refused, so no path outside the directory can be named).
    pub fn file(&self, id: &str) -> Option<PathBuf> {
        let path = self.path_of(id);
        (well_formed_id(id) && path.is_file()).then_some(path)
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }
}

/// The id of a snapshot at `height` with `digest`.
pub fn snapshot_id(height: u64, digest: &crate::ops_log::Digest) -> String {
    format!("{height:020}-{}", &digest.to_hex()[..16])
}

/// The snapshot id a snapshot file's path names.
fn id_of(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()?.strip_suffix(SUFFIX)
}

fn well_formed_id(id: &str) -> bool {
    id.len() == 37
        && id.as_bytes()[20] == b'-'
        && id
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 20 || b.is_ascii_digit() || (i > 20 && b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops_log::{LwwOp, OpMeta, StateMachine};
    use crate::NodeId;

    #[test]
    fn a_snapshot_is_written_listed_and_found_by_id_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let origin = NodeId::synthetic(1);
        let mut state = LwwMap::default();
        let mut cut = VersionVector::new();
        for seq in 1..=10 {
            let meta = OpMeta {
                origin: &origin,
                seq,
                lamport: seq,
            };
            state.apply(
                &meta,
                &LwwOp {
                    key: format!("k{seq}"),
                    value: Some("v".into()),
                },
            );
            cut.set(origin.clone(), seq);
        }
        let info = store.create(&state, &cut).unwrap();
        assert_eq!(info.height, 10);
        assert_eq!(info.digest, state.digest().to_hex());
        assert_eq!(store.list().unwrap(), vec![info.clone()]);
        let path = store.file(&info.id).expect("found by its id");
        let (_, back): (_, LwwMap) =
            crate::snapshot::read_snapshot(&mut BufReader::new(std::fs::File::open(path).unwrap()))
                .unwrap();
        assert_eq!(back, state);
        assert!(store.file("../../etc/passwd").is_none());
        assert!(store.file(&info.id.replace('-', "/")).is_none());
        // an unfinished file is cleaned up on open and never listed
        std::fs::write(dir.path().join("snapshots/1-2.partial"), b"half").unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
