//! Wire encoding: every message is CBOR (ciborium). Op batches use a compact form: node ids
//! appear once in a table and are referenced by index, and each op's deps are sent as the
//! entries that grew since the previous op of the same origin in the batch.
//!
//! Decoding never panics: malformed input yields a [`DecodeError`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Message, OpsBatch, PublishedOps, Records};
use crate::network_map::{MemberRecord, MemberState, Sponsorship};
use crate::node_id::NodeId;
use crate::ops_log::{Op, Signature, StateMachine};
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
    /// The origin's signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<Signature>,
}

#[derive(Serialize, Deserialize)]
struct WireBatch<P> {
    ids: Vec<NodeId>,
    ops: Vec<WireOp<P>>,
    /// The publisher's report, its applied vector relative to its last op in the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<WireRecord>,
}

/// Assigns table indices to node ids in first-seen order. Once sealed (the compact form of
/// published batches), ids not yet in the table are referred to by their 64-bit key, with
/// the indices that follow the full ids.
#[derive(Default)]
struct Interner {
    index: BTreeMap<NodeId, u32>,
    ids: Vec<NodeId>,
    sealed: bool,
    keys: Vec<u64>,
}

impl Interner {
    fn intern(&mut self, id: &NodeId) -> u32 {
        if let Some(i) = self.index.get(id) {
            return *i;
        }
        let i = if self.sealed {
            self.keys.push(id.key());
            (self.ids.len() + self.keys.len() - 1) as u32
        } else {
            self.ids.push(id.clone());
            (self.ids.len() - 1) as u32
        };
        self.index.insert(id.clone(), i);
        i
    }
}

/// The id table of a received message.
struct IdTable(Vec<NodeId>);

impl IdTable {
    fn get(&self, i: u32) -> Result<&NodeId, String> {
        self.0
            .get(i as usize)
            .ok_or_else(|| format!("id index {i} out of range"))
    }
}

/// The entries of `new` that differ from `base` (an entry of `base` missing from `new` is
/// sent as 0).
fn vector_delta(
    new: &VersionVector,
    base: &VersionVector,
    skip: Option<&NodeId>,
    table: &mut Interner,
) -> Vec<(u32, u64)> {
    let mut delta = Vec::new();
    for (origin, seq) in new.iter() {
        if Some(origin) != skip && base.get(origin) != seq {
            delta.push((table.intern(origin), seq));
        }
    }
    for (origin, _) in base.iter() {
        if Some(origin) != skip && new.get(origin) == 0 {
            delta.push((table.intern(origin), 0));
        }
    }
    delta
}

fn apply_delta(
    base: &VersionVector,
    delta: &[(u32, u64)],
    ids: &IdTable,
) -> Result<VersionVector, String> {
    let mut vector = base.clone();
    for &(i, seq) in delta {
        vector.set(ids.get(i)?.clone(), seq);
    }
    Ok(vector)
}

fn wire_ops<'a, P>(ops: &'a [Arc<Op<P>>], table: &mut Interner) -> Vec<WireOp<&'a P>> {
    let empty = VersionVector::new();
    let mut previous: BTreeMap<&NodeId, &VersionVector> = BTreeMap::new();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let o = table.intern(&op.origin);
        let before = previous.get(&op.origin).copied().unwrap_or(&empty);
        // the origin's own entry is implied by seq
        let d = vector_delta(&op.deps, before, Some(&op.origin), table);
        previous.insert(&op.origin, &op.deps);
        out.push(WireOp {
            o,
            s: op.seq,
            l: op.lamport,
            d,
            p: &op.payload,
            g: op.signature.clone(),
        });
    }
    out
}

fn read_ops<P>(ids: &IdTable, wire_ops: Vec<WireOp<P>>) -> Result<Vec<Arc<Op<P>>>, String> {
    let mut previous: BTreeMap<NodeId, VersionVector> = BTreeMap::new();
    let mut ops = Vec::with_capacity(wire_ops.len());
    for w in wire_ops {
        let origin = ids.get(w.o)?.clone();
        if w.s == 0 {
            return Err("op seq 0".into());
        }
        let base = previous.get(&origin).cloned().unwrap_or_default();
        let mut deps = apply_delta(&base, &w.d, ids)?;
        deps.set(origin.clone(), w.s - 1);
        previous.insert(origin.clone(), deps.clone());
        ops.push(Arc::new(Op {
            origin,
            seq: w.s,
            lamport: w.l,
            deps,
            payload: w.p,
            signature: w.g,
        }));
    }
    Ok(ops)
}

