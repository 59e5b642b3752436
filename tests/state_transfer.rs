//! State transfer by snapshot chunks between real nodes (SPEC §6): a joiner of a network
//! whose stable state is too large for a grant fetches it as a snapshot, verifies every
//! chunk, fetches a bad chunk again from another node holding the same snapshot, and ends
//! with the network's digest; and a node goes on applying ops while it exports a snapshot.

mod support;

use std::io::{BufReader, Seek, SeekFrom, Write};
use std::time::Duration;

use support::{eventually, fill, http, start_node_with};
use tidemark::node::NodeHandle;

/// A counter or gauge in a `/metrics` text (0 when absent).
fn parse_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .unwrap_or(0.0) as u64
}

fn metric(handle: &NodeHandle, name: &str) -> u64 {
    parse_metric(&handle.metrics().encode(), name)
}

async fn stable_height(handle: &NodeHandle) -> u64 {
    handle.watch_snapshot_point().borrow().ops
}

/// Writes `keys` values of 1 KB under `prefix` through `handle`, and waits until its
/// snapshot point covers them.
async fn fill_until_stable(handle: &NodeHandle, prefix: &str, keys: usize) {
    fill(handle, prefix, keys, 1_000).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            stable_height(handle).await == keys as u64
        })
        .await,
        "the snapshot point reaches the {keys} writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_fetches_a_large_state_by_chunks_and_bad_chunks_again_from_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let small_grants = |c: &mut tidemark::node::NodeConfig| {
        c.snapshots.inline_state_max_entries = 100;
    };
    let a = start_node_with(&dir.path().join("a"), None, small_grants).await;
    let b = start_node_with(&dir.path().join("b"), Some(&a), small_grants).await;
    let (ha, hb) = (a.handle(), b.handle());
    assert!(
        eventually(Duration::from_secs(20), || async {
            hb.status()
                .await
                .is_ok_and(|s| s.phase == "member" && s.members == 2)
        })
        .await,
        "b joins while the state is empty (an inline grant)"
    );
    // about 3.5 MB of state: four chunks of 1 MiB
    const KEYS: usize = 3_500;
    fill(&ha, "key", KEYS, 1_000).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            stable_height(&ha).await == KEYS as u64 && stable_height(&hb).await == KEYS as u64
        })
        .await,
        "both snapshot points reach every write"
    );

    // both nodes hold a snapshot of the same stable state: the same id, the same chunks
    let at_a = ha.create_snapshot().await.unwrap();
    let at_b = hb.create_snapshot().await.unwrap();
    assert_eq!(at_a.id, at_b.id, "the same state makes the same snapshot");
    assert!(at_a.chunks >= 3, "{} chunks", at_a.chunks);
    // damage every chunk of a's copy (its header still names the right hashes)
    let path = ha.snapshot_file(&at_a.id).unwrap();
    let mut input = BufReader::new(std::fs::File::open(&path).unwrap());
    let header = tidemark::snapshot::read_header(&mut input).unwrap();
    let body_start = input.stream_position().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for index in 0..header.chunks.len() {
        file.seek(SeekFrom::Start(
            body_start + header.chunk_offset(index) + 100,
        ))
        .unwrap();
        file.write_all(b"DAMAGED").unwrap();
    }
    drop(file);

    // the joiner asks a, which offers its (damaged) snapshot of that state
    let joiner = start_node_with(&dir.path().join("joiner"), Some(&a), small_grants).await;
    let hj = joiner.handle();
    let digest = ha.status().await.unwrap().digest;
    assert!(
        eventually(Duration::from_secs(60), || async {
            hj.status()
                .await
                .is_ok_and(|s| s.phase == "member" && s.digest == digest)
        })
        .await,
        "the joiner installs the offered state: {:?}",
        hj.status().await
    );
    assert!(
        metric(&hj, "tidemark_transfer_bad_chunks_total") >= 1,
        "the damaged chunks were caught on arrival"
    );
    assert!(metric(&hj, "tidemark_transfer_chunks_refetched_total") >= 1);
    assert!(
        metric(&hb, "tidemark_transfer_chunks_served_total") >= 1,
        "b, holding the same snapshot, served the chunks a could not"
    );
    assert!(
        metric(&ha, "tidemark_transfer_chunks_served_total") >= 1,
        "a was asked first"
    );
    assert_eq!(
        metric(&hj, "tidemark_transfer_chunks_fetched_total"),
        header.chunks.len() as u64,
        "every chunk verified once; none fetched twice after it verified"
    );
    let state = hj.state(tidemark::node::views::At::Snapshot).await.unwrap();
    assert_eq!(state.entries.len(), KEYS);

    // the network goes on: a write of the joiner reaches every snapshot point
    hj.put("after-join", Some("yes")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            let mut heights = Vec::new();
            for h in [&ha, &hb, &hj] {
                heights.push(stable_height(h).await);
            }
            heights.iter().all(|h| *h == KEYS as u64 + 1)
        })
        .await,
        "every snapshot point covers the joiner's write"
    );
    assert_eq!(
        metric(&hj, "tidemark_state_entries_written_whole_total"),
        0,
        "the joiner stored the state as it arrived, not again at its checkpoint"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&hj, "tidemark_state_entries_folded_total") >= 1
        })
        .await,
        "the joiner's write, once stable, is folded into its stored state"
    );
    // the state lives on disk: once checkpointed, memory holds none of its entries, and
    // reads come from the database
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&hj, "tidemark_state_entries_in_memory") == 0
        })
        .await,
        "the joiner holds {} of {} entries in memory",
        metric(&hj, "tidemark_state_entries_in_memory"),
        KEYS + 1
    );
    let state = hj.state(tidemark::node::views::At::Snapshot).await.unwrap();
    assert_eq!(state.entries.len(), KEYS + 1);
    assert_eq!(metric(&hj, "tidemark_state_read_failures"), 0);
    let final_digest = ha.status().await.unwrap().digest;
    for node in [joiner, b, a] {
        node.kill().await;
    }
    // what the joiner stored (the staged state, folds, and ops above its stored cut)
    // resumes to the network's state
    let storage = std::sync::Arc::new(
        tidemark::node::storage::Storage::open(&dir.path().join("joiner")).unwrap(),
    );
    let loaded = storage.load().unwrap();
    let checkpoint = loaded.checkpoint.expect("the joiner stored a checkpoint");
    let resumed = tidemark::replica::Replica::resume(
        checkpoint,
        loaded.ops,
        tidemark::replica::ReplicaConfig::default(),
        1,
        tidemark::Time::ZERO,
    )
    .unwrap();
    assert_eq!(resumed.applied().total(), KEYS as u64 + 1);
    assert_eq!(
        tidemark::ops_log::StateMachine::digest(resumed.applied_state()).to_hex(),
        final_digest
    );
}

