//! The result of a run: the SPEC §7 JSON object, a human summary, the CSV time series and
//! the convergence plot.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::config::SimConfig;
use crate::metrics::{round3, FaultStats, Latencies, Percentiles, RecordMerges, Sample};
use crate::sim::ReportInputs;

/// The JSON object printed by `--json`. Field order is fixed; only `wall_s` varies between
/// runs of the same seed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub ops: u64,
    pub writers: usize,
    pub joins: usize,
    pub leaves: usize,
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub latency_ms: [f64; 2],
    /// What uplinks and CPUs charged (all zero with `--free-network`).
    pub cost_model: CostReport,
    /// The bug planted in every replica (`--plant`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planted: Option<tidemark::replica::PlantedBug>,
    pub violations: u64,
    /// Violations of the safety invariants I1–I5 (all but L1 and the budget).
    pub safety_violations: u64,
    pub violations_by_invariant: BTreeMap<String, u64>,
    pub violation_samples: Vec<String>,
    /// The run was stopped for exceeding its event or wall-clock budget.
    pub budget_exceeded: bool,
    pub converged: bool,
    pub liveness_failure: bool,
    /// Why L1 failed, read off the end state (absent when it held).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_cause: Option<crate::invariants::liveness::Cause>,
    /// From the last write until every member's snapshot point held every op.
    pub convergence_ms: Option<f64>,
    /// From an op's creation until every member has applied it.
    pub dissemination_ms: Percentiles,
    /// From an op's creation until it is inside every member's snapshot point.
    pub sp_lag_ms: Percentiles,
    /// `sp_lag_ms.p50 / dissemination_ms.p50`.
    pub sp_lag_ratio: f64,
    /// Per (member, op) pair: from the op's creation until that member applied it.
    pub dissemination_node_op_ms: Percentiles,
    /// Per (member, op) pair: from the op's creation until it was inside that member's
    /// snapshot point.
    pub sp_lag_node_op_ms: Percentiles,
    /// `sp_lag_node_op_ms.p50 / dissemination_node_op_ms.p50`.
    pub sp_lag_ratio_node_op: f64,
    /// With `--aggregation`: from an op's creation until it is inside every member's
    /// aggregated snapshot point, and its p50 over `dissemination_ms.p50`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregated_sp_lag_ms: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregated_sp_lag_ratio: Option<f64>,
    pub messages_per_op: f64,
    pub bytes_per_op: f64,
    pub bytes_by_kind: BTreeMap<String, u64>,
    pub messages_by_kind: BTreeMap<String, u64>,
    /// Bytes of status and membership (status reports and the reports riding on published
    /// ops, aggregation, digests, stale notices, views, probes and their acks) over all
    /// bytes sent.
    pub status_share: f64,
    /// Messages a node handles (sends plus receives) per simulated second, all kinds,
    /// averaged over the nodes of the run (founders and joiners).
    pub msgs_per_node_s: f64,
    /// Most messages that waited for one node's CPU at once.
    pub longest_inbox: usize,
    /// Monitoring messages (probes and their acks) a node handles per simulated second,
    /// sent plus received, averaged over the nodes of the run (founders and joiners).
    pub monitoring_msgs_per_member_s: f64,
    /// The same for status messages (reports, heartbeats among them, and their relays).
    pub status_msgs_per_member_s: f64,
    pub distinct_cuts: usize,
    /// Member records received, summed over nodes, by outcome.
    pub record_merges: RecordMerges,
    /// The fault phase's settings (absent without faults) and what happened.
    pub fault_config: Option<crate::config::FaultConfig>,
    pub faults: FaultStats,
    /// Per member and crash: from the crash until the member evicted the crashed node
    /// (its snapshot point no longer waits for it).
    pub crash_to_drop_ms: Percentiles,
    /// Per member and crash: from the crash until the member's snapshot point passed what
    /// the crashed member had applied (counted when writes go on past it).
    pub crash_to_sp_moves_ms: Percentiles,
    /// Per member and crash: from the member's eviction of the crashed node until its
    /// snapshot point moved again (what the aggregation adds to the detection).
    pub eviction_to_sp_moves_ms: Percentiles,
    /// Per eviction of a running node: from when it could learn it (the eviction, or the
    /// heal of the partition that hid it) until it noticed and started to rejoin.
    pub stale_to_rejoin_ms: Percentiles,
    /// Every excuse the oracle granted instead of reporting a violation.
    pub excuses: crate::invariants::safety::ExcuseCounts,
    pub events: u64,
    pub sim_time_s: f64,
    pub wall_s: f64,
    /// Simulated seconds per wall-clock second (varies between runs, like `wall_s`).
    pub sim_speed: f64,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// The cost model as the report prints it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CostReport {
    pub uplink_mbit: f64,
    pub cpu_per_msg_us: f64,
    pub cpu_per_kib_us: f64,
}

