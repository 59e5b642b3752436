//! One replica inside the model: the inputs it has received, how to rebuild it from them,
//! and what the properties read from it (its [`Observation`] and fingerprint).
//!
//! `Replica` is not `Clone`, and stateright must clone states to branch. A model node is
//! therefore kept as the list of inputs the replica has handled (its *history*: messages,
//! timeouts, writes, leave, each with the local time it happened at). The replica is
//! deterministic — its only randomness is a seeded ChaCha8 generator, and every collection
//! it iterates is ordered — so replaying the history through the public API rebuilds it
//! exactly. Each transition touches one node, so only that node is rebuilt.
//!
//! ## Fingerprint (what makes two model nodes the same state)
//! The state hash must not depend on how a state was reached, or two interleavings that
//! commute would never be merged. The fingerprint of a replica is a hash of its `Debug`
//! output, which is faithful because every field of `Replica` and of its parts derives
//! `Debug` and every map in it is ordered (`BTreeMap`, `imbl::OrdMap`), with two exceptions
//! handled here:
//! - `ReplicaStats` counters are cut out: they are written but never read by the protocol
//!   (checked in `src/replica/mod.rs` at the time of writing), and they count duplicates
//!   and outdated records, so keeping them would separate states that behave identically.
//! - The `Debug` of the ChaCha8 generator shows only the word index inside its current
//!   64-word block, not the block counter. The model counts block refills itself (the
//!   index goes down exactly when a new block is generated) and hashes that count with the
//!   index, so the generator's position is determined unless one input consumes 64 words or
//!   more (a few draws per input is what the core does).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tidemark::gossip::Message;
use tidemark::network_map::view::View;
use tidemark::ops_log::{Digest, LwwMap, LwwOp, Op};
use tidemark::replica::{Action, Replica, ReplicaConfig};
use tidemark::{NodeId, Time, VersionVector};

/// A message as the replicas exchange it.
pub type Msg = Arc<Message<LwwMap>>;

/// One event a replica handled, with the local time it handled it at.
#[derive(Clone, Debug)]
pub enum Input {
    Message {
        now: Time,
        from: NodeId,
        message: Msg,
        /// `message_fingerprint(message)`, computed once when it was sent.
        fingerprint: u64,
    },
    Timeout {
        now: Time,
    },
    Write {
        now: Time,
        op: LwwOp,
    },
    Leave {
        now: Time,
    },
}

impl Input {
    /// Extends the fingerprint `prev` of the inputs before this one.
    pub fn chain(&self, prev: u64) -> u64 {
        let mut h = DefaultHasher::new();
        prev.hash(&mut h);
        match self {
            Input::Message {
                now,
                from,
                fingerprint,
                ..
            } => (0u8, now, from.as_bytes(), fingerprint).hash(&mut h),
            Input::Timeout { now } => (1u8, now).hash(&mut h),
            Input::Write { now, op } => (2u8, now, &op.key, &op.value).hash(&mut h),
            Input::Leave { now } => (3u8, now).hash(&mut h),
        }
        h.finish()
    }
}

/// The inputs a replica handled, newest last: a shared, persistent list, so that appending
/// for one successor state copies nothing.
#[derive(Clone, Debug, Default)]
pub struct History {
    last: Option<Arc<Link>>,
    /// Fingerprint of the whole list (see [`Input::chain`]).
    pub fingerprint: u64,
}

#[derive(Debug)]
struct Link {
    prev: Option<Arc<Link>>,
    input: Input,
}

impl History {
    /// The empty history of a node created at `start`.
    pub fn new(node: usize, start: Time) -> History {
        let mut h = DefaultHasher::new();
        (node, start).hash(&mut h);
        History {
            last: None,
            fingerprint: h.finish(),
        }
    }

    pub fn push(&mut self, input: Input) {
        self.fingerprint = input.chain(self.fingerprint);
        self.last = Some(Arc::new(Link {
            prev: self.last.take(),
            input,
        }));
    }

