//! A hostile peer on the node's open port (signed ops): it connects over the real transport
//! and sends direct messages carrying forged, mutated and unsigned ops, ops signed in its
//! own name (it is not a member), then a flood of garbage. The node applies none of them,
//! counts each rejection in `/metrics` by reason, and disconnects and blocks the flooder.
//! A non-member's ops signed in its own name never enter any member's snapshot point.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, PeerId};
use support::{eventually, http, metric, start_node};
use tidemark::gossip::{encode, Message, OpsBatch, Records, Repair};
use tidemark::node::codec::{write_frame, DIRECT_PROTOCOL};
use tidemark::node::signing::PeerIdAuthenticator;
use tidemark::node::views::At;
use tidemark::ops_log::{LwwMap, LwwOp, Op, OpAuthenticator};
use tidemark::{NodeId, VersionVector};
use tokio::sync::mpsc;

fn node_id(peer: &PeerId) -> NodeId {
    NodeId::from_bytes(&peer.to_bytes()).unwrap()
}

fn put(key: &str, value: &str) -> LwwOp {
    LwwOp {
        key: key.into(),
        value: Some(value.into()),
    }
}

/// The `seq`-th op of `origin` (its first ops, nothing else applied), signed by `signer`.
fn op(
    origin: &NodeId,
    seq: u64,
    payload: LwwOp,
    signer: Option<&dyn OpAuthenticator>,
) -> Op<LwwOp> {
    let mut deps = VersionVector::new();
    deps.set(origin.clone(), seq - 1);
    let mut op = Op {
        origin: origin.clone(),
        seq,
        lamport: seq,
        deps,
        payload,
        signature: None,
    };
    if let Some(signer) = signer {
        op.sign(signer);
    }
    op
}

