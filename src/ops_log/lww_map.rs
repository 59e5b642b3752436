//! The default replicated type: a key-value map whose writes are last-writer-wins by
//! (Lamport time, origin). Deletes leave tombstones, so a delete beats any older write that
//! arrives after it.
//!
//! A map holds its entries in memory, or keeps them in a store ([`StoredEntries`]) with
//! only the entries the store does not hold yet in memory (the overlay): a read merges the
//! two, taking the newer entry of a key.

use std::borrow::Cow;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::state_machine::{Digest, OpMeta, StateMachine};
use crate::node_id::NodeId;

/// A write: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwOp {
    pub key: String,
    pub value: Option<String>,
}

/// A value as an entry holds it: inline when it is at most 24 bytes long, so reading an
/// entry (to hash it into the digest, say) reads no heap string for a short value.
pub type EntryValue = compact_str::CompactString;

/// One key's winning write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwEntry {
    #[serde(deserialize_with = "value_via_string")]
    pub value: Option<EntryValue>,
    pub lamport: u64,
    pub origin: NodeId,
}

/// Reads a value as a `String` first: a `CompactString`'s own `Deserialize` asks for a
/// borrowed `str`, which ciborium cannot give for a text longer than its scratch buffer
/// (4 KiB), so a long value read from disk or the wire would fail to decode.
fn value_via_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<EntryValue>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.map(EntryValue::from))
}

impl LwwEntry {
    /// Whether this write wins over `other` (a higher Lamport time, then a higher origin).
    pub fn newer_than(&self, other: &LwwEntry) -> bool {
        (self.lamport, &self.origin) > (other.lamport, &other.origin)
    }
}

/// Entries of a map kept outside memory, by key: what a store (the node's database)
/// provides so that a map need not hold its state in memory. A store holds the map at
/// some earlier point of its history, so each of its entries is the map's entry or an
/// older one; the map reads both and takes the newer.
///
/// Reads do not fail: a store that cannot read reports it its own way (the node's counts
/// and logs the failure) and answers as if the key were absent.
pub trait StoredEntries: Send + Sync {
    /// The entry stored for `key`.
    fn get(&self, key: &str) -> Option<LwwEntry>;

    /// The stored entries with keys in the range, in key order.
    fn range<'a>(
        &'a self,
        from: Bound<&str>,
        to: Bound<&str>,
    ) -> Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a>;

    /// Number of keys stored (tombstones included).
    fn len(&self) -> u64;

    /// Whether no key is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries as stored now, unchanged by later writes to the store: what a copy of
    /// the map reads (an export or a grant taken while the node goes on).
    fn pin(&self) -> Arc<dyn StoredEntries>;

    /// Whether reading the entries in order costs about what copying their bytes does (a
    /// file read front to back), so that a reader may read them twice rather than keep a
    /// copy. `false` for a B-tree read page by page.
    fn rereads_cheaply(&self) -> bool {
        false
    }
}

/// A map key as the map holds it: inline when it is at most 24 bytes long, so comparing
/// keys while searching the map reads the map's own nodes rather than one heap string
/// per comparison.
type Key = compact_str::CompactString;

/// Key-value map, last writer wins by (Lamport time, origin). A persistent map: a clone
/// costs O(1) and shares structure, so a snapshot of the state can be exported while the
/// node goes on applying ops. A clone of a map kept in a store reads the store as it was
/// when cloned ([`StoredEntries::pin`]).
///
/// The digest is kept incrementally (see [`LwwMap::digest`]): a write marks the one chunk
/// of keys it lands in, and the next digest rehashes only marked chunks.
#[derive(Default, Deserialize)]
#[serde(from = "LwwMapRepr")]
pub struct LwwMap {
    /// Every entry (no store), or the entries the store does not hold as new (the overlay).
    entries: imbl::OrdMap<Key, LwwEntry>,
    /// Where the rest of the entries are kept.
    store: Option<Arc<dyn StoredEntries>>,
    chunks: DigestChunks,
    /// While a map kept in a store is built from entries in key order: the chunk being
    /// hashed as its entries arrive ([`LwwMap::building_over`]).
    building: Option<Box<Building>>,
}

