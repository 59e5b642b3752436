//! The node's Prometheus metrics (`GET /metrics`), in the OpenMetrics text format.
//!
//! Conventions: every metric of the node is under the prefix `tidemark_`; a running total
//! is a counter, exposed with the suffix `_total`, and a total of bytes ends in
//! `_bytes_total`; a gauge is a value now. `tidemark_build_info{version}` is 1. The process
//! metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`) keep the names every Prometheus client gives them, without the
//! prefix; they are read from `/proc/self` at each scrape, on Linux only.

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

/// Labels of per-message-kind counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Labels of storage commits: `synced` (on disk when it returns) or `unsynced`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurabilityLabel {
    pub durability: &'static str,
}

/// Labels of why ops were rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The label of `tidemark_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: &'static str,
}

pub type IntGauge = Gauge<i64, std::sync::atomic::AtomicI64>;

/// Raises a gauge for as long as it lives (work in progress).
pub struct Raised<'a>(&'a IntGauge);

impl<'a> Raised<'a> {
    pub fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
type Count = Counter<u64, AtomicU64>;

/// Raises `counter` to `total`, a running total kept elsewhere (the replica's stats); never
/// lowers it.
pub fn count_up_to(counter: &Count, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

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
    /// 1 while the data dir's disk is full and writes are refused.
    pub disk_full: IntGauge,
    pub stale_notices: Count,
    pub evictions_issued: Count,
    pub suspicions_raised: Count,
    pub refutations: Count,
    pub rejoins: Count,
    pub stale_grants: Count,
    pub ops_kept_while_fetching: Count,
    pub sponsorships_declined: Count,
    pub leaves_failed: Count,
    pub own_seq_rollbacks: Count,
    pub ops_refused: Count,
    pub ops_buffered: IntGauge,
    /// 1 while this member floods its own heartbeat: the aggregation does not cover it.
    pub heartbeat_flooding: IntGauge,
    pub state_entries_in_memory: IntGauge,
    pub state_read_failures: IntGauge,
    pub messages_in: Family<KindLabel, Count>,
    pub messages_out: Family<KindLabel, Count>,
    pub bytes_in: Family<KindLabel, Count>,
    pub bytes_out: Family<KindLabel, Count>,
    pub malformed_messages: Count,
    pub ops_rejected: Family<ReasonLabel, Count>,
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
    pub storage_commits: Family<DurabilityLabel, Count>,
    pub ops_stored: Count,
    pub build_info: Family<BuildLabel, IntGauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            applied_ops: Default::default(),
            snapshot_point_ops: Default::default(),
            snapshot_point_lag_ops: Default::default(),
            members: Default::default(),
            evicted_members: Default::default(),
            incarnation: Default::default(),
            connected_peers: Default::default(),
            disk_full: Default::default(),
            stale_notices: Default::default(),
            evictions_issued: Default::default(),
            suspicions_raised: Default::default(),
            refutations: Default::default(),
            rejoins: Default::default(),
            stale_grants: Default::default(),
            ops_kept_while_fetching: Default::default(),
            sponsorships_declined: Default::default(),
            leaves_failed: Default::default(),
            own_seq_rollbacks: Default::default(),
            ops_refused: Default::default(),
            ops_buffered: Default::default(),
            heartbeat_flooding: Default::default(),
            state_entries_in_memory: Default::default(),
            state_read_failures: Default::default(),
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
            storage_commits: Default::default(),
            ops_stored: Default::default(),
            build_info: Default::default(),
        };
        m.build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        m.registry.register_collector(Box::new(ProcessCollector));
        let registry = m.registry.sub_registry_with_prefix("tidemark");
        registry.register(
            "build_info",
            "The build of this node: always 1, labelled with its version",
            m.build_info.clone(),
        );
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
                "transfer_chunks_resumed",
                "Snapshot chunks a transfer resumed after a restart kept instead of fetching",
                &t.chunks_resumed,
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
                "ops_stored",
                "Applied ops written to the database as ops (those a checkpoint made stable \
                 before they were written are folded into the state from memory instead)",
                &m.ops_stored,
            ),
            (
                "state_entries_written_whole",
                "Stable-state entries written by checkpoints that stored the whole state \
                 (an inline grant, a restore, or ops missing from the store)",
                &m.state_entries_written_whole,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register_with_unit(
            "transfer_fetched",
            "Bytes of verified snapshot chunks fetched",
            Unit::Bytes,
            t.bytes_fetched.clone(),
        );
        registry.register(
            "transfer_chunks_kept",
            "Chunks of the snapshot being fetched that are staged and synced: a restart \
             resumes after them",
            t.chunks_kept.clone(),
        );
        registry.register(
            "transfers_in_progress",
            "Snapshots this node is fetching now, to join (0 or 1)",
            t.in_progress.clone(),
        );
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
            "disk_full",
            "1 while the data dir's disk is full: writes are refused (507) and the node is silent",
            m.disk_full.clone(),
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
            "suspicions_raised",
            "Members this node suspected: none of its probes of the last `suspect_after` (stretched when answers come late) was answered",
            m.suspicions_raised.clone(),
        );
        registry.register(
            "refutations",
            "Suspicions of this node that it refuted by re-issuing its record",
            m.refutations.clone(),
        );
        registry.register(
            "rejoins",
            "Times this node rejoined (evicted, stale or restarted)",
            m.rejoins.clone(),
        );
        registry.register(
            "stale_grants",
            "Grants this joiner ignored: they registered an incarnation it had given up on",
            m.stale_grants.clone(),
        );
        registry.register(
            "ops_kept_while_fetching",
            "Ops published while this joiner fetched its state, kept to be applied once it \
             is installed",
            m.ops_kept_while_fetching.clone(),
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
            "heartbeat_flooding",
            "1 while this member floods its own heartbeat to every member, because the \
             aggregation's liveness does not cover it",
            m.heartbeat_flooding.clone(),
        );
        registry.register(
            "state_entries_in_memory",
            "Entries of the applied and stable states held in memory: those the database \
             does not hold yet (all of them until the first checkpoint)",
            m.state_entries_in_memory.clone(),
        );
        registry.register(
            "state_read_failures",
            "Reads of the state from the database that failed (each is logged)",
            m.state_read_failures.clone(),
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
        registry.register_with_unit(
            "received",
            "Encoded message bytes received, by kind",
            Unit::Bytes,
            m.bytes_in.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Encoded message bytes sent (a publish counts once), by kind",
            Unit::Bytes,
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
        // every reason is exported from the start, at 0 (`Refused` is `ops_refused`)
        for reason in crate::replica::RejectReason::ALL {
            if reason != crate::replica::RejectReason::Refused {
                let _ = m.ops_rejected.get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                });
            }
        }
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
            "storage_commits",
            "Database transactions committed, by durability: `synced` (own new ops, votes, a \
             new incarnation or phase) or `unsynced` (checkpoints, and received ops, which \
             wait for the next write that must happen)",
            m.storage_commits.clone(),
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

    /// Registers the snapshot store's gauge of files being written (the store is opened
    /// before the metrics exist).
    pub fn register_files_being_written(&mut self, gauge: IntGauge) {
        self.registry_mut().register(
            "snapshot_files_being_written",
            "Snapshot files this node is writing now (exports, scheduled snapshots, states offered to joiners)",
            gauge,
        );
    }

    /// A registry under the prefix `tidemark`, for metrics of other crates (libp2p's
    /// bandwidth) to register into.
    pub fn registry_mut(&mut self) -> &mut Registry {
        self.registry.sub_registry_with_prefix("tidemark")
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

/// The process metrics, read from `/proc/self` at each scrape (Linux; elsewhere, or when a
/// file cannot be read, the metric is left out).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(seconds) = process_cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok();
        if let Some(bytes) = status.as_deref().and_then(resident_bytes) {
            let gauge = ConstGauge::new(bytes);
            gauge.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                gauge.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let gauge = ConstGauge::new(fds.count() as i64);
            gauge.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// User plus system CPU seconds this process has used, from `/proc/self/stat` (Linux;
/// `None` elsewhere or when it cannot be read): what `process_cpu_seconds_total` exports.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds(&stat)
}

/// User plus system CPU seconds from the text of `/proc/self/stat`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // the command name, in parentheses, may hold spaces: count fields after its end
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // fields 3.. of proc(5); utime and stime are fields 14 and 15
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second())
}

