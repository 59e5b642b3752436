//! The plan of a state transfer (sans-IO): which chunk of a snapshot to ask of which peer,
//! what to do with each answer, and in what order verified chunks go to the installer.
//!
//! - Chunks are asked in index order, lowest missing first, at most `window` at once, and
//!   never one chunk twice at once.
//! - Every chunk is verified against the header on arrival (length, then BLAKE3). A bad,
//!   late or failed answer puts its source into backoff and the chunk back in line, so it
//!   is asked of another source that may hold the snapshot; a source that says it lacks the
//!   snapshot is never asked again.
//! - Verified chunks are handed out in index order, each once; at most `max_buffered` wait
//!   for an earlier one, which bounds the memory a transfer holds.
//! - A broken source never costs verified chunks: the transfer resumes with the chunks
//!   still missing.
//! - The driver takes the plan's outputs from [`Transfer::poll_output`] until it has none,
//!   after every input (an answer, a failure, a timeout): chunks to hand out come first,
//!   since handing them out frees the buffer that bounds the requests; then requests. The
//!   plan is then never idle: until the transfer ends, a request is out or a timeout is
//!   due ([`Transfer::poll_timeout`]), so a driver that sleeps until then misses nothing.
//!
//! Time is passed in; nothing here reads a clock or does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::node_id::NodeId;
use crate::time::Time;

use super::SnapshotHeader;

/// How a transfer asks for chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// Most chunk requests in flight at once, over all sources (each on a stream of its
    /// own, so that yamux's per-stream window does not bound the transfer).
    pub window: usize,
    /// A request unanswered for this long is late: given up and asked again.
    pub chunk_timeout: Duration,
    /// How long a source that failed is not asked; doubles on each further failure, up to
    /// `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Most verified chunks held waiting for an earlier one.
    pub max_buffered: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            window: 16,
            chunk_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_buffered: 32,
        }
    }
}

/// What the plan asks its driver to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Hand verified chunk `index` to the installer (they come in index order).
    HandOut { index: usize, bytes: Vec<u8> },
    /// Ask a peer for a chunk.
    Request(ChunkRequest),
}

/// A chunk to ask of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    pub peer: NodeId,
    pub index: usize,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRejected {
    #[error("chunk {index} was not asked of this peer, or is already verified")]
    NotRequested { index: usize },
    #[error("chunk {index} has {found} bytes, the header says {expected}")]
    WrongLength {
        index: usize,
        expected: usize,
        found: usize,
    },
    #[error("chunk {index} does not match its hash in the header")]
    WrongHash { index: usize },
}

/// Counters of a transfer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Chunks handed out to the installer.
    pub handed_out: usize,
    pub total_chunks: usize,
    /// Bytes of verified chunks.
    pub bytes_verified: u64,
    /// Requests made again for a chunk after a bad, late or failed answer.
    pub rerequested: u64,
    /// Answers that failed verification.
    pub bad_chunks: u64,
    /// Chunks kept from before a restart, not fetched again ([`Transfer::resuming`]).
    pub resumed: usize,
}

#[derive(Debug)]
struct Source {
    peer: NodeId,
    lacks: bool,
    failures: u32,
    backoff_until: Option<Time>,
    in_flight: usize,
}

/// One transfer's plan (see module doc).
#[derive(Debug)]
pub struct Transfer {
    header: SnapshotHeader,
    config: TransferConfig,
    /// In preference order.
    sources: Vec<Source>,
    /// Chunk index → (source, sent at).
    in_flight: BTreeMap<usize, (NodeId, Time)>,
    /// Verified chunks not handed out yet.
    ready: BTreeMap<usize, Vec<u8>>,
    /// Chunks asked before and given up (their next request is a re-request).
    retried: BTreeSet<usize>,
    /// Chunks below this are handed out.
    next_out: usize,
    stats: TransferStats,
}

