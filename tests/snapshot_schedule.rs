//! The snapshot schedule over HTTP (SPEC §6, Antelope parity): requests are validated,
//! duplicates refused, due heights taken as the snapshot point reaches them, requests and
//! their id counter survive a restart, and retention keeps the most recent final ones.

mod support;

use std::time::Duration;

use support::{eventually, http, start_node_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_takes_due_heights_survives_a_restart_and_retention_keeps_the_newest() {
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
    // the one-off request took its snapshot and removed itself
    assert!(
        eventually(Duration::from_secs(10), || async {
            http(api, "GET", "/v1/snapshots/requests/2", None)
                .await
                .status
                == 404
        })
        .await
    );
    // retention: two final snapshots kept, the most recent
    let listed = http(api, "GET", "/v1/snapshots", None).await.json();
    let listed = listed["snapshots"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let newest = taken.last().unwrap()["snapshot_id"].clone();
    assert!(listed.iter().any(|s| s["id"] == newest));
    assert!(
        taken.iter().any(|t| t["available"] == false),
        "older snapshots were removed by retention: {taken:?}"
    );

    // a restart keeps the requests and the id counter
    node.kill().await;
    let node = start_node_with(&data, None, |_| {}).await;
    let api = node.api_addr().unwrap();
    let page = http(api, "GET", "/v1/snapshots/requests", None)
        .await
        .json();
    let ids: Vec<u64> = page["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 3]);
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
