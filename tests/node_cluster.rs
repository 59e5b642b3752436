//! Real nodes (libp2p over TCP on 127.0.0.1, OS-assigned ports) in this process: joining
//! through a bootstrap peer, convergence, a crash, a restart from the data dir, the
//! bootstrap peer leaving, the HTTP API's answers to bad input (all 400), one-key reads,
//! the health and readiness probes, a join's progress in the status, a joiner finding
//! a bootstrap peer that came back under a new identity, and how often a node that only
//! receives ops writes to its database.

mod support;

use std::time::Duration;

use support::{
    cluster, converged, eventually, http, http_with, start_node, start_node_with, wait_members,
};
use tidemark::node::views::At;
use tidemark::node::NodeHandle;

const SETTLE: Duration = Duration::from_secs(20);

async fn write_from_each(handles: &[NodeHandle], per_node: usize, tag: &str) {
    for (i, h) in handles.iter().enumerate() {
        for k in 0..per_node {
            h.put(&format!("{tag}-{i}-{k}"), Some("v"))
                .await
                .expect("a member accepts writes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_join_through_a_bootstrap_peer_and_converge_on_ops_from_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 5).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 5, SETTLE).await;
    write_from_each(&handles, 20, "op").await;
    assert!(
        eventually(SETTLE, || converged(&handles, 5, 100)).await,
        "equal snapshot points, digests and states everywhere"
    );
    let state = handles[3].state(At::Snapshot).await.unwrap();
    assert_eq!(state.entries.len(), 100);
    assert!(
        state.entries.windows(2).all(|w| w[0].key < w[1].key),
        "sorted by key"
    );
    for node in nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_is_killed_the_snapshot_point_moves_on_within_the_default_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 5).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 5, SETTLE).await;
    write_from_each(&handles, 5, "before").await;
    assert!(eventually(SETTLE, || converged(&handles, 5, 25)).await);
    nodes.pop().unwrap().kill().await;
    let rest = &handles[..4];
    rest[0].put("after-crash", Some("v")).await.unwrap();
    // SPEC §5: the snapshot point moves again within 10 s of a crash
    assert!(
        eventually(Duration::from_secs(10), || converged(rest, 4, 26)).await,
        "the survivors evict the dead node and their snapshot point reaches the new op"
    );
    for node in nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_data_dir_keeps_its_identity_and_catches_up_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 5).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 5, SETTLE).await;
    write_from_each(&handles, 4, "first").await;
    let victim = nodes.pop().unwrap();
    let peer_id = victim.handle().peer_id().to_string();
    victim.kill().await;
    // the network goes on without it
    write_from_each(&handles[..4], 3, "while-down").await;
    let back = start_node(&dir.path().join("node4"), None).await;
    assert_eq!(back.handle().peer_id(), peer_id, "same key, same identity");
    let mut all: Vec<_> = handles[..4].to_vec();
    all.push(back.handle());
    assert!(
        eventually(Duration::from_secs(30), || converged(&all, 5, 20 + 12)).await,
        "the restarted node rejoins, has every op, and everyone agrees"
    );
    let status = back.handle().status().await.unwrap();
    assert!(status.incarnation >= 2, "it came back as a new incarnation");
    let state = back.handle().state(At::Applied).await.unwrap();
    for k in 0..4 {
        assert!(state
            .entries
            .iter()
            .any(|e| e.key == format!("first-4-{k}")));
    }
    nodes.push(back);
    for node in nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_bootstrap_peer_leaves_the_rest_stay_connected_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 5).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 5, SETTLE).await;
    let bootstrap = nodes.remove(0);
    bootstrap.leave().await.unwrap();
    let rest = &handles[1..];
    wait_members(rest, 4, SETTLE).await;
    write_from_each(rest, 10, "after-leave").await;
    assert!(
        eventually(SETTLE, || converged(rest, 4, 40)).await,
        "ops still flow between the remaining nodes"
    );
    for node in nodes {
        node.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_reads_page_by_page_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("solo"), None).await;
    let handle = node.handle();
    for i in (0..25).rev() {
        handle
            .put(&format!("key{i:02}"), Some(&format!("v{i}")))
            .await
            .unwrap();
    }
    let whole = handle
        .state(tidemark::node::views::At::Applied)
        .await
        .unwrap();
    assert_eq!(whole.entries.len(), 25);
    assert_eq!(whole.next_key, None);
    let api = node.api_addr().unwrap();
    let mut keys = Vec::new();
    let mut pages = 0;
    let mut path = "/v1/state?at=applied&limit=10".to_string();
    loop {
        let page = http(api, "GET", &path, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let json = page.json();
        pages += 1;
        for e in json["entries"].as_array().unwrap() {
            keys.push(e["key"].as_str().unwrap().to_string());
        }
        match json["next_key"].as_str() {
            Some(next) => path = format!("/v1/state?at=applied&limit=10&start_key={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = whole.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        keys, expected,
        "the pages, joined, are the whole state in key order"
    );
    node.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_bad_input_with_a_4xx_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("solo"), None).await;
    let api = node.api_addr().unwrap();
    let key_too_long = format!(r#"{{"key": "{}", "value": "v"}}"#, "k".repeat(1025));
    let value_too_long = format!(r#"{{"key": "k", "value": "{}"}}"#, "x".repeat(65_537));
    let read_too_long = format!("/v1/state/{}", "k".repeat(1025));
    let schedule = "/v1/snapshots/schedule";
    let bad = [
        // every validation error is a 400: body syntax and shape, the key and value
        // rules, query parameters and ids
        ("POST", "/v1/ops", Some("{not json"), 400),
        ("POST", "/v1/ops", Some(r#"{"value": "v"}"#), 400),
        ("POST", "/v1/ops", Some(r#"{"key": "k"}"#), 400),
        ("POST", "/v1/ops", Some(r#"{"key": 5, "value": "v"}"#), 400),
        ("POST", "/v1/ops", Some(r#"{"key": "k", "value": 5}"#), 400),
        ("POST", "/v1/ops", Some(r#"["k", "v"]"#), 400),
        (
            "POST",
            "/v1/ops",
            Some(r#"{"key": "k", "value": "v", "extra": 1}"#),
            400,
        ),
        ("POST", "/v1/ops", Some(r#"{"key": "", "value": "v"}"#), 400),
        ("POST", "/v1/ops", Some(key_too_long.as_str()), 400),
        ("POST", "/v1/ops", Some(value_too_long.as_str()), 400),
        ("POST", schedule, Some(r#"{"every": 3}"#), 400),
        ("POST", schedule, Some(r#"{"start_height": "ten"}"#), 400),
        ("GET", "/v1/state?at=yesterday", None, 400),
        ("GET", "/v1/state?limit=0", None, 400),
        ("GET", "/v1/state?limit=10001", None, 400),
        ("GET", "/v1/state?limit=ten", None, 400),
        ("GET", "/v1/state/k?at=yesterday", None, 400),
        ("GET", "/v1/state/k?limit=1", None, 400),
        ("GET", "/v1/state/", None, 400),
        ("GET", read_too_long.as_str(), None, 400),
        ("GET", "/v1/snapshots/requests?limit=-1", None, 400),
        ("GET", "/v1/snapshots/requests/one", None, 400),
        ("GET", "/v1/nope", None, 404),
        ("DELETE", "/v1/status", None, 405),
    ];
    for (method, path, body, want) in bad {
        let r = http(api, method, path, body).await;
        assert_eq!(r.status, want, "{method} {path} {body:?}: {}", r.body);
        let reason = r.json()["error"].as_str().map(str::to_string);
        assert!(
            reason.as_ref().is_some_and(|e| !e.is_empty()),
            "{method} {path}: a JSON reason, got {}",
            r.body
        );
    }
    // the limits are inclusive: a key of 1 KiB and a value of 64 KiB are written
    let longest = format!(
        r#"{{"key": "{}", "value": "{}"}}"#,
        "k".repeat(1024),
        "x".repeat(65_536)
    );
    let r = http(api, "POST", "/v1/ops", Some(&longest)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // a body over 1 MiB is refused before it is read
    let huge = format!(r#"{{"key": "k", "value": "{}"}}"#, "x".repeat(1_100_000));
    assert_eq!(http(api, "POST", "/v1/ops", Some(&huge)).await.status, 413);
    // nothing was lost or written by the bad calls; a good one still works
    let ok = http(
        api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "k", "value": "v"}"#),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert_eq!(ok.json()["seq"], 2);
    // a body without `value` deletes nothing: only an explicit null does
    let forgot = http(api, "POST", "/v1/ops", Some(r#"{"key": "k"}"#)).await;
    assert_eq!(forgot.status, 400);
    assert!(forgot.body.contains("value"), "{}", forgot.body);
    let read = http(api, "GET", "/v1/state/k?at=applied", None).await;
    assert_eq!(read.json()["value"], "v", "{}", read.body);
    let del = http(
        api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "k", "value": null}"#),
    )
    .await;
    assert_eq!(del.status, 201);
    let state = http(api, "GET", "/v1/state?at=applied", None).await;
    assert_eq!(state.status, 200);
    let keys: Vec<_> = state.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().len())
        .collect();
    assert_eq!(keys, [1024], "null deletes");
    let status = http(api, "GET", "/v1/status", None).await.json();
    assert_eq!(status["applied"][node.handle().peer_id()], 3);
    assert_eq!(status["members"], 1);
    let metrics = http(api, "GET", "/metrics", None).await;
    assert!(
        metrics.body.contains("tidemark_applied_ops 3"),
        "{}",
        metrics.body
    );
    let map = http(api, "GET", "/v1/network-map", None).await.json();
    assert_eq!(map["members"][0]["state"], "alive");
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_endpoint_streams_every_snapshot_point_change() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("solo"), None).await;
    let api = node.api_addr().unwrap();
    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    stream
        .write_all(b"GET /v1/snapshot-point/watch HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let handle = node.handle();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut written = 0;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        // a lone founder's snapshot point follows every write: expect events up to ops 3
        while !seen.contains(r#""ops":3"#) {
            if written < 3 {
                handle.put(&format!("k{written}"), Some("v")).await.unwrap();
                written += 1;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream closed");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(got.is_ok(), "events seen: {seen}");
    assert!(seen.contains("text/event-stream"));
    assert!(seen.contains("event: snapshot-point"));
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_still_joining_stops_when_asked_to_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tidemark::node::NodeConfig::local(dir.path().join("lonely"));
    // a bootstrap peer that exists nowhere: the node stays joining
    config.bootstrap = vec![
        "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWPgBH5m8Z79bKAnaDZENa3mpHC4JhZPX54n9Sx3gdwxJj"
            .parse()
            .unwrap(),
    ];
    let node = tidemark::node::Node::start(config).await.unwrap();
    assert_eq!(node.handle().status().await.unwrap().phase, "joining");
    let stopped = tokio::time::timeout(Duration::from_secs(10), node.leave()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "leave returns and the node stops"
    );
}

/// A node joining through a peer that is itself still joining (and so refuses every
/// request) shows its join going nowhere in `GET /v1/status`: requests, refusals and the
/// last refusal's reason; the peer, whose own bootstrap peer exists nowhere, shows its
/// requests unanswered and the rounds that passed without a grant. A member shows no
/// `join` object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_goes_nowhere_shows_its_progress_in_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = start_node_with(&dir.path().join("stuck"), None, |c| {
        // a bootstrap peer that exists nowhere: this node stays joining
        c.bootstrap = vec![
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWPgBH5m8Z79bKAnaDZENa3mpHC4JhZPX54n9Sx3gdwxJj"
                .parse()
                .unwrap(),
        ];
    })
    .await;
    let refused = start_node(&dir.path().join("refused"), Some(&stuck)).await;
    let status = |node: &tidemark::node::Node| {
        let api = node.api_addr().unwrap();
        async move { http(api, "GET", "/v1/status", None).await.json() }
    };
    // polls a node's status until `wanted` holds of it; returns the last one seen
    let status_until = |node, wanted: fn(&serde_json::Value) -> bool| async move {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let seen = status(node).await;
            if wanted(&seen) || tokio::time::Instant::now() >= deadline {
                return (wanted(&seen), seen);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (refusals_seen, last) = status_until(&refused, |s| {
        let join = &s["join"];
        s["phase"] == "joining"
            && join["requests"].as_u64() >= Some(1)
            && join["refusals"].as_u64() >= Some(1)
            && join["rounds"].as_u64() >= Some(1)
            && join["sponsors"] == 1
            && join["last_refusal"]
                .as_str()
                .is_some_and(|r| r.contains("not joined"))
    })
    .await;
    assert!(
        refusals_seen,
        "the refused joiner's status shows its requests and refusals: {last}"
    );
    let (unanswered_seen, last) = status_until(&stuck, |s| {
        let join = &s["join"];
        s["phase"] == "joining"
            && join["unanswered"].as_u64() >= Some(3)
            && join["rounds"].as_u64() >= Some(1)
            && join["refusals"] == 0
            && join["last_refusal"].is_null()
    })
    .await;
    assert!(
        unanswered_seen,
        "the stuck joiner's status shows its unanswered requests: {last}"
    );
    let member = start_node(&dir.path().join("member"), None).await;
    let founded = status(&member).await;
    assert_eq!(founded["phase"], "member");
    assert!(
        founded.get("join").is_none(),
        "a member has no join object: {founded}"
    );
    for node in [stuck, refused, member] {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_with_a_token_refuses_every_call_without_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node_with(&dir.path().join("solo"), None, |c| {
        c.api_token = Some("s3cret-token".into());
    })
    .await;
    let api = node.api_addr().unwrap();
    let write = Some(r#"{"key": "k", "value": "v"}"#);
    let refused = [
        ("GET", "/v1/status", None, &[][..], "Authorization"),
        ("POST", "/v1/ops", write, &[][..], "Authorization"),
        ("GET", "/metrics", None, &[][..], "Authorization"),
        (
            "POST",
            "/v1/ops",
            write,
            &["Authorization: Bearer s3cret-tokeN"][..],
            "wrong",
        ),
        (
            "GET",
            "/v1/status",
            None,
            &["Authorization: s3cret-token"][..],
            "Authorization",
        ),
    ];
    for (method, path, body, headers, reason) in refused {
        let r = http_with(api, method, path, body, headers).await;
        assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(error.contains(reason), "{method} {path}: {error}");
    }
    let auth = ["Authorization: Bearer s3cret-token"];
    let status = http_with(api, "GET", "/v1/status", None, &auth).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(
        status.json()["applied"][node.handle().peer_id()],
        serde_json::Value::Null,
        "the refused writes wrote nothing"
    );
    let written = http_with(api, "POST", "/v1/ops", write, &auth).await;
    assert_eq!(written.status, 201, "{}", written.body);
    assert_eq!(written.json()["seq"], 1);
    node.kill().await;
}

/// A founder that came back under a new identity (a new data dir) at its old address: a
/// joiner whose bootstrap address still names the old peer id gets no answer for a whole
/// round, dials the address without the peer id, finds the new founder there, and joins
/// its network through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_finds_a_bootstrap_peer_that_came_back_under_a_new_identity_at_its_address() {
    use tidemark::node::{Node, NodeConfig};
    let dir = tempfile::tempdir().unwrap();
    let old = start_node(&dir.path().join("a"), None).await;
    let old_addr = old.listen_addrs()[0].clone();
    let old_peer = old.handle().peer_id().to_string();
    let plain: String = old_addr
        .to_string()
        .split("/p2p/")
        .next()
        .unwrap()
        .to_string();
    old.kill().await;
    // the same address, a fresh data dir: a new identity (the port may take a moment to
    // be free again)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let founder = loop {
        let mut config = NodeConfig::local(dir.path().join("a2"));
        config.listen = vec![plain.parse().unwrap()];
        match Node::start(config).await {
            Ok(node) => break node,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("{plain} not free yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("cannot listen on {plain} again: {error}"),
        }
    };
    assert_ne!(founder.handle().peer_id(), old_peer, "a new identity");
    let joiner = start_node_with(&dir.path().join("j"), None, |c| {
        c.bootstrap = vec![old_addr.clone()];
    })
    .await;
    let (founder_h, joiner_h) = (founder.handle(), joiner.handle());
    let rounds_seen = std::cell::Cell::new(0);
    let joined = eventually(Duration::from_secs(60), || {
        let (founder_h, joiner_h) = (founder_h.clone(), joiner_h.clone());
        let rounds_seen = &rounds_seen;
        async move {
            let (Ok(j), Ok(f)) = (joiner_h.status().await, founder_h.status().await) else {
                return false;
            };
            if let Some(join) = &j.join {
                rounds_seen.set(rounds_seen.get().max(join.rounds));
            }
            j.phase == "member" && j.members == 2 && f.members == 2
        }
    })
    .await;
    let last = joiner_h.status().await.ok();
    assert!(
        joined,
        "the joiner becomes a member of the new founder's network: {last:?}"
    );
    assert!(
        rounds_seen.get() >= 1,
        "a whole round without a grant passed first ({} seen)",
        rounds_seen.get()
    );
    joiner_h
        .put("after", Some("join"))
        .await
        .expect("the joiner, a member, accepts writes");
    for node in [joiner, founder] {
        node.kill().await;
    }
}

/// `GET /v1/state/{key}` reads one key at the snapshot point (default) or as applied: its
/// value and the cut it was read at; 404 with that cut once it is deleted or if it never
/// was; keys with slashes and spaces are read percent-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_read_at_the_snapshot_point_or_as_applied() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("solo"), None).await;
    let api = node.api_addr().unwrap();
    let me = node.handle().peer_id().to_string();
    for (key, value) in [("a", "1"), ("b", "2"), ("dir/a b", "3")] {
        let body = serde_json::json!({ "key": key, "value": value }).to_string();
        let r = http(api, "POST", "/v1/ops", Some(&body)).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let applied = http(api, "GET", "/v1/state/a?at=applied", None).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let applied = applied.json();
    assert_eq!(
        (&applied["key"], &applied["value"]),
        (&"a".into(), &"1".into())
    );
    assert_eq!(
        applied["at"][&me], 3,
        "read at the applied vector: {applied}"
    );
    // a lone founder's snapshot point follows what it applied
    assert!(
        eventually(SETTLE, || async {
            let r = http(api, "GET", "/v1/state/dir%2Fa%20b", None).await;
            r.status == 200 && r.json()["value"] == "3" && r.json()["at"][&me] == 3
        })
        .await,
        "{}",
        http(api, "GET", "/v1/state/dir%2Fa%20b", None).await.body
    );
    let same = http(api, "GET", "/v1/state/dir/a%20b?at=snapshot", None).await;
    assert_eq!(same.json()["value"], "3", "{}", same.body);
    // a key that sorts between two live keys, or after every key, is not there
    for path in ["/v1/state/aa", "/v1/state/zz?at=applied"] {
        let r = http(api, "GET", path, None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        let r = r.json();
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
        assert_eq!(r["at"][&me], 3, "{r}");
    }
    let del = http(
        api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "a", "value": null}"#),
    )
    .await;
    assert_eq!(del.status, 201);
    let gone = http(api, "GET", "/v1/state/a?at=applied", None).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(gone.json()["at"][&me], 4);
    node.kill().await;
}

/// `/healthz` and `/readyz` answer probes that carry no token: a founder is live and
/// ready; a node whose join goes nowhere is live but not ready, and says why. Every other
/// call still needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_need_no_token_and_a_node_still_joining_is_live_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let token = |c: &mut tidemark::node::NodeConfig| c.api_token = Some("s3cret".into());
    let founder = start_node_with(&dir.path().join("founder"), None, token).await;
    let stuck = start_node_with(&dir.path().join("stuck"), None, |c| {
        token(c);
        // a bootstrap peer that exists nowhere: this node stays joining
        c.bootstrap = vec![
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWPgBH5m8Z79bKAnaDZENa3mpHC4JhZPX54n9Sx3gdwxJj"
                .parse()
                .unwrap(),
        ];
    })
    .await;
    let (f, s) = (founder.api_addr().unwrap(), stuck.api_addr().unwrap());
    for api in [f, s] {
        let live = http(api, "GET", "/healthz", None).await;
        assert_eq!(live.status, 200, "{}", live.body);
        assert_eq!(http(api, "GET", "/v1/status", None).await.status, 401);
    }
    let ready = http(f, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(
        (&ready["ready"], &ready["phase"], &ready["isolated"]),
        (&true.into(), &"member".into(), &false.into())
    );
    let joining = http(s, "GET", "/readyz", None).await;
    assert_eq!(joining.status, 503, "{}", joining.body);
    let joining = joining.json();
    assert_eq!(joining["phase"], "joining");
    assert!(
        joining["error"]
            .as_str()
            .is_some_and(|e| e.contains("joining")),
        "{joining}"
    );
    // once the node has stopped, it is no longer live
    let handle = founder.handle();
    founder.kill().await;
    assert!(!handle.is_running());
    stuck.kill().await;
}

/// `GET /metrics` follows the conventions: running totals are counters whose samples end
/// in `_total` (rejoins, stale notices, evictions issued, refused and rejected ops among
/// them), byte totals end in `_bytes_total`, no gauge looks like a total; and it carries
/// `tidemark_build_info` and the process's CPU seconds, resident memory and open fds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_naming_conventions_and_carry_build_and_process_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // two nodes, so that messages and bytes by kind are counted
    let nodes = cluster(dir.path(), 2).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 2, SETTLE).await;
    let api = nodes[0].api_addr().unwrap();
    let r = http(
        api,
        "POST",
        "/v1/ops",
        Some(r#"{"key": "k", "value": "v"}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(
        eventually(SETTLE, || async {
            let text = http(api, "GET", "/metrics", None).await.body;
            text.contains("tidemark_sent_bytes_total{kind=\"ops\"}")
        })
        .await,
        "the op's batch is counted"
    );
    let text = http(api, "GET", "/metrics", None).await.body;
    let types: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let type_of = |name: &str| types.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    for total in [
        "stale_notices",
        "evictions_issued",
        "suspicions_raised",
        "refutations",
        "rejoins",
        "sponsorships_declined",
        "leaves_failed",
        "own_seq_rollbacks",
        "ops_refused",
        "ops_rejected",
        "messages_in",
        "messages_out",
        "snapshots_taken",
    ] {
        let name = format!("tidemark_{total}");
        assert_eq!(type_of(&name), Some("counter"), "{name}:\n{text}");
    }
    for bytes in [
        "tidemark_received_bytes",
        "tidemark_sent_bytes",
        "tidemark_transfer_fetched_bytes",
        "tidemark_libp2p_bandwidth_bytes",
    ] {
        assert_eq!(type_of(bytes), Some("counter"), "{bytes}:\n{text}");
    }
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    for (name, kind) in &types {
        match *kind {
            "counter" => {
                assert!(
                    !samples.contains(name),
                    "counter {name} has a sample without _total:\n{text}"
                );
                if name.contains("bytes") {
                    assert!(
                        name.ends_with("_bytes"),
                        "{name}_total ends in _bytes_total"
                    );
                }
            }
            _ => assert!(!name.ends_with("_total"), "gauge {name} looks like a total"),
        }
    }
    assert!(
        !samples
            .iter()
            .any(|s| s.ends_with("_bytes_in") || s.ends_with("_bytes_out")),
        "{text}"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    let build = format!(
        "tidemark_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&build), 1.0);
    assert_eq!(type_of("tidemark_build_info"), Some("gauge"));
    assert_eq!(type_of("process_cpu_seconds"), Some("counter"));
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1024.0 * 1024.0);
    assert!(value("process_open_fds") >= 3.0);
    for node in nodes {
        node.kill().await;
    }
}

/// A node that only receives ops commits no transaction per arrival: received ops wait for
/// its next write that must happen (here its checkpoints, at most one each 500 ms while the
/// snapshot point moves), and the ones that checkpoint makes stable are folded into the
/// state without being stored as ops. Nothing is lost: the receiver converges, and after a
/// crash and a restart from its data dir it holds every op again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_only_receives_ops_writes_them_with_its_checkpoints_not_one_commit_each() {
    use tidemark::node::metrics::DurabilityLabel;
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2).await;
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    wait_members(&handles, 2, SETTLE).await;
    let receiver = nodes[1].handle().metrics().clone();
    let commits = || {
        ["synced", "unsynced"]
            .into_iter()
            .map(|durability| {
                receiver
                    .storage_commits
                    .get_or_create(&DurabilityLabel { durability })
                    .get()
            })
            .sum::<u64>()
    };
    let before = commits();
    let start = std::time::Instant::now();
    const OPS: u64 = 1000;
    // one at a time: each write is published in a batch of its own or a few
    for k in 0..OPS {
        handles[0]
            .put(&format!("k{k:04}"), Some("v"))
            .await
            .expect("a member accepts writes");
    }
    assert!(
        eventually(SETTLE, || converged(&handles, 2, OPS)).await,
        "the receiver applies every op and its snapshot point covers them"
    );
    let seconds = start.elapsed().as_secs_f64();
    let made = commits() - before;
    // a checkpoint each 500 ms, and slack for the turns around the two ends
    let bound = (2.0 * seconds).ceil() as u64 + 4;
    assert!(
        made <= bound,
        "{made} commits for {OPS} ops received in {seconds:.2} s (at most {bound})"
    );
    let stored = receiver.ops_stored.get();
    assert!(
        stored < OPS,
        "{stored} of {OPS} ops stored as ops: those stable by the next checkpoint are not"
    );
    // the receiver crashes and restarts from its data dir: it holds every op again
    let mut nodes = nodes;
    nodes.pop().unwrap().kill().await;
    let again = start_node(&dir.path().join("node1"), None).await;
    let handles = [nodes[0].handle(), again.handle()];
    assert!(
        eventually(SETTLE, || converged(&handles, 2, OPS)).await,
        "after the restart both nodes hold all {OPS} ops"
    );
    again.leave().await.unwrap();
    for node in nodes {
        node.leave().await.unwrap();
    }
}
