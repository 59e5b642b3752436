//! State transfer over `/tidemark/transfer/1` (SPEC §6, like Raft's InstallSnapshot and
//! Cosmos state sync): a joiner whose grant offers a snapshot instead of an inline state
//! fetches that snapshot's chunks from the sponsor and from any other node holding a
//! snapshot with the same id, verifies every chunk against the header as it arrives, and
//! rebuilds the state on a blocking thread, checked against the digest before it is
//! installed. The same thread stages each chunk's entries in the node's store, so the
//! checkpoint after the install does not write the state again. Serving happens in tasks of its own: neither side's event loop reads a file
//! or decodes a chunk.
//!
//! Each exchange is one request and one answer; a stream carries them one after another
//! (see [`SourceStreams`]):
//!
//! ```text
//! request = frame(CBOR {snapshot_id: text, index: uint})
//! answer  = frame(0x00 · chunk bytes)      the chunk as stored
//!         / frame(0x01)                    this node has no such snapshot or chunk
//!         / frame(0x02 · UTF-8 reason)     the node could not read it
//! ```
//!
//! Which chunk to ask of whom, and what to do with a bad, late or missing answer, is the
//! sans-IO [`Transfer`] plan's business; this module only carries it out.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::codec::{read_frame_limited, write_frame_limited};
use super::snapshots::SnapshotStore;
use super::storage::Stager;
use crate::join_protocol::StateOffer;
use crate::ops_log::LwwMap;
use crate::snapshot::transfer::{Output, Transfer, TransferConfig};
use crate::snapshot::{SnapshotError, StateBuilder, MAX_PART_BYTES};
use crate::{NodeId, Time};

/// The protocol id of chunk requests.
pub const TRANSFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/tidemark/transfer/1");

const ANSWER_CHUNK: u8 = 0;
const ANSWER_NOT_FOUND: u8 = 1;
const ANSWER_ERROR: u8 = 2;
/// Largest request a server reads.
const MAX_REQUEST_BYTES: usize = 1024;
/// Chunks a node reads from disk for peers at once.
const SERVING_AT_ONCE: usize = 8;
/// Verified chunks waiting for the installer thread.
const INSTALL_QUEUE: usize = 2;

/// A chunk request as sent on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub snapshot_id: String,
    pub index: u32,
}

/// Decodes a chunk request frame (a peer's bytes: any input gives a value or an error).
pub fn parse_request(frame: &[u8]) -> Result<ChunkRequest, String> {
    ciborium::from_reader::<ChunkRequest, _>(frame).map_err(|e| format!("malformed request: {e}"))
}

/// Decodes an answer frame (a peer's bytes: any input gives a value or an error).
pub fn parse_answer(frame: Vec<u8>) -> io::Result<Answer> {
    match frame.split_first() {
        Some((&ANSWER_CHUNK, _)) => {
            let mut chunk = frame;
            chunk.drain(..1);
            Ok(Answer::Chunk(chunk))
        }
        Some((&ANSWER_NOT_FOUND, _)) => Ok(Answer::NotFound),
        Some((&ANSWER_ERROR, reason)) => Err(io::Error::other(
            String::from_utf8_lossy(reason).into_owned(),
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed chunk answer",
        )),
    }
}

/// Counters of the transfers a node serves and makes.
#[derive(Clone, Default)]
pub struct TransferMetrics {
    pub chunks_served: Counter,
    pub chunks_fetched: Counter,
    pub chunks_refetched: Counter,
    pub bad_chunks: Counter,
    pub bytes_fetched: Counter,
    /// Chunks a resumed transfer kept from before a restart instead of fetching them.
    pub chunks_resumed: Counter,
    /// Chunks of the snapshot being fetched that are staged and synced (a restart
    /// resumes after them): `tidemark_transfer_chunks_kept`.
    pub chunks_kept: super::metrics::IntGauge,
    /// Snapshots being fetched now (0 or 1): `tidemark_transfers_in_progress`.
    pub in_progress: super::metrics::IntGauge,
}

