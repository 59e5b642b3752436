//! `tidemark node --writers FILE` (the built binary as child processes): only the listed
//! peers write. A node not on the list gets 403 for its own writes, the ops of a member that
//! is not listed are refused and counted by reason, and they never enter the listed nodes'
//! state or snapshot point.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{eventually, http, metric, spawn_with};

async fn write(api: SocketAddr, key: &str) -> u16 {
    let body = format!(r#"{{"key": "{key}", "value": "v"}}"#);
    http(api, "POST", "/v1/ops", Some(&body)).await.status
}

async fn keys(api: SocketAddr) -> Vec<String> {
    let state = http(api, "GET", "/v1/state?at=applied", None).await.json();
    state["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_peers_on_the_writers_list_write() {
    let dir = tempfile::tempdir().unwrap();
    let n0_dir = dir.path().join("n0");
    // the founder's peer id exists once it has started: start it, stop it, list it
    let p0 = spawn_with(&n0_dir, &[], Stdio::null()).peer_id.clone();
    let list = dir.path().join("writers.txt");
    std::fs::write(&list, format!("# who may write\n\n{p0}  # the founder\n")).unwrap();
    let list = list.to_str().unwrap();
    let n0 = spawn_with(&n0_dir, &["--writers", list], Stdio::null());
    assert_eq!(n0.peer_id, p0, "the founder resumed with its identity");
    // n1 holds the list and is not on it; n2 has no list and is not on it either
    let n1 = spawn_with(
        &dir.path().join("n1"),
        &["--bootstrap", &n0.listen, "--writers", list],
        Stdio::null(),
    );
    let n2 = spawn_with(
        &dir.path().join("n2"),
        &["--bootstrap", &n0.listen],
        Stdio::null(),
    );
    let (a0, a1, a2) = (n0.api, n1.api, n2.api);

    assert!(
        eventually(Duration::from_secs(30), || async {
            write(a1, "from-n1").await == 403
        })
        .await,
        "a node not on its writers list gets 403 once it has joined"
    );
    let refusal = http(
        a1,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "from-n1", "value": "v"}"#),
    )
    .await;
    assert!(
        refusal.json()["error"]
            .as_str()
            .unwrap()
            .contains("writers list"),
        "{}",
        refusal.body
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            write(a2, "from-n2").await == 201
        })
        .await,
        "n2 (no list) joins and writes"
    );
    assert_eq!(write(a0, "from-n0").await, 201, "the listed founder writes");

    // n2's op reaches the listed nodes, which refuse it and count why
    for api in [a0, a1] {
        assert!(
            eventually(Duration::from_secs(30), || async {
                let body = http(api, "GET", "/metrics", None).await.body;
                metric(&body, "ops_rejected_total{reason=\"not_writer\"}").is_some_and(|n| n >= 1)
            })
            .await,
            "the unlisted writer's op is refused and counted"
        );
    }
    // the listed founder's op spreads everywhere, and becomes stable on the listed nodes
    for api in [a0, a1, a2] {
        assert!(
            eventually(Duration::from_secs(30), || async {
                keys(api).await.contains(&"from-n0".to_string())
            })
            .await,
            "the founder's op spreads"
        );
    }
    for api in [a0, a1] {
        assert_eq!(keys(api).await, ["from-n0"], "only the listed writer's op");
        let status = http(api, "GET", "/v1/status", None).await.json();
        assert!(
            status["applied"].get(&n2.peer_id).is_none()
                && status["snapshot_point"].get(&n2.peer_id).is_none(),
            "the unlisted writer's op is not applied, so not in the snapshot point: {status}"
        );
    }
}

#[test]
fn a_writers_file_with_a_line_that_is_no_peer_id_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("writers.txt");
    std::fs::write(&list, "# ok\nnot-a-peer-id\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["node", "--data-dir"])
        .arg(dir.path().join("n"))
        .arg("--writers")
        .arg(&list)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("writers.txt:2: not a peer id"),
        "the error names the file and line: {stderr}"
    );
}
