//! The ceiling any chunk transfer meets on this machine: bytes moved over the transport
//! stack the nodes use (TCP with nodelay, noise, yamux with its defaults, libp2p-stream),
//! as 1 MiB answers to requests on 16 streams, as a fetch asks for chunks, between two
//! swarms in this process over loopback. Nothing is read from disk, verified or stored:
//! what is left is encryption, multiplexing and copies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/tidemark-bench/chunks/1");
const CHUNK: usize = 1 << 20;
const STREAMS: usize = 16;

fn swarm() -> Swarm<libp2p_stream::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("the transport builds")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("the behaviour builds")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Moves `total` bytes (rounded up to whole chunks) and returns how long it took.
pub async fn transport_ceiling(total: u64) -> Duration {
    let mut server = swarm();
    let mut client = swarm();
    server
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(PROTOCOL)
        .expect("accepted once");
    let control = client.behaviour().new_control();
    client.dial(addr).unwrap();
    let driving = [
        tokio::spawn(async move {
            loop {
                server.select_next_some().await;
            }
        }),
        tokio::spawn(async move {
            loop {
                client.select_next_some().await;
            }
        }),
    ];
    let serving = tokio::spawn(async move {
        let chunk: Arc<Vec<u8>> = Arc::new((0..CHUNK).map(|i| (i * 7 + 3) as u8).collect());
        while let Some((_, mut stream)) = incoming.next().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4];
                while stream.read_exact(&mut request).await.is_ok() {
                    if stream.write_all(&chunk).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let chunks = total.div_ceil(CHUNK as u64);
    let asked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..STREAMS {
        let mut control = control.clone();
        let asked = asked.clone();
        // each stream opened once the one before carried an answer, as a fetch does
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        workers.push(tokio::spawn(async move {
            let mut stream = loop {
                match control.open_stream(server_id, PROTOCOL).await {
                    Ok(stream) => break stream,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            let mut answer = vec![0u8; CHUNK];
            let mut opened = Some(opened_tx);
            while asked.fetch_add(1, Ordering::Relaxed) < chunks {
                stream.write_all(&[0; 4]).await.unwrap();
                stream.flush().await.unwrap();
                stream.read_exact(&mut answer).await.unwrap();
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
            }
        }));
        let _ = opened_rx.await;
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let took = started.elapsed();
    serving.abort();
    for task in driving {
        task.abort();
    }
    took
}
