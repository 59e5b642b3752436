//! Soak (hardening): N nodes of the release binary under steady writes for a long time,
//! recording every node's RSS, snapshot-point lag and errors over time.
//!
//! ```text
//! cargo bench --bench soak -- [--minutes 30] [--nodes 8] [--rate 20] [--keys 10000]
//!                              [--warmup-minutes 10] [--out target/soak]
//! ```
//!
//! Node 0 founds the network and the others join through it. Every node then writes `--rate`
//! ops/s to keys cycling over `--keys` keys of its own (100-byte values), so the state stops
//! growing once every key was written and a flat RSS is what a node without leaks shows.
//! Every 10 s it samples each node's VmRSS, the snapshot-point lag (ops applied but not yet
//! inside the snapshot point, from `/metrics`) and the errors so far (writes not answered
//! 201, nodes that died). It writes `soak.csv` and `soak.svg` (RSS and lag over time) to
//! `--out` and prints a summary: RSS growth after the warm-up (the last sample against the
//! one at the end of the warm-up, worst node; target ≤ 1.2×), lag (mean and max over the
//! samples after the warm-up), and errors (target: none): writes without a 201 (or without
//! any answer), nodes that died, writer tasks that failed, and, once the writes stop, nodes
//! that do not reach one snapshot point and one digest within 120 s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use plotters::prelude::*;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Until every key was written once (keys / rate seconds) the state still grows.
    #[arg(long, default_value_t = 10.0)]
    warmup_minutes: f64,
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Ops per second written by each node.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Keys each node cycles over.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    every: f64,
    // `cargo bench` passes --bench
    #[arg(long, hide = true)]
    bench: bool,
}

/// A node of the release binary, joining through `bootstrap` if given.
fn spawn(data_dir: &std::path::Path, bootstrap: Option<&str>) -> support::NodeProcess {
    let extra: Vec<&str> = bootstrap
        .map(|b| vec!["--bootstrap", b])
        .unwrap_or_default();
    support::spawn_with(data_dir, &extra, Stdio::null())
}

/// One sample of one node.
#[derive(Clone, Copy, Default)]
struct Sample {
    rss_mib: f64,
    lag_ops: f64,
}

