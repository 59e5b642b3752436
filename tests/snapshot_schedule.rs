//! The snapshot schedule over HTTP (SPEC §6, Antelope parity): requests are validated,
//! duplicates refused, due heights taken as the snapshot point reaches them, a finished
//! request stays readable as `done` until deleted, requests and their id counter survive a
//! restart, and retention keeps every snapshot a request took while the request exists,
//! and the most recent final ones of the rest.

mod support;

use std::time::Duration;

use support::{eventually, http, start_node_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_takes_due_heights_keeps_done_requests_and_their_snapshots_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = start_node_with(&data, None, |_| {}).await;
    let api = node.api_addr().unwrap();
    let post = |body: &'static str| http(api, "POST", "/v1/snapshots/schedule", Some(body));

    let bad = post(r#"{"start_height": 50, "end_height": 10}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("after end_height"), "{}", bad.body);
    let bad = post(r#"{"start_height": 10, "end_height": 20, "spacing": 15}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("beyond the range"), "{}", bad.body);
    assert_eq!(post(r#"{"spacing": 0}"#).await.status, 400);
    assert_eq!(
        post(r#"{"every": 3}"#).await.status,
        400,
        "unknown fields are refused"
    );

    let every_ten = post(
        r#"{"start_height": 10, "end_height": 200, "spacing": 10, "description": "every 10"}"#,
    )
    .await;
    assert_eq!(every_ten.status, 201, "{}", every_ten.body);
    let every_ten = every_ten.json();
    assert_eq!(every_ten["request_id"], 1);
    assert_eq!(every_ten["description"], "every 10");
    let dup = post(r#"{"start_height": 10, "end_height": 200, "spacing": 10}"#).await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    let once = post(r#"{"start_height": 5, "of": "applied"}"#).await;
    assert_eq!(once.status, 201, "{}", once.body);
    assert_eq!(once.json()["of"], "applied");
    let far = post(r#"{"start_height": 100000}"#).await.json();
    assert_eq!(far["request_id"], 3);

    let page = http(api, "GET", "/v1/snapshots/requests?limit=2", None)
        .await
        .json();
    assert_eq!(page["requests"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_id"], 3);
    let page = http(api, "GET", "/v1/snapshots/requests?start_id=3", None)
        .await
        .json();
    assert_eq!(page["requests"][0]["request_id"], 3);
    assert!(page["next_id"].is_null());
    assert_eq!(
        http(api, "GET", "/v1/snapshots/requests?limit=0", None)
            .await
            .status,
        400
    );

    let handle = node.handle();
    for i in 0..45 {
        handle
            .put(&format!("k{}", i % 7), Some(&format!("v{i}")))
            .await
            .unwrap();
        if i % 10 == 9 {
            // a pause now and then, as real writers have: the snapshot point catches up,
            // so it reaches the scheduled heights one by one rather than jumping over them
            let height = i as u64 + 1;
            assert!(
                eventually(Duration::from_secs(10), || async {
                    handle
                        .status()
                        .await
                        .is_ok_and(|s| s.snapshot_point.values().sum::<u64>() >= height)
                })
                .await,
                "the snapshot point reaches {height}"
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            let r = http(api, "GET", "/v1/snapshots/requests/1", None)
                .await
                .json();
            r["snapshots"]
                .as_array()
                .is_some_and(|s| s.last().is_some_and(|t| t["scheduled_height"] == 40))
        })
        .await,
        "heights 10..40 are taken as the snapshot point reaches them: {}",
        http(api, "GET", "/v1/snapshots/requests/1", None)
            .await
            .body
    );
    let request = http(api, "GET", "/v1/snapshots/requests/1", None)
        .await
        .json();
    let taken = request["snapshots"].as_array().unwrap();
    for t in taken {
        assert!(t["height"].as_u64() >= t["scheduled_height"].as_u64());
        assert_eq!(
            t["status"], "final",
            "a snapshot of the stable state is final"
        );
    }
    assert_eq!(request["next_height"], 50);
    assert_eq!(request["status"], "active");
    // the one-off request took its snapshot and is done, but stays readable
    assert!(
        eventually(Duration::from_secs(10), || async {
            let r = http(api, "GET", "/v1/snapshots/requests/2", None).await;
            r.status == 200 && r.json()["status"] == "done"
        })
        .await,
        "{}",
        http(api, "GET", "/v1/snapshots/requests/2", None)
            .await
            .body
    );
    let once = http(api, "GET", "/v1/snapshots/requests/2", None)
        .await
        .json();
    assert!(once["next_height"].is_null());
    let once_taken = once["snapshots"].as_array().unwrap().clone();
    assert_eq!(once_taken.len(), 1, "{once}");
    // retention (keep 2) prunes none of the snapshots a request took while it exists
    let listed = http(api, "GET", "/v1/snapshots", None).await.json();
    let listed: Vec<_> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert!(taken.len() >= 3, "{taken:?}");
    for t in taken.iter().chain(&once_taken) {
        assert_eq!(t["available"], true, "{t}");
        assert!(listed.contains(&t["snapshot_id"]), "{t} in {listed:?}");
    }

    // a restart keeps the requests, done ones too, and the id counter
    node.kill().await;
    let node = start_node_with(&data, None, |_| {}).await;
    let api = node.api_addr().unwrap();
    let page = http(api, "GET", "/v1/snapshots/requests", None)
        .await
        .json();
    let ids: Vec<(u64, &str)> = page["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["request_id"].as_u64().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids, vec![(1, "active"), (2, "done"), (3, "active")]);
    let again = http(api, "GET", "/v1/snapshots/requests/1", None)
        .await
        .json();
    assert_eq!(again["snapshots"].as_array().unwrap().len(), taken.len());
    let next = http(
        api,
        "POST",
        "/v1/snapshots/schedule",
        Some(r#"{"start_height": 7}"#),
    )
    .await;
    assert_eq!(
        next.json()["request_id"],
        4,
        "ids are not reused after a restart"
    );
    // deleting a request hands its snapshots back to retention: the two newest final
    // ones not held by a request stay
    let removed = http(api, "DELETE", "/v1/snapshots/requests/1", None).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(
        http(api, "GET", "/v1/snapshots/requests/1", None)
            .await
            .status,
        404
    );
    let listed = http(api, "GET", "/v1/snapshots", None).await.json();
    let listed: Vec<_> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    let ids = |taken: &[serde_json::Value]| -> Vec<serde_json::Value> {
        taken.iter().map(|t| t["snapshot_id"].clone()).collect()
    };
    let still: Vec<_> = ids(taken)
        .into_iter()
        .filter(|id| listed.contains(id))
        .collect();
    // request 4 may share the newest of them, when the snapshot point jumped past height
    // 40 straight to where it stands now: that one stays held
    let fourth = http(api, "GET", "/v1/snapshots/requests/4", None)
        .await
        .json();
    // (and request 2's snapshot of the applied state is the same one when it was taken at
    // a height the snapshot point stood at)
    let mut held = ids(fourth["snapshots"].as_array().unwrap());
    held.extend(ids(&once_taken));
    let free: Vec<_> = ids(taken)
        .into_iter()
        .filter(|id| !held.contains(id))
        .collect();
    let expected: Vec<_> = ids(taken)
        .into_iter()
        .filter(|id| held.contains(id) || free[free.len().saturating_sub(2)..].contains(id))
        .collect();
    assert_eq!(
        still, expected,
        "only the two newest not held by another request stay: {listed:?}"
    );
    assert!(
        listed.contains(&once_taken[0]["snapshot_id"]),
        "the done request's snapshot is still held: {listed:?}"
    );
    let gone = removed.json();
    assert_eq!(gone["status"], "active");
    // the deleted request's answer says which of its snapshots retention let go
    for t in gone["snapshots"].as_array().unwrap() {
        assert_eq!(
            t["available"],
            expected.contains(&t["snapshot_id"]),
            "{gone}"
        );
    }
    assert!(
        gone["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["available"] == false),
        "retention let at least one go: {gone}"
    );
    // a done request is deleted like any other
    let removed = http(api, "DELETE", "/v1/snapshots/requests/2", None).await;
    assert_eq!(removed.status, 200);
    assert_eq!(removed.json()["status"], "done");
    let removed = http(api, "DELETE", "/v1/snapshots/requests/3", None).await;
    assert_eq!(removed.status, 200);
    assert_eq!(removed.json()["request_id"], 3);
    assert_eq!(
        http(api, "DELETE", "/v1/snapshots/requests/3", None)
            .await
            .status,
        404
    );
    assert_eq!(
        http(api, "GET", "/v1/snapshots/requests/three", None)
            .await
            .status,
        400
    );
    node.kill().await;
}
