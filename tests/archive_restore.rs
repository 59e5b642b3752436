//! Archive and restore (SPEC §6, Shardus archivers): an archiver member that never writes
//! takes the snapshots its schedule asks for; after every node of the network is lost, a
//! new network is started from the archived snapshot, with the same digest, and goes on.
//! And one node's data dir restored from an old backup: started as it is, it refuses
//! writes (its next seqs are taken); with `--restored-backup` it rejoins under a new
//! identity and nothing is lost.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    converged, eventually, http, node_metric, start_node, start_node_with, wait_members,
};
use tidemark::node::views::At;
use tidemark::node::{Node, NodeConfig, NodeError, NodeHandle};

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_lost_entirely_is_restored_from_its_archived_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_node(&dir.path().join("a"), None).await;
    let b = start_node(&dir.path().join("b"), Some(&a)).await;
    let c = start_node(&dir.path().join("c"), Some(&a)).await;
    let archiver = start_node_with(&dir.path().join("archiver"), Some(&a), |config| {
        config.archiver = true;
        config.snapshots.keep = None;
    })
    .await;
    let writers = [a.handle(), b.handle(), c.handle()];
    let ha = archiver.handle();
    assert!(
        eventually(Duration::from_secs(30), || async {
            ha.status().await.is_ok_and(|s| s.members == 4)
        })
        .await,
        "the archiver joins"
    );
    let api = archiver.api_addr().unwrap();
    let refused = http(api, "POST", "/v1/ops", Some(r#"{"key":"k","value":"v"}"#)).await;
    assert_eq!(
        refused.status, 403,
        "an archiver never writes: {}",
        refused.body
    );
    let scheduled = http(
        api,
        "POST",
        "/v1/snapshots/schedule",
        Some(r#"{"spacing": 40, "description": "archive every 40 ops"}"#),
    )
    .await;
    assert_eq!(scheduled.status, 201, "{}", scheduled.body);
    let request_id = scheduled.json()["request_id"].as_u64().unwrap();

    for round in 0..50 {
        for (i, w) in writers.iter().enumerate() {
            w.put(
                &format!("key{}", (round * 3 + i) % 70),
                Some(&format!("v{round}")),
            )
            .await
            .unwrap();
        }
        if round % 13 == 12 {
            // a pause now and then, as real writers have: the snapshot point catches up,
            // so it passes the scheduled heights one by one rather than all at once
            let height = 3 * (round as u64 + 1);
            assert!(
                eventually(Duration::from_secs(30), || async {
                    ha.status()
                        .await
                        .is_ok_and(|s| s.snapshot_point.values().sum::<u64>() >= height)
                })
                .await,
                "the archiver's snapshot point reaches {height}"
            );
        }
    }
    // 150 ops: the archiver takes a snapshot at each multiple of 40 its snapshot point
    // reaches past the start
    let request_path = format!("/v1/snapshots/requests/{request_id}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            let request = http(api, "GET", &request_path, None).await.json();
            request["snapshots"]
                .as_array()
                .is_some_and(|s| s.len() >= 3 && s.iter().all(|t| t["status"] == "final"))
        })
        .await,
        "the archiver took its scheduled snapshots: {}",
        http(api, "GET", &request_path, None).await.body
    );
    let listed = http(api, "GET", "/v1/snapshots", None).await.json();
    let snapshots = listed["snapshots"].as_array().unwrap().clone();
    assert!(snapshots.len() >= 3, "an archiver keeps every snapshot");
    let heights: Vec<u64> = snapshots
        .iter()
        .map(|s| s["height"].as_u64().unwrap())
        .collect();
    assert!(heights.windows(2).all(|w| w[0] < w[1]), "indexed by height");
    let newest = snapshots.last().unwrap();
    let archived = dir.path().join("archived.tmsnap");
    std::fs::copy(
        ha.snapshot_file(newest["id"].as_str().unwrap()).unwrap(),
        &archived,
    )
    .unwrap();

    // every node is lost, with its data
    for node in [a, b, c, archiver] {
        node.kill().await;
    }
    for name in ["a", "b", "c", "archiver"] {
        std::fs::remove_dir_all(dir.path().join(name)).unwrap();
    }

    let restored = start_node_with(&dir.path().join("new-a"), None, |config| {
        config.restore_from = Some(archived.clone());
    })
    .await;
    let hr = restored.handle();
    let status = hr.status().await.unwrap();
    assert_eq!(status.digest, newest["digest"].as_str().unwrap());
    assert_eq!(
        hr.watch_snapshot_point().borrow().ops,
        newest["height"].as_u64().unwrap(),
        "the new network starts at the archived snapshot point"
    );
    assert_eq!(
        node_metric(&hr, "state_entries_written_whole_total"),
        Some(0),
        "the restored state was staged as the file was read, not written whole by the event loop"
    );
    let joiner = start_node(&dir.path().join("new-b"), Some(&restored)).await;
    let hj = joiner.handle();
    let height = newest["height"].as_u64().unwrap();
    hr.put("key0", Some("after restore")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            hj.status().await.is_ok_and(|s| s.phase == "member")
        })
        .await
    );
    hj.put("new-key", Some("from the joiner")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            hr.watch_snapshot_point().borrow().ops == height + 2
                && hj.watch_snapshot_point().borrow().ops == height + 2
        })
        .await,
        "writes go on in the restored network"
    );
    let (sr, sj) = (
        hr.state(At::Snapshot).await.unwrap(),
        hj.state(At::Snapshot).await.unwrap(),
    );
    assert_eq!(sr.digest, sj.digest);
    let value = |key: &str| {
        sj.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.clone())
    };
    assert_eq!(
        value("key0").as_deref(),
        Some("after restore"),
        "a new write wins over the archived value"
    );
    assert_eq!(value("new-key").as_deref(), Some("from the joiner"));
    assert!(value("key69").is_some(), "archived keys are there");
    // received ops wait in memory for the next write that must happen (a checkpoint, at
    // most every 500 ms while the snapshot point moves); a crash before it would lose the
    // joiner's op here, to be pulled again from the network, so wait for that write
    let in_memory = || node_metric(&hr, "state_entries_in_memory");
    assert!(
        eventually(Duration::from_secs(30), || async { in_memory() == Some(0) }).await,
        "the restored node stores what it applied: {:?} entries only in memory",
        in_memory()
    );
    for node in [joiner, restored] {
        node.kill().await;
    }
    // what the restored node stored (the staged state with the new writes folded in, or
    // above its stored cut) resumes to the state it served
    let storage = std::sync::Arc::new(
        tidemark::node::storage::Storage::open(&dir.path().join("new-a")).unwrap(),
    );
    let stored = storage.load().unwrap();
    let resumed = tidemark::replica::Replica::resume(
        stored
            .checkpoint
            .expect("the restored node stored a checkpoint"),
        stored.ops,
        tidemark::replica::ReplicaConfig::default(),
        1,
        tidemark::Time::ZERO,
    )
    .unwrap();
    assert_eq!(
        tidemark::ops_log::StateMachine::digest(resumed.applied_state()).to_hex(),
        sr.digest
    );
}