/// What `member` had applied when it created its last op in `ops` (empty without one): the
/// base its report's applied vector is sent against.
fn last_op_cut<P>(ops: &[Arc<Op<P>>], member: &NodeId) -> VersionVector {
    match ops.iter().rev().find(|op| op.origin == *member) {
        Some(op) => {
            let mut cut = op.deps.clone();
            cut.set(op.origin.clone(), op.seq);
            cut
        }
        None => VersionVector::new(),
    }
}

impl<P: Serialize> Serialize for OpsBatch<P> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut table = Interner::default();
        let ops = wire_ops(&self.0, &mut table);
        WireBatch {
            ids: table.ids,
            ops,
            r: None,
        }
        .serialize(serializer)
    }
}

impl<'de, P: DeserializeOwned> Deserialize<'de> for OpsBatch<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let batch = WireBatch::<P>::deserialize(deserializer)?;
        if batch.r.is_some() {
            return Err(D::Error::custom("a report outside a published batch"));
        }
        let ids = IdTable(batch.ids);
        Ok(OpsBatch(
            read_ops(&ids, batch.ops).map_err(D::Error::custom)?,
        ))
    }
}

impl<P: Serialize> Serialize for PublishedOps<P> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let base = match &self.report {
            Some(report) => last_op_cut(&self.ops.0, &report.id),
            None => VersionVector::new(),
        };
        let mut table = Interner::default();
        let ops = wire_ops(&self.ops.0, &mut table);
        let r = self
            .report
            .as_ref()
            .map(|report| wire_record(report, &base, &mut table));
        WireBatch {
            ids: table.ids,
            ops,
            r,
        }
        .serialize(serializer)
    }
}

impl<'de, P: DeserializeOwned> Deserialize<'de> for PublishedOps<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let batch = WireBatch::<P>::deserialize(deserializer)?;
        let ids = IdTable(batch.ids);
        let ops = read_ops(&ids, batch.ops).map_err(D::Error::custom)?;
        let report = match batch.r {
            Some(w) => {
                let base = last_op_cut(&ops, ids.get(w.i).map_err(D::Error::custom)?);
                Some(Arc::new(
                    read_record(w, &ids, &base).map_err(D::Error::custom)?,
                ))
            }
            None => None,
        };
        Ok(PublishedOps {
            ops: OpsBatch(ops),
            report,
        })
    }
}

/// A published batch as it travels on the topic: full ids only for the ops' origins and the
/// report's member; every other id (deps, applied entries, a sponsor) by its 64-bit key,
/// which the receiver resolves among the members and origins it knows.
#[derive(Serialize, Deserialize)]
struct TopicBatch<P> {
    ids: Vec<NodeId>,
    /// Keys of the other ids; index `ids.len() + i` refers to `keys[i]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<u64>,
    ops: Vec<WireOp<P>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<WireRecord>,
}

#[derive(Serialize, Deserialize)]
enum TopicMessage<P> {
    Ops(TopicBatch<P>),
}

/// Why a published batch could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TopicDecodeError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The batch refers to a node this receiver does not know yet (a member that joined
    /// moments ago): the ops arrive later through anti-entropy, with full ids.
    #[error("the batch refers to unknown node key {0:#018x}")]
    UnknownKey(u64),
}

/// Encodes a published batch for the topic (the compact form of [`TopicBatch`]).
pub fn encode_published<P: Serialize>(published: &PublishedOps<P>) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&topic_message(published), &mut out).expect("writing to a Vec");
    out
}

/// Size of [`encode_published`]'s output.
pub fn published_len<P: Serialize>(published: &PublishedOps<P>) -> usize {
    encoded_len(&topic_message(published))
}

