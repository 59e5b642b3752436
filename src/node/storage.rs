//! The node's durable state in one embedded redb database (`<data-dir>/tidemark.redb`).
//!
//! | table | key | value (CBOR unless noted) |
//! |---|---|---|
//! | `meta` | `"node_key"` | the libp2p keypair (protobuf encoding) |
//! | `meta` | `"checkpoint_header"` | [`Checkpoint`] without its state: incarnation, phase, stable cut, Lamport time, network map, own-op counter |
//! | `meta` | `"own_seq"` | the highest seq this node gave one of its ops (u64), written in the transaction that stores the op |
//! | `meta` | `"votes"` | this node's acceptor state in the agreement on views ([`Votes`]), written, synced, whenever it changes and before the node answers |
//! | `state` | key (UTF-8) | the stable state's [`LwwEntry`] for that key, at the header's stable cut, where it differs from the base file's (all of it when there is no base file) |
//! | `meta` | `"state_base"` | the base file of the stable state, if any ([`BaseRecord`]: its name, entries and bytes) |
//! | `base_index` | key (UTF-8) | that key's byte offset in the base file (u64), for one key in [`INDEX_EVERY`](super::base_file::INDEX_EVERY) |
//! | `meta` | `"base_shadowed"` | how many keys of the `state` table the base file also holds (u64), so the state's size is known without a scan |
//! | `ops` | origin length (1 byte), origin bytes, seq (u64 big-endian) | one applied op above the header's stable cut, or one of this node's own ops from the header's `own_kept_from` on (its journal) |
//! | `digest_chunks` | empty (the head chunk), or 0x01 · the key that starts the chunk | the 32-byte BLAKE3 hash of that digest chunk of the stored state (raw), so a restart does not hash the state again |
//! | `meta` | `"staged_base"` | the base file a transferred (or restored) state is written to while it arrives, as far as it is synced ([`BaseRecord`]) |
//! | `staged_index` | key (UTF-8) | that file's index, as far as it is synced |
//! | `meta` | `"staged_cut"` | the cut of the staged state |
//! | `meta` | `"staged_of"` | the snapshot whose chunks are staged, and how many of them ([`StagedProgress`]), written when the staged file is synced |
//! | `meta` | `"held_grant"` | the grant whose offered state this joiner fetches ([`HeldGrant`]), written, synced, when a fetch begins; removed by the first checkpoint |
//!
//! Every change is one redb write transaction, committed durably before the driver lets
//! anything that depends on it out (a 201, a publish): a `kill -9` at any moment leaves the
//! last committed transaction, which holds every acknowledged op. Ops given with a
//! checkpoint that makes them stable (and prunes them) are folded without entering `ops`.
//!
//! The stable state is stored incrementally. A checkpoint normally *folds*: the keys that
//! the ops between the stored cut and the new one touch are written with the new stable
//! state's entries and those ops are deleted, all in the transaction that stores the new
//! header. A state kept in this store holds in memory exactly the entries it changed since
//! the stored cut, so those are the keys, and no op is read back; otherwise they are read
//! from the stored ops. Its cost follows the ops that became stable, not the state. A
//! state that replaced the log (a grant) is written whole, or, when it was transferred or
//! read from a snapshot file to restore a network, was appended to a new base file chunk by
//! chunk as it arrived (off the event loop, [`super::base_file`]) and the checkpoint makes
//! that file the state's base, empties `state` and folds from the staged cut. A whole
//! write drops the base file.
//!
//! A joiner that stops while it fetches a state keeps what it staged: the held grant and
//! the staged chunks of its snapshot survive, and the next process resumes the fetch from
//! the first chunk not staged ([`Stager::resume`]). Staging commits are synced every
//! [`STAGED_PER_SYNC`] chunks, so a crash loses at most that many.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tracing::{info, warn};

use serde::{Deserialize, Serialize};

use super::base_file::BaseFile;
use crate::join_protocol::awaited::HeldGrant;
use crate::network_map::view::Votes;
use crate::ops_log::{LwwEntry, LwwMap, LwwOp, Op, StoredEntries};
use crate::replica::{Checkpoint, DurablePhase};
use crate::version_vector::VersionVector;
use crate::NodeId;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ops");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Where versions before the base files staged a transferred state; dropped at open.
const LEGACY_STAGED: TableDefinition<&str, &[u8]> = TableDefinition::new("staged");
const BASE_INDEX: TableDefinition<&str, u64> = TableDefinition::new("base_index");
const STAGED_INDEX: TableDefinition<&str, u64> = TableDefinition::new("staged_index");
const DIGEST_CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("digest_chunks");

const NODE_KEY: &str = "node_key";
const HEADER: &str = "checkpoint_header";
const STAGED_CUT: &str = "staged_cut";
const STAGED_OF: &str = "staged_of";
const HELD_GRANT: &str = "held_grant";
const STATE_BASE: &str = "state_base";
const STAGED_BASE: &str = "staged_base";
const BASE_SHADOWED: &str = "base_shadowed";
const OWN_SEQ: &str = "own_seq";
const VOTES: &str = "votes";
/// Where versions before the incremental state kept the whole checkpoint, state included;
/// migrated when the database is opened.
const LEGACY_CHECKPOINT: &str = "checkpoint";

/// redb's page cache. Its default (1 GiB) let a node's memory grow with the state it
/// wrote; the pages a node reads back are few and recent.
const CACHE_BYTES: usize = 16 << 20;

/// A storage failure: the node stops rather than run on without durability.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data store error: {0}")]
    Db(Box<redb::Error>),
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("cannot create the data directory: {0}")]
    Dir(#[from] std::io::Error),
    /// The data dir's file system has no space left (or the node's quota or file-size limit
    /// is reached): nothing of the failed transaction was stored.
    #[error("the data dir's disk is full ({0}): nothing more can be stored until there is space")]
    DiskFull(String),
    /// The database was closed to be reopened after a failed write, and did not open.
    #[error("the database could not be opened again after a failed write")]
    NotReopened,
}

/// Whether an I/O error says the disk (or a quota, or a file-size limit) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge)
}

impl From<redb::Error> for StorageError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if is_disk_full(&io) => StorageError::DiskFull(io.to_string()),
            e => StorageError::Db(Box::new(e)),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

/// A base file as the database records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// Its name in the data dir.
    pub file: String,
    pub entries: u64,
    pub bytes: u64,
}

impl BaseRecord {
    fn of(base: &BaseFile) -> Self {
        Self {
            file: base.file_name(),
            entries: base.len(),
            bytes: base.bytes(),
        }
    }
}

/// Which snapshot's chunks are staged, and how many (in index order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedProgress {
    pub snapshot_id: String,
    pub chunks: u64,
}

/// What a data directory held when the node started.
pub struct Loaded {
    pub checkpoint: Option<Checkpoint<LwwMap>>,
    pub ops: Vec<Arc<Op<LwwOp>>>,
    /// Digest chunk hashes of the state taken from the store rather than hashed again.
    pub chunk_hashes_restored: usize,
}

/// The node's redb database.
pub struct Storage {
    /// `None` only while [`Storage::reopen`] replaces it.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// The data dir (where base files are).
    dir: PathBuf,
    /// Reads of the stored state that failed ([`StoredState`]).
    read_failures: AtomicU64,
    /// The stable state's base file. Replaced only under this lock's write side, around
    /// the commit that records the change, and a view of the state reads it and opens its
    /// read transaction under the read side: the two always match.
    base: RwLock<Option<Arc<BaseFile>>>,
    /// The base file a state is being staged to.
    staging: Mutex<Option<Arc<BaseFile>>>,
}

/// The open database, borrowed for one call.
struct Db<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when borrowed")
    }
}

/// How a checkpoint's stable state reaches the `state` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateWrite {
    /// The state is the stored one with the ops up to the new cut folded in (the same log
    /// generation): only the keys those ops touch are written. Falls back to `Whole` when
    /// the stored ops do not account for the difference between the cuts.
    Fold,
    /// The whole state is written (a state installed from a grant handed over inline).
    Whole,
    /// The state was written to a new base file as it was transferred ([`Stager`]); it
    /// replaces the stored one and the ops above its cut are folded in.
    Staged,
}

/// One batch of changes, written in one transaction.
pub struct Batch<'a> {
    pub ops: Vec<Arc<Op<LwwOp>>>,
    pub checkpoint: Option<Checkpoint<&'a LwwMap>>,
    /// How the checkpoint's state is stored (ignored without a checkpoint).
    pub state: StateWrite,
    /// Whether the batch must be on disk when `write` returns (it holds this node's own
    /// new ops, or a new incarnation or phase). Otherwise it is committed without a sync,
    /// atomically, and reaches the disk with the next durable write: a crash may lose it,
    /// which a node that resumes with a new incarnation tolerates.
    pub durable: bool,
    /// This node's own-op counter ([`Checkpoint::own_seq`]), stored in the same
    /// transaction as the batch's ops, so that no seq it acknowledged is ever given again.
    pub own_seq: Option<u64>,
    /// This node's acceptor state, when it changed: the batch is then durable.
    pub votes: Option<Votes>,
}

impl Batch<'_> {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.checkpoint.is_none() && self.votes.is_none()
    }
}

/// What a checkpoint write did to the stored state (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateWritten {
    /// Entries written to the `state` table.
    pub entries: u64,
    /// Whether the whole state was written.
    pub whole: bool,
    /// The keys written, when not the whole state.
    pub keys: Vec<String>,
    /// Ops written to the `ops` table (the batch's others were folded from memory).
    pub ops_stored: u64,
}

fn corrupt(what: &'static str) -> impl FnOnce(ciborium::de::Error<std::io::Error>) -> StorageError {
    move |e| StorageError::Corrupt {
        what,
        reason: e.to_string(),
    }
}

fn to_cbor<T: serde::Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) {
    buf.clear();
    ciborium::into_writer(value, &mut *buf).expect("writing to a Vec");
}

