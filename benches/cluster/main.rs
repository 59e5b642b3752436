//! Cluster bench: N real tidemark nodes on 127.0.0.1 against raw gossipsub publishing the
//! same payloads to a cluster of the same size with the same gossipsub settings, one
//! message per op and batched as tidemark batches (the two baselines, measured in the same
//! run). See BENCHMARKS.md for what it reports and how to read it.
//!
//! `cargo bench --bench cluster -- --nodes 8,16,32 --rates 250,500,1000,2000`
//!
//! For every cluster size and offered rate it runs the baseline, then tidemark, and prints
//! one line each; a run *keeps up* when every op reached every node (for tidemark: every
//! snapshot point) with a p99 under one second. At the end it prints, per size, the
//! highest offered rate each side kept up with.
//!
//! Two throughputs: "to all" is the ops written over the time until the last one reached
//! every node (tidemark: every snapshot point), so below capacity it also counts the last
//! op's latency; "sustained" counts the ops that reached every node (tidemark: were applied
//! there; and, separately, entered every snapshot point) during the steady three quarters
//! of the writing, per second, which below capacity is the offered rate.

mod common;
mod nodes;
mod raw;

use std::time::Duration;

use clap::Parser;
use common::{Load, RunReport};

#[derive(Parser, Debug)]
struct Args {
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    nodes: Vec<usize>,
    /// Total offered ops/s of each load step.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
    rates: Vec<f64>,
    /// Seconds of writing per load step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Tidemark's least status interval in ms (the protocol default if absent).
    #[arg(long)]
    status_interval_ms: Option<u64>,
    /// Tidemark's random status peers (the protocol default if absent).
    #[arg(long)]
    status_fanout: Option<usize>,
    /// Tidemark's op batch delay in ms (the protocol default if absent).
    #[arg(long)]
    batch_delay_ms: Option<u64>,
    /// Only run one side: `raw` (one message per op), `batched` (raw, batched) or
    /// `tidemark`.
    #[arg(long)]
    only: Option<String>,
    /// Seconds after the last write that tidemark is observed until every op is in every
    /// snapshot point (the figures count only what arrived within the 10 s grace).
    #[arg(long, default_value_t = 60.0)]
    drain_bound: f64,
    /// cargo bench passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What "kept up" allows as the p99 of dissemination (raw) or snapshot-point lag.
const KEPT_UP_P99: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut gossip = tidemark::gossip::GossipConfig::default();
    if let Some(ms) = args.status_interval_ms {
        gossip.status_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.batch_delay_ms {
        gossip.op_batch_delay = Duration::from_millis(ms);
    }
    if let Some(fanout) = args.status_fanout {
        gossip.status_fanout = fanout;
        gossip.max_status_peers = 2 * fanout;
    }
    let batched = raw::RawMode::Batched {
        delay: gossip.op_batch_delay,
        max_ops: gossip.max_batch_ops,
    };
    let runs = |side: &str| args.only.as_deref().is_none_or(|only| only == side);
    let mut summary = Vec::new();
    for &nodes in &args.nodes {
        let mut best_raw = 0.0f64;
        let mut best_batched = 0.0f64;
        let mut best_tidemark = 0.0f64;
        for &rate in &args.rates {
            let load = Load {
                nodes,
                rate,
                duration: Duration::from_secs_f64(args.duration),
                grace: Duration::from_secs(10),
                drain_bound: Duration::from_secs_f64(args.drain_bound),
            };
            for (side, mode, best) in [
                ("raw", raw::RawMode::PerOp, &mut best_raw),
                ("batched", batched, &mut best_batched),
            ] {
                if !runs(side) {
                    continue;
                }
                let r = runtime.block_on(raw::run_raw(&load, mode));
                let kept = r.complete() && r.dissemination.quantile(0.99) < KEPT_UP_P99;
                if kept {
                    *best = best.max(rate);
                }
                println!(
                    "N={nodes:>3} offered {rate:>6.0} ops/s  {side:<9} {}  kept up: {kept}",
                    line(&r)
                );
            }
            if runs("tidemark") {
                let r = runtime.block_on(nodes::run_tidemark(&load, &gossip));
                let lag = r.sp_lag.clone().unwrap_or_default();
                let kept = r.complete() && lag.quantile(0.99) < KEPT_UP_P99;
                if kept {
                    best_tidemark = best_tidemark.max(rate);
                }
                let diss50 = r.dissemination.quantile(0.5);
                let op_lag = r.sp_lag_per_op.clone().unwrap_or_default();
                let drained = match r.drained_after {
                    Some(d) => format!(
                        "every op in every SP {:.1} s after the last write",
                        d.as_secs_f64()
                    ),
                    None => format!("NOT every op in every SP within {:.0} s", args.drain_bound),
                };
                println!(
                    "N={nodes:>3} offered {rate:>6.0} ops/s  tidemark  {}  sustained into every SP {:.0} ops/s  SP lag p50 {:.1} p99 {:.1} ms  ratio per (node, op) p50 {:.2} p99 {:.2}  per op: dissemination p50 {:.1} SP lag p50 {:.1} ms ratio {:.2}  status share {:.1}%  {drained}  kept up: {kept}",
                    line(&r),
                    r.sustained_into_sp.unwrap_or(0.0),
                    ms(lag.quantile(0.5)),
                    ms(lag.quantile(0.99)),
                    ms(lag.quantile(0.5)) / ms(diss50).max(1e-9),
                    ms(lag.quantile(0.99)) / ms(r.dissemination.quantile(0.99)).max(1e-9),
                    ms(r.dissemination_per_op.quantile(0.5)),
                    ms(op_lag.quantile(0.5)),
                    ms(op_lag.quantile(0.5)) / ms(r.dissemination_per_op.quantile(0.5)).max(1e-9),
                    100.0 * r.status_bytes.unwrap_or(0) as f64 / r.wire_bytes.max(1) as f64,
                );
            }
        }
        summary.push((nodes, best_raw, best_batched, best_tidemark));
    }
    println!("\nhighest offered rate kept up with (ops/s):");
    for (nodes, raw, batched, tidemark) in summary {
        println!(
            "N={nodes:>3}  raw gossipsub {raw:>6.0}  batched raw gossipsub {batched:>6.0}  tidemark {tidemark:>6.0}"
        );
    }
}

/// The figures both sides share, on one line.
fn line(r: &RunReport) -> String {
    format!(
        "delivered {}/{}  {:.0} ops/s to all  sustained {:.0} ops/s  dissemination p50 {:.1} p99 {:.1} ms  {:.0} wire bytes/op  CPU {:.0} µs per (node, op)",
        r.deliveries_seen,
        r.deliveries_expected,
        r.ops_per_sec(),
        r.sustained,
        ms(r.dissemination.quantile(0.5)),
        ms(r.dissemination.quantile(0.99)),
        r.wire_bytes as f64 / r.ops_written.max(1) as f64,
        r.cpu_per_delivery().as_secs_f64() * 1e6,
    )
}