/// Whether a node's gauge `name` reads 1 or more now (read without asking its event loop).
fn raised(handle: &NodeHandle, name: &str) -> bool {
    metric(handle, name) >= 1
}

/// The export is slowed by `--snapshot-io-limit` so that it lasts seconds, and every write
/// is counted only if it was acknowledged while the export was still being written: a
/// node whose event loop wrote the file would acknowledge none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_go_on_being_applied_while_a_snapshot_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    // about 4 MB of state written at 400 kB/s: the export takes 7 s or more
    let node = start_node_with(&dir.path().join("solo"), None, |c| {
        c.snapshots.io_bytes_per_s = Some(400_000);
    })
    .await;
    let handle = node.handle();
    const KEYS: usize = 4_000;
    fill_until_stable(&handle, "big", KEYS).await;
    const WRITING: &str = "tidemark_snapshot_files_being_written";
    assert!(!raised(&handle, WRITING));
    let exporter = handle.clone();
    let export = tokio::spawn(async move { exporter.create_snapshot().await });
    assert!(
        eventually(Duration::from_secs(30), || async {
            raised(&handle, WRITING)
        })
        .await,
        "the export starts writing its file"
    );
    let mut during = 0u64;
    let mut seq = 0;
    while !export.is_finished() && raised(&handle, WRITING) {
        seq += 1;
        let written = handle.put(&format!("during{seq}"), Some("v")).await;
        assert!(written.is_ok(), "{written:?}");
        if raised(&handle, WRITING) {
            during += 1;
        }
    }
    let info = export.await.unwrap().unwrap();
    assert!(
        during >= 3,
        "writes are acknowledged (applied and stored) while the snapshot is written: {during} of {seq}"
    );
    assert!(
        info.height >= KEYS as u64 && info.height <= KEYS as u64 + seq,
        "the export is the stable state when it was asked for"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            stable_height(&handle).await == KEYS as u64 + seq
        })
        .await,
        "the ops written meanwhile reach the snapshot point"
    );
    let api = node.api_addr().unwrap();
    let list = http(api, "GET", "/v1/snapshots", None).await.json();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    node.kill().await;
}