impl Storage {
    /// Opens (or creates) the database in `dir`. A state left half-staged is dropped,
    /// unless it is the state of the held grant's snapshot (a joiner resumes fetching it);
    /// a checkpoint in the layout before the incremental state is migrated.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("tidemark.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)?;
        let txn = db.begin_write()?;
        let base;
        let mut staging = None;
        {
            let mut meta = txn.open_table(META)?;
            txn.open_table(OPS)?;
            txn.open_table(STATE)?;
            txn.open_table(DIGEST_CHUNKS)?;
            txn.delete_table(LEGACY_STAGED)?;
            base = match read_record(&meta, STATE_BASE)? {
                Some(record) => {
                    let index = read_index(&txn.open_table(BASE_INDEX)?)?;
                    let file = BaseFile::open(
                        &dir.join(&record.file),
                        record.bytes,
                        record.entries,
                        index,
                    )
                    .map_err(|e| StorageError::Corrupt {
                        what: "state base file",
                        reason: format!("{}: {e}", record.file),
                    })?;
                    Some(Arc::new(file))
                }
                None => None,
            };
            let held_snapshot = match meta.get(HELD_GRANT)? {
                Some(v) => ciborium::from_reader::<HeldGrant<LwwMap>, _>(v.value())
                    .ok()
                    .and_then(|held| held.grant.offer().map(|o| o.snapshot_id.clone())),
                None => None,
            };
            let staged_of = match meta.get(STAGED_OF)? {
                Some(v) => ciborium::from_reader::<StagedProgress, _>(v.value()).ok(),
                None => None,
            };
            let resumable = held_snapshot.is_some()
                && staged_of.is_some_and(|p| Some(p.snapshot_id) == held_snapshot);
            if resumable {
                if let Some(record) = read_record(&meta, STAGED_BASE)? {
                    let index = read_index(&txn.open_table(STAGED_INDEX)?)?;
                    match BaseFile::open(
                        &dir.join(&record.file),
                        record.bytes,
                        record.entries,
                        index,
                    ) {
                        Ok(file) => staging = Some(Arc::new(file)),
                        Err(error) => warn!(%error, "the staged state cannot be resumed"),
                    }
                }
            }
            if staging.is_none() {
                txn.delete_table(STAGED_INDEX)?;
                meta.remove(STAGED_BASE)?;
                meta.remove(STAGED_CUT)?;
                meta.remove(STAGED_OF)?;
            }
            let legacy = meta.remove(LEGACY_CHECKPOINT)?.map(|v| v.value().to_vec());
            if let Some(bytes) = legacy {
                let checkpoint: Checkpoint<LwwMap> =
                    ciborium::from_reader(bytes.as_slice()).map_err(corrupt("checkpoint"))?;
                let mut state = txn.open_table(STATE)?;
                let mut buf = Vec::new();
                for (key, entry) in checkpoint.stable_state.all_entries() {
                    to_cbor(entry.as_ref(), &mut buf);
                    state.insert(key.as_ref(), buf.as_slice())?;
                }
                to_cbor(&header_of(&checkpoint), &mut buf);
                meta.insert(HEADER, buf.as_slice())?;
            }
        }
        txn.commit()?;
        let mut db = db;
        compact(&mut db, &path)?;
        remove_base_files_but(dir, &[base.as_deref(), staging.as_deref()]);
        Ok(Self {
            db: RwLock::new(Some(db)),
            path,
            dir: dir.to_path_buf(),
            read_failures: AtomicU64::new(0),
            base: RwLock::new(base),
            staging: Mutex::new(staging),
        })
    }

    /// The stable state's base file, if it has one.
    pub fn base(&self) -> Option<Arc<BaseFile>> {
        self.base.read().expect("base lock").clone()
    }

    /// Reads of the stored state that failed since the database was opened.
    pub fn read_failures(&self) -> u64 {
        self.read_failures.load(Ordering::Relaxed)
    }

    fn db(&self) -> Result<Db<'_>, StorageError> {
        let guard = self.db.read().expect("storage lock");
        if guard.is_none() {
            return Err(StorageError::NotReopened);
        }
        Ok(Db(guard))
    }

    /// Closes and opens the database again. After a failed write (a full disk) redb
    /// refuses every further transaction until it is reopened, which recovers the last
    /// committed one; a write that failed is simply not there.
    pub fn reopen(&self) -> Result<(), StorageError> {
        let mut slot = self.db.write().expect("storage lock");
        drop(slot.take());
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&self.path)?;
        *slot = Some(db);
        Ok(())
    }

    /// The stored node key, if any.
    pub fn node_key(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(NODE_KEY)?.map(|v| v.value().to_vec()))
    }

    pub fn set_node_key(&self, key: &[u8]) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        txn.open_table(META)?.insert(NODE_KEY, key)?;
        txn.commit()?;
        Ok(())
    }

    /// Replaces the node key with `key`, a new identity for a data dir restored from a
    /// backup, and forgets the own-op counter (`own_seq`), which counted the old identity's
    /// ops: the new one starts at seq 1, and the old identity's votes (the new one has no
    /// seat). One transaction; the stored checkpoint and ops are
    /// left as they are (the old identity's, until the first checkpoint of the new one).
    pub fn replace_node_key(&self, key: &[u8]) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(NODE_KEY, key)?;
            meta.remove(OWN_SEQ)?;
            meta.remove(VOTES)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The last checkpoint (its state read from the `state` table) and the ops stored
    /// above its stable cut.
    pub fn load(self: &Arc<Self>) -> Result<Loaded, StorageError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let own_seq = meta
            .get(OWN_SEQ)?
            .map(|v| read_u64(v.value()))
            .transpose()?;
        let mut chunk_hashes_restored = 0;
        let checkpoint = match meta.get(HEADER)? {
            Some(v) => {
                let mut header: Checkpoint<()> =
                    ciborium::from_reader(v.value()).map_err(corrupt("checkpoint"))?;
                header.own_seq = header.own_seq.max(own_seq.unwrap_or(0));
                // the votes stored on their own are the newest
                if let Some(v) = meta.get(VOTES)? {
                    header.votes =
                        Some(ciborium::from_reader(v.value()).map_err(corrupt("votes"))?);
                }
                let hashes = read_chunk_hashes(&txn)?;
                let store: Arc<dyn StoredEntries> = Arc::new(StoredState::live(self.clone()));
                let state = LwwMap::over_store(store, hashes);
                chunk_hashes_restored = state.chunk_hashes().count();
                Some(with_state(header, state))
            }
            None => None,
        };
        let cut = checkpoint
            .as_ref()
            .map(|c| c.stable_cut.clone())
            .unwrap_or_default();
        let me = checkpoint.as_ref().map(|c| c.id.clone());
        let table = txn.open_table(OPS)?;
        let mut ops = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            let op: Op<LwwOp> = ciborium::from_reader(value.value()).map_err(corrupt("op"))?;
            // above the cut, or this node's own (its journal keeps them past the cut)
            if op.seq > cut.get(&op.origin) || me.as_ref() == Some(&op.origin) {
                ops.push(Arc::new(op));
            }
        }
        Ok(Loaded {
            checkpoint,
            ops,
            chunk_hashes_restored,
        })
    }

    /// Writes a batch in one transaction, synced to disk if the batch is `durable`.
    pub fn write(&self, batch: &Batch<'_>) -> Result<StateWritten, StorageError> {
        if batch.is_empty() {
            return Ok(StateWritten::default());
        }
        let mut txn = self.db()?.begin_write()?;
        if !batch.durable {
            txn.set_durability(redb::Durability::None);
        }
        let mut written = StateWritten::default();
        // the base file the state has after this batch, when it changes
        let mut new_base: Option<Option<Arc<BaseFile>>> = None;
        {
            let mut ops = txn.open_table(OPS)?;
            let mut buf = Vec::new();
            // the ops this batch's checkpoint makes stable and prunes are folded from memory
            // and never enter the table
            let mut stable_unstored = Vec::new();
            let mut ops_stored = 0;
            for op in &batch.ops {
                let pruned = batch.checkpoint.as_ref().is_some_and(|c| {
                    op.seq
                        <= pruned_upto(
                            &op.origin,
                            c.stable_cut.get(&op.origin),
                            &c.id,
                            c.own_kept_from,
                        )
                });
                if pruned {
                    stable_unstored.push(op);
                    continue;
                }
                to_cbor(op.as_ref(), &mut buf);
                ops.insert(op_key(&op.origin, op.seq).as_slice(), buf.as_slice())?;
                ops_stored += 1;
            }
            if let Some(votes) = &batch.votes {
                let mut meta = txn.open_table(META)?;
                meta.insert(VOTES, to_vec(votes).as_slice())?;
            }
            if let Some(own_seq) = batch.own_seq {
                let mut meta = txn.open_table(META)?;
                let stored = meta
                    .get(OWN_SEQ)?
                    .map(|v| read_u64(v.value()))
                    .transpose()?;
                if stored.is_none_or(|s| s < own_seq) {
                    meta.insert(OWN_SEQ, own_seq.to_be_bytes().as_slice())?;
                }
            }
            if let Some(checkpoint) = &batch.checkpoint {
                let mut meta = txn.open_table(META)?;
                let state = checkpoint.stable_state;
                let new_cut = &checkpoint.stable_cut;
                let staged_cut = match batch.state {
                    StateWrite::Staged => meta.remove(STAGED_CUT)?.map(|v| v.value().to_vec()),
                    _ => None,
                };
                // a member has its state: nothing is left to resume (a joiner's
                // checkpoints keep the grant it fetches the state of)
                if !matches!(checkpoint.phase, DurablePhase::Joining { .. }) {
                    meta.remove(HELD_GRANT)?;
                    meta.remove(STAGED_OF)?;
                }
                let staged = match batch.state {
                    StateWrite::Staged => self.staging.lock().expect("staging lock").clone(),
                    _ => None,
                };
                let mut shadowed = match meta.get(BASE_SHADOWED)? {
                    Some(v) => read_u64(v.value())?,
                    None => 0,
                };
                written = match (batch.state, staged_cut, staged) {
                    (StateWrite::Staged, Some(bytes), Some(staged)) => {
                        let cut: VersionVector = ciborium::from_reader(bytes.as_slice())
                            .map_err(corrupt("staged cut"))?;
                        // the staged file becomes the base, whole and synced, with an
                        // empty delta
                        staged.sync().map_err(base_error)?;
                        {
                            let mut index = txn.open_table(STAGED_INDEX)?;
                            for (key, offset) in staged.take_unpersisted() {
                                index.insert(key.as_str(), offset)?;
                            }
                        }
                        txn.delete_table(BASE_INDEX)?;
                        txn.rename_table(STAGED_INDEX, BASE_INDEX)?;
                        meta.insert(STATE_BASE, to_vec(&BaseRecord::of(&staged)).as_slice())?;
                        meta.remove(STAGED_BASE)?;
                        txn.delete_table(STATE)?;
                        shadowed = 0;
                        new_base = Some(Some(staged.clone()));
                        let written = fold_or_whole(
                            &txn,
                            &mut ops,
                            &stable_unstored,
                            Keys::FromOps,
                            &cut,
                            new_cut,
                            state,
                            Some(&staged),
                            &mut shadowed,
                        )?;
                        // the stored chunk hashes were the replaced state's
                        write_all_chunk_hashes(&txn, state)?;
                        written
                    }
                    (StateWrite::Staged, _, _) => {
                        warn!("no staged state to swap in; writing the whole state");
                        meta.remove(STAGED_BASE)?;
                        txn.delete_table(STAGED_INDEX)?;
                        write_whole(&txn, state)?
                    }
                    (StateWrite::Whole, _, _) => write_whole(&txn, state)?,
                    (StateWrite::Fold, _, _) => {
                        let old_cut = match meta.get(HEADER)? {
                            Some(v) => {
                                ciborium::from_reader::<Checkpoint<()>, _>(v.value())
                                    .map_err(corrupt("checkpoint"))?
                                    .stable_cut
                            }
                            None => VersionVector::new(),
                        };
                        let base = self.base();
                        // a state kept in this store holds in memory what changed
                        // since the stored cut
                        let keys_from = if state.store().is_some() {
                            Keys::InMemory
                        } else {
                            Keys::FromOps
                        };
                        fold_or_whole(
                            &txn,
                            &mut ops,
                            &stable_unstored,
                            keys_from,
                            &old_cut,
                            new_cut,
                            state,
                            base.as_deref(),
                            &mut shadowed,
                        )?
                    }
                };
                if written.whole {
                    // the whole state is in the `state` table: the base file is dropped
                    meta.remove(STATE_BASE)?;
                    meta.remove(BASE_SHADOWED)?;
                    txn.delete_table(BASE_INDEX)?;
                    new_base = Some(None);
                } else if new_base
                    .as_ref()
                    .map_or(self.base().is_some(), Option::is_some)
                {
                    meta.insert(BASE_SHADOWED, shadowed.to_be_bytes().as_slice())?;
                }
                to_cbor(&header_of(checkpoint), &mut buf);
                meta.insert(HEADER, buf.as_slice())?;
                prune(&mut ops, new_cut, &checkpoint.id, checkpoint.own_kept_from)?;
            }
            written.ops_stored = ops_stored;
        }
        let Some(new_base) = new_base else {
            txn.commit()?;
            return Ok(written);
        };
        let old = {
            let mut slot = self.base.write().expect("base lock");
            txn.commit()?;
            std::mem::replace(&mut *slot, new_base.clone())
        };
        if matches!(batch.state, StateWrite::Staged) {
            let mut staging = self.staging.lock().expect("staging lock");
            let swapped = staging
                .as_ref()
                .is_some_and(|s| new_base.as_ref().is_some_and(|b| Arc::ptr_eq(s, b)));
            if swapped || new_base.is_none() {
                if let (Some(s), None) = (staging.as_ref(), new_base.as_ref()) {
                    remove_base_file(s.path());
                }
                *staging = None;
            }
        }
        if let Some(old) = old {
            if !new_base.as_ref().is_some_and(|b| Arc::ptr_eq(&old, b)) {
                // views pinned before keep their open file
                remove_base_file(old.path());
            }
        }
        Ok(written)
    }

    /// Starts staging a state at `cut`: drops anything staged before. With `held` (a
    /// transfer), stores the held grant with the staged snapshot's progress, synced.
    fn begin_staging(
        &self,
        cut: &VersionVector,
        held: Option<(&[u8], &StagedProgress)>,
    ) -> Result<(), StorageError> {
        let file = BaseFile::create(&self.dir.join(new_base_name())).map_err(base_error)?;
        let file = Arc::new(file);
        let mut txn = self.db()?.begin_write()?;
        if held.is_none() {
            txn.set_durability(redb::Durability::None);
        }
        txn.delete_table(STAGED_INDEX)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(STAGED_CUT, to_vec(cut).as_slice())?;
            meta.insert(STAGED_BASE, to_vec(&BaseRecord::of(&file)).as_slice())?;
            match held {
                Some((grant, progress)) => {
                    meta.insert(HELD_GRANT, grant)?;
                    meta.insert(STAGED_OF, to_vec(progress).as_slice())?;
                }
                None => {
                    meta.remove(STAGED_OF)?;
                }
            }
        }
        txn.commit()?;
        let old = self.staging.lock().expect("staging lock").replace(file);
        if let Some(old) = old {
            remove_base_file(old.path());
        }
        Ok(())
    }

    /// Appends one chunk's entries to the staged base file ([`Storage::sync_staged`]
    /// makes them durable).
    fn stage(&self, entries: &[(String, LwwEntry)], buf: &mut Vec<u8>) -> Result<(), StorageError> {
        let staging = self.staging.lock().expect("staging lock").clone();
        let Some(staging) = staging else {
            return Err(StorageError::Corrupt {
                what: "staged state",
                reason: "nothing is being staged".into(),
            });
        };
        staging.append(entries, buf).map_err(base_error)
    }

    /// Syncs the staged base file and records it (its length and new index entries) with
    /// `progress`, in one synced transaction: what a restart resumes from.
    fn sync_staged(&self, progress: Option<&StagedProgress>) -> Result<(), StorageError> {
        let staging = self.staging.lock().expect("staging lock").clone();
        let Some(staging) = staging else {
            return Ok(());
        };
        staging.sync().map_err(base_error)?;
        let txn = self.db()?.begin_write()?;
        {
            let mut index = txn.open_table(STAGED_INDEX)?;
            for (key, offset) in staging.take_unpersisted() {
                index.insert(key.as_str(), offset)?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(STAGED_BASE, to_vec(&BaseRecord::of(&staging)).as_slice())?;
            if let Some(progress) = progress {
                meta.insert(STAGED_OF, to_vec(progress).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The grant a joiner was fetching the state of when it stopped, if any.
    pub fn held_grant(&self) -> Result<Option<HeldGrant<LwwMap>>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let held = match meta.get(HELD_GRANT)? {
            Some(v) => Some(ciborium::from_reader(v.value()).map_err(corrupt("held grant"))?),
            None => None,
        };
        Ok(held)
    }

    /// Forgets the held grant (its fetch was given up), synced, so that a restart does
    /// not resume it. What was staged stays for a later grant of the same snapshot
    /// ([`Stager::resume`]) unless `drop_staged` (it did not rebuild the offered state);
    /// the next start drops it in any case.
    pub fn forget_held_grant(&self, drop_staged: bool) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.remove(HELD_GRANT)?;
            if drop_staged {
                meta.remove(STAGED_OF)?;
                meta.remove(STAGED_CUT)?;
                meta.remove(STAGED_BASE)?;
            }
        }
        if drop_staged {
            txn.delete_table(STAGED_INDEX)?;
        }
        txn.commit()?;
        if drop_staged {
            if let Some(staging) = self.staging.lock().expect("staging lock").take() {
                remove_base_file(staging.path());
            }
        }
        Ok(())
    }

    /// How many chunks of snapshot `snapshot_id` at `cut` are staged, and their entries
    /// in key order, fed to `feed`; 0 (and `feed` is not called) when the staged state is
    /// another's. Also stores `held` (its keepalive count raised), synced.
    fn resume_staging(
        &self,
        snapshot_id: &str,
        cut: &VersionVector,
        held: &[u8],
        feed: impl FnOnce(usize, &mut dyn Iterator<Item = (String, LwwEntry)>) -> Result<(), String>,
    ) -> Result<usize, StorageError> {
        let kept = {
            let txn = self.db()?.begin_read()?;
            let meta = txn.open_table(META)?;
            let progress = match meta.get(STAGED_OF)? {
                Some(v) => Some(
                    ciborium::from_reader::<StagedProgress, _>(v.value())
                        .map_err(corrupt("staging progress"))?,
                ),
                None => None,
            };
            let staged_cut = match meta.get(STAGED_CUT)? {
                Some(v) => Some(
                    ciborium::from_reader::<VersionVector, _>(v.value())
                        .map_err(corrupt("staged cut"))?,
                ),
                None => None,
            };
            let staging = self.staging.lock().expect("staging lock").clone();
            match (progress, staging) {
                (Some(p), Some(staging))
                    if p.snapshot_id == snapshot_id && staged_cut.as_ref() == Some(cut) =>
                {
                    let mut failed = None;
                    let mut rows = staging
                        .range(Bound::Unbounded, Bound::Unbounded)
                        .map_while(|row| row.map_err(|e| failed = Some(base_error(e))).ok());
                    let fed = feed(p.chunks as usize, &mut rows);
                    drop(rows);
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    fed.map_err(|reason| StorageError::Corrupt {
                        what: "staged state",
                        reason,
                    })?;
                    p.chunks as usize
                }
                _ => 0,
            }
        };
        let txn = self.db()?.begin_write()?;
        txn.open_table(META)?.insert(HELD_GRANT, held)?;
        txn.commit()?;
        Ok(kept)
    }

    /// Number of ops stored (for tests and metrics).
    pub fn stored_ops(&self) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read()?;
        Ok(txn.open_table(OPS)?.len()?)
    }
}

