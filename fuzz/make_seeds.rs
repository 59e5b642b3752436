//! Writes valid inputs into `corpus/<target>/` for the fuzzer to start from: a snapshot
//! file, framed chunk requests and answers, API bodies, and gossip messages taken from a
//! small in-memory network.

use std::path::Path;

use tidemark::gossip::{encode, Message, OpsBatch, Records, Repair};
use tidemark::node::signing::PeerIdAuthenticator;
use tidemark::ops_log::{LwwEntry, LwwMap, LwwOp, OpsLog};
use tidemark::snapshot::{read_header, write_snapshot};
use tidemark::testing::LoopbackNet;
use tidemark::{NodeId, VersionVector};

fn put(dir: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn main() {
    // a snapshot of 40 keys in chunks of about 256 bytes
    let origin = NodeId::synthetic(1);
    let mut state = LwwMap::default();
    for i in 0..40u64 {
        let entry = LwwEntry {
            value: (i % 7 != 0).then(|| format!("value-{i}").into()),
            lamport: i + 1,
            origin: origin.clone(),
        };
        state.push_in_order(format!("key{i:03}"), entry).unwrap();
    }
    let mut cut = VersionVector::new();
    cut.set(origin, 40);
    let mut file = Vec::new();
    write_snapshot(&mut file, &state, &cut, 1, 256).unwrap();
    put("snapshot_file", "small", &file);

    // the same snapshot as `snapshot_body` takes it apart: flags, then length-prefixed
    // parts (the snapshot point, then each chunk; or the header as it is)
    let mut input = std::io::Cursor::new(&file);
    let header = read_header(&mut input).unwrap();
    let body = &file[input.position() as usize..];
    let part = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let mut cut_bytes = Vec::new();
    ciborium::into_writer(&cut, &mut cut_bytes).unwrap();
    let chunks: Vec<&[u8]> = (0..header.chunks.len())
        .map(|i| {
            let at = header.chunk_offset(i) as usize;
            &body[at..at + header.chunks[i].len as usize]
        })
        .collect();
    for (name, flags) in [("whole", 0b1100u8), ("count", 0b0100), ("v1", 0b1110)] {
        let mut seed = vec![flags];
        part(&mut seed, &cut_bytes);
        for chunk in &chunks {
            part(&mut seed, chunk);
        }
        put("snapshot_body", name, &seed);
    }
    let mut header_bytes = Vec::new();
    ciborium::into_writer(&header, &mut header_bytes).unwrap();
    let mut seed = vec![1u8];
    part(&mut seed, &header_bytes);
    for chunk in &chunks {
        part(&mut seed, chunk);
    }
    put("snapshot_body", "raw-header", &seed);

    // chunk requests and answers as framed on a transfer stream
    let mut request = Vec::new();
    ciborium::into_writer(
        &serde_json::json!({"snapshot_id": "00000000000000000040-0123456789abcdef", "index": 3}),
        &mut request,
    )
    .unwrap();
    let mut chunk_answer = vec![0u8];
    chunk_answer.extend_from_slice(&file[..64.min(file.len())]);
    let mut stream = frame(&request);
    stream.extend(frame(&chunk_answer));
    stream.extend(frame(&[1]));
    stream.extend(frame(b"\x02cannot read"));
    put("stream_frames", "exchange", &stream);

    // API bodies
    put("api_bodies", "write", br#"{"key": "k", "value": "v"}"#);
    put("api_bodies", "delete", br#"{"key": "k", "value": null}"#);
    put(
        "api_bodies",
        "schedule",
        br#"{"start_height": 10, "end_height": 100, "spacing": 10, "description": "d", "of": "applied"}"#,
    );

    // gossip and direct messages of a small network: writes, a joiner, anti-entropy
    let mut net = LoopbackNet::<LwwMap>::genesis(3);
    net.record = true;
    let mut seen = 0;
    let mut keep = |net: &mut LoopbackNet<LwwMap>| {
        // a few of each burst: they repeat
        for message in std::mem::take(&mut net.recorded).iter().step_by(7).take(12) {
            put("wire_message", &format!("m{seen:03}"), &encode(message));
            seen += 1;
        }
    };
    for i in 0..5 {
        net.write(i % 3, LwwOp {
            key: format!("k{i}"),
            value: Some("v".into()),
        });
        net.run_for(std::time::Duration::from_millis(20));
        keep(&mut net);
    }
    net.add_joiner(NodeId::synthetic(9), NodeId::synthetic(0));
    net.run_for(std::time::Duration::from_millis(1500));
    keep(&mut net);
    // a repair with ops signed by their origin, as real nodes send them
    let key = libp2p::identity::Keypair::generate_ed25519();
    let signer = PeerIdAuthenticator::new(key.clone(), "fuzz");
    let origin = NodeId::from_bytes(&key.public().to_peer_id().to_bytes()).unwrap();
    let mut log = OpsLog::<LwwMap>::new();
    let ops = (0..3)
        .map(|i| {
            let payload = LwwOp {
                key: format!("s{i}"),
                value: Some("v".into()),
            };
            log.create_signed(&origin, payload, Some(&signer))
        })
        .collect();
    let repair = Message::<LwwMap>::Repair(Repair {
        ops: OpsBatch(ops),
        records: Records(Vec::new()),
        more: false,
    });
    put("wire_message", "signed_repair", &encode(&repair));
    println!("wrote {} wire messages and the other seeds under corpus/", seen + 1);
}
