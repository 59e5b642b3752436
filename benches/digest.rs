//! Cost of the stable-state digest after a batch of writes, on a 100,000-key state: the
//! incremental digest (rehash the touched chunks, then the chunk hashes) against one flat
//! BLAKE3 pass over every entry, measured in the same run. Before the incremental digest,
//! a node paid the flat pass at every snapshot-point change.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tidemark::ops_log::{LwwMap, LwwOp, OpMeta, StateMachine};
use tidemark::NodeId;

const KEYS: u64 = 100_000;

fn write(map: &mut LwwMap, origin: &NodeId, lamport: u64, key: u64) {
    let meta = OpMeta {
        origin,
        seq: lamport,
        lamport,
    };
    let op = LwwOp {
        key: format!("key-{key:08}"),
        value: Some(format!("value {lamport} {}", "x".repeat(40))),
    };
    map.apply(&meta, &op);
}

fn digest(c: &mut Criterion) {
    let origin = NodeId::synthetic(1);
    let mut state = LwwMap::default();
    for i in 0..KEYS {
        write(&mut state, &origin, i + 1, (i * 7919) % KEYS);
    }
    state.refresh_digest();
    let mut group = c.benchmark_group("digest_100k_keys");
    group.bench_function("flat_pass", |b| b.iter(|| black_box(state.flat_digest())));
    for writes in [1u64, 16, 256] {
        group.bench_function(format!("incremental_after_{writes}_writes"), |b| {
            b.iter_batched(
                || {
                    let mut s = state.clone();
                    for w in 0..writes {
                        write(&mut s, &origin, KEYS + 1 + w, (w * 104_729) % KEYS);
                    }
                    s
                },
                |mut s| {
                    s.refresh_digest();
                    black_box(s.digest())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, digest);
criterion_main!(benches);
