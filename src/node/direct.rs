//! Direct messages (`Action::Send`): one long-lived outbound stream per peer, opened on the
//! first message and reopened after it fails, fed by a bounded queue; and a reader for each
//! inbound stream, which hands every frame to the driver (within a byte budget shared by
//! all readers: a reader waits for room before it reads a body). Cheaper per message than a
//! request–response exchange (no stream setup, no answer, no timer), which matters because
//! status reports are most of the messages a node sends.
//!
//! Delivery is best effort, as the protocol expects of the network: a message queued when
//! its stream fails, or sent while the queue is full, is lost and counted.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::debug;

use super::codec::{read_frame_body, read_frame_len, write_frame, DIRECT_PROTOCOL};
use crate::gossip::MAX_MESSAGE_BYTES;

/// Messages waiting for one peer's stream.
const QUEUE: usize = 1024;
/// Frames read from all inbound streams, waiting for the driver.
const INBOUND_QUEUE: usize = 4096;
/// Bytes of inbound frames read or being read and not yet handled by the driver, over all
/// peers: a reader waits for room before it reads a frame's body, so peers that send
/// faster than the node handles cannot fill its memory.
const INBOUND_BUDGET_BYTES: usize = 4 * MAX_MESSAGE_BYTES;

/// A frame from a peer, holding its share of the inbound budget until dropped.
pub type InboundFrame = (PeerId, Vec<u8>, OwnedSemaphorePermit);

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the queue to this peer is full")]
    QueueFull,
}

/// The direct transport of one node. Dropping it stops every stream task.
pub struct Direct {
    control: libp2p_stream::Control,
    outboxes: BTreeMap<PeerId, mpsc::Sender<Vec<u8>>>,
    /// Counts messages lost when a stream fails.
    dropped: Counter,
    /// Frames received, in arrival order per stream.
    pub inbound: mpsc::Receiver<InboundFrame>,
    tasks: JoinSet<()>,
}

impl Direct {
    /// Starts accepting inbound streams of the direct protocol.
    pub fn new(mut control: libp2p_stream::Control, dropped: Counter) -> Self {
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let mut tasks = JoinSet::new();
        let mut incoming = control
            .accept(DIRECT_PROTOCOL)
            .expect("the direct protocol is accepted once per node");
        let to_driver = inbound_tx;
        let budget = Arc::new(Semaphore::new(INBOUND_BUDGET_BYTES));
        tasks.spawn(async move {
            let mut readers = JoinSet::new();
            while let Some((peer, stream)) = incoming.next().await {
                readers.spawn(read_stream(peer, stream, to_driver.clone(), budget.clone()));
                while readers.try_join_next().is_some() {}
            }
        });
        Direct {
            control,
            outboxes: BTreeMap::new(),
            dropped,
            inbound,
            tasks,
        }
    }

    /// Queues `frame` for `peer`, opening a stream if there is none (or the last one failed).
    pub fn send(&mut self, peer: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        while self.tasks.try_join_next().is_some() {}
        if let Some(outbox) = self.outboxes.get(&peer) {
            match outbox.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(SendError::QueueFull),
                // the stream failed: open a new one below
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    self.outboxes.remove(&peer);
                    return self.open_and_send(peer, back);
                }
            }
        }
        self.open_and_send(peer, frame)
    }

    /// Starts a writer for `peer` with `frame` first in its queue.
    fn open_and_send(&mut self, peer: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.try_send(frame)
            .expect("a new queue has room and its receiver is alive");
        let writer = write_stream(self.control.clone(), peer, rx, self.dropped.clone());
        self.tasks.spawn(writer);
        self.outboxes.insert(peer, tx);
        Ok(())
    }
}

/// Opens the stream to `peer` and writes every queued frame on it, flushing whenever the
/// queue runs dry. Ends (dropping and counting what is queued) when the stream fails.
async fn write_stream(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut queue: mpsc::Receiver<Vec<u8>>,
    dropped: Counter,
) {
    let lost = |queue: &mut mpsc::Receiver<Vec<u8>>, failed: u64| {
        queue.close();
        let mut n = failed;
        while queue.try_recv().is_ok() {
            n += 1;
        }
        dropped.inc_by(n);
    };
    let mut stream = match control.open_stream(peer, DIRECT_PROTOCOL).await {
        Ok(stream) => stream,
        Err(error) => {
            debug!(%peer, %error, "cannot open a direct stream");
            lost(&mut queue, 0);
            return;
        }
    };
    while let Some(frame) = queue.recv().await {
        let mut result = write_frame(&mut stream, &frame).await;
        while result.is_ok() {
            match queue.try_recv() {
                Ok(next) => result = write_frame(&mut stream, &next).await,
                Err(_) => break,
            }
        }
        if let Err(error) = result.and(stream.flush().await) {
            debug!(%peer, %error, "direct stream failed");
            lost(&mut queue, 1);
            return;
        }
    }
}

/// Reads frames from one inbound stream until it ends or a frame is invalid.
async fn read_stream(
    peer: PeerId,
    mut stream: Stream,
    to_driver: mpsc::Sender<InboundFrame>,
    budget: Arc<Semaphore>,
) {
    loop {
        let frame = async {
            let len = read_frame_len(&mut stream, MAX_MESSAGE_BYTES).await?;
            let room = budget
                .clone()
                .acquire_many_owned(len.max(1) as u32)
                .await
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>((read_frame_body(&mut stream, len).await?, room))
        };
        match frame.await {
            Ok((frame, room)) => {
                if to_driver.send((peer, frame, room)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                debug!(%peer, %error, "direct stream ended");
                return;
            }
        }
    }
}