/// Gives the file's free pages back to the file system. redb reuses freed pages but never
/// shrinks its file, and doubles a small file when it runs out of free pages (a long read
/// transaction, such as an export's, keeps the pages that commits free meanwhile from being
/// reused): a restart brings the file back near the live data. Nothing else may use the
/// database meanwhile, so this runs when it is opened.
fn compact(db: &mut Database, path: &Path) -> Result<(), StorageError> {
    let before = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let started = std::time::Instant::now();
    while db.compact()? {}
    let after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if after < before {
        info!(
            before_mib = before >> 20,
            after_mib = after >> 20,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "compacted the database"
        );
    }
    Ok(())
}

/// The node's stored state as the store of its state's maps ([`StoredEntries`]): the
/// stable state at the stored cut, which the maps read under the entries they hold in
/// memory. It is the `state` table over the base file, if there is one: a key the table
/// holds is read from it, any other from the base file. A live view reads what is
/// committed at each read; a pinned one reads one read transaction's view (and the base
/// file that went with it); the staged view reads the state being staged while there is
/// one, and the live state once it is swapped in. A read that fails is logged and counted
/// ([`Storage::read_failures`]) and answers as if the key were absent.
pub struct StoredState {
    storage: Arc<Storage>,
    source: Source,
}

enum Source {
    Live,
    Staged,
    Pinned(View),
}

/// What one read reads: the table, the base file and how many keys they share.
#[derive(Clone, Default)]
struct View {
    table: Option<Arc<StateTable>>,
    base: Option<Arc<BaseFile>>,
    /// Keys both hold (read only for views that count: 0 in the others).
    shadowed: u64,
}

type StateTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

