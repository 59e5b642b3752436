//! I3 safety: for any two members n, m in good standing, `SP(n) ≤ A(m)` — including members
//! that joined through a sponsor whose reports n has not yet seen (the join race).
//!
//! Good standing: a replica that has installed a membership (founded, joined or rejoined),
//! is running, has not announced `Left`, and whose membership no map holds as evicted.
//!
//! The engine maintains the pointwise minimum of `A(m)` over every member in good standing.
//! `SP(n) ≤ that minimum` is checked whenever `SP(n)` changes, and for every n whenever a
//! member enters good standing (the only event that can lower the minimum).
//!
//! One excuse, bounded in time ([`Excuses`]): n has never seen m's membership, and m's
//! registration chain leads to a sponsor membership that n had evicted or replaced before
//! learning of the registration. n may then have decided past m without a fault of the
//! protocol: when m's record reaches n, n evicts it on arrival (the admission check), and m
//! is out of good standing. The excuse therefore holds only while the two cannot yet have
//! exchanged records: while a partition separates them, and for [`Excuses::bound`] after
//! the later of the excuse's first grant and the last heal. A pair still in breach after
//! that is a violation. Every grant is counted in the report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tidemark::{Time, VersionVector};

pub const NAME: &str = "I3 safety";

pub fn check(sp: &VersionVector, min_applied_of_members: &VersionVector) -> Result<(), String> {
    if sp.le(min_applied_of_members) {
        Ok(())
    } else {
        Err(format!(
            "snapshot point {sp:?} includes ops some member has not applied (members' minimum {min_applied_of_members:?})"
        ))
    }
}

/// A pair under the excuse: deciding node slot, member slot and the member's incarnation.
pub type ExcusedPair = (usize, usize, u64);

/// The excuses granted, and for how long each was needed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ExcuseCounts {
    /// Pairs excused because the member's registration was void at the deciding node.
    pub i3_voided_registration: u64,
    /// Longest time one such pair stayed excused, in ms.
    pub i3_voided_registration_longest_ms: f64,
    /// Acknowledged ops lost with the only storage that held them (I5's excuse).
    pub ops_lost_with_storage: u64,
}

/// I3's excuse table: which pairs are excused since when.
#[derive(Debug)]
pub struct Excuses {
    bound: Duration,
    open: BTreeMap<ExcusedPair, Time>,
    pub counts: ExcuseCounts,
}

impl Excuses {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            open: BTreeMap::new(),
            counts: ExcuseCounts::default(),
        }
    }

    /// How long after the later of its first grant and the last heal an excuse may stand.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Grants the excuse to `pair` (counted once per pair); false when it has run out.
    pub fn grant(
        &mut self,
        pair: ExcusedPair,
        now: Time,
        separated: bool,
        last_heal: Time,
    ) -> bool {
        let since = *self.open.entry(pair).or_insert_with(|| {
            self.counts.i3_voided_registration += 1;
            now
        });
        self.still_excused(since, now, separated, last_heal)
    }

    fn still_excused(&self, since: Time, now: Time, separated: bool, last_heal: Time) -> bool {
        separated || now < since.max(last_heal) + self.bound
    }

    /// Re-examines the open excuses: `in_breach(pair)` says whether the pair still breaks
    /// I3 (`None` once either side left good standing or changed membership), `separated`
    /// whether a partition keeps them apart. Returns the pairs whose excuse ran out while
    /// still in breach, with their breach; those and the healed ones are closed.
    pub fn expire(
        &mut self,
        now: Time,
        last_heal: Time,
        mut in_breach: impl FnMut(ExcusedPair) -> Option<String>,
        mut separated: impl FnMut(ExcusedPair) -> bool,
    ) -> Vec<(ExcusedPair, String)> {
        let mut expired = Vec::new();
        let mut closed = Vec::new();
        for (&pair, &since) in &self.open {
            match in_breach(pair) {
                None => closed.push((pair, since)),
                Some(breach) if !self.still_excused(since, now, separated(pair), last_heal) => {
                    closed.push((pair, since));
                    expired.push((pair, breach));
                }
                Some(_) => {}
            }
        }
        for (pair, since) in closed {
            self.open.remove(&pair);
            let held = now.since(since).as_secs_f64() * 1e3;
            let longest = &mut self.counts.i3_voided_registration_longest_ms;
            *longest = longest.max((held * 1e3).round() / 1e3);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    #[test]
    fn a_snapshot_point_above_some_member_is_a_violation() {
        let v = |s: u64| -> VersionVector { [(NodeId::synthetic(1), s)].into_iter().collect() };
        assert!(check(&v(2), &v(2)).is_ok());
        assert!(check(&v(1), &v(2)).is_ok());
        assert!(check(&v(3), &v(2)).is_err());
    }

    #[test]
    fn an_excuse_runs_out_after_its_bound_unless_a_partition_keeps_the_pair_apart() {
        let at = |ms: u64| Time::ZERO + Duration::from_millis(ms);
        let mut excuses = Excuses::new(Duration::from_secs(5));
        assert!(excuses.grant((0, 1, 1), at(1_000), false, Time::ZERO));
        assert!(excuses.grant((0, 1, 1), at(5_900), false, Time::ZERO));
        assert!(!excuses.grant((0, 1, 1), at(6_000), false, Time::ZERO));
        assert!(
            excuses.grant((0, 1, 1), at(6_000), true, Time::ZERO),
            "separated"
        );
        assert!(
            excuses.grant((0, 1, 1), at(9_000), false, at(5_000)),
            "healed at 5 s"
        );
        assert_eq!(
            excuses.counts.i3_voided_registration, 1,
            "one pair, counted once"
        );
        let breach = |_| Some("SP above A".to_string());
        assert!(excuses
            .expire(at(9_999), at(5_000), breach, |_| false)
            .is_empty());
        let expired = excuses.expire(at(10_000), at(5_000), breach, |_| false);
        assert_eq!(expired.len(), 1);
        assert!(
            excuses
                .expire(at(20_000), at(5_000), breach, |_| false)
                .is_empty(),
            "closed"
        );
        assert_eq!(excuses.counts.i3_voided_registration_longest_ms, 9_000.0);
    }
}
