//! The gossip protocol: the messages replicas exchange, their wire encoding, and the timing
//! rules that decide when each is sent.
//!
//! | message | how it travels | when |
//! |---|---|---|
//! | [`Message::Ops`] | published on the topic (gossipsub) | a writer's new ops, batched for `op_batch_delay` (at most `max_batch_ops`), with the writer's own report (its record, re-issued at publishing) |
//! | [`Message::Status`] | sent to the status peers | records adopted from status reports since the last report, at most every `status_interval_for(members)`; the node's own record is re-issued when its applied vector or registrations changed and no published batch is about to carry it, and at least every `heartbeat_interval` |
//! | [`Message::Digest`] | sent to one random member | every `anti_entropy_interval`; after `gap_pull_delay` while ops wait for missing deps; again while a repair says there is more |
//! | [`Message::Repair`] | reply to a digest | carries the ops and records the digest's sender lacks |
//! | [`Message::Stale`] | reply to a digest | the digest's sender is below this node's snapshot point, whose ops are compacted |
//! | [`Message::JoinRequest`] / [`Message::JoinResponse`] | direct request–response | the join handshake (see `join_protocol`) |
//!
//! Reports ride on published ops: every member receives the topic, so a record that arrived
//! with a batch is adopted without being relayed, and a node that writes continuously sends
//! no status of its own; status reports carry the records of nodes that are not writing.
//! A member that missed a batch gets the record with its next report or from anti-entropy.
//!
//! Status peers: `status_fanout` members chosen at random (replaced when they leave good
//! standing) plus members that sent this node a status report, up to `max_status_peers` in
//! all, so the status graph is close to undirected and connected with high probability; a
//! record therefore floods to every member within a few hops, the way gossipsub floods ops.
//!
//! This module is part of the sans-IO core: it holds data and rules, no I/O.

pub mod dissemination;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use wire::{
    decode, decode_published, encode, encode_published, encoded_len, published_len,
    published_op_range, report_len, topic_message_id, DecodeError, TopicDecodeError,
    MAX_MESSAGE_BYTES, MESSAGE_ID_BYTES,
};

use crate::join_protocol::{JoinRequest, JoinResponse};
use crate::network_map::aggregation::AggregateMessage;
use crate::network_map::view::ViewMessage;
use crate::network_map::{MemberRecord, RecordVersion};
use crate::node_id::NodeId;
use crate::ops_log::{Op, StateMachine};
use crate::version_vector::VersionVector;

/// A batch of ops in an order that respects causality. Encoded compactly (see `wire`).
#[derive(Clone, Debug, PartialEq)]
pub struct OpsBatch<P>(pub Vec<Arc<Op<P>>>);

impl<P> OpsBatch<P> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a writer publishes: a batch of its ops and, for members of the network, its own
/// record re-issued at publishing (its report). Encoded with the batch's id table, the
/// report's applied vector as the entries that differ from the writer's last op in the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedOps<P> {
    pub ops: OpsBatch<P>,
    pub report: Option<Arc<MemberRecord>>,
}

/// Member records, encoded compactly (see `wire`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Records(pub Vec<Arc<MemberRecord>>);

/// A request for whatever the receiver has that the sender lacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AntiEntropyDigest {
    /// The sender's applied vector.
    pub applied: VersionVector,
    /// (member, record version) of every record the sender holds; empty when the digest
    /// carries their `fingerprint` instead.
    pub members: Vec<(NodeId, RecordVersion)>,
    /// The compact form: [`NetworkMap::fingerprint`](crate::network_map::NetworkMap::fingerprint)
    /// of the records the sender holds, in place of `members`. A receiver whose records
    /// have another fingerprint answers an initiator with its whole list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<u64>,
    /// Whether the receiver should answer with its own digest when it is behind.
    pub initiator: bool,
    /// The epoch of the sender's installed view: a receiver with a newer one sends it.
    #[serde(default)]
    pub view_epoch: u64,
}

