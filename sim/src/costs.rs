//! The cost model: what bytes and messages cost a simulated node. Each node has an uplink
//! of limited bandwidth, so a message's size adds its serialization time and it queues
//! behind what the node is still sending; and each node has one CPU, which spends a fixed
//! time per message it receives plus a time per byte, so messages queue for it under load.
//! Without this model a status flood that costs a real node its uplink and its event loop
//! would cost nothing in the simulator.
//!
//! The defaults (see [`CostModel::default`]) are a modest server: a 100 Mbit/s uplink,
//! 25 µs per message received (framing, a gossipsub or stream lookup, the core's handling)
//! and 4 µs per KiB (decryption and CBOR decoding at about 250 MB/s).
//!
//! A duplicate of a published message (a copy that reaches a node which already has, or
//! will first get, another copy) costs its receiver the same CPU as any message, but
//! gossipsub drops it before the replica sees it. Such copies are charged without an event
//! of their own ([`Charges::charge_duplicate`]): each waits in a per-node heap by arrival
//! time and is folded into the CPU's busy time, in arrival order with the messages that
//! have events, before the first of those that arrives after it. A busy CPU is then
//! exactly as busy as if every copy had been queued.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use tidemark::Time;

/// What a node's uplink and CPU charge (see module doc). All zero: a free network, the
/// model of older scenario generators (`--free-network`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CostModel {
    /// Each node's uplink in bytes per second; 0 for unlimited.
    pub uplink_bytes_per_s: u64,
    /// CPU time a node spends on each message it receives.
    pub cpu_per_message: Duration,
    /// CPU time a node spends per KiB of a message it receives.
    pub cpu_per_kib: Duration,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            uplink_bytes_per_s: 100_000_000 / 8,
            cpu_per_message: Duration::from_micros(25),
            cpu_per_kib: Duration::from_micros(4),
        }
    }
}

impl CostModel {
    /// No cost at all: links of infinite bandwidth and free processing.
    pub const FREE: CostModel = CostModel {
        uplink_bytes_per_s: 0,
        cpu_per_message: Duration::ZERO,
        cpu_per_kib: Duration::ZERO,
    };

    /// The CPU time a received message of `bytes` bytes takes, in µs.
    pub fn cpu_us(&self, bytes: usize) -> u64 {
        self.cpu_per_message.as_micros() as u64
            + (self.cpu_per_kib.as_nanos() as u64 * bytes as u64).div_ceil(1024 * 1_000)
    }

    /// How long `bytes` bytes take to leave the uplink, in µs (at least 1 µs for any
    /// message on a limited uplink).
    pub fn transmit_us(&self, bytes: usize) -> u64 {
        if self.uplink_bytes_per_s == 0 {
            return 0;
        }
        (bytes as u64 * 1_000_000).div_ceil(self.uplink_bytes_per_s)
    }

    fn charges_cpu(&self) -> bool {
        !self.cpu_per_message.is_zero() || !self.cpu_per_kib.is_zero()
    }
}

/// What happened to a message that arrived at a node (see [`Charges::arrive`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// The CPU is free: process it now.
    ProcessNow(T),
    /// It waits in the node's inbox; wake the node's CPU at this time (`None`: a wake is
    /// already scheduled).
    Queued(Option<Time>),
}

/// Every node's uplink and CPU under a [`CostModel`], by node slot.
#[derive(Debug)]
pub struct Charges<T> {
    model: CostModel,
    /// When each node's uplink has sent all it was given.
    uplink_free: Vec<Time>,
    /// When each node's CPU is done with the message it processes.
    cpu_free: Vec<Time>,
    /// Messages that arrived while the CPU was busy, in arrival order, with their size
    /// and arrival time.
    inbox: Vec<VecDeque<(T, usize, Time)>>,
    /// Duplicates charged without an event: (arrival, CPU µs), earliest first, not yet
    /// folded into `cpu_free`.
    duplicates: Vec<BinaryHeap<Reverse<(Time, u64)>>>,
    /// Whether a CPU wake is scheduled for the node.
    wake_scheduled: Vec<bool>,
    /// Most messages that waited in one inbox at once.
    longest_inbox: usize,
}

impl<T> Charges<T> {
    pub fn new(model: CostModel) -> Self {
        Self {
            model,
            uplink_free: Vec::new(),
            cpu_free: Vec::new(),
            inbox: Vec::new(),
            duplicates: Vec::new(),
            wake_scheduled: Vec::new(),
            longest_inbox: 0,
        }
    }

    pub fn model(&self) -> &CostModel {
        &self.model
    }

