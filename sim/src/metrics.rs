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

/// Latencies in microseconds kept as counts in log-linear buckets (64 per power of two,
/// so a value is known to within 1.6%): for samples too many to keep one by one, such as
/// one per (node, op) pair. Percentiles are nearest-rank, reported at the bucket's midpoint.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    fn bucket(micros: u64) -> usize {
        if micros < 128 {
            return micros as usize;
        }
        let shift = 63 - micros.leading_zeros() - 6;
        shift as usize * 64 + (micros >> shift) as usize
    }

    /// The lowest value of bucket `b`, and the width of the bucket.
    fn bounds(b: usize) -> (u64, u64) {
        if b < 128 {
            return (b as u64, 1);
        }
        let shift = b / 64 - 1;
        (((b - shift * 64) as u64) << shift, 1 << shift)
    }

    pub fn push(&mut self, micros: u64) {
        let b = Self::bucket(micros);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn summary(&self) -> Percentiles {
        let pick = |q: f64| -> f64 {
            if self.total == 0 {
                return 0.0;
            }
            let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
            let mut seen = 0;
            for (b, count) in self.counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    let (low, width) = Self::bounds(b);
                    let mid = low as f64 + (width - 1) as f64 / 2.0;
                    return round3(mid / 1_000.0);
                }
            }
            unreachable!("rank is at most the total")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut last = None;
        for v in (0..5_000u64).chain([1 << 20, (1 << 20) + 12_345, u64::MAX / 3]) {
            let b = Histogram::bucket(v);
            let (low, width) = Histogram::bounds(b);
            assert!(
                low <= v && v < low + width,
                "{v} in bucket {b} = [{low}, +{width})"
            );
            if let Some((lv, lb)) = last {
                if v == lv + 1 {
                    assert!(b == lb || b == lb + 1, "buckets are contiguous at {v}");
                }
            }
            last = Some((v, b));
            assert!(width as f64 <= 1.0 + v as f64 / 64.0, "within 1.6% at {v}");
        }
    }

    #[test]
    fn histogram_percentiles_agree_with_exact_ones_within_the_bucket_width() {
        let mut exact = Latencies::default();
        let mut hist = Histogram::default();
        for i in 0..10_000u64 {
            let v = (i * 7_919) % 250_000 + 100;
            exact.push(v);
            hist.push(v);
        }
        let (e, h) = (exact.summary(), hist.summary());
        for (a, b) in [(e.p50, h.p50), (e.p99, h.p99), (e.max, h.max)] {
            assert!(
                (a - b).abs() <= a * 0.016 + 0.001,
                "exact {a} ms, histogram {b} ms"
            );
        }
        assert_eq!(hist.len(), 10_000);
        assert_eq!(Histogram::default().summary().p50, 0.0);
    }
}
