//! The default replicated type: a key-value map whose writes are last-writer-wins by
//! (Lamport time, origin). Deletes leave tombstones, so a delete beats any older write that
//! arrives after it.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::state_machine::{Digest, OpMeta, StateMachine};
use crate::node_id::NodeId;

/// A write: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwOp {
    pub key: String,
    pub value: Option<String>,
}

/// One key's winning write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwEntry {
    pub value: Option<String>,
    pub lamport: u64,
    pub origin: NodeId,
}

/// Key-value map, last writer wins by (Lamport time, origin). A persistent map: a clone
/// costs O(1) and shares structure, so a snapshot of the state can be exported while the
/// node goes on applying ops.
///
/// The digest is kept incrementally (see [`LwwMap::digest`]): a write marks the one chunk
/// of keys it lands in, and the next digest rehashes only marked chunks.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(from = "LwwMapRepr", into = "LwwMapRepr")]
pub struct LwwMap {
    entries: imbl::OrdMap<String, LwwEntry>,
    chunks: DigestChunks,
}

/// The encoded form: the entries alone (the digest chunks are derived from them).
#[derive(Serialize, Deserialize)]
struct LwwMapRepr {
    #[serde(deserialize_with = "crate::serde_bounded::ord_map")]
    entries: imbl::OrdMap<String, LwwEntry>,
}

impl From<LwwMapRepr> for LwwMap {
    fn from(repr: LwwMapRepr) -> Self {
        let boundaries = repr
            .entries
            .keys()
            .filter(|k| starts_chunk(k))
            .cloned()
            .collect();
        Self {
            entries: repr.entries,
            chunks: DigestChunks {
                boundaries,
                clean: imbl::OrdMap::new(),
            },
        }
    }
}

impl From<LwwMap> for LwwMapRepr {
    fn from(map: LwwMap) -> Self {
        Self {
            entries: map.entries,
        }
    }
}

impl PartialEq for LwwMap {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for LwwMap {}

impl std::fmt::Debug for LwwMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries.iter()).finish()
    }
}

/// Where a digest chunk starts: before the first boundary key (the head), or at one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ChunkStart {
    Head,
    At(String),
}

/// A borrowed [`ChunkStart`]: `None` is the head (it sorts first, as `Head` does).
type ChunkStartRef<'a> = Option<&'a str>;

impl ChunkStart {
    fn as_ref(&self) -> ChunkStartRef<'_> {
        match self {
            ChunkStart::Head => None,
            ChunkStart::At(b) => Some(b),
        }
    }
}

/// The digest's partition of the keys into chunks, and the hashes of the chunks no write
/// has touched since they were last hashed.
#[derive(Clone, Debug, Default)]
struct DigestChunks {
    /// Held keys that start a chunk ([`starts_chunk`]).
    boundaries: imbl::OrdSet<String>,
    /// Hash of every chunk unchanged since it was hashed; a write removes its chunk's.
    clean: imbl::OrdMap<ChunkStart, [u8; 32]>,
}

/// Whether `key` starts a digest chunk: the top 6 bits of its hash (64-bit FNV-1a, then
/// the MurmurHash3 finalizer so the last bytes reach the top bits) are zero, one key in 64
/// on average. Content-defined, so the partition is a function of the key set alone and a
/// new key splits at most one chunk.
fn starts_chunk(key: &str) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash >> 58 == 0
}

/// Domain tag hashed ahead of the chunk hashes.
const DIGEST_DOMAIN: &[u8] = b"tidemark lww-map digest v2";

