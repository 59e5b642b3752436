//! The base of a stored state: the entries of a state that was transferred to this node or
//! restored from a snapshot file, written once, in key order, to a file of their own in
//! the data dir (`state-<id>.base`), beside a sparse index of its keys.
//!
//! A state arrives as a sorted stream of entries. Writing it into the database's B-tree
//! costs several times its size in page writes (half-full leaves, branch pages rebuilt,
//! BENCHMARKS.md); appending it to a file costs its size. So a joined or restored state
//! stays in its base file for good, and the `state` table holds only what later
//! checkpoints wrote over it (the delta, [`super::storage::StoredState`]).
//!
//! The file is the entries' CBOR, `(key, entry)` after `(key, entry)`, with nothing
//! between them. Every [`INDEX_EVERY`]th entry's key and byte offset go to the index,
//! which the database keeps (written with the staging progress, so a resumed transfer
//! finds it as it was synced) and memory holds: a read seeks to the last indexed key at or
//! before the one it wants and decodes at most [`INDEX_EVERY`] entries.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::ops_log::LwwEntry;

/// One key in this many is indexed.
pub const INDEX_EVERY: u64 = 16;

/// A state's base file: written by appending sorted entries, read by key or range.
pub struct BaseFile {
    path: PathBuf,
    file: File,
    inner: RwLock<Inner>,
}

struct Inner {
    /// `(key, offset)` of every [`INDEX_EVERY`]th entry, in key order.
    index: Vec<(String, u64)>,
    /// The index entries already in the database (the first this many).
    persisted: usize,
    entries: u64,
    bytes: u64,
    last_key: Option<String>,
}