impl Transfer {
    /// A transfer of the snapshot `header` describes, from `sources` in order of preference
    /// (the first is the sponsor, known to hold it).
    pub fn new(header: SnapshotHeader, sources: Vec<NodeId>, config: TransferConfig) -> Self {
        let total_chunks = header.chunks.len();
        let mut transfer = Self {
            header,
            config,
            sources: Vec::new(),
            in_flight: BTreeMap::new(),
            ready: BTreeMap::new(),
            retried: BTreeSet::new(),
            next_out: 0,
            stats: TransferStats {
                total_chunks,
                ..Default::default()
            },
        };
        for peer in sources {
            transfer.add_source(peer);
        }
        transfer
    }

    /// A transfer that goes on from chunk `kept` (the chunks below were fetched, verified
    /// and kept before a restart): only the missing chunks are asked.
    pub fn resuming(
        header: SnapshotHeader,
        sources: Vec<NodeId>,
        config: TransferConfig,
        kept: usize,
    ) -> Self {
        let mut transfer = Self::new(header, sources, config);
        transfer.next_out = kept.min(transfer.header.chunks.len());
        transfer.stats.resumed = transfer.next_out;
        transfer
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Adds a source learned later (no effect if it is known).
    pub fn add_source(&mut self, peer: NodeId) {
        if !self.sources.iter().any(|s| s.peer == peer) {
            self.sources.push(Source {
                peer,
                lacks: false,
                failures: 0,
                backoff_until: None,
                in_flight: 0,
            });
        }
    }

    /// The next thing to do: a verified chunk to hand out, else a request to send now (if
    /// the window, the buffer bound and the sources allow one). Call until `None` after
    /// every input.
    pub fn poll_output(&mut self, now: Time) -> Option<Output> {
        if let Some((index, bytes)) = self.pop_ready() {
            return Some(Output::HandOut { index, bytes });
        }
        self.poll_request(now).map(Output::Request)
    }

    /// The next request to send now, if the window, the buffer bound and the sources allow
    /// one.
    fn poll_request(&mut self, now: Time) -> Option<ChunkRequest> {
        if self.in_flight.len() >= self.config.window
            || self.ready.len() + self.in_flight.len() >= self.config.max_buffered.max(1)
        {
            return None;
        }
        self.end_backoffs(now);
        let index = (self.next_out..self.header.chunks.len())
            .find(|i| !self.ready.contains_key(i) && !self.in_flight.contains_key(i))?;
        let source = self
            .sources
            .iter_mut()
            .filter(|s| !s.lacks && s.backoff_until.is_none_or(|t| t <= now))
            .min_by_key(|s| s.in_flight)?;
        source.in_flight += 1;
        let peer = source.peer.clone();
        if self.retried.remove(&index) {
            self.stats.rerequested += 1;
        }
        self.in_flight.insert(index, (peer.clone(), now));
        Some(ChunkRequest { peer, index })
    }

    /// A chunk arrived from `peer`. A good one is kept for [`Transfer::pop_ready`]; a bad
    /// one puts the source into backoff and the chunk back in line. An answer that was not
    /// outstanding at `peer` (given up as late meanwhile) is still taken if it verifies and
    /// the chunk is missing: the bytes are as good as any.
    pub fn on_chunk(
        &mut self,
        now: Time,
        peer: &NodeId,
        index: usize,
        bytes: Vec<u8>,
    ) -> Result<(), ChunkRejected> {
        let outstanding = self
            .in_flight
            .get(&index)
            .is_some_and(|(asked, _)| asked == peer);
        let missing = index >= self.next_out
            && index < self.header.chunks.len()
            && !self.ready.contains_key(&index);
        // an answer nobody is waiting for is taken only for a chunk that was asked before
        // (a late answer), so unasked chunks cannot crowd the buffer
        let asked =
            outstanding || self.in_flight.contains_key(&index) || self.retried.contains(&index);
        if !missing || !asked {
            return Err(ChunkRejected::NotRequested { index });
        }
        if let Err(rejected) = self.verify(index, &bytes) {
            self.stats.bad_chunks += 1;
            if outstanding {
                self.give_up(now, index);
            } else {
                self.penalise(now, peer);
            }
            return Err(rejected);
        }
        if outstanding {
            self.in_flight.remove(&index);
            if let Some(s) = self.source_mut(peer) {
                s.in_flight -= 1;
                s.failures = 0;
            }
        } else if let Some((asked, _)) = self.in_flight.remove(&index) {
            // another source was asked meanwhile: its answer is no longer needed
            if let Some(s) = self.source_mut(&asked) {
                s.in_flight -= 1;
            }
        }
        self.retried.remove(&index);
        self.stats.bytes_verified += bytes.len() as u64;
        self.ready.insert(index, bytes);
        Ok(())
    }

    /// `peer` does not hold this snapshot: it is never asked again, and its outstanding
    /// request goes back in line.
    pub fn on_not_found(&mut self, peer: &NodeId, index: usize) {
        if let Some(source) = self.source_mut(peer) {
            source.lacks = true;
        }
        if self.in_flight.get(&index).is_some_and(|(p, _)| p == peer) {
            self.in_flight.remove(&index);
            if let Some(s) = self.source_mut(peer) {
                s.in_flight -= 1;
            }
            self.retried.insert(index);
        }
    }

    /// The request failed (stream broken, peer unreachable): the source backs off, the
    /// chunk goes back in line.
    pub fn on_failure(&mut self, now: Time, peer: &NodeId, index: usize) {
        if self.in_flight.get(&index).is_some_and(|(p, _)| p == peer) {
            self.give_up(now, index);
        }
    }

    /// Gives up requests older than `chunk_timeout` as failures of their source.
    pub fn handle_timeout(&mut self, now: Time) {
        self.end_backoffs(now);
        let late: Vec<usize> = self
            .in_flight
            .iter()
            .filter(|(_, (_, sent))| now.since(*sent) >= self.config.chunk_timeout)
            .map(|(index, _)| *index)
            .collect();
        for index in late {
            self.give_up(now, index);
        }
    }

    /// The earliest time at which a request becomes late or a backoff ends.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.is_complete() {
            return None;
        }
        let late = self
            .in_flight
            .values()
            .map(|(_, sent)| *sent + self.config.chunk_timeout);
        let backoffs = self
            .sources
            .iter()
            .filter(|s| !s.lacks)
            .filter_map(|s| s.backoff_until);
        late.chain(backoffs).min()
    }

    /// The next verified chunk in index order, with its index.
    fn pop_ready(&mut self) -> Option<(usize, Vec<u8>)> {
        let bytes = self.ready.remove(&self.next_out)?;
        let index = self.next_out;
        self.next_out += 1;
        self.stats.handed_out += 1;
        Some((index, bytes))
    }

    /// The plan's state in a line, for logs: the next chunk to hand out, the requests
    /// outstanding (index, age in ms), the chunks waiting for an earlier one, and each
    /// source's requests, failures and backoff left (ms).
    pub fn describe(&self, now: Time) -> String {
        let in_flight: Vec<(usize, u64)> = self
            .in_flight
            .iter()
            .map(|(i, (_, sent))| (*i, now.since(*sent).as_millis() as u64))
            .collect();
        let sources: Vec<(usize, u32, Option<u64>, bool)> = self
            .sources
            .iter()
            .map(|s| {
                let backoff = s.backoff_until.map(|t| t.since(now).as_millis() as u64);
                (s.in_flight, s.failures, backoff, s.lacks)
            })
            .collect();
        format!(
            "next_out={} in_flight={in_flight:?} ready={:?} retried={} sources={sources:?}",
            self.next_out,
            self.ready.keys().collect::<Vec<_>>(),
            self.retried.len()
        )
    }

    /// Every chunk handed out.
    pub fn is_complete(&self) -> bool {
        self.next_out == self.header.chunks.len()
    }

    /// No source left that may hold the snapshot: the transfer cannot finish.
    pub fn is_hopeless(&self) -> bool {
        !self.is_complete() && self.sources.iter().all(|s| s.lacks)
    }

    pub fn stats(&self) -> TransferStats {
        self.stats.clone()
    }

    fn verify(&self, index: usize, bytes: &[u8]) -> Result<(), ChunkRejected> {
        let info = &self.header.chunks[index];
        if bytes.len() != info.len as usize {
            return Err(ChunkRejected::WrongLength {
                index,
                expected: info.len as usize,
                found: bytes.len(),
            });
        }
        if *blake3::hash(bytes).as_bytes() != info.hash {
            return Err(ChunkRejected::WrongHash { index });
        }
        Ok(())
    }

    /// Clears the backoffs over at `now`, so they are no longer reported as deadlines.
    fn end_backoffs(&mut self, now: Time) {
        for source in &mut self.sources {
            if source.backoff_until.is_some_and(|t| t <= now) {
                source.backoff_until = None;
            }
        }
    }

    fn give_up(&mut self, now: Time, index: usize) {
        if let Some((peer, _)) = self.in_flight.remove(&index) {
            if let Some(s) = self.source_mut(&peer) {
                s.in_flight -= 1;
            }
            self.penalise(now, &peer);
            self.retried.insert(index);
        }
    }

    fn penalise(&mut self, now: Time, peer: &NodeId) {
        let (base, max) = (self.config.backoff, self.config.max_backoff);
        if let Some(source) = self.source_mut(peer) {
            let wait = base.saturating_mul(1 << source.failures.min(16)).min(max);
            source.failures += 1;
            source.backoff_until = Some(now + wait);
        }
    }

    fn source_mut(&mut self, peer: &NodeId) -> Option<&mut Source> {
        self.sources.iter_mut().find(|s| s.peer == *peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops_log::Digest;
    use crate::snapshot::{ChunkInfo, FORMAT_VERSION};
    use crate::version_vector::VersionVector;
    use proptest::prelude::*;

    fn chunks(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 10 + i]).collect()
    }

    fn header(chunks: &[Vec<u8>]) -> SnapshotHeader {
        SnapshotHeader {
            version: FORMAT_VERSION,
            snapshot_point: VersionVector::new(),
            height: 0,
            digest: Digest([0; 32]),
            created_unix_ms: 0,
            entries: 0,
            chunks: chunks
                .iter()
                .map(|c| ChunkInfo {
                    len: c.len() as u32,
                    hash: *blake3::hash(c).as_bytes(),
                })
                .collect(),
        }
    }

    fn peer(n: u64) -> NodeId {
        NodeId::synthetic(n)
    }

    fn drain(t: &mut Transfer, now: Time) -> Vec<ChunkRequest> {
        std::iter::from_fn(|| t.poll_request(now)).collect()
    }

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn chunks_from_one_source_come_out_in_order_with_a_bounded_window() {
        let data = chunks(10);
        let mut plan = Transfer::new(header(&data), vec![peer(1)], TransferConfig::default());
        let mut out = Vec::new();
        while !plan.is_complete() {
            let asked = drain(&mut plan, t(0));
            assert!(!asked.is_empty() && asked.len() <= TransferConfig::default().window);
            for r in asked {
                plan.on_chunk(t(0), &r.peer, r.index, data[r.index].clone())
                    .unwrap();
            }
            out.extend(std::iter::from_fn(|| plan.pop_ready()));
        }
        assert_eq!(
            out.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(out[3].1, data[3]);
        assert_eq!(plan.stats().rerequested, 0);
    }

    #[test]
    fn a_resumed_transfer_asks_only_for_the_chunks_it_does_not_keep() {
        let data = chunks(10);
        let mut plan =
            Transfer::resuming(header(&data), vec![peer(1)], TransferConfig::default(), 6);
        let mut asked = Vec::new();
        while !plan.is_complete() {
            for r in drain(&mut plan, t(0)) {
                asked.push(r.index);
                plan.on_chunk(t(0), &r.peer, r.index, data[r.index].clone())
                    .unwrap();
            }
            while plan.pop_ready().is_some() {}
        }
        assert_eq!(asked, vec![6, 7, 8, 9]);
        assert_eq!(plan.stats().resumed, 6);
        assert!(
            plan.on_chunk(t(0), &peer(1), 2, data[2].clone()).is_err(),
            "a kept chunk is not taken again"
        );
        let all_kept = Transfer::resuming(header(&data), vec![peer(1)], Default::default(), 10);
        assert!(all_kept.is_complete());
    }

    #[test]
    fn out_of_order_answers_wait_for_earlier_ones_within_the_buffer_bound() {
        let data = chunks(10);
        let config = TransferConfig {
            window: 3,
            max_buffered: 3,
            ..Default::default()
        };
        let mut plan = Transfer::new(header(&data), vec![peer(1)], config);
        let asked = drain(&mut plan, t(0));
        assert_eq!(asked.len(), 3);
        plan.on_chunk(t(0), &peer(1), 2, data[2].clone()).unwrap();
        plan.on_chunk(t(0), &peer(1), 1, data[1].clone()).unwrap();
        assert_eq!(plan.pop_ready(), None, "chunk 0 is still missing");
        assert!(
            drain(&mut plan, t(0)).is_empty(),
            "two verified chunks and one request fill the buffer bound"
        );
        plan.on_chunk(t(0), &peer(1), 0, data[0].clone()).unwrap();
        let out: Vec<usize> = std::iter::from_fn(|| plan.pop_ready())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(out, vec![0, 1, 2]);
        assert_eq!(drain(&mut plan, t(0)).len(), 3);
    }

    #[test]
    fn a_bad_chunk_is_asked_of_another_source_and_the_bad_one_backs_off() {
        let data = chunks(3);
        let config = TransferConfig {
            window: 1,
            ..Default::default()
        };
        let mut plan = Transfer::new(header(&data), vec![peer(1), peer(2)], config);
        let first = plan.poll_request(t(0)).unwrap();
        assert_eq!(first.peer, peer(1), "the sponsor first");
        let err = plan.on_chunk(t(0), &peer(1), 0, b"garbage".to_vec());
        assert!(matches!(
            err,
            Err(ChunkRejected::WrongLength { index: 0, .. })
        ));
        let mut damaged = data[0].clone();
        damaged[0] ^= 1;
        let again = plan.poll_request(t(1)).unwrap();
        assert_eq!(
            again,
            ChunkRequest {
                peer: peer(2),
                index: 0
            }
        );
        // the other source is bad too: both back off, then the first is asked again
        assert_eq!(
            plan.on_chunk(t(1), &peer(2), 0, damaged),
            Err(ChunkRejected::WrongHash { index: 0 })
        );
        assert_eq!(plan.poll_request(t(2)), None, "both in backoff");
        let wake = plan.poll_timeout().unwrap();
        assert_eq!(wake, t(500));
        assert_eq!(plan.poll_request(wake).unwrap().peer, peer(1));
        assert_eq!(plan.stats().bad_chunks, 2);
        assert_eq!(plan.stats().rerequested, 2);
    }

    #[test]
    fn a_late_chunk_is_asked_again_elsewhere() {
        let data = chunks(2);
        let config = TransferConfig {
            window: 1,
            ..Default::default()
        };
        let mut plan = Transfer::new(header(&data), vec![peer(1), peer(2)], config);
        plan.poll_request(t(0)).unwrap();
        assert_eq!(plan.poll_timeout(), Some(t(10_000)));
        plan.handle_timeout(t(9_999));
        assert_eq!(plan.poll_request(t(9_999)), None, "not late yet");
        plan.handle_timeout(t(10_000));
        let again = plan.poll_request(t(10_000)).unwrap();
        assert_eq!(
            again,
            ChunkRequest {
                peer: peer(2),
                index: 0
            }
        );
        // the late answer arrives after all: it verifies, so it is taken
        plan.on_chunk(t(10_001), &peer(1), 0, data[0].clone())
            .unwrap();
        assert_eq!(
            plan.on_chunk(t(10_002), &peer(2), 0, data[0].clone()),
            Err(ChunkRejected::NotRequested { index: 0 })
        );
        assert_eq!(plan.pop_ready().unwrap().0, 0);
    }

    #[test]
    fn a_broken_source_costs_no_verified_chunk() {
        let data = chunks(8);
        let mut plan = Transfer::new(
            header(&data),
            vec![peer(1), peer(2)],
            TransferConfig::default(),
        );
        let mut asked_per_index = vec![0; 8];
        let mut now = 0;
        while !plan.is_complete() {
            now += 1;
            for r in drain(&mut plan, t(now)) {
                asked_per_index[r.index] += 1;
                if r.peer == peer(1) && r.index >= 3 {
                    plan.on_failure(t(now), &r.peer, r.index);
                } else {
                    plan.on_chunk(t(now), &r.peer, r.index, data[r.index].clone())
                        .unwrap();
                }
            }
            while plan.pop_ready().is_some() {}
        }
        assert!(
            asked_per_index[..3].iter().all(|n| *n == 1),
            "chunks verified before the break are never asked again: {asked_per_index:?}"
        );
    }

    #[test]
    fn sources_lacking_the_snapshot_are_dropped_and_all_lacking_is_hopeless() {
        let data = chunks(2);
        let mut plan = Transfer::new(
            header(&data),
            vec![peer(1), peer(2)],
            TransferConfig::default(),
        );
        let asked = drain(&mut plan, t(0));
        assert_eq!(asked.len(), 2, "one chunk to each source");
        plan.on_not_found(&asked[0].peer, asked[0].index);
        assert!(!plan.is_hopeless());
        let again = drain(&mut plan, t(0));
        assert!(again.iter().all(|r| r.peer == peer(2)), "{again:?}");
        for r in asked[1..].iter().chain(&again) {
            plan.on_not_found(&r.peer, r.index);
        }
        assert!(drain(&mut plan, t(0)).is_empty());
        assert!(plan.is_hopeless());
        assert_eq!(plan.poll_timeout(), None);
    }

    #[test]
    fn a_backoff_that_ended_is_no_longer_a_deadline_and_unasked_chunks_are_refused() {
        let data = chunks(3);
        let mut plan = Transfer::new(header(&data), vec![peer(1)], TransferConfig::default());
        let first = drain(&mut plan, t(0));
        plan.on_failure(t(0), &peer(1), first[0].index);
        assert_eq!(plan.poll_timeout(), Some(t(500)));
        let again = drain(&mut plan, t(600));
        assert_eq!(again.len(), 1);
        assert!(
            plan.poll_timeout().unwrap() > t(600),
            "an ended backoff must not make the caller wake at once, forever"
        );
        assert_eq!(
            plan.on_chunk(t(600), &peer(9), 2, data[2].clone())
                .map_err(|_| ()),
            Ok(()),
            "chunk 2 is in flight: a valid copy is as good as any"
        );
        let mut fresh = Transfer::new(header(&data), vec![peer(1)], TransferConfig::default());
        assert!(
            fresh.on_chunk(t(0), &peer(9), 1, data[1].clone()).is_err(),
            "never asked"
        );
    }

    #[test]
    fn an_empty_snapshot_is_complete_at_once() {
        let plan = Transfer::new(header(&[]), vec![peer(1)], TransferConfig::default());
        assert!(plan.is_complete() && !plan.is_hopeless());
    }

    #[derive(Debug, Clone)]
    enum Event {
        Answer { which: usize, good: bool },
        Fail { which: usize },
        Tick { ms: u64 },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0usize..8, any::<bool>()).prop_map(|(which, good)| Event::Answer { which, good }),
            1 => (0usize..8).prop_map(|which| Event::Fail { which }),
            1 => (1u64..3_000).prop_map(|ms| Event::Tick { ms }),
        ]
    }

    proptest! {
        /// Whatever the answers (late ones too) and however small the window and the
        /// buffer, no chunk is in flight twice, chunks come out as 0, 1, 2, … and, with one
        /// source that always answers well, the transfer completes.
        #[test]
        fn chunks_come_out_in_order_whatever_the_answers(
            n in 0usize..12,
            window in 1usize..5,
            max_buffered in 1usize..5,
            events in proptest::collection::vec(event(), 0..200),
        ) {
            let data = chunks(n);
            let sources = vec![peer(1), peer(2), peer(3)];
            let config = TransferConfig { window, max_buffered, ..Default::default() };
            let mut plan = Transfer::new(header(&data), sources, config);
            let mut now = 0u64;
            // requests given up as late, whose answers may still come
            let mut late: Vec<ChunkRequest> = Vec::new();
            let mut pending: Vec<ChunkRequest> = Vec::new();
            let mut out = Vec::new();
            // a driver's turn: take every output; then the plan must not be idle (nothing
            // asked and no timeout due), or a driver sleeping until its timeout would never
            // wake
            let step = |plan: &mut Transfer, pending: &mut Vec<ChunkRequest>, out: &mut Vec<usize>, now: u64| {
                while let Some(output) = plan.poll_output(t(now)) {
                    match output {
                        Output::HandOut { index, .. } => out.push(index),
                        Output::Request(r) => {
                            prop_assert!(!pending.iter().any(|p| p.index == r.index), "{} in flight twice", r.index);
                            pending.push(r);
                        }
                    }
                }
                prop_assert!(
                    plan.is_complete() || plan.is_hopeless() || !plan.in_flight.is_empty() || plan.poll_timeout().is_some(),
                    "idle with chunks missing: {}", plan.describe(t(now))
                );
                Ok(())
            };
            for e in events {
                step(&mut plan, &mut pending, &mut out, now)?;
                match e {
                    Event::Answer { which, good } if !late.is_empty() && which % 3 == 0 => {
                        let r = late.remove(which % late.len());
                        let bytes = if good { data[r.index].clone() } else { vec![9] };
                        let _ = plan.on_chunk(t(now), &r.peer, r.index, bytes);
                    }
                    Event::Answer { which, good } if !pending.is_empty() => {
                        let r = pending.remove(which % pending.len());
                        let bytes = if good || r.peer == peer(3) { data[r.index].clone() } else { vec![9] };
                        let _ = plan.on_chunk(t(now), &r.peer, r.index, bytes);
                    }
                    Event::Fail { which } if !pending.is_empty() => {
                        let r = pending.remove(which % pending.len());
                        if r.peer != peer(3) {
                            plan.on_failure(t(now), &r.peer, r.index);
                        } else {
                            pending.push(r);
                        }
                    }
                    Event::Tick { ms } => {
                        now += ms;
                        plan.handle_timeout(t(now));
                    }
                    _ => {}
                }
                // requests the plan no longer counts as out (given up as late, or answered
                // by an earlier request's late answer from the same source) still run:
                // their answers come late, if at all
                let (still, given_up): (Vec<_>, Vec<_>) = pending
                    .drain(..)
                    .partition(|r| plan.in_flight.get(&r.index).is_some_and(|(p, _)| *p == r.peer));
                pending = still;
                late.extend(given_up);
            }
            // settle as a driver does: answer what is asked, else sleep until the plan's
            // timeout (never for a time the plan did not ask for)
            let mut rounds = 0;
            loop {
                step(&mut plan, &mut pending, &mut out, now)?;
                if plan.is_complete() {
                    break;
                }
                rounds += 1;
                prop_assert!(rounds < 10_000, "stuck");
                if pending.is_empty() {
                    let wake = plan.poll_timeout().expect("not idle: checked by the step");
                    now = now.max(wake.as_micros() / 1000 + 1);
                    plan.handle_timeout(t(now));
                    continue;
                }
                for r in std::mem::take(&mut pending) {
                    let _ = plan.on_chunk(t(now), &r.peer, r.index, data[r.index].clone());
                }
            }
            prop_assert_eq!(out, (0..n).collect::<Vec<_>>());
        }
    }
}