impl LwwMap {
    /// Live entries (no tombstones), sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
    }

    /// Live entries whose key is `start` or after it, sorted by key.
    pub fn entries_from<'a>(&'a self, start: &str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.entries
            .range::<_, str>((Bound::Included(start), Bound::Unbounded))
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
    }

    /// The key's winning write, a tombstone included.
    pub fn entry(&self, key: &str) -> Option<&LwwEntry> {
        self.entries.get(key)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(|e| e.value.as_deref())
    }

    /// Number of keys including tombstones.
    pub fn len_with_tombstones(&self) -> usize {
        self.entries.len()
    }

    /// The highest Lamport time of any entry (0 for an empty map): a node that starts from
    /// this state must write above it.
    pub fn max_lamport(&self) -> u64 {
        self.entries.values().map(|e| e.lamport).max().unwrap_or(0)
    }

    /// Every entry, tombstones included, sorted by key (the state's canonical form).
    pub fn all_entries(&self) -> impl Iterator<Item = (&String, &LwwEntry)> {
        self.entries.iter()
    }

    /// Appends an entry whose key sorts after every key held (rebuilding a state from its
    /// canonical form); refuses one out of order.
    pub fn push_in_order(&mut self, key: String, entry: LwwEntry) -> Result<(), String> {
        if let Some((last, _)) = self.entries.get_max() {
            if key <= *last {
                return Err(format!("key {key:?} does not sort after {last:?}"));
            }
        }
        self.chunks.touch(&key, true);
        self.entries.insert(key, entry);
        Ok(())
    }

    /// The digest as format version 1 defined it: one BLAKE3 pass over every entry (kept
    /// to verify snapshot files written by that version).
    pub fn flat_digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hash_entries(&mut hasher, self.entries.iter());
        Digest(*hasher.finalize().as_bytes())
    }

    /// The hashes of the digest's clean chunks, each with the key that starts its chunk
    /// (`None` for the chunk before the first such key), in key order: what a store keeps
    /// beside the state so that a restart does not hash the state again
    /// ([`LwwMap::restore_chunk_hashes`]). Call [`refresh_digest`](StateMachine::refresh_digest)
    /// first to have them all.
    pub fn chunk_hashes(&self) -> impl Iterator<Item = (Option<&str>, [u8; 32])> {
        self.chunks
            .clean
            .iter()
            .map(|(start, hash)| (start.as_ref(), *hash))
    }

    /// The chunk holding `key` and, when `key` starts a chunk, the chunk before it (which
    /// the key split): the chunks whose hash a change of `key` changed.
    pub fn chunks_changed_by(&self, key: &str) -> Vec<Option<&str>> {
        let mut holders = self
            .chunks
            .boundaries
            .range::<_, str>((Bound::Unbounded, Bound::Included(key)))
            .rev()
            .take(2)
            .map(|b| Some(b.as_str()));
        let holder = holders.next().unwrap_or(None);
        let mut changed = vec![holder];
        if holder == Some(key) {
            changed.push(holders.next().unwrap_or(None));
        }
        changed
    }

    /// The hash of the chunk starting at `start` (`None`: the head), if it is clean.
    pub fn chunk_hash_of(&self, start: Option<&str>) -> Option<[u8; 32]> {
        let start = start.map_or(ChunkStart::Head, |b| ChunkStart::At(b.to_owned()));
        self.chunks.clean.get(&start).copied()
    }

    /// Takes chunk hashes a store kept beside this state ([`LwwMap::chunk_hashes`]) as the
    /// hashes of its chunks, without hashing them; a start that begins no chunk of this
    /// state is ignored. Returns how many were taken. The store vouches for them as it
    /// does for the entries.
    pub fn restore_chunk_hashes(
        &mut self,
        hashes: impl IntoIterator<Item = (Option<String>, [u8; 32])>,
    ) -> usize {
        let starts: std::collections::BTreeSet<Option<String>> = self
            .chunks_with_hashes()
            .map(|(start, _)| start.map(str::to_owned))
            .collect();
        let mut taken = 0;
        for (start, hash) in hashes {
            if starts.contains(&start) {
                let start = start.map_or(ChunkStart::Head, ChunkStart::At);
                self.chunks.clean.insert(start, hash);
                taken += 1;
            }
        }
        taken
    }

    /// The chunks in key order, each with its hash when it is clean.
    fn chunks_with_hashes(&self) -> impl Iterator<Item = (ChunkStartRef<'_>, Option<[u8; 32]>)> {
        let head = match (self.entries.get_min(), self.chunks.boundaries.get_min()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((first, _)), Some(boundary)) => first < boundary,
        };
        let starts = head
            .then_some(None)
            .into_iter()
            .chain(self.chunks.boundaries.iter().map(|b| Some(b.as_str())));
        // `clean` holds a subset of the chunk starts, in the same order: a merge join
        let mut clean = self.chunks.clean.iter().peekable();
        starts.map(move |start| {
            while clean.next_if(|(c, _)| c.as_ref() < start).is_some() {}
            let hash = clean.next_if(|(c, _)| c.as_ref() == start).map(|(_, h)| *h);
            (start, hash)
        })
    }

    fn chunk_hash(&self, start: ChunkStartRef<'_>) -> [u8; 32] {
        let (from, next) = match start {
            None => (Bound::Unbounded, self.chunks.boundaries.get_min()),
            Some(b) => (
                Bound::Included(b),
                self.chunks
                    .boundaries
                    .range::<_, str>((Bound::Excluded(b), Bound::Unbounded))
                    .next(),
            ),
        };
        let to = next.map_or(Bound::Unbounded, |n| Bound::Excluded(n.as_str()));
        let mut hasher = blake3::Hasher::new();
        hash_entries(&mut hasher, self.entries.range::<_, str>((from, to)));
        *hasher.finalize().as_bytes()
    }
}

