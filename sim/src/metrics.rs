//! What a run measures: dissemination latency, snapshot-point lag, traffic, and samples over
//! time for the CSV and the plot.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latencies in microseconds, summarised as percentiles in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    pub fn push(&mut self, micros: u64) {
        self.0.push(micros);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn summary(&self) -> Percentiles {
        let mut v = self.0.clone();
        v.sort_unstable();
        let pick = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            round3(v[rank - 1] as f64 / 1_000.0)
        };
        Percentiles {
            p50: pick(0.50),
            p99: pick(0.99),
            max: pick(1.0),
        }
    }
}

/// Nearest-rank percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Messages and bytes sent, by message kind.
#[derive(Debug, Default, Clone)]
pub struct Traffic {
    pub by_kind: BTreeMap<&'static str, (u64, u64)>,
}

impl Traffic {
    pub fn count(&mut self, kind: &'static str, bytes: usize) {
        let e = self.by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += bytes as u64;
    }

    /// Bytes that are part of a message counted under another kind (a report riding on
    /// published ops).
    pub fn count_bytes(&mut self, kind: &'static str, bytes: usize) {
        self.by_kind.entry(kind).or_default().1 += bytes as u64;
    }

    pub fn messages(&self) -> u64 {
        self.by_kind.values().map(|v| v.0).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.by_kind.values().map(|v| v.1).sum()
    }
}

/// Member records received over all nodes, by what the network map did with them: the
/// outdated ones are the redundancy of status flooding.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RecordMerges {
    pub adopted: u64,
    pub pending: u64,
    pub outdated: u64,
}

/// What the fault injector did and what the protocol did about it.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct FaultStats {
    pub crashes: u64,
    /// Restarts from durable state.
    pub restarts: u64,
    /// Restarts with a lost disk (a new identity).
    pub lost_disks: u64,
    /// Restarts from an old backup of the data dir.
    pub old_backups: u64,
    /// Joiners the operator restarted with new bootstrap addresses: every node the joiner
    /// knew had stopped, or was no member at its address.
    pub rebootstraps: u64,
    pub partitions: u64,
    pub joins: u64,
    pub leaves: u64,
    /// Memberships evicted (each counted once).
    pub evictions: u64,
    /// Evictions of a node that was running (cut off, or falsely suspected).
    pub evictions_of_running: u64,
    pub suspicions: u64,
    pub refutations: u64,
    pub rejoins: u64,
    pub ops_republished: u64,
    pub stale_notices: u64,
    /// New views forced by the operator (`--operator-forces-view-after-ms`).
    pub forced_views: u64,
    /// Membership views decided (distinct epochs installed anywhere).
    pub views_decided: u64,
    /// Conflicts between a forced view and another view of the same epoch (I6 excuses
    /// these: the operator's way out founds a view without a quorum on purpose).
    pub forced_view_conflicts: u64,
    /// Writes attempted while no writer could write (down, rejoining).
    pub writes_refused: u64,
    /// States fetched and installed by joiners (with `--state-transfer-s`).
    pub transfers: u64,
    /// Fetches a restarted joiner resumed from what it had kept.
    pub transfers_resumed: u64,
}

/// One point of the time series.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_ms: f64,
    /// Ops written so far.
    pub created: u64,
    /// Ops applied by every member.
    pub applied_everywhere: u64,
    /// Ops inside every member's snapshot point.
    pub stable_everywhere: u64,
    /// Mean snapshot-point lag of the ops that became stable everywhere since the last
    /// sample, in ms (absent when none did).
    pub sp_lag_ms: Option<f64>,
}

pub fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}
