use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::join_protocol::JoinRequest;
use crate::network_map::aggregation::AggregateMessage;
use crate::network_map::MemberRecord;
use crate::ops_log::{LwwMap, LwwOp, OpsLog};

fn id(i: u64) -> NodeId {
    NodeId::synthetic(i)
}

fn some_ops() -> Vec<Arc<Op<LwwOp>>> {
    let mut logs: Vec<OpsLog<LwwMap>> = (0..3).map(|_| OpsLog::new()).collect();
    let mut all = Vec::new();
    for round in 0..4u64 {
        for (w, log) in logs.iter_mut().enumerate() {
            for op in &all {
                let _ = log.receive(Arc::clone(op));
            }
            let op = log.create(
                &id(w as u64),
                LwwOp {
                    key: format!("k{round}"),
                    value: (w != 1).then(|| format!("v{w}")),
                },
            );
            all.push(op);
        }
    }
    all
}

fn published(ops: Vec<Arc<Op<LwwOp>>>, report: Option<MemberRecord>) -> Message<LwwMap> {
    Message::Ops(PublishedOps {
        ops: OpsBatch(ops),
        report: report.map(Arc::new),
    })
}

/// The report of writer `w` after its last op in `ops`, having applied one more op of
/// node 7 since.
fn report_after(ops: &[Arc<Op<LwwOp>>], w: u64) -> MemberRecord {
    let last = ops.iter().rev().find(|op| op.origin == id(w)).unwrap();
    let mut applied = last.deps.clone();
    applied.set(id(w), last.seq);
    applied.set(id(7), 3);
    MemberRecord {
        report_seq: 12,
        applied,
        registrations: 1,
        ..MemberRecord::founder(id(w))
    }
}

#[test]
fn every_message_round_trips() {
    let ops = some_ops();
    let messages: Vec<Message<LwwMap>> = vec![
        published(ops.clone(), None),
        published(ops.clone(), Some(report_after(&ops, 2))),
        // a report of a node with no op in the batch (a rejoiner republishing others' ops)
        published(ops[..3].to_vec(), Some(report_after(&ops, 1))),
        published(ops[..1].to_vec(), Some(MemberRecord::founder(id(8)))),
        Message::Status(Records(vec![
            Arc::new(MemberRecord::founder(id(4))),
            Arc::new(MemberRecord {
                state: crate::network_map::MemberState::Left,
                sponsor: Some(crate::network_map::Sponsorship {
                    sponsor: id(4),
                    sponsor_incarnation: 2,
                    reg_no: 3,
                }),
                applied: ops.last().unwrap().deps.clone(),
                registrations: 2,
                addrs: vec!["/ip4/127.0.0.1/tcp/9".into()],
                ..MemberRecord::founder(id(5))
            }),
        ])),
        Message::Digest(AntiEntropyDigest {
            applied: ops.last().unwrap().deps.clone(),
            members: vec![(id(1), (1, 7, 0))],
            fingerprint: None,
            initiator: true,
            view_epoch: 3,
        }),
        Message::Aggregate(AggregateMessage::Contribution {
            epoch: 4,
            incarnation: 2,
            whole: false,
            entries: vec![(id(1).key(), 7)],
        }),
        Message::Aggregate(AggregateMessage::Liveness {
            epoch: 4,
            group: 1,
            silent: vec![3, 9],
        }),
        Message::Aggregate(AggregateMessage::Heard {
            epoch: 4,
            groups: vec![(0, Vec::new()), (1, vec![3, 9])],
        }),
        Message::Digest(AntiEntropyDigest {
            applied: ops.last().unwrap().deps.clone(),
            members: Vec::new(),
            fingerprint: Some(0xdead_beef_0bad_cafe),
            initiator: true,
            view_epoch: 3,
        }),
        Message::View(crate::network_map::view::ViewMessage::Accept {
            epoch: 4,
            ballot: crate::network_map::view::Ballot {
                round: 2,
                proposer: id(1),
            },
            change: crate::network_map::view::ChangeOnWire::Delta(
                crate::network_map::view::ViewDelta {
                    epoch: 4,
                    base: 0x0123_4567_89ab_cdef,
                    added: vec![(id(2), 3)],
                    removed: vec![id(5)],
                    evicted: vec![crate::network_map::view::Eviction {
                        id: id(5),
                        incarnation: 2,
                        registrations: 1,
                    }],
                },
            ),
        }),
        Message::View(crate::network_map::view::ViewMessage::Decided(
            crate::network_map::view::ChangeOnWire::Whole(crate::network_map::view::ViewChange {
                next: crate::network_map::view::View {
                    epoch: 4,
                    members: [(id(1), 1u64), (id(2), 3)].into_iter().collect(),
                },
                evicted: Vec::new(),
            }),
        )),
        Message::Repair(Repair {
            ops: OpsBatch(ops[3..].to_vec()),
            records: Records::default(),
            more: true,
        }),
        Message::Stale {
            snapshot_point: ops[2].deps.clone(),
        },
        Message::JoinRequest(JoinRequest {
            joiner: id(9),
            incarnation: 2,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
        }),
    ];
    for m in messages {
        let bytes = encode(&m);
        assert_eq!(encoded_len(&m), bytes.len());
        let back: Message<LwwMap> = decode(&bytes).unwrap();
        assert_eq!(back, m, "{}", m.kind());
    }
}

