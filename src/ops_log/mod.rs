//! The operations log: ops, causal delivery, the applied vector, the Lamport clock, the
//! replicated state, and compaction of everything inside the snapshot point.
//!
//! Owns: the applied vector `A(n)` and the applied state; the stable cut (the snapshot point
//! last folded) with the stable state and its digest; the unstable suffix (applied ops above
//! the stable cut, kept to serve peers and joiners); and the causal buffer of ops that
//! arrived early. Ops inside the stable cut are folded into the stable state and dropped, so
//! memory is bounded by live state plus the unstable suffix, not by history.
//!
//! Pure state machine: no I/O, no clocks.

mod causal_buffer;
mod lww_map;
mod own_ops;
mod signing;
mod state_machine;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use causal_buffer::{BufferLimits, CausalBuffer, Insert};
pub use lww_map::{EntryRef, EntryValue, LwwEntry, LwwMap, LwwOp, StoredEntries};
pub use own_ops::OwnOps;
pub use signing::{OpAuthenticator, Signature, SignatureError};
pub use state_machine::{Digest, OpMeta, StateMachine};

use crate::node_id::NodeId;
use crate::replica::PlantedBug;
use crate::version_vector::VersionVector;

/// One operation: the `seq`-th op of `origin`, created after the ops in `deps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op<P> {
    pub origin: NodeId,
    pub seq: u64,
    pub lamport: u64,
    /// The origin's applied vector when it created the op; `deps[origin] == seq - 1`.
    pub deps: VersionVector,
    pub payload: P,
    /// The origin's signature over [`Op::signing_bytes`] (absent where ops are not signed,
    /// as in the simulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl<P> Op<P> {
    pub fn meta(&self) -> OpMeta<'_> {
        OpMeta {
            origin: &self.origin,
            seq: self.seq,
            lamport: self.lamport,
        }
    }

    /// Checks the shape rules every op must satisfy, whoever sent it.
    pub fn validate(&self) -> Result<(), OpError> {
        if self.seq == 0 {
            return Err(OpError::ZeroSeq);
        }
        if self.deps.get(&self.origin) != self.seq - 1 {
            return Err(OpError::GapInOrigin {
                seq: self.seq,
                dep: self.deps.get(&self.origin),
            });
        }
        if self.lamport == 0 {
            return Err(OpError::ZeroLamport);
        }
        Ok(())
    }
}

/// Why an op was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("op seq must start at 1")]
    ZeroSeq,
    #[error("op seq {seq} does not follow its origin's own dep {dep}")]
    GapInOrigin { seq: u64, dep: u64 },
    #[error("op lamport time must be at least 1")]
    ZeroLamport,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Writer(#[from] WriterRefused),
}

/// Why a well-formed, correctly signed op was refused for its origin: who may write is
/// decided by the replica (see [`OpsLog::receive_admitted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriterRefused {
    /// The origin is not, and never was, a member of the network as this node knows it.
    #[error("its origin is not a member of this network, and never was")]
    NotMember,
    /// The origin is not on this node's writers list.
    #[error("its origin is not on this node's writers list")]
    NotWriter,
}

/// What happened to a received op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Applied, together with this many buffered ops it unblocked (≥ 1 in total).
    Applied(usize),
    /// Waiting for its deps.
    Buffered,
    /// Already applied or already waiting.
    Duplicate,
    /// Not applicable yet and refused by the causal buffer's limits (it comes back through
    /// anti-entropy once its deps are in).
    Refused,
}

/// A peer asked for ops that this node has already compacted away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer is stale: it has {origin} up to {peer_has}, but ops up to {compacted_to} are compacted"
)]
pub struct Compacted {
    pub origin: NodeId,
    pub peer_has: u64,
    pub compacted_to: u64,
}

/// What a peer lacks: the ops this node can serve, and where it cannot.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing<P> {
    pub ops: Vec<Arc<Op<P>>>,
    pub compacted: Option<Compacted>,
}

/// A state handed over for installation did not add up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error("op {origin}/{seq} in the handed-over suffix is invalid: {error}")]
    InvalidOp {
        origin: NodeId,
        seq: u64,
        error: OpError,
    },
    #[error("{0} ops of the handed-over suffix could not be applied (missing deps)")]
    Incomplete(usize),
}