/// A map being built over a store that already holds its entries: each entry pushed is
/// hashed into its digest chunk as it comes, and the chunk's hash is kept when the next
/// chunk starts, so the built map needs no pass over the store.
#[derive(Clone)]
struct Building {
    last_key: Option<String>,
    /// The chunk being hashed, and its entries' encoding not hashed yet.
    open: Option<(ChunkStart, blake3::Hasher, Vec<u8>)>,
}

/// The encoded form: the entries alone (the digest chunks are derived from them).
#[derive(Deserialize)]
struct LwwMapRepr {
    /// Keys are read as `String`s, as values are ([`value_via_string`]).
    #[serde(deserialize_with = "crate::serde_bounded::ord_map_with_keys_from::<_, String, _, _>")]
    entries: imbl::OrdMap<Key, LwwEntry>,
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
            store: None,
            building: None,
            chunks: DigestChunks {
                boundaries,
                clean: imbl::OrdMap::new(),
            },
        }
    }
}

/// Encoded as `{"entries": {key: entry, ...}}` in key order, stored entries included.
impl Serialize for LwwMap {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        struct Entries<'a>(&'a LwwMap);
        impl Serialize for Entries<'_> {
            fn serialize<Ser: serde::Serializer>(
                &self,
                serializer: Ser,
            ) -> Result<Ser::Ok, Ser::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len_with_tombstones()))?;
                for (key, entry) in self.0.all_entries() {
                    map.serialize_entry(key.as_ref(), entry.as_ref())?;
                }
                map.end()
            }
        }
        let mut repr = serializer.serialize_struct("LwwMapRepr", 1)?;
        repr.serialize_field("entries", &Entries(self))?;
        repr.end()
    }
}

impl Clone for LwwMap {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            store: self.store.as_ref().map(|store| store.pin()),
            chunks: self.chunks.clone(),
            building: self.building.clone(),
        }
    }
}

impl PartialEq for LwwMap {
    fn eq(&self, other: &Self) -> bool {
        if self.store.is_none() && other.store.is_none() {
            return self.entries == other.entries;
        }
        self.all_entries().eq(other.all_entries())
    }
}

impl Eq for LwwMap {}

impl std::fmt::Debug for LwwMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.all_entries()).finish()
    }
}

/// An entry read from a map: borrowed from memory or read from the store.
pub type EntryRef<'a> = (Cow<'a, str>, Cow<'a, LwwEntry>);

