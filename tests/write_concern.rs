//! Write concern: `POST /v1/ops?wait=stored|applied:K|stable[&timeout_ms=N]` and
//! `NodeHandle::put_with`, on real nodes on 127.0.0.1. A write is answered once its concern
//! holds; with a member cut off, `stable` and `applied:K` for every member time out with 504
//! naming the op, which is kept and becomes stable once the member is back.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{eventually, http, start_node_with, wait_members};
use tidemark::node::views::At;
use tidemark::node::{NodeHandle, WriteConcern, WriteError};

fn body(key: &str) -> String {
    format!(r#"{{"key": "{key}", "value": "v"}}"#)
}

async fn post(api: SocketAddr, query: &str, key: &str) -> support::HttpResponse {
    http(api, "POST", &format!("/v1/ops{query}"), Some(&body(key))).await
}

/// What `h` has applied of `origin`, and its snapshot point's entry for it.
async fn seen(h: &NodeHandle, origin: &str) -> (u64, u64) {
    let status = h.status().await.unwrap();
    (
        status.applied.get(origin).copied().unwrap_or(0),
        status.snapshot_point.get(origin).copied().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_answered_when_its_concern_holds_or_with_504_naming_the_kept_op() {
    let dir = tempfile::tempdir().unwrap();
    // no member is evicted while cut off, so `stable` waits for it (and times out)
    let slow_detection = |c: &mut tidemark::node::NodeConfig| {
        c.gossip.suspect_after = Duration::from_secs(600);
        c.gossip.suspicion_timeout = Duration::from_secs(600);
    };
    let mut nodes = vec![start_node_with(&dir.path().join("n0"), None, slow_detection).await];
    for i in 1..3 {
        let node = start_node_with(
            &dir.path().join(format!("n{i}")),
            Some(&nodes[0]),
            slow_detection,
        )
        .await;
        nodes.push(node);
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 3, Duration::from_secs(60)).await;
    let api = nodes[0].api_addr().unwrap();
    let me = handles[0].peer_id().to_string();

    // stable: the answer comes once this node's snapshot point holds the op
    let r = post(api, "?wait=stable&timeout_ms=30000", "stable").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let seq = r.json()["seq"].as_u64().unwrap();
    assert_eq!(r.json()["origin"], me.as_str());
    let (_, sp) = seen(&handles[0], &me).await;
    assert!(
        sp >= seq,
        "answered with the op under the snapshot point ({sp} < {seq})"
    );

    // applied:3: every member has applied it when the answer comes
    let r = post(api, "?wait=applied:3&timeout_ms=30000", "everywhere").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let seq = r.json()["seq"].as_u64().unwrap();
    for h in &handles {
        let (applied, _) = seen(h, &me).await;
        assert!(applied >= seq, "applied on every member when answered");
    }

    // more members than there are, or a malformed wait: 400, and nothing is written
    let (before, _) = seen(&handles[0], &me).await;
    for query in [
        "?wait=applied:4",
        "?wait=applied:0",
        "?wait=soon",
        "?wait=stable&timeout_ms=0",
        "?wait=stable&timeout_ms=600000",
        "?wait=stable&timeout=5",
    ] {
        let r = post(api, query, "refused").await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{query}: {}", r.body);
    }
    assert_eq!(seen(&handles[0], &me).await.0, before, "nothing written");

    // node 2 cut off from the others
    let ids: Vec<String> = handles.iter().map(|h| h.peer_id().to_string()).collect();
    handles[2].cut_links(&[&ids[0], &ids[1]]).await.unwrap();
    handles[0].cut_links(&[&ids[2]]).await.unwrap();
    handles[1].cut_links(&[&ids[2]]).await.unwrap();
    let r = post(api, "?wait=applied:2&timeout_ms=20000", "two").await;
    assert_eq!(r.status, 201, "nodes 0 and 1 apply it: {}", r.body);
    let mut kept = Vec::new();
    for query in [
        "?wait=stable&timeout_ms=1500",
        "?wait=applied:3&timeout_ms=1500",
    ] {
        let r = post(api, query, &format!("kept{}", kept.len())).await;
        assert_eq!(r.status, 504, "{query}: {}", r.body);
        let answer = r.json();
        assert_eq!(answer["origin"], me.as_str(), "{answer}");
        assert!(answer["error"].is_string(), "{answer}");
        kept.push(answer["seq"].as_u64().unwrap());
    }
    // the library gives the same choice, and the same answer
    match handles[0]
        .put_with(
            "kept2",
            Some("v"),
            WriteConcern::Stable,
            Duration::from_secs(1),
        )
        .await
    {
        Err(WriteError::Timeout {
            origin,
            seq,
            concern,
        }) => {
            assert_eq!(
                (origin.as_str(), concern),
                (me.as_str(), WriteConcern::Stable)
            );
            kept.push(seq);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // the ops that timed out are kept
    let applied = handles[0].state(At::Applied).await.unwrap();
    let keys: Vec<_> = applied.entries.iter().map(|e| e.key.as_str()).collect();
    for key in ["kept0", "kept1", "kept2"] {
        assert!(keys.contains(&key), "{key} kept: {keys:?}");
    }

    // healed: they become stable, and a stable write through the library is answered
    for h in &handles {
        h.cut_links(&[]).await.unwrap();
    }
    let last = *kept.iter().max().unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            seen(&handles[0], &me).await.1 >= last
        })
        .await,
        "the kept ops become stable once the member is back"
    );
    let id = handles[0]
        .put_with(
            "lib",
            Some("v"),
            WriteConcern::Stable,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(seen(&handles[0], &me).await.1 >= id.seq);
    for node in nodes {
        node.kill().await;
    }
}
