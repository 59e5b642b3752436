//! Wire encoding: every message is CBOR (ciborium). Op batches use a compact form: node ids
//! appear once in a table and are referenced by index, and each op's deps are sent as the
//! entries that grew since the previous op of the same origin in the batch.
//!
//! Decoding never panics: malformed input yields a [`DecodeError`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Message, OpsBatch, Records};
use crate::network_map::{MemberRecord, MemberState, Sponsorship};
use crate::node_id::NodeId;
use crate::ops_log::{Op, StateMachine};
use crate::version_vector::VersionVector;

/// Largest message accepted for decoding.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes a message as CBOR.
pub fn encode<S: StateMachine>(msg: &Message<S>) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes a CBOR message, refusing oversized or malformed input.
pub fn decode<S: StateMachine>(bytes: &[u8]) -> Result<Message<S>, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    ciborium::from_reader(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Size of a message's encoding, without keeping the bytes.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    ciborium::into_writer(value, &mut counter).expect("counting cannot fail");
    counter.0
}

#[derive(Serialize, Deserialize)]
struct WireOp<P> {
    /// Index of the origin in the batch's id table.
    o: u32,
    s: u64,
    l: u64,
    /// Dep entries (id index, seq) that differ from the previous op of this origin in the
    /// batch (or from nothing, for its first op).
    d: Vec<(u32, u64)>,
    p: P,
}

#[derive(Serialize, Deserialize)]
struct WireBatch<P> {
    ids: Vec<NodeId>,
    ops: Vec<WireOp<P>>,
}

/// Assigns table indices to node ids in first-seen order.
#[derive(Default)]
struct Interner<'a> {
    index: BTreeMap<&'a NodeId, u32>,
    ids: Vec<NodeId>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, id: &'a NodeId) -> u32 {
        if let Some(i) = self.index.get(id) {
            return *i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.clone());
        self.index.insert(id, i);
        i
    }
}

impl<P: Serialize> Serialize for OpsBatch<P> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut table = Interner::default();
        let empty = VersionVector::new();
        let mut previous: BTreeMap<&NodeId, &VersionVector> = BTreeMap::new();
        let mut ops = Vec::with_capacity(self.0.len());
        for op in &self.0 {
            let o = table.intern(&op.origin);
            let before = previous.get(&op.origin).copied().unwrap_or(&empty);
            let mut d = Vec::new();
            // the origin's own entry is implied by seq
            for (origin, seq) in op.deps.iter() {
                if *origin != op.origin && before.get(origin) != seq {
                    d.push((table.intern(origin), seq));
                }
            }
            for (origin, _) in before.iter() {
                if *origin != op.origin && op.deps.get(origin) == 0 {
                    d.push((table.intern(origin), 0));
                }
            }
            previous.insert(&op.origin, &op.deps);
            ops.push(WireOp {
                o,
                s: op.seq,
                l: op.lamport,
                d,
                p: &op.payload,
            });
        }
        WireBatch {
            ids: table.ids,
            ops,
        }
        .serialize(serializer)
    }
}

impl<'de, P: DeserializeOwned> Deserialize<'de> for OpsBatch<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let WireBatch { ids, ops: wire_ops } = WireBatch::<P>::deserialize(deserializer)?;
        let id = |i: u32| -> Result<&NodeId, D::Error> {
            ids.get(i as usize)
                .ok_or_else(|| D::Error::custom(format!("id index {i} out of range")))
        };
        let mut previous: BTreeMap<NodeId, VersionVector> = BTreeMap::new();
        let mut ops = Vec::with_capacity(wire_ops.len());
        for w in wire_ops {
            let origin = id(w.o)?.clone();
            if w.s == 0 {
                return Err(D::Error::custom("op seq 0"));
            }
            let mut deps = previous.get(&origin).cloned().unwrap_or_default();
            for &(i, seq) in &w.d {
                deps.set(id(i)?.clone(), seq);
            }
            deps.set(origin.clone(), w.s - 1);
            previous.insert(origin.clone(), deps.clone());
            ops.push(Arc::new(Op {
                origin,
                seq: w.s,
                lamport: w.l,
                deps,
                payload: w.p,
            }));
        }
        Ok(OpsBatch(ops))
    }
}

/// A record on the wire: node ids are indices into the message's id table.
#[derive(Serialize, Deserialize)]
struct WireRecord {
    i: u32,
    n: u64,
    /// 0 alive, 1 suspect, 2 left, 3 evicted
    st: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sp: Option<(u32, u64, u64)>,
    r: u64,
    a: Vec<(u32, u64)>,
    #[serde(default, skip_serializing_if = "is_zero")]
    g: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ad: Vec<String>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

#[derive(Serialize, Deserialize)]
struct WireRecords {
    ids: Vec<NodeId>,
    recs: Vec<WireRecord>,
}

fn state_code(state: MemberState) -> u8 {
    match state {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Left => 2,
        MemberState::Evicted => 3,
    }
}

impl Serialize for Records {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut table = Interner::default();
        let recs = self
            .0
            .iter()
            .map(|r| WireRecord {
                i: table.intern(&r.id),
                n: r.incarnation,
                st: state_code(r.state),
                sp: r
                    .sponsor
                    .as_ref()
                    .map(|s| (table.intern(&s.sponsor), s.sponsor_incarnation, s.reg_no)),
                r: r.report_seq,
                a: r.applied
                    .iter()
                    .map(|(o, s)| (table.intern(o), s))
                    .collect(),
                g: r.registrations,
                ad: r.addrs.clone(),
            })
            .collect();
        WireRecords {
            ids: table.ids,
            recs,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let WireRecords { ids, recs } = WireRecords::deserialize(deserializer)?;
        let id = |i: u32| -> Result<NodeId, D::Error> {
            ids.get(i as usize)
                .cloned()
                .ok_or_else(|| D::Error::custom(format!("id index {i} out of range")))
        };
        let mut out = Vec::with_capacity(recs.len());
        for w in recs {
            let state = match w.st {
                0 => MemberState::Alive,
                1 => MemberState::Suspect,
                2 => MemberState::Left,
                3 => MemberState::Evicted,
                other => return Err(D::Error::custom(format!("unknown member state {other}"))),
            };
            let sponsor = match w.sp {
                Some((i, inc, reg_no)) => Some(Sponsorship {
                    sponsor: id(i)?,
                    sponsor_incarnation: inc,
                    reg_no,
                }),
                None => None,
            };
            let mut applied = VersionVector::new();
            for (i, seq) in w.a {
                applied.set(id(i)?, seq);
            }
            out.push(Arc::new(MemberRecord {
                id: id(w.i)?,
                incarnation: w.n,
                state,
                sponsor,
                report_seq: w.r,
                applied,
                registrations: w.g,
                addrs: w.ad,
            }));
        }
        Ok(Records(out))
    }
}