impl From<&crate::costs::CostModel> for CostReport {
    fn from(c: &crate::costs::CostModel) -> Self {
        CostReport {
            uplink_mbit: round3(c.uplink_bytes_per_s as f64 * 8.0 / 1e6),
            cpu_per_msg_us: round3(c.cpu_per_message.as_secs_f64() * 1e6),
            cpu_per_kib_us: round3(c.cpu_per_kib.as_secs_f64() * 1e6),
        }
    }
}

/// The kinds of traffic that are status and membership rather than ops (`status_share`).
pub use tidemark::gossip::STATUS_KINDS;

/// The ratio of two p50s, 0 when the denominator is.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        round3(a / b)
    } else {
        0.0
    }
}

/// Messages of `kinds` handled (sent plus received) per node and simulated second.
fn per_member_s(r: &ReportInputs, config: &SimConfig, kinds: &[&str]) -> f64 {
    let sent: u64 = kinds
        .iter()
        .filter_map(|k| r.traffic.by_kind.get(*k))
        .map(|v| v.0)
        .sum();
    let nodes = (config.nodes + config.joins).max(1) as f64;
    if r.sim_time_s <= 0.0 {
        return 0.0;
    }
    round3(2.0 * sent as f64 / nodes / r.sim_time_s)
}

impl Report {
    pub fn new(config: &SimConfig, r: ReportInputs) -> Self {
        let dissemination = r.dissemination.summary();
        let sp_lag = r.sp_lag.summary();
        let ops = r.written.max(1) as f64;
        let monitoring = per_member_s(&r, config, &["probe", "probe_ack"]);
        let status = per_member_s(&r, config, &["status"]);
        let all_kinds: Vec<&str> = r.traffic.by_kind.keys().copied().collect();
        let msgs_per_node_s = per_member_s(&r, config, &all_kinds);
        let status_bytes: u64 = STATUS_KINDS
            .iter()
            .filter_map(|k| r.traffic.by_kind.get(*k))
            .map(|v| v.1)
            .sum();
        let dissemination_node_op = r.dissemination_node_op.summary();
        let sp_lag_node_op = r.sp_lag_node_op.summary();
        Report {
            seed: config.seed,
            nodes: config.nodes,
            ops: r.written,
            writers: config.writers,
            joins: config.joins,
            leaves: config.leaves,
            loss: config.loss,
            duplicate: config.duplicate,
            reorder: config.reorder,
            latency_ms: [
                config.latency_min.as_secs_f64() * 1e3,
                config.latency_max.as_secs_f64() * 1e3,
            ],
            cost_model: CostReport::from(&config.costs),
            planted: config.planted,
            violations: r.violations.count,
            safety_violations: r.violations.safety(),
            budget_exceeded: r
                .violations
                .by_invariant
                .contains_key(crate::invariants::BUDGET),
            violations_by_invariant: r
                .violations
                .by_invariant
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            violation_samples: r.violations.samples,
            converged: r.converged,
            liveness_failure: r.liveness_failure,
            liveness_cause: r.liveness_cause,
            convergence_ms: r.convergence_ms,
            sp_lag_ratio: ratio(sp_lag.p50, dissemination.p50),
            sp_lag_ratio_node_op: ratio(sp_lag_node_op.p50, dissemination_node_op.p50),
            aggregated_sp_lag_ms: r.aggregated_sp_lag.as_ref().map(Latencies::summary),
            aggregated_sp_lag_ratio: r
                .aggregated_sp_lag
                .as_ref()
                .map(|l| ratio(l.summary().p50, dissemination.p50)),
            dissemination_node_op_ms: dissemination_node_op,
            sp_lag_node_op_ms: sp_lag_node_op,
            dissemination_ms: dissemination,
            sp_lag_ms: sp_lag,
            messages_per_op: round3(r.traffic.messages() as f64 / ops),
            bytes_per_op: round3(r.traffic.bytes() as f64 / ops),
            bytes_by_kind: r
                .traffic
                .by_kind
                .iter()
                .map(|(k, v)| (k.to_string(), v.1))
                .collect(),
            messages_by_kind: r
                .traffic
                .by_kind
                .iter()
                .map(|(k, v)| (k.to_string(), v.0))
                .collect(),
            status_share: if r.traffic.bytes() > 0 {
                (status_bytes as f64 / r.traffic.bytes() as f64 * 1e4).round() / 1e4
            } else {
                0.0
            },
            msgs_per_node_s,
            longest_inbox: r.longest_inbox,
            monitoring_msgs_per_member_s: monitoring,
            status_msgs_per_member_s: status,
            distinct_cuts: r.cuts,
            record_merges: r.record_merges,
            fault_config: config.faults.any().then(|| config.faults.clone()),
            faults: r.faults,
            crash_to_drop_ms: r.crash_to_drop.summary(),
            crash_to_sp_moves_ms: r.crash_to_sp_moves.summary(),
            eviction_to_sp_moves_ms: r.eviction_to_sp_moves.summary(),
            stale_to_rejoin_ms: r.stale_to_rejoin.summary(),
            excuses: r.excuses,
            events: r.events,
            sim_time_s: r.sim_time_s,
            wall_s: round3(r.wall_s),
            sim_speed: if r.wall_s > 0.0 {
                round3(r.sim_time_s / r.wall_s)
            } else {
                0.0
            },
            samples: r.samples,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let verdict = if self.violations == 0 { "ok" } else { "FAILED" };
        let mut s = format!(
            "tidemark-sim seed {} · {} nodes (+{} joins) · {} ops by {} writers · loss {}\n\
             invariants: {} ({} violations), converged: {}{}\n\
             dissemination p50 {:.1} ms p99 {:.1} ms · snapshot-point lag p50 {:.1} ms p99 {:.1} ms (ratio {:.2})\n\
             per (node, op): dissemination p50 {:.1} ms · snapshot-point lag p50 {:.1} ms (ratio {:.2})\n\
             {:.1} messages/op, {:.0} bytes/op, {:.1}% status · {:.0} messages per node-second · {} events, {:.1} s simulated in {:.2} s\n",
            self.seed,
            self.nodes,
            self.joins,
            self.ops,
            self.writers,
            self.loss,
            verdict,
            self.violations,
            self.converged,
            self.convergence_ms
                .map(|c| format!(" ({c:.0} ms after the last write)"))
                .unwrap_or_default(),
            self.dissemination_ms.p50,
            self.dissemination_ms.p99,
            self.sp_lag_ms.p50,
            self.sp_lag_ms.p99,
            self.sp_lag_ratio,
            self.dissemination_node_op_ms.p50,
            self.sp_lag_node_op_ms.p50,
            self.sp_lag_ratio_node_op,
            self.messages_per_op,
            self.bytes_per_op,
            self.status_share * 100.0,
            self.msgs_per_node_s,
            self.events,
            self.sim_time_s,
            self.wall_s,
        );
        if let Some(cause) = self.liveness_cause {
            s.push_str(&format!("  liveness failed: {}\n", cause.name()));
        }
        for v in &self.violation_samples {
            s.push_str(&format!("  violation: {v}\n"));
        }
        if self.violations > 0 {
            let plant = self
                .planted
                .map(|bug| format!(" --plant {bug}"))
                .unwrap_or_default();
            s.push_str(&format!(
                "reproduce with: tidemark-sim --seed {} --nodes {} --ops {}{plant} (same other flags)\n",
                self.seed, self.nodes, self.ops
            ));
        }
        s
    }

    /// Writes the time series as CSV.
    pub fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(
            f,
            "t_ms,created,applied_everywhere,stable_everywhere,sp_lag_ms"
        )?;
        for s in &self.samples {
            let lag = s.sp_lag_ms.map(|l| l.to_string()).unwrap_or_default();
            writeln!(
                f,
                "{},{},{},{},{}",
                s.t_ms, s.created, s.applied_everywhere, s.stable_everywhere, lag
            )?;
        }
        f.flush()
    }

    /// Draws ops written, applied everywhere and stable everywhere over time as SVG.
    pub fn write_plot(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let t_max = self
            .samples
            .last()
            .map(|s| s.t_ms / 1e3)
            .unwrap_or(1.0)
            .max(1e-3);
        let y_max = (self.ops.max(1)) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "tidemark-sim: {} nodes, {} ops, loss {} (seed {})",
                    self.nodes, self.ops, self.loss, self.seed
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max * 1.05)?;
        chart
            .configure_mesh()
            .x_desc("simulated time (s)")
            .y_desc("ops")
            .draw()?;
        type Series = (&'static str, RGBColor, fn(&Sample) -> u64);
        let series: [Series; 3] = [
            ("written", BLACK, |s| s.created),
            ("applied everywhere", BLUE, |s| s.applied_everywhere),
            ("inside every snapshot point", RED, |s| s.stable_everywhere),
        ];
        for (label, color, pick) in series {
            chart
                .draw_series(LineSeries::new(
                    self.samples.iter().map(|s| (s.t_ms / 1e3, pick(s) as f64)),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