/// The log, the applied state and the stable state of one replica.
#[derive(Debug)]
pub struct OpsLog<S: StateMachine> {
    applied: VersionVector,
    lamport: u64,
    applied_state: S,
    stable_state: S,
    stable_cut: VersionVector,
    stable_digest: Option<Digest>,
    unstable: BTreeMap<NodeId, VecDeque<Arc<Op<S::Op>>>>,
    unstable_len: usize,
    buffer: CausalBuffer<S::Op>,
    newly_applied: Vec<Arc<Op<S::Op>>>,
    /// A bug the simulator planted (see `replica::PlantedBug`); `None` in a node.
    planted: Option<PlantedBug>,
}

impl<S: StateMachine> Default for OpsLog<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: StateMachine> OpsLog<S> {
    pub fn new() -> Self {
        Self::from_stable(S::default(), VersionVector::new(), 0)
    }

    /// Starts from a stable state at `cut` (a snapshot), with nothing above it yet.
    pub fn from_stable(state: S, cut: VersionVector, lamport: u64) -> Self {
        Self {
            applied: cut.clone(),
            lamport,
            applied_state: state.clone(),
            stable_state: state,
            stable_cut: cut,
            stable_digest: None,
            unstable: BTreeMap::new(),
            unstable_len: 0,
            buffer: CausalBuffer::default(),
            newly_applied: Vec::new(),
            planted: None,
        }
    }

    /// Installs a handed-over state: the stable state at `cut` plus the op suffix above it.
    /// Every op of the suffix must apply and, with `auth`, carry its origin's signature: a
    /// handed-over suffix is checked like ops from the topic.
    pub fn install(
        state: S,
        cut: VersionVector,
        lamport: u64,
        suffix: impl IntoIterator<Item = Arc<Op<S::Op>>>,
        auth: Option<&dyn OpAuthenticator>,
    ) -> Result<Self, InstallError> {
        let mut log = Self::from_stable(state, cut, lamport);
        let mut refused = 0;
        for op in suffix {
            let (origin, seq) = (op.origin.clone(), op.seq);
            let received = log
                .receive_verified(op, auth)
                .map_err(|error| InstallError::InvalidOp { origin, seq, error })?;
            if received == Received::Refused {
                refused += 1;
            }
        }
        let unapplied = log.buffer.len() + refused;
        if unapplied > 0 {
            return Err(InstallError::Incomplete(unapplied));
        }
        Ok(log)
    }

    /// Creates this node's next op (unsigned) and applies it.
    pub fn create(&mut self, origin: &NodeId, payload: S::Op) -> Arc<Op<S::Op>> {
        self.create_signed(origin, payload, None)
    }

    /// Creates this node's next op, signed by `signer` when one is given, and applies it.
    pub fn create_signed(
        &mut self,
        origin: &NodeId,
        payload: S::Op,
        signer: Option<&dyn OpAuthenticator>,
    ) -> Arc<Op<S::Op>> {
        self.lamport += 1;
        let mut op = Op {
            origin: origin.clone(),
            seq: self.applied.get(origin) + 1,
            lamport: self.lamport,
            deps: self.applied.clone(),
            payload,
            signature: None,
        };
        if let Some(signer) = signer {
            op.sign(signer);
        }
        let op = Arc::new(op);
        self.apply(op.clone());
        op
    }

    /// Takes an op from a peer: applies it if its deps are met (and then anything it
    /// unblocks), buffers it otherwise, ignores duplicates.
    pub fn receive(&mut self, op: Arc<Op<S::Op>>) -> Result<Received, OpError> {
        self.receive_verified(op, None)
    }

    /// [`receive`](Self::receive), and with `auth`, the op must also carry its origin's
    /// signature. A duplicate is known before its signature is checked, so replays of ops
    /// already held cost no verification.
    pub fn receive_verified(
        &mut self,
        op: Arc<Op<S::Op>>,
        auth: Option<&dyn OpAuthenticator>,
    ) -> Result<Received, OpError> {
        self.receive_admitted(op, auth, |_| Ok(()))
    }