/// Sets a gauge to 0 when dropped.
struct ZeroOnDrop(super::metrics::IntGauge);

impl Drop for ZeroOnDrop {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// Why a transfer did not produce the state.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no peer holds snapshot {0}")]
    NoSource(String),
    #[error("snapshot {0} was not fetched within {1:?}")]
    Deadline(String, Duration),
    #[error("the fetched snapshot does not rebuild the offered state: {0}")]
    Install(#[from] SnapshotError),
    #[error("the installer stopped")]
    InstallerStopped,
}

/// Serves chunks of the snapshots in `store` to every peer that asks, until the node stops
/// (the returned task ends when the swarm is dropped).
pub fn serve(
    mut control: libp2p_stream::Control,
    store: Arc<SnapshotStore>,
    served: Counter,
) -> JoinHandle<()> {
    let mut incoming = control
        .accept(TRANSFER_PROTOCOL)
        .expect("the transfer protocol is accepted once per node");
    let reading = Arc::new(Semaphore::new(SERVING_AT_ONCE));
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let store = store.clone();
            let reading = reading.clone();
            let served = served.clone();
            tokio::spawn(async move {
                if let Err(error) = answer_requests(stream, store, reading, served).await {
                    debug!(%peer, %error, "transfer stream ended");
                }
            });
        }
    })
}