fn topic_message<P: Serialize>(published: &PublishedOps<P>) -> TopicMessage<&P> {
    let base = match &published.report {
        Some(report) => last_op_cut(&published.ops.0, &report.id),
        None => VersionVector::new(),
    };
    let mut table = Interner::default();
    for op in &published.ops.0 {
        table.intern(&op.origin);
    }
    if let Some(report) = &published.report {
        table.intern(&report.id);
    }
    table.sealed = true;
    let ops = wire_ops(&published.ops.0, &mut table);
    let r = published
        .report
        .as_ref()
        .map(|report| wire_record(report, &base, &mut table));
    TopicMessage::Ops(TopicBatch {
        ids: table.ids,
        keys: table.keys,
        ops,
        r,
    })
}

/// Decodes a batch from the topic, resolving node keys with `resolve`.
pub fn decode_published<P: DeserializeOwned>(
    bytes: &[u8],
    mut resolve: impl FnMut(u64) -> Option<NodeId>,
) -> Result<PublishedOps<P>, TopicDecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()).into());
    }
    let TopicMessage::Ops(batch) = ciborium::from_reader::<TopicMessage<P>, _>(bytes)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let mut ids = batch.ids;
    for key in batch.keys {
        ids.push(resolve(key).ok_or(TopicDecodeError::UnknownKey(key))?);
    }
    let ids = IdTable(ids);
    let malformed = |e: String| TopicDecodeError::Decode(DecodeError::Malformed(e));
    let ops = read_ops(&ids, batch.ops).map_err(malformed)?;
    let report = match batch.r {
        Some(w) => {
            let base = last_op_cut(&ops, ids.get(w.i).map_err(malformed)?);
            Some(Arc::new(read_record(w, &ids, &base).map_err(malformed)?))
        }
        None => None,
    };
    Ok(PublishedOps {
        ops: OpsBatch(ops),
        report,
    })
}

/// Bytes in the gossipsub id of a topic message ([`topic_message_id`]).
pub const MESSAGE_ID_BYTES: usize = 16;

/// BLAKE3 key-derivation context of a published batch's id (docs/PROTOCOL.md §2).
const OP_RANGE_ID_CONTEXT: &str = "tidemark 2026-12-02 topic message id: op range";
/// BLAKE3 key-derivation context of any other topic message's id.
const OTHER_ID_CONTEXT: &str = "tidemark 2026-12-02 topic message id: other";

/// The gossipsub id of `bytes` published on the topic, [`MESSAGE_ID_BYTES`] long. A batch
/// is named by its op range ([`published_op_range`]): the first bytes of the BLAKE3, in
/// key-derivation mode, of the first and the last op's origin (each after a byte with its
/// length) and seq (8 bytes, big-endian), so a batch republished by anyone is deduplicated
/// as one message. Anything else is named by the BLAKE3 of its bytes under another
/// context, so it cannot take an op range's id. Short ids matter: IHAVE, IWANT and
/// IDONTWANT carry them, each id many times per message.
pub fn topic_message_id(bytes: &[u8]) -> [u8; MESSAGE_ID_BYTES] {
    let hash = match published_op_range(bytes) {
        Some(((first, first_seq), (last, last_seq))) => {
            let mut hasher = blake3::Hasher::new_derive_key(OP_RANGE_ID_CONTEXT);
            for (origin, seq) in [(&first, first_seq), (&last, last_seq)] {
                let origin = origin.as_bytes();
                // a node id is 1–64 bytes (`NodeId::from_bytes`), so its length fits a byte
                hasher.update(&[origin.len() as u8]);
                hasher.update(origin);
                hasher.update(&seq.to_be_bytes());
            }
            hasher.finalize()
        }
        None => blake3::Hasher::new_derive_key(OTHER_ID_CONTEXT)
            .update(bytes)
            .finalize(),
    };
    let mut id = [0; MESSAGE_ID_BYTES];
    id.copy_from_slice(&hash.as_bytes()[..MESSAGE_ID_BYTES]);
    id
}