impl DigestChunks {
    /// Marks the chunk holding `key` as changed; a new key that starts a chunk splits the
    /// chunk it fell into.
    fn touch(&mut self, key: &str, new_key: bool) {
        let holder = self
            .boundaries
            .range::<_, str>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map_or(ChunkStart::Head, |b| ChunkStart::At(b.clone()));
        self.clean.remove(&holder);
        if new_key && starts_chunk(key) {
            self.boundaries.insert(key.to_owned());
        }
    }
}

/// Per entry in key order: key length (u64 LE), key, tag (0 tombstone, 1 value), value
/// length and value when present, Lamport time (u64 LE), origin length and origin bytes.
/// Entries are encoded into a buffer and hashed in 64 KiB pieces: BLAKE3 is many times
/// faster on long inputs than on the short fields one by one (the hash is the same).
fn hash_entries<'a>(
    hasher: &mut blake3::Hasher,
    entries: impl Iterator<Item = (&'a String, &'a LwwEntry)>,
) {
    let mut buf = Vec::with_capacity(1 << 16);
    for (key, entry) in entries {
        buf.extend_from_slice(&(key.len() as u64).to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        match &entry.value {
            None => buf.push(0),
            Some(v) => {
                buf.push(1);
                buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
                buf.extend_from_slice(v.as_bytes());
            }
        }
        buf.extend_from_slice(&entry.lamport.to_le_bytes());
        let origin = entry.origin.as_bytes();
        buf.extend_from_slice(&(origin.len() as u64).to_le_bytes());
        buf.extend_from_slice(origin);
        if buf.len() >= 1 << 16 {
            hasher.update(&buf);
            buf.clear();
        }
    }
    hasher.update(&buf);
}

impl StateMachine for LwwMap {
    type Op = LwwOp;

    fn apply(&mut self, meta: &OpMeta<'_>, op: &LwwOp) {
        let current = self.entries.get(&op.key);
        let wins = match current {
            None => true,
            Some(cur) => (meta.lamport, meta.origin) > (cur.lamport, &cur.origin),
        };
        if wins {
            let new_key = current.is_none();
            self.chunks.touch(&op.key, new_key);
            self.entries.insert(
                op.key.clone(),
                LwwEntry {
                    value: op.value.clone(),
                    lamport: meta.lamport,
                    origin: meta.origin.clone(),
                },
            );
        }
    }

    /// BLAKE3 over the domain tag, then over the hash of each chunk in key order. The keys
    /// are cut into chunks where a key [starts a chunk](starts_chunk) (content-defined, so
    /// the cut depends on the key set alone); a chunk's hash is BLAKE3 over its entries in
    /// key order, each encoded as in [`hash_entries`]. Chunks no write touched since the
    /// last [`refresh_digest`](StateMachine::refresh_digest) reuse their hash, so after a
    /// batch of writes the digest costs the touched chunks (64 entries each on average)
    /// plus one 32-byte hash per chunk, not a pass over the state.
    fn digest(&self) -> Digest {
        let mut root = blake3::Hasher::new();
        root.update(DIGEST_DOMAIN);
        for (start, clean) in self.chunks_with_hashes() {
            root.update(&clean.unwrap_or_else(|| self.chunk_hash(start)));
        }
        Digest(*root.finalize().as_bytes())
    }

    fn refresh_digest(&mut self) {
        let stale: Vec<ChunkStart> = self
            .chunks_with_hashes()
            .filter(|(_, clean)| clean.is_none())
            .map(|(start, _)| start.map_or(ChunkStart::Head, |b| ChunkStart::At(b.to_owned())))
            .collect();
        for start in stale {
            let hash = self.chunk_hash(start.as_ref());
            self.chunks.clean.insert(start, hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(map: &mut LwwMap, origin: &NodeId, lamport: u64, key: &str, value: Option<&str>) {
        let meta = OpMeta {
            origin,
            seq: 1,
            lamport,
        };
        map.apply(
            &meta,
            &LwwOp {
                key: key.into(),
                value: value.map(String::from),
            },
        );
    }

    #[test]
    fn concurrent_writes_commute_and_highest_stamp_wins() {
        let (a, b) = (NodeId::synthetic(1), NodeId::synthetic(2));
        let mut x = LwwMap::default();
        put(&mut x, &a, 5, "k", Some("from-a"));
        put(&mut x, &b, 5, "k", Some("from-b"));
        let mut y = LwwMap::default();
        put(&mut y, &b, 5, "k", Some("from-b"));
        put(&mut y, &a, 5, "k", Some("from-a"));
        assert_eq!(x, y);
        assert_eq!(x.digest(), y.digest());
        let winner = if b > a { "from-b" } else { "from-a" };
        assert_eq!(x.get("k"), Some(winner));
    }

    #[test]
    fn delete_beats_an_older_write_that_arrives_later() {
        let a = NodeId::synthetic(1);
        let mut m = LwwMap::default();
        put(&mut m, &a, 9, "k", None);
        put(&mut m, &a, 3, "k", Some("old"));
        assert_eq!(m.get("k"), None);
        assert_eq!(m.entries().count(), 0);
        assert_eq!(m.len_with_tombstones(), 1);
    }

    #[test]
    fn digest_depends_on_content() {
        let a = NodeId::synthetic(1);
        let mut m = LwwMap::default();
        let empty = m.digest();
        put(&mut m, &a, 1, "k", Some("v"));
        assert_ne!(m.digest(), empty);
        let mut n = LwwMap::default();
        put(&mut n, &a, 1, "k", Some("w"));
        assert_ne!(m.digest(), n.digest());
    }

    /// The same state rebuilt from its encoding: no cached chunk hashes.
    fn fresh(map: &LwwMap) -> LwwMap {
        let mut bytes = Vec::new();
        ciborium::into_writer(map, &mut bytes).unwrap();
        ciborium::from_reader(bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_write_rehashes_only_the_chunk_it_lands_in() {
        let a = NodeId::synthetic(1);
        let mut m = LwwMap::default();
        for i in 0..10_000 {
            put(&mut m, &a, i + 1, &format!("key-{i:05}"), Some("v"));
        }
        m.refresh_digest();
        let chunks = m.chunks_with_hashes().count();
        assert!(
            (100..300).contains(&chunks),
            "10,000 keys make {chunks} chunks"
        );
        let mut sizes = vec![0usize];
        for key in m.entries.keys() {
            if starts_chunk(key) {
                sizes.push(0);
            }
            *sizes.last_mut().unwrap() += 1;
        }
        let largest = sizes.iter().max().unwrap();
        assert!(*largest < 640, "sequential keys make a chunk of {largest}");
        assert_eq!(m.chunks.clean.len(), chunks);
        put(&mut m, &a, 20_000, "key-04321", Some("changed"));
        assert_eq!(m.chunks.clean.len(), chunks - 1, "one chunk marked");
        assert_eq!(m.digest(), fresh(&m).digest());
    }

    proptest::proptest! {
        /// Whatever writes arrive and whenever the cache is refreshed, the digest equals
        /// the digest of the same entries hashed from scratch, and differs from the digest
        /// before a write that changed an entry.
        #[test]
        fn the_incremental_digest_equals_a_digest_from_scratch(
            writes in proptest::collection::vec(
                (0u16..400, proptest::option::of(0u8..4), 1u64..50, proptest::bool::ANY),
                1..300,
            ),
        ) {
            let origins = [NodeId::synthetic(1), NodeId::synthetic(2)];
            let mut m = LwwMap::default();
            for (i, (key, value, lamport, refresh)) in writes.into_iter().enumerate() {
                let before = m.clone();
                let value = value.map(|v| format!("value-{v}"));
                put(&mut m, &origins[i % 2], lamport, &format!("k{key}"), value.as_deref());
                if refresh {
                    m.refresh_digest();
                }
                let digest = m.digest();
                proptest::prop_assert_eq!(digest, fresh(&m).digest());
                proptest::prop_assert_eq!(digest == before.digest(), m == before);
            }
        }
    }
}