impl StoredState {
    /// The live view of `storage`'s state.
    pub fn live(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            source: Source::Live,
        }
    }

    /// The view of the state being staged (transferred or restored): what a state built
    /// from the staged chunks reads; once the checkpoint after its install swaps it in, the
    /// live state.
    pub fn staged(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            source: Source::Staged,
        }
    }

    /// What to read now. `counting`: the read needs the count of shared keys (only the
    /// state's length does; reading it costs a table lookup).
    fn view(&self, counting: bool) -> Result<View, StorageError> {
        match &self.source {
            Source::Pinned(view) => Ok(view.clone()),
            Source::Staged => {
                let staging = self.storage.staging.lock().expect("staging lock").clone();
                match staging {
                    Some(base) => Ok(View {
                        table: None,
                        base: Some(base),
                        shadowed: 0,
                    }),
                    None => self.live_view(counting),
                }
            }
            Source::Live => self.live_view(counting),
        }
    }

    fn live_view(&self, counting: bool) -> Result<View, StorageError> {
        // the base and the transaction under one lock: a swap commits under its write side
        let base = self.storage.base.read().expect("base lock");
        let txn = self.storage.db()?.begin_read()?;
        let table = match txn.open_table(STATE) {
            Ok(table) => Some(Arc::new(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let shadowed = match base.as_ref() {
            Some(_) if counting => match txn.open_table(META)?.get(BASE_SHADOWED)? {
                Some(v) => read_u64(v.value())?,
                None => 0,
            },
            _ => 0,
        };
        Ok(View {
            table,
            base: base.clone(),
            shadowed,
        })
    }

    fn failed<T>(&self, what: &str, error: impl std::fmt::Display, fallback: T) -> T {
        self.storage.read_failures.fetch_add(1, Ordering::Relaxed);
        warn!(%error, "reading {what} of the stored state failed");
        fallback
    }

    fn decode(key: &str, value: &[u8]) -> Result<LwwEntry, StorageError> {
        ciborium::from_reader(value).map_err(|e| StorageError::Corrupt {
            what: "state entry",
            reason: format!("{key}: {e}"),
        })
    }
}

impl StoredEntries for StoredState {
    fn get(&self, key: &str) -> Option<LwwEntry> {
        let read = || -> Result<Option<LwwEntry>, StorageError> {
            let view = self.view(false)?;
            if let Some(table) = &view.table {
                if let Some(value) = table.get(key)? {
                    return Self::decode(key, value.value()).map(Some);
                }
            }
            match &view.base {
                Some(base) => base.get(key).map_err(base_error),
                None => Ok(None),
            }
        };
        read().unwrap_or_else(|e| self.failed("a key", e, None))
    }

    fn range<'a>(
        &'a self,
        from: Bound<&str>,
        to: Bound<&str>,
    ) -> Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a> {
        let view = match self.view(false) {
            Ok(view) => view,
            Err(e) => return Box::new(self.failed("a range", e, std::iter::empty())),
        };
        // a failed row ends the range: the entries after it are not known
        let table_rows: Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a> = match &view.table
        {
            Some(table) => match table.range::<&str>((from, to)) {
                Ok(rows) => Box::new(rows.map_while(move |row| {
                    let decoded = row.map_err(StorageError::from).and_then(|(key, value)| {
                        let key = key.value();
                        Ok((key.to_owned(), Self::decode(key, value.value())?))
                    });
                    decoded.map_err(|e| self.failed("a range", e, ())).ok()
                })),
                Err(e) => return Box::new(self.failed("a range", e, std::iter::empty())),
            },
            None => Box::new(std::iter::empty()),
        };
        let Some(base) = &view.base else {
            return table_rows;
        };
        let base_rows = base.range(from, to).map_while(move |row| {
            row.map_err(|e| self.failed("a range of the base file", e, ()))
                .ok()
        });
        Box::new(OverBase {
            delta: table_rows.peekable(),
            base: base_rows.peekable(),
        })
    }

    fn len(&self) -> u64 {
        let count = || -> Result<u64, StorageError> {
            let view = self.view(true)?;
            let table = match &view.table {
                Some(table) => table.len()?,
                None => 0,
            };
            let base = view.base.as_ref().map_or(0, |b| b.len());
            Ok((table + base).saturating_sub(view.shadowed))
        };
        count().unwrap_or_else(|e| self.failed("the length", e, 0))
    }

    /// When the base file holds most of the state (the table at most an eighth of it).
    fn rereads_cheaply(&self) -> bool {
        let Ok(view) = self.view(false) else {
            return false;
        };
        let Some(base) = &view.base else {
            return false;
        };
        let table = view.table.as_ref().and_then(|t| t.len().ok()).unwrap_or(0);
        table <= base.len() / 8
    }

    fn pin(&self) -> Arc<dyn StoredEntries> {
        let view = self
            .view(true)
            .unwrap_or_else(|e| self.failed("a view", e, View::default()));
        Arc::new(Self {
            storage: self.storage.clone(),
            source: Source::Pinned(view),
        })
    }
}

/// The entries of the `state` table merged over the base file's, in key order: where both
/// hold a key, the table's entry (written later) is the one.
struct OverBase<D: Iterator, B: Iterator> {
    delta: std::iter::Peekable<D>,
    base: std::iter::Peekable<B>,
}

impl<D, B> Iterator for OverBase<D, B>
where
    D: Iterator<Item = (String, LwwEntry)>,
    B: Iterator<Item = (String, LwwEntry)>,
{
    type Item = (String, LwwEntry);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.delta.peek(), self.base.peek()) {
            (Some((d, _)), Some((b, _))) => d.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return None,
        };
        match order {
            std::cmp::Ordering::Less => self.delta.next(),
            std::cmp::Ordering::Greater => self.base.next(),
            std::cmp::Ordering::Equal => {
                self.base.next();
                self.delta.next()
            }
        }
    }
}

/// Folds the ops in `(old_cut, new_cut]` into the `state` table: the keys they touch
/// get `state`'s entries. A state kept in this store (`Keys::InMemory`) holds in memory
/// exactly the entries that changed since the stored cut, so their keys are the ones to
/// write, and no op is read back. Otherwise (`Keys::FromOps`) the keys are those of the
/// stored ops and of `unstored`, the batch's ops that never entered the table because this
/// checkpoint prunes them; when these do not account for every op between the cuts, the
/// whole state is written instead. So is it when the new cut is not above the old one.
/// Over a `base` file, counts in `shadowed` the keys newly written that the base also
/// holds, and writes the whole state rather than remove a key the base holds.
#[allow(clippy::too_many_arguments)]
fn fold_or_whole(
    txn: &redb::WriteTransaction,
    ops: &mut redb::Table<&[u8], &[u8]>,
    unstored: &[&Arc<Op<LwwOp>>],
    keys_from: Keys,
    old_cut: &VersionVector,
    new_cut: &VersionVector,
    state: &LwwMap,
    base: Option<&BaseFile>,
    shadowed: &mut u64,
) -> Result<StateWritten, StorageError> {
    for (origin, _) in old_cut.iter() {
        if new_cut.get(origin) < old_cut.get(origin) {
            warn!("the stable cut went back; writing the whole state");
            return write_whole(txn, state);
        }
    }
    let keys = match keys_from {
        Keys::InMemory => {
            let keys: BTreeSet<String> = state.in_memory_keys().map(str::to_owned).collect();
            // what the ops between the cuts touch is among them (checked where it is cheap
            // to: in debug builds, so every test that stores checks it)
            if cfg!(debug_assertions) {
                if let Some(touched) = keys_of_ops(ops, unstored, old_cut, new_cut)? {
                    assert!(
                        touched.is_subset(&keys),
                        "keys touched by newly stable ops are not in memory: {:?}",
                        touched.difference(&keys).collect::<Vec<_>>()
                    );
                }
            }
            keys
        }
        Keys::FromOps => match keys_of_ops(ops, unstored, old_cut, new_cut)? {
            Some(keys) => keys,
            None => {
                warn!("stored ops do not account for the new stable cut; writing the whole state");
                return write_whole(txn, state);
            }
        },
    };
    write_keys(txn, keys, state, base, shadowed)
}

/// Where a fold finds the keys to write (see [`fold_or_whole`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keys {
    /// The state's in-memory entries: it is kept in this store.
    InMemory,
    /// The ops between the cuts, stored or given with the batch.
    FromOps,
}

/// The keys the ops in `(old_cut, new_cut]` touch, stored or in `unstored`; `None` when
/// those do not account for every op between the cuts.
fn keys_of_ops(
    ops: &mut redb::Table<&[u8], &[u8]>,
    unstored: &[&Arc<Op<LwwOp>>],
    old_cut: &VersionVector,
    new_cut: &VersionVector,
) -> Result<Option<BTreeSet<String>>, StorageError> {
    let mut expected = 0u64;
    let mut keys = BTreeSet::new();
    let mut found = 0u64;
    // the ops counted, so that one both stored and given in `unstored` counts once
    let mut counted = BTreeSet::new();
    for (origin, seq) in new_cut.iter() {
        let from = old_cut.get(origin);
        if seq <= from {
            continue;
        }
        expected += seq - from;
        let lo = op_key(origin, from + 1);
        let hi = op_key(origin, seq);
        for row in ops.range(lo.as_slice()..=hi.as_slice())? {
            let (_, value) = row?;
            let op: Op<LwwOp> = ciborium::from_reader(value.value()).map_err(corrupt("op"))?;
            if counted.insert((op.origin, op.seq)) {
                keys.insert(op.payload.key);
                found += 1;
            }
        }
    }
    for op in unstored {
        let seq = op.seq;
        if seq > old_cut.get(&op.origin)
            && seq <= new_cut.get(&op.origin)
            && counted.insert((op.origin.clone(), seq))
        {
            keys.insert(op.payload.key.clone());
            found += 1;
        }
    }
    Ok((found == expected).then_some(keys))
}

/// Writes `state`'s entries of `keys` to the `state` table (removing those it no longer
/// holds), and the digest chunk hashes they change; the whole state instead when a key the
/// `base` file holds is gone.
fn write_keys(
    txn: &redb::WriteTransaction,
    keys: BTreeSet<String>,
    state: &LwwMap,
    base: Option<&BaseFile>,
    shadowed: &mut u64,
) -> Result<StateWritten, StorageError> {
    let in_base = |key: &str| -> Result<bool, StorageError> {
        match base {
            Some(base) => Ok(base.get(key).map_err(base_error)?.is_some()),
            None => Ok(false),
        }
    };
    let mut newly_shadowed = 0;
    {
        let mut table = txn.open_table(STATE)?;
        let mut buf = Vec::new();
        for key in &keys {
            match state.entry(key) {
                Some(entry) => {
                    to_cbor(entry.as_ref(), &mut buf);
                    let before = table.insert(key.as_str(), buf.as_slice())?;
                    if before.is_none() && in_base(key)? {
                        newly_shadowed += 1;
                    }
                }
                None if in_base(key)? => {
                    drop(table);
                    warn!(
                        key,
                        "a key of the base file is gone; writing the whole state"
                    );
                    return write_whole(txn, state);
                }
                None => {
                    table.remove(key.as_str())?;
                }
            }
        }
    }
    *shadowed += newly_shadowed;
    update_chunk_hashes(txn, state, &keys)?;
    Ok(StateWritten {
        entries: keys.len() as u64,
        whole: false,
        keys: keys.into_iter().collect(),
        ops_stored: 0,
    })
}

/// Writes a transferred (or restored) state to a new base file as its chunks arrive (on
/// the thread that rebuilds the state), for the checkpoint after the install to make it
/// the state's base ([`StateWrite::Staged`]).
pub struct Stager {
    storage: Arc<Storage>,
    cut: VersionVector,
    /// For a transfer: the held grant (CBOR) and the chunks staged of its snapshot.
    transfer: Option<(Vec<u8>, StagedProgress)>,
    /// Chunks staged since the last sync.
    unsynced: u32,
    /// Scratch space for encoding entries.
    buf: Vec<u8>,
    /// Set to the chunks staged and synced (what a restart keeps).
    kept: Option<super::metrics::IntGauge>,
}

