//! Snapshots of a real node over its HTTP API: made on request from the stable state,
//! listed, downloaded as a file that verifies, and refused for unknown ids.

mod support;

use std::io::Cursor;
use std::net::SocketAddr;
use std::time::Duration;

use support::{eventually, http, start_node};
use tidemark::ops_log::LwwMap;
use tidemark::snapshot::read_snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` and return the status and the raw body bytes.
async fn get_bytes(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the file is sent with its length"
    );
    (status, raw[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_the_stable_state_is_made_listed_and_downloaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("solo"), None).await;
    let handle = node.handle();
    for i in 0..300 {
        handle
            .put(&format!("key{}", i % 120), Some(&format!("value {i}")))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            handle.watch_snapshot_point().borrow().ops == 300
        })
        .await,
        "a lone founder's snapshot point reaches its writes"
    );
    let api = node.api_addr().unwrap();
    let made = http(api, "POST", "/v1/snapshots", None).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let info = made.json();
    assert_eq!(info["height"], 300);
    assert_eq!(info["status"], "final");
    let status = http(api, "GET", "/v1/status", None).await.json();
    assert_eq!(
        info["digest"], status["digest"],
        "the stable state's digest"
    );

    let list = http(api, "GET", "/v1/snapshots", None).await.json();
    let listed = list["snapshots"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], info);

    let id = info["id"].as_str().unwrap();
    let (code, bytes) = get_bytes(api, &format!("/v1/snapshots/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(bytes.len() as u64, info["bytes"].as_u64().unwrap());
    let (header, state): (_, LwwMap) = read_snapshot(&mut Cursor::new(&bytes)).unwrap();
    assert_eq!(header.height, 300);
    assert_eq!(state.entries().count(), 120);
    let at_snapshot = handle
        .state(tidemark::node::views::At::Snapshot)
        .await
        .unwrap();
    assert_eq!(header.digest.to_hex(), at_snapshot.digest);

    for bad in [
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
        "00000000000000000300-0000000000000000",
    ] {
        let r = http(api, "GET", &format!("/v1/snapshots/{bad}"), None).await;
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
        assert!(r.json()["error"].as_str().is_some());
    }
    node.kill().await;
}
