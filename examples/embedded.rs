//! An application embedding two tidemark nodes in-process: it writes through one, and waits
//! on the other's snapshot-point watch until the write is final everywhere; then it writes
//! with a write concern, so that the write itself answers once the op is final.
//!
//! `cargo run --example embedded`

use std::time::Duration;

use tidemark::node::views::At;
use tidemark::node::{Node, NodeConfig, WriteConcern};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut first = NodeConfig::local(dir.path().join("a"));
    first.api = None; // no HTTP needed in-process
    let a = Node::start(first).await?;
    let mut second = NodeConfig::local(dir.path().join("b"));
    second.api = None;
    second.bootstrap = a.listen_addrs().to_vec();
    let b = Node::start(second).await?;

    // wait until b has joined, then write through it
    let hb = b.handle();
    let op = loop {
        match hb.put("greeting", Some("hello")).await {
            Ok(op) => break op,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    println!("wrote op {} of {}", op.seq, op.origin);

    // the op is final once it is inside a's snapshot point
    let mut watch = a.handle().watch_snapshot_point();
    let final_at = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if watch.borrow_and_update().snapshot_point.get(&op.origin) >= Some(&op.seq) {
                return watch.borrow().clone();
            }
            watch.changed().await.expect("node running");
        }
    })
    .await?;
    println!(
        "final at a snapshot point of {} ops, digest {}",
        final_at.ops, final_at.digest
    );
    let state = a.handle().state(At::Snapshot).await?;
    println!("stable state: {:?}", state.entries);

    // or let the write wait: answered once the op is under b's snapshot point
    let op = hb
        .put_with(
            "farewell",
            Some("bye"),
            WriteConcern::Stable,
            Duration::from_secs(30),
        )
        .await?;
    println!("op {} of {} is final", op.seq, op.origin);

    b.leave().await?;
    a.leave().await?;
    Ok(())
}