/// Chunks staged between two syncs of the staged file (each with a transaction that
/// records how far it is synced): one sync per 4 MiB, and a crash costs a resumed
/// transfer at most this many chunks.
pub const STAGED_PER_SYNC: u32 = 4;

impl Stager {
    /// An empty map to build the staged state in, over the staged base file: the entries
    /// staged stay on disk ([`LwwMap::building_over`]).
    pub fn state_to_build(&self) -> LwwMap {
        LwwMap::building_over(Arc::new(StoredState::staged(self.storage.clone())))
    }

    /// A stager for a state at `cut` read from a snapshot file (not resumable).
    pub fn new(storage: Arc<Storage>, cut: VersionVector) -> Self {
        Self {
            storage,
            cut,
            transfer: None,
            unsynced: 0,
            buf: Vec::new(),
            kept: None,
        }
    }

    /// A stager for the state `held` offers, which stores `held` to resume after a
    /// restart. `None` when the grant offers no snapshot.
    pub fn for_transfer(storage: Arc<Storage>, held: &HeldGrant<LwwMap>) -> Option<Self> {
        let offer = held.grant.offer()?;
        Some(Self {
            storage,
            cut: offer.header.snapshot_point.clone(),
            transfer: Some((
                to_vec(held),
                StagedProgress {
                    snapshot_id: offer.snapshot_id.clone(),
                    chunks: 0,
                },
            )),
            unsynced: 0,
            buf: Vec::new(),
            kept: None,
        })
    }

    /// Sets `gauge` to the chunks staged and synced, as they are.
    pub fn report_kept_to(&mut self, gauge: super::metrics::IntGauge) {
        self.kept = Some(gauge);
    }

    fn set_kept(&self, chunks: u64) {
        if let Some(gauge) = &self.kept {
            gauge.set(chunks as i64);
        }
    }

    /// Drops anything staged before and records the cut (and, for a transfer, the held
    /// grant).
    pub fn begin(&mut self) -> Result<(), StorageError> {
        self.set_kept(0);
        if let Some((_, progress)) = &mut self.transfer {
            progress.chunks = 0;
        }
        let held = self.transfer.as_ref().map(|(g, p)| (g.as_slice(), p));
        self.storage.begin_staging(&self.cut, held)
    }

    /// For a transfer: keeps the chunks an earlier process staged of the same snapshot,
    /// feeding their entries (in key order) to `feed`, and returns how many chunks that
    /// is; with none kept (or a failure reading them, logged) it begins afresh and
    /// returns 0.
    pub fn resume(
        &mut self,
        feed: impl FnOnce(usize, &mut dyn Iterator<Item = (String, LwwEntry)>) -> Result<(), String>,
    ) -> Result<usize, StorageError> {
        let Some((held, progress)) = &mut self.transfer else {
            self.begin()?;
            return Ok(0);
        };
        let kept = match self
            .storage
            .resume_staging(&progress.snapshot_id, &self.cut, held, feed)
        {
            Ok(kept) => kept,
            Err(error) => {
                warn!(%error, "the staged chunks cannot be resumed; fetching every chunk");
                0
            }
        };
        if kept == 0 {
            self.begin()?;
        } else if let Some((_, progress)) = &mut self.transfer {
            progress.chunks = kept as u64;
            self.set_kept(kept as u64);
        }
        Ok(kept)
    }

    /// Adds the next chunk's entries, in key order.
    pub fn stage(&mut self, entries: &[(String, LwwEntry)]) -> Result<(), StorageError> {
        self.storage.stage(entries, &mut self.buf)?;
        if let Some((_, progress)) = &mut self.transfer {
            progress.chunks += 1;
        }
        self.unsynced += 1;
        if self.unsynced >= STAGED_PER_SYNC {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every chunk staged so far durable (what a restart resumes from).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        let progress = self.transfer.as_ref().map(|(_, progress)| progress);
        self.storage.sync_staged(progress)?;
        self.unsynced = 0;
        self.set_kept(progress.map_or(0, |p| p.chunks));
        Ok(())
    }
}

/// The `digest_chunks` key of a chunk start: empty for the head, else 0x01 · the key.
fn chunk_row(start: Option<&str>) -> Vec<u8> {
    match start {
        None => Vec::new(),
        Some(key) => {
            let mut row = Vec::with_capacity(key.len() + 1);
            row.push(1);
            row.extend_from_slice(key.as_bytes());
            row
        }
    }
}

/// Replaces the stored digest chunk hashes with `state`'s clean ones.
fn write_all_chunk_hashes(
    txn: &redb::WriteTransaction,
    state: &LwwMap,
) -> Result<(), StorageError> {
    txn.delete_table(DIGEST_CHUNKS)?;
    let mut table = txn.open_table(DIGEST_CHUNKS)?;
    for (start, hash) in state.chunk_hashes() {
        table.insert(chunk_row(start).as_slice(), hash.as_slice())?;
    }
    Ok(())
}

/// Stores the hashes of the chunks the change of `keys` changed (or forgets a chunk's
/// hash that `state` does not have clean: the next load hashes that chunk).
fn update_chunk_hashes(
    txn: &redb::WriteTransaction,
    state: &LwwMap,
    keys: &BTreeSet<String>,
) -> Result<(), StorageError> {
    let mut table = txn.open_table(DIGEST_CHUNKS)?;
    let changed: BTreeSet<Option<&str>> = keys
        .iter()
        .flat_map(|key| state.chunks_changed_by(key))
        .collect();
    for start in changed {
        let row = chunk_row(start);
        match state.chunk_hash_of(start) {
            Some(hash) => {
                table.insert(row.as_slice(), hash.as_slice())?;
            }
            None => {
                table.remove(row.as_slice())?;
            }
        }
    }
    Ok(())
}

/// A digest chunk's start (`None`: the head) and hash.
type ChunkHash = (Option<String>, [u8; 32]);

/// Reads the stored digest chunk hashes.
fn read_chunk_hashes(txn: &redb::ReadTransaction) -> Result<Vec<ChunkHash>, StorageError> {
    let table = match txn.open_table(DIGEST_CHUNKS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut hashes = Vec::new();
    for row in table.iter()? {
        let (start, hash) = row?;
        let start = match start.value().split_first() {
            None => None,
            Some((1, key)) => {
                Some(
                    String::from_utf8(key.to_vec()).map_err(|e| StorageError::Corrupt {
                        what: "digest chunk",
                        reason: e.to_string(),
                    })?,
                )
            }
            Some(_) => {
                return Err(StorageError::Corrupt {
                    what: "digest chunk",
                    reason: "unknown start tag".into(),
                })
            }
        };
        let hash: [u8; 32] = hash.value().try_into().map_err(|_| StorageError::Corrupt {
            what: "digest chunk",
            reason: "a hash is not 32 bytes".into(),
        })?;
        hashes.push((start, hash));
    }
    Ok(hashes)
}

/// Replaces the `state` table's content with `state`.
fn write_whole(txn: &redb::WriteTransaction, state: &LwwMap) -> Result<StateWritten, StorageError> {
    write_all_chunk_hashes(txn, state)?;
    txn.delete_table(STATE)?;
    let mut table = txn.open_table(STATE)?;
    let mut buf = Vec::new();
    for (key, entry) in state.all_entries() {
        to_cbor(entry.as_ref(), &mut buf);
        table.insert(key.as_ref(), buf.as_slice())?;
    }
    Ok(StateWritten {
        entries: state.len_with_tombstones() as u64,
        whole: true,
        keys: Vec::new(),
        ops_stored: 0,
    })
}

/// The name of a new base file: `state-<nanoseconds since the epoch>.base`.
fn new_base_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("state-{nanos:x}.base")
}

/// Removes the base files in `dir` other than `keep` (left by a state dropped or replaced
/// before its file could be removed). Failures are logged.
fn remove_base_files_but(dir: &Path, keep: &[Option<&BaseFile>]) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    for file in listing.flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        let kept = keep.iter().flatten().any(|b| b.file_name() == name);
        if name.starts_with("state-") && name.ends_with(".base") && !kept {
            remove_base_file(&file.path());
        }
    }
}

fn remove_base_file(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        warn!(%error, file = %path.display(), "a base file no state uses could not be removed");
    }
}

fn read_record(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<BaseRecord>, StorageError> {
    match meta.get(key)? {
        Some(v) => Ok(Some(
            ciborium::from_reader(v.value()).map_err(corrupt("base file record"))?,
        )),
        None => Ok(None),
    }
}

fn read_index(
    table: &impl ReadableTable<&'static str, u64>,
) -> Result<Vec<(String, u64)>, StorageError> {
    let mut index = Vec::new();
    for row in table.iter()? {
        let (key, offset) = row?;
        index.push((key.value().to_owned(), offset.value()));
    }
    Ok(index)
}

/// Maps a base file's I/O error to a storage error (a full disk told apart).
fn base_error(e: std::io::Error) -> StorageError {
    if is_disk_full(&e) {
        StorageError::DiskFull(e.to_string())
    } else {
        StorageError::Corrupt {
            what: "state base file",
            reason: e.to_string(),
        }
    }
}

fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    to_cbor(value, &mut buf);
    buf
}

/// The checkpoint without its state (what the `meta` table holds).
fn header_of<T>(checkpoint: &Checkpoint<T>) -> Checkpoint<()> {
    Checkpoint {
        id: checkpoint.id.clone(),
        incarnation: checkpoint.incarnation,
        phase: checkpoint.phase.clone(),
        stable_state: (),
        stable_cut: checkpoint.stable_cut.clone(),
        lamport: checkpoint.lamport,
        records: checkpoint.records.clone(),
        own_seq: checkpoint.own_seq,
        own_kept_from: checkpoint.own_kept_from,
        votes: checkpoint.votes.clone(),
    }
}

fn with_state<S>(header: Checkpoint<()>, state: S) -> Checkpoint<S> {
    Checkpoint {
        id: header.id,
        incarnation: header.incarnation,
        phase: header.phase,
        stable_state: state,
        stable_cut: header.stable_cut,
        lamport: header.lamport,
        records: header.records,
        own_seq: header.own_seq,
        own_kept_from: header.own_kept_from,
        votes: header.votes,
    }
}