    /// [`receive_verified`](Self::receive_verified), and the op's origin must pass `admit`
    /// (checked after its signature, so a forged op counts as forged): a refused op is
    /// neither applied nor kept, and comes back through anti-entropy if it is admitted
    /// later.
    pub fn receive_admitted(
        &mut self,
        op: Arc<Op<S::Op>>,
        auth: Option<&dyn OpAuthenticator>,
        admit: impl FnOnce(&NodeId) -> Result<(), WriterRefused>,
    ) -> Result<Received, OpError> {
        op.validate()?;
        if self.buffer.holds(&op, &self.applied) {
            return Ok(Received::Duplicate);
        }
        if let Some(auth) = auth {
            op.check_signature(auth)?;
        }
        admit(&op.origin)?;
        if self.planted == Some(PlantedBug::SkipCausalOrder)
            && op.seq == self.applied.get(&op.origin) + 1
        {
            self.apply(op);
            return Ok(Received::Applied(1));
        }
        let mut count = 0;
        if op.seq == self.applied.get(&op.origin) + 1 && op.deps.le(&self.applied) {
            // deliverable at once (the common case): it skips the buffer, where no op
            // waiting could go before it, since none was deliverable before it came
            self.apply(op);
            count += 1;
        } else {
            match self.buffer.insert(op, &self.applied) {
                Insert::Added => {}
                Insert::Duplicate => return Ok(Received::Duplicate),
                Insert::Refused => return Ok(Received::Refused),
            }
        }
        while let Some(ready) = self.buffer.pop_deliverable(&self.applied) {
            self.apply(ready);
            count += 1;
        }
        Ok(if count > 0 {
            Received::Applied(count)
        } else {
            Received::Buffered
        })
    }

    fn apply(&mut self, op: Arc<Op<S::Op>>) {
        debug_assert_eq!(op.seq, self.applied.get(&op.origin) + 1);
        debug_assert!(
            op.deps.le(&self.applied) || self.planted == Some(PlantedBug::SkipCausalOrder)
        );
        self.lamport = self.lamport.max(op.lamport);
        self.applied_state.apply(&op.meta(), &op.payload);
        self.applied.set(op.origin.clone(), op.seq);
        self.unstable
            .entry(op.origin.clone())
            .or_default()
            .push_back(op.clone());
        self.unstable_len += 1;
        self.newly_applied.push(op);
    }

    /// Folds every op inside `cut` into the stable state and drops it from the log.
    /// `cut` must lie between the current stable cut and the applied vector; parts outside
    /// that range are clamped.
    pub fn advance_stable(&mut self, cut: &VersionVector) {
        let mut leaving = Vec::new();
        for (origin, ops) in self.unstable.iter_mut() {
            let upto = cut.get(origin).min(self.applied.get(origin));
            while ops.front().is_some_and(|op| op.seq <= upto) {
                leaving.push(ops.pop_front().expect("checked"));
            }
        }
        if leaving.is_empty() {
            return;
        }
        self.unstable.retain(|_, ops| !ops.is_empty());
        self.unstable_len -= leaving.len();
        // Lamport order extends causal order, so folding in it respects every dependency.
        leaving.sort_by(|a, b| (a.lamport, &a.origin, a.seq).cmp(&(b.lamport, &b.origin, b.seq)));
        let forget = self.planted == Some(PlantedBug::FoldForgetsAnOp);
        for op in &leaving {
            if !(forget && op.seq == 5) {
                self.stable_state.apply(&op.meta(), &op.payload);
            }
            self.stable_cut.raise(&op.origin, op.seq);
        }
        self.stable_digest = None;
    }