#[test]
fn op_batches_are_compact() {
    let ops = some_ops();
    let batch = published(ops.clone(), None);
    let naive: usize = ops.iter().map(|op| encoded_len(&**op)).sum();
    let compact = encode(&batch).len();
    assert!(
        compact * 2 < naive,
        "compact batch {compact} bytes vs {naive} bytes op by op"
    );
}

#[test]
fn a_report_on_a_batch_costs_only_what_changed_since_the_last_op() {
    let ops = some_ops();
    let report = report_after(&ops, 2);
    let Message::Ops(with_report) = published(ops.clone(), Some(report.clone())) else {
        unreachable!()
    };
    let riding = report_len(&with_report);
    let alone = encoded_len(&Message::<LwwMap>::Status(Records(vec![Arc::new(report)])));
    assert!(riding > 0);
    assert!(
        riding * 2 < alone,
        "report on the batch {riding} bytes vs {alone} bytes as a status report"
    );
    let Message::Ops(bare) = published(ops, None) else {
        unreachable!()
    };
    assert_eq!(report_len(&bare), 0);
}

/// Resolves keys among `known`, as a receiver that knows those nodes does.
fn resolver(known: &[NodeId]) -> impl Fn(u64) -> Option<NodeId> + '_ {
    |key| known.iter().find(|id| id.key() == key).cloned()
}

#[test]
fn a_published_batch_round_trips_through_its_compact_topic_form() {
    let ops = some_ops();
    let known: Vec<NodeId> = (0..10).map(id).collect();
    for report in [
        None,
        Some(report_after(&ops, 2)),
        Some(report_after(&ops, 1)),
    ] {
        for slice in [&ops[..], &ops[5..6], &ops[..1]] {
            let published = PublishedOps {
                ops: OpsBatch(slice.to_vec()),
                report: report.clone().map(Arc::new),
            };
            let bytes = encode_published(&published);
            assert_eq!(bytes.len(), published_len(&published));
            let back: PublishedOps<LwwOp> = decode_published(&bytes, resolver(&known)).unwrap();
            assert_eq!(back, published);
            let ((first, first_seq), (last, last_seq)) = published_op_range(&bytes).unwrap();
            assert_eq!((first, first_seq), (slice[0].origin.clone(), slice[0].seq));
            let tail = slice.last().unwrap();
            assert_eq!((last, last_seq), (tail.origin.clone(), tail.seq));
        }
    }
}

