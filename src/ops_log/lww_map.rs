//! The default replicated type: a key-value map whose writes are last-writer-wins by
//! (Lamport time, origin). Deletes leave tombstones, so a delete beats any older write that
//! arrives after it.

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwMap {
    #[serde(deserialize_with = "crate::serde_bounded::ord_map")]
    entries: imbl::OrdMap<String, LwwEntry>,
}

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
            .range::<_, str>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
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

    /// Every entry, tombstones included, sorted by key (the state's canonical form).
    /// The highest Lamport time of any entry (0 for an empty map): a node that starts from
    /// this state must write above it.
    pub fn max_lamport(&self) -> u64 {
        self.entries.values().map(|e| e.lamport).max().unwrap_or(0)
    }

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
        self.entries.insert(key, entry);
        Ok(())
    }
}

impl StateMachine for LwwMap {
    type Op = LwwOp;

    fn apply(&mut self, meta: &OpMeta<'_>, op: &LwwOp) {
        let wins = match self.entries.get(&op.key) {
            None => true,
            Some(cur) => (meta.lamport, meta.origin) > (cur.lamport, &cur.origin),
        };
        if wins {
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

    /// BLAKE3 over, per entry in key order: key length (u64 LE), key, tag (0 tombstone,
    /// 1 value), value length and value when present, Lamport time (u64 LE), origin length and
    /// origin bytes.
    fn digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        for (key, entry) in &self.entries {
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key.as_bytes());
            match &entry.value {
                None => {
                    hasher.update(&[0]);
                }
                Some(v) => {
                    hasher.update(&[1]);
                    hasher.update(&(v.len() as u64).to_le_bytes());
                    hasher.update(v.as_bytes());
                }
            }
            hasher.update(&entry.lamport.to_le_bytes());
            let origin = entry.origin.as_bytes();
            hasher.update(&(origin.len() as u64).to_le_bytes());
            hasher.update(origin);
        }
        Digest(*hasher.finalize().as_bytes())
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
}