fn read_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what: "own_seq",
        reason: format!("{} bytes, not 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Deletes the ops at or below `cut`: they are inside the stored stable state. This node's
/// own ops (`me`) are kept from `own_kept_from` on: they are its journal.
fn prune(
    ops: &mut redb::Table<&[u8], &[u8]>,
    cut: &VersionVector,
    me: &NodeId,
    own_kept_from: u64,
) -> Result<(), StorageError> {
    for (origin, seq) in cut.iter() {
        let upto = pruned_upto(origin, seq, me, own_kept_from);
        if upto == 0 {
            continue;
        }
        let from = op_key(origin, 0);
        let to = op_key(origin, upto);
        ops.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
    }
    Ok(())
}

/// The last seq of `origin` that a checkpoint at `cut_seq` (the stable cut's entry for
/// `origin`) deletes from the `ops` table: all of them up to the cut, except this node's
/// own from `own_kept_from` on (its journal).
fn pruned_upto(origin: &NodeId, cut_seq: u64, me: &NodeId, own_kept_from: u64) -> u64 {
    if origin == me {
        cut_seq.min(own_kept_from.saturating_sub(1))
    } else {
        cut_seq
    }
}

fn op_key(origin: &NodeId, seq: u64) -> Vec<u8> {
    let bytes = origin.as_bytes();
    let mut key = Vec::with_capacity(1 + bytes.len() + 8);
    key.push(bytes.len() as u8);
    key.extend_from_slice(bytes);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops_log::StateMachine;
    use crate::replica::{Replica, ReplicaConfig};
    use crate::snapshot::ChunkedState;
    use crate::Time;
    use std::time::Duration;

    fn put(k: &str) -> LwwOp {
        LwwOp {
            key: k.into(),
            value: Some("v".into()),
        }
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_storage_errors() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::StorageFull,
            ErrorKind::QuotaExceeded,
            ErrorKind::FileTooLarge,
        ] {
            let e = StorageError::from(redb::StorageError::Io(Error::from(kind)));
            assert!(matches!(e, StorageError::DiskFull(_)), "{kind:?}: {e}");
            assert!(e.to_string().contains("disk is full"), "{e}");
        }
        let other = StorageError::from(redb::StorageError::Io(Error::from(
            ErrorKind::PermissionDenied,
        )));
        assert!(matches!(other, StorageError::Db(_)), "{other}");
    }

    #[test]
    fn a_reopened_database_holds_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        storage.set_node_key(b"key").unwrap();
        storage.reopen().unwrap();
        assert_eq!(storage.node_key().unwrap().as_deref(), Some(&b"key"[..]));
        storage.set_node_key(b"new").unwrap();
        assert_eq!(storage.node_key().unwrap().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn ops_and_checkpoints_survive_reopening_and_the_stable_prefix_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let me = NodeId::synthetic(1);
        let config = ReplicaConfig {
            journal_applied: true,
            ..ReplicaConfig::default()
        };
        let mut node = Replica::<LwwMap>::genesis(
            me.clone(),
            std::slice::from_ref(&me),
            config,
            1,
            Time::ZERO,
        );
        {
            let storage = Arc::new(Storage::open(dir.path()).unwrap());
            assert!(storage.load().unwrap().checkpoint.is_none());
            storage.set_node_key(b"key").unwrap();
            for k in 0..3 {
                node.write(Time::ZERO, put(&format!("a{k}"))).unwrap();
            }
            let ops = node.drain_applied_ops();
            storage
                .write(&Batch {
                    ops,
                    checkpoint: None,
                    state: StateWrite::Fold,
                    durable: true,
                    own_seq: None,
                    votes: None,
                })
                .unwrap();
            assert_eq!(storage.stored_ops().unwrap(), 3);
        }
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        assert_eq!(storage.node_key().unwrap().as_deref(), Some(&b"key"[..]));
        assert_eq!(storage.load().unwrap().ops.len(), 3);
        // a lone founder's snapshot point is its applied vector: the checkpoint covers all
        node.handle_timeout(Time::from_millis(10));
        assert_eq!(node.stable_cut().get(&me), 3);
        fn checkpoint_at(node: &Replica<LwwMap>) -> Batch<'_> {
            Batch {
                ops: Vec::new(),
                checkpoint: Some(node.checkpoint()),
                state: StateWrite::Fold,
                durable: false,
                own_seq: None,
                votes: None,
            }
        }
        storage.write(&checkpoint_at(&node)).unwrap();
        assert_eq!(
            storage.stored_ops().unwrap(),
            3,
            "this node's own stable ops stay in its journal for the retention"
        );
        let loaded = storage.load().unwrap();
        assert_eq!(loaded.ops.len(), 3, "and are read back with the checkpoint");
        let checkpoint = loaded.checkpoint.unwrap();
        assert_eq!(checkpoint.stable_cut.get(&me), 3);
        assert_eq!(checkpoint.stable_state.get("a2").as_deref(), Some("v"));
        let retention = node.config().gossip.own_ops_retention;
        node.handle_timeout(Time::from_millis(10) + retention);
        storage.write(&checkpoint_at(&node)).unwrap();
        assert_eq!(storage.stored_ops().unwrap(), 0, "stable ops pruned");
    }

    #[test]
    fn the_own_op_counter_is_stored_with_the_ops_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = founder();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let checkpoint = Batch {
            ops: Vec::new(),
            checkpoint: Some(node.checkpoint()),
            state: StateWrite::Fold,
            durable: true,
            own_seq: Some(node.own_seq()),
            votes: None,
        };
        storage.write(&checkpoint).unwrap();
        for k in 0..4 {
            node.write(Time::ZERO, put(&format!("a{k}"))).unwrap();
        }
        let ops = node.drain_applied_ops();
        // the ops and the counter, without a new checkpoint (as after a write)
        let own_seq = Some(node.own_seq());
        storage
            .write(&Batch {
                ops,
                checkpoint: None,
                state: StateWrite::Fold,
                durable: true,
                own_seq,
                votes: None,
            })
            .unwrap();
        // a later batch carrying a lower counter (never sent, but checked) changes nothing
        storage
            .write(&Batch {
                ops: Vec::new(),
                checkpoint: Some(founder().checkpoint()),
                state: StateWrite::Whole,
                durable: true,
                own_seq: Some(1),
                votes: None,
            })
            .unwrap();
        drop(storage);
        let loaded = Arc::new(Storage::open(dir.path()).unwrap()).load().unwrap();
        assert_eq!(loaded.checkpoint.unwrap().own_seq, 4);
    }

    #[test]
    fn votes_stored_on_their_own_are_newer_than_the_checkpoints_and_a_new_key_forgets_them() {
        use crate::network_map::view::{Ballot, Votes};
        let dir = tempfile::tempdir().unwrap();
        let node = founder();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        storage
            .write(&Batch {
                ops: Vec::new(),
                checkpoint: Some(node.checkpoint()),
                state: StateWrite::Whole,
                durable: true,
                own_seq: None,
                votes: None,
            })
            .unwrap();
        let promised = Votes {
            promised: Some(Ballot {
                round: 7,
                proposer: node.id().clone(),
            }),
            ..node.votes()
        };
        storage
            .write(&Batch {
                ops: Vec::new(),
                checkpoint: None,
                state: StateWrite::Fold,
                durable: true,
                own_seq: None,
                votes: Some(promised.clone()),
            })
            .unwrap();
        drop(storage);
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let loaded = storage.load().unwrap().checkpoint.unwrap();
        assert_eq!(
            loaded.votes,
            Some(promised),
            "the promise survives a restart"
        );
        // a restored backup under a new identity drops them (it joins without a seat;
        // `Replica::resume_from_backup` ignores what the old identity's header holds)
        storage.replace_node_key(b"another key").unwrap();
        let loaded = storage.load().unwrap().checkpoint.unwrap();
        assert_eq!(
            loaded.votes,
            Some(node.votes()),
            "the header's, not the promise"
        );
    }

    #[test]
    fn a_corrupt_checkpoint_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let txn = storage.db().unwrap().begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(HEADER, &b"\xff\x00garbage"[..])
            .unwrap();
        txn.commit().unwrap();
        let err = storage.load().err().expect("corrupt checkpoint");
        assert!(err.to_string().contains("checkpoint"), "{err}");
    }

    /// A lone founder (its snapshot point is its applied vector) with journaled ops.
    fn founder() -> Replica<LwwMap> {
        let me = NodeId::synthetic(1);
        let config = ReplicaConfig {
            journal_applied: true,
            ..ReplicaConfig::default()
        };
        let mut config = config;
        // no own-op journal past the stable cut: these tests count the ops storage prunes
        config.gossip.own_ops_retention = Duration::ZERO;
        Replica::genesis(me.clone(), std::slice::from_ref(&me), config, 1, Time::ZERO)
    }

    /// Writes `keys` at `node`, lets them become stable, and stores them with a checkpoint.
    fn write_and_checkpoint(
        storage: &Storage,
        node: &mut Replica<LwwMap>,
        keys: impl IntoIterator<Item = String>,
        state: StateWrite,
        t: &mut u64,
    ) -> StateWritten {
        for k in keys {
            node.write(Time::from_millis(*t), put(&k)).unwrap();
        }
        *t += 10;
        node.handle_timeout(Time::from_millis(*t));
        assert_eq!(
            node.stable_cut(),
            node.applied(),
            "a lone founder's ops are stable"
        );
        let ops = node.drain_applied_ops();
        // as the driver does: the chunk hashes are stored clean
        node.stable_digest();
        storage
            .write(&Batch {
                ops,
                checkpoint: Some(node.checkpoint()),
                state,
                durable: false,
                own_seq: None,
                votes: None,
            })
            .unwrap()
    }

    fn loaded_state(storage: &Arc<Storage>) -> LwwMap {
        storage.load().unwrap().checkpoint.unwrap().stable_state
    }

    /// What the driver does after a checkpoint: the state's maps keep their entries in
    /// the database, memory only what it does not hold.
    fn keep_in_store(storage: &Arc<Storage>, node: &mut Replica<LwwMap>, written: &StateWritten) {
        let store = Arc::new(StoredState::live(storage.clone()));
        let keys = (!written.whole).then_some(written.keys.as_slice());
        node.keep_state_in_store(store, keys);
    }

    #[test]
    fn the_state_is_read_from_disk_and_memory_holds_only_what_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        let mut t = 0;
        let keys = (0..1000).map(|i| format!("k{i:04}"));
        let written = write_and_checkpoint(&storage, &mut node, keys, StateWrite::Fold, &mut t);
        let in_memory = in_memory_copy(node.stable_state());
        keep_in_store(&storage, &mut node, &written);
        assert_eq!(node.stable_state().in_memory(), 0);
        assert_eq!(node.applied_state().in_memory(), 0);
        assert_eq!(
            node.stable_state(),
            &in_memory,
            "every entry is read from disk"
        );
        assert_eq!(node.stable_digest(), in_memory.digest());
        // a copy (an export's) reads the database as it was when copied
        let copy = node.stable_state().clone();
        let written = write_and_checkpoint(
            &storage,
            &mut node,
            ["k0001".to_owned(), "new".to_owned()],
            StateWrite::Fold,
            &mut t,
        );
        assert_eq!(written.keys, ["k0001", "new"]);
        keep_in_store(&storage, &mut node, &written);
        assert_eq!(node.stable_state().in_memory(), 0);
        assert_eq!(copy.get("new"), None);
        assert_eq!(copy.digest(), in_memory.digest());
        assert_eq!(node.stable_state().get("new").as_deref(), Some("v"));
        assert_eq!(node.applied_state().len_with_tombstones(), 1001);
        // a restart reads nothing into memory, and hashes nothing again
        let digest = node.stable_digest();
        drop((node, copy));
        drop(storage);
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let loaded = storage.load().unwrap();
        let state = loaded.checkpoint.unwrap().stable_state;
        assert_eq!(state.in_memory(), 0);
        assert!(loaded.chunk_hashes_restored > 0);
        assert_eq!(state.digest(), digest);
        assert_eq!(state.get("k0999").as_deref(), Some("v"));
        assert_eq!(
            state.entries_from("k0998").count(),
            2 + 1,
            "k0998, k0999, new"
        );
        assert_eq!(storage.read_failures(), 0);
    }

    /// A map holding `state`'s entries in memory.
    fn in_memory_copy(state: &LwwMap) -> LwwMap {
        let mut copy = LwwMap::default();
        copy.extend_in_order(state.entries_in_order()).unwrap();
        copy
    }

    #[test]
    fn a_checkpoint_writes_only_the_keys_its_newly_stable_ops_touch() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        let mut t = 0;
        let first = write_and_checkpoint(
            &storage,
            &mut node,
            (0..1000).map(|i| format!("k{i:04}")),
            StateWrite::Fold,
            &mut t,
        );
        assert_eq!((first.entries, first.whole), (1000, false));
        // three writes to two keys, one a delete
        node.write(Time::from_millis(t), put("k0007")).unwrap();
        node.write(
            Time::from_millis(t),
            LwwOp {
                key: "k0500".into(),
                value: None,
            },
        )
        .unwrap();
        let second = write_and_checkpoint(
            &storage,
            &mut node,
            ["k0007".to_string()],
            StateWrite::Fold,
            &mut t,
        );
        assert_eq!((second.entries, second.whole), (2, false));
        assert_eq!(storage.stored_ops().unwrap(), 0);
        let loaded = loaded_state(&storage);
        assert_eq!(loaded.digest(), node.stable_state().digest());
        assert_eq!(
            loaded.get("k0500"),
            None,
            "the delete is stored as a tombstone"
        );
        assert_eq!(loaded.len_with_tombstones(), 1000);
    }

    /// An unsynced batch of `ops`, with `checkpoint` folded into the stored state.
    fn fold_batch<'a>(
        ops: Vec<Arc<Op<LwwOp>>>,
        checkpoint: Option<Checkpoint<&'a LwwMap>>,
    ) -> Batch<'a> {
        Batch {
            ops,
            checkpoint,
            state: StateWrite::Fold,
            durable: false,
            own_seq: None,
            votes: None,
        }
    }

    #[test]
    fn ops_the_same_checkpoint_makes_stable_are_folded_without_being_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        for i in 0..5 {
            node.write(Time::ZERO, put(&format!("k{i}"))).unwrap();
        }
        node.handle_timeout(Time::from_millis(10));
        assert_eq!(node.stable_cut().get(node.id()), 5);
        let mut ops = node.drain_applied_ops();
        // ops of another origin, which the checkpoint's cut does not cover
        let other = NodeId::synthetic(2);
        let mut writer = Replica::<LwwMap>::genesis(
            other.clone(),
            std::slice::from_ref(&other),
            node.config().clone(),
            1,
            Time::ZERO,
        );
        for i in 5..8 {
            writer.write(Time::ZERO, put(&format!("k{i}"))).unwrap();
        }
        ops.extend(writer.drain_applied_ops());
        assert_eq!(ops.len(), 8);
        node.stable_digest();
        let written = storage
            .write(&fold_batch(ops, Some(node.checkpoint())))
            .unwrap();
        assert_eq!(
            (written.entries, written.whole),
            (5, false),
            "the five stable ops are folded, not the whole state written"
        );
        assert_eq!(
            storage.stored_ops().unwrap(),
            3,
            "only the unstable ops are stored"
        );
        drop(storage);
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let loaded = storage.load().unwrap();
        let mut above: Vec<(NodeId, u64)> = loaded
            .ops
            .iter()
            .map(|op| (op.origin.clone(), op.seq))
            .collect();
        above.sort();
        assert_eq!(
            above,
            [(other.clone(), 1), (other.clone(), 2), (other, 3)],
            "a restart reads back the ops above the cut"
        );
        let state = loaded.checkpoint.unwrap().stable_state;
        assert_eq!(state.digest(), node.stable_state().digest());
        assert_eq!(state.get("k4").as_deref(), Some("v"));
        assert_eq!(state.get("k5"), None, "not stable yet");
    }

    #[test]
    fn an_op_both_stored_and_given_again_is_folded_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        for i in 0..3 {
            node.write(Time::ZERO, put(&format!("k{i}"))).unwrap();
        }
        let ops = node.drain_applied_ops();
        // stored once without a checkpoint, then given again with the one that folds it
        storage.write(&fold_batch(ops.clone(), None)).unwrap();
        node.handle_timeout(Time::from_millis(10));
        node.stable_digest();
        let written = storage
            .write(&fold_batch(ops, Some(node.checkpoint())))
            .unwrap();
        assert_eq!((written.entries, written.whole), (3, false), "{written:?}");
        assert_eq!(storage.stored_ops().unwrap(), 0);
        assert_eq!(
            loaded_state(&storage).digest(),
            node.stable_state().digest()
        );
    }

    #[test]
    fn a_state_kept_in_the_store_folds_the_keys_it_holds_in_memory_without_reading_ops() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        let mut t = 0;
        let first = write_and_checkpoint(
            &storage,
            &mut node,
            (0..100).map(|i| format!("k{i:03}")),
            StateWrite::Fold,
            &mut t,
        );
        keep_in_store(&storage, &mut node, &first);
        // two keys change, and their ops never reach the table
        node.write(Time::from_millis(t), put("k007")).unwrap();
        node.write(Time::from_millis(t), put("new")).unwrap();
        t += 10;
        node.handle_timeout(Time::from_millis(t));
        let _never_stored = node.drain_applied_ops();
        assert_eq!(node.stable_state().in_memory(), 2);
        node.stable_digest();
        let written = storage
            .write(&fold_batch(Vec::new(), Some(node.checkpoint())))
            .unwrap();
        assert_eq!(written.keys, ["k007", "new"], "{written:?}");
        assert!(!written.whole);
        keep_in_store(&storage, &mut node, &written);
        assert_eq!(node.stable_state().in_memory(), 0);
        let loaded = loaded_state(&storage);
        assert_eq!(loaded.digest(), node.stable_state().digest());
        assert_eq!(loaded.get("new").as_deref(), Some("v"));
        assert_eq!(loaded.len_with_tombstones(), 101);
    }

    #[test]
    fn a_fold_whose_ops_are_missing_writes_the_whole_state_instead() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        for i in 0..5 {
            node.write(Time::ZERO, put(&format!("k{i}"))).unwrap();
        }
        node.handle_timeout(Time::from_millis(10));
        let _lost = node.drain_applied_ops(); // never stored
        let written = storage
            .write(&fold_batch(Vec::new(), Some(node.checkpoint())))
            .unwrap();
        assert_eq!((written.entries, written.whole), (5, true));
        assert_eq!(
            loaded_state(&storage).digest(),
            node.stable_state().digest()
        );
    }

    #[test]
    fn a_staged_state_is_swapped_in_and_the_ops_above_its_cut_folded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        let mut t = 0;
        // an earlier, unrelated stored state
        write_and_checkpoint(
            &storage,
            &mut node,
            ["old".to_string()],
            StateWrite::Fold,
            &mut t,
        );
        // a transferred state at the cut after 300 writes
        let mut source = founder();
        for i in 0..300 {
            source.write(Time::ZERO, put(&format!("s{i:03}"))).unwrap();
        }
        source.handle_timeout(Time::from_millis(10));
        let staged_cut = source.stable_cut().clone();
        let mut stager = Stager::new(storage.clone(), staged_cut);
        stager.begin().unwrap();
        let entries: Vec<_> = source.stable_state().entries_in_order().collect();
        for chunk in entries.chunks(64) {
            stager.stage(chunk).unwrap();
        }
        // the source goes on: two more ops, stored as ops, then a checkpoint that swaps in
        let mut t = 20;
        let written = write_and_checkpoint(
            &storage,
            &mut source,
            ["s000".into(), "new".into()],
            StateWrite::Staged,
            &mut t,
        );
        assert_eq!((written.entries, written.whole), (2, false));
        let loaded = loaded_state(&storage);
        assert_eq!(loaded.digest(), source.stable_state().digest());
        assert_eq!(loaded.get("old"), None, "the earlier state is gone");
        // the staged file is the state's base; the table holds what was written over it
        let base = storage.base().expect("the staged file is the base");
        assert_eq!(base.len(), 300);
        assert_eq!(base_files(dir.path()).len(), 1);
        assert_eq!(loaded.len_with_tombstones(), 301, "s000 is counted once");
        assert!(
            loaded.rereads_cheaply(),
            "an export reads the base file twice"
        );
        assert_eq!(
            loaded.all_entries().count(),
            301,
            "a key in both is read once"
        );
        for key in ["s000", "s150", "new"] {
            assert_eq!(loaded.entry(key), source.stable_state().entry(key), "{key}");
        }
        // and so it is after a restart
        drop((loaded, base, storage, stager));
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let loaded = loaded_state(&storage);
        assert_eq!(loaded.digest(), source.stable_state().digest());
        assert_eq!(loaded.len_with_tombstones(), 301);
        assert_eq!(loaded, in_memory_copy(source.stable_state()));
        // a whole write takes the base file's place
        let written = write_and_checkpoint(
            &storage,
            &mut source,
            ["later".into()],
            StateWrite::Whole,
            &mut t,
        );
        assert!(written.whole);
        assert!(storage.base().is_none());
        assert_eq!(base_files(dir.path()), Vec::<String>::new());
        let loaded = loaded_state(&storage);
        assert_eq!(loaded.digest(), source.stable_state().digest());
        assert_eq!(loaded.len_with_tombstones(), 302);
        assert!(
            !loaded.rereads_cheaply(),
            "an export spools what the B-tree holds"
        );
    }

    #[test]
    fn opening_the_database_gives_freed_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tidemark.redb");
        drop(Storage::open(dir.path()).unwrap());
        {
            // a table of the layout before base files, which opening drops
            let db = Database::create(&file).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LEGACY_STAGED).unwrap();
                let value = to_vec(&LwwEntry {
                    value: Some("v".repeat(1000).into()),
                    lamport: 1,
                    origin: NodeId::synthetic(1),
                });
                for i in 0..5_000 {
                    table
                        .insert(format!("key{i:05}").as_str(), value.as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let staged = std::fs::metadata(&file).unwrap().len();
        assert!(staged > 5 << 20, "{staged} bytes");
        // the dropped table's space is given back
        drop(Storage::open(dir.path()).unwrap());
        let reopened = std::fs::metadata(&file).unwrap().len();
        assert!(
            reopened < staged / 4,
            "{reopened} bytes after reopening, {staged} before"
        );
    }

    /// The base files in a data dir.
    fn base_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".base"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_half_staged_state_is_dropped_when_the_store_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Arc::new(Storage::open(dir.path()).unwrap());
            let mut stager = Stager::new(storage.clone(), VersionVector::new());
            stager.begin().unwrap();
            let entry = LwwEntry {
                value: Some("v".into()),
                lamport: 1,
                origin: NodeId::synthetic(1),
            };
            stager.stage(&[("a".into(), entry)]).unwrap();
            stager.sync().unwrap();
            assert_eq!(
                base_files(dir.path()).len(),
                1,
                "the state is staged to a file"
            );
        }
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        assert_eq!(
            base_files(dir.path()),
            Vec::<String>::new(),
            "its file is removed"
        );
        let mut node = founder();
        let mut t = 0;
        // a Staged checkpoint finds nothing staged: the whole state is written
        let written = write_and_checkpoint(
            &storage,
            &mut node,
            ["b".to_string()],
            StateWrite::Staged,
            &mut t,
        );
        assert!(written.whole);
        let loaded = loaded_state(&storage);
        assert_eq!(loaded.get("a"), None);
        assert_eq!(loaded.get("b").as_deref(), Some("v"));
    }

    #[test]
    fn a_checkpoint_in_the_layout_before_the_incremental_state_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = founder();
        for i in 0..20 {
            node.write(Time::ZERO, put(&format!("k{i}"))).unwrap();
        }
        node.handle_timeout(Time::from_millis(10));
        {
            let storage = Arc::new(Storage::open(dir.path()).unwrap());
            let txn = storage.db().unwrap().begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(LEGACY_CHECKPOINT, to_vec(&node.checkpoint()).as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let checkpoint = storage.load().unwrap().checkpoint.expect("migrated");
        assert_eq!(&checkpoint.stable_cut, node.stable_cut());
        assert_eq!(
            checkpoint.stable_state.digest(),
            node.stable_state().digest()
        );
        // and it folds from there
        let mut t = 20;
        let written = write_and_checkpoint(
            &storage,
            &mut node,
            ["k3".to_string()],
            StateWrite::Fold,
            &mut t,
        );
        assert_eq!((written.entries, written.whole), (1, false));
    }

    /// A grant offering `state` at `cut` as snapshot `id`, held by a joiner, and the
    /// snapshot's chunks.
    fn held_offer(
        id: &str,
        state: &LwwMap,
        cut: &VersionVector,
    ) -> (HeldGrant<LwwMap>, Vec<Vec<u8>>) {
        use crate::join_protocol::{HandedOverState, JoinGrant, StateOffer};
        use crate::network_map::MemberRecord;
        use std::io::Read;
        let mut file = Vec::new();
        let header = crate::snapshot::write_snapshot(&mut file, state, cut, 0, 4096).unwrap();
        let mut input = file.as_slice();
        crate::snapshot::read_header(&mut input).unwrap();
        let chunks = header
            .chunks
            .iter()
            .map(|info| {
                let mut bytes = vec![0; info.len as usize];
                input.read_exact(&mut bytes).unwrap();
                bytes
            })
            .collect();
        let grant = JoinGrant {
            registration: Arc::new(MemberRecord::founder(NodeId::synthetic(9))),
            stable_state: HandedOverState::Snapshot(StateOffer {
                snapshot_id: id.into(),
                header,
            }),
            stable_cut: cut.clone(),
            lamport: 0,
            suffix: crate::gossip::OpsBatch(Vec::new()),
            members: crate::gossip::Records(Vec::new()),
            view: Default::default(),
        };
        let held = HeldGrant {
            sponsor: NodeId::synthetic(1),
            grant,
            reports_made: 3,
        };
        (held, chunks)
    }

    /// A founder that wrote `keys` keys, all stable, and a grant offering its state as
    /// snapshot "snap-1", with the snapshot's chunks.
    fn offered_source(keys: usize) -> (Replica<LwwMap>, HeldGrant<LwwMap>, Vec<Vec<u8>>) {
        let mut source = founder();
        for i in 0..keys {
            source.write(Time::ZERO, put(&format!("k{i:05}"))).unwrap();
        }
        source.handle_timeout(Time::from_millis(10));
        let (held, chunks) = held_offer("snap-1", source.stable_state(), source.stable_cut());
        (source, held, chunks)
    }

    #[test]
    fn a_transfer_stopped_halfway_resumes_from_the_chunks_it_synced_and_rebuilds_the_state() {
        use crate::snapshot::StateBuilder;
        let dir = tempfile::tempdir().unwrap();
        let (mut source, held, chunks) = offered_source(2_000);
        let state = source.stable_state().clone();
        let header = held.grant.offer().unwrap().header.clone();
        assert!(
            chunks.len() >= 3 * STAGED_PER_SYNC as usize,
            "{} chunks",
            chunks.len()
        );
        let stop_after = 2 * STAGED_PER_SYNC as usize + 3;
        {
            let storage = Arc::new(Storage::open(dir.path()).unwrap());
            let mut stager = Stager::for_transfer(storage.clone(), &held).unwrap();
            assert_eq!(stager.resume(|_, _| panic!("nothing to feed")).unwrap(), 0);
            let mut builder = StateBuilder::<LwwMap>::new(header.clone());
            for bytes in &chunks[..stop_after] {
                builder
                    .push_chunk_inspected(bytes, |e| stager.stage(e).map_err(|e| e.to_string()))
                    .unwrap();
            }
            // the process stops here (the unsynced chunks may or may not survive)
        }
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let stored = storage
            .held_grant()
            .unwrap()
            .expect("the held grant survives");
        assert_eq!(stored.grant, held.grant);
        let mut stager = Stager::for_transfer(storage.clone(), &stored).unwrap();
        let mut builder = StateBuilder::<LwwMap>::new(header.clone());
        let kept = stager
            .resume(|n, entries| builder.resume_with(n, entries).map_err(|e| e.to_string()))
            .unwrap();
        assert!(
            kept >= 2 * STAGED_PER_SYNC as usize && kept <= stop_after,
            "{kept} chunks kept"
        );
        assert_eq!(builder.chunks_done(), kept);
        for bytes in &chunks[kept..] {
            builder
                .push_chunk_inspected(bytes, |e| stager.stage(e).map_err(|e| e.to_string()))
                .unwrap();
        }
        let rebuilt = builder
            .finish()
            .expect("the resumed state has the offered digest");
        assert_eq!(rebuilt.digest(), state.digest());
        // the checkpoint that swaps the staged state in forgets the held grant
        let mut t = 20;
        write_and_checkpoint(
            &storage,
            &mut source,
            ["k00000".into()],
            StateWrite::Staged,
            &mut t,
        );
        assert_eq!(storage.held_grant().unwrap(), None);
        assert_eq!(
            loaded_state(&storage).digest(),
            source.stable_state().digest()
        );
    }

    #[test]
    fn staged_chunks_are_kept_only_for_the_held_grants_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (source, held, chunks) = offered_source(500);
        let (state, cut) = (source.stable_state(), source.stable_cut());
        let header = held.grant.offer().unwrap().header.clone();
        let stage_some = |storage: &Arc<Storage>, held: &HeldGrant<LwwMap>| {
            let mut stager = Stager::for_transfer(storage.clone(), held).unwrap();
            stager.resume(|_, _| Ok(())).unwrap();
            let mut builder = crate::snapshot::StateBuilder::<LwwMap>::new(header.clone());
            for bytes in &chunks[..STAGED_PER_SYNC as usize] {
                builder
                    .push_chunk_inspected(bytes, |e| stager.stage(e).map_err(|e| e.to_string()))
                    .unwrap();
            }
        };
        let kept_for = |storage: &Arc<Storage>, held: &HeldGrant<LwwMap>| {
            Stager::for_transfer(storage.clone(), held)
                .unwrap()
                .resume(|_, entries| {
                    entries.for_each(drop);
                    Ok(())
                })
                .unwrap()
        };
        // another snapshot offered later keeps nothing of the first's chunks
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        stage_some(&storage, &held);
        let (other, _) = held_offer("snap-2", state, cut);
        assert_eq!(kept_for(&storage, &other), 0);
        // a grant given up is not resumed, and its chunks are dropped at the next start
        stage_some(&storage, &held);
        storage.forget_held_grant(false).unwrap();
        assert_eq!(storage.held_grant().unwrap(), None);
        assert_eq!(
            kept_for(&storage, &held),
            STAGED_PER_SYNC as usize,
            "while the process runs, a later grant of the same snapshot keeps them"
        );
        storage.forget_held_grant(false).unwrap();
        drop(storage);
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        assert_eq!(storage.held_grant().unwrap(), None);
        assert_eq!(kept_for(&storage, &held), 0);
        // chunks that did not rebuild the state are dropped with the grant
        stage_some(&storage, &held);
        storage.forget_held_grant(true).unwrap();
        assert_eq!(kept_for(&storage, &held), 0);
    }

    #[test]
    fn the_digest_is_stored_with_the_state_and_a_restart_hashes_nothing_again() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let mut node = founder();
        let mut t = 0;
        let keys = |r: std::ops::Range<usize>| r.map(|i| format!("k{i:04}")).collect::<Vec<_>>();
        write_and_checkpoint(
            &storage,
            &mut node,
            keys(0..1_000),
            StateWrite::Fold,
            &mut t,
        );
        let chunks_before = node.stable_state().chunk_hashes().count();
        // folds that overwrite a few keys, and folds of one new key each: a new key that
        // starts a chunk splits the chunk it fell into, whose hash changes too
        for round in 0..6 {
            let changed = (0..1_000).step_by(97 + round).map(|i| format!("k{i:04}"));
            write_and_checkpoint(&storage, &mut node, changed, StateWrite::Fold, &mut t);
        }
        for i in 0..300 {
            let new = format!("k{:04}+", (i * 7) % 1_000);
            write_and_checkpoint(&storage, &mut node, [new], StateWrite::Fold, &mut t);
        }
        assert!(
            node.stable_state().chunk_hashes().count() > chunks_before,
            "some new keys started chunks"
        );
        drop(storage);
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let loaded = storage.load().unwrap();
        let state = loaded.checkpoint.unwrap().stable_state;
        let chunks = state.chunk_hashes().count();
        assert!(chunks > 10, "{chunks} chunks");
        assert_eq!(
            loaded.chunk_hashes_restored, chunks,
            "every chunk's hash comes from the store"
        );
        // the stored hashes are the state's: the digest made of them is the digest of the
        // same entries hashed from scratch, and the running node's
        assert_eq!(state.digest(), in_memory_copy(&state).digest());
        assert_eq!(state.digest(), node.stable_digest());
    }
}