/// A join by snapshot slowed by the sponsor's `--snapshot-io-limit`: while the joiner
/// fetches, its event loop answers status requests and the sponsor's acknowledges writes.
/// Answers count only while the fetch is still under way, so a joiner whose event loop
/// fetched or installed the chunks itself would count none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_event_loops_go_on_while_a_joiner_fetches_a_state() {
    let dir = tempfile::tempdir().unwrap();
    let sponsor_config = |c: &mut tidemark::node::NodeConfig| {
        c.snapshots.inline_state_max_entries = 100;
        c.snapshots.io_bytes_per_s = Some(600_000);
    };
    let a = start_node_with(&dir.path().join("a"), None, sponsor_config).await;
    let ha = a.handle();
    const KEYS: usize = 3_000;
    fill_until_stable(&ha, "key", KEYS).await;
    let joiner = start_node_with(&dir.path().join("joiner"), Some(&a), |c| {
        c.snapshots.inline_state_max_entries = 100;
    })
    .await;
    let hj = joiner.handle();
    const FETCHING: &str = "tidemark_transfers_in_progress";
    assert!(
        eventually(Duration::from_secs(60), || async { raised(&hj, FETCHING) }).await,
        "the joiner starts fetching the offered snapshot"
    );
    let (mut answered, mut acknowledged, mut seq) = (0u64, 0u64, 0u64);
    while raised(&hj, FETCHING) {
        let status = hj.status().await;
        assert!(status.is_ok(), "{status:?}");
        // the gauge falls before the fetched state is installed: an answer given while it
        // is still raised is from a joiner
        let phase = status.unwrap().phase;
        if raised(&hj, FETCHING) {
            assert_ne!(
                phase, "member",
                "a joiner fetching its state is not a member yet"
            );
            answered += 1;
        }
        seq += 1;
        let written = ha.put(&format!("during{seq}"), Some("v")).await;
        assert!(written.is_ok(), "{written:?}");
        if raised(&hj, FETCHING) {
            acknowledged += 1;
        }
    }
    assert!(
        answered >= 3,
        "the joiner's event loop answered {answered} status requests during the fetch"
    );
    assert!(
        acknowledged >= 3,
        "the sponsor acknowledged {acknowledged} writes while serving the fetch"
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            let (Ok(sa), Ok(sj)) = (ha.status().await, hj.status().await) else {
                return false;
            };
            sj.phase == "member" && stable_height(&hj).await == KEYS as u64 + seq
                && sa.digest == sj.digest
        })
        .await,
        "the joiner becomes a member and catches up with the {seq} writes made meanwhile: {:?}\n{:?}",
        ha.network_map().await,
        hj.network_map().await
    );
    assert_eq!(
        metric(&hj, "tidemark_state_entries_written_whole_total"),
        0,
        "the staged state was swapped in, not written whole on the event loop"
    );
    assert!(
        metric(&hj, "tidemark_ops_kept_while_fetching_total") >= 1,
        "the writes published during the fetch were kept for the install"
    );
    for node in [joiner, a] {
        node.kill().await;
    }
}

