//! What the snapshot benches share: a large state of 1 KB values, and the floor of storing
//! a snapshot file (its bytes copied and BLAKE3-hashed).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use tidemark::ops_log::{LwwEntry, LwwMap};
use tidemark::{NodeId, VersionVector};

/// A state of about `mib` MiB (1 KB values under keys `key000000000000`…, one origin),
/// with the cut that covers it and its number of entries.
pub fn large_state(mib: u64) -> (LwwMap, VersionVector, u64) {
    let origin = NodeId::synthetic(1);
    let value = "v".repeat(1000);
    let entries = mib * 1024 * 1024 / 1060;
    let mut state = LwwMap::default();
    for i in 0..entries {
        let entry = LwwEntry {
            value: Some(value.as_str().into()),
            lamport: i + 1,
            origin: origin.clone(),
        };
        state.push_in_order(format!("key{i:012}"), entry).unwrap();
    }
    let mut cut = VersionVector::new();
    cut.set(origin, entries);
    (state, cut, entries)
}

/// Reads `from`, hashes it with BLAKE3 and writes it to `to`, synced: the floor of a join
/// or a restore.
pub fn copy_and_hash(from: &Path, to: &Path) -> Duration {
    let started = Instant::now();
    let mut input = std::fs::File::open(from).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).unwrap();
    }
    out.sync_all().unwrap();
    std::hint::black_box(hasher.finalize());
    started.elapsed()
}
