//! A node's snapshot files, in `<data_dir>/snapshots/`: made on request from the stable
//! state (a persistent map, so taking it is O(1)) and written on a blocking thread while the
//! node goes on applying ops; listed from their headers; served by id.
//!
//! A file is written as `<id>.partial`, synced, then renamed, so a listed snapshot is always
//! whole. Its id is `<height, 20 digits>-<first 16 hex digits of the digest>`: the same
//! state makes the same file.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::views::vector_json;
use crate::ops_log::LwwMap;
use crate::snapshot::{
    read_header, write_snapshot, SnapshotError, SnapshotHeader, DEFAULT_CHUNK_BYTES,
};
use crate::VersionVector;

const SUFFIX: &str = ".tmsnap";

/// One snapshot file, as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
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
    pub status: &'static str,
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
            status: "final",
        }
    }
}

/// The snapshot directory of one node.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating it if needed) `<data_dir>/snapshots`, removing unfinished files.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("snapshots");
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "partial") {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(Self { dir })
    }

    /// Writes `state` at `cut` as a snapshot file (on the calling thread: call it from a
    /// blocking task).
    pub fn create(
        &self,
        state: &LwwMap,
        cut: &VersionVector,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let partial = self
            .dir
            .join(format!("{created}-{}.partial", std::process::id()));
        let file = std::fs::File::create(&partial)?;
        let mut out = BufWriter::new(file);
        let header = write_snapshot(&mut out, state, cut, created, DEFAULT_CHUNK_BYTES)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let id = format!("{:020}-{}", header.height, &header.digest.to_hex()[..16]);
        let path = self.path_of(&id);
        std::fs::rename(&partial, &path)?;
        let bytes = std::fs::metadata(&path)?.len();
        Ok(SnapshotInfo::new(id, &header, bytes))
    }

    /// Every snapshot, by height.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SUFFIX))
            else {
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
        let well_formed = id.len() == 37
            && id.as_bytes()[20] == b'-'
            && id
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 20 || b.is_ascii_digit() || (i > 20 && b.is_ascii_hexdigit()));
        let path = self.path_of(id);
        (well_formed && path.is_file()).then_some(path)
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }
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
