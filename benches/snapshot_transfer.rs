//! Snapshot figures for a large state (snapshots as artifacts): create, transfer and
//! install throughput, the joiner's memory while it installs, and op-apply latency while a
//! snapshot is exported.
//!
//! ```text
//! cargo bench --bench snapshot_transfer -- [--mib 256] [--json]
//! ```
//!
//! 1. A state of about `--mib` MiB (1 KB values) is built in memory and written as a
//!    snapshot file (create), against a baseline in the same run: the same number of bytes
//!    hashed with BLAKE3 and written to a file.
//! 2. A node founds a network from that file (`--restore-from`: read, verify, install).
//! 3. A joiner, a child process of the release binary, joins it: the sponsor writes the
//!    snapshot it offers, the joiner fetches it by chunks over loopback, verifies and
//!    installs it. The joiner's RSS is sampled every 20 ms, and 1000 writes are made on the
//!    sponsor meanwhile. The join's baseline, in the same run: the snapshot file's bytes
//!    read, BLAKE3-hashed and written to another file (copy and hash, what a join must at
//!    least do).
//! 4. Op-apply latency (1000 writes acknowledged by the restored node) p50/p99, without and
//!    then with snapshots being exported back to back.
//! 5. Resume: another joiner is killed (SIGKILL) once it has fetched half of the chunks and
//!    started again on its data dir; the share of the chunks the restarted process fetches
//!    (`resume_fetched_after_restart_share`) and over both runs.
//!
//! The data dirs' stored state (the database and the state's base file) is measured while
//! the nodes run and once each node has stopped and its database was opened again, which
//! compacts it
//! (`joiner_db_compacted_mib`, `founder_db_compacted_mib`).
//!
//! With `--json` the figures go to stdout as one JSON object (`state_mib`, `join_mb_s`,
//! `baseline_mb_s`, `joiner_rss_rest_mib`, `joiner_rss_peak_mib`, `apply_p99_ratio` — the
//! larger of the p99 ratios during the join and during exports —, `offer_s` and
//! `fetch_mb_s` — the join split at the moment the joiner begins fetching, before which the
//! sponsor writes the offered snapshot —, `transport_mb_s` — the same bytes moved over
//! the nodes' transport with nothing else done, the ceiling of any fetch here —,
//! `apply_p99_transport_ratio` — the founder's op-apply p99 while those bytes moved, over
//! the quiet one —, and the rest), and the lines for people go to
//! stderr.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/large_state.rs"]
mod large_state;

#[path = "common/transport.rs"]
mod transport;

use large_state::{copy_and_hash, large_state};

use std::io::Write;
use std::time::{Duration, Instant};

use tidemark::node::{Node, NodeConfig};
use tidemark::snapshot::{write_snapshot, DEFAULT_CHUNK_BYTES};

/// Where the lines for people go: stdout, or stderr when stdout carries the JSON.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

macro_rules! say {
    ($($arg:tt)*) => {
        if JSON.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*);
        } else {
            println!($($arg)*);
        }
    };
}

/// Starts a joiner process of the built binary in `data_dir`, its log in
/// `/tmp/<log>.log`; returns it and its API address.
fn spawn_joiner(
    data_dir: &std::path::Path,
    bootstrap: &str,
    log: &str,
) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--data-dir"])
        .arg(data_dir)
        .args(["--bootstrap", bootstrap])
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::File::create(format!("/tmp/{log}.log"))
                .map(std::process::Stdio::from)
                .unwrap_or(std::process::Stdio::null()),
        )
        .spawn()
        .expect("the joiner starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).unwrap();
    let api = info["api"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    (child, api)
}

/// A metric's value as `/metrics` prints it, or `?`.
fn metric_text(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string()
}

fn metric_u64(metrics: &str, name: &str) -> u64 {
    metric_text(metrics, name).parse::<f64>().unwrap_or(0.0) as u64
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    }
}

async fn write_latencies(
    handle: &tidemark::node::NodeHandle,
    n: usize,
    tag: &str,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        handle
            .put(&format!("{tag}{i}"), Some("v"))
            .await
            .expect("write accepted");
        out.push(started.elapsed());
    }
    out.sort();
    out
}

/// Latencies of sequential writes through `handle`, made until `stop` is set, sorted.
async fn write_latencies_until(
    handle: &tidemark::node::NodeHandle,
    tag: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<Duration> {
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        handle
            .put(&format!("{tag}{}", out.len()), Some("v"))
            .await
            .expect("write accepted");
        out.push(started.elapsed());
    }
    out.sort();
    out
}

fn main() {
    // the founder's warnings (and more with RUST_LOG) on stderr, among the figures
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    JSON.store(
        args.iter().any(|a| a == "--json"),
        std::sync::atomic::Ordering::Relaxed,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(mib));
}

