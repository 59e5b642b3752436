//! Op signatures: an op counts only if its origin signed it (hardening, docs/SECURITY.md).
//!
//! Owns the bytes an op's signature covers ([`Op::signing_bytes`]) and the plug through
//! which the core signs and checks ops without knowing the key scheme
//! ([`OpAuthenticator`]): the node plugs in its libp2p ed25519 key, tests plug in a cheap
//! stand-in, and the simulator runs without signatures. Pure: no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Op;
use crate::node_id::NodeId;

/// A signature over an op's signing bytes, made with its origin's key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0.iter().take(6).map(|b| format!("{b:02x}")).collect();
        write!(f, "Signature({hex}…, {} bytes)", self.0.len())
    }
}

/// Signs this node's ops and checks that other ops were signed by their origin.
pub trait OpAuthenticator: fmt::Debug + Send + Sync {
    /// Signs `message` (an op's [`signing bytes`](Op::signing_bytes)) as this node.
    fn sign(&self, message: &[u8]) -> Signature;

    /// Whether `signature` over `message` was made with `origin`'s key.
    fn verify(&self, origin: &NodeId, message: &[u8], signature: &Signature) -> bool;
}

/// Why a received op's signature does not vouch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the op carries no signature")]
    Unsigned,
    /// Forged (signed by another key than its origin's) or mutated after signing: the two
    /// cannot be told apart, since an op does not name its signer.
    #[error("the op's signature is not its origin's over its content")]
    BadSignature,
}

impl<P: Serialize> Op<P> {
    /// What the origin signs: the CBOR array `[origin, seq, lamport, deps, payload]`. Every
    /// part is canonical (a version vector is a map in origin order without zero entries),
    /// so a receiver that rebuilt the op from any encoding gets the same bytes.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(
            &(
                &self.origin,
                self.seq,
                self.lamport,
                &self.deps,
                &self.payload,
            ),
            &mut out,
        )
        .expect("writing to a Vec");
        out
    }

    /// Signs the op as it is with `signer` (its origin's key).
    pub fn sign(&mut self, signer: &dyn OpAuthenticator) {
        self.signature = Some(signer.sign(&self.signing_bytes()));
    }

    /// Checks that the op's origin signed it as it is.
    pub fn check_signature(&self, auth: &dyn OpAuthenticator) -> Result<(), SignatureError> {
        let signature = self.signature.as_ref().ok_or(SignatureError::Unsigned)?;
        if auth.verify(&self.origin, &self.signing_bytes(), signature) {
            Ok(())
        } else {
            Err(SignatureError::BadSignature)
        }
    }
}
