//! The real node: the protocol core driven over libp2p and tokio, with durable storage, an
//! HTTP API and metrics beside it (feature `node`, on by default).
//!
//! | part | what it owns |
//! |---|---|
//! | `driver` (private) | the swarm (gossipsub, direct streams, identify over tcp + noise + yamux) and the event loop that feeds the [`Replica`](crate::replica::Replica) and carries out its actions |
//! | `address_book` (private) | the peer addresses any dial by peer id uses |
//! | [`codec`] | length-prefixed CBOR frames of the direct protocol |
//! | `direct` (private) | direct messages: one long-lived stream per peer, and readers of inbound streams |
//! | [`storage`] | the redb database: node key, checkpoint, op suffix |
//! | [`snapshots`] | snapshot files of the stable state, made off the event loop, listed and served |
//! | [`http`] | the axum HTTP API (SPEC §7, plus the snapshot-point watch and `/metrics`) |
//! | [`views`] | JSON shapes of the API |
//! | [`demo`] | `tidemark demo`: a local network of real nodes on loopback |
//!
//! The library API is [`Node::start`] and the [`NodeHandle`] it hands out.

mod address_book;
pub mod codec;
pub mod demo;
mod direct;
mod driver;
pub mod http;
pub mod metrics;
pub mod snapshots;
pub mod storage;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::gossip::GossipConfig;
use crate::ops_log::LwwOp;
use crate::replica::WriteRefused;
use crate::VersionVector;
pub use metrics::Metrics;
use views::{At, NetworkMapView, OpIdView, Page, SnapshotPointView, StateView, StatusView};

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its key, checkpoint and ops (created if missing).
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on (`/ip4/127.0.0.1/tcp/0` picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; empty founds a new network (or resumes the stored one).
    pub bootstrap: Vec<Multiaddr>,
    /// The network's name: nodes gossip on the topic `tidemark/<network>/ops`.
    pub network: String,
    /// Where to serve the HTTP API; `None` serves none.
    pub api: Option<SocketAddr>,
    pub gossip: GossipConfig,
}

impl NodeConfig {
    /// A config for a node on 127.0.0.1 with OS-assigned ports and an API.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            network: "tidemark".into(),
            api: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            gossip: GossipConfig::default(),
        }
    }
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(Box<storage::StorageError>),
    #[error("the stored node key is unreadable: {0}")]
    Key(String),
    #[error("the stored state does not belong to this node key ({0})")]
    ForeignState(String),
    #[error("cannot resume the stored state: {0}")]
    Resume(#[from] crate::replica::ResumeError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot set up the network stack: {0}")]
    Transport(String),
    #[error("bootstrap address {0} is not a usable multiaddr")]
    Bootstrap(Multiaddr),
    #[error("cannot serve the HTTP API on {addr}: {reason}")]
    Api { addr: SocketAddr, reason: String },
    #[error("the node has stopped")]
    Stopped,
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

impl From<storage::StorageError> for NodeError {
    fn from(e: storage::StorageError) -> Self {
        NodeError::Storage(Box::new(e))
    }
}

/// Why a write was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Refused(#[from] WriteRefused),
    #[error("the op could not be stored durably: {0}")]
    NotDurable(String),
    #[error("the node has stopped")]
    Stopped,
}

pub(crate) enum Command {
    Write {
        op: LwwOp,
        reply: oneshot::Sender<Result<OpIdView, WriteError>>,
    },
    Status(oneshot::Sender<StatusView>),
    State {
        at: At,
        page: Page,
        reply: oneshot::Sender<StateView>,
    },
    NetworkMap(oneshot::Sender<NetworkMapView>),
    /// The stable state and its cut (a persistent map: the clone is O(1)).
    StableState(oneshot::Sender<(crate::ops_log::LwwMap, VersionVector)>),
    /// Leave gracefully, then stop; answered once the node has stopped.
    Leave(oneshot::Sender<()>),
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    snapshot_point: watch::Receiver<SnapshotPointView>,
    applied: watch::Receiver<VersionVector>,
    snapshots: Arc<snapshots::SnapshotStore>,
    peer_id: String,
    metrics: Arc<Metrics>,
}

