//! The built `tidemark` binary as a child process: `kill -9` while writes are in flight
//! loses no acknowledged op and corrupts nothing (alone, and as one member of three under
//! write load), SIGTERM leaves gracefully, and a SIGTERM whose leave fails stops the node
//! with exit code 1 and the reason on stderr.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{http, spawn_with, NodeProcess};

fn spawn_node(data_dir: &Path) -> NodeProcess {
    spawn_with(data_dir, &[], Stdio::null())
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
        let keys = stored_keys(node.api, "applied").await;
        for key in &acknowledged {
            assert!(keys.contains(key), "round {round}: acknowledged {key} lost");
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
    // every acknowledged op is in the applied state at once, and under the snapshot point
    // once the restarted node has folded what it applied (a stored op is not yet stable)
    let node = spawn_node(dir.path());
    let keys = stored_keys(node.api, "applied").await;
    for key in &acknowledged {
        assert!(keys.contains(key), "acknowledged {key} lost");
    }
    let api = node.api;
    let wanted = Arc::new(acknowledged);
    let all_stable = support::eventually(Duration::from_secs(30), || {
        let wanted = wanted.clone();
        async move {
            let keys = stored_keys(api, "snapshot").await;
            wanted.iter().all(|key| keys.contains(key))
        }
    })
    .await;
    let keys = stored_keys(api, "snapshot").await;
    let missing: Vec<&String> = wanted.iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        all_stable,
        "acknowledged ops not under the snapshot point: {missing:?}"
    );
}

