//! The simulator's timed event queue: events come out in the order of their time, and of
//! their push among events of the same time, exactly as from one binary heap.
//!
//! A run of 1,000 nodes keeps tens of thousands of events pending, nearly all of them
//! deliveries due within the next link latency. One heap over all of them costs a walk
//! of its whole height, through memory the rest of the run has long evicted from the
//! cache, for every push and pop. So the queue is a calendar: time is cut into buckets of
//! [`BUCKET_MICROS`], the next [`RING_BUCKETS`] buckets are a ring of plain vectors that a
//! push appends to, and only the bucket being drained is a heap. Events beyond the ring
//! wait in a heap of their own (timers, mostly) and join the bucket they fall in when the
//! queue gets there.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Width of one bucket, as a power of two of microseconds (1,024 µs).
const BUCKET_SHIFT: u32 = 10;
/// Width of one bucket in microseconds.
pub const BUCKET_MICROS: u64 = 1 << BUCKET_SHIFT;
/// Buckets in the ring: events due within about 262 ms of the bucket being drained.
pub const RING_BUCKETS: u64 = 256;

/// One pending event, ordered by `(at, seq)`.
#[derive(Debug)]
pub struct Entry<T> {
    pub at: u64,
    pub seq: u64,
    pub item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Events keyed by `(at, seq)`; [`pop`](EventQueue::pop) returns the least. `seq` breaks
/// ties and is the caller's to keep unique.
#[derive(Debug)]
pub struct EventQueue<T> {
    /// The bucket being drained, as a heap. It may also hold events pushed for an earlier
    /// time than the bucket's (they come out first, as from one heap).
    current: BinaryHeap<Reverse<Entry<T>>>,
    /// Absolute index of the bucket being drained.
    cursor: u64,
    /// Buckets `cursor + 1 .. cursor + RING_BUCKETS`, at `index % RING_BUCKETS`, unsorted.
    ring: Vec<Vec<Entry<T>>>,
    /// Events in `ring`.
    in_ring: usize,
    /// Events for buckets at or beyond `cursor + RING_BUCKETS` when they were pushed.
    later: BinaryHeap<Reverse<Entry<T>>>,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self {
            current: BinaryHeap::new(),
            cursor: 0,
            ring: (0..RING_BUCKETS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            later: BinaryHeap::new(),
        }
    }
}

impl<T> EventQueue<T> {
    pub fn push(&mut self, at: u64, seq: u64, item: T) {
        let entry = Entry { at, seq, item };
        let bucket = at >> BUCKET_SHIFT;
        if bucket <= self.cursor {
            self.current.push(Reverse(entry));
        } else if bucket - self.cursor < RING_BUCKETS {
            self.ring[(bucket % RING_BUCKETS) as usize].push(entry);
            self.in_ring += 1;
        } else {
            self.later.push(Reverse(entry));
        }
    }

    /// The pending event with the least `(at, seq)`.
    pub fn pop(&mut self) -> Option<Entry<T>> {
        loop {
            if let Some(Reverse(entry)) = self.current.pop() {
                return Some(entry);
            }
            if self.in_ring == 0 {
                // nothing due within the ring: go straight to the next later event's bucket
                let Reverse(next) = self.later.peek()?;
                self.cursor = self.cursor.max((next.at >> BUCKET_SHIFT).saturating_sub(1));
            }
            self.advance();
        }
    }

    /// Moves to the next bucket: its ring slot and the later events that fall in it
    /// become the heap being drained.
    fn advance(&mut self) {
        self.cursor += 1;
        let slot = &mut self.ring[(self.cursor % RING_BUCKETS) as usize];
        self.in_ring -= slot.len();
        // the drained heap's allocation becomes the slot's, and the slot's the heap's
        let mut bucket = std::mem::take(&mut self.current).into_vec();
        debug_assert!(bucket.is_empty());
        bucket.extend(slot.drain(..).map(Reverse));
        while let Some(Reverse(next)) = self.later.peek() {
            if next.at >> BUCKET_SHIFT > self.cursor {
                break;
            }
            let Some(entry) = self.later.pop() else { break };
            bucket.push(entry);
        }
        self.current = BinaryHeap::from(bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Drives the queue and one plain heap with the same pushes and pops, `at` drawn
    /// around the time of the last pop as a simulator draws it (now, a link latency, a
    /// timer, the odd time in the past), and checks they agree at every pop.
    fn agrees_with_one_heap(seed: u64, steps: usize) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut queue = EventQueue::default();
        let mut heap = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for _ in 0..steps {
            if rng.random_bool(0.55) {
                let at = match rng.random_range(0..10) {
                    0 => now,
                    1 => now.saturating_sub(rng.random_range(0..3 * BUCKET_MICROS)),
                    2 => now + rng.random_range(0..10 * RING_BUCKETS * BUCKET_MICROS),
                    3 => now + rng.random_range(0..4) * RING_BUCKETS * BUCKET_MICROS,
                    _ => now + rng.random_range(0..60_000),
                };
                seq += 1;
                queue.push(at, seq, seq);
                heap.push(Reverse((at, seq)));
            } else {
                let expected = heap.pop().map(|Reverse(e)| e);
                let got = queue.pop().map(|e| (e.at, e.item));
                assert_eq!(got, expected, "seed {seed}");
                if let Some((at, _)) = got {
                    now = now.max(at);
                }
            }
        }
        while let Some(Reverse(expected)) = heap.pop() {
            let got = queue.pop().map(|e| (e.at, e.item));
            assert_eq!(got, Some(expected), "seed {seed}, draining");
        }
        assert!(queue.pop().is_none());
    }

    #[test]
    fn events_come_out_in_time_then_push_order_as_from_one_heap() {
        for seed in 0..200 {
            agrees_with_one_heap(seed, 2_000);
        }
    }

    #[test]
    fn an_event_far_beyond_the_ring_waits_for_its_time() {
        let mut queue = EventQueue::default();
        let far = 100 * RING_BUCKETS * BUCKET_MICROS;
        queue.push(far, 1, "timer");
        queue.push(5, 2, "delivery");
        queue.push(far, 3, "second timer");
        queue.push(far - 1, 4, "just before");
        let order: Vec<_> = std::iter::from_fn(|| queue.pop().map(|e| e.item)).collect();
        assert_eq!(order, ["delivery", "just before", "timer", "second timer"]);
    }
}