/// Copies a directory tree (a data dir, as a backup tool would).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces `data_dir` with a copy of `backup`.
fn restore_backup(backup: &Path, data_dir: &Path) {
    std::fs::remove_dir_all(data_dir).unwrap();
    copy_dir(backup, data_dir);
}

/// Waits until every handle has applied `seq` ops of `origin`.
async fn wait_applied(handles: &[NodeHandle], origin: &str, seq: u64) {
    assert!(
        eventually(SETTLE, || async {
            for h in handles {
                let applied = h.status().await.map(|s| s.applied.get(origin).copied());
                if applied.ok().flatten() < Some(seq) {
                    return false;
                }
            }
            true
        })
        .await,
        "every node applies {seq} ops of {origin}"
    );
}

/// Waits until the node is a member and writes `key` through it.
async fn write_as_member(handle: &NodeHandle, key: &str) -> tidemark::node::views::OpIdView {
    assert!(
        eventually(SETTLE, || async {
            handle.status().await.is_ok_and(|s| s.phase == "member")
        })
        .await,
        "{} becomes a member",
        handle.peer_id()
    );
    handle.put(key, Some("v")).await.expect("a member writes")
}

/// B writes, is backed up, comes back and writes more; then its data dir is replaced by
/// the backup. Started as it is, B would give its next seqs to new ops while the network
/// has ops with those ids: it sees that and refuses writes (409, naming the way out).
/// Started with `restored_backup`, it takes a new peer id, joins as a new member, and
/// writes under it from seq 1; every op B ever had acknowledged is on every node, the old
/// identity's seqs are never continued, and the new identity survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_old_backup_rejoins_under_a_new_identity_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_node(&dir.path().join("a"), None).await;
    let c = start_node(&dir.path().join("c"), Some(&a)).await;
    let b_dir = dir.path().join("b");
    let b = start_node(&b_dir, Some(&a)).await;
    let others = [a.handle(), c.handle()];
    wait_members(&[a.handle(), c.handle(), b.handle()], 3, SETTLE).await;
    let old_id = b.handle().peer_id().to_string();
    for i in 0..3 {
        b.handle()
            .put(&format!("early-{i}"), Some("v"))
            .await
            .unwrap();
    }
    wait_applied(&others, &old_id, 3).await;
    b.kill().await;
    let backup = dir.path().join("b-backup");
    copy_dir(&b_dir, &backup);

    // B comes back from its own data dir and writes on: the backup is now behind
    let b = start_node(&b_dir, None).await;
    assert_eq!(b.handle().peer_id(), old_id);
    for i in 0..2 {
        write_as_member(&b.handle(), &format!("late-{i}")).await;
    }
    wait_applied(&others, &old_id, 5).await;
    b.kill().await;

    // started from the backup as it is: the network has its ops 4 and 5, which the backup
    // never stored, so it must not write
    restore_backup(&backup, &b_dir);
    let stale = start_node(&b_dir, None).await;
    assert_eq!(stale.handle().peer_id(), old_id, "the backup's key");
    let api = stale.api_addr().unwrap();
    let write = Some(r#"{"key": "from-the-stale-copy", "value": "v"}"#);
    // 503 while it joins, then 409 for good
    let deadline = tokio::time::Instant::now() + SETTLE;
    let body = loop {
        let r = http(api, "POST", "/v1/ops", write).await;
        assert_ne!(r.status, 201, "the stale copy wrote: {}", r.body);
        if r.status == 409 {
            break r.body;
        }
        assert!(
            r.status == 503 && tokio::time::Instant::now() < deadline,
            "writes refused with 503 while joining, then 409; got {}: {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("--restored-backup") && body.contains("older"),
        "the refusal says why and what to do: {body}"
    );
    wait_applied(&[stale.handle()], &old_id, 5).await;
    stale.kill().await;

    // restored with --restored-backup: a new identity
    restore_backup(&backup, &b_dir);
    let restored = start_node_with(&b_dir, None, |config| config.restored_backup = true).await;
    let hb = restored.handle();
    let new_id = hb.peer_id().to_string();
    assert_ne!(new_id, old_id, "a new peer id");
    let written = write_as_member(&hb, "from-the-restored-node").await;
    assert_eq!(
        (written.origin.as_str(), written.seq),
        (new_id.as_str(), 1),
        "the new identity's first op"
    );
    let all = [a.handle(), c.handle(), hb.clone()];
    // the old identity, silent, is evicted; every op is everywhere and stable
    assert!(
        eventually(Duration::from_secs(60), || converged(&all, 3, 6)).await,
        "one network of three with B's 5 ops and the restored node's one: {:?}",
        futures::future::join_all(all.iter().map(|h| h.status())).await
    );
    let keys = [
        "early-0",
        "early-1",
        "early-2",
        "from-the-restored-node",
        "late-0",
        "late-1",
    ];
    for h in &all {
        let status = h.status().await.unwrap();
        assert_eq!(status.applied.get(&old_id), Some(&5), "{status:?}");
        assert_eq!(status.applied.get(&new_id), Some(&1), "{status:?}");
        let state = h.state(At::Snapshot).await.unwrap();
        let held: Vec<&str> = state.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(held, keys, "on {}", h.peer_id());
    }

    // the data dir now holds the new identity: a plain restart keeps it and writes on
    restored.kill().await;
    let again = start_node(&b_dir, None).await;
    assert_eq!(again.handle().peer_id(), new_id, "the new key was stored");
    let next = write_as_member(&again.handle(), "after-restart").await;
    assert_eq!((next.origin.as_str(), next.seq), (new_id.as_str(), 2));
    for node in [a, c, again] {
        node.kill().await;
    }
}

/// A lone founder's backup has no one to join through: `restored_backup` is refused before
/// the node key is replaced, so the data dir still starts as it was without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_founders_backup_is_refused_and_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("solo");
    let node = start_node(&path, None).await;
    let id = node.handle().peer_id().to_string();
    node.handle().put("k", Some("v")).await.unwrap();
    node.kill().await;
    let mut config = NodeConfig::local(&path);
    config.restored_backup = true;
    let refused = Node::start(config).await.err().expect("refused");
    assert!(
        matches!(&refused, NodeError::Restore(r) if r.contains("no other node to join through")),
        "{refused}"
    );
    let again = start_node(&path, None).await;
    assert_eq!(again.handle().peer_id(), id, "the key was not replaced");
    let state = again.handle().state(At::Applied).await.unwrap();
    assert_eq!(state.entries.len(), 1);
    again.kill().await;
}

/// `--restored-backup` on a data dir that holds no node is refused with a clear message
/// and a non-zero exit.
#[test]
fn restored_backup_without_a_stored_node_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--restored-backup", "--data-dir"])
        .arg(dir.path().join("empty"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("--restored-backup needs a data dir that holds a node"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "the node never started");
}