/// Merges the in-memory entries with the stored ones, both in key order: a key held by
/// both gives the newer entry.
fn merge<'a>(
    memory: impl Iterator<Item = (&'a Key, &'a LwwEntry)> + 'a,
    stored: Option<Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a>>,
) -> impl Iterator<Item = EntryRef<'a>> + 'a {
    let mut memory = memory.peekable();
    let mut stored = stored.map(Iterator::peekable);
    std::iter::from_fn(move || {
        let next_stored = stored.as_mut().and_then(|s| s.peek());
        let order = match (memory.peek(), next_stored) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((mk, _)), Some((sk, _))) => mk.as_str().cmp(sk.as_str()),
        };
        Some(match order {
            std::cmp::Ordering::Less => {
                let (k, e) = memory.next().expect("peeked");
                (Cow::Borrowed(k.as_str()), Cow::Borrowed(e))
            }
            std::cmp::Ordering::Greater => {
                let (k, e) = stored.as_mut().and_then(Iterator::next).expect("peeked");
                (Cow::Owned(k), Cow::Owned(e))
            }
            std::cmp::Ordering::Equal => {
                let (k, e) = memory.next().expect("peeked");
                let (_, s) = stored.as_mut().and_then(Iterator::next).expect("peeked");
                if s.newer_than(e) {
                    (Cow::Borrowed(k.as_str()), Cow::Owned(s))
                } else {
                    (Cow::Borrowed(k.as_str()), Cow::Borrowed(e))
                }
            }
        })
    })
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
    let mut hash = crate::fnv::fnv1a(0, key.as_bytes());
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
    /// A map whose entries are kept in `store`, with nothing in memory yet but the digest's
    /// partition of the keys (one key in 64), read from the store once. `hashes` are chunk
    /// hashes the store kept beside the entries ([`LwwMap::restore_chunk_hashes`]).
    pub fn over_store(
        store: Arc<dyn StoredEntries>,
        hashes: impl IntoIterator<Item = (Option<String>, [u8; 32])>,
    ) -> Self {
        let boundaries = store
            .range(Bound::Unbounded, Bound::Unbounded)
            .map(|(key, _)| key)
            .filter(|key| starts_chunk(key))
            .collect();
        let mut map = Self {
            entries: imbl::OrdMap::new(),
            store: Some(store),
            building: None,
            chunks: DigestChunks {
                boundaries,
                clean: imbl::OrdMap::new(),
            },
        };
        map.restore_chunk_hashes(hashes);
        map
    }

    /// Whether reading every entry twice costs about what copying them does: a map held in
    /// memory, or one whose store says so ([`StoredEntries::rereads_cheaply`]).
    pub fn rereads_cheaply(&self) -> bool {
        self.store
            .as_ref()
            .is_none_or(|store| store.rereads_cheaply())
    }

    /// The store this map's entries are kept in, if any.
    pub fn store(&self) -> Option<&Arc<dyn StoredEntries>> {
        self.store.as_ref()
    }

    /// Entries held in memory: all of them without a store, else those the store does not
    /// hold as new yet.
    pub fn in_memory(&self) -> usize {
        self.entries.len()
    }

    /// Keeps this map's entries in `store` from now on. The caller vouches that `store`
    /// holds, for every key, an entry at least as new as the map's, except for the entries
    /// `retain` keeps in memory; the others are dropped from memory.
    pub fn keep_in_store(
        &mut self,
        store: Arc<dyn StoredEntries>,
        mut retain: impl FnMut(&str, &LwwEntry) -> bool,
    ) {
        self.entries = self
            .entries
            .iter()
            .filter(|(key, entry)| retain(key, entry))
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect();
        self.store = Some(store);
    }

    /// Drops `key`'s in-memory entry: the store holds it (or a newer one).
    pub fn forget_stored(&mut self, key: &str) {
        if self.store.is_some() {
            self.entries.remove(key);
        }
    }

    /// The in-memory entry of `key` (for a map kept in a store: the overlay's).
    pub fn in_memory_entry(&self, key: &str) -> Option<&LwwEntry> {
        self.entries.get(key)
    }

    /// The keys held in memory, in order.
    pub fn in_memory_keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(Key::as_str)
    }

    /// Entries, tombstones included, with keys in the range, in key order.
    fn range<'a>(
        &'a self,
        from: Bound<&str>,
        to: Bound<&str>,
    ) -> impl Iterator<Item = EntryRef<'a>> {
        let memory = self.entries.range::<_, str>((from, to));
        let stored = self.store.as_ref().map(|store| store.range(from, to));
        merge(memory, stored)
    }

    /// Live entries (no tombstones), sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.entries_from("")
    }

    /// Live entries whose key is `start` or after it, sorted by key.
    pub fn entries_from<'a>(
        &'a self,
        start: &str,
    ) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> {
        self.range(Bound::Included(start), Bound::Unbounded)
            .filter_map(|(k, e)| match e {
                Cow::Borrowed(e) => e.value.as_deref().map(|v| (k, Cow::Borrowed(v))),
                Cow::Owned(e) => e.value.map(|v| (k, Cow::Owned(v.into_string()))),
            })
    }

    /// The key's winning write, a tombstone included.
    pub fn entry(&self, key: &str) -> Option<Cow<'_, LwwEntry>> {
        let memory = self.entries.get(key);
        let stored = self.store.as_ref().and_then(|store| store.get(key));
        match (memory, stored) {
            (Some(m), Some(s)) if s.newer_than(m) => Some(Cow::Owned(s)),
            (Some(m), _) => Some(Cow::Borrowed(m)),
            (None, s) => s.map(Cow::Owned),
        }
    }

    pub fn get(&self, key: &str) -> Option<Cow<'_, str>> {
        match self.entry(key)? {
            Cow::Borrowed(e) => e.value.as_deref().map(Cow::Borrowed),
            Cow::Owned(e) => e.value.map(|v| Cow::Owned(v.into_string())),
        }
    }

    /// Number of keys including tombstones.
    pub fn len_with_tombstones(&self) -> usize {
        match &self.store {
            None => self.entries.len(),
            Some(store) => {
                let only_in_memory = self.entries.keys().filter(|k| store.get(k).is_none());
                store.len() as usize + only_in_memory.count()
            }
        }
    }

    /// Every entry, tombstones included, sorted by key (the state's canonical form).
    pub fn all_entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    /// Appends an entry whose key sorts after every key held (rebuilding a state from its
    /// canonical form); refuses one out of order.
    pub fn push_in_order(&mut self, key: String, entry: LwwEntry) -> Result<(), String> {
        if self.store.is_some() {
            return self.push_stored_in_order(key, &entry);
        }
        if let Some((last, _)) = self.entries.get_max() {
            if key.as_str() <= last.as_str() {
                return Err(format!("key {key:?} does not sort after {last:?}"));
            }
        }
        self.chunks.touch(&key, true);
        self.entries.insert(Key::from(key), entry);
        Ok(())
    }

    /// A map to build over `store`, which holds (or is being given) the entries that will
    /// be pushed to it in key order ([`LwwMap::push_in_order`]): the entries are hashed
    /// into the digest as they come and stay in the store, so building the map costs no
    /// memory for its entries. [`refresh_digest`](StateMachine::refresh_digest) ends the
    /// build.
    pub fn building_over(store: Arc<dyn StoredEntries>) -> Self {
        Self {
            store: Some(store),
            building: Some(Box::new(Building {
                last_key: None,
                open: None,
            })),
            ..Self::default()
        }
    }

    /// [`push_in_order`](Self::push_in_order) for a map being built over its store.
    fn push_stored_in_order(&mut self, key: String, entry: &LwwEntry) -> Result<(), String> {
        let Some(building) = self.building.as_deref_mut() else {
            return Err("a map kept in a store is not rebuilt in memory".into());
        };
        if let Some(last) = &building.last_key {
            if key <= *last {
                return Err(format!("key {key:?} does not sort after {last:?}"));
            }
        }
        let starts = starts_chunk(&key);
        if starts {
            self.chunks.boundaries.insert(key.clone());
        }
        let first = building.last_key.is_none();
        if starts || first {
            if let Some((start, mut hasher, buf)) = building.open.take() {
                hasher.update(&buf);
                self.chunks
                    .clean
                    .insert(start, *hasher.finalize().as_bytes());
            }
            let start = if starts {
                ChunkStart::At(key.clone())
            } else {
                ChunkStart::Head
            };
            building.open = Some((start, blake3::Hasher::new(), Vec::with_capacity(1 << 16)));
        }
        if let Some((_, hasher, buf)) = building.open.as_mut() {
            encode_entry(buf, &key, entry);
            if buf.len() >= 1 << 16 {
                hasher.update(buf);
                buf.clear();
            }
        }
        building.last_key = Some(key);
        Ok(())
    }

    /// Ends a build over a store: the last chunk's hash is kept.
    fn end_building(&mut self) {
        if let Some(building) = self.building.take() {
            if let Some((start, mut hasher, buf)) = building.open {
                hasher.update(&buf);
                self.chunks
                    .clean
                    .insert(start, *hasher.finalize().as_bytes());
            }
        }
    }

    /// The digest as format version 1 defined it: one BLAKE3 pass over every entry (kept
    /// to verify snapshot files written by that version).
    pub fn flat_digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hash_entries(&mut hasher, self.all_entries());
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
        let first = self.all_entries().next().map(|(key, _)| key);
        let head = match (first, self.chunks.boundaries.get_min()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(first), Some(boundary)) => first.as_ref() < boundary.as_str(),
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
        hash_entries(&mut hasher, self.range(from, to));
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
fn hash_entries<K: AsRef<str>, E: std::borrow::Borrow<LwwEntry>>(
    hasher: &mut blake3::Hasher,
    entries: impl Iterator<Item = (K, E)>,
) {
    let mut buf = Vec::with_capacity(1 << 16);
    for (key, entry) in entries {
        encode_entry(&mut buf, key.as_ref(), entry.borrow());
        if buf.len() >= 1 << 16 {
            hasher.update(&buf);
            buf.clear();
        }
    }
    hasher.update(&buf);
}