impl NodeHandle {
    /// This node's peer id (base58).
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Writes `key = value` (`None` deletes) as a new op of this node. Returns once the op
    /// is applied and stored durably.
    pub async fn put(&self, key: &str, value: Option<&str>) -> Result<OpIdView, WriteError> {
        let (reply, answer) = oneshot::channel();
        let op = LwwOp {
            key: key.into(),
            value: value.map(Into::into),
        };
        self.commands
            .send(Command::Write { op, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    pub async fn status(&self) -> Result<StatusView, NodeError> {
        self.ask(Command::Status).await
    }

    /// The state at the snapshot point or everything applied, sorted by key.
    pub async fn state(&self, at: At) -> Result<StateView, NodeError> {
        self.state_page(at, Page::default()).await
    }

    /// One page of the state, sorted by key: from `page.start_key` on, at most
    /// `page.limit` entries; `next_key` says where the next page starts.
    pub async fn state_page(&self, at: At, page: Page) -> Result<StateView, NodeError> {
        self.ask(|reply| Command::State { at, page, reply }).await
    }

    pub async fn network_map(&self) -> Result<NetworkMapView, NodeError> {
        self.ask(Command::NetworkMap).await
    }

    /// A receiver that sees every change of the snapshot point.
    pub fn watch_snapshot_point(&self) -> watch::Receiver<SnapshotPointView> {
        self.snapshot_point.clone()
    }

    /// Writes a snapshot file of the stable state at the current snapshot point. The state
    /// is taken in O(1) and written on a blocking thread, so the node goes on applying ops.
    pub async fn create_snapshot(&self) -> Result<snapshots::SnapshotInfo, NodeError> {
        let (state, cut) = self.ask(Command::StableState).await?;
        let store = self.snapshots.clone();
        tokio::task::spawn_blocking(move || store.create(&state, &cut))
            .await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::from)
    }

    /// The snapshot files this node holds, by height.
    pub async fn snapshots(&self) -> Result<Vec<snapshots::SnapshotInfo>, NodeError> {
        let store = self.snapshots.clone();
        tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::from)
    }

    /// The path of snapshot `id`'s file, if this node holds it.
    pub fn snapshot_file(&self, id: &str) -> Option<PathBuf> {
        self.snapshots.file(id)
    }

    /// A receiver that sees every change of what this node has applied (its applied
    /// vector; a rejoin may lower it).
    pub fn watch_applied(&self) -> watch::Receiver<VersionVector> {
        self.applied.clone()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Leaves the network gracefully (SPEC §5) and stops the node.
    pub async fn leave(&self) -> Result<(), NodeError> {
        self.ask(Command::Leave).await
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)
    }
}

/// A running node: its event loop and, if configured, its HTTP API.
pub struct Node {
    handle: NodeHandle,
    listen_addrs: Vec<Multiaddr>,
    api_addr: Option<SocketAddr>,
    driver: JoinHandle<Result<(), NodeError>>,
    api: Option<JoinHandle<()>>,
}

impl Node {
    /// Opens the data dir, starts the swarm, and founds, joins or resumes a network.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let started = driver::start(&config).await?;
        let handle = started.handle.clone();
        let (api_addr, api) = match config.api {
            Some(addr) => {
                let (bound, task) = http::serve(addr, handle.clone()).await?;
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        Ok(Node {
            handle,
            listen_addrs: started.listen_addrs,
            api_addr,
            driver: started.task,
            api,
        })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>` (ready to be
    /// another node's `--bootstrap`).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Where the HTTP API is served, if it is.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Leaves gracefully, then waits for the node to stop.
    pub async fn leave(self) -> Result<(), NodeError> {
        let _ = self.handle.leave().await;
        if let Some(api) = &self.api {
            api.abort();
        }
        match self.driver.await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Stopped),
        }
    }

    /// Stops at once, as a crash would: nothing is announced (what was stored stays).
    pub async fn kill(self) {
        self.driver.abort();
        if let Some(api) = &self.api {
            api.abort();
        }
        let _ = self.driver.await;
    }

    /// Waits until the node stops by itself (after a leave), returning why.
    pub async fn wait(self) -> Result<(), NodeError> {
        let result = match self.driver.await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Stopped),
        };
        if let Some(api) = &self.api {
            api.abort();
        }
        result
    }
}
