//! The real node: the protocol core driven over libp2p and tokio, with durable storage, an
//! HTTP API and metrics beside it (feature `node`, on by default).
//!
//! | part | what it owns |
//! |---|---|
//! | `driver` (private) | the swarm (gossipsub, direct streams, identify over tcp + noise + yamux) and the event loop that feeds the [`Replica`](crate::replica::Replica) and carries out its actions |
//! | `address_book` (private) | the peer addresses any dial by peer id uses |
//! | [`codec`] | length-prefixed CBOR frames of the direct protocol |
//! | `dial_failure` (private) | why a connection attempt failed, in words an operator can act on |
//! | `direct` (private) | direct messages: one long-lived stream per peer, and readers of inbound streams |
//! | [`penalties`] | points per peer for garbage, forged ops and floods; the peers to block |
//! | [`signing`] | signs this node's ops with its libp2p key, checks received ops against their origin's |
//! | [`storage`] | the redb database: node key, checkpoint, op suffix |
//! | [`snapshots`] | snapshot files, made off the event loop, listed and served by id (also chunk by chunk) |
//! | [`schedule`] | the persistent snapshot schedule: which heights to take |
//! | [`keeper`] | takes scheduled snapshots, says which are pending or final, applies retention |
//! | [`transfer`] | state transfer by snapshot chunks over `/tidemark/transfer/1` |
//! | [`http`] | the axum HTTP API (SPEC §7, plus the snapshot-point watch and `/metrics`) |
//! | [`views`] | JSON shapes of the API |
//! | [`demo`] | `tidemark demo`: a local network of real nodes on loopback |
//! | [`client`] | a client of the HTTP API, for the `tidemark status`, `get`, `put`, ... commands |
//!
//! The library API is [`Node::start`] and the [`NodeHandle`] it hands out.

mod address_book;
pub mod background;
pub mod base_file;
pub mod client;
pub mod codec;
pub mod demo;
mod dial_failure;
mod direct;
mod driver;
pub mod http;
pub mod io_budget;
pub mod keeper;
pub mod metrics;
pub mod penalties;
pub mod schedule;
pub mod signing;
pub mod snapshots;
pub mod storage;
pub mod transfer;
pub mod views;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::gossip::GossipConfig;
use crate::ops_log::LwwOp;
use crate::replica::{LeaveFailed, WriteRefused};
use crate::VersionVector;
pub use metrics::Metrics;
use views::{
    At, NetworkMapView, OpIdView, Page, ReadyView, SnapshotPointView, StateView, StatusView,
};

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
    pub snapshots: SnapshotConfig,
    /// Run as an archiver: a member that never writes ops and keeps every snapshot it
    /// takes (its schedule decides which), serving them to joiners.
    pub archiver: bool,
    /// Found a new network from this snapshot file (after every node of the old one was
    /// lost). Needs an empty data dir and no bootstrap peers.
    pub restore_from: Option<PathBuf>,
    /// A private network's pre-shared key (libp2p pnet): every connection is encrypted
    /// with it beneath noise, so only nodes holding it can connect, join or be joined.
    /// `None`: an open network.
    pub network_key: Option<libp2p::pnet::PreSharedKey>,
    /// A bearer token every HTTP API call but the probes (`/healthz`, `/readyz`) must
    /// carry (`Authorization: Bearer <token>`); `None`: the API is open to whoever reaches
    /// its address.
    pub api_token: Option<String>,
    /// The data dir was restored from a backup, which may be older than this node's last
    /// state: start under a new node key (a new peer id), replacing the stored one, and
    /// join as a new member, republishing every op the backup holds that the network
    /// lacks ([`Replica::resume_from_backup`](crate::replica::Replica::resume_from_backup)).
    /// Needs a data dir that holds a node's state. Give it once, on the first start after
    /// the restore: every start with it takes yet another identity.
    pub restored_backup: bool,
    /// The only peers whose ops this node accepts, itself included (`--writers FILE`, read
    /// with [`read_writers_file`]); `None`: every member may write. Give every member the
    /// same list: a member that accepts an op others refuse holds back their snapshot
    /// point once its own ops depend on it. Ops are accepted only from nodes that are, or
    /// were, members of the network in any case.
    pub writers: Option<BTreeSet<libp2p::PeerId>>,
}

