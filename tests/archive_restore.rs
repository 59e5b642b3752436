//! Archive and restore (SPEC §6, Shardus archivers): an archiver member that never writes
//! takes the snapshots its schedule asks for; after every node of the network is lost, a
//! new network is started from the archived snapshot, with the same digest, and goes on.

mod support;

use std::time::Duration;

use support::{eventually, http, start_node, start_node_with};
use tidemark::node::views::At;

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
    for node in [joiner, restored] {
        node.kill().await;
    }
}
