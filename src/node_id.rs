//! Node identity: the bytes of a libp2p `PeerId`, kept opaque so the core never depends on libp2p.
//!
//! The string form is base58 of the bytes, which is exactly the string form of a `PeerId`.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest node id accepted from the wire (a `PeerId` is at most 42 bytes in practice).
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node's identity (its `PeerId` bytes). Cheap to clone.
///
/// Ordered by a 64-bit key taken from the last 8 bytes (big-endian), then by the bytes:
/// a total order every node computes the same way, and one that is decided by the key
/// almost always, since `PeerId`s share their multihash prefix but not their tail.
#[derive(Clone)]
pub struct NodeId(Arc<Inner>);

struct Inner {
    key: u64,
    bytes: Box<[u8]>,
}

impl Inner {
    fn new(bytes: &[u8]) -> Self {
        let mut tail = [0u8; 8];
        let n = bytes.len().min(8);
        tail[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
        Inner {
            key: u64::from_be_bytes(tail),
            bytes: bytes.into(),
        }
    }
}

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.key == other.0.key && self.0.bytes == other.0.bytes)
    }
}

impl Eq for NodeId {}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0
            .key
            .cmp(&other.0.key)
            .then_with(|| self.0.bytes.cmp(&other.0.bytes))
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
        self.0.bytes.len().hash(state);
    }
}

/// A node id that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id is {0} bytes, more than the {MAX_NODE_ID_LEN} allowed")]
    TooLong(usize),
    #[error("node id is not valid base58: {0}")]
    Base58(String),
}

impl NodeId {
    /// Wraps raw id bytes, checking their length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeIdError> {
        if bytes.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if bytes.len() > MAX_NODE_ID_LEN {
            return Err(NodeIdError::TooLong(bytes.len()));
        }
        Ok(NodeId(Arc::new(Inner::new(bytes))))
    }

    /// A deterministic id shaped like an ed25519 `PeerId` (identity multihash of 32 bytes),
    /// for simulations and tests.
    pub fn synthetic(index: u64) -> Self {
        let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        let hash = blake3::hash(&index.to_le_bytes());
        bytes.extend_from_slice(hash.as_bytes());
        NodeId(Arc::new(Inner::new(&bytes)))
    }

    /// Parses the base58 string form.
    pub fn from_base58(text: &str) -> Result<Self, NodeIdError> {
        let bytes = bs58::decode(text)
            .into_vec()
            .map_err(|e| NodeIdError::Base58(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// The id's 64-bit key (its last 8 bytes, big-endian): how published batches refer to
    /// members the receiver already knows (see `gossip::encode_published`).
    pub fn key(&self) -> u64 {
        self.0.key
    }

    pub fn to_base58(&self) -> String {
        bs58::encode(&self.0.bytes).into_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_base58();
        let tail = &text[text.len().saturating_sub(6)..];
        write!(f, "…{tail}")
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.bytes)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of 1 to {MAX_NODE_ID_LEN} bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<NodeId, E> {
                NodeId::from_bytes(v).map_err(E::custom)
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<NodeId, E> {
                self.visit_bytes(&v)
            }
        }
        deserializer.deserialize_bytes(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base58_round_trip_and_rejects_garbage() {
        let id = NodeId::synthetic(7);
        assert_eq!(NodeId::from_base58(&id.to_string()).unwrap(), id);
        assert!(matches!(
            NodeId::from_base58("0OIl"),
            Err(NodeIdError::Base58(_))
        ));
        assert_eq!(NodeId::from_bytes(&[]), Err(NodeIdError::Empty));
        assert_eq!(NodeId::from_bytes(&[1; 65]), Err(NodeIdError::TooLong(65)));
    }

    #[test]
    fn order_is_total_and_consistent_with_equality() {
        let ids: Vec<NodeId> = (0..50).map(NodeId::synthetic).collect();
        for a in &ids {
            for b in &ids {
                let same_bytes = a.as_bytes() == b.as_bytes();
                assert_eq!(a == b, same_bytes);
                assert_eq!(a.cmp(b) == std::cmp::Ordering::Equal, same_bytes);
                assert_eq!(a.cmp(b), b.cmp(a).reverse());
            }
        }
        let short = NodeId::from_bytes(&[1, 2]).unwrap();
        let copy = NodeId::from_bytes(&[1, 2]).unwrap();
        assert_eq!(short, copy);
    }

    #[test]
    fn cbor_encodes_as_byte_string() {
        let id = NodeId::synthetic(1);
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        assert_eq!(buf.len(), 2 + 38);
        let back: NodeId = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(back, id);
    }
}
