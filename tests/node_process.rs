//! The built `tidemark` binary as a child process: `kill -9` while writes are in flight
//! loses no acknowledged op and corrupts nothing, and SIGTERM leaves gracefully.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::http;

/// A `tidemark node` child, killed on drop.
struct NodeProcess {
    child: Child,
    api: SocketAddr,
    peer_id: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(data_dir: &Path) -> NodeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tidemark node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the node prints where it listens");
    let info: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let api = info["api"]
        .as_str()
        .and_then(|a| a.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .expect("an API address");
    NodeProcess {
        child,
        api,
        peer_id: info["peer_id"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_op() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut peer_id = None;
    for round in 0..3 {
        let mut node = spawn_node(dir.path());
        if let Some(id) = &peer_id {
            assert_eq!(&node.peer_id, id, "same identity after a restart");
        }
        peer_id = Some(node.peer_id.clone());
        // every op acknowledged so far is there
        let state = http(node.api, "GET", "/v1/state?at=applied", None)
            .await
            .json();
        let keys: Vec<&str> = state["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap())
            .collect();
        for key in &acknowledged {
            assert!(
                keys.contains(&key.as_str()),
                "round {round}: acknowledged {key} lost"
            );
        }
        // writers race the kill: each write is answered 201 or its connection dies
        let api = node.api;
        let landed = Arc::new(AtomicUsize::new(0));
        let counter = landed.clone();
        let writer = tokio::spawn(async move {
            let mut done = Vec::new();
            for k in 0.. {
                let key = format!("r{round}-k{k}");
                let body = format!(r#"{{"key": "{key}", "value": "v"}}"#);
                let Ok(Ok(r)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::spawn(async move { http(api, "POST", "/v1/ops", Some(&body)).await }),
                )
                .await
                else {
                    break;
                };
                if r.status != 201 {
                    break;
                }
                done.push(key);
                counter.fetch_add(1, Ordering::SeqCst);
            }
            done
        });
        // let some writes land, then SIGKILL mid-stream
        let enough = support::eventually(Duration::from_secs(20), || {
            let n = landed.load(Ordering::SeqCst);
            async move { n >= 20 }
        })
        .await;
        assert!(enough, "round {round}: writes are acknowledged");
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() >= 60,
        "the writes were acknowledged: {}",
        acknowledged.len()
    );
    let node = spawn_node(dir.path());
    let state = http(node.api, "GET", "/v1/state?at=snapshot", None)
        .await
        .json();
    let keys: Vec<&str> = state["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    for key in &acknowledged {
        assert!(keys.contains(&key.as_str()), "acknowledged {key} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_gracefully_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_node(dir.path());
    let r = http(
        node.api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "a", "value": "1"}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    let pid = node.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let exited = support::eventually(Duration::from_secs(15), || {
        let done = matches!(node.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "the node exits after leaving");
    assert!(node.child.wait().unwrap().success());
}