impl BaseFile {
    /// Creates an empty base file at `path` (replacing any file there).
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::with(path, file, Vec::new(), 0, 0, None))
    }

    /// Opens the base file at `path` as the database recorded it: `bytes` long, holding
    /// `entries` entries, with `index` (all of it persisted). A longer file (a crash after
    /// an append that was not synced and recorded) is cut back to `bytes`.
    pub fn open(
        path: &Path,
        bytes: u64,
        entries: u64,
        index: Vec<(String, u64)>,
    ) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} holds {len} bytes of the {bytes} recorded",
                    path.display()
                ),
            ));
        }
        if len > bytes {
            file.set_len(bytes)?;
        }
        let persisted = index.len();
        let mut base = Self::with(path, file, index, entries, bytes, None);
        base.inner.get_mut().expect("base lock").persisted = persisted;
        // the last key, for the order check of the next append
        let at = base.last_indexed_offset();
        let rows = Rows::new(
            At {
                file: &base.file,
                at,
                end: bytes,
            },
            Bound::Unbounded,
            Bound::Unbounded,
        );
        let mut last_key = None;
        for row in rows {
            last_key = Some(row?.0);
        }
        base.inner.get_mut().expect("base lock").last_key = last_key;
        Ok(base)
    }

    fn with(
        path: &Path,
        file: File,
        index: Vec<(String, u64)>,
        entries: u64,
        bytes: u64,
        last_key: Option<String>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            file,
            inner: RwLock::new(Inner {
                index,
                persisted: 0,
                entries,
                bytes,
                last_key,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("base lock")
    }

    fn last_indexed_offset(&self) -> u64 {
        self.read().index.last().map_or(0, |(_, offset)| *offset)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's name (what the database records).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Entries written.
    pub fn len(&self) -> u64 {
        self.read().entries
    }

    /// Whether no entry was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.read().bytes
    }

    /// Appends `entries`, which must sort after every entry written before; `buf` is
    /// scratch space. Not synced ([`sync`](Self::sync)).
    pub fn append(&self, entries: &[(String, LwwEntry)], buf: &mut Vec<u8>) -> io::Result<()> {
        let mut inner = self.inner.write().expect("base lock");
        buf.clear();
        let mut index = Vec::new();
        let mut last = inner.last_key.as_deref();
        for (i, (key, entry)) in entries.iter().enumerate() {
            if last.is_some_and(|last| key.as_str() <= last) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("key {key:?} does not sort after {last:?}"),
                ));
            }
            last = Some(key);
            if (inner.entries + i as u64).is_multiple_of(INDEX_EVERY) {
                index.push((key.clone(), inner.bytes + buf.len() as u64));
            }
            ciborium::into_writer(&(key, entry), &mut *buf).map_err(io::Error::other)?;
        }
        self.file.write_all_at(buf, inner.bytes)?;
        inner.bytes += buf.len() as u64;
        inner.entries += entries.len() as u64;
        inner.index.extend(index);
        if let Some((key, _)) = entries.last() {
            inner.last_key = Some(key.clone());
        }
        Ok(())
    }

    /// Makes what was appended durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The index entries not in the database yet, which count as persisted from now on.
    pub fn take_unpersisted(&self) -> Vec<(String, u64)> {
        let mut inner = self.inner.write().expect("base lock");
        let from = inner.persisted;
        inner.persisted = inner.index.len();
        inner.index[from..].to_vec()
    }

    /// The entry of `key`.
    pub fn get(&self, key: &str) -> io::Result<Option<LwwEntry>> {
        let Some((start, end)) = self.block_of(key) else {
            return Ok(None);
        };
        let mut bytes = vec![0; (end - start) as usize];
        self.file.read_exact_at(&mut bytes, start)?;
        let mut input = bytes.as_slice();
        while !input.is_empty() {
            let (k, entry): (String, LwwEntry) =
                ciborium::from_reader(&mut input).map_err(io::Error::other)?;
            match k.as_str().cmp(key) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(Some(entry)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The bytes that hold `key` if the file does: from the last indexed entry at or before
    /// it to the next indexed entry (or the end). `None`: the key sorts before every entry.
    fn block_of(&self, key: &str) -> Option<(u64, u64)> {
        let inner = self.read();
        let at = inner.index.partition_point(|(k, _)| k.as_str() <= key);
        let start = inner.index.get(at.checked_sub(1)?)?.1;
        let end = inner.index.get(at).map_or(inner.bytes, |(_, o)| *o);
        Some((start, end))
    }

    /// Where a read of the keys from `from` on starts (the start of the block that would
    /// hold it), and where the file ends.
    fn start_of(&self, from: Bound<&str>) -> (u64, u64) {
        let offset = match from {
            Bound::Unbounded => None,
            Bound::Included(k) | Bound::Excluded(k) => self.block_of(k),
        };
        (offset.map_or(0, |(start, _)| start), self.read().bytes)
    }

    /// The entries with keys in `(from, to)`, in key order.
    pub fn range(self: &Arc<Self>, from: Bound<&str>, to: Bound<&str>) -> Rows<OwnedAt> {
        let (at, end) = self.start_of(from);
        Rows::new(
            OwnedAt {
                base: self.clone(),
                at,
                end,
            },
            from,
            to,
        )
    }
}

/// The entries a base file holds in a key range, read sequentially.
pub struct Rows<R> {
    input: BufReader<R>,
    from: Bound<String>,
    to: Bound<String>,
    done: bool,
}

impl<R: Read> Rows<R> {
    fn new(input: R, from: Bound<&str>, to: Bound<&str>) -> Self {
        Self {
            input: BufReader::with_capacity(64 << 10, input),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            done: false,
        }
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = io::Result<(String, LwwEntry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            match self.input.fill_buf() {
                Ok([]) => return None,
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            let (key, entry): (String, LwwEntry) = match ciborium::from_reader(&mut self.input) {
                Ok(row) => row,
                Err(e) => {
                    self.done = true;
                    return Some(Err(io::Error::other(e)));
                }
            };
            if !above_from(&key, &self.from) {
                continue;
            }
            if !below_to(&key, &self.to) {
                self.done = true;
                return None;
            }
            return Some(Ok((key, entry)));
        }
    }
}

fn above_from(key: &str, from: &Bound<String>) -> bool {
    match from {
        Bound::Included(f) => key >= f.as_str(),
        Bound::Excluded(f) => key > f.as_str(),
        Bound::Unbounded => true,
    }
}

fn below_to(key: &str, to: &Bound<String>) -> bool {
    match to {
        Bound::Included(t) => key <= t.as_str(),
        Bound::Excluded(t) => key < t.as_str(),
        Bound::Unbounded => true,
    }
}

/// Reads a file from `at` up to `end`, positionally.
struct At<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Reads a shared base file from `at` up to `end`, positionally.
pub struct OwnedAt {
    base: Arc<BaseFile>,
    at: u64,
    end: u64,
}

impl Read for OwnedAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        At {
            file: &self.base.file,
            at: self.at,
            end: self.end,
        }
        .read(buf)
        .inspect(|n| self.at += *n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn entry(i: u64) -> LwwEntry {
        LwwEntry {
            value: (!i.is_multiple_of(7)).then(|| format!("value {i}").into()),
            lamport: i,
            origin: NodeId::synthetic(1),
        }
    }

    fn rows(n: u64) -> Vec<(String, LwwEntry)> {
        (0..n)
            .map(|i| (format!("k{:04}", i * 2), entry(i)))
            .collect()
    }

    fn collect(rows: Rows<OwnedAt>) -> Vec<(String, LwwEntry)> {
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn every_key_and_range_reads_back_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let base = Arc::new(BaseFile::create(&dir.path().join("state-1.base")).unwrap());
        let all = rows(200);
        let mut buf = Vec::new();
        for chunk in all.chunks(37) {
            base.append(chunk, &mut buf).unwrap();
        }
        assert_eq!(base.len(), 200);
        for (i, (key, entry)) in all.iter().enumerate() {
            assert_eq!(base.get(key).unwrap().as_ref(), Some(entry), "{key}");
            // the odd keys fall between two written ones
            assert_eq!(base.get(&format!("k{:04}", i * 2 + 1)).unwrap(), None);
        }
        assert_eq!(base.get("a").unwrap(), None, "before the first key");
        assert_eq!(base.get("z").unwrap(), None, "after the last key");
        assert_eq!(collect(base.range(Bound::Unbounded, Bound::Unbounded)), all);
        let from_to = collect(base.range(Bound::Included("k0101"), Bound::Excluded("k0200")));
        let expected: Vec<_> = all
            .iter()
            .filter(|(k, _)| k.as_str() >= "k0101" && k.as_str() < "k0200")
            .cloned()
            .collect();
        assert_eq!(from_to, expected);
        let after = collect(base.range(Bound::Excluded("k0100"), Bound::Included("k0104")));
        let keys: Vec<_> = after.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["k0102", "k0104"]);
    }

    #[test]
    fn an_append_out_of_order_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = BaseFile::create(&dir.path().join("state-1.base")).unwrap();
        let mut buf = Vec::new();
        base.append(&rows(3), &mut buf).unwrap();
        let bytes = base.bytes();
        let again = base.append(&[("k0000".into(), entry(9))], &mut buf);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!((base.len(), base.bytes()), (3, bytes));
    }

    #[test]
    fn a_file_opened_as_recorded_drops_what_was_appended_after_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-1.base");
        let all = rows(100);
        let (bytes, index) = {
            let base = BaseFile::create(&path).unwrap();
            let mut buf = Vec::new();
            base.append(&all[..60], &mut buf).unwrap();
            base.sync().unwrap();
            let recorded = (base.bytes(), base.take_unpersisted());
            // appended, but never recorded (a crash before the sync)
            base.append(&all[60..80], &mut buf).unwrap();
            recorded
        };
        let base = Arc::new(BaseFile::open(&path, bytes, 60, index).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        assert_eq!(
            base.get(&all[70].0).unwrap(),
            None,
            "past what was recorded"
        );
        let mut buf = Vec::new();
        assert!(
            base.append(&all[59..60], &mut buf).is_err(),
            "the last key is known"
        );
        base.append(&all[60..], &mut buf).unwrap();
        assert_eq!(collect(base.range(Bound::Unbounded, Bound::Unbounded)), all);
        // a file shorter than recorded is not trusted
        let short = BaseFile::open(&path, base.bytes() + 1, 100, Vec::new());
        assert!(short.is_err());
    }
}
