//! Per-peer penalties: a peer that sends garbage (undecodable messages, ops without their
//! origin's signature) or floods ops the causal buffer refuses earns points; points drain
//! over time, and a peer that reaches the limit is disconnected and blocked for a while.
//! An honest peer sends none of the first two, and the third only after missing more than
//! `max_ahead` ops of one origin, so the limit is set far above what a burst of the third
//! produces.
//!
//! Pure bookkeeping: the driver passes the time in and carries out the blocks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a peer did wrong, with its weight in points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// A message that does not decode, or of a kind that does not belong where it came.
    Malformed,
    /// A message carrying ops that are unsigned, forged or mutated.
    BadSignature,
    /// A message carrying ops the causal buffer refused (their deps are far off).
    Refused,
}

impl Offence {
    fn points(self) -> f64 {
        match self {
            Offence::Malformed | Offence::BadSignature => 10.0,
            Offence::Refused => 1.0,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Offence::Malformed => "malformed",
            Offence::BadSignature => "bad_signature",
            Offence::Refused => "refused",
        }
    }
}

/// How fast points drain and where the limit is.
#[derive(Clone, Debug)]
pub struct PenaltyLimits {
    /// A peer at or above this many points is blocked.
    pub limit: f64,
    /// Points a peer loses per second.
    pub drain_per_sec: f64,
    /// How long a block lasts.
    pub block_for: Duration,
}

impl Default for PenaltyLimits {
    /// Ten garbage messages in a burst, or a hundred refused batches, block a peer for
    /// five minutes; one garbage message a second never does.
    fn default() -> Self {
        Self {
            limit: 100.0,
            drain_per_sec: 10.0,
            block_for: Duration::from_secs(300),
        }
    }
}

/// Points per peer, and the peers blocked now.
#[derive(Debug)]
pub struct Penalties<P> {
    limits: PenaltyLimits,
    points: BTreeMap<P, (f64, Instant)>,
    blocked: BTreeMap<P, Instant>,
}

impl<P: Ord + Clone> Penalties<P> {
    pub fn new(limits: PenaltyLimits) -> Self {
        Self {
            limits,
            points: BTreeMap::new(),
            blocked: BTreeMap::new(),
        }
    }

    /// Records an offence; true if it puts the peer over the limit (block it now).
    pub fn offend(&mut self, peer: &P, offence: Offence, now: Instant) -> bool {
        if self.blocked.contains_key(peer) {
            return false;
        }
        let (points, at) = self.points.entry(peer.clone()).or_insert((0.0, now));
        let drained = now.saturating_duration_since(*at).as_secs_f64() * self.limits.drain_per_sec;
        *points = (*points - drained).max(0.0) + offence.points();
        *at = now;
        if *points >= self.limits.limit {
            self.points.remove(peer);
            self.blocked
                .insert(peer.clone(), now + self.limits.block_for);
            return true;
        }
        false
    }

    /// Peers whose block has run out by `now` (unblock them), in peer order.
    pub fn expired(&mut self, now: Instant) -> Vec<P> {
        let over: Vec<P> = self
            .blocked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in &over {
            self.blocked.remove(peer);
        }
        // forget peers whose points have drained away
        let drain = self.limits.drain_per_sec;
        self.points.retain(|_, (points, at)| {
            *points - now.saturating_duration_since(*at).as_secs_f64() * drain > 0.0
        });
        over
    }

    pub fn is_blocked(&self, peer: &P) -> bool {
        self.blocked.contains_key(peer)
    }

    pub fn blocked_count(&self) -> usize {
        self.blocked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_garbage_blocks_a_peer_until_the_block_runs_out() {
        let mut p = Penalties::new(PenaltyLimits::default());
        let t0 = Instant::now();
        let blocks: Vec<bool> = (0..10)
            .map(|_| p.offend(&"flooder", Offence::Malformed, t0))
            .collect();
        assert_eq!(blocks.iter().filter(|b| **b).count(), 1);
        assert!(blocks[9], "the tenth garbage message reaches the limit");
        assert!(p.is_blocked(&"flooder"));
        assert!(p.expired(t0 + Duration::from_secs(299)).is_empty());
        assert_eq!(p.expired(t0 + Duration::from_secs(300)), vec!["flooder"]);
        assert!(!p.is_blocked(&"flooder"));
    }

    #[test]
    fn occasional_offences_drain_away() {
        let mut p = Penalties::new(PenaltyLimits::default());
        let t0 = Instant::now();
        for s in 0..1_000 {
            let now = t0 + Duration::from_secs(s);
            assert!(!p.offend(&"noisy", Offence::Malformed, now));
            assert!(!p.offend(&"slow", Offence::Refused, now));
        }
        assert_eq!(p.blocked_count(), 0);
        p.expired(t0 + Duration::from_secs(2_000));
        assert!(p.points.is_empty(), "drained peers are forgotten");
    }

    #[test]
    fn a_hundred_refused_batches_in_a_burst_block_a_peer() {
        let mut p = Penalties::new(PenaltyLimits::default());
        let t0 = Instant::now();
        let blocked = (0..100)
            .filter(|_| p.offend(&"ahead", Offence::Refused, t0))
            .count();
        assert_eq!(blocked, 1);
    }
}