/// Appends one entry's encoding as [`hash_entries`] hashes it.
fn encode_entry(buf: &mut Vec<u8>, key: &str, entry: &LwwEntry) {
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
}

impl StateMachine for LwwMap {
    type Op = LwwOp;

    /// A map kept in a store compares the op with its in-memory entry only: a newer
    /// stored entry still wins every read.
    ///
    /// One search of the map in the common case: the op's entry goes in, and the entry it
    /// replaced goes back only when that one was newer (a write that lost the race).
    fn apply(&mut self, meta: &OpMeta<'_>, op: &LwwOp) {
        self.end_building();
        let written = LwwEntry {
            value: op.value.as_deref().map(EntryValue::from),
            lamport: meta.lamport,
            origin: meta.origin.clone(),
        };
        match self.entries.insert(Key::from(op.key.as_str()), written) {
            None => self.chunks.touch(&op.key, true),
            Some(replaced)
                if (meta.lamport, meta.origin) > (replaced.lamport, &replaced.origin) =>
            {
                self.chunks.touch(&op.key, false);
            }
            Some(replaced) => {
                self.entries.insert(Key::from(op.key.as_str()), replaced);
            }
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
        self.end_building();
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

    #[test]
    fn long_keys_and_values_decode_as_short_ones_do() {
        // ciborium hands a text longer than its 4 KiB scratch buffer only to a visitor
        // that takes an owned string; keys and values held inline must still read it
        for len in [3, 24, 25, 4_096, 16 * 1024] {
            let entry = LwwEntry {
                value: Some("v".repeat(len).into()),
                lamport: 7,
                origin: NodeId::synthetic(1),
            };
            let mut bytes = Vec::new();
            ciborium::into_writer(&entry, &mut bytes).unwrap();
            let back: LwwEntry = ciborium::from_reader(&bytes[..]).unwrap();
            assert_eq!(back, entry, "a value of {len} bytes");

            let mut map = LwwMap::default();
            map.push_in_order("k".repeat(len), entry.clone()).unwrap();
            let mut bytes = Vec::new();
            ciborium::into_writer(&map, &mut bytes).unwrap();
            let back: LwwMap = ciborium::from_reader(&bytes[..]).unwrap();
            assert_eq!(back, map, "a key of {len} bytes");
            assert_eq!(
                back.get(&"k".repeat(len)).as_deref(),
                Some(&*"v".repeat(len))
            );
        }
    }

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
        assert_eq!(x.get("k").as_deref(), Some(winner));
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

    /// A store in memory: the entries of a map at some earlier point, behind a lock so
    /// that the test can write to it while maps read it, as the node's database is.
    #[derive(Default)]
    struct TestStore {
        entries: std::sync::RwLock<std::collections::BTreeMap<String, LwwEntry>>,
    }

    /// A store's view as of one moment.
    struct Pinned(std::collections::BTreeMap<String, LwwEntry>);

    fn range_of(
        entries: &std::collections::BTreeMap<String, LwwEntry>,
        from: Bound<&str>,
        to: Bound<&str>,
    ) -> Vec<(String, LwwEntry)> {
        entries
            .range::<str, _>((from, to))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    impl StoredEntries for TestStore {
        fn get(&self, key: &str) -> Option<LwwEntry> {
            self.entries.read().unwrap().get(key).cloned()
        }
        fn range<'a>(
            &'a self,
            from: Bound<&str>,
            to: Bound<&str>,
        ) -> Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a> {
            Box::new(range_of(&self.entries.read().unwrap(), from, to).into_iter())
        }
        fn len(&self) -> u64 {
            self.entries.read().unwrap().len() as u64
        }
        fn pin(&self) -> Arc<dyn StoredEntries> {
            Arc::new(Pinned(self.entries.read().unwrap().clone()))
        }
    }

    impl StoredEntries for Pinned {
        fn get(&self, key: &str) -> Option<LwwEntry> {
            self.0.get(key).cloned()
        }
        fn range<'a>(
            &'a self,
            from: Bound<&str>,
            to: Bound<&str>,
        ) -> Box<dyn Iterator<Item = (String, LwwEntry)> + Send + 'a> {
            Box::new(range_of(&self.0, from, to).into_iter())
        }
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn pin(&self) -> Arc<dyn StoredEntries> {
            Arc::new(Pinned(self.0.clone()))
        }
    }