    fn grow(&mut self, node: usize) {
        while self.cpu_free.len() <= node {
            self.uplink_free.push(Time::ZERO);
            self.cpu_free.push(Time::ZERO);
            self.inbox.push(VecDeque::new());
            self.duplicates.push(BinaryHeap::new());
            self.wake_scheduled.push(false);
        }
    }

    /// When what `node` does now can leave it: once its CPU is done.
    pub fn ready(&mut self, node: usize, now: Time) -> Time {
        self.grow(node);
        self.fold_duplicates(node, now);
        now.max(self.cpu_free[node])
    }

    /// `node` sends `bytes` bytes, ready at `ready`: when its last byte has left the uplink.
    pub fn send(&mut self, node: usize, ready: Time, bytes: usize) -> Time {
        self.grow(node);
        let start = ready.max(self.uplink_free[node]);
        let done = Time(start.0 + self.model.transmit_us(bytes));
        self.uplink_free[node] = done;
        done
    }

    /// A message of `bytes` bytes arrived at `node` at `now`.
    pub fn arrive(&mut self, node: usize, now: Time, message: T, bytes: usize) -> Arrival<T> {
        self.grow(node);
        if !self.model.charges_cpu() {
            return Arrival::ProcessNow(message);
        }
        self.fold_duplicates(node, now);
        if self.cpu_free[node] <= now && self.inbox[node].is_empty() {
            self.cpu_free[node] = Time(now.0 + self.model.cpu_us(bytes));
            return Arrival::ProcessNow(message);
        }
        self.inbox[node].push_back((message, bytes, now));
        self.longest_inbox = self.longest_inbox.max(self.inbox[node].len());
        if self.wake_scheduled[node] {
            return Arrival::Queued(None);
        }
        self.wake_scheduled[node] = true;
        Arrival::Queued(Some(self.cpu_free[node].max(now)))
    }

    /// A duplicate of a published message reaches `node` at `at` (see the module doc): it
    /// costs the CPU what any message of `bytes` bytes costs, and has no event.
    pub fn charge_duplicate(&mut self, node: usize, at: Time, bytes: usize) {
        self.grow(node);
        if self.model.charges_cpu() {
            self.duplicates[node].push(Reverse((at, self.model.cpu_us(bytes))));
        }
    }

    /// Folds into `node`'s busy time the duplicates its CPU has started on by `now`, in
    /// arrival order with the inbox: a duplicate goes first only if it arrived before the
    /// inbox's first message.
    fn fold_duplicates(&mut self, node: usize, now: Time) {
        while let Some(&Reverse((at, cpu_us))) = self.duplicates[node].peek() {
            let first_waiting = self.inbox[node].front().map(|m| m.2);
            let start = at.max(self.cpu_free[node]);
            if first_waiting.is_some_and(|w| w <= at) || start > now {
                return;
            }
            self.duplicates[node].pop();
            self.cpu_free[node] = Time(start.0 + cpu_us);
        }
    }

    /// `node`'s CPU woke at `now`: the next message to process, and when to wake again
    /// if more wait.
    pub fn next(&mut self, node: usize, now: Time) -> (Option<T>, Option<Time>) {
        self.grow(node);
        self.wake_scheduled[node] = false;
        self.fold_duplicates(node, now);
        if self.inbox[node].is_empty() {
            return (None, None);
        }
        if self.cpu_free[node] > now {
            // duplicates that arrived before the first waiting message took the CPU
            self.wake_scheduled[node] = true;
            return (None, Some(self.cpu_free[node]));
        }
        let (message, bytes, _) = self.inbox[node].pop_front().expect("not empty");
        self.cpu_free[node] = Time(now.0 + self.model.cpu_us(bytes));
        let again = (!self.inbox[node].is_empty()).then(|| {
            self.wake_scheduled[node] = true;
            self.cpu_free[node]
        });
        (Some(message), again)
    }

    /// `node` stopped (crashed): what waited for its CPU is lost.
    pub fn drop_inbox(&mut self, node: usize) {
        self.grow(node);
        self.inbox[node].clear();
        self.duplicates[node].clear();
    }