/// The kernel's clock ticks per second (`USER_HZ`), the unit of `/proc/self/stat` times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// `VmRSS` of the text of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_read_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        let ticks = clock_ticks_per_second();
        assert_eq!(cpu_seconds(stat), Some(300.0 / ticks));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(cpu_seconds("1 (x) S 1"), None);
    }

    #[test]
    fn resident_bytes_come_from_vmrss_in_kib() {
        let status = "Name:\ttidemark\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n";
        assert_eq!(resident_bytes(status), Some(8192 * 1024));
        assert_eq!(resident_bytes("Name: x\n"), None);
    }

    #[test]
    fn every_running_total_is_a_counter_and_byte_totals_end_in_bytes_total() {
        let m = Metrics::new();
        count_up_to(&m.rejoins, 3);
        count_up_to(&m.rejoins, 2);
        m.count_in("ops", 10);
        m.ops_rejected
            .get_or_create(&ReasonLabel { reason: "unsigned" })
            .inc();
        let text = m.encode();
        for line in [
            "# TYPE tidemark_rejoins counter",
            "tidemark_rejoins_total 3",
            "tidemark_ops_rejected_total{reason=\"unsigned\"} 1",
            "tidemark_received_bytes_total{kind=\"ops\"} 10",
            "tidemark_messages_in_total{kind=\"ops\"} 1",
            "tidemark_transfer_fetched_bytes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let build = format!(
            "tidemark_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{build} in\n{text}");
    }
}
