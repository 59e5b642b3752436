//! The node's Prometheus metrics (`GET /metrics`), in the OpenMetrics text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-message-kind counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Labels of why ops were rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type IntGauge = Gauge<i64, std::sync::atomic::AtomicI64>;
type Count = Counter<u64, AtomicU64>;

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    pub applied_ops: IntGauge,
    pub snapshot_point_ops: IntGauge,
    pub snapshot_point_lag_ops: IntGauge,
    pub members: IntGauge,
    pub evicted_members: IntGauge,
    pub incarnation: IntGauge,
    pub connected_peers: IntGauge,
    pub stale_notices: IntGauge,
    pub evictions_issued: IntGauge,
    pub rejoins: IntGauge,
    pub sponsorships_declined: IntGauge,
    pub leaves_failed: IntGauge,
    pub own_seq_rollbacks: IntGauge,
    pub ops_refused: IntGauge,
    pub ops_buffered: IntGauge,
    pub messages_in: Family<KindLabel, Count>,
    pub messages_out: Family<KindLabel, Count>,
    pub bytes_in: Family<KindLabel, Count>,
    pub bytes_out: Family<KindLabel, Count>,
    pub malformed_messages: Count,
    pub ops_rejected: Family<ReasonLabel, IntGauge>,
    pub peer_offences: Family<KindLabel, Count>,
    pub peers_blocked: Count,
    pub unresolved_batches: Count,
    pub publish_failures: Count,
    pub direct_dropped: Count,
    pub transfer: super::transfer::TransferMetrics,
    pub snapshots_taken: Count,
    pub snapshots_pruned: Count,
    pub state_entries_folded: Count,
    pub state_entries_written_whole: Count,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("tidemark"),
            applied_ops: Default::default(),
            snapshot_point_ops: Default::default(),
            snapshot_point_lag_ops: Default::default(),
            members: Default::default(),
            evicted_members: Default::default(),
            incarnation: Default::default(),
            connected_peers: Default::default(),
            stale_notices: Default::default(),
            evictions_issued: Default::default(),
            rejoins: Default::default(),
            sponsorships_declined: Default::default(),
            leaves_failed: Default::default(),
            own_seq_rollbacks: Default::default(),
            ops_refused: Default::default(),
            ops_buffered: Default::default(),
            messages_in: Default::default(),
            messages_out: Default::default(),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
            malformed_messages: Default::default(),
            ops_rejected: Default::default(),
            peer_offences: Default::default(),
            peers_blocked: Default::default(),
            unresolved_batches: Default::default(),
            publish_failures: Default::default(),
            direct_dropped: Default::default(),
            transfer: Default::default(),
            snapshots_taken: Default::default(),
            snapshots_pruned: Default::default(),
            state_entries_folded: Default::default(),
            state_entries_written_whole: Default::default(),
        };
        let t = &m.transfer;
        for (name, help, counter) in [
            (
                "transfer_chunks_served",
                "Snapshot chunks this node served to peers",
                &t.chunks_served,
            ),
            (
                "transfer_chunks_fetched",
                "Verified snapshot chunks this node fetched",
                &t.chunks_fetched,
            ),
            (
                "transfer_chunks_refetched",
                "Snapshot chunks asked again after a bad, late or failed answer",
                &t.chunks_refetched,
            ),
            (
                "transfer_bad_chunks",
                "Snapshot chunks that failed verification",
                &t.bad_chunks,
            ),
            (
                "transfer_bytes_fetched",
                "Bytes of verified snapshot chunks fetched",
                &t.bytes_fetched,
            ),
            (
                "snapshots_taken",
                "Snapshot files this node wrote (on request or on schedule)",
                &m.snapshots_taken,
            ),
            (
                "snapshots_pruned",
                "Snapshot files removed by retention",
                &m.snapshots_pruned,
            ),
            (
                "state_entries_folded",
                "Stable-state entries a checkpoint rewrote because newly stable ops touched them",
                &m.state_entries_folded,
            ),
            (
                "state_entries_written_whole",
                "Stable-state entries written by checkpoints that stored the whole state \
                 (an inline grant, a restore, or ops missing from the store)",
                &m.state_entries_written_whole,
            ),
        ] {
            m.registry.register(name, help, counter.clone());
        }
        let registry = &mut m.registry;
        registry.register(
            "applied_ops",
            "Ops applied by this node",
            m.applied_ops.clone(),
        );
        registry.register(
            "snapshot_point_ops",
            "Ops inside this node's snapshot point",
            m.snapshot_point_ops.clone(),
        );
        registry.register(
            "snapshot_point_lag_ops",
            "Ops applied here but not yet inside the snapshot point",
            m.snapshot_point_lag_ops.clone(),
        );
        registry.register(
            "members",
            "Members in good standing in this node's map",
            m.members.clone(),
        );
        registry.register(
            "evicted_members",
            "Members this node's map holds as evicted",
            m.evicted_members.clone(),
        );
        registry.register(
            "incarnation",
            "This node's incarnation",
            m.incarnation.clone(),
        );
        registry.register(
            "connected_peers",
            "Peers with an open connection",
            m.connected_peers.clone(),
        );
        registry.register(
            "stale_notices",
            "Times this node was told it is stale (below a peer's snapshot point)",
            m.stale_notices.clone(),
        );
        registry.register(
            "evictions_issued",
            "Members this node evicted after an unrefuted suspicion",
            m.evictions_issued.clone(),
        );
        registry.register(
            "rejoins",
            "Times this node rejoined (evicted, stale or restarted)",
            m.rejoins.clone(),
        );
        registry.register(
            "sponsorships_declined",
            "Join requests this node declined to sponsor: it heard from too few members, or \
             had joined too recently to know who is alive",
            m.sponsorships_declined.clone(),
        );
        registry.register(
            "leaves_failed",
            "Graceful leaves that gave up because this node's ops did not become stable in \
             time (it stayed a member)",
            m.leaves_failed.clone(),
        );
        registry.register(
            "own_seq_rollbacks",
            "Times the network held an op of this node above the highest its data dir \
             stored (a data dir restored from an older copy)",
            m.own_seq_rollbacks.clone(),
        );
        registry.register(
            "ops_refused",
            "Received ops refused by the causal buffer's limits (too far ahead of their \
             origin, or the buffer full)",
            m.ops_refused.clone(),
        );
        registry.register(
            "ops_buffered",
            "Received ops waiting for their causal dependencies",
            m.ops_buffered.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received, by kind",
            m.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages sent or published, by kind",
            m.messages_out.clone(),
        );
        registry.register(
            "bytes_in",
            "Encoded message bytes received, by kind",
            m.bytes_in.clone(),
        );
        registry.register(
            "bytes_out",
            "Encoded message bytes sent (a publish counts once), by kind",
            m.bytes_out.clone(),
        );
        registry.register(
            "malformed_messages",
            "Messages dropped because they could not be decoded",
            m.malformed_messages.clone(),
        );
        registry.register(
            "ops_rejected",
            "Received ops rejected, by reason: unsigned; bad_signature (forged or mutated: \
             not signed by their origin over their content); replayed (already applied or \
             compacted: a replay, or a benign duplicate of overlapping repairs); invalid \
             (malformed seq, deps or Lamport time); not_member (their origin is not and \
             never was a member as this node knows it); not_writer (their origin is not on \
             the writers list)",
            m.ops_rejected.clone(),
        );
        registry.register(
            "peer_offences",
            "Offences counted against peers, by kind: malformed messages, messages with \
             ops not signed by their origin (bad_signature), messages with ops the causal \
             buffer refused",
            m.peer_offences.clone(),
        );
        registry.register(
            "peers_blocked",
            "Times a peer was disconnected and blocked for too many offences",
            m.peers_blocked.clone(),
        );
        registry.register(
            "unresolved_batches",
            "Published batches dropped because they refer to a node not known here yet (anti-entropy delivers their ops)",
            m.unresolved_batches.clone(),
        );
        registry.register(
            "publish_failures",
            "Publishes gossipsub refused (pulls deliver those ops instead)",
            m.publish_failures.clone(),
        );
        registry.register(
            "direct_dropped",
            "Direct messages dropped: their peer's queue was full, or its stream failed",
            m.direct_dropped.clone(),
        );
        m
    }

    pub fn count_in(&self, kind: &'static str, bytes: usize) {
        self.count_in_with_report(kind, bytes, 0);
    }

    pub fn count_out(&self, kind: &'static str, bytes: usize) {
        self.count_out_with_report(kind, bytes, 0);
    }

    /// Counts a received message of which `report_bytes` are the publisher's report
    /// riding on a published batch: those are counted as kind `report`, the rest as `kind`.
    pub fn count_in_with_report(&self, kind: &'static str, bytes: usize, report_bytes: usize) {
        count(&self.messages_in, &self.bytes_in, kind, bytes, report_bytes);
    }

    /// Counts a sent message; see [`Metrics::count_in_with_report`].
    pub fn count_out_with_report(&self, kind: &'static str, bytes: usize, report_bytes: usize) {
        count(
            &self.messages_out,
            &self.bytes_out,
            kind,
            bytes,
            report_bytes,
        );
    }

    /// The registry, for metrics of other crates (libp2p's bandwidth) to register into.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Bytes received and sent, summed over `kinds` (for benches and the demo).
    pub fn bytes_total(&self, kinds: &[&'static str]) -> (u64, u64) {
        kinds.iter().fold((0, 0), |(i, o), kind| {
            let label = KindLabel { kind };
            (
                i + self.bytes_in.get_or_create(&label).get(),
                o + self.bytes_out.get_or_create(&label).get(),
            )
        })
    }

    /// Messages received and sent, summed over `kinds`.
    pub fn messages_total(&self, kinds: &[&'static str]) -> (u64, u64) {
        kinds.iter().fold((0, 0), |(i, o), kind| {
            let label = KindLabel { kind };
            (
                i + self.messages_in.get_or_create(&label).get(),
                o + self.messages_out.get_or_create(&label).get(),
            )
        })
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

fn count(
    messages: &Family<KindLabel, Count>,
    bytes_by_kind: &Family<KindLabel, Count>,
    kind: &'static str,
    bytes: usize,
    report_bytes: usize,
) {
    messages.get_or_create(&KindLabel { kind }).inc();
    bytes_by_kind
        .get_or_create(&KindLabel { kind })
        .inc_by((bytes - report_bytes) as u64);
    if report_bytes > 0 {
        bytes_by_kind
            .get_or_create(&KindLabel { kind: "report" })
            .inc_by(report_bytes as u64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