fn repair(ops: Vec<Op<LwwOp>>) -> Vec<u8> {
    encode::<LwwMap>(&Message::Repair(Repair {
        ops: OpsBatch(ops.into_iter().map(Arc::new).collect()),
        records: Records(Vec::new()),
        more: false,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_not_signed_by_their_origin_are_rejected_and_a_flooder_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), None).await;
    let api = node.api_addr().unwrap();
    let node_addr = node.listen_addrs()[0].clone();
    let node_peer: PeerId = node.handle().peer_id().parse().unwrap();
    let honest = node_id(&node_peer);

    // the hostile peer: the node's transport, and the direct protocol spoken by hand
    let key = Keypair::generate_ed25519();
    let me = node_id(&key.public().to_peer_id());
    let signer = PeerIdAuthenticator::new(key.clone(), "tidemark");
    let stranger = PeerIdAuthenticator::new(Keypair::generate_ed25519(), "tidemark");
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(node_addr.clone()).unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (dial_tx, mut dial_rx) = mpsc::unbounded_channel::<()>();
    let driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                event = swarm.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => { let _ = events_tx.send("connected"); }
                    SwarmEvent::ConnectionClosed { .. } => { let _ = events_tx.send("closed"); }
                    SwarmEvent::OutgoingConnectionError { .. } => { let _ = events_tx.send("refused"); }
                    _ => {}
                },
                Some(()) = dial_rx.recv() => { let _ = swarm.dial(node_addr.clone()); }
            }
        }
    });
    assert_eq!(events.recv().await, Some("connected"));
    let mut stream = control
        .open_stream(node_peer, DIRECT_PROTOCOL)
        .await
        .unwrap();
    let mut send = async |frame: Vec<u8>| {
        write_frame(&mut stream, &frame).await?;
        stream.flush().await
    };

    let genuine = op(&me, 1, put("mine", "genuine"), Some(&signer));
    // forged: an op in the honest node's name, signed with the hostile key
    let forged = op(&honest, 1, put("forged", "x"), Some(&signer));
    // mutated: signed, then its value changed
    let mut mutated = op(&me, 2, put("mine", "second"), Some(&signer));
    mutated.payload = put("mine", "evil");
    // unsigned, and signed by a stranger
    let unsigned = op(&me, 2, put("mine", "unsigned"), None);
    let strangers = op(&me, 2, put("mine", "stranger"), Some(&stranger));
    send(repair(vec![genuine.clone()])).await.unwrap();
    send(repair(vec![forged])).await.unwrap();
    send(repair(vec![mutated])).await.unwrap();
    send(repair(vec![unsigned])).await.unwrap();
    send(repair(vec![strangers])).await.unwrap();
    send(repair(vec![genuine])).await.unwrap(); // again: still not a member

    let counts = |body: &str| {
        [
            "ops_rejected_total{reason=\"bad_signature\"}",
            "ops_rejected_total{reason=\"unsigned\"}",
            "ops_rejected_total{reason=\"not_member\"}",
        ]
        .map(|name| metric(body, name))
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            counts(&http(api, "GET", "/metrics", None).await.body) == [Some(3), Some(1), Some(2)]
        })
        .await,
        "3 forged or mutated, 1 unsigned, 2 signed by a non-member: {:?}",
        counts(&http(api, "GET", "/metrics", None).await.body)
    );
    let state = node.handle().state(At::Applied).await.unwrap();
    assert!(
        state.entries.is_empty(),
        "nothing is applied: {:?}",
        state.entries
    );

    // a flood of garbage: the node disconnects the sender and refuses it afterwards
    for _ in 0..20 {
        // the node closes the stream once it blocks the sender
        let _ = send(vec![0xff; 64]).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(closed, Ok(Some("closed")), "the flooder is disconnected");
    let body = http(api, "GET", "/metrics", None).await.body;
    assert_eq!(metric(&body, "peers_blocked_total"), Some(1), "{body}");
    // 40 points for the bad ops, 10 per garbage message: blocked at the 6th
    assert!(metric(&body, "peer_offences_total{kind=\"malformed\"}").unwrap() >= 6);
    dial_tx.send(()).unwrap();
    // the dial fails, or its connection is closed as soon as the node sees who it is
    // (well before the 60 s idle timeout would close it)
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .ok()
            .flatten()
    };
    let mut after = next().await;
    if after == Some("connected") {
        after = next().await;
    }
    assert!(
        matches!(after, Some("refused") | Some("closed")),
        "a blocked peer cannot connect again, got {after:?}"
    );
    driver.abort();
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_writing_in_its_own_name_never_enters_the_snapshot_point() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_node(&dir.path().join("a"), None).await;
    let b = start_node(&dir.path().join("b"), Some(&a)).await;
    let (ha, hb) = (a.handle(), b.handle());
    support::wait_members(&[ha.clone(), hb.clone()], 2, Duration::from_secs(30)).await;
    let node_addr = a.listen_addrs()[0].clone();
    let node_peer: PeerId = ha.peer_id().parse().unwrap();

    // a third-party peer connected to member a, writing ops signed in its own name
    let key = Keypair::generate_ed25519();
    let outsider = node_id(&key.public().to_peer_id());
    let signer = PeerIdAuthenticator::new(key.clone(), "tidemark");
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(node_addr).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut stream = control
        .open_stream(node_peer, DIRECT_PROTOCOL)
        .await
        .unwrap();
    let ops: Vec<_> = (1..=3)
        .map(|seq| {
            op(
                &outsider,
                seq,
                put(&format!("intruder{seq}"), "x"),
                Some(&signer),
            )
        })
        .collect();
    for op in ops {
        write_frame(&mut stream, &repair(vec![op])).await.unwrap();
        stream.flush().await.unwrap();
    }
    let api = a.api_addr().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let body = http(api, "GET", "/metrics", None).await.body;
            metric(&body, "ops_rejected_total{reason=\"not_member\"}") == Some(3)
        })
        .await,
        "the outsider's 3 ops are refused as not a member's"
    );

    // a member's write after them becomes stable everywhere; the outsider's never do
    let mine = hb.put("member", Some("1")).await.unwrap();
    let outsider_text = outsider.to_base58();
    for h in [&ha, &hb] {
        assert!(
            eventually(Duration::from_secs(20), || async {
                let status = h.status().await.unwrap();
                status.snapshot_point.get(&mine.origin) == Some(&mine.seq)
            })
            .await,
            "the member's write becomes stable"
        );
        let status = h.status().await.unwrap();
        assert_eq!(status.applied.get(&outsider_text), None, "{status:?}");
        assert_eq!(
            status.snapshot_point.get(&outsider_text),
            None,
            "{status:?}"
        );
        let state = h.state(At::Snapshot).await.unwrap();
        let keys: Vec<_> = state.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["member"], "no op of the outsider is stable");
    }
    driver.abort();
}
