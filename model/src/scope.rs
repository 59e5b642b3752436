//! The bounds of a model-checking run: how many nodes, which of them write, leave or crash,
//! how many messages the network may lose, and the simulated-time horizon that keeps the
//! state space finite (heartbeats and anti-entropy never stop, so without a horizon the
//! space is infinite).

use std::time::Duration;

use tidemark::gossip::GossipConfig;
use tidemark::Time;

use crate::run::Strategy;

/// How simulated time passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Every node has its own clock, moved only by its own timeouts: timers of different
    /// nodes fire in any order (any clock drift), messages take any time.
    PerNode,
    /// One clock: timeouts fire in time order (the earliest pending wake-up first), while
    /// messages still take any time (any delivery may happen before any timeout).
    Global,
}

/// What one run explores. Every bound applies per path (per behaviour), not globally.
#[derive(Clone, Debug)]
pub struct Scope {
    pub name: &'static str,
    /// Nodes 0..founders found the network (`Replica::genesis`).
    pub founders: usize,
    /// Whether node `founders` exists and joins through node 0 (it starts at a moment of the model's
    /// choosing, so writes may happen before, during or after the handshake).
    pub joiner: bool,
    /// Writes each node makes (index = node); a write is possible whenever the node is a
    /// member that is not leaving.
    pub writes: Vec<u8>,
    /// Founders that may call `leave`.
    pub leavers: Vec<usize>,
    /// Nodes that may crash (stop acting; messages in flight to them are lost).
    pub crashers: Vec<usize>,
    /// Leaves plus crashes per path.
    pub membership_faults: u8,
    /// In-flight messages the network may lose per path.
    pub losses: u8,
    /// No node's local clock may pass this time: a `Timeout` whose wake-up lies beyond it
    /// leads outside the checked space (stateright's `within_boundary`).
    pub horizon: Time,
    pub clock: Clock,
    /// Gossip settings of every replica.
    pub gossip: GossipConfig,
    /// L1 check: at every quiescent state of a crash-free path (nothing in flight and every
    /// wake-up beyond the horizon), a fault-free continuation of this long must bring every
    /// member's snapshot point to the union of applied ops and keep it there.
    pub settle: Option<Duration>,
    /// Exploration stops at this depth (stateright counts the initial state as depth 1 and
    /// checks states of depth < `max_depth`, i.e. reached in at most `max_depth − 2` steps):
    /// a bound for scopes too large to exhaust, and a guard against a space that does not
    /// close.
    pub max_depth: usize,
    /// How the binary searches this scope by default.
    pub strategy: Strategy,
    /// Default time budget of the binary.
    pub budget: Option<Duration>,
    /// Whether a view change that evicts the crashed node must be reachable.
    pub expect_view_change: bool,
}

impl Scope {
    /// The CI scope, explored exhaustively: two founders that write once each, no
    /// joiner, no fault, any delivery order and any timer order of the two clocks, up to a
    /// horizon of 300 ms (before the first heartbeat and anti-entropy round, about 1 s in).
    /// About 11,000 states.
    pub fn small() -> Scope {
        Scope {
            name: "small",
            founders: 2,
            joiner: false,
            writes: vec![1, 1],
            leavers: Vec::new(),
            crashers: Vec::new(),
            membership_faults: 0,
            losses: 0,
            horizon: Time::from_millis(300),
            clock: Clock::PerNode,
            gossip: GossipConfig::default(),
            settle: Some(Duration::from_secs(20)),
            max_depth: 400,
            strategy: Strategy::Dfs,
            budget: None,
            expect_view_change: false,
        }
    }

    /// The join scope (CI too): two founders and a joiner that registers through node 0,
    /// node 1 writes once, any delivery order, horizon 300 ms; every state reachable in at
    /// most 12 steps (the full space of this scope is too large, see the README).
    pub fn join() -> Scope {
        Scope {
            name: "join",
            founders: 2,
            joiner: true,
            writes: vec![0, 1, 0],
            max_depth: 14,
            strategy: Strategy::Bfs,
            ..Scope::small()
        }
    }

    /// The full scope of the brief: three founders and a joiner (through node 0), three
    /// writes (nodes 0 and 1, and the joiner once it is a member), one leave of founder 1 or
    /// one crash of founder 2, one lost message, any delivery order, per-node clocks, up to
    /// a horizon of 1.2 s (past the first heartbeat and anti-entropy round of every node, so
    /// a loss can be repaired inside the bound). Its state space is far too large to exhaust;
    /// the default run covers every state reachable in at most 9 steps (breadth first; about
    /// 10 M unique states and 10 GB — one step more needs over 24 GB).
    pub fn full() -> Scope {
        Scope {
            name: "full",
            founders: 3,
            joiner: true,
            writes: vec![1, 1, 0, 1],
            leavers: vec![1],
            crashers: vec![2],
            membership_faults: 1,
            losses: 1,
            horizon: Time::from_millis(1_200),
            clock: Clock::PerNode,
            gossip: GossipConfig::default(),
            settle: Some(Duration::from_secs(20)),
            max_depth: 11,
            strategy: Strategy::Bfs,
            budget: None,
            expect_view_change: false,
        }
    }

    /// The views scope: three founders and a joiner (through node 0), one write by node 1,
    /// a crash of founder 2, with the failure detector's and the view agreement's timings
    /// scaled down twenty-fold or so (suspicion after 150 ms without an answer to probes
    /// sent every 25 ms, eviction 150 ms later, heartbeats every 50 ms, ballots given
    /// 50 ms), so that within a 1 s horizon a
    /// crash is suspected, a view change decides the eviction and the snapshot point moves
    /// on. Explored by random walks (its space is far too large to exhaust); a view change
    /// that evicts the crashed node must be found, and I1–I4 and I6 hold on every state.
    pub fn views() -> Scope {
        let gossip = GossipConfig {
            heartbeat_interval: Duration::from_millis(50),
            suspect_after: Duration::from_millis(150),
            suspicion_timeout: Duration::from_millis(150),
            failure_check_interval: Duration::from_millis(25),
            probe_interval: Duration::from_millis(25),
            view_ballot_patience: Duration::from_millis(50),
            anti_entropy_interval: Duration::from_millis(200),
            ..GossipConfig::default()
        };
        Scope {
            name: "views",
            founders: 3,
            joiner: true,
            writes: vec![0, 1, 0, 0],
            leavers: Vec::new(),
            crashers: vec![2],
            membership_faults: 1,
            losses: 0,
            horizon: Time::from_millis(1_000),
            clock: Clock::Global,
            gossip,
            settle: None,
            max_depth: 2_000,
            strategy: Strategy::Simulate { seed: 1 },
            budget: Some(Duration::from_secs(60)),
            expect_view_change: true,
        }
    }

    pub fn by_name(name: &str) -> Option<Scope> {
        match name {
            "small" => Some(Scope::small()),
            "join" => Some(Scope::join()),
            "full" => Some(Scope::full()),
            "views" => Some(Scope::views()),
            _ => None,
        }
    }

    /// Number of nodes (founders plus the joiner).
    pub fn nodes(&self) -> usize {
        self.founders + usize::from(self.joiner)
    }

    /// Index of the joiner, if any.
    pub fn joiner_index(&self) -> Option<usize> {
        self.joiner.then_some(self.founders)
    }

    pub fn total_writes(&self) -> u64 {
        self.writes.iter().map(|&w| u64::from(w)).sum()
    }
}
