//! Where a transferred or restored state is written, measured: the options for storing a
//! state that arrives as a verified stream of sorted chunks, on the same snapshot file, in
//! the same run.
//!
//! ```text
//! cargo bench --bench state_install -- [--mib 256] [--json]
//! ```
//!
//! - `baseline`: the snapshot file's bytes read, BLAKE3-hashed and written to another file,
//!   synced (what storing a state costs at least; the snapshot file kept as it came).
//! - `base_file`: what a node does (`node::storage::Stager`): every chunk verified,
//!   decoded, hashed into the digest, and its entries appended to the state's base file,
//!   synced every 4 chunks.
//! - `btree`: the same, the entries inserted into a redb table instead (one transaction
//!   per chunk, synced every 4), as nodes did before base files, the digest built over
//!   that table.
//!
//! Each figure is MB/s of the snapshot file, with the bytes the process wrote
//! (`/proc/self/io`, `wchar`) per byte of the file.

use std::io::Read;
use std::ops::Bound;

use redb::ReadableTableMetadata;

#[path = "common/large_state.rs"]
mod large_state;

use large_state::{copy_and_hash, large_state};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tidemark::node::storage::{Stager, Storage};
use tidemark::ops_log::{LwwEntry, LwwMap, StoredEntries};
use tidemark::snapshot::{read_body, read_header, write_snapshot, DEFAULT_CHUNK_BYTES};

const STAGED: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("staged");

/// The `btree` option's store: the redb table the entries were inserted into, which the
/// digest reads back where it needs to (as a node's staged table was read before base
/// files).
struct Table(Arc<redb::Database>);

impl StoredEntries for Table {
    fn get(&self, key: &str) -> Option<LwwEntry> {
        let txn = self.0.begin_read().unwrap();
        let table = txn.open_table(STAGED).unwrap();
        let value = table.get(key).unwrap()?;
        Some(ciborium::from_reader(value.value()).unwrap())
    }
    fn range<'a>(
        &'a self,
        from: Bound<&str>,
        to: Bound<&str>,
    ) -> Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a> {
        let txn = self.0.begin_read().unwrap();
        let table = txn.open_table(STAGED).unwrap();
        let rows: Vec<_> = table
            .range::<&str>((from, to))
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (
                    k.value().to_owned(),
                    ciborium::from_reader(v.value()).unwrap(),
                )
            })
            .collect();
        Box::new(rows.into_iter())
    }
    fn len(&self) -> u64 {
        let txn = self.0.begin_read().unwrap();
        txn.open_table(STAGED).unwrap().len().unwrap()
    }
    fn pin(&self) -> Arc<dyn StoredEntries> {
        Arc::new(Table(self.0.clone()))
    }
}

fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `f`, returning its seconds and the bytes it wrote.
fn measured(f: impl FnOnce()) -> (f64, u64) {
    let before = written_bytes();
    let started = Instant::now();
    f();
    (started.elapsed().as_secs_f64(), written_bytes() - before)
}

fn open(file: &Path) -> (impl Read, tidemark::snapshot::SnapshotHeader) {
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file).unwrap());
    let header = read_header(&mut input).unwrap();
    (input, header)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let json = args.iter().any(|a| a == "--json");
    let dir = tempfile::tempdir().unwrap();

    let (state, cut, entries) = large_state(mib);
    let file = dir.path().join("state.tmsnap");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&file).unwrap());
    write_snapshot(&mut out, &state, &cut, 0, DEFAULT_CHUNK_BYTES).unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    drop(state);
    let bytes = std::fs::metadata(&file).unwrap().len();

    let baseline = measured(|| {
        copy_and_hash(&file, &dir.path().join("copy"));
    });
    let _ = std::fs::remove_file(dir.path().join("copy"));

    let base_dir = dir.path().join("base_file");
    let base_file = measured(|| {
        let storage = Arc::new(Storage::open(&base_dir).unwrap());
        let (mut input, header) = open(&file);
        let mut stager = Stager::new(storage, header.snapshot_point.clone());
        stager.begin().unwrap();
        let building = stager.state_to_build();
        let built = read_body::<LwwMap>(&mut input, header, building, |_, entries| {
            stager.stage(entries).map_err(|e| e.to_string())
        })
        .unwrap();
        stager.sync().unwrap();
        std::hint::black_box(built);
    });
    let base_dir_bytes: u64 = std::fs::read_dir(&base_dir)
        .unwrap()
        .flatten()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();

    let btree_path = dir.path().join("btree.redb");
    let btree = measured(|| {
        let db = redb::Database::builder()
            .set_cache_size(16 << 20)
            .create(&btree_path)
            .unwrap();
        let db = Arc::new(db);
        let (mut input, header) = open(&file);
        let building = LwwMap::building_over(Arc::new(Table(db.clone())));
        let mut value = Vec::new();
        let built = read_body::<LwwMap>(&mut input, header, building, |index, entries| {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            if (index + 1) % 4 != 0 {
                txn.set_durability(redb::Durability::None);
            }
            {
                let mut rows = txn.open_table(STAGED).map_err(|e| e.to_string())?;
                for (key, entry) in entries {
                    value.clear();
                    ciborium::into_writer(entry, &mut value).unwrap();
                    rows.insert(key.as_str(), value.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .unwrap();
        std::hint::black_box(built);
    });
    let btree_bytes = std::fs::metadata(&btree_path).map_or(0, |m| m.len());

    let mb_s = |(seconds, _): (f64, u64)| bytes as f64 / 1e6 / seconds;
    let amplification = |(_, written): (f64, u64)| written as f64 / bytes as f64;
    let mib_of = |b: u64| b as f64 / (1 << 20) as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "state_mib": mib_of(bytes),
                "entries": entries,
                "baseline_mb_s": mb_s(baseline),
                "base_file_mb_s": mb_s(base_file),
                "btree_mb_s": mb_s(btree),
                "base_file_written_per_byte": amplification(base_file),
                "btree_written_per_byte": amplification(btree),
                "base_file_store_mib": mib_of(base_dir_bytes),
                "btree_store_mib": mib_of(btree_bytes),
            })
        );
    } else {
        println!(
            "# storing a {:.0} MiB state ({entries} entries)",
            mib_of(bytes)
        );
        for (name, figure, store) in [
            ("baseline (copy + BLAKE3)", baseline, bytes),
            ("base file", base_file, base_dir_bytes),
            ("redb B-tree", btree, btree_bytes),
        ] {
            println!(
                "{name}: {:.0} MB/s ({:.2}x the baseline), {:.2} bytes written per byte, store {:.0} MiB",
                mb_s(figure),
                mb_s(figure) / mb_s(baseline),
                amplification(figure),
                mib_of(store)
            );
        }
    }
}