/// Why a writers file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WritersFileError {
    #[error("cannot read the writers file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a peer id: {text:?}")]
    PeerId {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// Reads a writers file: one peer id (base58) per line; blank lines and everything after a
/// `#` are ignored. An empty list is allowed (no node may write).
pub fn read_writers_file(path: &Path) -> Result<BTreeSet<libp2p::PeerId>, WritersFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| WritersFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut writers = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let peer = entry.parse().map_err(|_| WritersFileError::PeerId {
            path: path.to_path_buf(),
            line: i + 1,
            text: entry.to_string(),
        })?;
        writers.insert(peer);
    }
    Ok(writers)
}

/// When a write is answered: the op is always stored durably first; the concern says what
/// else must hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteConcern {
    /// Stored durably on this node (and applied here): the default.
    #[default]
    Stored,
    /// Applied by this many members in good standing, this node included, as this node's
    /// network map shows (a lower bound of what each has applied). At least 1, and at
    /// most the members in good standing when the write is made.
    Applied(usize),
    /// Under this node's snapshot point: every member has applied it, so it is final and
    /// lost only if every member is lost.
    Stable,
}

/// Longest a write waits for its concern when no timeout is given.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest timeout the HTTP API accepts for a write (`timeout_ms`).
pub const MAX_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

impl fmt::Display for WriteConcern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteConcern::Stored => f.write_str("stored"),
            WriteConcern::Applied(k) => write!(f, "applied:{k}"),
            WriteConcern::Stable => f.write_str("stable"),
        }
    }
}

/// Why a write concern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wait must be stored, applied:K (K at least 1) or stable, not {0:?}")]
pub struct BadWriteConcern(pub String);

impl FromStr for WriteConcern {
    type Err = BadWriteConcern;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stored" => Ok(WriteConcern::Stored),
            "stable" => Ok(WriteConcern::Stable),
            _ => text
                .strip_prefix("applied:")
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| *k >= 1)
                .map(WriteConcern::Applied)
                .ok_or_else(|| BadWriteConcern(text.to_string())),
        }
    }
}

