//! Snapshot files: a state at a snapshot point, as an artifact that can be verified,
//! shipped in chunks and archived (SPEC §6).
//!
//! ```text
//! file   = magic "TMSNAP\0\x01" · header length (u32, big-endian) · header
//!          · BLAKE3 of the header (32 bytes) · chunk*
//! header = CBOR SnapshotHeader: format version, snapshot point, height, digest,
//!          creation time, entry count, and per chunk its length and BLAKE3 hash
//! chunk  = CBOR array of the state's entries, in key order
//! ```
//!
//! Every chunk is hashed on its own, so a receiver verifies each chunk as it arrives and can
//! fetch a bad one again; the whole state is then checked against the header's digest (the
//! state machine's own digest) before it is used. Writing and reading are streams: one
//! chunk's bytes are in memory at a time, never the whole encoded state. The writer passes
//! over the state twice (once to hash the chunks for the header, once to write them), so
//! the header comes first and a reader knows every chunk's offset before reading any.
//!
//! This module does I/O only through the `Read`/`Write` it is given.

use std::io::{self, Read, Seek, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ops_log::{Digest, LwwEntry, LwwMap, StateMachine};
use crate::version_vector::VersionVector;

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"TMSNAP\0\x01";
/// The format version this code writes. It reads this one and every earlier one.
///
/// - 2: the header's digest is the state machine's chunked digest (`LwwMap::digest`).
/// - 1: the header's digest is one BLAKE3 pass over the entries (`LwwMap::flat_digest`).
pub const FORMAT_VERSION: u32 = 2;
/// Target size of a chunk's encoding; a chunk ends at the first entry that reaches it.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// Largest header or chunk a reader accepts.
pub const MAX_PART_BYTES: usize = 64 << 20;

/// A state that can be written as a sequence of entries in a canonical order and rebuilt
/// from them.
pub trait ChunkedState: StateMachine {
    type Entry: Serialize + DeserializeOwned;

    /// The entries, in the canonical (key) order.
    fn entries_in_order(&self) -> impl Iterator<Item = Self::Entry> + '_;

    /// Adds entries that follow every entry added before, in canonical order. Fails on an
    /// entry out of order.
    fn extend_in_order(
        &mut self,
        entries: impl IntoIterator<Item = Self::Entry>,
    ) -> Result<(), String>;

    /// The digest as snapshot format `version` defines it (the state machine's own digest
    /// unless an earlier format defined another).
    fn digest_for_format(&self, version: u32) -> Digest {
        let _ = version;
        self.digest()
    }
}

impl ChunkedState for LwwMap {
    type Entry = (String, LwwEntry);

    fn entries_in_order(&self) -> impl Iterator<Item = (String, LwwEntry)> + '_ {
        self.all_entries()
            .map(|(k, e)| (k.into_owned(), e.into_owned()))
    }

    fn extend_in_order(
        &mut self,
        entries: impl IntoIterator<Item = (String, LwwEntry)>,
    ) -> Result<(), String> {
        for (key, entry) in entries {
            self.push_in_order(key, entry)?;
        }
        Ok(())
    }

    fn digest_for_format(&self, version: u32) -> Digest {
        match version {
            1 => self.flat_digest(),
            _ => self.digest(),
        }
    }
}

/// One chunk's place in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Length of its encoding.
    pub len: u32,
    /// BLAKE3 of its encoding.
    pub hash: [u8; 32],
}

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub version: u32,
    /// The snapshot point the state is at.
    pub snapshot_point: VersionVector,
    /// Ops inside the snapshot point (its total): a monotone scalar, like a block height.
    pub height: u64,
    /// The state machine's digest of the state.
    pub digest: Digest,
    /// When the snapshot was written, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Entries in the state (tombstones included).
    pub entries: u64,
    pub chunks: Vec<ChunkInfo>,
}

impl SnapshotHeader {
    /// Where chunk `index` starts, counted from the first chunk (the first chunk follows the
    /// magic, the header length, the header and its hash).
    pub fn chunk_offset(&self, index: usize) -> u64 {
        self.chunks[..index].iter().map(|c| c.len as u64).sum()
    }

    /// Bytes of all chunks.
    pub fn body_len(&self) -> u64 {
        self.chunk_offset(self.chunks.len())
    }
}

