//! I2 and I3 for the aggregated snapshot point (`Replica::aggregated_snapshot_point`, with
//! `--aggregation`): it never falls within a membership, it stays at or below the node's
//! applied vector, and it is at or below every member's applied vector in good standing
//! (crashed members not yet evicted included), with I3's one bounded excuse (a member whose
//! registration is void at the node). This is what proves the aggregation's four rules —
//! monotone inputs, joiner cover, final removals only and the completeness certificate —
//! before it decides anything: breaking any of them lets an aggregate pass some member.

use tidemark::VersionVector;

/// Violations of I2 by the aggregated snapshot point.
pub const MONOTONE: &str = "I2 monotone (aggregated)";
/// Violations of I3 by the aggregated snapshot point.
pub const SAFETY: &str = "I3 safety (aggregated)";

/// I2 for an aggregated snapshot point that changed from `previous` to `now`.
pub fn check_monotone(
    previous: &VersionVector,
    now: &VersionVector,
    applied: &VersionVector,
) -> Result<(), String> {
    super::monotone::check(previous, now, applied).map_err(|e| format!("aggregated {e}"))
}

/// I3 for an aggregated snapshot point against one member's applied vector.
pub fn check_safety(asp: &VersionVector, applied: &VersionVector) -> Result<(), String> {
    super::safety::check(asp, applied).map_err(|e| format!("aggregated {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark::NodeId;

    fn v(seq: u64) -> VersionVector {
        [(NodeId::synthetic(1), seq)].into_iter().collect()
    }

    #[test]
    fn a_falling_or_passing_aggregate_is_a_violation() {
        assert!(check_monotone(&v(2), &v(3), &v(5)).is_ok());
        assert!(check_monotone(&v(3), &v(2), &v(5)).is_err());
        assert!(check_monotone(&v(3), &v(6), &v(5)).is_err());
        assert!(check_safety(&v(3), &v(3)).is_ok());
        assert!(check_safety(&v(4), &v(3)).is_err());
    }
}