/// How a node makes, keeps and hands over snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// A joiner gets the stable state inside its grant up to this many entries; above it,
    /// the state is offered as a snapshot fetched by chunks.
    pub inline_state_max_entries: usize,
    /// Final snapshots kept (the most recent ones); `None` keeps every one. Snapshots a
    /// schedule request took are kept, and not counted, until the request is deleted.
    pub keep: Option<usize>,
    /// How chunks are fetched when this node joins through a snapshot.
    pub transfer: crate::snapshot::transfer::TransferConfig,
    /// Bytes per second this node spends writing snapshot files and serving their chunks
    /// to joiners ([`io_budget`]); `None`: no limit.
    pub io_bytes_per_s: Option<u64>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            inline_state_max_entries: 4096,
            keep: Some(2),
            transfer: Default::default(),
            io_bytes_per_s: None,
        }
    }
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
            snapshots: SnapshotConfig::default(),
            archiver: false,
            restore_from: None,
            network_key: None,
            api_token: None,
            restored_backup: false,
            writers: None,
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
    #[error("not a peer id: {0}")]
    PeerId(String),
    #[error("the node has stopped")]
    Stopped,
    /// A call only a member can make (it is joining, or has left).
    #[error("not a member: {0}")]
    NotMember(String),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("cannot restore: {0}")]
    Restore(String),
    #[error("snapshot schedule: {0}")]
    Schedule(#[from] schedule::ScheduleError),
    /// A graceful leave gave up: some ops this node held are not known to be on every
    /// member yet. The node stays a member (and keeps running, unless it was
    /// [`Node::leave`] that asked).
    #[error(transparent)]
    LeaveFailed(#[from] LeaveFailed),
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
    /// The data dir's disk is full: nothing was written (the node takes writes again once
    /// there is space).
    #[error("the write was refused, nothing was written: {0}")]
    DiskFull(String),
    /// The op was applied here when the data dir's disk filled up, before it could be
    /// stored: it is stored, and spreads, once there is space again, and is lost if the
    /// node stops first. Its fate is open, as after a timeout.
    #[error("the op {origin}/{seq} is applied here but not stored: {reason}; it is stored and spreads once there is space again, and is lost if the node stops first")]
    NotStored {
        origin: String,
        seq: u64,
        reason: String,
    },
    #[error("this node is an archiver: it never writes ops")]
    Archiver,
    #[error("the node has stopped")]
    Stopped,
    /// `applied:K` asked for more members than are in good standing now: nothing was
    /// written.
    #[error("wait=applied:{wanted} asks for more members than the {members} in good standing; nothing was written")]
    TooFewMembers { wanted: usize, members: usize },
    /// The op is stored durably (and kept: it spreads as usual), but its write concern
    /// was not reached in time.
    #[error("the op {origin}/{seq} is stored and kept, but was not {concern} within the timeout")]
    Timeout {
        origin: String,
        seq: u64,
        concern: WriteConcern,
    },
}

/// What forcing a new view did (see [`NodeHandle::force_new_view`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ForcedView {
    /// The memberships evicted: peer id and incarnation.
    pub evicted: Vec<EvictedView>,
    /// The members in good standing now, this node included.
    pub members: usize,
}

/// One membership evicted by a forced view.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EvictedView {
    pub peer_id: String,
    pub incarnation: u64,
}