async fn answer_requests(
    mut stream: libp2p::Stream,
    store: Arc<SnapshotStore>,
    reading: Arc<Semaphore>,
    served: Counter,
) -> io::Result<()> {
    loop {
        let request = match read_frame_limited(&mut stream, MAX_REQUEST_BYTES).await {
            Ok(request) => request,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let answer = match parse_request(&request) {
            Err(reason) => error_answer(&reason),
            Ok(request) => {
                let _permit = reading.acquire().await.map_err(io::Error::other)?;
                let reader = store.clone();
                let read = tokio::task::spawn_blocking(move || {
                    reader.read_chunk(&request.snapshot_id, request.index as usize)
                })
                .await
                .map_err(io::Error::other)?;
                match read {
                    Ok(Some(chunk)) => {
                        let wait = store.io_budget().spend(chunk.len() as u64);
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        served.inc();
                        let mut answer = Vec::with_capacity(chunk.len() + 1);
                        answer.push(ANSWER_CHUNK);
                        answer.extend_from_slice(&chunk);
                        answer
                    }
                    Ok(None) => vec![ANSWER_NOT_FOUND],
                    Err(e) => error_answer(&e.to_string()),
                }
            }
        };
        let sending = async {
            write_frame_limited(&mut stream, &answer, MAX_PART_BYTES + 1).await?;
            stream.flush().await
        };
        // the joiner reads no further (its multiplexer grants no more credit)
        warning_while_waiting(sending, |waited_s| {
            warn!(
                waited_s,
                "a chunk answer has not been taken by the joiner yet"
            )
        })
        .await?;
    }
}

fn error_answer(reason: &str) -> Vec<u8> {
    let mut answer = vec![ANSWER_ERROR];
    answer.extend_from_slice(reason.as_bytes());
    answer
}

/// A chunk answer: the chunk's bytes, or "not here" (an error answer is an `Err`).
#[derive(Debug)]
pub enum Answer {
    Chunk(Vec<u8>),
    NotFound,
}

/// The streams a fetch holds to one source. Requests go one after another on each stream,
/// so streams are opened once per transfer rather than once per chunk: libp2p-stream drops
/// inbound streams that arrive faster than the server takes them, and a burst of new
/// streams lost chunks that way. A new stream is opened only once the newest one has
/// carried an answer (proof the server took it).
#[derive(Default)]
struct SourceStreams {
    idle: Vec<libp2p::Stream>,
    /// Streams held, idle or busy.
    open: usize,
    /// Whether the newest stream has yet to carry an answer.
    unproven: bool,
    /// Requests waiting for a stream: (source, chunk index).
    waiting: VecDeque<(NodeId, usize)>,
}

/// Asks for chunk `index` on `stream`, or on a new stream if there is none; gives the
/// stream back with the answer.
async fn exchange(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    stream: Option<libp2p::Stream>,
    snapshot_id: String,
    index: usize,
) -> io::Result<(Answer, libp2p::Stream)> {
    let mut stream = match stream {
        Some(stream) => stream,
        None => control
            .open_stream(peer, TRANSFER_PROTOCOL)
            .await
            .map_err(io::Error::other)?,
    };
    let mut request = Vec::new();
    ciborium::into_writer(
        &ChunkRequest {
            snapshot_id,
            index: index as u32,
        },
        &mut request,
    )
    .map_err(io::Error::other)?;
    write_frame_limited(&mut stream, &request, MAX_REQUEST_BYTES).await?;
    stream.flush().await?;
    let answer = parse_answer(read_frame_limited(&mut stream, MAX_PART_BYTES + 1).await?)?;
    Ok((answer, stream))
}

/// How long a transfer may hand no chunk to the installer before it logs its state (the
/// plan's, what the loop did since, and per source the streams open, idle, waiting and
/// unproven).
const STALLED: Duration = Duration::from_secs(30);

/// What a fetch did since it last handed a chunk to the installer (for the stall log).
#[derive(Debug, Default)]
struct SinceProgress {
    /// Turns of the fetch loop.
    turns: u64,
    /// Of which woken by its timer (a late request, a backoff's end, the stall log).
    timer_wakes: u64,
    /// Requests sent.
    sent: u64,
    /// Answers: chunks (verified or not), "not here", failures (timeouts included).
    chunks: u64,
    not_found: u64,
    failures: u64,
    last_failure: Option<String>,
}

/// How long installing one chunk may take before it is logged as slow.
const SLOW_INSTALL: Duration = Duration::from_secs(5);

/// How long a wait for the other side (the installer, or the joiner reading an answer)
/// goes on before it is logged, and again after each further such period.
const SLOW_WAIT: Duration = Duration::from_secs(10);

/// Awaits `waiting`, calling `log` with the seconds waited every [`SLOW_WAIT`] it is not
/// done yet.
async fn warning_while_waiting<T>(waiting: impl Future<Output = T>, log: impl Fn(u64)) -> T {
    let started = Instant::now();
    let mut waiting = std::pin::pin!(waiting);
    loop {
        match tokio::time::timeout(SLOW_WAIT, &mut waiting).await {
            Ok(done) => return done,
            Err(_) => log(started.elapsed().as_secs()),
        }
    }
}

/// Hands verified chunk `index` to the installer, logging while it waits (the installer is
/// behind: a slow disk, or stuck). Fails once the installer is gone.
async fn hand_over(chunks: &mpsc::Sender<Vec<u8>>, index: usize, bytes: Vec<u8>) -> Result<(), ()> {
    warning_while_waiting(chunks.send(bytes), |waited_s| {
        warn!(
            index,
            waited_s, "the installer has not taken the next verified chunk yet"
        )
    })
    .await
    .map_err(|_| ())
}

/// Fetches the snapshot `offer` names from `sources` (the sponsor first), verifying every
/// chunk, and rebuilds the state on a blocking thread. Gives up after `deadline`.
pub async fn fetch(
    control: libp2p_stream::Control,
    offer: StateOffer,
    sources: Vec<PeerId>,
    config: TransferConfig,
    deadline: Duration,
    metrics: TransferMetrics,
    mut stager: Stager,
) -> Result<LwwMap, FetchError> {
    let started = Instant::now();
    let _fetching = super::metrics::Raised::new(&metrics.in_progress);
    let now = || Time(started.elapsed().as_micros() as u64);
    let by_node: Vec<(NodeId, PeerId)> = sources
        .iter()
        .map(|p| (super::driver::node_id(p), *p))
        .collect();
    let peer_of = |node: &NodeId| by_node.iter().find(|(n, _)| n == node).map(|(_, p)| *p);
    let request_timeout = config.chunk_timeout * 2;
    let config_window = config.window.max(1);
    // the chunks an earlier process verified and staged of this snapshot are kept
    let header = offer.header.clone();
    stager.report_kept_to(metrics.chunks_kept.clone());
    // once this fetch ends (or is dropped) nothing is being kept
    let _zero_kept_at_end = ZeroOnDrop(metrics.chunks_kept.clone());
    let (kept, mut builder, mut stager) = tokio::task::spawn_blocking(move || {
        // the entries stay in the staged base file: the state is built over it
        let mut builder = StateBuilder::into_state(header.clone(), stager.state_to_build());
        let kept = stager.resume(|chunks, entries| {
            builder
                .resume_with(chunks, entries)
                .map_err(|e| e.to_string())
        })?;
        if kept == 0 {
            builder = StateBuilder::into_state(header, stager.state_to_build());
        }
        Ok::<_, super::storage::StorageError>((kept, builder, stager))
    })
    .await
    .map_err(|_| FetchError::InstallerStopped)?
    .map_err(|e| FetchError::Install(SnapshotError::Inspect(e.to_string())))?;
    if kept > 0 {
        metrics.chunks_resumed.inc_by(kept as u64);
        info!(
            snapshot = %offer.snapshot_id,
            kept,
            chunks = offer.header.chunks.len(),
            "resuming the transfer: chunks staged before the restart are kept"
        );
    }
    let mut plan = Transfer::resuming(
        offer.header.clone(),
        by_node.iter().map(|(n, _)| n.clone()).collect(),
        config,
        kept,
    );
    let (chunks, mut to_install) = mpsc::channel::<Vec<u8>>(INSTALL_QUEUE);
    // verifying, decoding and writing the state takes a core: below the event loop's
    // priority, so that the node goes on applying ops meanwhile
    let installer = super::background::spawn("transfer-install", move || {
        while let Some(bytes) = to_install.blocking_recv() {
            let started = Instant::now();
            builder.push_chunk_inspected(&bytes, |entries| {
                stager.stage(entries).map_err(|e| e.to_string())
            })?;
            if started.elapsed() >= SLOW_INSTALL {
                warn!(
                    seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
                    "installing one chunk (verify, decode, write, sync) was slow"
                );
            }
        }
        // the last chunks synced here rather than by the checkpoint that swaps them in
        stager
            .sync()
            .map_err(|e| SnapshotError::Inspect(e.to_string()))?;
        builder.finish()
    });
    let mut in_flight = FuturesUnordered::new();
    let mut pools: BTreeMap<PeerId, SourceStreams> = BTreeMap::new();
    let streams_per_source = config_window;
    let mut rerequests_counted = 0u64;
    let mut progress = (0usize, Instant::now());
    let mut warned = Instant::now();
    let mut since = SinceProgress::default();
    loop {
        since.turns += 1;
        // chunks are handed out before requests are asked: handing them out frees the
        // buffer that bounds the requests (asked first, a full buffer left nothing out
        // and the loop asleep until a timer)
        let mut installer_gone = false;
        while let Some(output) = plan.poll_output(now()) {
            match output {
                Output::HandOut { index, bytes } => {
                    if hand_over(&chunks, index, bytes).await.is_err() {
                        // the installer failed: its error is the transfer's
                        installer_gone = true;
                        break;
                    }
                }
                Output::Request(request) => {
                    let Some(peer) = peer_of(&request.peer) else {
                        // not a source given to the plan: cannot happen
                        plan.on_failure(now(), &request.peer, request.index);
                        continue;
                    };
                    let pool = pools.entry(peer).or_default();
                    pool.waiting.push_back((request.peer, request.index));
                }
            }
        }
        for (peer, pool) in pools.iter_mut() {
            while !pool.waiting.is_empty() {
                let stream = match pool.idle.pop() {
                    Some(stream) => Some(stream),
                    None if !pool.unproven && pool.open < streams_per_source => {
                        pool.open += 1;
                        pool.unproven = true;
                        None
                    }
                    None => break,
                };
                let fresh = stream.is_none();
                let (node, index) = pool.waiting.pop_front().expect("not empty");
                let exchange = exchange(
                    control.clone(),
                    *peer,
                    stream,
                    offer.snapshot_id.clone(),
                    index,
                );
                let peer = *peer;
                since.sent += 1;
                in_flight.push(async move {
                    let answer = tokio::time::timeout(request_timeout, exchange)
                        .await
                        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)));
                    (node, peer, index, fresh, answer)
                });
            }
        }
        let stats = plan.stats();
        metrics
            .chunks_refetched
            .inc_by(stats.rerequested.saturating_sub(rerequests_counted));
        rerequests_counted = stats.rerequested;
        if plan.is_complete() || installer_gone || chunks.is_closed() {
            break;
        }
        if plan.is_hopeless() {
            return Err(FetchError::NoSource(offer.snapshot_id));
        }
        if started.elapsed() >= deadline {
            return Err(FetchError::Deadline(offer.snapshot_id, deadline));
        }
        if stats.handed_out != progress.0 {
            progress = (stats.handed_out, Instant::now());
            since = SinceProgress::default();
        } else if progress.1.elapsed() >= STALLED && warned.elapsed() >= STALLED {
            warned = Instant::now();
            let streams: Vec<_> = pools
                .values()
                .map(|p| (p.open, p.idle.len(), p.waiting.len(), p.unproven))
                .collect();
            warn!(
                handed_out = stats.handed_out,
                requests = in_flight.len(),
                ?streams,
                ?since,
                plan = plan.describe(now()),
                "the transfer has made no progress for {} s",
                progress.1.elapsed().as_secs()
            );
        }
        // woken at least every STALLED, so that a stall is logged
        let wake = plan
            .poll_timeout()
            .map(|t| started + Duration::from_micros(t.as_micros()))
            .unwrap_or(started + deadline)
            .min(started + deadline)
            .min(Instant::now() + STALLED);
        tokio::select! {
            Some((node, peer, index, fresh, answer)) = in_flight.next() => {
                let pool = pools.entry(peer).or_default();
                if fresh {
                    pool.unproven = false;
                }
                let answer = match answer {
                    Ok((answer, stream)) => {
                        pool.idle.push(stream);
                        Ok(answer)
                    }
                    Err(error) => {
                        pool.open -= 1;
                        Err(error)
                    }
                };
                match answer {
            Ok(Answer::Chunk(bytes)) => {
                    since.chunks += 1;
                    let len = bytes.len() as u64;
                    match plan.on_chunk(now(), &node, index, bytes) {
                        Ok(()) => {
                            metrics.chunks_fetched.inc();
                            metrics.bytes_fetched.inc_by(len);
                        }
                        Err(rejected) => {
                            metrics.bad_chunks.inc();
                            warn!(peer = %node, index, %rejected, "chunk rejected");
                        }
                    }
                }
                Ok(Answer::NotFound) => {
                    since.not_found += 1;
                    plan.on_not_found(&node, index);
                    // the source is dropped: its queued requests go to the others now
                    for (node, index) in pool.waiting.drain(..) {
                        plan.on_failure(now(), &node, index);
                    }
                }
                Err(error) => {
                    debug!(peer = %node, index, %error, "chunk request failed");
                    since.failures += 1;
                    since.last_failure = Some(error.to_string());
                    plan.on_failure(now(), &node, index);
                }
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                since.timer_wakes += 1;
                plan.handle_timeout(now());
            }
        }
    }
    drop(chunks);
    installer
        .await
        .ok_or(FetchError::InstallerStopped)?
        .map_err(FetchError::from)
}