    /// Ops a peer at `peer_applied` lacks, in an order that respects causality, at most
    /// `limit` of them. Origins where the peer is below what this node has compacted cannot
    /// be served; the first of them is reported in `compacted` (the peer is stale there, or
    /// its vector was overtaken on the way), and every other origin is still served.
    pub fn missing_for(&self, peer_applied: &VersionVector, limit: usize) -> Missing<S::Op> {
        let mut ops = Vec::new();
        let mut compacted = None;
        for (origin, have) in self.applied.iter() {
            let peer_has = peer_applied.get(origin);
            if peer_has >= have {
                continue;
            }
            let compacted_to = self.stable_cut.get(origin);
            if peer_has < compacted_to {
                compacted.get_or_insert_with(|| Compacted {
                    origin: origin.clone(),
                    peer_has,
                    compacted_to,
                });
                continue;
            }
            if let Some(suffix) = self.unstable.get(origin) {
                let skip = (peer_has - compacted_to) as usize;
                ops.extend(suffix.iter().skip(skip).cloned());
            }
        }
        ops.sort_by(|a, b| (a.lamport, &a.origin, a.seq).cmp(&(b.lamport, &b.origin, b.seq)));
        ops.truncate(limit);
        Missing { ops, compacted }
    }

    /// The unstable suffix (every applied op above the stable cut), in causal order.
    pub fn unstable_ops(&self) -> Vec<Arc<Op<S::Op>>> {
        self.missing_for(&self.stable_cut, usize::MAX).ops
    }

    /// Ops waiting in the causal buffer for their deps, by origin then seq.
    pub fn buffered_ops(&self) -> Vec<Arc<Op<S::Op>>> {
        self.buffer.ops().cloned().collect()
    }

    /// Ops applied since the last call, in application order.
    pub fn drain_applied(&mut self) -> Vec<Arc<Op<S::Op>>> {
        std::mem::take(&mut self.newly_applied)
    }

    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    pub fn applied_state(&self) -> &S {
        &self.applied_state
    }

    pub fn stable_state(&self) -> &S {
        &self.stable_state
    }

    pub fn stable_cut(&self) -> &VersionVector {
        &self.stable_cut
    }

    /// Digest of the stable state (computed on first use after a change).
    pub fn stable_digest(&mut self) -> Digest {
        if let Some(digest) = self.stable_digest {
            return digest;
        }
        self.stable_state.refresh_digest();
        *self.stable_digest.insert(self.stable_state.digest())
    }

    /// Digest of the applied state.
    pub fn applied_digest(&mut self) -> Digest {
        self.applied_state.refresh_digest();
        self.applied_state.digest()
    }

    /// Number of applied ops kept above the stable cut.
    pub fn unstable_len(&self) -> usize {
        self.unstable_len
    }

    /// Number of ops waiting for their deps.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Plants a bug (the simulator's oracle tests); `None` removes it.
    pub fn plant(&mut self, bug: Option<PlantedBug>) {
        self.planted = bug;
    }

    /// Sets the causal buffer's limits.
    pub fn set_buffer_limits(&mut self, limits: BufferLimits) {
        self.buffer.set_limits(limits);
    }
}

impl OpsLog<LwwMap> {
    /// Keeps the states' entries in `store`, which has just been given the stable state at
    /// the stable cut: written whole (`written: None`), or with the entries of `written`
    /// rewritten (a fold). The stable state drops from memory the entries the store now
    /// holds (every one when it was written whole, or a state was not kept in a store before); the
    /// applied state drops those equal to the stable state's, which no applied op above the
    /// stable cut changed.
    pub fn keep_in_store(&mut self, store: Arc<dyn StoredEntries>, written: Option<&[String]>) {
        let whole = written.is_none()
            || self.stable_state.store().is_none()
            || self.applied_state.store().is_none();
        let stable = &self.stable_state;
        let unchanged_since_stable =
            |key: &str, entry: &LwwEntry| stable.entry(key).as_deref() == Some(entry);
        match written {
            Some(keys) if !whole => {
                for key in keys {
                    let unchanged = self
                        .applied_state
                        .in_memory_entry(key)
                        .is_some_and(|e| unchanged_since_stable(key, e));
                    if unchanged {
                        self.applied_state.forget_stored(key);
                    }
                }
                self.applied_state.keep_in_store(store.clone(), |_, _| true);
                for key in keys {
                    self.stable_state.forget_stored(key);
                }
            }
            _ => {
                self.applied_state
                    .keep_in_store(store.clone(), |key, entry| {
                        !unchanged_since_stable(key, entry)
                    });
                self.stable_state.keep_in_store(store, |_, _| false);
            }
        }
    }
}

#[cfg(test)]
mod tests;