/// A metric of the node at `api`; `None` when it is absent or the node does not answer.
async fn metric(api: SocketAddr, name: &str) -> Option<f64> {
    let text = support::try_http(api, "GET", "/metrics", None)
        .await
        .ok()?
        .body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(&args.out).unwrap();
    let first = spawn(&dir.path().join("n0"), None);
    let bootstrap = first.listen.clone();
    let mut nodes = vec![first];
    for i in 1..args.nodes {
        nodes.push(spawn(&dir.path().join(format!("n{i}")), Some(&bootstrap)));
    }
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    let joined = support::eventually(Duration::from_secs(60), || {
        let apis = apis.clone();
        let want = args.nodes;
        async move {
            for api in apis {
                let r = support::http(api, "GET", "/v1/status", None).await;
                if r.status != 200 || r.json()["members"] != want {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(joined, "every node joined");
    println!(
        "# soak: {} nodes, {} ops/s each over {} keys each, {} min (warm-up {} min)",
        args.nodes, args.rate, args.keys, args.minutes, args.warmup_minutes
    );

    let errors = Arc::new(AtomicU64::new(0));
    let by_status = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u64>::new(),
    ));
    let written = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let value = "v".repeat(100);
    let mut writers = Vec::new();
    for (i, api) in apis.iter().copied().enumerate() {
        let (errors, written, value) = (errors.clone(), written.clone(), value.clone());
        let by_status = by_status.clone();
        let (rate, keys) = (args.rate, args.keys);
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n = 0usize;
            while Instant::now() < stop {
                tick.tick().await;
                let body = format!(r#"{{"key": "n{i}-{}", "value": "{value}"}}"#, n % keys);
                // a write without an HTTP answer counts under status 0
                let status = support::try_http(api, "POST", "/v1/ops", Some(&body))
                    .await
                    .map_or(0, |r| r.status);
                if status == 201 {
                    written.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    *by_status.lock().unwrap().entry(status).or_default() += 1;
                }
                n += 1;
            }
        }));
    }

    let started = Instant::now();
    let mut times = Vec::new();
    let mut series: Vec<Vec<Sample>> = vec![Vec::new(); args.nodes];
    let mut csv = std::fs::File::create(args.out.join("soak.csv")).unwrap();
    writeln!(csv, "seconds,node,rss_mib,lag_ops,errors,written").unwrap();
    let mut dead = 0u64;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs_f64(args.every)).await;
        let t = started.elapsed().as_secs_f64();
        times.push(t);
        let errors_now = errors.load(Ordering::Relaxed);
        let written_now = written.load(Ordering::Relaxed);
        let mut line = format!("{t:7.0} s");
        for (i, node) in nodes.iter_mut().enumerate() {
            if node.child.try_wait().ok().flatten().is_some() {
                dead += 1;
            }
            let rss_mib = support::proc_status_kib(node.child.id(), "VmRSS:")
                .map(|k| k as f64 / 1024.0)
                .unwrap_or(0.0);
            let lag_ops = metric(node.api, "tidemark_snapshot_point_lag_ops")
                .await
                .unwrap_or(f64::NAN);
            series[i].push(Sample { rss_mib, lag_ops });
            writeln!(
                csv,
                "{t:.0},{i},{rss_mib:.1},{lag_ops},{errors_now},{written_now}"
            )
            .unwrap();
            line.push_str(&format!("  n{i} {rss_mib:5.1} MiB lag {lag_ops:4}"));
        }
        println!("{line}  written {written_now} errors {errors_now}");
    }
    // a writer that panicked stopped writing: an error, not a quiet gap
    let mut writers_failed = 0u64;
    for w in writers {
        if w.await.is_err() {
            writers_failed += 1;
        }
    }
    // the end: with the writes stopped, every node reaches one snapshot point and one
    // digest, within a bound
    let converged = support::eventually(Duration::from_secs(120), || {
        let apis = apis.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for api in &apis {
                let Ok(r) = support::try_http(*api, "GET", "/v1/status", None).await else {
                    return false;
                };
                let s = r.json();
                seen.insert((s["snapshot_point"].to_string(), s["digest"].to_string()));
            }
            seen.len() == 1
        }
    })
    .await;

    // summary
    let warm = times
        .iter()
        .position(|t| *t >= args.warmup_minutes * 60.0)
        .unwrap_or(0);
    let growth = series
        .iter()
        .map(|s| s.last().unwrap().rss_mib / s[warm].rss_mib)
        .fold(0.0f64, f64::max);
    let lags: Vec<f64> = series
        .iter()
        .flat_map(|s| s[warm..].iter().map(|x| x.lag_ops))
        .filter(|l| l.is_finite())
        .collect();
    let mean_lag = lags.iter().sum::<f64>() / lags.len().max(1) as f64;
    let max_lag = lags.iter().copied().fold(0.0, f64::max);
    // lag drift: the mean over the last third of the run against the first third after
    // the warm-up (steady means close to 1)
    let third = (series[0].len() - warm) / 3;
    let mean_of = |range: std::ops::Range<usize>| {
        let v: Vec<f64> = series
            .iter()
            .flat_map(|s| s[range.clone()].iter().map(|x| x.lag_ops))
            .filter(|l| l.is_finite())
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let early = mean_of(warm..warm + third.max(1));
    let late = mean_of(series[0].len() - third.max(1)..series[0].len());
    let errors = errors.load(Ordering::Relaxed) + dead + writers_failed + u64::from(!converged);
    let mut rejoins = 0.0;
    for api in &apis {
        rejoins += metric(*api, "tidemark_rejoins_total").await.unwrap_or(0.0);
    }
    println!(
        "RSS growth after warm-up (worst node, last sample / sample at {:.0} s): {growth:.3}x",
        times[warm]
    );
    println!(
        "RSS at the end: {}",
        series
            .iter()
            .map(|s| format!("{:.1}", s.last().unwrap().rss_mib))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "snapshot-point lag after warm-up: mean {mean_lag:.1} ops, max {max_lag:.0} ops; first third {early:.1}, last third {late:.1}"
    );
    println!(
        "ops written: {}, errors: {errors} (writes not answered 201 by status, 0 for no answer: {:?}; node deaths: {dead}; writers that failed: {writers_failed}; {}); rejoins of all nodes: {rejoins}",
        written.load(Ordering::Relaxed),
        by_status.lock().unwrap(),
        if converged {
            "every node ended with one snapshot point and one digest"
        } else {
            "the nodes did not reach one snapshot point and one digest within 120 s of the last write"
        }
    );
    plot(&args.out.join("soak.svg"), &times, &series, args.minutes).unwrap();
    println!("wrote {}", args.out.join("soak.svg").display());
}

fn plot(
    path: &std::path::Path,
    times: &[f64],
    series: &[Vec<Sample>],
    minutes: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let max_rss = series
        .iter()
        .flatten()
        .map(|s| s.rss_mib)
        .fold(1.0, f64::max);
    let max_lag = series
        .iter()
        .flatten()
        .map(|s| s.lag_ops)
        .filter(|l| l.is_finite())
        .fold(1.0, f64::max);
    let x_max = minutes * 60.0;
    for (area, title, y_max, pick) in [
        (
            &top,
            "RSS per node (MiB)",
            max_rss * 1.1,
            (|s: &Sample| s.rss_mib) as fn(&Sample) -> f64,
        ),
        (
            &bottom,
            "snapshot-point lag per node (ops)",
            max_lag * 1.1,
            |s: &Sample| s.lag_ops,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i);
            chart.draw_series(LineSeries::new(
                times
                    .iter()
                    .zip(s)
                    .map(|(t, x)| (*t, pick(x)))
                    .filter(|(_, y)| y.is_finite()),
                &color,
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