/// The answer to a digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Repair<S: StateMachine> {
    pub ops: OpsBatch<S::Op>,
    pub records: Records,
    /// More ops were left out to bound the message; ask again.
    pub more: bool,
}

/// Everything replicas send each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<S: StateMachine> {
    Ops(PublishedOps<S::Op>),
    Status(Records),
    Digest(AntiEntropyDigest),
    Repair(Repair<S>),
    Stale {
        snapshot_point: VersionVector,
    },
    JoinRequest(JoinRequest),
    JoinResponse(Box<JoinResponse<S>>),
    /// Agreeing the next membership view (`network_map::view`).
    View(ViewMessage),
    /// An observer's probe of a member it watches (`network_map::probes`).
    Probe {
        round: u64,
    },
    /// The answer to a probe, at once, with its round.
    ProbeAck {
        round: u64,
    },
    /// Aggregating the snapshot point (`network_map::aggregation`): contributions, group
    /// minimums and snapshot points, on direct streams.
    Aggregate(AggregateMessage),
}

/// The kinds of traffic (see [`Message::kind`]; `report`: a record riding on a published
/// batch) that are status and membership rather than ops: what a status share counts.
pub const STATUS_KINDS: [&str; 8] = [
    "status",
    "report",
    "aggregate",
    "digest",
    "stale",
    "view",
    "probe",
    "probe_ack",
];

impl<S: StateMachine> Message<S> {
    /// A short name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ops(_) => "ops",
            Message::Status(_) => "status",
            Message::Digest(_) => "digest",
            Message::Repair(_) => "repair",
            Message::Stale { .. } => "stale",
            Message::JoinRequest(_) => "join_request",
            Message::JoinResponse(_) => "join_response",
            Message::View(_) => "view",
            Message::Probe { .. } => "probe",
            Message::ProbeAck { .. } => "probe_ack",
            Message::Aggregate(_) => "aggregate",
        }
    }
}

