//! The plug for the replicated data type, and the state digest.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;

/// What an application sees of an op besides its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpMeta<'a> {
    pub origin: &'a NodeId,
    pub seq: u64,
    pub lamport: u64,
}

/// A replicated data type driven by operations (an op-based CRDT).
///
/// Contract: ops are delivered in causal order, and any two concurrent ops commute, so the
/// state after a set of ops depends on the set alone. `digest` hashes a canonical encoding
/// sorted by key, so equal states give equal digests on every node.
pub trait StateMachine: Clone + Default + fmt::Debug + Serialize + DeserializeOwned {
    type Op: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned;

    fn apply(&mut self, meta: &OpMeta<'_>, op: &Self::Op);

    fn digest(&self) -> Digest;

    /// Caches what `digest` computed, so the next `digest` after a few writes is cheap.
    /// `digest` must give the same result with or without it.
    fn refresh_digest(&mut self) {}
}

/// A BLAKE3 hash of a canonical state encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}