    impl TestStore {
        /// Writes `map`'s entries for `keys` (every key when `None`), as a checkpoint does.
        fn write(&self, map: &LwwMap, keys: Option<&[String]>) {
            // read the map (which may read this store) before locking it for writing
            let rows: Vec<(String, Option<LwwEntry>)> = match keys {
                None => map
                    .all_entries()
                    .map(|(k, e)| (k.into_owned(), Some(e.into_owned())))
                    .collect(),
                Some(keys) => keys
                    .iter()
                    .map(|k| (k.clone(), map.entry(k).map(Cow::into_owned)))
                    .collect(),
            };
            let mut entries = self.entries.write().unwrap();
            if keys.is_none() {
                entries.clear();
            }
            for (key, entry) in rows {
                if let Some(entry) = entry {
                    entries.insert(key, entry);
                }
            }
        }
    }

    #[test]
    fn a_map_kept_in_a_store_reads_merges_and_digests_as_one_held_in_memory() {
        let (a, b) = (NodeId::synthetic(1), NodeId::synthetic(2));
        let mut whole = LwwMap::default();
        for i in 0..1_000 {
            put(&mut whole, &a, i + 1, &format!("key-{i:04}"), Some("v1"));
        }
        let store = Arc::new(TestStore::default());
        store.write(&whole, None);
        let mut kept = whole.clone();
        kept.keep_in_store(store.clone(), |_, _| false);
        assert_eq!(kept.in_memory(), 0, "nothing is left in memory");
        assert_eq!(kept, whole);
        // new writes go to memory; an older write to a stored key loses to the store's
        for map in [&mut whole, &mut kept] {
            put(map, &b, 5_000, "key-0007", Some("v2"));
            put(map, &b, 5_001, "new-key", Some("v3"));
            put(map, &b, 1, "key-0008", Some("old"));
            put(map, &b, 5_002, "key-0009", None);
        }
        assert_eq!(kept.get("key-0007").as_deref(), Some("v2"));
        assert_eq!(
            kept.get("key-0008").as_deref(),
            Some("v1"),
            "the newer stored entry wins"
        );
        assert_eq!(kept.get("key-0009"), None);
        assert_eq!(kept.len_with_tombstones(), whole.len_with_tombstones());
        assert_eq!(kept.entries().count(), whole.entries().count());
        assert!(kept
            .entries_from("key-0990")
            .eq(whole.entries_from("key-0990")));
        assert_eq!(kept, whole);
        assert_eq!(kept.digest(), whole.digest());
        assert_eq!(kept.digest(), fresh(&whole).digest());
        assert_eq!(fresh(&kept), whole, "the encoding holds the stored entries");
        // a copy reads the store as it was when copied
        let copy = kept.clone();
        let before = copy.digest();
        let mut later = whole.clone();
        put(&mut later, &a, 9_000, "key-0001", Some("later"));
        store.write(&later, Some(&["key-0001".to_owned()]));
        assert_eq!(copy.get("key-0001").as_deref(), Some("v1"));
        assert_eq!(copy.digest(), before);
        assert_eq!(
            kept.get("key-0001").as_deref(),
            Some("later"),
            "a live map reads the store now"
        );
    }

