//! The libp2p/tokio driver: maps the replica's actions to the network and the network's
//! events back to the replica, stores what must survive a crash before anything depending on
//! it leaves the node, and answers the handle's commands.
//!
//! - `Action::Publish` → a gossipsub publish on `tidemark/<network>/ops` (message id: 16
//!   bytes of BLAKE3 over the batch's first and last op ids, `gossip::topic_message_id`).
//!   A publish gossipsub refuses (no subscribed peer yet) is not retried: anti-entropy
//!   pulls deliver those ops.
//! - `Action::Send` → a frame on this node's long-lived stream to the peer (`/tidemark/direct/11`);
//!   answers travel as requests of their own. Request-response dials the peer if needed,
//!   with the addresses members carry in their records.
//! - `Action::ScheduleWake` → the loop's single timer.
//! - A write is answered once it is durable; one with a write concern (`applied:K`,
//!   `stable`) waits in a list checked after every turn against the network map and the
//!   snapshot point.
//! - Members' addresses from the map are dialled again with backoff when disconnected, so
//!   the network stays connected after its bootstrap peer leaves.
//! - A joiner that went through a whole round of its possible sponsors without a grant
//!   dials the bootstrap addresses and the addresses of the nodes it knows without a peer
//!   id, and asks the peers it finds there too: a node that came back under a new identity
//!   (a lost data dir) keeps its address.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, dns, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm, Transport,
};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::address_book::AddressBook;
use super::codec;
use super::dial_failure::Reason;
use super::direct::Direct;
use super::keeper::SnapshotKeeper;
use super::metrics::{count_up_to, DurabilityLabel, KindLabel, Metrics, ReasonLabel};
use super::penalties::{Offence, Penalties, PenaltyLimits};
use super::schedule::ScheduleBook;
use super::signing::PeerIdAuthenticator;
use super::snapshots::SnapshotStore;
use super::storage::{Batch, Stager, StateWrite, Storage, StorageError, StoredState};
use super::transfer::{self, FetchError};
use super::views::{
    vector_json, At, DialFailureView, JoinView, NetworkMapView, OpIdView, ReadyView,
    SnapshotPointView, StateView, StatusView, ViewView,
};
use super::{
    Command, EvictedView, ForcedView, NodeConfig, NodeError, NodeHandle, WriteConcern, WriteError,
};
use crate::gossip::{
    decode, decode_published, encode, encode_published, report_len, topic_message_id, Message,
    TopicDecodeError,
};
use crate::join_protocol::{HandedOverState, JoinGrant, JoinProgress, JoinResponse, StateOffer};
use crate::network_map::aggregation::AggregationConfig;
use crate::network_map::MemberState;
use crate::ops_log::{LwwMap, LwwOp, Op};
use crate::replica::{
    Action, DurablePhase, LeaveFailed, RejectReason, RejectedOp, Replica, ReplicaConfig,
};
use crate::{NodeId, Time, VersionVector};

type NodeMessage = Message<LwwMap>;

/// How long a stopping node keeps its swarm running so its last messages go out.
const FAREWELL: Duration = Duration::from_millis(500);
/// Least time between two checkpoints written for a moving snapshot point.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// How often disconnected members are dialled again (backoff doubles up to the max).
const RECONNECT_TICK: Duration = Duration::from_millis(500);
/// Short, so that a member cut off for long is dialled again soon after its link is back:
/// the heal must not wait on a long backoff (docs/MEMBERSHIP.md, "Heal").
const RECONNECT_MAX: Duration = Duration::from_secs(4);
/// Every connection is pinged this often; one whose ping goes unanswered for
/// `PING_TIMEOUT` is closed (and its peer dialled again), so that a link that went silent —
/// a partition drops packets without a reset, and TCP would wait for its retransmission
/// timer, tens of seconds — does not hold up the heal.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Most waiting events and commands handled together before storing and acting.
const READY_BATCH: usize = 64;
/// Most received ops held in memory before they are written on their own
/// ([`Driver::store`]): bounds one transaction's size while the snapshot point stands.
const RECEIVED_OPS_HELD: usize = 4096;
/// Longest a connection attempt (DNS, TCP and the handshakes) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses whose last dial failure is kept for the join status.
const DIAL_FAILURES_KEPT: usize = 16;

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Peers blocked by the penalty box: their connections are closed and refused.
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    gossipsub: gossipsub::Behaviour,
    streams: libp2p_stream::Behaviour,
    identify: identify::Behaviour,
    /// Finds connections that went silent (see `PING_TIMEOUT`).
    ping: ping::Behaviour,
    addresses: AddressBook,
}

