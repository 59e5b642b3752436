//! The node's durable state in one embedded redb database (`<data-dir>/tidemark.redb`).
//!
//! | table | key | value (CBOR unless noted) |
//! |---|---|---|
//! | `meta` | `"node_key"` | the libp2p keypair (protobuf encoding) |
//! | `meta` | `"checkpoint"` | [`Checkpoint`]: incarnation, phase, stable state and cut, Lamport time, network map |
//! | `ops` | origin length (1 byte), origin bytes, seq (u64 big-endian) | one applied op above the checkpoint's stable cut |
//!
//! Every change is one redb write transaction, committed durably before the driver lets
//! anything that depends on it out (a 201, a publish): a `kill -9` at any moment leaves the
//! last committed transaction, which holds every acknowledged op. Ops at or below the
//! stored stable cut are deleted in the same transaction that stores the checkpoint, and
//! skipped on load if a crash came between.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::ops_log::{LwwMap, LwwOp, Op};
use crate::replica::Checkpoint;
use crate::version_vector::VersionVector;
use crate::NodeId;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ops");

const NODE_KEY: &str = "node_key";
const CHECKPOINT: &str = "checkpoint";

/// A storage failure: the node stops rather than run on without durability.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data store error: {0}")]
    Db(Box<redb::Error>),
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("cannot create the data directory: {0}")]
    Dir(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a data directory held when the node started.
pub struct Loaded {
    pub checkpoint: Option<Checkpoint<LwwMap>>,
    pub ops: Vec<Arc<Op<LwwOp>>>,
}

/// The node's redb database.
pub struct Storage {
    db: Database,
}

/// One batch of changes, written in one transaction.
#[derive(Default)]
pub struct Batch<'a> {
    pub ops: Vec<Arc<Op<LwwOp>>>,
    pub checkpoint: Option<Checkpoint<&'a LwwMap>>,
    /// Whether the batch must be on disk when `write` returns (it holds this node's own
    /// new ops, or a new incarnation or phase). Otherwise it is committed without a sync,
    /// atomically, and reaches the disk with the next durable write: a crash may lose it,
    /// which a node that resumes with a new incarnation tolerates.
    pub durable: bool,
}

impl Batch<'_> {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.checkpoint.is_none()
    }
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("tidemark.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(OPS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// The stored node key, if any.
    pub fn node_key(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(NODE_KEY)?.map(|v| v.value().to_vec()))
    }

    pub fn set_node_key(&self, key: &[u8]) -> Result<(), StorageError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(NODE_KEY, key)?;
        txn.commit()?;
        Ok(())
    }

    /// The last checkpoint and the ops stored above its stable cut.
    pub fn load(&self) -> Result<Loaded, StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let checkpoint: Option<Checkpoint<LwwMap>> = match meta.get(CHECKPOINT)? {
            Some(v) => {
                Some(
                    ciborium::from_reader(v.value()).map_err(|e| StorageError::Corrupt {
                        what: "checkpoint",
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let cut = checkpoint
            .as_ref()
            .map(|c| c.stable_cut.clone())
            .unwrap_or_default();
        let table = txn.open_table(OPS)?;
        let mut ops = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            let op: Op<LwwOp> =
                ciborium::from_reader(value.value()).map_err(|e| StorageError::Corrupt {
                    what: "op",
                    reason: e.to_string(),
                })?;
            if op.seq > cut.get(&op.origin) {
                ops.push(Arc::new(op));
            }
        }
        Ok(Loaded { checkpoint, ops })
    }

    /// Writes a batch in one transaction, synced to disk if the batch is `durable`.
    pub fn write(&self, batch: &Batch<'_>) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        if !batch.durable {
            txn.set_durability(redb::Durability::None);
        }
        {
            let mut ops = txn.open_table(OPS)?;
            let mut buf = Vec::new();
            for op in &batch.ops {
                buf.clear();
                ciborium::into_writer(op.as_ref(), &mut buf).expect("writing to a Vec");
                ops.insert(op_key(&op.origin, op.seq).as_slice(), buf.as_slice())?;
            }
            if let Some(checkpoint) = &batch.checkpoint {
                let mut bytes = Vec::new();
                ciborium::into_writer(checkpoint, &mut bytes).expect("writing to a Vec");
                txn.open_table(META)?.insert(CHECKPOINT, bytes.as_slice())?;
                prune(&mut ops, &checkpoint.stable_cut)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Number of ops stored (for tests and metrics).
    pub fn stored_ops(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OPS)?.len()?)
    }
}

/// Deletes the ops at or below `cut`: they are inside the stored stable state.
fn prune(ops: &mut redb::Table<&[u8], &[u8]>, cut: &VersionVector) -> Result<(), StorageError> {
    for (origin, seq) in cut.iter() {
        let from = op_key(origin, 0);
        let to = op_key(origin, seq);
        ops.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
    }
    Ok(())
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
    use crate::replica::{Replica, ReplicaConfig};
    use crate::Time;

    fn put(k: &str) -> LwwOp {
        LwwOp {
            key: k.into(),
            value: Some("v".into()),
        }
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
            let storage = Storage::open(dir.path()).unwrap();
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
                    durable: true,
                })
                .unwrap();
            assert_eq!(storage.stored_ops().unwrap(), 3);
        }
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(storage.node_key().unwrap().as_deref(), Some(&b"key"[..]));
        assert_eq!(storage.load().unwrap().ops.len(), 3);
        // a lone founder's snapshot point is its applied vector: the checkpoint covers all
        node.handle_timeout(Time::from_millis(10));
        assert_eq!(node.stable_cut().get(&me), 3);
        storage
            .write(&Batch {
                ops: Vec::new(),
                checkpoint: Some(node.checkpoint()),
                durable: false,
            })
            .unwrap();
        assert_eq!(storage.stored_ops().unwrap(), 0, "stable ops pruned");
        let loaded = storage.load().unwrap();
        let checkpoint = loaded.checkpoint.unwrap();
        assert_eq!(checkpoint.stable_cut.get(&me), 3);
        assert_eq!(checkpoint.stable_state.get("a2"), Some("v"));
    }

    #[test]
    fn a_corrupt_checkpoint_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let txn = storage.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(CHECKPOINT, &b"\xff\x00garbage"[..])
            .unwrap();
        txn.commit().unwrap();
        let err = storage.load().err().expect("corrupt checkpoint");
        assert!(err.to_string().contains("checkpoint"), "{err}");
    }
}