    /// Most messages that waited for one node's CPU at once.
    pub fn longest_inbox(&self) -> usize {
        self.longest_inbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> CostModel {
        CostModel {
            uplink_bytes_per_s: 1_000_000,
            cpu_per_message: Duration::from_micros(10),
            cpu_per_kib: Duration::from_micros(1),
        }
    }

    #[test]
    fn a_message_takes_its_size_over_the_uplink_and_queues_behind_the_one_before() {
        let mut c: Charges<()> = Charges::new(model());
        // 1 MB/s: 1,000 bytes take 1 ms
        assert_eq!(c.send(0, Time(0), 1_000), Time(1_000));
        assert_eq!(
            c.send(0, Time(0), 1_000),
            Time(2_000),
            "queued behind the first"
        );
        assert_eq!(
            c.send(0, Time(5_000), 10),
            Time(5_010),
            "an idle uplink starts at once"
        );
        assert_eq!(
            c.send(1, Time(0), 1),
            Time(1),
            "another node has its own uplink"
        );
    }

    #[test]
    fn messages_wait_for_a_busy_cpu_in_arrival_order() {
        let mut c: Charges<u32> = Charges::new(model());
        assert_eq!(c.arrive(0, Time(0), 1, 2048), Arrival::ProcessNow(1));
        // 10 µs + 2 µs for 2 KiB
        assert_eq!(c.ready(0, Time(0)), Time(12));
        assert_eq!(c.arrive(0, Time(5), 2, 0), Arrival::Queued(Some(Time(12))));
        assert_eq!(c.arrive(0, Time(6), 3, 0), Arrival::Queued(None));
        assert_eq!(c.next(0, Time(12)), (Some(2), Some(Time(22))));
        assert_eq!(c.next(0, Time(22)), (Some(3), None));
        assert_eq!(c.ready(0, Time(22)), Time(32));
        assert_eq!(c.longest_inbox(), 2);
        assert_eq!(c.arrive(0, Time(40), 4, 0), Arrival::ProcessNow(4));
    }

    #[test]
    fn a_free_model_charges_nothing() {
        let mut c: Charges<u32> = Charges::new(CostModel::FREE);
        assert_eq!(c.send(0, Time(7), 1 << 20), Time(7));
        assert_eq!(c.arrive(0, Time(7), 1, 1 << 20), Arrival::ProcessNow(1));
        assert_eq!(c.arrive(0, Time(7), 2, 1 << 20), Arrival::ProcessNow(2));
        assert_eq!(c.ready(0, Time(7)), Time(7));
    }

    #[test]
    fn a_crashed_node_loses_what_waited_for_its_cpu() {
        let mut c: Charges<u32> = Charges::new(model());
        assert_eq!(c.arrive(0, Time(0), 1, 0), Arrival::ProcessNow(1));
        assert!(matches!(
            c.arrive(0, Time(1), 2, 0),
            Arrival::Queued(Some(_))
        ));
        c.drop_inbox(0);
        assert_eq!(c.next(0, Time(10)), (None, None));
    }

    /// Runs arrivals at one node through the charges, with a small event loop: each
    /// arrival is `(time, bytes, duplicate)`. With `lazily`, duplicates are charged without
    /// an event; else every copy is queued as a message. Returns when each message that is
    /// not a duplicate was processed.
    fn process_times(arrivals: &[(u64, usize, bool)], lazily: bool) -> Vec<(usize, Time)> {
        let mut c: Charges<(usize, bool)> = Charges::new(model());
        // (time, order, arrival index or a CPU wake)
        let mut events: std::collections::BTreeSet<(Time, usize, Option<usize>)> =
            Default::default();
        let mut order = 0;
        for (i, &(at, bytes, duplicate)) in arrivals.iter().enumerate() {
            if duplicate && lazily {
                c.charge_duplicate(0, Time(at), bytes);
            } else {
                order += 1;
                events.insert((Time(at), order, Some(i)));
            }
        }
        let mut processed = Vec::new();
        while let Some((now, _, what)) = events.pop_first() {
            let (message, again) = match what {
                Some(i) => match c.arrive(0, now, (i, arrivals[i].2), arrivals[i].1) {
                    Arrival::ProcessNow(m) => (Some(m), None),
                    Arrival::Queued(wake) => (None, wake),
                },
                None => c.next(0, now),
            };
            if let Some(at) = again {
                order += 1;
                events.insert((at, order, None));
            }
            if let Some((i, false)) = message {
                processed.push((i, now));
            }
        }
        processed
    }

    #[test]
    fn duplicates_charged_without_events_delay_messages_as_queued_copies_would() {
        use rand::{Rng, SeedableRng};
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            // distinct times: copies arriving at the same µs may go in either order
            let times = rand::seq::index::sample(&mut rng, 400, 60);
            let arrivals: Vec<(u64, usize, bool)> = times
                .iter()
                .map(|at| (at as u64, rng.random_range(0..8_000), rng.random_bool(0.6)))
                .collect();
            let queued = process_times(&arrivals, false);
            let lazily = process_times(&arrivals, true);
            assert_eq!(lazily, queued, "seed {seed}");
            assert!(
                queued.len() < arrivals.len(),
                "seed {seed}: some are duplicates"
            );
        }
    }
}