#[test]
fn the_topic_form_names_known_nodes_by_key_and_is_smaller() {
    // one op of node 2 that depends on ops of nodes 0 and 1: only node 2's id travels whole
    let ops = some_ops();
    let published = PublishedOps {
        ops: OpsBatch(vec![ops[5].clone()]),
        report: Some(Arc::new(report_after(&ops, 2))),
    };
    let compact = encode_published(&published).len();
    let whole = encoded_len(&Message::<LwwMap>::Ops(published.clone()));
    assert!(
        compact < whole,
        "{compact} bytes on the topic vs {whole} self-contained"
    );
    // a receiver that does not know node 7 (in the report) cannot decode it, and says why
    let known: Vec<NodeId> = (0..3).map(id).collect();
    let err =
        decode_published::<LwwOp>(&encode_published(&published), resolver(&known)).unwrap_err();
    assert!(
        matches!(err, TopicDecodeError::UnknownKey(k) if k == id(7).key()),
        "{err}"
    );
    // garbage is malformed, not a panic
    assert!(matches!(
        decode_published::<LwwOp>(&[0xa1, 0x00], resolver(&known)),
        Err(TopicDecodeError::Decode(_))
    ));
    assert!(published_op_range(&[0xff]).is_none());
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    assert!(decode::<LwwMap>(&[]).is_err());
    assert!(decode::<LwwMap>(&[0xff, 0x00, 0x13]).is_err());
    // an op batch that references an id index that does not exist
    let bad = ciborium::Value::Map(vec![(
        ciborium::Value::Text("Ops".into()),
        ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("ids".into()),
                ciborium::Value::Array(vec![]),
            ),
            (
                ciborium::Value::Text("ops".into()),
                ciborium::Value::Array(vec![ciborium::Value::Map(vec![
                    (ciborium::Value::Text("o".into()), 5.into()),
                    (ciborium::Value::Text("s".into()), 1.into()),
                    (ciborium::Value::Text("l".into()), 1.into()),
                    (
                        ciborium::Value::Text("d".into()),
                        ciborium::Value::Array(vec![]),
                    ),
                    (ciborium::Value::Text("p".into()), ciborium::Value::Null),
                ])]),
            ),
        ]),
    )]);
    let mut bytes = Vec::new();
    ciborium::into_writer(&bad, &mut bytes).unwrap();
    let err = decode::<LwwMap>(&bytes).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    assert!(matches!(
        decode::<LwwMap>(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
        Err(DecodeError::TooLarge(_))
    ));
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<LwwMap>(&bytes);
    }

    #[test]
    fn decoding_mutated_topic_batches_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let ops = some_ops();
        let known: Vec<NodeId> = (0..10).map(id).collect();
        let mut bytes = encode_published(&PublishedOps {
            ops: OpsBatch(ops.clone()),
            report: Some(Arc::new(report_after(&ops, 2))),
        });
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode_published::<LwwOp>(&bytes, resolver(&known));
        let _ = published_op_range(&bytes);
    }

    #[test]
    fn decoding_mutated_messages_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let ops = some_ops();
        let mut bytes = encode(&published(ops.clone(), Some(report_after(&ops, 2))));
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode::<LwwMap>(&bytes);
    }
}

#[test]
fn a_topic_message_is_named_by_its_op_range_in_sixteen_bytes() {
    let ops = some_ops();
    let encode = |slice: &[Arc<Op<LwwOp>>], report: Option<MemberRecord>| {
        encode_published(&PublishedOps {
            ops: OpsBatch(slice.to_vec()),
            report: report.map(Arc::new),
        })
    };
    // one batch, encoded with and without its writer's report: one id (a batch republished
    // by anyone is deduplicated by gossipsub as one message)
    let bare = encode(&ops[..3], None);
    let reported = encode(&ops[..3], Some(report_after(&ops, 2)));
    assert_ne!(bare, reported);
    assert_eq!(topic_message_id(&bare), topic_message_id(&reported));
    // other ranges, other ids, none of them the id of the bytes hashed as another message
    let ids: std::collections::BTreeSet<_> = [&ops[..3], &ops[..1], &ops[1..3], &ops[5..6]]
        .into_iter()
        .map(|slice| topic_message_id(&encode(slice, None)))
        .collect();
    assert_eq!(ids.len(), 4);
    let garbage = [0xa1, 0x00];
    assert!(published_op_range(&garbage).is_none());
    assert!(!ids.contains(&topic_message_id(&garbage)));
    assert_ne!(topic_message_id(&garbage), topic_message_id(&[0xa1, 0x01]));
}

#[test]
fn the_message_id_of_the_protocol_documents_example_is_pinned() {
    // docs/PROTOCOL.md §5.5: origin A writes seqs 1 and 2 in one batch; its id is written
    // there, so another implementation can check its own against it
    let a = NodeId::from_bytes(
        &[[0x00, 0x24, 0x08, 0x01, 0x12, 0x20].as_slice(), &[0x11; 32]].concat(),
    )
    .unwrap();
    let ops: Vec<Arc<Op<LwwOp>>> = (1..=2u64)
        .map(|seq| {
            Arc::new(Op {
                origin: a.clone(),
                seq,
                lamport: 3 + seq,
                deps: VersionVector::default(),
                payload: LwwOp {
                    key: "x".into(),
                    value: None,
                },
                signature: None,
            })
        })
        .collect();
    let bytes = encode_published(&PublishedOps {
        ops: OpsBatch(ops),
        report: None,
    });
    let hex: String = topic_message_id(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "0963db18125c6ca2109bef28d1173cbd");
}