/// The keys of `GET /v1/state?at=<at>`.
async fn stored_keys(api: SocketAddr, at: &str) -> Vec<String> {
    let state = http(api, "GET", &format!("/v1/state?at={at}"), None)
        .await
        .json();
    state["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["key"].as_str().expect("a key").to_string())
        .collect()
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

/// A member of two whose peer died writes an op that cannot become stable; SIGTERM then
/// cannot leave without losing it: the node says so on stderr, stops anyway, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_whose_leave_fails_says_why_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut founder = spawn_node(&dir.path().join("a"));
    let log = dir.path().join("b-stderr.log");
    let mut node = spawn_with(
        &dir.path().join("b"),
        &["--bootstrap", &founder.listen],
        std::fs::File::create(&log).unwrap().into(),
    );
    let api = node.api;
    let joined = support::eventually(Duration::from_secs(20), || async move {
        let status = http(api, "GET", "/v1/status", None).await.json();
        status["phase"] == "member" && status["members"] == 2
    })
    .await;
    assert!(joined, "the second node joins");
    founder.child.kill().unwrap();
    founder.child.wait().unwrap();
    let r = http(
        api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "a", "value": "1"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let pid = node.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let exited = support::eventually(Duration::from_secs(30), || {
        let done = matches!(node.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "the node stops even though its leave failed");
    let status = node.child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "exit code 1; stderr:\n{stderr}");
    assert!(
        stderr.contains("did not leave the network") && stderr.contains("stopped as a member"),
        "the reason on stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("left the network"),
        "no claim that it left:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_by_hand_converge_with_equal_states_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn_node(&dir.path().join("n0"));
    let mut nodes = vec![first];
    for i in 1..5 {
        let bootstrap = nodes[0].listen.clone();
        nodes.push(spawn_with(
            &dir.path().join(format!("n{i}")),
            &["--bootstrap", &bootstrap],
            Stdio::null(),
        ));
    }
    // every node writes once it has joined
    for (i, node) in nodes.iter().enumerate() {
        let api = node.api;
        let body = format!(r#"{{"key": "from-{i}", "value": "{i}"}}"#);
        let written = support::eventually(Duration::from_secs(20), || {
            let body = body.clone();
            async move { http(api, "POST", "/v1/ops", Some(&body)).await.status == 201 }
        })
        .await;
        assert!(written, "node {i} joins and accepts a write");
    }
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    let same = support::eventually(Duration::from_secs(20), || {
        let apis = apis.clone();
        async move {
            let mut states = Vec::new();
            for api in apis {
                let status = http(api, "GET", "/v1/status", None).await.json();
                if status["members"] != 5 || status["applied"] != status["snapshot_point"] {
                    return false;
                }
                states.push(http(api, "GET", "/v1/state?at=snapshot", None).await.json());
            }
            states[0]["entries"]
                .as_array()
                .is_some_and(|e| e.len() == 5)
                && states.iter().all(|s| *s == states[0])
        }
    })
    .await;
    assert!(
        same,
        "equal digests and equal GET /v1/state?at=snapshot on every node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_config_file_sets_the_network_and_json_logs_go_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "network = \"staging\"\n").unwrap();
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let node = spawn_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        Stdio::from(file),
    );
    let status = http(node.api, "GET", "/v1/status", None).await.json();
    assert_eq!(status["network"], "staging", "the file's network is used");
    let logged = support::eventually(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            let lines: Vec<_> = text.lines().collect();
            !lines.is_empty()
                && lines
                    .iter()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
                && text.contains(r#""message":"founding a new network""#)
        }
    })
    .await;
    assert!(
        logged,
        "JSON log lines: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "netwrk = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("netwrk"),
        "names the bad key"
    );
}

/// `tidemark network-key` into a file in `dir`.
fn new_network_key(dir: &Path, name: &str) -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("network-key")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
        "{text}"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_holding_the_network_key_can_join_a_private_network() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_network_key(dir.path(), "net.key");
    let other_key = new_network_key(dir.path(), "other.key");
    assert_ne!(
        std::fs::read(&key).unwrap(),
        std::fs::read(&other_key).unwrap(),
        "every key is new"
    );
    let key = key.to_str().unwrap();
    let founder = spawn_with(
        &dir.path().join("a"),
        &["--network-key", key],
        Stdio::null(),
    );
    let bootstrap = founder.listen.clone();
    // outsiders start first: one without a key, one with another network's key
    let keyless = spawn_with(
        &dir.path().join("c"),
        &["--bootstrap", &bootstrap],
        Stdio::null(),
    );
    let foreign = spawn_with(
        &dir.path().join("d"),
        &[
            "--bootstrap",
            &bootstrap,
            "--network-key",
            other_key.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    let insider = spawn_with(
        &dir.path().join("b"),
        &["--bootstrap", &bootstrap, "--network-key", key],
        Stdio::null(),
    );
    let (a, b) = (founder.api, insider.api);
    let written = support::eventually(Duration::from_secs(20), || async move {
        let body = r#"{"key": "k", "value": "from-b"}"#;
        http(b, "POST", "/v1/ops", Some(body)).await.status == 201
    })
    .await;
    assert!(written, "the key holder joins and writes");
    let reached = support::eventually(Duration::from_secs(20), || async move {
        let status = http(a, "GET", "/v1/status", None).await.json();
        let stable: u64 = status["snapshot_point"]
            .as_object()
            .map(|point| point.values().filter_map(|seq| seq.as_u64()).sum())
            .unwrap_or(0);
        status["members"] == 2 && stable == 1
    })
    .await;
    assert!(reached, "{}", http(a, "GET", "/v1/status", None).await.body);
    // by now the outsiders have had as long as the insider to join
    for (name, node) in [("keyless", &keyless), ("foreign-key", &foreign)] {
        let status = http(node.api, "GET", "/v1/status", None).await.json();
        assert_eq!(status["phase"], "joining", "the {name} node: {status}");
    }
    let status = http(a, "GET", "/v1/status", None).await.json();
    assert_eq!(status["members"], 2, "no outsider registered: {status}");
    let metrics = http(a, "GET", "/metrics", None).await.body;
    assert!(
        metrics.lines().any(|l| l == "tidemark_connected_peers 1"),
        "only the insider is connected:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("connected"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // a key file that is not one is refused with its name
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--data-dir"])
        .arg(dir.path().join("e"))
        .args(["--network-key", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.key"), "{stderr}");
}

/// Writes `<tag>-<i>` to `api` every 20 ms until `stop` is set or the node stops
/// answering; returns the keys answered 201.
fn write_until(
    api: SocketAddr,
    tag: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for k in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let key = format!("{tag}-{k:05}");
            let body = format!(r#"{{"key": "{key}", "value": "v"}}"#);
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::spawn(async move { http(api, "POST", "/v1/ops", Some(&body)).await }),
            )
            .await;
            match answer {
                Ok(Ok(r)) if r.status == 201 => acked.push(key),
                Ok(Ok(_)) => {} // refused (rejoining): not acknowledged
                _ => break,     // the node is gone
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    })
}

/// A member of three is killed with SIGKILL while every node takes writes, and restarted
/// from its data dir while the others go on: no acknowledged write is lost, and all three
/// meet at one snapshot point with one digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_member_under_write_load_then_restart_converges_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let n0 = spawn_node(&dir.path().join("n0"));
    let bootstrap = n0.listen.clone();
    let join = |i: usize| {
        spawn_with(
            &dir.path().join(format!("n{i}")),
            &["--bootstrap", &bootstrap],
            Stdio::null(),
        )
    };
    let (n1, mut n2) = (join(1), join(2));
    let members = |api: SocketAddr| async move {
        let s = http(api, "GET", "/v1/status", None).await.json();
        s["members"].as_u64() == Some(3) && s["phase"] == "member"
    };
    assert!(
        support::eventually(Duration::from_secs(30), || async {
            members(n0.api).await && members(n1.api).await && members(n2.api).await
        })
        .await,
        "three members"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let steady = [
        write_until(n0.api, "n0".into(), stop.clone()),
        write_until(n1.api, "n1".into(), stop.clone()),
    ];
    let doomed = write_until(n2.api, "n2-before".into(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    let mut acked = doomed.await.unwrap();
    assert!(acked.len() > 10, "the killed node acknowledged writes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(n2);
    let n2 = join(2);
    let after = write_until(n2.api, "n2-after".into(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in steady.into_iter().chain([after]) {
        acked.extend(writer.await.unwrap());
    }

    let apis = [n0.api, n1.api, n2.api];
    let converged = support::eventually(Duration::from_secs(60), || async {
        let mut seen = Vec::new();
        for api in apis {
            let s = http(api, "GET", "/v1/status", None).await.json();
            if s["phase"] != "member" || s["members"].as_u64() != Some(3) {
                return false;
            }
            if s["snapshot_point"] != s["applied"] {
                return false;
            }
            seen.push((s["snapshot_point"].clone(), s["digest"].clone()));
        }
        seen.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    assert!(converged, "one snapshot point and one digest on all three");
    for api in apis {
        let keys = stored_keys(api, "snapshot").await;
        let lost: Vec<_> = acked.iter().filter(|k| !keys.contains(k)).collect();
        assert!(lost.is_empty(), "{api}: acknowledged writes lost: {lost:?}");
    }
}