pub(super) struct Started {
    pub handle: NodeHandle,
    pub listen_addrs: Vec<Multiaddr>,
    pub task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

/// How often a node whose data dir is full tries to store again.
const DISK_FULL_RETRY: Duration = Duration::from_secs(1);

/// How often a restore logs its progress.
const RESTORE_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Reads the snapshot file a network is founded from (`--restore-from`), on a blocking
/// thread before the event loop starts: every chunk is verified against the header as it
/// is read and staged in the store, so the first checkpoint swaps the state in instead of
/// writing it whole on the event loop; progress is logged every
/// [`RESTORE_PROGRESS_EVERY`]. Returns the header, the state and its highest Lamport time.
fn restore_file(
    path: &std::path::Path,
    storage: Arc<Storage>,
) -> Result<(crate::snapshot::SnapshotHeader, LwwMap, u64), NodeError> {
    let file = std::fs::File::open(path)
        .map_err(|e| NodeError::Restore(format!("{}: {e}", path.display())))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let header = crate::snapshot::read_header(&mut input)?;
    let chunks = header.chunks.len();
    let total_mb = header.body_len() as f64 / 1e6;
    info!(
        file = %path.display(),
        height = header.height,
        chunks,
        mb = format!("{total_mb:.1}"),
        "restoring from a snapshot file"
    );
    let mut stager = Stager::new(storage, header.snapshot_point.clone());
    stager.begin()?;
    let started = Instant::now();
    let mut logged = started;
    let mut read = 0u64;
    let mut lamport = 0;
    // the entries stay in the staged base file: the state is built over it
    let empty = stager.state_to_build();
    let state = crate::snapshot::read_body::<LwwMap>(
        &mut input,
        header.clone(),
        empty,
        |index, entries| {
            stager.stage(entries).map_err(|e| e.to_string())?;
            let highest = entries.iter().map(|(_, e)| e.lamport).max();
            lamport = lamport.max(highest.unwrap_or(0));
            read += u64::from(header.chunks[index].len);
            if logged.elapsed() >= RESTORE_PROGRESS_EVERY {
                logged = Instant::now();
                info!(
                    chunks_done = index + 1,
                    chunks,
                    mb_per_s =
                        format!("{:.0}", read as f64 / 1e6 / started.elapsed().as_secs_f64()),
                    "restoring: {:.1} of {total_mb:.1} MB read, verified and staged",
                    read as f64 / 1e6
                );
            }
            Ok(())
        },
    )?;
    stager.sync()?;
    info!(
        entries = header.entries,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "the snapshot file is verified and staged"
    );
    Ok((header, state, lamport))
}

pub(super) async fn start(config: &NodeConfig) -> Result<Started, NodeError> {
    let storage = Arc::new(Storage::open(&config.data_dir)?);
    let snapshots = Arc::new(
        SnapshotStore::open(&config.data_dir)
            .map_err(|e| NodeError::Snapshot(crate::snapshot::SnapshotError::Io(e)))?
            .with_io_limit(config.snapshots.io_bytes_per_s),
    );
    let loaded = storage.load()?;
    if config.restored_backup {
        if config.restore_from.is_some() {
            return Err(NodeError::Restore(
                "--restored-backup resumes a data dir restored from a backup, --restore-from founds a network from a snapshot file: give one of them".into(),
            ));
        }
        match &loaded.checkpoint {
            None => {
                return Err(NodeError::Restore(format!(
                    "--restored-backup needs a data dir that holds a node's state, and {} holds none: copy the backup there first (or start without the flag)",
                    config.data_dir.display()
                )))
            }
            Some(c) if c.records.iter().all(|r| r.id == c.id) => {
                return Err(NodeError::Restore(
                    "the backup knows no other node to join through (it is a lone founder's, or a node's that never joined), so no other node can hold ops of it the backup lacks; start it without --restored-backup to resume it as it was".into(),
                ))
            }
            Some(_) => {}
        }
    }
    let stored_key = storage
        .node_key()?
        .map(|bytes| {
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| NodeError::Key(e.to_string()))
        })
        .transpose()?;
    let key = match stored_key {
        Some(old) if config.restored_backup => {
            // the backup may be older than this identity's last state: its next seqs may
            // already name ops the network has, so the node takes a new identity
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Key(e.to_string()))?;
            storage.replace_node_key(&bytes)?;
            let old_peer_id = old.public().to_peer_id();
            let new_peer_id = key.public().to_peer_id();
            warn!(
                %old_peer_id,
                %new_peer_id,
                "the data dir was restored from a backup: this node takes a new identity (peer id {new_peer_id}, was {old_peer_id}) and joins as a new member; the old identity is evicted like a crashed member"
            );
            key
        }
        Some(key) => key,
        None => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Key(e.to_string()))?;
            if config.restored_backup {
                // a checkpoint without a key: the new identity is a new key all the same
                storage.replace_node_key(&bytes)?;
                warn!(
                    new_peer_id = %key.public().to_peer_id(),
                    "the data dir was restored from a backup without a node key: this node takes a new identity and joins as a new member"
                );
            } else {
                storage.set_node_key(&bytes)?;
            }
            key
        }
    };
    let peer_id = key.public().to_peer_id();
    let me = node_id(&peer_id);
    let auth = Arc::new(PeerIdAuthenticator::new(key.clone(), &config.network));
    let mut metrics = Metrics::new();
    metrics.register_files_being_written(snapshots.files_being_written.clone());
    let mut swarm = build_swarm(
        key,
        &config.network,
        config.network_key,
        metrics.registry_mut(),
    )?;
    let keeper = Arc::new(SnapshotKeeper::new(
        snapshots.clone(),
        ScheduleBook::open(&config.data_dir)?,
        config.snapshots.keep,
        metrics.snapshots_taken.clone(),
        metrics.snapshots_pruned.clone(),
    ));
    let topic = IdentTopic::new(format!("tidemark/{}/ops", config.network));
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    for addr in &config.listen {
        probe_listen_addr(addr)?;
    }
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let listen_addrs = wait_for_listen_addrs(&mut swarm, config.listen.len()).await?;
    let epoch = Instant::now();
    let replica_config = ReplicaConfig {
        gossip: config.gossip.clone(),
        addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
        journal_applied: true,
        auth: Some(auth),
        planted: None,
        writers: config
            .writers
            .as_ref()
            .map(|peers| Arc::new(peers.iter().map(node_id).collect())),
        // the snapshot point is aggregated, and aggregators tell members who is alive
        // (docs/DESIGN.md, "Aggregating the snapshot point")
        aggregation: Some(AggregationConfig {
            liveness: true,
            ..AggregationConfig::default()
        }),
        aggregation_decides: true,
    };
    // a per-process random seed (std's hasher keys come from the OS)
    let seed = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    // the stored state is the resumed replica's (its first log generation; a node resumed
    // from a backup holds the backup's log while it joins); a new or restored node has
    // none yet
    let state_stored = loaded.checkpoint.is_some();
    // a restored state is staged as it is read, for the first checkpoint to swap in
    let mut state_staged = false;
    if loaded.checkpoint.is_some() && config.restore_from.is_some() {
        return Err(NodeError::Restore(
            "the data dir already holds a node; restore into an empty one".into(),
        ));
    }
    // a joiner that stopped while it fetched a state resumes the fetch (not a restore,
    // which founds a new network)
    let joining_incarnation = match &loaded.checkpoint {
        None => Some(0),
        Some(c) if matches!(c.phase, DurablePhase::Joining { .. }) => Some(c.incarnation),
        Some(_) => None,
    };
    let held = match joining_incarnation {
        Some(stored) if config.restore_from.is_none() && !config.restored_backup => {
            match storage.held_grant()? {
                // a joiner asks with a new incarnation after it gives a grant up
                Some(held) if held.grant.registration.incarnation >= stored => Some(held),
                Some(_) => {
                    storage.forget_held_grant(true)?;
                    None
                }
                None => None,
            }
        }
        _ => None,
    };
    let replica = match loaded.checkpoint {
        _ if held.is_some() => {
            let held = held.expect("matched");
            for record in &held.grant.members.0 {
                add_addresses(&mut swarm, &record.id, &record.addrs);
            }
            let mut sponsors = named_bootstrap_peers(&mut swarm, &config.bootstrap)?;
            if let Some(checkpoint) = &loaded.checkpoint {
                for record in &checkpoint.records {
                    add_addresses(&mut swarm, &record.id, &record.addrs);
                }
                if let DurablePhase::Joining { sponsors: stored } = &checkpoint.phase {
                    for sponsor in stored {
                        if !sponsors.contains(sponsor) {
                            sponsors.push(sponsor.clone());
                        }
                    }
                }
            }
            let offer = held.grant.offer().expect("a held grant offers a state");
            info!(
                snapshot = %offer.snapshot_id,
                sponsor = %held.sponsor,
                incarnation = held.grant.registration.incarnation,
                "resuming the state transfer this node was making when it stopped"
            );
            let sponsor = held.sponsor.clone();
            match Replica::resuming_held_grant(
                me.clone(),
                held,
                sponsors.clone(),
                replica_config.clone(),
                seed,
                Time::ZERO,
            ) {
                Ok(replica) => replica,
                Err(error) => {
                    warn!(%error, "the stored grant cannot be resumed; joining afresh");
                    storage.forget_held_grant(true)?;
                    let mut ask = vec![sponsor];
                    ask.extend(sponsors);
                    let incarnation = joining_incarnation.unwrap_or(0).max(1);
                    Replica::joiner_via(
                        me.clone(),
                        incarnation,
                        ask,
                        replica_config,
                        seed,
                        Time::ZERO,
                    )
                }
            }
        }
        Some(checkpoint) if config.restored_backup => {
            for record in &checkpoint.records {
                add_addresses(&mut swarm, &record.id, &record.addrs);
            }
            info!(
                backup_of = %checkpoint.id,
                incarnation = checkpoint.incarnation,
                ops = loaded.ops.len(),
                "joining as a new member with the state of the backup"
            );
            let replica = Replica::resume_from_backup(
                me.clone(),
                checkpoint,
                loaded.ops,
                replica_config,
                seed,
                Time::ZERO,
            )?;
            if replica.has_left() {
                return Err(NodeError::Restore(
                    "the backup knows no other node to join through".into(),
                ));
            }
            replica
        }
        Some(checkpoint) => {
            if checkpoint.id != me {
                return Err(NodeError::ForeignState(checkpoint.id.to_base58()));
            }
            for record in &checkpoint.records {
                add_addresses(&mut swarm, &record.id, &record.addrs);
            }
            info!(
                incarnation = checkpoint.incarnation,
                ops = loaded.ops.len(),
                digest_chunks_stored = loaded.chunk_hashes_restored,
                "resuming from the data dir"
            );
            Replica::resume(checkpoint, loaded.ops, replica_config, seed, Time::ZERO)?
        }
        None if config.restore_from.is_some() => {
            if !config.bootstrap.is_empty() {
                return Err(NodeError::Restore(
                    "a restored node founds a new network: give no bootstrap peers".into(),
                ));
            }
            let path = config.restore_from.clone().expect("checked above");
            let stager = storage.clone();
            let (header, state, lamport) =
                tokio::task::spawn_blocking(move || restore_file(&path, stager))
                    .await
                    .map_err(|e| NodeError::Restore(e.to_string()))??;
            state_staged = true;
            info!(
                height = header.height,
                digest = %header.digest,
                entries = header.entries,
                "founding a new network from a snapshot"
            );
            Replica::restored(
                me.clone(),
                state,
                header.snapshot_point,
                lamport,
                replica_config,
                seed,
                Time::ZERO,
            )
        }
        None if config.bootstrap.is_empty() => {
            info!(%peer_id, "founding a new network");
            Replica::genesis(
                me.clone(),
                std::slice::from_ref(&me),
                replica_config,
                seed,
                Time::ZERO,
            )
        }
        None => {
            let sponsors = named_bootstrap_peers(&mut swarm, &config.bootstrap)?;
            info!(
                bootstrap = config.bootstrap.len(),
                with_peer_id = sponsors.len(),
                "joining through the bootstrap peers"
            );
            Replica::joiner_via(me.clone(), 1, sponsors, replica_config, seed, Time::ZERO)
        }
    };
    let metrics = Arc::new(metrics);
    let (commands_tx, commands) = mpsc::channel(1024);
    let (sp_tx, sp_rx) = watch::channel(SnapshotPointView {
        snapshot_point: Default::default(),
        ops: 0,
        digest: String::new(),
        incarnation: 0,
    });
    let (applied_tx, applied_rx) = watch::channel(VersionVector::new());
    let advertised: Vec<Multiaddr> = listen_addrs
        .iter()
        .map(|a| a.clone().with(Protocol::P2p(peer_id)))
        .collect();
    let direct = Direct::new(
        swarm.behaviour().streams.new_control(),
        metrics.direct_dropped.clone(),
    );
    let serving = AbortOnDrop(transfer::serve(
        swarm.behaviour().streams.new_control(),
        snapshots.clone(),
        metrics.transfer.chunks_served.clone(),
    ));
    let (prepared_tx, prepared) = mpsc::unbounded_channel();
    let (fetched_tx, fetched) = mpsc::unbounded_channel();
    let staged_generation = state_staged.then(|| replica.log_generation());
    let mut driver = Driver {
        replica,
        direct,
        swarm,
        storage,
        topic,
        epoch,
        wake_at: None,
        commands,
        sp_tx,
        applied_tx,
        metrics: metrics.clone(),
        listen_addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
        network: config.network.clone(),
        acks: Vec::new(),
        unstored_ops: Vec::new(),
        grant_suffix: Vec::new(),
        disk_full: None,
        waiters: Vec::new(),
        leave_waiters: Vec::new(),
        join_log: None,
        stored: StoredMark::default(),
        stored_generation: None,
        staged_generation,
        last_checkpoint: None,
        stored_votes: None,
        dial_backoff: BTreeMap::new(),
        last_sp: None,
        stop_now: false,
        bootstrap_addrs: config
            .bootstrap
            .iter()
            .map(|addr| without_peer_id(addr.clone()))
            .collect(),
        address_dials: BTreeSet::new(),
        keys: KeyIndex::default(),
        keeper: keeper.clone(),
        snapshot_config: config.snapshots.clone(),
        preparing: BTreeMap::new(),
        prepared_tx,
        prepared,
        fetching: None,
        fetched_tx,
        fetched,
        _serving: serving,
        archiver: config.archiver,
        penalties: Penalties::new(PenaltyLimits::default()),
        cut_links: BTreeSet::new(),
        keyed: config.network_key.is_some(),
        dial_failures: BTreeMap::new(),
        was_member: false,
        was_isolated: false,
    };
    driver.stored_generation = state_stored.then(|| driver.replica.log_generation());
    // everything the replica did while starting (a rejoin's request, a founder's record)
    driver.after_event()?;
    if driver
        .replica
        .join_sponsors()
        .is_some_and(|sponsors| sponsors.is_empty())
    {
        // no bootstrap address named its peer: learn who answers there
        driver.dial_known_addresses();
    }
    let handle = NodeHandle {
        commands: commands_tx,
        snapshot_point: sp_rx,
        applied: applied_rx,
        keeper: keeper.clone(),
        peer_id: peer_id.to_base58(),
        metrics,
    };
    let task = tokio::spawn(driver.run());
    Ok(Started {
        handle,
        listen_addrs: advertised,
        task,
    })
}