    /// The inputs, oldest first.
    pub fn inputs(&self) -> Vec<&Input> {
        let mut out = Vec::new();
        let mut at = self.last.as_deref();
        while let Some(link) = at {
            out.push(&link.input);
            at = link.prev.as_deref();
        }
        out.reverse();
        out
    }

    pub fn len(&self) -> usize {
        self.inputs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }
}

/// How a node came into being.
#[derive(Clone, Debug)]
pub enum Birth {
    /// `Replica::genesis` at time 0 with every founder.
    Founder { founders: Vec<NodeId> },
    /// `Replica::joiner` through `sponsor`, at the time the model starts it.
    Joiner { sponsor: NodeId },
}

/// Everything needed to build a node's replica before its first input.
#[derive(Clone, Debug)]
pub struct Setup {
    pub id: NodeId,
    pub birth: Birth,
    pub seed: u64,
    pub config: ReplicaConfig,
}

impl Setup {
    fn create(&self, start: Time) -> Replica<LwwMap> {
        match &self.birth {
            Birth::Founder { founders } => Replica::genesis(
                self.id.clone(),
                founders,
                self.config.clone(),
                self.seed,
                start,
            ),
            Birth::Joiner { sponsor } => Replica::joiner(
                self.id.clone(),
                1,
                sponsor.clone(),
                self.config.clone(),
                self.seed,
                start,
            ),
        }
    }

    /// The replica after handling `history`, with its pending actions and applied-op journal
    /// drained (they were acted on when the inputs first happened).
    pub fn rebuild(&self, start: Time, history: &History) -> Replica<LwwMap> {
        let mut replica = self.create(start);
        drain(&mut replica);
        for input in history.inputs() {
            apply(&mut replica, input);
            drain(&mut replica);
        }
        replica
    }

    /// A freshly created replica, read as an [`Outcome`].
    pub fn start(&self, start: Time, ids: &[NodeId], watched: Option<&NodeId>) -> Outcome {
        let mut replica = self.create(start);
        Outcome::read(&mut replica, ids, watched)
    }
}

fn drain(replica: &mut Replica<LwwMap>) {
    while replica.poll_action().is_some() {}
    replica.drain_applied_ops();
    replica.drain_member_changes();
    replica.drain_rejected_ops();
    replica.drain_installed_views();
}

/// Feeds one input to the replica. Writes and leaves are only offered when the replica
/// accepts them, so their refusals are ignored here.
pub fn apply(replica: &mut Replica<LwwMap>, input: &Input) {
    match input {
        Input::Message {
            now, from, message, ..
        } => replica.handle_message(*now, from, message),
        Input::Timeout { now } => replica.handle_timeout(*now),
        Input::Write { now, op } => {
            let _ = replica.write(*now, op.clone());
        }
        Input::Leave { now } => {
            let _ = replica.leave(*now);
        }
    }
}

/// Takes every pending action of the replica.
pub fn actions(replica: &mut Replica<LwwMap>) -> Vec<Action<LwwMap>> {
    std::iter::from_fn(|| replica.poll_action()).collect()
}

/// What a replica asked for after an input, with node indices resolved and message
/// fingerprints computed.
#[derive(Clone, Debug)]
pub enum Output {
    Send {
        to: usize,
        message: Msg,
        fingerprint: u64,
    },
    Publish {
        message: Msg,
        fingerprint: u64,
    },
    Wake(Time),
}

/// What one input (or the creation) did to a replica. Computed once per (node, history) and
/// shared by every state in which that node has that history.
#[derive(Debug)]
pub struct Outcome {
    pub obs: Arc<Observation>,
    pub outputs: Vec<Output>,
    /// The ops the replica reported applying (`drain_applied_ops`).
    pub applied: Vec<Arc<Op<LwwOp>>>,
    /// The views it installed (`drain_installed_views`).
    pub installed: Vec<View>,
}