/// The op range a published batch is named by, read without decoding all of it:
/// `(origin, seq)` of its first and last ops, or `None` if `bytes` is not a published
/// batch with ops.
pub fn published_op_range(bytes: &[u8]) -> Option<((NodeId, u64), (NodeId, u64))> {
    #[derive(Deserialize)]
    struct OpHeader {
        o: u32,
        s: u64,
    }
    struct FirstLast(Option<(OpHeader, Option<OpHeader>)>);
    impl<'de> Deserialize<'de> for FirstLast {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = FirstLast;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a sequence of ops")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<FirstLast, A::Error> {
                    let Some(first) = seq.next_element::<OpHeader>()? else {
                        return Ok(FirstLast(None));
                    };
                    let mut last = None;
                    while let Some(op) = seq.next_element::<OpHeader>()? {
                        last = Some(op);
                    }
                    Ok(FirstLast(Some((first, last))))
                }
            }
            deserializer.deserialize_seq(Visit)
        }
    }
    #[derive(Deserialize)]
    struct Header {
        ids: Vec<NodeId>,
        ops: FirstLast,
    }
    #[derive(Deserialize)]
    enum Envelope {
        Ops(Header),
    }
    let Envelope::Ops(header) = ciborium::from_reader(bytes).ok()?;
    let (first, last) = header.ops.0?;
    let last = last.unwrap_or(OpHeader {
        o: first.o,
        s: first.s,
    });
    let id = |i: u32| header.ids.get(i as usize).cloned();
    Some(((id(first.o)?, first.s), (id(last.o)?, last.s)))
}

/// Bytes of a published batch's encoding that are its report (0 without one): the share of
/// a published message that is status traffic. Counts the report's fields, not the ids it
/// adds to the shared table; cheap enough to call on every received batch.
pub fn report_len<P>(published: &PublishedOps<P>) -> usize {
    let Some(report) = &published.report else {
        return 0;
    };
    let base = last_op_cut(&published.ops.0, &report.id);
    let mut table = Interner::default();
    for op in &published.ops.0 {
        table.intern(&op.origin);
    }
    encoded_len(&wire_record(report, &base, &mut table))
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
    /// The applied vector: in a status report every entry; in a published batch the
    /// entries that differ from the publisher's last op in the batch.
    a: Vec<(u32, u64)>,
    #[serde(default, skip_serializing_if = "is_zero")]
    g: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ad: Vec<String>,
    /// The member says it is cut off (present only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    co: bool,
}

fn is_false(x: &bool) -> bool {
    !*x
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

fn wire_record(r: &MemberRecord, base: &VersionVector, table: &mut Interner) -> WireRecord {
    WireRecord {
        i: table.intern(&r.id),
        n: r.incarnation,
        st: state_code(r.state),
        sp: r
            .sponsor
            .as_ref()
            .map(|s| (table.intern(&s.sponsor), s.sponsor_incarnation, s.reg_no)),
        r: r.report_seq,
        a: vector_delta(&r.applied, base, None, table),
        g: r.registrations,
        ad: r.addrs.clone(),
        co: r.cut_off,
    }
}

fn read_record(w: WireRecord, ids: &IdTable, base: &VersionVector) -> Result<MemberRecord, String> {
    let state = match w.st {
        0 => MemberState::Alive,
        1 => MemberState::Suspect,
        2 => MemberState::Left,
        3 => MemberState::Evicted,
        other => return Err(format!("unknown member state {other}")),
    };
    let sponsor = match w.sp {
        Some((i, inc, reg_no)) => Some(Sponsorship {
            sponsor: ids.get(i)?.clone(),
            sponsor_incarnation: inc,
            reg_no,
        }),
        None => None,
    };
    Ok(MemberRecord {
        id: ids.get(w.i)?.clone(),
        incarnation: w.n,
        state,
        sponsor,
        report_seq: w.r,
        applied: apply_delta(base, &w.a, ids)?,
        registrations: w.g,
        addrs: w.ad,
        cut_off: w.co,
    })
}

impl Serialize for Records {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut table = Interner::default();
        let empty = VersionVector::new();
        let recs = self
            .0
            .iter()
            .map(|r| wire_record(r, &empty, &mut table))
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
        let ids = IdTable(ids);
        let empty = VersionVector::new();
        let mut out = Vec::with_capacity(recs.len());
        for w in recs {
            out.push(Arc::new(
                read_record(w, &ids, &empty).map_err(D::Error::custom)?,
            ));
        }
        Ok(Records(out))
    }
}