/// TCP behind DNS resolution (`/dns`, `/dns4`, `/dns6` addresses are resolved when
/// dialled), then (in a private network) the pre-shared key's XSalsa20 layer, then noise
/// and yamux, all within [`DIAL_TIMEOUT`]. A peer without the key fails the noise
/// handshake, which it cannot decrypt, so the connection never opens.
fn transport(
    key: &Keypair,
    network_key: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = || tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let tcp = match dns::tokio::Transport::system(tcp()) {
        Ok(resolving) => resolving,
        Err(error) => {
            // no usable /etc/resolv.conf: names resolve from the hosts file only
            warn!(%error, "cannot read the system's DNS configuration; names in addresses resolve from the hosts file only");
            dns::tokio::Transport::custom(
                tcp(),
                dns::ResolverConfig::default(),
                dns::ResolverOpts::default(),
            )
        }
    };
    let noise = noise::Config::new(key)?;
    let transport = match network_key {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(upgrade::Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(DIAL_TIMEOUT)
            .boxed(),
        None => tcp
            .upgrade(upgrade::Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(DIAL_TIMEOUT)
            .boxed(),
    };
    Ok(transport)
}

/// Fails when a TCP port this node is asked to listen on is already taken.
///
/// libp2p-tcp sets `SO_REUSEPORT` on its listening sockets, so its own bind succeeds
/// beside another process's listener of the same user, and the kernel then splits the
/// incoming connections between the two. A plain socket without `SO_REUSEPORT` cannot
/// bind an address some socket listens on (Linux refuses it even with `SO_REUSEADDR`), so
/// binding one first tells whether the port is free. The probe is closed just before
/// libp2p binds. In that window another process could take the port: one without
/// `SO_REUSEPORT` then makes libp2p's own bind fail (also an error at start); only a
/// second `SO_REUSEPORT` listener (another node) whose own probe ran before this node's
/// bind, i.e. two nodes started on one port within the same instant, still slips through.
/// Port 0 (any free port) needs no probe.
fn probe_listen_addr(addr: &Multiaddr) -> Result<(), NodeError> {
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NodeError::Listen {
            addr: addr.clone(),
            reason: "the address is in use: another process listens on that port".into(),
        }),
        Err(e) => Err(NodeError::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        }),
    }
}

fn build_swarm(
    key: Keypair,
    network: &str,
    network_key: Option<PreSharedKey>,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, NodeError> {
    let transport_err = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
    let gossip_config = gossipsub::ConfigBuilder::default()
        // messages are not signed by their publisher: every op in them is signed by its
        // origin, which is what a node checks (`on_bytes`), and nothing reads a message's
        // publisher. Checking a publisher's signature on every copy, duplicates included,
        // was the largest cost of a gossiped op.
        .validation_mode(ValidationMode::Anonymous)
        // a message is relayed only after this node accepted it (`on_bytes`), so garbage
        // and forged ops stop at the first honest node and the relays are never blamed
        .validate_messages()
        .max_transmit_size(4 * 1024 * 1024)
        .message_id_fn(message_id)
        .build()
        .map_err(|e| transport_err(&e))?;
    let protocol_version = format!("/tidemark/{network}/{}", codec::PROTOCOL_VERSION);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| transport(key, network_key))
        .map_err(|e| transport_err(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_config)?;
            let streams = libp2p_stream::Behaviour::new();
            let identify =
                identify::Behaviour::new(identify::Config::new(protocol_version, key.public()));
            let ping = ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            );
            Ok(Behaviour {
                blocked: Default::default(),
                gossipsub,
                streams,
                identify,
                ping,
                addresses: AddressBook::default(),
            })
        })
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// Gossipsub message id of a topic message (see `gossip::topic_message_id`).
fn message_id(message: &gossipsub::Message) -> gossipsub::MessageId {
    gossipsub::MessageId::new(&topic_message_id(&message.data))
}

/// Node ids by their 64-bit key, for the compact ids of published batches: the members
/// and origins this node knows, looked up again when a key is missing.
#[derive(Default)]
struct KeyIndex {
    ids: BTreeMap<u64, NodeId>,
}

impl KeyIndex {
    fn resolve(&mut self, replica: &Replica<LwwMap>, key: u64) -> Option<NodeId> {
        if let Some(id) = self.ids.get(&key) {
            return Some(id.clone());
        }
        let known = replica.network_map().iter().map(|(id, _)| id);
        for id in known.chain(replica.applied().iter().map(|(id, _)| id)) {
            self.ids.entry(id.key()).or_insert_with(|| id.clone());
        }
        self.ids.get(&key).cloned()
    }
}

async fn wait_for_listen_addrs(
    swarm: &mut Swarm<Behaviour>,
    wanted: usize,
) -> Result<Vec<Multiaddr>, NodeError> {
    let mut addrs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while addrs.len() < wanted.max(1) {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => addrs.push(address),
            Ok(SwarmEvent::ListenerError { error, .. }) => {
                return Err(NodeError::Transport(error.to_string()))
            }
            Ok(SwarmEvent::ListenerClosed {
                addresses, reason, ..
            }) => {
                return Err(NodeError::Listen {
                    addr: addresses.first().cloned().unwrap_or(Multiaddr::empty()),
                    reason: format!("{reason:?}"),
                })
            }
            Ok(_) => {}
            Err(_) if !addrs.is_empty() => break,
            Err(_) => return Err(NodeError::Transport("no listen address within 10 s".into())),
        }
    }
    // a wildcard listener reports one address per interface: take those ready now too
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), swarm.next()).await
    {
        if let SwarmEvent::NewListenAddr { address, .. } = event {
            addrs.push(address);
        }
    }
    Ok(addrs)
}

/// Peer ids of the bootstrap peers whose addresses end in `/p2p/<peer id>` (their
/// addresses are taught to the swarm). The peers at the other addresses are learned by
/// dialling them once the node runs ([`Driver::dial_known_addresses`]), so a node starts,
/// prints its line and serves its API the same way with or without the `/p2p` part.
fn named_bootstrap_peers(
    swarm: &mut Swarm<Behaviour>,
    bootstrap: &[Multiaddr],
) -> Result<Vec<NodeId>, NodeError> {
    let mut sponsors = Vec::new();
    for addr in bootstrap {
        let mut plain = addr.clone();
        match plain.pop() {
            Some(Protocol::P2p(peer)) if plain.iter().next().is_some() => {
                swarm.add_peer_address(peer, plain);
                sponsors.push(node_id(&peer));
            }
            Some(Protocol::P2p(_)) | None => return Err(NodeError::Bootstrap(addr.clone())),
            Some(_) => {}
        }
    }
    Ok(sponsors)
}

/// `addr` without a trailing `/p2p/<peer id>`, with the peer id if there was one.
fn without_peer_id(mut addr: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}

pub(super) fn node_id(peer: &PeerId) -> NodeId {
    NodeId::from_bytes(&peer.to_bytes()).expect("a peer id is a valid node id")
}

fn peer_id(node: &NodeId) -> Option<PeerId> {
    PeerId::from_bytes(node.as_bytes()).ok()
}

fn add_addresses(swarm: &mut Swarm<Behaviour>, node: &NodeId, addrs: &[String]) {
    let Some(peer) = peer_id(node) else { return };
    if peer == *swarm.local_peer_id() {
        return;
    }
    for addr in addrs {
        if let Ok(addr) = addr.parse::<Multiaddr>() {
            swarm.add_peer_address(peer, addr);
        }
    }
}

/// The join progress last logged ([`Driver::log_join_progress`]).
struct JoinLog {
    /// When the join it describes started (a rejoin starts a new one).
    since: Time,
    rounds: u64,
    /// Refusals counted when the last round ended: none since means no one answered.
    answers_at_round: u64,
    warned_silent: bool,
}

/// A write waiting for its concern (`applied:K` or `stable`) to hold.
struct Waiter {
    origin: NodeId,
    seq: u64,
    concern: WriteConcern,
    reached: oneshot::Sender<()>,
}

/// What the last stored checkpoint covered, to decide when the next one is due.
#[derive(Default, PartialEq)]
struct StoredMark {
    incarnation: u64,
    phase: &'static str,
    stable_cut: Option<VersionVector>,
    membership_epoch: u64,
}