pub(crate) enum Command {
    /// Write an op; `reply` answers once it is stored durably, `reached` (for a concern
    /// other than `Stored`) once the concern holds.
    Write {
        op: LwwOp,
        concern: WriteConcern,
        reply: oneshot::Sender<Result<OpIdView, WriteError>>,
        reached: Option<oneshot::Sender<()>>,
    },
    Status(oneshot::Sender<StatusView>),
    /// Whether the node is a member that is not isolated (`GET /readyz`).
    Ready(oneshot::Sender<ReadyView>),
    State {
        at: At,
        page: Page,
        reply: oneshot::Sender<StateView>,
    },
    NetworkMap(oneshot::Sender<NetworkMapView>),
    /// The stable state and its cut (a persistent map: the clone is O(1)).
    StableState(oneshot::Sender<(crate::ops_log::LwwMap, VersionVector)>),
    /// Leave gracefully, then stop; answered once the node has stopped, or with why the
    /// leave gave up (the node then runs on as a member).
    Leave(oneshot::Sender<Result<(), LeaveFailed>>),
    /// The operator's way out of a majority loss (`Replica::force_new_view`).
    ForceNewView(oneshot::Sender<Result<ForcedView, crate::replica::WriteRefused>>),
    /// Take any scheduled snapshot that is due now.
    CheckSchedule,
    /// Refuse connections with exactly these peers from now on (closing open ones).
    CutLinks(Vec<libp2p::PeerId>, oneshot::Sender<()>),
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    snapshot_point: watch::Receiver<SnapshotPointView>,
    applied: watch::Receiver<VersionVector>,
    keeper: Arc<keeper::SnapshotKeeper>,
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
        self.put_with(key, value, WriteConcern::Stored, DEFAULT_WRITE_TIMEOUT)
            .await
    }

    /// Like [`put`](Self::put), answering once `concern` holds too. When it does not hold
    /// within `timeout` (counted from this call), the answer is
    /// [`WriteError::Timeout`] with the op's id: the op is stored and kept, and spreads as
    /// usual. `Applied(k)` with `k` above the members in good standing is refused at once
    /// with [`WriteError::TooFewMembers`], and nothing is written.
    pub async fn put_with(
        &self,
        key: &str,
        value: Option<&str>,
        concern: WriteConcern,
        timeout: Duration,
    ) -> Result<OpIdView, WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        let (reached, on_reached) = match concern {
            WriteConcern::Stored => (None, None),
            _ => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        let op = LwwOp {
            key: key.into(),
            value: value.map(Into::into),
        };
        self.commands
            .send(Command::Write {
                op,
                concern,
                reply,
                reached,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        let id = answer.await.map_err(|_| WriteError::Stopped)??;
        let Some(on_reached) = on_reached else {
            return Ok(id);
        };
        match tokio::time::timeout_at(deadline, on_reached).await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(_)) => Err(WriteError::Stopped),
            Err(_) => Err(WriteError::Timeout {
                origin: id.origin,
                seq: id.seq,
                concern,
            }),
        }
    }

    pub async fn status(&self) -> Result<StatusView, NodeError> {
        self.ask(Command::Status).await
    }

    /// Whether the node is ready to serve: a member (not joining, leaving or left) that is
    /// not isolated (its last failure check heard from more than half of the members).
    pub async fn readiness(&self) -> Result<ReadyView, NodeError> {
        self.ask(Command::Ready).await
    }

    /// The operator's way out of a majority loss: evicts every member in good standing
    /// this node has not heard from for `suspect_after`, without a majority, so that the
    /// survivors form the next view and their snapshot point moves again. Only for when
    /// the silent members are gone for good: if they are alive behind a partition, both
    /// sides decide on their own and the side evicted later loses its stable writes
    /// (`Replica::force_new_view`).
    pub async fn force_new_view(&self) -> Result<ForcedView, NodeError> {
        self.ask(Command::ForceNewView)
            .await?
            .map_err(|e| NodeError::NotMember(e.to_string()))
    }

    /// Whether the node's event loop still runs (it stops after a leave, or on a fatal
    /// error).
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
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

    /// Cuts this node's links to `peers` (a peer id each, base58), and only to them: open
    /// connections are closed, new ones are refused both ways, and the node does not dial
    /// them, until a later call leaves them out. The peers' messages relayed by others
    /// still arrive. An operator's block list, and how tests partition real nodes; an
    /// empty list heals every cut. Fails on a malformed peer id.
    pub async fn cut_links(&self, peers: &[&str]) -> Result<(), NodeError> {
        let peers = peers
            .iter()
            .map(|p| {
                p.parse::<libp2p::PeerId>()
                    .map_err(|e| NodeError::PeerId(format!("{p:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ask(|reply| Command::CutLinks(peers, reply)).await
    }

    /// A receiver that sees every change of the snapshot point.
    pub fn watch_snapshot_point(&self) -> watch::Receiver<SnapshotPointView> {
        self.snapshot_point.clone()
    }

    /// Writes a snapshot file of the stable state at the current snapshot point. The state
    /// is taken in O(1) and written on a thread of lower priority ([`background`]), so the
    /// node goes on applying ops.
    pub async fn create_snapshot(&self) -> Result<snapshots::SnapshotInfo, NodeError> {
        let (state, cut) = self.ask(Command::StableState).await?;
        let keeper = self.keeper.clone();
        let sp = self.snapshot_point_json();
        background::spawn("snapshot-export", move || {
            keeper.create_now(&state, &cut, &sp)
        })
        .await
        .ok_or(NodeError::Stopped)?
        .map_err(NodeError::from)
    }

    /// The snapshot files this node holds, by height, each `pending` or `final`.
    pub async fn snapshots(&self) -> Result<Vec<snapshots::SnapshotInfo>, NodeError> {
        let keeper = self.keeper.clone();
        let sp = self.snapshot_point_json();
        tokio::task::spawn_blocking(move || keeper.list(&sp))
            .await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::from)
    }

    /// The path of snapshot `id`'s file, if this node holds it.
    pub fn snapshot_file(&self, id: &str) -> Option<PathBuf> {
        self.keeper.store.file(id)
    }

    /// Schedules snapshots (see [`schedule`]); the request is stored before this returns.
    /// A height the snapshot point has reached already is taken at once.
    pub async fn schedule_snapshots(
        &self,
        request: schedule::ScheduleRequest,
    ) -> Result<schedule::Schedule, schedule::ScheduleError> {
        let height = self.snapshot_point.borrow().ops;
        let keeper = self.keeper.clone();
        let added = tokio::task::spawn_blocking(move || keeper.book().add(request, height))
            .await
            .map_err(|e| schedule::ScheduleError::Io(std::io::Error::other(e)))??;
        let _ = self.commands.send(Command::CheckSchedule).await;
        Ok(added)
    }

    /// Up to `limit` schedule requests from id `start_id` on, and the next id after them.
    pub async fn snapshot_requests(
        &self,
        start_id: u64,
        limit: usize,
    ) -> Result<(Vec<keeper::RequestView>, Option<u64>), NodeError> {
        let keeper = self.keeper.clone();
        let sp = self.snapshot_point_json();
        tokio::task::spawn_blocking(move || {
            let (page, next) = {
                let book = keeper.book();
                let (page, next) = book.page(start_id, limit);
                (page.into_iter().cloned().collect(), next)
            };
            (keeper.views(page, &sp), next)
        })
        .await
        .map_err(|_| NodeError::Stopped)
    }

    /// Schedule request `id` with the status of each of its snapshots.
    pub async fn snapshot_request(
        &self,
        id: u64,
    ) -> Result<Option<keeper::RequestView>, NodeError> {
        let keeper = self.keeper.clone();
        let sp = self.snapshot_point_json();
        tokio::task::spawn_blocking(move || keeper.request(id, &sp))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Removes schedule request `id`, done or not; its snapshots stay, but retention no
    /// longer spares them (it runs at once).
    pub async fn unschedule(
        &self,
        id: u64,
    ) -> Result<keeper::RequestView, schedule::ScheduleError> {
        let keeper = self.keeper.clone();
        let sp = self.snapshot_point_json();
        tokio::task::spawn_blocking(move || {
            let removed = keeper.book().remove(id)?;
            keeper.prune(&sp);
            Ok(keeper.views(vec![removed], &sp).remove(0))
        })
        .await
        .map_err(|e| schedule::ScheduleError::Io(std::io::Error::other(e)))?
    }

    fn snapshot_point_json(&self) -> keeper::PointJson {
        self.snapshot_point.borrow().snapshot_point.clone()
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

    /// Leaves the network gracefully (SPEC §5) and stops the node. If the ops this node
    /// held when it began to leave are not under its snapshot point within
    /// `leave_drain_timeout` (so some member may lack them), the leave gives up with
    /// [`NodeError::LeaveFailed`] and the node runs on as a member.
    pub async fn leave(&self) -> Result<(), NodeError> {
        self.ask(Command::Leave).await??;
        Ok(())
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
                let (bound, task) = http::serve(
                    addr,
                    handle.clone(),
                    config.api_token.as_deref().map(Arc::from),
                )
                .await?;
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

    /// Leaves gracefully, then waits for the node to stop. If the leave gives up
    /// ([`NodeError::LeaveFailed`]), the node is stopped as [`Node::kill`] stops it and the
    /// error is returned: the node stopped as a member, which the others count until they
    /// evict it, and it rejoins when restarted from its data dir.
    pub async fn leave(self) -> Result<(), NodeError> {
        if let Err(NodeError::LeaveFailed(failure)) = self.handle.leave().await {
            self.kill().await;
            return Err(NodeError::LeaveFailed(failure));
        }
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