/// A sponsor that takes seconds to write the snapshot it offers (its snapshot I/O is
/// limited) while writes go on tells the joiner so: the joiner waits with the incarnation
/// it asked with, instead of taking the silence for a dead sponsor and asking anew with
/// another incarnation, for which the sponsor would write a second snapshot at a newer cut
/// (and so on, for as long as the writes and the slow export last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_waits_for_the_snapshot_its_sponsor_is_writing_and_it_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_node_with(&dir.path().join("a"), None, |c| {
        c.snapshots.inline_state_max_entries = 100;
        // about 5 s to write a 3 MB offer: more than two join retries (2 s each)
        c.snapshots.io_bytes_per_s = Some(600_000);
    })
    .await;
    let ha = a.handle();
    const KEYS: usize = 3_000;
    fill_until_stable(&ha, "key", KEYS).await;
    // writes go on all along, so the stable cut moves while the offer is written
    let writer = ha.clone();
    let writing = tokio::spawn(async move {
        for seq in 0.. {
            let _ = writer.put(&format!("during{seq}"), Some("v")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let joiner = start_node_with(&dir.path().join("joiner"), Some(&a), |c| {
        c.snapshots.inline_state_max_entries = 100;
    })
    .await;
    let hj = joiner.handle();
    let asked_with = hj.status().await.unwrap().incarnation;
    let told = std::cell::Cell::new(false);
    let joined = eventually(Duration::from_secs(120), || async {
        let Ok(status) = hj.status().await else {
            return false;
        };
        if let Some(join) = &status.join {
            told.set(told.get() || join.waiting.contains("writing a snapshot"));
        }
        status.phase == "member"
    })
    .await;
    writing.abort();
    assert!(joined, "the joiner becomes a member");
    assert!(
        told.get(),
        "the joiner's status said that the sponsor was writing the offer"
    );
    assert_eq!(
        hj.status().await.unwrap().incarnation,
        asked_with,
        "the joiner kept the incarnation it asked with"
    );
    assert_eq!(metric(&hj, "tidemark_stale_grants_total"), 0);
    let offers = std::fs::read_dir(dir.path().join("a/snapshots/transfers"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmsnap"))
        })
        .count();
    assert_eq!(offers, 1, "the sponsor wrote one snapshot to offer");
    for node in [joiner, a] {
        node.kill().await;
    }
}

/// A counter or gauge of a node process's `/metrics` (0 when absent).
async fn process_metric(api: std::net::SocketAddr, name: &str) -> u64 {
    parse_metric(&http(api, "GET", "/metrics", None).await.body, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_killed_during_a_transfer_resumes_from_the_chunks_it_kept_from_the_sponsor_or_another_holder(
) {
    use std::process::Stdio;
    use support::spawn_with;
    const KEPT: &str = "tidemark_transfer_chunks_kept";
    const RESUMED: &str = "tidemark_transfer_chunks_resumed_total";
    const FETCHED: &str = "tidemark_transfer_chunks_fetched_total";
    let dir = tempfile::tempdir().unwrap();
    // servers slow enough that a transfer lasts seconds
    let server = |c: &mut tidemark::node::NodeConfig| {
        c.snapshots.inline_state_max_entries = 100;
        c.snapshots.io_bytes_per_s = Some(2_000_000);
    };
    let a = start_node_with(&dir.path().join("a"), None, server).await;
    let b = start_node_with(&dir.path().join("b"), Some(&a), server).await;
    let c = start_node_with(&dir.path().join("c"), Some(&a), server).await;
    let (ha, hb, hc) = (a.handle(), b.handle(), c.handle());
    assert!(
        eventually(Duration::from_secs(30), || async {
            let mut members = 0;
            for h in [&ha, &hb, &hc] {
                members += h
                    .status()
                    .await
                    .is_ok_and(|s| s.phase == "member" && s.members == 3)
                    as usize;
            }
            members == 3
        })
        .await,
        "b and c join while the state is empty"
    );
    // about 28 MB of state: 27 chunks of 1 MiB
    const KEYS: usize = 2_800;
    fill(&ha, "key", KEYS, 10_000).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            let mut done = true;
            for h in [&ha, &hb, &hc] {
                done &= stable_height(h).await == KEYS as u64;
            }
            done
        })
        .await,
        "every snapshot point reaches every write"
    );
    // every server holds a snapshot of that state, with one id
    let at_a = ha.create_snapshot().await.unwrap();
    for h in [&hb, &hc] {
        assert_eq!(h.create_snapshot().await.unwrap().id, at_a.id);
    }
    let chunks = at_a.chunks as u64;
    let per_sync = tidemark::node::storage::STAGED_PER_SYNC as u64;
    assert!(chunks >= 3 * per_sync, "{chunks} chunks");

    let joiner_dir = dir.path().join("joiner");
    let via_a = a.listen_addrs()[0].to_string();
    let first = spawn_with(&joiner_dir, &["--bootstrap", &via_a], Stdio::null());
    assert!(
        eventually(Duration::from_secs(120), || async {
            process_metric(first.api, KEPT).await >= per_sync
        })
        .await,
        "the first run keeps chunks"
    );
    drop(first); // kill -9

    // the second run resumes under the same grant, from the sponsor and the others
    let second = spawn_with(&joiner_dir, &["--bootstrap", &via_a], Stdio::null());
    assert!(
        eventually(Duration::from_secs(120), || async {
            process_metric(second.api, KEPT).await >= 2 * per_sync
        })
        .await,
        "the second run keeps more chunks"
    );
    let resumed = process_metric(second.api, RESUMED).await;
    assert!(
        resumed >= per_sync,
        "the second run kept the {resumed} chunks the first synced"
    );
    drop(second);

    // the sponsor stops too: the third run fetches the rest from the nodes holding a
    // snapshot with the same id
    a.kill().await;
    let served_before = metric(&hb, "tidemark_transfer_chunks_served_total")
        + metric(&hc, "tidemark_transfer_chunks_served_total");
    let via_b = b.listen_addrs()[0].to_string();
    let third = spawn_with(&joiner_dir, &["--bootstrap", &via_b], Stdio::null());
    let digest = hb.status().await.unwrap().digest;
    let api = third.api;
    assert!(
        eventually(Duration::from_secs(120), || async {
            let status = http(api, "GET", "/v1/status", None).await;
            status.status == 200
                && status.json()["phase"] == "member"
                && status.json()["digest"] == digest.as_str()
        })
        .await,
        "the third run installs the network's state: {}",
        http(api, "GET", "/v1/status", None).await.body
    );
    let (resumed, fetched) = (
        process_metric(api, RESUMED).await,
        process_metric(api, FETCHED).await,
    );
    assert!(resumed >= 2 * per_sync, "{resumed} chunks kept");
    assert_eq!(
        resumed + fetched,
        chunks,
        "the third run fetched only the chunks it had not kept, each once"
    );
    let served_after = metric(&hb, "tidemark_transfer_chunks_served_total")
        + metric(&hc, "tidemark_transfer_chunks_served_total");
    assert!(
        served_after - served_before >= fetched,
        "b and c served the chunks the stopped sponsor could not"
    );
    drop(third);
    for node in [b, c] {
        node.kill().await;
    }
}