struct Driver {
    replica: Replica<LwwMap>,
    direct: Direct,
    swarm: Swarm<Behaviour>,
    storage: Arc<Storage>,
    /// The log generation whose stable state the store holds (its checkpoints fold).
    stored_generation: Option<u64>,
    /// The log generation whose transferred state was staged in the store.
    staged_generation: Option<u64>,
    topic: IdentTopic,
    epoch: Instant,
    wake_at: Option<Time>,
    commands: mpsc::Receiver<Command>,
    sp_tx: watch::Sender<SnapshotPointView>,
    applied_tx: watch::Sender<VersionVector>,
    metrics: Arc<Metrics>,
    listen_addrs: Vec<String>,
    network: String,
    /// Writes applied in memory, answered once stored.
    acks: Vec<(oneshot::Sender<Result<OpIdView, WriteError>>, OpIdView)>,
    /// Applied ops not stored yet: received ops held until the next write that must
    /// happen ([`Driver::store`]), and those of a write that failed (a full disk). Stored
    /// with the next batch.
    unstored_ops: Vec<Arc<Op<LwwOp>>>,
    /// The suffix of a grant whose state was fetched and staged: stored with the
    /// checkpoint that swaps the staged state in, which folds those of them that became
    /// stable meanwhile (the replica has dropped those from its log).
    grant_suffix: Vec<Arc<Op<LwwOp>>>,
    /// Why writes are refused now: the data dir's disk is full.
    disk_full: Option<String>,
    /// Writes waiting for their write concern, checked after every event.
    waiters: Vec<Waiter>,
    /// Callers of `leave`, answered when the node stops, or when the leave gives up.
    leave_waiters: Vec<oneshot::Sender<Result<(), LeaveFailed>>>,
    /// What the join progress looked like when last logged (while joining).
    join_log: Option<JoinLog>,
    stored: StoredMark,
    last_checkpoint: Option<Instant>,
    /// The vote generation (`Replica::vote_generation`) last stored.
    stored_votes: Option<u64>,
    /// Members not connected: when to dial next, and the current backoff.
    dial_backoff: BTreeMap<PeerId, (Instant, Duration)>,
    last_sp: Option<VersionVector>,
    /// A leave came while still joining: stop without a farewell.
    stop_now: bool,
    /// The `--bootstrap` addresses without their `/p2p` part (with the peer id it named),
    /// dialled after each round of a join without a grant.
    bootstrap_addrs: Vec<(Multiaddr, Option<PeerId>)>,
    /// Dials of known addresses without a peer id, not yet established or failed.
    address_dials: BTreeSet<ConnectionId>,
    keys: KeyIndex,
    keeper: Arc<SnapshotKeeper>,
    snapshot_config: super::SnapshotConfig,
    /// Joiners whose grant is being turned into a snapshot offer, each with the newest
    /// grant its core made for it meanwhile (for a request with a new incarnation).
    preparing: BTreeMap<NodeId, Option<JoinGrant<LwwMap>>>,
    /// Offers written for joiners: the grant with the snapshot in place of its state, or
    /// `None` when the file could not be written (the joiner asks again).
    prepared_tx: mpsc::UnboundedSender<(NodeId, Option<JoinGrant<LwwMap>>)>,
    prepared: mpsc::UnboundedReceiver<(NodeId, Option<JoinGrant<LwwMap>>)>,
    /// The snapshot this joiner is fetching, and the task fetching it.
    fetching: Option<(String, AbortOnDrop)>,
    fetched_tx: mpsc::UnboundedSender<(String, Result<LwwMap, FetchError>)>,
    fetched: mpsc::UnboundedReceiver<(String, Result<LwwMap, FetchError>)>,
    _serving: AbortOnDrop,
    archiver: bool,
    penalties: Penalties<PeerId>,
    /// Peers whose links the operator cut (`NodeHandle::cut_links`).
    cut_links: BTreeSet<PeerId>,
    /// Whether this node runs a private network (a network key).
    keyed: bool,
    /// The last failed dial per address (without `/p2p`): the reason and when.
    dial_failures: BTreeMap<String, (String, Instant)>,
    /// Whether this node was a member when last logged ([`Driver::log_membership`]).
    was_member: bool,
    /// Whether this node was isolated when last logged.
    was_isolated: bool,
}

/// What gossipsub should do with a received message.
enum Verdict {
    /// Valid: relay it.
    Accept,
    /// Garbage or forged: drop it, do not relay it.
    Reject,
    /// Not usable here (it names a node not known yet): drop it, do not relay it.
    Ignore,
}

