//! Cost of network-map updates at 1,000 members × 1,000 origins, each against a naive
//! baseline measured in the same run.
//!
//! - **Another member's report** (`merge`): the path every update about another member
//!   takes in production — a decoded record, one report newer, whose applied vector differs
//!   from the held one in one origin, goes `merge` → `adopt` → `changes_to` → the minimum
//!   tracker; then that origin's snapshot point is read. The record is built outside the
//!   timed part, as the decoder builds it: a fresh vector sharing no structure with the
//!   held one. Baseline: the same matrix as plain
//!   `Vec<Vec<u64>>`; the new row replaces the old, the origins whose entry changed are
//!   found by comparing the rows, and only their column minimums are recomputed.
//! - **The own record** (`apply_delta`): one origin of this node's own vector raised, as
//!   after applying an op. Baseline: the same matrix, that one column's minimum recomputed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    // loaded as a joiner loads its sponsor's map: members whose vectors lie below this
    // node's own would otherwise be evicted on arrival by the admission check
    let records = members
        .iter()
        .enumerate()
        .skip(1)
        .map(|(m, id)| {
            let mut record = MemberRecord::founder(id.clone());
            record.applied = vector(m);
            Arc::new(record)
        })
        .collect();
    let map = NetworkMap::load(own, records, Time::ZERO);
    (map, members, origins)
}

fn matrix() -> Vec<Vec<u64>> {
    (0..MEMBERS)
        .map(|m| (0..ORIGINS).map(|o| seq(m, o)).collect())
        .collect()
}

fn column_min(matrix: &[Vec<u64>], origin: usize) -> u64 {
    matrix.iter().map(|row| row[origin]).min().unwrap_or(0)
}

/// The sum of what `one` reports for each of `iters` updates: each times only its own
/// part, not the building of its input.
fn timed(iters: u64, mut one: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| one()).sum()
}

/// The (member, origin) of update number `step`: spread over the matrix.
fn cell(step: usize) -> (usize, usize) {
    let k = step.wrapping_mul(7_919);
    (k % MEMBERS, (k / MEMBERS) % ORIGINS)
}

fn other_members_reports(c: &mut Criterion) {
    let (mut map, members, origins) = build();
    assert_eq!(map.counted(), MEMBERS);
    let mut step = 0usize;
    c.bench_function(
        "network_map another member's report 1000x1000 (merge, incremental)",
        |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    step += 1;
                    let (m, o) = cell(step);
                    let m = m.max(1); // member 0 is this node: it owns its record
                    let held = &map.get(&members[m]).expect("a member").record;
                    let mut record = (**held).clone();
                    record.report_seq += 1;
                    // a fresh vector, as the decoder builds it: no structure shared with
                    // the held one
                    record.applied = held
                        .applied
                        .iter()
                        .map(|(origin, seq)| {
                            let raised = seq + u64::from(*origin == origins[o]);
                            (origin.clone(), raised)
                        })
                        .collect();
                    let record = Arc::new(record);
                    let start = Instant::now();
                    map.merge(record, Time::ZERO);
                    black_box(map.snapshot_point().get(&origins[o]));
                    start.elapsed()
                })
            })
        },
    );

    let mut rows = matrix();
    let mut min: Vec<u64> = (0..ORIGINS).map(|o| column_min(&rows, o)).collect();
    let mut step = 0usize;
    c.bench_function(
        "network_map another member's report 1000x1000 (naive, recompute what changed)",
        |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    step += 1;
                    let (m, o) = cell(step);
                    let m = m.max(1);
                    let mut row = rows[m].clone();
                    row[o] += 1;
                    let start = Instant::now();
                    let old = std::mem::replace(&mut rows[m], row);
                    for origin in 0..ORIGINS {
                        if old[origin] != rows[m][origin] {
                            min[origin] = column_min(&rows, origin);
                        }
                    }
                    black_box(min[o]);
                    let elapsed = start.elapsed();
                    drop(old);
                    elapsed
                })
            })
        },
    );
}

fn own_record(c: &mut Criterion) {
    let (mut map, members, origins) = build();
    let mut step = 0usize;
    let mut raised = vec![0u64; ORIGINS];
    c.bench_function(
        "network_map own record 1000x1000 (apply_delta, incremental)",
        |b| {
            b.iter(|| {
                step += 1;
                let (_, o) = cell(step);
                raised[o] += 1;
                let value = seq(0, o) + raised[o];
                map.apply_delta(&members[0], &[(origins[o].clone(), value)]);
                black_box(map.snapshot_point().get(&origins[o]))
            })
        },
    );

    let mut rows = matrix();
    let mut min: Vec<u64> = (0..ORIGINS).map(|o| column_min(&rows, o)).collect();
    let mut step = 0usize;
    c.bench_function(
        "network_map own record 1000x1000 (naive, recompute what changed)",
        |b| {
            b.iter(|| {
                step += 1;
                let (_, o) = cell(step);
                rows[0][o] += 1;
                min[o] = column_min(&rows, o);
                black_box(min[o])
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(5));
    targets = other_members_reports, own_record
}
criterion_main!(benches);
