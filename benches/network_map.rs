//! Cost of one network-map update plus a snapshot-point query at 1,000 members × 1,000
//! origins, against a naive full recompute of the pointwise minimum measured in the same run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tidemark::network_map::{MemberRecord, NetworkMap};
use tidemark::{NodeId, Time, VersionVector};

const MEMBERS: usize = 1_000;
const ORIGINS: usize = 1_000;

fn ids(n: usize, salt: u64) -> Vec<NodeId> {
    (0..n as u64).map(|i| NodeId::synthetic(salt + i)).collect()
}

/// Member m has applied `base + (m * 7 + o) % 13` of origin o.
fn seq(m: usize, o: usize) -> u64 {
    1_000 + ((m * 7 + o) % 13) as u64
}

fn build() -> (NetworkMap, Vec<NodeId>, Vec<NodeId>) {
    let members = ids(MEMBERS, 0);
    let origins = ids(ORIGINS, 1_000_000);
    let vector = |m: usize| -> VersionVector {
        origins
            .iter()
            .enumerate()
            .map(|(o, id)| (id.clone(), seq(m, o)))
            .collect()
    };
    let mut own = MemberRecord::founder(members[0].clone());
    own.applied = vector(0);
    let mut map = NetworkMap::new(own, Time::ZERO);
    for (m, id) in members.iter().enumerate().skip(1) {
        let mut record = MemberRecord::founder(id.clone());
        record.applied = vector(m);
        map.merge(Arc::new(record), Time::ZERO);
    }
    (map, members, origins)
}

fn bench(c: &mut Criterion) {
    let (mut map, members, origins) = build();
    assert_eq!(map.counted(), MEMBERS);
    let mut step = 0usize;
    let mut raised = vec![vec![0u64; ORIGINS]; MEMBERS];
    c.bench_function("network_map update+query 1000x1000 (incremental)", |b| {
        b.iter(|| {
            step = step.wrapping_add(7919);
            let m = step % MEMBERS;
            let o = (step / MEMBERS) % ORIGINS;
            raised[m][o] += 1;
            let value = seq(m, o) + raised[m][o];
            map.apply_delta(&members[m], &[(origins[o].clone(), value)]);
            black_box(map.snapshot_point().get(&origins[o]))
        })
    });

    // Naive: the same matrix as plain vectors, minimum recomputed over every member and
    // origin after each update.
    let mut matrix: Vec<Vec<u64>> = (0..MEMBERS)
        .map(|m| (0..ORIGINS).map(|o| seq(m, o)).collect())
        .collect();
    let mut min = vec![0u64; ORIGINS];
    let mut step = 0usize;
    c.bench_function(
        "network_map update+query 1000x1000 (naive recompute)",
        |b| {
            b.iter(|| {
                step = step.wrapping_add(7919);
                let m = step % MEMBERS;
                let o = (step / MEMBERS) % ORIGINS;
                matrix[m][o] += 1;
                for (origin, slot) in min.iter_mut().enumerate() {
                    *slot = matrix.iter().map(|row| row[origin]).min().unwrap_or(0);
                }
                black_box(min[o])
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