    proptest::proptest! {
        /// Whatever is written, and whenever the store is given the map's entries and the
        /// map drops them from memory, the map reads, encodes and digests as the same map
        /// held wholly in memory.
        #[test]
        fn a_map_kept_in_a_store_equals_the_map_held_in_memory(
            steps in proptest::collection::vec(
                (0u16..300, proptest::option::of(0u8..4), 1u64..60, 0u8..6),
                1..200,
            ),
        ) {
            let origins = [NodeId::synthetic(1), NodeId::synthetic(2)];
            let store = Arc::new(TestStore::default());
            let (mut memory, mut kept) = (LwwMap::default(), LwwMap::default());
            let mut since_stored: Vec<String> = Vec::new();
            for (i, (key, value, lamport, action)) in steps.into_iter().enumerate() {
                let key = format!("k{key}");
                let value = value.map(|v| format!("value-{v}"));
                // an origin never stamps two writes alike
                let lamport = lamport * 1_000 + i as u64;
                for map in [&mut memory, &mut kept] {
                    put(map, &origins[i % 2], lamport, &key, value.as_deref());
                }
                since_stored.push(key);
                match action {
                    0 => {
                        store.write(&kept, None);
                        kept.keep_in_store(store.clone(), |_, _| false);
                        since_stored.clear();
                    }
                    1 if kept.store().is_some() => {
                        store.write(&kept, Some(&since_stored));
                        for key in std::mem::take(&mut since_stored) {
                            kept.forget_stored(&key);
                        }
                    }
                    2 => kept.refresh_digest(),
                    _ => {}
                }
                proptest::prop_assert_eq!(&kept, &memory);
                proptest::prop_assert_eq!(kept.digest(), memory.digest());
                proptest::prop_assert_eq!(kept.len_with_tombstones(), memory.len_with_tombstones());
                let probe = format!("k{}", i % 300);
                proptest::prop_assert_eq!(kept.get(&probe), memory.get(&probe));
            }
            proptest::prop_assert_eq!(fresh(&kept), memory);
        }
    }