async fn run(mib: u64) {
    let dir = tempfile::tempdir().unwrap();
    say!("# snapshot figures, {mib} MiB state");

    // 1. build and create
    let (state, cut, entries) = large_state(mib);
    let file = dir.path().join("big.tmsnap");
    let started = Instant::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&file).unwrap());
    let header = write_snapshot(&mut out, &state, &cut, 0, DEFAULT_CHUNK_BYTES).unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    let create = started.elapsed();
    let bytes = std::fs::metadata(&file).unwrap().len();
    // baseline: hash and write the same number of bytes
    let raw = vec![7u8; bytes as usize];
    let started = Instant::now();
    let _ = blake3::hash(&raw);
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    f.write_all(&raw).unwrap();
    f.sync_all().unwrap();
    let baseline = started.elapsed();
    drop(raw);
    say!(
        "create: {} entries, {:.1} MB in {} chunks, {:.2} s = {:.0} MB/s (baseline hash+write {:.0} MB/s, ratio {:.2})",
        entries,
        bytes as f64 / 1e6,
        header.chunks.len(),
        create.as_secs_f64(),
        mb_per_s(bytes, create),
        mb_per_s(bytes, baseline),
        create.as_secs_f64() / baseline.as_secs_f64()
    );
    drop(state);

    // 2. restore
    let started = Instant::now();
    let founder = Node::start(NodeConfig {
        restore_from: Some(file.clone()),
        ..NodeConfig::local(dir.path().join("founder"))
    })
    .await
    .expect("restored node starts");
    let restore = started.elapsed();
    let handle = founder.handle();
    let restored_height = handle.watch_snapshot_point().borrow().ops;
    say!(
        "restore (read, verify, install, checkpoint): {:.2} s = {:.0} MB/s; founder's database and base file {:.0} MiB",
        restore.as_secs_f64(),
        mb_per_s(bytes, restore),
        stored_bytes(&dir.path().join("founder")) as f64 / (1 << 20) as f64
    );

    // 3. a joiner process fetches it by chunks (after the baseline: copy and hash the file)
    let floor = copy_and_hash(&file, &dir.path().join("copy"));
    let _ = std::fs::remove_file(dir.path().join("copy"));
    // the ceiling of any fetch here: the same bytes over the nodes' transport, nothing else,
    // with the founder applying writes meanwhile (what moving the bytes alone costs them)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (writer, stop) = (handle.clone(), stop.clone());
        tokio::spawn(async move { write_latencies_until(&writer, "carrying", &stop).await })
    };
    let carried = transport::transport_ceiling(bytes).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during_carry = writing.await.unwrap();
    let bootstrap = founder.listen_addrs()[0].to_string();
    let started = Instant::now();
    let (mut child, api) = spawn_joiner(&dir.path().join("joiner"), &bootstrap, "joiner");
    let pid = child.id();
    let rss_start = support::proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let writer = handle.clone();
    let writes_during_join =
        tokio::spawn(async move { write_latencies(&writer, 1000, "joining").await });
    let mut peak = rss_start;
    // when the joiner began fetching (the sponsor had written the offered snapshot)
    let mut fetch_began = None;
    let joined = loop {
        peak = peak.max(support::proc_status_kib(pid, "VmRSS:").unwrap_or(0));
        if fetch_began.is_none() {
            let body = support::http(api, "GET", "/metrics", None).await.body;
            if metric_u64(&body, "tidemark_transfers_in_progress") > 0 {
                fetch_began = Some(started.elapsed());
            }
        }
        let status = support::http(api, "GET", "/v1/status", None).await;
        if status.status == 200 {
            let s = status.json();
            // installed: a member whose snapshot point covers the restored state (writes
            // made meanwhile move the digest on, so it is not compared)
            let height: u64 = s["snapshot_point"]
                .as_object()
                .map(|sp| sp.values().filter_map(|v| v.as_u64()).sum())
                .unwrap_or(0);
            if s["phase"] == "member" && height >= restored_height {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the joiner never installed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let during_join = writes_during_join.await.unwrap();
    let offered = fetch_began.unwrap_or(joined);
    let fetched = joined.saturating_sub(offered);
    // at rest: once the join's work is over
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = support::proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = support::proc_status_kib(pid, "VmHWM:").unwrap_or(peak);
    let metrics = support::http(api, "GET", "/metrics", None).await.body;
    let counter = |name: &str| metric_text(&metrics, name);
    say!(
        "join (sponsor writes the offer, joiner fetches {} chunks ({} asked again), verifies, installs): {:.2} s = {:.0} MB/s end to end",
        counter("tidemark_transfer_chunks_fetched_total"),
        counter("tidemark_transfer_chunks_refetched_total"),
        joined.as_secs_f64(),
        mb_per_s(bytes, joined)
    );
    say!(
        "of which: asking and the sponsor writing the offer {:.2} s; fetching, verifying and installing {:.2} s = {:.0} MB/s",
        offered.as_secs_f64(),
        fetched.as_secs_f64(),
        mb_per_s(bytes, fetched)
    );
    say!(
        "transport ceiling (the same bytes as 1 MiB answers on 16 streams over TCP, noise and yamux, in this process; no disk, no verification): {:.2} s = {:.0} MB/s; fetch/ceiling {:.2}",
        carried.as_secs_f64(),
        mb_per_s(bytes, carried),
        mb_per_s(bytes, fetched) / mb_per_s(bytes, carried)
    );
    say!(
        "join baseline (read, BLAKE3-hash and write the snapshot's bytes, synced): {:.2} s = {:.0} MB/s; join/baseline {:.2}",
        floor.as_secs_f64(),
        mb_per_s(bytes, floor),
        mb_per_s(bytes, joined) / mb_per_s(bytes, floor)
    );
    say!(
        "joiner RSS: {:.0} MiB at start, peak {:.0} MiB (VmHWM), {:.0} MiB once installed; growth {:.0} MiB, transient above the installed state {:.0} MiB",
        rss_start as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        (hwm.saturating_sub(rss_start)) as f64 / 1024.0,
        (hwm.saturating_sub(rss_end)) as f64 / 1024.0,
    );
    let _ = child.kill();
    let _ = child.wait();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let joiner_db = stored_bytes(&dir.path().join("joiner"));
    let founder_db = stored_bytes(&dir.path().join("founder"));
    let founder_snapshots = dir_bytes(&dir.path().join("founder/snapshots"));
    let founder_metrics = handle.metrics().encode();
    say!(
        "founder's checkpoints: {} entries folded, {} written whole",
        metric_text(&founder_metrics, "tidemark_state_entries_folded_total"),
        metric_text(
            &founder_metrics,
            "tidemark_state_entries_written_whole_total"
        )
    );
    say!(
        "data dirs (database and base file): joiner's {:.0} MiB, founder's {:.0} MiB (+ {:.0} MiB of snapshot files), for a snapshot file of {:.0} MiB",
        mib(joiner_db),
        mib(founder_db),
        mib(founder_snapshots),
        mib(bytes)
    );

    // 5. a joiner killed (SIGKILL) once it has fetched half of the chunks, and restarted
    let chunks = header.chunks.len() as u64;
    let resume_dir = dir.path().join("resumer");
    let (mut first, api) = spawn_joiner(&resume_dir, &bootstrap, "resumer-1");
    let started = Instant::now();
    let fetched_at_kill = loop {
        let body = support::http(api, "GET", "/metrics", None).await.body;
        let fetched = metric_u64(&body, "tidemark_transfer_chunks_fetched_total");
        if fetched * 2 >= chunks {
            let _ = first.kill();
            break fetched;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the first run never reached half"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = first.wait();
    let (mut second, api) = spawn_joiner(&resume_dir, &bootstrap, "resumer-2");
    let started = Instant::now();
    loop {
        let status = support::http(api, "GET", "/v1/status", None).await;
        if status.status == 200 && status.json()["phase"] == "member" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the restarted joiner never installed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = support::http(api, "GET", "/metrics", None).await.body;
    let fetched_after = metric_u64(&body, "tidemark_transfer_chunks_fetched_total");
    let resumed = metric_u64(&body, "tidemark_transfer_chunks_resumed_total");
    let _ = second.kill();
    let _ = second.wait();
    let after_share = fetched_after as f64 / chunks as f64;
    let total_share = (fetched_at_kill + fetched_after) as f64 / chunks as f64;
    say!(
        "resume: killed after fetching {fetched_at_kill} of {chunks} chunks; the restarted joiner kept {resumed} and fetched {fetched_after} ({:.1}% of the chunks; {:.1}% over both runs)",
        after_share * 100.0,
        total_share * 100.0
    );

    // 4. op-apply latency without and with exports
    let quiet = write_latencies(&handle, 1000, "quiet").await;
    let exporter = handle.clone();
    let exporting = tokio::spawn(async move {
        let mut made = 0u32;
        loop {
            if exporter.create_snapshot().await.is_err() {
                return made;
            }
            made += 1;
        }
    });
    let busy = write_latencies(&handle, 1000, "busy").await;
    exporting.abort();
    let (q50, q99) = (percentile(&quiet, 0.5), percentile(&quiet, 0.99));
    let (b50, b99) = (percentile(&busy, 0.5), percentile(&busy, 0.99));
    let j99 = percentile(&during_join, 0.99);
    let c99 = percentile(&during_carry, 0.99);
    say!(
        "op-apply latency while a joiner fetches the state: p50 {:.1} ms p99 {:.1} ms; p99 ratio {:.2}",
        percentile(&during_join, 0.5).as_secs_f64() * 1e3,
        j99.as_secs_f64() * 1e3,
        j99.as_secs_f64() / q99.as_secs_f64()
    );
    say!(
        "op-apply latency while the transport ceiling ran ({} writes): p50 {:.1} ms p99 {:.1} ms; p99 ratio {:.2}",
        during_carry.len(),
        percentile(&during_carry, 0.5).as_secs_f64() * 1e3,
        c99.as_secs_f64() * 1e3,
        c99.as_secs_f64() / q99.as_secs_f64()
    );
    say!(
        "op-apply latency (1000 sequential writes): no export p50 {:.1} ms p99 {:.1} ms; exporting p50 {:.1} ms p99 {:.1} ms; p99 ratio {:.2}",
        q50.as_secs_f64() * 1e3,
        q99.as_secs_f64() * 1e3,
        b50.as_secs_f64() * 1e3,
        b99.as_secs_f64() * 1e3,
        b99.as_secs_f64() / q99.as_secs_f64()
    );
    founder.kill().await;
    // at the end: the network of two cannot admit the resumer once the founder suspects
    // the stopped joiner, so nothing may delay step 5
    let joiner_db_compacted = compacted_db(&dir.path().join("joiner"));
    let founder_db_compacted = compacted_db(&dir.path().join("founder"));
    say!(
        "database and base file once stopped and reopened (which compacts the database): joiner's {:.0} MiB, founder's {:.0} MiB",
        mib(joiner_db_compacted),
        mib(founder_db_compacted)
    );
    if JSON.load(std::sync::atomic::Ordering::Relaxed) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let figures = serde_json::json!({
            "state_mib": bytes as f64 / (1 << 20) as f64,
            "entries": entries,
            "chunks": header.chunks.len(),
            "create_mb_s": mb_per_s(bytes, create),
            "create_baseline_mb_s": mb_per_s(bytes, baseline),
            "restore_mb_s": mb_per_s(bytes, restore),
            "join_mb_s": mb_per_s(bytes, joined),
            "baseline_mb_s": mb_per_s(bytes, floor),
            "join_s": joined.as_secs_f64(),
            "offer_s": offered.as_secs_f64(),
            "fetch_mb_s": mb_per_s(bytes, fetched),
            "transport_mb_s": mb_per_s(bytes, carried),
            "chunks_refetched": counter("tidemark_transfer_chunks_refetched_total"),
            "joiner_rss_start_mib": rss_start as f64 / 1024.0,
            "joiner_rss_rest_mib": rss_end as f64 / 1024.0,
            "joiner_rss_peak_mib": hwm as f64 / 1024.0,
            "joiner_db_mib": mib(joiner_db),
            "founder_db_mib": mib(founder_db),
            "joiner_db_compacted_mib": mib(joiner_db_compacted),
            "founder_db_compacted_mib": mib(founder_db_compacted),
            "founder_snapshot_files_mib": mib(founder_snapshots),
            "apply_p99_quiet_ms": ms(q99),
            "apply_p99_export_ms": ms(b99),
            "apply_p99_join_ms": ms(j99),
            "apply_p99_transport_ms": ms(c99),
            "apply_p99_transport_ratio": c99.as_secs_f64() / q99.as_secs_f64(),
            "apply_p99_ratio": j99.max(b99).as_secs_f64() / q99.as_secs_f64(),
            "resume_killed_after_chunks": fetched_at_kill,
            "resume_kept_chunks": resumed,
            "resume_fetched_after_restart_share": after_share,
            "resume_fetched_both_runs_share": total_share,
        });
        println!("{figures}");
    }
}

/// The size of the database and base file in `data_dir` once the database is opened again
/// (opening compacts it).
/// A killed node's blocking tasks (an export under way) may hold the database a while
/// longer: it is opened again once they let go, within a minute.
fn compacted_db(data_dir: &std::path::Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tidemark::node::storage::Storage::open(data_dir) {
            Ok(storage) => break drop(storage),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("the database does not open: {error}"),
        }
    }
    stored_bytes(data_dir)
}

/// The bytes of the state's store in `data_dir`: the database and the base file.
fn stored_bytes(data_dir: &std::path::Path) -> u64 {
    let Ok(listing) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    listing
        .flatten()
        .filter(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            name == "tidemark.redb" || name.ends_with(".base")
        })
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}
