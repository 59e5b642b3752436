//! A full disk (SPEC §7.2): a node whose data dir runs out of space refuses writes with 507
//! and a reason, keeps answering reads, loses no acknowledged write, and takes writes
//! again once there is space, without a restart.
//!
//! The data dir is a small tmpfs mounted for the test, so it needs root (CI runs as root)
//! and `mount`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{eventually, http, start_node_with};

/// A tmpfs mounted at a directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(status.success(), "cannot mount a tmpfs at {}", at.display());
        Self(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(status.success(), "cannot resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn write(api: SocketAddr, key: &str, value: &str) -> support::HttpResponse {
    let body = serde_json::json!({"key": key, "value": value}).to_string();
    http(api, "POST", "/v1/ops", Some(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_loses_nothing_and_recovers_with_space() {
    assert!(
        support::running_as_root(),
        "this test mounts a small tmpfs as the data dir and needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "6m");
    let data = disk.0.join("node");
    let node = start_node_with(&data, None, |_| {}).await;
    let api = node.api_addr().unwrap();
    let value = "x".repeat(16 * 1024);

    // write until the disk is full
    let mut acknowledged = Vec::new();
    let refused = loop {
        let key = format!("k{:05}", acknowledged.len());
        let answer = write(api, &key, &value).await;
        match answer.status {
            201 => acknowledged.push(key),
            _ => break answer,
        }
        assert!(
            acknowledged.len() < 2_000,
            "6 MiB cannot hold 2,000 writes of 16 KiB"
        );
    };
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(
        refused.body.contains("disk is full"),
        "the answer says why: {}",
        refused.body
    );
    assert!(
        acknowledged.len() >= 10,
        "{} writes fit",
        acknowledged.len()
    );
    let again = write(api, "another", "v").await;
    assert_eq!(
        again.status, 507,
        "later writes are refused too: {}",
        again.body
    );
    let metrics = http(api, "GET", "/metrics", None).await.body;
    assert!(metrics.contains("tidemark_disk_full 1"), "{metrics}");
    let status = http(api, "GET", "/v1/status", None).await;
    assert_eq!(status.status, 200, "reads are answered: {}", status.body);
    let first = http(
        api,
        "GET",
        &format!("/v1/state/{}?at=applied", acknowledged[0]),
        None,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);

    // space comes back: writes are taken again, without a restart
    disk.resize("64m");
    assert!(
        eventually(Duration::from_secs(30), || async {
            write(api, "after", "space").await.status == 201
        })
        .await,
        "the node takes writes once there is space"
    );
    let metrics = http(api, "GET", "/metrics", None).await.body;
    assert!(metrics.contains("tidemark_disk_full 0"), "{metrics}");
    node.kill().await;

    // nothing acknowledged was lost: a restart from the data dir holds every write
    let node = start_node_with(&data, None, |_| {}).await;
    let api = node.api_addr().unwrap();
    let state = http(api, "GET", "/v1/state?at=applied&limit=10000", None)
        .await
        .json();
    let held: std::collections::BTreeSet<&str> = state["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    for key in &acknowledged {
        assert!(held.contains(key.as_str()), "acknowledged {key} is lost");
    }
    assert!(held.contains("after"));
    node.kill().await;
    drop(disk);
}