/// Why a snapshot could not be read or verified.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a tidemark snapshot (bad magic)")]
    BadMagic,
    #[error(
        "snapshot format version {0} is not supported (this build reads 1 to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("{what} of {len} bytes exceeds the {MAX_PART_BYTES}-byte limit")]
    TooLarge { what: &'static str, len: usize },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("the header does not match its hash")]
    HeaderHash,
    #[error("chunk {index} does not match its hash in the header")]
    ChunkHash { index: usize },
    #[error("chunk {index} is out of order: {reason}")]
    ChunkOrder { index: usize, reason: String },
    #[error("the state's digest {found} differs from the header's {expected}")]
    Digest { expected: Digest, found: Digest },
    #[error("the file has {0} bytes after its last chunk")]
    TrailingBytes(u64),
    #[error("the header counts {expected} entries, the chunks hold {found}")]
    EntryCount { expected: u64, found: u64 },
    #[error("the rebuilt state could not be kept: {0}")]
    Inspect(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Groups a state's entries into chunks of about `chunk_bytes` encoded bytes each and hands
/// every chunk's encoding (a CBOR array of its entries) to `sink`, one at a time. Each entry
/// is encoded once.
fn for_each_chunk<S: ChunkedState>(
    state: &S,
    chunk_bytes: usize,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut body = Vec::new();
    let mut in_chunk = 0u64;
    let mut count = 0u64;
    let mut chunk = Vec::new();
    let mut flush = |body: &mut Vec<u8>, in_chunk: &mut u64| -> io::Result<()> {
        chunk.clear();
        cbor_array_header(&mut chunk, *in_chunk);
        chunk.extend_from_slice(body);
        body.clear();
        *in_chunk = 0;
        sink(&chunk)
    };
    for entry in state.entries_in_order() {
        ciborium::into_writer(&entry, &mut body).expect("writing to a Vec");
        in_chunk += 1;
        count += 1;
        if body.len() >= chunk_bytes {
            flush(&mut body, &mut in_chunk)?;
        }
    }
    if in_chunk > 0 {
        flush(&mut body, &mut in_chunk)?;
    }
    Ok(count)
}

/// The head of a definite-length CBOR array of `len` items (major type 4), as ciborium
/// writes it for a `Vec`.
fn cbor_array_header(out: &mut Vec<u8>, len: u64) {
    const ARRAY: u8 = 4 << 5;
    match len {
        0..=23 => out.push(ARRAY | len as u8),
        24..=0xff => out.extend_from_slice(&[ARRAY | 24, len as u8]),
        0x100..=0xffff => {
            out.push(ARRAY | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(ARRAY | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(ARRAY | 27);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// Writes `state` at `snapshot_point` as a snapshot file; returns its header. Reads the
/// state twice: once to hash the chunks for the header, once to write them.
pub fn write_snapshot<S: ChunkedState>(
    out: &mut impl Write,
    state: &S,
    snapshot_point: &VersionVector,
    created_unix_ms: u64,
    chunk_bytes: usize,
) -> Result<SnapshotHeader, SnapshotError> {
    let header = hash_chunks(state, snapshot_point, created_unix_ms, chunk_bytes, |_| {
        Ok(())
    })?;
    write_header(out, &header)?;
    let mut index = 0;
    for_each_chunk(state, chunk_bytes, |bytes| {
        // the state is the same in both passes, so the chunks are too
        debug_assert_eq!(bytes.len() as u32, header.chunks[index].len);
        index += 1;
        out.write_all(bytes)
    })?;
    out.flush()?;
    Ok(header)
}

/// [`write_snapshot`] reading the state once: the chunks are written to `spool` (an empty
/// scratch file) as they are hashed, and copied from it after the header. For a state read
/// from disk this costs a copy of the chunks' bytes instead of a second pass over the
/// state. The same file as `write_snapshot`'s.
pub fn write_snapshot_spooled<S: ChunkedState, F: Read + Write + Seek>(
    out: &mut impl Write,
    spool: &mut F,
    state: &S,
    snapshot_point: &VersionVector,
    created_unix_ms: u64,
    chunk_bytes: usize,
) -> Result<SnapshotHeader, SnapshotError> {
    let header = hash_chunks(
        state,
        snapshot_point,
        created_unix_ms,
        chunk_bytes,
        |bytes| spool.write_all(bytes),
    )?;
    write_header(out, &header)?;
    spool.flush()?;
    spool.seek(io::SeekFrom::Start(0))?;
    let copied = io::copy(spool, out)?;
    if copied != header.body_len() {
        return Err(SnapshotError::Malformed {
            what: "spooled snapshot body",
            reason: format!("{copied} bytes spooled, {} chunked", header.body_len()),
        });
    }
    out.flush()?;
    Ok(header)
}

/// One pass over `state`: the header, with every chunk's length and hash; each chunk's
/// bytes also go to `also`.
fn hash_chunks<S: ChunkedState>(
    state: &S,
    snapshot_point: &VersionVector,
    created_unix_ms: u64,
    chunk_bytes: usize,
    mut also: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<SnapshotHeader, SnapshotError> {
    let mut chunks = Vec::new();
    let entries = for_each_chunk(state, chunk_bytes, |bytes| {
        chunks.push(ChunkInfo {
            len: bytes.len() as u32,
            hash: *blake3::hash(bytes).as_bytes(),
        });
        also(bytes)
    })?;
    Ok(SnapshotHeader {
        version: FORMAT_VERSION,
        snapshot_point: snapshot_point.clone(),
        height: snapshot_point.total(),
        digest: state.digest(),
        created_unix_ms,
        entries,
        chunks,
    })
}

/// The magic, the header's length, the header and its hash.
fn write_header(out: &mut impl Write, header: &SnapshotHeader) -> io::Result<()> {
    let mut header_bytes = Vec::new();
    ciborium::into_writer(header, &mut header_bytes).expect("writing to a Vec");
    out.write_all(&MAGIC)?;
    out.write_all(&(header_bytes.len() as u32).to_be_bytes())?;
    out.write_all(&header_bytes)?;
    out.write_all(blake3::hash(&header_bytes).as_bytes())
}

/// Reads a snapshot file's magic and header, leaving `input` at the first chunk.
pub fn read_header(input: &mut impl Read) -> Result<SnapshotHeader, SnapshotError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if magic[..7] != MAGIC[..7] {
        return Err(SnapshotError::BadMagic);
    }
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PART_BYTES {
        return Err(SnapshotError::TooLarge {
            what: "header",
            len,
        });
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    let mut hash = [0u8; 32];
    input.read_exact(&mut hash)?;
    if *blake3::hash(&bytes).as_bytes() != hash {
        return Err(SnapshotError::HeaderHash);
    }
    let header: SnapshotHeader =
        ciborium::from_reader(bytes.as_slice()).map_err(|e| SnapshotError::Malformed {
            what: "header",
            reason: e.to_string(),
        })?;
    if !(1..=FORMAT_VERSION).contains(&header.version) || magic[7] != MAGIC[7] {
        return Err(SnapshotError::UnsupportedVersion(header.version));
    }
    if let Some(big) = header
        .chunks
        .iter()
        .find(|c| c.len as usize > MAX_PART_BYTES)
    {
        return Err(SnapshotError::TooLarge {
            what: "chunk",
            len: big.len as usize,
        });
    }
    Ok(header)
}

/// Checks one chunk's bytes against the header and decodes its entries.
pub fn decode_chunk<S: ChunkedState>(
    header: &SnapshotHeader,
    index: usize,
    bytes: &[u8],
) -> Result<Vec<S::Entry>, SnapshotError> {
    let info = header
        .chunks
        .get(index)
        .ok_or_else(|| SnapshotError::Malformed {
            what: "chunk",
            reason: format!("index {index} beyond the {} chunks", header.chunks.len()),
        })?;
    if bytes.len() != info.len as usize || *blake3::hash(bytes).as_bytes() != info.hash {
        return Err(SnapshotError::ChunkHash { index });
    }
    ciborium::from_reader(bytes).map_err(|e| SnapshotError::Malformed {
        what: "chunk",
        reason: e.to_string(),
    })
}

/// Rebuilds a state from a snapshot's chunks, given in order: verifies each against the
/// header as it comes, and the whole against the header's entry count and digest at the
/// end. Holds one chunk's entries at a time besides the state.
pub struct StateBuilder<S: ChunkedState> {
    header: SnapshotHeader,
    state: S,
    entries: u64,
    next_index: usize,
}

impl<S: ChunkedState> StateBuilder<S> {
    pub fn new(header: SnapshotHeader) -> Self {
        Self::into_state(header, S::default())
    }

    /// A builder that adds the entries to `state` (empty; a map kept in a store that the
    /// entries are written to as they are verified, say).
    pub fn into_state(header: SnapshotHeader, state: S) -> Self {
        Self {
            header,
            state,
            entries: 0,
            next_index: 0,
        }
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Chunks added so far.
    pub fn chunks_done(&self) -> usize {
        self.next_index
    }

    /// Adds the next chunk's bytes.
    pub fn push_chunk(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.push_chunk_inspected(bytes, |_| Ok(()))
    }

    /// Adds the next chunk's bytes, once verified, after handing its entries to `inspect`
    /// (which may store them elsewhere; its error stops the build).
    pub fn push_chunk_inspected(
        &mut self,
        bytes: &[u8],
        inspect: impl FnOnce(&[S::Entry]) -> Result<(), String>,
    ) -> Result<(), SnapshotError> {
        let index = self.next_index;
        let chunk = decode_chunk::<S>(&self.header, index, bytes)?;
        inspect(&chunk).map_err(SnapshotError::Inspect)?;
        self.entries += chunk.len() as u64;
        self.state
            .extend_in_order(chunk)
            .map_err(|reason| SnapshotError::ChunkOrder { index, reason })?;
        self.next_index += 1;
        Ok(())
    }

    /// Adds the entries of the first `chunks` chunks, verified against the header and
    /// kept by an earlier build that did not finish (a transfer resumed after a restart).
    /// Only their order is checked here; their count and digest are checked with the
    /// rest's at [`finish`](Self::finish). Fails unless no chunk was added yet.
    pub fn resume_with(
        &mut self,
        chunks: usize,
        entries: impl IntoIterator<Item = S::Entry>,
    ) -> Result<(), SnapshotError> {
        if self.next_index != 0 || chunks > self.header.chunks.len() {
            return Err(SnapshotError::Malformed {
                what: "resumed transfer",
                reason: format!(
                    "{chunks} chunks kept of {}, {} added already",
                    self.header.chunks.len(),
                    self.next_index
                ),
            });
        }
        let mut count = 0u64;
        self.state
            .extend_in_order(entries.into_iter().inspect(|_| count += 1))
            .map_err(|reason| SnapshotError::ChunkOrder {
                index: chunks.saturating_sub(1),
                reason,
            })?;
        self.entries += count;
        self.next_index = chunks;
        Ok(())
    }

    /// The state, once every chunk is in and it matches the header.
    pub fn finish(mut self) -> Result<S, SnapshotError> {
        if self.next_index != self.header.chunks.len() {
            return Err(SnapshotError::Malformed {
                what: "snapshot",
                reason: format!(
                    "{} of {} chunks received",
                    self.next_index,
                    self.header.chunks.len()
                ),
            });
        }
        if self.entries != self.header.entries {
            return Err(SnapshotError::EntryCount {
                expected: self.header.entries,
                found: self.entries,
            });
        }
        self.state.refresh_digest();
        let found = self.state.digest_for_format(self.header.version);
        if found != self.header.digest {
            return Err(SnapshotError::Digest {
                expected: self.header.digest,
                found,
            });
        }
        Ok(self.state)
    }
}

/// Reads a whole snapshot file, verifying every chunk as it is read and the state's digest
/// at the end; returns the header and the state.
pub fn read_snapshot<S: ChunkedState>(
    input: &mut impl Read,
) -> Result<(SnapshotHeader, S), SnapshotError> {
    let header = read_header(input)?;
    let state = read_body(input, header.clone(), S::default(), |_, _| Ok(()))?;
    Ok((header, state))
}

/// Reads the chunks that follow `header` (read from `input` already) into `state` (empty),
/// verifying each as it is read, and the state's digest at the end. Each verified chunk's
/// index and entries go to `inspect` before they join the state (its error stops the read).
pub fn read_body<S: ChunkedState>(
    input: &mut impl Read,
    header: SnapshotHeader,
    state: S,
    mut inspect: impl FnMut(usize, &[S::Entry]) -> Result<(), String>,
) -> Result<S, SnapshotError> {
    let lens: Vec<usize> = header.chunks.iter().map(|c| c.len as usize).collect();
    let mut builder = StateBuilder::<S>::into_state(header, state);
    let mut buf = Vec::new();
    for (index, len) in lens.into_iter().enumerate() {
        buf.resize(len, 0);
        input.read_exact(&mut buf)?;
        builder.push_chunk_inspected(&buf, |entries| inspect(index, entries))?;
    }
    let mut rest = Vec::new();
    let trailing = input.take(1 << 20).read_to_end(&mut rest)?;
    if trailing > 0 {
        return Err(SnapshotError::TrailingBytes(trailing as u64));
    }
    builder.finish()
}

pub mod transfer;

#[cfg(test)]
mod tests;
