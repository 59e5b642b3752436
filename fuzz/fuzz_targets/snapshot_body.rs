//! Snapshot files whose hashes are right around fuzzed CBOR: the decoders behind the hash
//! checks (header, chunk entries, key order, entry count, digest).
//!
//! A hostile sponsor or a tampered archive chooses its hashes itself, so a file whose
//! header and chunk hashes verify is the input that matters; `snapshot_file` mutates raw
//! files, and nearly all of its mutations fail those hash checks. Here the harness builds
//! the file around the fuzzed parts and computes every hash, so each mutation reaches the
//! CBOR decoders. The input is:
//!
//! ```text
//! flags (1 byte) · part* ;  part = length (u16, big-endian) · bytes
//! ```
//!
//! - flag bit 0 set: part 0 is the header's CBOR as it is (the header decoder is fuzzed);
//!   otherwise the header is built by the harness: part 0 is the snapshot point's CBOR
//!   (empty when it does not decode), and every further part is one chunk, named in the
//!   header with its true length and hash.
//! - bit 1: the header says format version 1 (the flat digest), else version 2.
//! - bit 2: the header's entry count is what the chunks decode to, so the count check
//!   passes and the state's digest is compared.
//! - bit 3: the header's digest is the digest of the entries the chunks decode to, so
//!   a well-formed body passes the whole read.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tidemark::ops_log::{Digest, LwwEntry, LwwMap};
use tidemark::snapshot::{
    read_header, read_snapshot, ChunkInfo, ChunkedState, SnapshotHeader, StateBuilder, MAGIC,
};
use tidemark::VersionVector;

fn parts(mut data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        parts.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    parts
}

/// The file the harness hands to the readers: magic, header, its hash, chunks.
fn file(header_bytes: &[u8], chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(header_bytes);
    out.extend_from_slice(blake3::hash(header_bytes).as_bytes());
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out
}

/// What the chunks decode to, if every one decodes: the entry count and the state.
fn decoded(chunks: &[&[u8]]) -> (u64, Option<LwwMap>) {
    let mut count = 0u64;
    let mut state = Some(LwwMap::default());
    for chunk in chunks {
        let Ok(entries) = ciborium::from_reader::<Vec<(String, LwwEntry)>, _>(*chunk) else {
            return (count, None);
        };
        count += entries.len() as u64;
        if let Some(s) = state.as_mut() {
            if s.extend_in_order(entries).is_err() {
                state = None;
            }
        }
    }
    (count, state)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parts = parts(rest);
    let Some((&first, chunks)) = parts.split_first() else {
        return;
    };
    let bytes = if flags & 1 != 0 {
        file(first, chunks)
    } else {
        let snapshot_point: VersionVector = ciborium::from_reader(first).unwrap_or_default();
        let version = if flags & 2 != 0 { 1 } else { 2 };
        let (count, state) = decoded(chunks);
        let digest = match (flags & 8 != 0, state) {
            (true, Some(mut state)) => {
                tidemark::ops_log::StateMachine::refresh_digest(&mut state);
                state.digest_for_format(version)
            }
            _ => Digest([0; 32]),
        };
        let header = SnapshotHeader {
            version,
            height: snapshot_point.total(),
            snapshot_point,
            digest,
            created_unix_ms: 0,
            entries: if flags & 4 != 0 { count } else { 7 },
            chunks: chunks
                .iter()
                .map(|c| ChunkInfo {
                    len: c.len() as u32,
                    hash: *blake3::hash(c).as_bytes(),
                })
                .collect(),
        };
        let mut header_bytes = Vec::new();
        ciborium::into_writer(&header, &mut header_bytes).expect("writing to a Vec");
        file(&header_bytes, chunks)
    };
    let read = read_snapshot::<LwwMap>(&mut Cursor::new(&bytes));
    // the chunk-by-chunk path a transfer takes must agree with the whole-file read
    if let Ok(header) = read_header(&mut Cursor::new(&bytes)) {
        let mut builder = StateBuilder::<LwwMap>::new(header);
        let pushed = chunks
            .iter()
            .try_for_each(|chunk| builder.push_chunk(chunk));
        let built = pushed.and_then(|()| builder.finish());
        if flags & 1 == 0 {
            assert_eq!(built.is_ok(), read.is_ok(), "{built:?} vs {read:?}");
        }
    }
});