/// Timing and size rules of the gossip protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipConfig {
    /// How long a writer collects its new ops before publishing them as one batch.
    pub op_batch_delay: Duration,
    /// Most ops in one published batch.
    pub max_batch_ops: usize,
    /// Least time between two status reports of one node (see `status_interval_for`).
    pub status_interval: Duration,
    /// Added to the status interval per member in good standing, so that the status
    /// traffic each node receives stays bounded as the network grows (every record version
    /// reaches every member).
    pub status_interval_per_member: Duration,
    /// Most time between two reports of a node's own record.
    pub heartbeat_interval: Duration,
    /// After a published batch carried a node's report, how long its next report waits for
    /// another batch before it goes out in status: a node that writes steadily reports
    /// only on its batches.
    pub batch_report_hold: Duration,
    /// Number of status peers chosen at random.
    pub status_fanout: usize,
    /// Most status peers (random plus those that report to us).
    pub max_status_peers: usize,
    /// How often a node sends its digest to a random member.
    pub anti_entropy_interval: Duration,
    /// How long ops may wait for missing deps before their sender is asked for a repair.
    pub gap_pull_delay: Duration,
    /// Most ops in one repair.
    pub max_repair_ops: usize,
    /// How long a joiner first waits for its sponsor before asking again; the wait doubles
    /// on every retry up to `join_retry_max`. Kept short because the sponsor has already
    /// registered the joiner, and its join cut holds back every snapshot point until it
    /// reports.
    pub join_retry: Duration,
    pub join_retry_max: Duration,
    /// Unanswered requests after which a joiner asks its next bootstrap peer (with a new
    /// incarnation, since the silent one may have registered it).
    pub join_attempts_per_sponsor: u32,
    /// Longest a joiner waits for a state offered as a snapshot to be fetched and
    /// installed before it asks its sponsor again.
    #[serde(default = "default_state_transfer_timeout")]
    pub state_transfer_timeout: Duration,
    /// Longest a leaving node waits for its own ops to be inside its snapshot point; past
    /// it the leave fails and the node stays a member (it never leaves writes behind).
    pub leave_drain_timeout: Duration,
    /// How long a node keeps each of its own ops after it became stable here, to republish
    /// it after a rejoin through nodes that lack it (see `ops_log::OwnOps`).
    #[serde(default = "default_own_ops_retention")]
    pub own_ops_retention: Duration,
    /// Failure detection: a member that answered none of its observers' probes for this
    /// long is suspected by them (six probes at the default `probe_interval`); a suspect
    /// is evicted only once no new report (and no message) of it has arrived for this long
    /// either. Also how long a member may be silent before the majority rules count it as
    /// not heard.
    pub suspect_after: Duration,
    /// How long a suspicion may stand unrefuted before the suspect is evicted.
    pub suspicion_timeout: Duration,
    /// How often a node looks for silent members.
    pub failure_check_interval: Duration,
    /// How many rings the monitoring overlay has: each member watches (probes) at most
    /// this many others, and is watched by as many (`network_map::probes`).
    #[serde(default = "default_monitor_rings")]
    pub monitor_rings: usize,
    /// How often an observer probes each member it watches; a member that answered none
    /// of the probes of `suspect_after` is suspected (a window an observer that hears
    /// every answer late stretches, `network_map::probes`).
    #[serde(default = "default_probe_interval")]
    pub probe_interval: Duration,
    /// How long a proposer gives one ballot of a view change before it tries a higher one,
    /// and how long each voter waits after the one before it in id order before it
    /// proposes a change itself (`network_map::view_policy`).
    #[serde(default = "default_view_ballot_patience")]
    pub view_ballot_patience: Duration,
    /// Ops that may wait for their deps at once, and how far beyond its origin's applied
    /// seq one may be; the causal buffer refuses others (anti-entropy brings them back
    /// once their deps are in), so a peer sending ops whose deps never come cannot fill
    /// memory.
    #[serde(default = "default_buffer_limits")]
    pub causal_buffer: crate::ops_log::BufferLimits,
}

impl GossipConfig {
    /// The status interval in a network of `members` members in good standing:
    /// `max(status_interval, members × status_interval_per_member)`.
    pub fn status_interval_for(&self, members: usize) -> Duration {
        self.status_interval
            .max(self.status_interval_per_member * members as u32)
    }
}

fn default_buffer_limits() -> crate::ops_log::BufferLimits {
    crate::ops_log::BufferLimits::default()
}

fn default_own_ops_retention() -> Duration {
    Duration::from_secs(600)
}

fn default_monitor_rings() -> usize {
    4
}

fn default_probe_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_view_ballot_patience() -> Duration {
    Duration::from_secs(1)
}

fn default_state_transfer_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            op_batch_delay: Duration::from_millis(5),
            max_batch_ops: 256,
            status_interval: Duration::from_millis(7),
            status_interval_per_member: Duration::from_micros(50),
            heartbeat_interval: Duration::from_secs(1),
            batch_report_hold: Duration::from_millis(30),
            status_fanout: 6,
            max_status_peers: 12,
            anti_entropy_interval: Duration::from_secs(1),
            gap_pull_delay: Duration::from_millis(100),
            max_repair_ops: 2048,
            join_retry: Duration::from_millis(250),
            join_retry_max: Duration::from_secs(2),
            join_attempts_per_sponsor: 3,
            state_transfer_timeout: default_state_transfer_timeout(),
            view_ballot_patience: default_view_ballot_patience(),
            leave_drain_timeout: Duration::from_secs(5),
            own_ops_retention: default_own_ops_retention(),
            suspect_after: Duration::from_secs(3),
            suspicion_timeout: Duration::from_secs(3),
            failure_check_interval: Duration::from_millis(250),
            monitor_rings: default_monitor_rings(),
            probe_interval: default_probe_interval(),
            causal_buffer: crate::ops_log::BufferLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests;
