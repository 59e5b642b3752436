//! Cost of signed ops: receiving (checking and applying) 1,000 ops from one origin with
//! the node's ed25519 authenticator, against receiving the same ops unchecked, measured in
//! the same run; and signing one op.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use libp2p::identity::Keypair;
use tidemark::node::signing::PeerIdAuthenticator;
use tidemark::ops_log::{LwwMap, LwwOp, Op, OpAuthenticator, OpsLog};
use tidemark::NodeId;

const OPS: usize = 1_000;

fn authenticator() -> (NodeId, PeerIdAuthenticator) {
    let key = Keypair::generate_ed25519();
    let id = NodeId::from_bytes(&key.public().to_peer_id().to_bytes()).unwrap();
    (id, PeerIdAuthenticator::new(key, "bench"))
}

fn op_signing(c: &mut Criterion) {
    let (origin, origin_auth) = authenticator();
    let (_, receiver_auth) = authenticator();
    let mut at_origin = OpsLog::<LwwMap>::new();
    let ops: Vec<Arc<Op<LwwOp>>> = (0..OPS)
        .map(|i| {
            let payload = LwwOp {
                key: format!("key-{i:06}"),
                value: Some("x".repeat(100)),
            };
            at_origin.create_signed(&origin, payload, Some(&origin_auth))
        })
        .collect();
    let mut group = c.benchmark_group("receive_1000_ops");
    let auths: [(&str, Option<&dyn OpAuthenticator>); 2] = [
        ("unchecked", None),
        ("ed25519_checked", Some(&receiver_auth)),
    ];
    for (name, auth) in auths {
        group.bench_function(name, |b| {
            b.iter_batched(
                OpsLog::<LwwMap>::new,
                |mut log| {
                    for op in &ops {
                        log.receive_verified(op.clone(), auth).unwrap();
                    }
                    black_box(log)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
    c.bench_function("sign_one_op", |b| {
        let bytes = ops[0].signing_bytes();
        b.iter(|| black_box(origin_auth.sign(&bytes)))
    });
}

criterion_group!(benches, op_signing);
criterion_main!(benches);