    /// The log's two states over one store: after a checkpoint, memory keeps only what
    /// ops above the stable cut changed (the applied state) and what was folded since
    /// (the stable state); reads see everything.
    #[test]
    fn a_log_kept_in_a_store_holds_only_the_unstored_entries_in_memory() {
        use crate::ops_log::OpsLog;
        use crate::version_vector::VersionVector;
        let (a, b) = (NodeId::synthetic(1), NodeId::synthetic(2));
        let put = |key: &str, value: &str| LwwOp {
            key: key.into(),
            value: Some(value.into()),
        };
        let mut log = OpsLog::<LwwMap>::new();
        for i in 0..100 {
            log.create(&a, put(&format!("a{i:03}"), "1"));
        }
        let mut cut = VersionVector::new();
        cut.set(a.clone(), 100);
        log.advance_stable(&cut);
        let store = Arc::new(TestStore::default());
        store.write(log.stable_state(), None);
        log.keep_in_store(store.clone(), None);
        assert_eq!(log.stable_state().in_memory(), 0);
        assert_eq!(log.applied_state().in_memory(), 0);
        assert_eq!(log.applied_state().get("a050").as_deref(), Some("1"));
        // b writes three times: the first write becomes stable, the others do not
        log.create(&b, put("a007", "2"));
        log.create(&b, put("b", "unstable"));
        log.create(&b, put("a007", "3"));
        cut.set(b.clone(), 1);
        log.advance_stable(&cut);
        let folded = ["a007".to_owned()];
        store.write(log.stable_state(), Some(&folded));
        log.keep_in_store(store.clone(), Some(&folded));
        assert_eq!(
            log.stable_state().in_memory(),
            0,
            "the folded entry is stored"
        );
        assert_eq!(
            log.applied_state().in_memory_keys().collect::<Vec<_>>(),
            ["a007", "b"],
            "only the unstable ops' entries stay in memory"
        );
        assert_eq!(log.stable_state().get("a007").as_deref(), Some("2"));
        assert_eq!(log.applied_state().get("a007").as_deref(), Some("3"));
        assert_eq!(log.stable_state().get("b"), None);
        assert_eq!(log.applied_state().get("b").as_deref(), Some("unstable"));
        assert_eq!(log.applied_state().get("a099").as_deref(), Some("1"));
        assert_eq!(log.applied_state().len_with_tombstones(), 101);
    }

    proptest::proptest! {
        /// A map built over a store from the store's entries in key order, as a joiner
        /// builds a transferred state, digests as the same entries held in memory, holds
        /// none of them in memory, and reads them all.
        #[test]
        fn a_map_built_over_its_store_digests_as_one_built_in_memory(
            keys in proptest::collection::btree_set(0u32..5_000, 0..400),
            tombstone_every in 2usize..9,
        ) {
            let origin = NodeId::synthetic(1);
            let mut memory = LwwMap::default();
            for (i, key) in keys.iter().enumerate() {
                let value = (i % tombstone_every != 0).then(|| format!("v{i}"));
                put(&mut memory, &origin, i as u64 + 1, &format!("key{key}"), value.as_deref());
            }
            let store = Arc::new(TestStore::default());
            store.write(&memory, None);
            let mut built = LwwMap::building_over(store.clone());
            for (key, entry) in memory.all_entries() {
                built.push_in_order(key.into_owned(), entry.into_owned()).unwrap();
            }
            built.refresh_digest();
            proptest::prop_assert_eq!(built.in_memory(), 0);
            proptest::prop_assert_eq!(
                built.chunk_hashes().count(),
                fresh(&memory).chunks_with_hashes().count(),
                "every chunk was hashed as its entries came"
            );
            proptest::prop_assert_eq!(built.digest(), fresh(&memory).digest());
            proptest::prop_assert_eq!(&built, &memory);
            let out_of_order = built.push_in_order("key".into(), LwwEntry {
                value: None,
                lamport: 1,
                origin: origin.clone(),
            });
            proptest::prop_assert!(out_of_order.is_err(), "a built map takes no more entries");
        }
    }
}
