//! `tidemark snapshot inspect` and `tidemark snapshot verify` on files written by the
//! library: the header as JSON, a verified file, and a damaged one named with its reason.

use std::process::Command;

use tidemark::ops_log::{LwwMap, LwwOp, OpMeta, StateMachine};
use tidemark::snapshot::write_snapshot;
use tidemark::{NodeId, VersionVector};

fn snapshot_file(
    dir: &std::path::Path,
) -> (std::path::PathBuf, tidemark::snapshot::SnapshotHeader) {
    let origin = NodeId::synthetic(3);
    let mut map = LwwMap::default();
    let mut sp = VersionVector::new();
    for seq in 1..=400u64 {
        let op = LwwOp {
            key: format!("k{}", seq % 150),
            value: Some(format!("v{seq}")),
        };
        map.apply(
            &OpMeta {
                origin: &origin,
                seq,
                lamport: seq,
            },
            &op,
        );
        sp.set(origin.clone(), seq);
    }
    let path = dir.join("state.tmsnap");
    let mut out = std::fs::File::create(&path).unwrap();
    let header = write_snapshot(&mut out, &map, &sp, 1_763_800_000_000, 512).unwrap();
    (path, header)
}

fn tidemark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn inspect_prints_the_header_and_verify_checks_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (path, header) = snapshot_file(dir.path());
    let path_str = path.to_str().unwrap();

    let out = tidemark(&["snapshot", "inspect", path_str]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["height"], 400);
    assert_eq!(json["digest"], header.digest.to_hex());
    assert_eq!(json["chunks"], header.chunks.len());
    assert!(header.chunks.len() > 2);
    assert_eq!(
        json["snapshot_point"][NodeId::synthetic(3).to_base58()],
        400
    );

    let out = tidemark(&["snapshot", "verify", path_str]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));

    // damage the last chunk: inspect still reads the header, verify names the chunk
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(tidemark(&["snapshot", "inspect", path_str])
        .status
        .success());
    let out = tidemark(&["snapshot", "verify", path_str]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last_chunk = header.chunks.len() - 1;
    assert!(
        err.contains(&format!("chunk {last_chunk} does not match its hash")),
        "{err}"
    );

    let out = tidemark(&[
        "snapshot",
        "verify",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}