/// A task that stops when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.epoch.elapsed().as_micros() as u64)
    }

    async fn run(mut self) -> Result<(), NodeError> {
        let mut reconnect = tokio::time::interval(RECONNECT_TICK);
        reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            let wake = self
                .wake_at
                .map(|t| self.epoch + Duration::from_micros(t.as_micros()));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => commands_open = false,
                },
                _ = sleep_until(wake) => {
                    self.wake_at = None;
                    let now = self.now();
                    self.replica.handle_timeout(now);
                }
                Some((peer, frame, _room)) = self.direct.inbound.recv() => {
                    let now = self.now();
                    self.on_bytes(now, &peer, &frame, false);
                }
                _ = reconnect.tick() => self.reconnect(),
                Some((joiner, message)) = self.prepared.recv() => {
                    self.on_prepared(joiner, message);
                }
                Some((id, fetched)) = self.fetched.recv() => self.on_fetched(id, fetched),
            }
            self.drain_ready().await;
            match self.after_event() {
                Err(NodeError::Storage(e)) if matches!(*e, StorageError::DiskFull(_)) => {
                    self.wait_for_disk_space(e.to_string()).await?;
                }
                other => other?,
            }
            if self.stop_now || self.replica.has_left() && !self.leave_waiters.is_empty() {
                if !self.stop_now {
                    self.farewell().await?;
                }
                for waiter in self.leave_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                info!("left the network");
                return Ok(());
            }
        }
    }

    /// The data dir's disk is full: the node stays up but silent until a write succeeds
    /// again. Writes get [`WriteError::DiskFull`] (507) before anything is applied, reads
    /// and status are answered, and messages from peers are dropped (as a partition would:
    /// anti-entropy brings them back), while connections are kept up as usual. The failed batch and everything the replica wants to
    /// send stay held, and are tried again every [`DISK_FULL_RETRY`] after reopening the
    /// database, so nothing is acknowledged or sent that is not stored; the writes the
    /// batch held were answered [`WriteError::NotStored`]. Peers suspect, then evict, a node
    /// silent for long; it rejoins once it goes on.
    async fn wait_for_disk_space(&mut self, reason: String) -> Result<(), NodeError> {
        error!(%reason, "cannot store: writes are refused (507) and the node is silent until there is space in its data dir; nothing acknowledged is lost");
        self.disk_full = Some(reason);
        self.metrics.disk_full.set(1);
        let mut retry = tokio::time::interval(DISK_FULL_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.tick().await;
        let mut commands_open = true;
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => match event {
                    // nothing received can be stored now: dropped, not relayed
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                        propagation_source,
                        message_id,
                        ..
                    })) => {
                        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            gossipsub::MessageAcceptance::Ignore,
                        );
                    }
                    // connections, dials and addresses are kept up as usual
                    other => self.on_swarm_event(other),
                },
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => commands_open = false,
                },
                _ = retry.tick() => {
                    if let Err(error) = self.storage.reopen() {
                        debug!(%error, "the database could not be opened again yet");
                        continue;
                    }
                    match self.after_event() {
                        Ok(()) => break,
                        Err(NodeError::Storage(e)) if matches!(*e, StorageError::DiskFull(_)) => {
                            self.disk_full = Some(e.to_string());
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.disk_full = None;
        self.metrics.disk_full.set(0);
        info!("stored again: the data dir has space; writes are accepted");
        Ok(())
    }

    /// Handles the events and commands that are already waiting (up to a bound), so that
    /// one storage transaction and one round of actions serve all of them. The swarm is
    /// polled with this task's own context, so that it wakes this task when it has more.
    async fn drain_ready(&mut self) {
        let events = std::future::poll_fn(|cx| {
            let mut events = Vec::new();
            while events.len() < READY_BATCH {
                match self.swarm.poll_next_unpin(cx) {
                    Poll::Ready(Some(event)) => events.push(event),
                    _ => break,
                }
            }
            Poll::Ready(events)
        })
        .await;
        for event in events {
            self.on_swarm_event(event);
        }
        for _ in 0..READY_BATCH {
            match self.direct.inbound.try_recv() {
                Ok((peer, frame, _room)) => {
                    let now = self.now();
                    self.on_bytes(now, &peer, &frame, false);
                }
                Err(_) => break,
            }
        }
        for _ in 0..READY_BATCH {
            match self.commands.try_recv() {
                Ok(command) => self.on_command(command),
                Err(_) => break,
            }
        }
    }

    /// Keeps the swarm running briefly so the `Left` announcement goes out.
    async fn farewell(&mut self) -> Result<(), NodeError> {
        let until = Instant::now() + FAREWELL;
        while let Ok(event) = tokio::time::timeout_at(until, self.swarm.select_next_some()).await {
            self.on_swarm_event(event);
            self.after_event()?;
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Write { reply, .. } if self.archiver => {
                let _ = reply.send(Err(WriteError::Archiver));
            }
            Command::Write { reply, .. } if self.disk_full.is_some() => {
                let reason = self.disk_full.clone().unwrap_or_default();
                let _ = reply.send(Err(WriteError::DiskFull(reason)));
            }
            Command::Write {
                op,
                concern,
                reply,
                reached,
            } => {
                let members = self.replica.network_map().counted();
                if let WriteConcern::Applied(wanted) = concern {
                    if wanted > members && self.replica.is_member() {
                        let _ = reply.send(Err(WriteError::TooFewMembers { wanted, members }));
                        return;
                    }
                }
                match self.replica.write(now, op) {
                    Ok(op) => {
                        if let Some(reached) = reached {
                            // checked once the op is stored and acknowledged
                            self.waiters.push(Waiter {
                                origin: op.origin.clone(),
                                seq: op.seq,
                                concern,
                                reached,
                            });
                        }
                        self.acks.push((
                            reply,
                            OpIdView {
                                origin: op.origin.to_base58(),
                                seq: op.seq,
                            },
                        ))
                    }
                    Err(refused) => {
                        let _ = reply.send(Err(refused.into()));
                    }
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Ready(reply) => {
                let phase = phase_name(&self.replica);
                let isolated = self.replica.is_isolated();
                let _ = reply.send(ReadyView {
                    ready: phase == "member" && !isolated,
                    phase: phase.into(),
                    isolated,
                });
            }
            Command::State { at, page, reply } => {
                let view = match at {
                    At::Snapshot => {
                        let digest = self.replica.stable_digest();
                        StateView::new(
                            self.replica.stable_cut(),
                            digest,
                            self.replica.stable_state(),
                            &page,
                        )
                    }
                    At::Applied => {
                        let digest = self.replica.applied_digest();
                        StateView::new(
                            self.replica.applied(),
                            digest,
                            self.replica.applied_state(),
                            &page,
                        )
                    }
                };
                let _ = reply.send(view);
            }
            Command::StableState(reply) => {
                let _ = reply.send((
                    self.replica.stable_state().clone(),
                    self.replica.stable_cut().clone(),
                ));
            }
            Command::CheckSchedule => self.take_scheduled(),
            Command::CutLinks(peers, reply) => {
                let cut: BTreeSet<PeerId> = peers.into_iter().collect();
                let healed: Vec<PeerId> = self.cut_links.difference(&cut).copied().collect();
                info!(cut = cut.len(), "links cut");
                self.cut_links = cut.clone();
                for peer in cut.into_iter().chain(healed.iter().copied()) {
                    self.sync_block(peer);
                }
                for peer in &healed {
                    // dial it again at the next reconnect tick
                    self.dial_backoff.remove(peer);
                }
                let _ = reply.send(());
            }
            Command::NetworkMap(reply) => {
                let _ = reply.send(NetworkMapView::new(self.replica.network_map(), now));
            }
            Command::ForceNewView(reply) => {
                let forced = self.replica.force_new_view(now).map(|evicted| {
                    for (id, incarnation) in &evicted {
                        warn!(member = %id, incarnation, "forced out of the view by the operator");
                    }
                    let members = self.replica.network_map().counted();
                    warn!(
                        evicted = evicted.len(),
                        members,
                        "the operator forced a new view of the members this node hears from: if the evicted ones are alive behind a partition, both sides now decide on their own"
                    );
                    ForcedView {
                        evicted: evicted
                            .into_iter()
                            .map(|(id, incarnation)| EvictedView {
                                peer_id: id.to_base58(),
                                incarnation,
                            })
                            .collect(),
                        members,
                    }
                });
                let _ = reply.send(forced);
            }
            Command::Leave(reply) => {
                if self.replica.is_member() {
                    let _ = self.replica.leave(now);
                }
                // still joining: nothing to hand over, stop now
                self.stop_now = !self.replica.is_member() && !self.replica.has_left();
                self.leave_waiters.push(reply);
            }
        }
    }

    fn status(&mut self) -> StatusView {
        let phase = phase_name(&self.replica);
        let now = self.now();
        let join = self.replica.join_progress().map(|progress| {
            let mut view = JoinView::new(progress, now);
            view.waiting = self.join_waiting(progress);
            view.dial_failures = self.dial_failure_views();
            view
        });
        let map = self.replica.network_map();
        let suspected = map
            .iter()
            .filter(|(_, e)| e.record.state == MemberState::Suspect)
            .map(|(id, _)| id.to_base58())
            .collect();
        let view = ViewView::new(&self.replica, self.now());
        StatusView {
            peer_id: self.swarm.local_peer_id().to_base58(),
            network: self.network.clone(),
            incarnation: self.replica.incarnation(),
            listen_addrs: self.listen_addrs.clone(),
            members: self.replica.network_map().counted(),
            phase: phase.into(),
            applied: vector_json(self.replica.applied()),
            snapshot_point: vector_json(self.replica.snapshot_point()),
            digest: self.replica.stable_digest().to_hex(),
            isolated: self.replica.is_member() && self.replica.is_isolated(),
            suspected,
            view,
            join,
        }
    }

    /// The failed dials kept for the join status, the latest first.
    fn dial_failure_views(&self) -> Vec<DialFailureView> {
        let mut failures: Vec<DialFailureView> = self
            .dial_failures
            .iter()
            .map(|(addr, (reason, at))| DialFailureView {
                addr: addr.clone(),
                reason: reason.clone(),
                ms_ago: at.elapsed().as_millis() as u64,
            })
            .collect();
        failures.sort_by_key(|f| f.ms_ago);
        failures
    }

    /// Why the node is still joining, in a sentence (`join.waiting` of the status).
    fn join_waiting(&self, progress: &JoinProgress) -> String {
        if self.replica.awaited_grant().is_some() {
            return "granted: fetching the offered state".into();
        }
        if progress.offer_being_written {
            return "registered: the sponsor is writing a snapshot of the state to offer".into();
        }
        let last_failure = self
            .dial_failure_views()
            .into_iter()
            .next()
            .map(|f| format!("; last failed dial: {}: {}", f.addr, f.reason))
            .unwrap_or_default();
        let sponsors = self.replica.join_sponsors().unwrap_or_default();
        if sponsors.is_empty() {
            return format!(
                "no bootstrap peer reached yet: dialling the bootstrap addresses to learn who answers there{last_failure}"
            );
        }
        let connected = sponsors
            .iter()
            .filter_map(peer_id)
            .any(|p| self.swarm.is_connected(&p));
        if !connected {
            return format!("no possible sponsor connected{last_failure}");
        }
        match &progress.last_refusal {
            Some(refusal) => format!(
                "refused ({} so far; the last: {refusal}); asking the next possible sponsor",
                progress.refusals
            ),
            None if progress.unanswered > 0 => format!(
                "{} of {} join requests went unanswered",
                progress.unanswered, progress.requests
            ),
            None => "waiting for the sponsor's answer".into(),
        }
    }

    /// Logs, at info level, the view this node joined and every change of another
    /// member's standing its core adopted (joined, rejoined, suspected, no longer
    /// suspected, left, evicted: `Replica::drain_member_changes`); and a warning when this
    /// node finds itself isolated (hearing from at most half of the members).
    fn log_membership(&mut self) {
        let member = self.replica.is_member();
        if member && !self.was_member {
            let map = self.replica.network_map();
            let members = map.counted();
            info!(
                members,
                epoch = map.membership_epoch(),
                "member of a view of {members} members"
            );
        }
        self.was_member = member;
        for change in self.replica.drain_member_changes() {
            info!(
                member = %change.id,
                incarnation = change.incarnation,
                "member {}",
                change.change.as_str()
            );
        }
        for installed in self.replica.drain_installed_views() {
            let view = &installed.change.next;
            let evicted: Vec<String> = installed
                .change
                .evicted
                .iter()
                .map(|e| e.id.to_base58())
                .collect();
            if installed.forced {
                warn!(
                    epoch = view.epoch,
                    members = view.members.len(),
                    "installed view {} of {} members FORCED by the operator, without a quorum",
                    view.epoch,
                    view.members.len()
                );
            } else {
                info!(
                    epoch = view.epoch,
                    members = view.members.len(),
                    evicted = ?evicted,
                    "installed view {} of {} members",
                    view.epoch,
                    view.members.len()
                );
            }
        }
        let isolated = self.replica.is_isolated();
        if isolated != self.was_isolated {
            if isolated {
                warn!(
                    members = self.replica.network_map().counted(),
                    "this node hears from at most half of the members: it is cut off or in a minority, evicts no one, and its snapshot point waits for the silent members"
                );
            } else {
                info!("this node hears from a majority of the members again");
            }
            self.was_isolated = isolated;
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = self.now();
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
                ..
            })) => {
                let acceptance = match self.on_bytes(now, &propagation_source, &message.data, true)
                {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            // a peer without ping keeps its connection; a silent one loses it
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(failure),
            })) if !matches!(failure, ping::Failure::Unsupported) => {
                info!(%peer, %failure, "a connection went silent: closing it to dial again");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.dial_backoff.remove(&peer_id);
                if endpoint.is_dialer() {
                    let addr = without_peer_id(endpoint.get_remote_address().clone()).0;
                    self.dial_failures.remove(&addr.to_string());
                }
                if self.address_dials.remove(&connection_id) {
                    self.found_at(peer_id, endpoint.get_remote_address());
                }
                self.metrics
                    .connected_peers
                    .set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                self.address_dials.remove(&connection_id);
                self.on_dial_failure(peer_id, &error);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let reason = Reason::of_incoming(&error, self.keyed);
                info!(from = %send_back_addr, %reason, "an incoming connection failed");
            }
            SwarmEvent::ConnectionClosed { .. } => {
                self.metrics
                    .connected_peers
                    .set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let text = address.to_string();
                if !self.listen_addrs.contains(&text) {
                    self.listen_addrs.push(text);
                }
            }
            _ => {}
        }
    }

    /// A message from the network: decoded and handed to the replica, or dropped and
    /// counted when malformed (or of a kind that does not belong on the topic). A sender
    /// of garbage or of ops its origin did not sign is penalised.
    fn on_bytes(&mut self, now: Time, from: &PeerId, bytes: &[u8], published: bool) -> Verdict {
        if self.penalties.is_blocked(from) {
            return Verdict::Ignore;
        }
        let decoded = if published {
            let keys = &mut self.keys;
            let replica = &self.replica;
            decode_published(bytes, |key| keys.resolve(replica, key)).map(Message::Ops)
        } else {
            decode(bytes).map_err(TopicDecodeError::from)
        };
        let message: NodeMessage = match decoded {
            Ok(m) => m,
            Err(TopicDecodeError::UnknownKey(key)) => {
                self.metrics.unresolved_batches.inc();
                debug!(%from, key, "dropped a batch that refers to an unknown node");
                return Verdict::Ignore;
            }
            Err(error) => {
                self.metrics.malformed_messages.inc();
                debug!(%from, %error, "dropped a malformed message");
                self.offend(from, Offence::Malformed);
                return Verdict::Reject;
            }
        };
        if !published && matches!(message, Message::Ops(_)) {
            // ops travel on the topic only
            self.metrics.malformed_messages.inc();
            self.offend(from, Offence::Malformed);
            return Verdict::Reject;
        }
        self.metrics
            .count_in_with_report(message.kind(), bytes.len(), report_bytes(&message));
        // whatever earlier events rejected is counted now, so what follows is this batch's
        self.take_rejected_ops();
        self.replica.handle_message(now, &node_id(from), &message);
        let rejected = self.take_rejected_ops();
        let any = |reasons: &[RejectReason]| rejected.iter().any(|r| reasons.contains(&r.reason));
        if any(&[RejectReason::Unsigned, RejectReason::BadSignature]) {
            debug!(%from, "dropped ops their origin did not sign");
            self.offend(from, Offence::BadSignature);
            return Verdict::Reject;
        }
        if any(&[RejectReason::Refused]) {
            self.offend(from, Offence::Refused);
        }
        if any(&[RejectReason::NotMember, RejectReason::NotWriter]) {
            // not relayed; no offence: an honest member relays a joiner's ops before this
            // node has heard of the joiner
            debug!(%from, "dropped ops of an origin that may not write here");
            return Verdict::Ignore;
        }
        Verdict::Accept
    }

    /// Counts an offence against `peer`; one too many blocks it (its connections close and
    /// it cannot connect again until the block runs out).
    fn offend(&mut self, peer: &PeerId, offence: Offence) {
        self.metrics
            .peer_offences
            .get_or_create(&KindLabel {
                kind: offence.label(),
            })
            .inc();
        if self
            .penalties
            .offend(peer, offence, Instant::now().into_std())
        {
            warn!(%peer, last = offence.label(), "blocking a peer that sent too much garbage");
            self.metrics.peers_blocked.inc();
            self.sync_block(*peer);
        }
    }

    /// Whether links with `peer` are refused now: the penalty box holds it, or the
    /// operator cut the link.
    fn refuses(&self, peer: &PeerId) -> bool {
        self.penalties.is_blocked(peer) || self.cut_links.contains(peer)
    }

    /// Makes the swarm's block list agree with [`refuses`](Self::refuses) for `peer`
    /// (blocking closes its connections).
    fn sync_block(&mut self, peer: PeerId) {
        let refused = self.refuses(&peer);
        let blocked = &mut self.swarm.behaviour_mut().blocked;
        if refused {
            blocked.block_peer(peer);
        } else {
            blocked.unblock_peer(peer);
        }
    }

    /// After every event: store what must survive a crash, answer the writes that are now
    /// durable, carry out the replica's actions, and publish the snapshot point.
    fn after_event(&mut self) -> Result<(), NodeError> {
        self.store()?;
        for (reply, id) in self.acks.drain(..) {
            let _ = reply.send(Ok(id));
        }
        self.answer_waiters();
        while let Some(action) = self.replica.poll_action() {
            match action {
                Action::Send { to, message } => self.send(&to, &message),
                Action::Publish { message } => self.publish(&message),
                Action::ScheduleWake { at } => self.wake_at = Some(at),
            }
        }
        if self.fetching.is_some() || self.replica.awaited_grant().is_some() {
            self.fetch_awaited_state();
        }
        if let Some(failure) = self.replica.take_leave_failure() {
            warn!(
                unstable = failure.unstable,
                unstable_own = failure.unstable_own,
                "{failure}"
            );
            for waiter in self.leave_waiters.drain(..) {
                let _ = waiter.send(Err(failure.clone()));
            }
        }
        if self.log_join_progress() {
            self.dial_known_addresses();
        }
        self.log_membership();
        self.update_gauges();
        Ok(())
    }

    /// Answers the writes whose concern holds now: `applied:K` once K members in good
    /// standing (this node by its applied vector, the others by their records in its map
    /// or by what their digests said) have applied the op, or the snapshot point covers it
    /// (every member has), `stable`
    /// once the snapshot point covers it. Writes whose caller
    /// gave up (timed out) are dropped.
    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let me = self.replica.id().clone();
        let applied_here = self.replica.applied();
        let map = self.replica.network_map();
        let sp = self.replica.snapshot_point();
        for waiter in std::mem::take(&mut self.waiters) {
            if waiter.reached.is_closed() {
                continue;
            }
            let covers = |vector: &VersionVector| vector.get(&waiter.origin) >= waiter.seq;
            let reached = match waiter.concern {
                WriteConcern::Stored => true,
                // under the snapshot point, every member in good standing has it; else
                // count the records (members that are not changing standing do not
                // re-issue theirs when they apply ops: then it is the snapshot point)
                WriteConcern::Applied(_) if covers(sp) => true,
                WriteConcern::Applied(wanted) => {
                    let here = usize::from(map.is_counted(&me) && covers(applied_here));
                    let others = map
                        .iter()
                        .filter(|(id, e)| {
                            **id != me
                                && e.record.state.counts()
                                && (covers(&e.record.applied)
                                    || e.heard_applied().is_some_and(covers))
                        })
                        .count();
                    here + others >= wanted
                }
                WriteConcern::Stable => covers(sp),
            };
            if reached {
                let _ = waiter.reached.send(());
            } else {
                self.waiters.push(waiter);
            }
        }
    }

    /// After a whole round without a grant: dials, without a peer id, the bootstrap
    /// addresses and the addresses the records of this joiner's map carry, skipping those
    /// of peers connected now (they still answer there). A node
    /// that came back under a new identity keeps its address; the connection to whoever
    /// answers there makes it a possible sponsor ([`found_at`](Self::found_at)).
    fn dial_known_addresses(&mut self) {
        if self.replica.join_sponsors().is_none() {
            return;
        }
        let me = *self.swarm.local_peer_id();
        // possible sponsors without a record in the map are reached at the bootstrap
        // addresses
        let recorded: Vec<(Multiaddr, Option<PeerId>)> = self
            .replica
            .network_map()
            .iter()
            .filter_map(|(id, e)| Some((peer_id(id)?, &e.record.addrs)))
            .flat_map(|(peer, addrs)| {
                addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .map(move |a| (without_peer_id(a).0, Some(peer)))
            })
            .collect();
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for (addr, peer) in self.bootstrap_addrs.iter().cloned().chain(recorded) {
            let answers = peer.is_some_and(|p| p == me || self.swarm.is_connected(&p));
            let own = self.listen_addrs.contains(&addr.to_string());
            if !answers && !own && !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        debug!(
            addresses = addrs.len(),
            "dialling the known addresses for nodes under new identities"
        );
        for addr in addrs {
            let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.address_dials.insert(connection);
                }
                Err(error) => debug!(%addr, %error, "cannot dial a known address"),
            }
        }
    }

    /// Logs a failed dial, address by address, with the reason (a warning while joining,
    /// when it may be what keeps the join from going anywhere), and keeps the last reason
    /// per address for the join status.
    fn on_dial_failure(&mut self, peer: Option<PeerId>, error: &DialError) {
        let Some(failures) = Reason::of_dial(error, self.keyed) else {
            return;
        };
        let joining = self.replica.join_progress().is_some();
        for (addr, reason) in failures {
            let addr = match (addr, peer) {
                (Some(addr), _) => without_peer_id(addr).0.to_string(),
                (None, Some(peer)) => format!("/p2p/{peer}"),
                (None, None) => "(no address)".to_string(),
            };
            match (joining, peer) {
                (true, Some(peer)) => warn!(%addr, %peer, %reason, "dial failed"),
                (true, None) => warn!(%addr, %reason, "dial failed"),
                (false, Some(peer)) => info!(%addr, %peer, %reason, "dial failed"),
                (false, None) => info!(%addr, %reason, "dial failed"),
            }
            if self.dial_failures.len() >= DIAL_FAILURES_KEPT
                && !self.dial_failures.contains_key(&addr)
            {
                // forget the oldest
                if let Some(oldest) = self
                    .dial_failures
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(a, _)| a.clone())
                {
                    self.dial_failures.remove(&oldest);
                }
            }
            self.dial_failures
                .insert(addr, (reason.to_string(), Instant::now()));
        }
    }

    /// A connection [`dial_known_addresses`](Self::dial_known_addresses) dialled is
    /// established: while joining, a peer that is not yet a possible sponsor becomes one.
    fn found_at(&mut self, peer: PeerId, address: &Multiaddr) {
        let id = node_id(&peer);
        let Some(sponsors) = self.replica.join_sponsors() else {
            return;
        };
        if sponsors.contains(&id) || peer == *self.swarm.local_peer_id() || self.refuses(&peer) {
            return;
        }
        info!(%peer, %address, "found a new possible sponsor at a known address");
        let had_none = sponsors.is_empty();
        self.swarm
            .add_peer_address(peer, without_peer_id(address.clone()).0);
        self.replica.add_bootstrap_peers([id]);
        if had_none {
            // the joiner had no one to ask: its request to this one is due now
            let now = self.now();
            self.replica.handle_timeout(now);
        }
    }

    /// While joining: an info line each time a whole round of the sponsor list passed
    /// without a grant, and a warning (once per join) when a whole round passed without
    /// any answer at all, so that an operator sees a join that goes nowhere. Returns whether
    /// a new round passed since the last call.
    fn log_join_progress(&mut self) -> bool {
        let Some(progress) = self.replica.join_progress() else {
            self.join_log = None;
            return false;
        };
        let log = match &mut self.join_log {
            Some(log) if log.since == progress.since => log,
            other => other.insert(JoinLog {
                since: progress.since,
                rounds: progress.rounds,
                answers_at_round: progress.refusals,
                warned_silent: false,
            }),
        };
        if progress.rounds <= log.rounds {
            return false;
        }
        let last_refusal = progress.last_refusal.as_deref().unwrap_or("none");
        info!(
            rounds = progress.rounds,
            requests = progress.requests,
            unanswered = progress.unanswered,
            refusals = progress.refusals,
            sponsors = progress.sponsors,
            last_refusal,
            "a whole round of possible sponsors passed without a grant; asking again"
        );
        if progress.refusals == log.answers_at_round && !log.warned_silent {
            warn!(
                sponsors = progress.sponsors,
                requests = progress.requests,
                "no possible sponsor answered a join request for a whole round: check that the bootstrap peers run and that their addresses are right"
            );
            log.warned_silent = true;
        }
        log.rounds = progress.rounds;
        log.answers_at_round = progress.refusals;
        true
    }

    fn store(&mut self) -> Result<(), NodeError> {
        let mut ops = std::mem::take(&mut self.unstored_ops);
        let applied = self.replica.drain_applied_ops();
        // held ops hold none of this node's own: one makes the write that takes them along
        let own_applied = applied.iter().any(|op| op.origin == *self.replica.id());
        ops.extend(applied);
        // evictions are logged with the other changes of standing (`log_membership`)
        self.replica.drain_evictions();
        let phase = phase_name(&self.replica);
        let map = self.replica.network_map();
        let identity_changed =
            self.stored.incarnation != self.replica.incarnation() || self.stored.phase != phase;
        let progressed = self.stored.stable_cut.as_ref() != Some(self.replica.stable_cut())
            || self.stored.membership_epoch != map.membership_epoch();
        let due = self
            .last_checkpoint
            .is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
        let generation = self.replica.log_generation();
        let state = if self.stored_generation == Some(generation) {
            StateWrite::Fold
        } else if self.staged_generation == Some(generation) {
            StateWrite::Staged
        } else {
            StateWrite::Whole
        };
        // promises on views are stored before any answer leaves (`Replica::vote_generation`)
        let vote_generation = self.replica.vote_generation();
        let votes = (self.stored_votes != Some(vote_generation)).then(|| self.replica.votes());
        let mut batch = Batch {
            ops,
            checkpoint: None,
            state,
            // own new ops are acknowledged (and published) only once they are on disk
            durable: identity_changed || !self.acks.is_empty() || votes.is_some(),
            own_seq: Some(self.replica.own_seq()),
            votes,
        };
        if identity_changed || (progressed && due) {
            if identity_changed {
                // a new log (a grant was installed): store its whole suffix with it, and
                // a staged state's grant suffix, which the swap folds from the staged cut
                let drained =
                    std::mem::replace(&mut batch.ops, self.replica.ops_log().unstable_ops());
                if state == StateWrite::Staged {
                    // the ops that became stable since the staged cut, folded and pruned
                    // in this transaction
                    let cut = self.replica.stable_cut();
                    let stable = |op: &Arc<Op<LwwOp>>| cut.get(&op.origin) >= op.seq;
                    batch.ops.extend(
                        std::mem::take(&mut self.grant_suffix)
                            .into_iter()
                            .chain(drained)
                            .filter(stable),
                    );
                }
            }
            // the digest's chunk hashes are stored with the state: hash the chunks the
            // newly stable ops touched (a few), so that they are stored clean
            self.replica.stable_digest();
            batch.checkpoint = Some(self.replica.checkpoint());
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Received ops alone wait for the next write that must happen. A write that holds
        // no own op commits without a sync, and redb keeps such a commit only once a synced
        // one follows: every write takes the held ops along, so holding them loses nothing
        // a crash would not lose. Those the checkpoint makes stable meanwhile are folded
        // from memory and never stored as ops.
        let must_write = batch.durable
            || own_applied
            || batch.checkpoint.is_some()
            || batch.votes.is_some()
            || batch.ops.len() >= RECEIVED_OPS_HELD
            || self.disk_full.is_some();
        if !must_write {
            self.unstored_ops = batch.ops;
            return Ok(());
        }
        let wrote_checkpoint = batch.checkpoint.is_some();
        let wrote_votes = batch.votes.is_some();
        let durable = batch.durable;
        let written = match self.storage.write(&batch) {
            Ok(written) => written,
            Err(StorageError::DiskFull(reason)) => {
                // nothing of the batch is stored: it is written again once there is space,
                // and the messages that depend on it wait with it; the writes it holds are
                // told that they are not stored (their fate is open)
                self.unstored_ops = batch.ops;
                let full = StorageError::DiskFull(reason);
                for (reply, id) in self.acks.drain(..) {
                    let _ = reply.send(Err(WriteError::NotStored {
                        origin: id.origin,
                        seq: id.seq,
                        reason: full.to_string(),
                    }));
                }
                return Err(full.into());
            }
            Err(e) => {
                for (reply, _) in self.acks.drain(..) {
                    let _ = reply.send(Err(WriteError::NotDurable(e.to_string())));
                }
                return Err(e.into());
            }
        };
        self.metrics
            .storage_commits
            .get_or_create(&DurabilityLabel {
                durability: if durable { "synced" } else { "unsynced" },
            })
            .inc();
        self.metrics.ops_stored.inc_by(written.ops_stored);
        drop(batch);
        if wrote_votes {
            self.stored_votes = Some(vote_generation);
        }
        if wrote_checkpoint {
            // the store holds the stable state now: memory keeps what it does not hold
            let rewritten = if written.whole || state == StateWrite::Staged {
                None
            } else {
                Some(written.keys.as_slice())
            };
            let store = Arc::new(StoredState::live(self.storage.clone()));
            self.replica.keep_state_in_store(store, rewritten);
            if written.whole {
                debug!(entries = written.entries, "stored the whole stable state");
                self.metrics
                    .state_entries_written_whole
                    .inc_by(written.entries);
            } else {
                self.metrics.state_entries_folded.inc_by(written.entries);
            }
            self.stored_generation = Some(generation);
            self.staged_generation = None;
            self.last_checkpoint = Some(Instant::now());
            self.stored = StoredMark {
                incarnation: self.replica.incarnation(),
                phase,
                stable_cut: Some(self.replica.stable_cut().clone()),
                membership_epoch: self.replica.network_map().membership_epoch(),
            };
        }
        Ok(())
    }

    fn send(&mut self, to: &NodeId, message: &NodeMessage) {
        if let Message::JoinResponse(response) = message {
            if let JoinResponse::Granted(grant) = response.as_ref() {
                if let HandedOverState::Inline(state) = &grant.stable_state {
                    if state.len_with_tombstones() > self.snapshot_config.inline_state_max_entries {
                        self.offer_by_snapshot(to, grant);
                        return;
                    }
                }
            }
        }
        self.send_now(to, message);
    }

    /// Hands a grant's large stable state over as a snapshot: the file is written (or an
    /// existing one with the same id reused) on a blocking thread, then the grant goes out
    /// with the snapshot's header in place of the state. One snapshot per joiner at a time:
    /// a grant made meanwhile (the joiner gave up waiting and asked with a new incarnation,
    /// which its core registered) is kept, and sent when the snapshot is ready
    /// ([`Driver::on_prepared`]).
    fn offer_by_snapshot(&mut self, joiner: &NodeId, grant: &JoinGrant<LwwMap>) {
        // the joiner waits for the file instead of asking anew with another incarnation
        let preparing = Message::JoinResponse(Box::new(JoinResponse::Preparing {
            incarnation: grant.registration.incarnation,
        }));
        self.send_now(joiner, &preparing);
        if let Some(newest) = self.preparing.get_mut(joiner) {
            *newest = Some(grant.clone());
            return;
        }
        self.preparing.insert(joiner.clone(), None);
        let digest =
            (grant.stable_cut == *self.replica.stable_cut()).then(|| self.replica.stable_digest());
        let store = self.keeper.store.clone();
        let grant = grant.clone();
        let joiner = joiner.clone();
        let prepared = self.prepared_tx.clone();
        // the result goes back through `prepared`
        drop(super::background::spawn("snapshot-offer", move || {
            let mut grant = grant;
            let offered = match &grant.stable_state {
                HandedOverState::Inline(state) => store.offer(state, &grant.stable_cut, digest),
                HandedOverState::Snapshot(_) => return,
            };
            let offered = match offered {
                Ok((snapshot_id, header)) => {
                    info!(%joiner, snapshot = %snapshot_id, chunks = header.chunks.len(), "offering the stable state as a snapshot");
                    grant.stable_state = HandedOverState::Snapshot(StateOffer {
                        snapshot_id,
                        header,
                    });
                    Some(grant)
                }
                Err(error) => {
                    // the joiner asks again
                    warn!(%joiner, %error, "cannot write the snapshot to hand over");
                    None
                }
            };
            let _ = prepared.send((joiner, offered));
        }));
    }

    /// A snapshot offer is ready. A joiner whose core made a newer grant meanwhile ignores
    /// the prepared one (it registers an incarnation the joiner gave up): the newest grant
    /// goes out instead, with the same snapshot when it hands over the same stable cut, or
    /// prepared anew. (A joiner told that the offer is being written asks again with the
    /// same incarnation. Its registration, made at the sponsor's applied cut, bounds the
    /// stable cut until the joiner reports: a grant made meanwhile hands over the same cut,
    /// or one nearer that bound, so one joiner costs few snapshots, not one per retry.)
    fn on_prepared(&mut self, joiner: NodeId, offered: Option<JoinGrant<LwwMap>>) {
        let newest = self.preparing.remove(&joiner).flatten();
        let grant = match (newest, offered) {
            (None, Some(offered)) => offered,
            (None, None) => return,
            (Some(mut newest), Some(offered))
                if offered
                    .offer()
                    .is_some_and(|o| o.header.snapshot_point == newest.stable_cut) =>
            {
                newest.stable_state = offered.stable_state;
                newest
            }
            (Some(newest), _) => return self.offer_by_snapshot(&joiner, &newest),
        };
        let message = Message::JoinResponse(Box::new(JoinResponse::Granted(grant)));
        self.send_now(&joiner, &message);
    }

    /// Starts fetching the snapshot the awaited grant offers (and stops a fetch of one no
    /// longer awaited).
    fn fetch_awaited_state(&mut self) {
        let Some((sponsor, grant)) = self.replica.awaited_grant() else {
            if self.fetching.take().is_some() {
                // the replica gave the grant up: a restart must not resume it
                self.forget_held_grant(false);
            }
            return;
        };
        let Some(offer) = grant.offer() else {
            self.fetching = None;
            return;
        };
        if self
            .fetching
            .as_ref()
            .is_some_and(|(id, _)| *id == offer.snapshot_id)
        {
            return;
        }
        let me = self.replica.id();
        let others = grant
            .members
            .0
            .iter()
            .filter(|r| r.state.counts() && r.id != *sponsor && r.id != *me);
        let sources: Vec<(NodeId, Vec<String>)> = std::iter::once((sponsor.clone(), Vec::new()))
            .chain(others.map(|r| (r.id.clone(), r.addrs.clone())))
            .collect();
        let offer = offer.clone();
        for (id, addrs) in &sources {
            add_addresses(&mut self.swarm, id, addrs);
        }
        let peers: Vec<PeerId> = sources.iter().filter_map(|(id, _)| peer_id(id)).collect();
        info!(snapshot = %offer.snapshot_id, chunks = offer.header.chunks.len(), sources = peers.len(), "fetching the offered state");
        let id = offer.snapshot_id.clone();
        let control = self.swarm.behaviour().streams.new_control();
        let config = self.snapshot_config.transfer.clone();
        let deadline = self.replica.config().gossip.state_transfer_timeout;
        let metrics = self.metrics.transfer.clone();
        let done = self.fetched_tx.clone();
        let held = self.replica.held_grant().expect("a grant is awaited");
        let stager = Stager::for_transfer(self.storage.clone(), &held).expect("it offers a state");
        let task = tokio::spawn(async move {
            let id = offer.snapshot_id.clone();
            let result =
                transfer::fetch(control, offer, peers, config, deadline, metrics, stager).await;
            let _ = done.send((id, result));
        });
        self.fetching = Some((id, AbortOnDrop(task)));
    }

    fn on_fetched(&mut self, id: String, fetched: Result<LwwMap, FetchError>) {
        if self
            .fetching
            .as_ref()
            .is_none_or(|(current, _)| *current != id)
        {
            return;
        }
        self.fetching = None;
        let now = self.now();
        match fetched {
            Ok(state) => {
                let entries = state.len_with_tombstones();
                let suffix = self
                    .replica
                    .awaited_grant()
                    .map(|(_, grant)| grant.suffix.0.clone())
                    .unwrap_or_default();
                match self.replica.install_transferred(now, state) {
                    Ok(()) => {
                        // the fetch staged the state in the store as it arrived; the
                        // checkpoint that swaps it in folds the grant's suffix into it
                        self.staged_generation = Some(self.replica.log_generation());
                        self.grant_suffix = suffix;
                        info!(snapshot = %id, entries, "installed the fetched state")
                    }
                    Err(error) => {
                        warn!(snapshot = %id, %error, "cannot install the fetched state");
                        self.forget_held_grant(true);
                    }
                }
            }
            Err(error) => {
                warn!(snapshot = %id, %error, "state transfer failed; asking the sponsor again");
                // chunks that rebuilt no state are dropped; others may serve a later
                // grant of the same snapshot
                self.forget_held_grant(matches!(error, FetchError::Install(_)));
                self.replica.abandon_transfer(now);
            }
        }
    }

    /// The held grant's fetch ended without an install: a restart does not resume it.
    fn forget_held_grant(&self, drop_staged: bool) {
        if let Err(error) = self.storage.forget_held_grant(drop_staged) {
            warn!(%error, "cannot forget the abandoned grant; a restart resumes it and fails over to asking a sponsor");
        }
    }

    fn send_now(&mut self, to: &NodeId, message: &NodeMessage) {
        let Some(peer) = peer_id(to) else { return };
        let bytes = encode(message);
        self.metrics.count_out(message.kind(), bytes.len());
        if let Err(error) = self.direct.send(peer, bytes) {
            self.metrics.direct_dropped.inc();
            debug!(%peer, %error, "direct message dropped");
        }
    }

    fn publish(&mut self, message: &NodeMessage) {
        let bytes = match message {
            Message::Ops(published) => encode_published(published),
            other => encode(other),
        };
        self.metrics
            .count_out_with_report(message.kind(), bytes.len(), report_bytes(message));
        if let Err(error) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            self.metrics.publish_failures.inc();
            debug!(%error, "publish refused; pulls will deliver these ops");
        }
    }

    /// Dials members in good standing that are not connected, with per-peer backoff, and
    /// teaches the swarm the addresses members carry in their records.
    fn reconnect(&mut self) {
        let now = Instant::now();
        for peer in self.penalties.expired(now.into_std()) {
            info!(%peer, "block ran out");
            self.sync_block(peer);
        }
        let me = *self.swarm.local_peer_id();
        let members: Vec<(PeerId, Vec<String>)> = self
            .replica
            .network_map()
            .iter()
            .filter(|(_, e)| e.record.state.counts() || e.record.state == MemberState::Left)
            .filter_map(|(id, e)| peer_id(id).map(|p| (p, e.record.addrs.clone())))
            .filter(|(p, _)| *p != me)
            .collect();
        for (peer, addrs) in members {
            if self.swarm.is_connected(&peer) || self.refuses(&peer) {
                continue;
            }
            let (next, backoff) = self
                .dial_backoff
                .entry(peer)
                .or_insert((now, RECONNECT_TICK));
            if *next > now {
                continue;
            }
            let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if addrs.is_empty() {
                continue;
            }
            *backoff = (*backoff * 2).min(RECONNECT_MAX);
            *next = now + *backoff;
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    /// The ops the core rejected since the last call, counted in the metrics by reason.
    fn take_rejected_ops(&mut self) -> Vec<RejectedOp> {
        let rejected = self.replica.drain_rejected_ops();
        for op in &rejected {
            match op.reason {
                RejectReason::Refused => self.metrics.ops_refused.inc(),
                reason => self
                    .metrics
                    .ops_rejected
                    .get_or_create(&ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc(),
            };
        }
        rejected
    }

    fn update_gauges(&mut self) {
        let applied = self.replica.applied().total();
        self.applied_tx.send_if_modified(|seen| {
            let changed = seen != self.replica.applied();
            if changed {
                *seen = self.replica.applied().clone();
            }
            changed
        });
        self.take_rejected_ops();
        let sp = self.replica.snapshot_point().clone();
        let map = self.replica.network_map();
        let m = &self.metrics;
        m.applied_ops.set(applied as i64);
        m.snapshot_point_ops.set(sp.total() as i64);
        m.snapshot_point_lag_ops
            .set(applied.saturating_sub(sp.total()) as i64);
        m.members.set(map.counted() as i64);
        m.incarnation.set(self.replica.incarnation() as i64);
        let stats = self.replica.stats();
        // the replica keeps these running totals; the counters follow them up
        for (counter, total) in [
            (&m.stale_notices, stats.stale_notices),
            (&m.evictions_issued, stats.evictions_issued),
            (&m.suspicions_raised, stats.suspicions_raised),
            (&m.refutations, stats.refutations),
            (&m.rejoins, stats.rejoins),
            (&m.stale_grants, stats.stale_grants),
            (&m.ops_kept_while_fetching, stats.ops_kept_while_fetching),
            (&m.sponsorships_declined, stats.sponsorships_declined),
            (&m.leaves_failed, stats.leaves_failed),
            (&m.own_seq_rollbacks, stats.own_seq_rollbacks),
        ] {
            count_up_to(counter, total);
        }
        m.ops_buffered
            .set(self.replica.ops_log().buffered_len() as i64);
        m.heartbeat_flooding
            .set(i64::from(self.replica.floods_heartbeat()));
        let log = self.replica.ops_log();
        m.state_entries_in_memory
            .set((log.applied_state().in_memory() + log.stable_state().in_memory()) as i64);
        m.state_read_failures
            .set(self.storage.read_failures() as i64);
        if self.last_sp.as_ref() != Some(&sp) {
            m.evicted_members.set(
                map.iter()
                    .filter(|(_, e)| e.record.state == MemberState::Evicted)
                    .count() as i64,
            );
            let view = SnapshotPointView {
                snapshot_point: vector_json(&sp),
                ops: sp.total(),
                digest: self.replica.stable_digest().to_hex(),
                incarnation: self.replica.incarnation(),
            };
            self.last_sp = Some(sp);
            self.sp_tx.send_replace(view);
            self.take_scheduled();
        }
    }

    /// Takes the scheduled snapshots due at the current stable height: the states are
    /// taken here in O(1) and written on a blocking thread.
    fn take_scheduled(&mut self) {
        if !self.replica.is_member() {
            return;
        }
        let height = self.replica.stable_cut().total();
        let claimed = self.keeper.claim_due(height);
        if claimed.is_empty() {
            return;
        }
        let stable = (
            self.replica.stable_state().clone(),
            self.replica.stable_cut().clone(),
        );
        let applied = (
            self.replica.applied_state().clone(),
            self.replica.applied().clone(),
        );
        let sp = vector_json(self.replica.snapshot_point());
        let keeper = self.keeper.clone();
        // the future is not awaited: the job reports through the keeper
        drop(super::background::spawn("snapshot-scheduled", move || {
            keeper.take_scheduled(claimed, stable, applied, &sp)
        }));
    }
}

/// `joining`, `member`, `leaving` or `left` (the status view's `phase`).
fn phase_name(replica: &Replica<LwwMap>) -> &'static str {
    if replica.is_leaving() {
        "leaving"
    } else if replica.is_member() {
        "member"
    } else if replica.has_left() {
        "left"
    } else {
        "joining"
    }
}

/// Bytes of a message that are a report riding on a published batch.
fn report_bytes(message: &NodeMessage) -> usize {
    match message {
        Message::Ops(published) => report_len(published),
        _ => 0,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