impl Outcome {
    /// Reads the replica after an input: its actions, applied ops and observation.
    /// `ids` maps node ids to model indices; `watched` is the joiner.
    pub fn read(
        replica: &mut Replica<LwwMap>,
        ids: &[NodeId],
        watched: Option<&NodeId>,
    ) -> Outcome {
        let outputs = actions(replica)
            .into_iter()
            .filter_map(|action| match action {
                Action::Send { to, message } => {
                    let to = ids.iter().position(|id| *id == to)?;
                    let fingerprint = message_fingerprint(&message);
                    Some(Output::Send {
                        to,
                        message,
                        fingerprint,
                    })
                }
                Action::Publish { message } => {
                    let fingerprint = message_fingerprint(&message);
                    Some(Output::Publish {
                        message,
                        fingerprint,
                    })
                }
                Action::ScheduleWake { at } => Some(Output::Wake(at)),
            })
            .collect();
        let applied = replica.drain_applied_ops();
        let installed = replica
            .drain_installed_views()
            .into_iter()
            .map(|i| i.change.next)
            .collect();
        // a journal for observers, not state: kept empty so it never splits states
        replica.drain_member_changes();
        replica.drain_rejected_ops();
        let obs = Arc::new(Observation::of(replica, watched));
        Outcome {
            obs,
            outputs,
            applied,
            installed,
        }
    }
}

/// What the properties read of a replica after an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub applied: VersionVector,
    pub snapshot_point: VersionVector,
    pub stable_cut: VersionVector,
    pub digest: Digest,
    pub member: bool,
    pub leaving: bool,
    pub left: bool,
    /// The view the replica has installed.
    pub view: View,
    /// The cut at which this node registered `watched` (the joiner), while that registration
    /// is this node's record of it (the joiner has not reported by itself yet).
    pub registered: Option<VersionVector>,
    /// Hash of the replica's `Debug` output without its statistics (see module doc).
    pub fingerprint: u64,
    /// Word index of the replica's random generator inside its current block.
    pub rng_index: u32,
}

const RNG_MARK: &str = "result_len: 64, index: ";
const STATS_MARK: &str = "stats: ReplicaStats {";

impl Observation {
    pub fn of(replica: &mut Replica<LwwMap>, watched: Option<&NodeId>) -> Observation {
        // computes and caches the digest before `Debug` reads it, so the cache field is the
        // same however the replica was reached
        let digest = replica.stable_digest();
        let text = format!("{replica:?}");
        let (fingerprint, rng_index) = fingerprint(&text);
        let me = replica.id().clone();
        let registered = watched.and_then(|j| {
            let entry = replica.network_map().get(j)?;
            let record = &entry.record;
            let mine = record
                .sponsor
                .as_ref()
                .is_some_and(|s| s.sponsor == me && record.report_seq == 0);
            mine.then(|| record.applied.clone())
        });
        Observation {
            applied: replica.applied().clone(),
            snapshot_point: replica.snapshot_point().clone(),
            stable_cut: replica.stable_cut().clone(),
            digest,
            member: replica.is_member(),
            leaving: replica.is_leaving(),
            left: replica.has_left(),
            view: replica.view().clone(),
            registered,
            fingerprint,
            rng_index,
        }
    }
}

/// Hash of the `Debug` text with the statistics cut out, and the generator's word index.
pub fn fingerprint(text: &str) -> (u64, u32) {
    let mut hasher = DefaultHasher::new();
    match text.find(STATS_MARK) {
        Some(start) => {
            let end = text[start..]
                .find('}')
                .map_or(text.len(), |e| start + e + 1);
            text[..start].hash(&mut hasher);
            text[end..].hash(&mut hasher);
        }
        None => text.hash(&mut hasher),
    }
    let rng_index = text
        .find(RNG_MARK)
        .and_then(|at| {
            let rest = &text[at + RNG_MARK.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .expect("the replica's Debug output shows its generator's block index");
    (hasher.finish(), rng_index)
}

/// Hash of a message's `Debug` text: equal messages (same content) hash equal.
pub fn message_fingerprint(message: &Msg) -> u64 {
    let mut hasher = DefaultHasher::new();
    format!("{message:?}").hash(&mut hasher);
    hasher.finish()
}
