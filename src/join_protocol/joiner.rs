//! The joiner's side of the handshake: whom to ask, when to ask again, when to ask with a
//! new incarnation, and how the list of possible sponsors widens.
//!
//! Rules:
//! - **Silence.** A request the current sponsor leaves unanswered is sent again after a
//!   backoff that doubles up to `join_retry_max`. The sponsor may have registered the
//!   joiner and died; after `join_attempts_per_sponsor` unanswered requests the joiner moves
//!   on **with a new incarnation**, since a registration of the old one that never reports
//!   is evicted like any silent member. This holds for a list of one sponsor too.
//! - **Refusal.** Nothing was registered, so the incarnation stays — unless the refusal
//!   says the sponsor already knows this node at an incarnation at least as high (a node
//!   restored from an old data dir): then the joiner takes the next incarnation above it.
//!   The next sponsor is asked after a backoff (from `join_retry`, doubling with every
//!   refusal up to `join_retry_max`, with jitter), so that nodes which refuse each other
//!   (two rejoining nodes that know only each other) do not flood each other with requests.
//! - **Preparing.** A sponsor writing the snapshot it will offer (a state too large to
//!   send inline) says so; the request counts as answered, and the joiner asks the same
//!   sponsor again, with the same incarnation, after `join_retry_max`.
//! - **Widening.** The sponsors a refusal suggests join the list. Each time a whole round
//!   of the list passed without a grant, every node the joiner has learned of (a rejoining
//!   node still holds its previous map) joins the list too, so a joiner whose bootstrap
//!   peers are all gone tries every member it knows. One that knows none keeps asking its
//!   list, with backoff, and says so in its [`JoinProgress`]. Its driver may add the
//!   peers it finds at the addresses of the nodes the joiner knows ([`Joiner::add_sponsors`]):
//!   a node that came back with a new identity keeps its address.
//!
//! Pure state machine: time is passed in, randomness comes from the caller's seeded RNG.

use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use crate::gossip::GossipConfig;
use crate::node_id::NodeId;
use crate::time::{jitter, Time};

/// How a join is going, for status pages and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinProgress {
    /// When this join (or rejoin) started.
    pub since: Time,
    /// Join requests sent.
    pub requests: u64,
    /// Requests that went unanswered.
    pub unanswered: u64,
    /// Refusals received.
    pub refusals: u64,
    /// The last refusal's reason.
    pub last_refusal: Option<String>,
    /// Whole rounds of the sponsor list that passed without a grant.
    pub rounds: u64,
    /// Possible sponsors known (the bootstrap list, widened).
    pub sponsors: usize,
    /// The last answer said that the sponsor is writing the snapshot it will offer.
    pub offer_being_written: bool,
}

/// What the joiner asks its driver to do when it asks a sponsor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub sponsor: NodeId,
    /// Ask with a new incarnation (the last one may be registered by a silent sponsor).
    pub new_incarnation: bool,
}

/// The joiner's handshake state (see the module doc).
#[derive(Clone, Debug)]
pub struct Joiner {
    sponsors: Vec<NodeId>,
    current: usize,
    retry_at: Time,
    backoff: Duration,
    /// Whether a request to the current sponsor is out and unanswered.
    awaiting: bool,
    unanswered: u32,
    progress: JoinProgress,
}

impl Joiner {
    /// Starts joining through `sponsors`, in order; the first is asked at once. An empty
    /// list is allowed (a driver that has to learn its bootstrap peers' ids by dialling
    /// their addresses first): nothing is asked until [`add_sponsors`](Self::add_sponsors)
    /// brings one, and a round passes every `join_retry_max` meanwhile.
    pub fn new(sponsors: Vec<NodeId>, now: Time) -> Self {
        let progress = JoinProgress {
            since: now,
            sponsors: sponsors.len(),
            ..JoinProgress::default()
        };
        Self {
            sponsors,
            current: 0,
            retry_at: now,
            backoff: Duration::ZERO,
            awaiting: false,
            unanswered: 0,
            progress,
        }
    }

    /// The bootstrap list, widened so far.
    pub fn sponsors(&self) -> &[NodeId] {
        &self.sponsors
    }

    /// The sponsor asked now (the only one whose answer counts); none while the list is
    /// empty.
    pub fn current(&self) -> Option<&NodeId> {
        self.sponsors.get(self.current)
    }

    /// When the next request is due.
    pub fn retry_at(&self) -> Time {
        self.retry_at
    }

    pub fn progress(&self) -> &JoinProgress {
        &self.progress
    }

    /// The next request is due (`retry_at` passed): whom to ask, and whether with a new
    /// incarnation. `known` lists the nodes the joiner has learned of, for widening. With
    /// no possible sponsor (and none learned of) there is no one to ask: a round passes,
    /// and the next is due after `join_retry_max`.
    pub fn ask(
        &mut self,
        now: Time,
        config: &GossipConfig,
        rng: &mut impl Rng,
        known: impl FnOnce() -> Vec<NodeId>,
    ) -> Option<Ask> {
        let mut known = Some(known);
        let mut known = move || known.take().map(|f| f()).unwrap_or_default();
        if self.sponsors.is_empty() {
            self.current = 0;
            self.progress.rounds += 1;
            self.sponsors = known();
            self.progress.sponsors = self.sponsors.len();
            if self.sponsors.is_empty() {
                self.awaiting = false;
                self.retry_at = now + jitter(rng, config.join_retry_max);
                return None;
            }
        }
        let mut new_incarnation = false;
        if self.awaiting {
            self.progress.offer_being_written = false;
            self.progress.unanswered += 1;
            self.unanswered += 1;
            if self.unanswered >= config.join_attempts_per_sponsor {
                self.advance(&mut known);
                self.backoff = config.join_retry;
                new_incarnation = true;
            } else {
                self.backoff = (self.backoff * 2).clamp(config.join_retry, config.join_retry_max);
            }
        } else if self.backoff.is_zero() {
            self.backoff = config.join_retry;
        }
        self.awaiting = true;
        self.progress.requests += 1;
        self.retry_at = now + jitter(rng, self.backoff);
        Some(Ask {
            sponsor: self.sponsors[self.current].clone(),
            new_incarnation,
        })
    }

    /// The current sponsor refused: nothing was registered. `member_incarnation` is the
    /// incarnation at which the sponsor already knows this node, if that is why it refused.
    /// Returns the incarnation to ask with from now on, if it must rise above `incarnation`.
    #[allow(clippy::too_many_arguments)]
    pub fn refused(
        &mut self,
        now: Time,
        reason: &str,
        suggestions: &[NodeId],
        member_incarnation: Option<u64>,
        incarnation: u64,
        me: &NodeId,
        config: &GossipConfig,
        rng: &mut impl Rng,
        known: impl FnOnce() -> Vec<NodeId>,
    ) -> Option<u64> {
        self.progress.refusals += 1;
        self.progress.offer_being_written = false;
        self.progress.last_refusal = Some(reason.to_owned());
        self.awaiting = false;
        self.unanswered = 0;
        for s in suggestions {
            if s != me && !self.sponsors.contains(s) {
                self.sponsors.push(s.clone());
            }
        }
        self.advance(known);
        // wait before the next request, and twice as long after the next refusal
        let wait = self.backoff.clamp(config.join_retry, config.join_retry_max);
        self.retry_at = now + jitter(rng, wait);
        self.backoff = (wait * 2).min(config.join_retry_max);
        member_incarnation
            .filter(|known| *known >= incarnation)
            .map(|known| known + 1)
    }

    /// The current sponsor answered that it is writing the snapshot it will offer: it is
    /// alive and registered this incarnation, so the request counts as answered, and the
    /// next one (with the same incarnation) goes out after `join_retry_max`.
    pub fn preparing(&mut self, now: Time, config: &GossipConfig, rng: &mut impl Rng) {
        self.progress.offer_being_written = true;
        self.awaiting = false;
        self.unanswered = 0;
        self.retry_at = now + jitter(rng, config.join_retry_max);
    }

    /// Adds possible sponsors the driver found (the peers now at the addresses of nodes
    /// the joiner knows, when those nodes came back under new identities, or at bootstrap
    /// addresses given without a peer id). A joiner that had no one to ask asks the first
    /// of them at its next wake-up.
    ///
    /// They answered at those addresses just now, so they are asked next, before the
    /// rest of the round.
    pub fn add_sponsors(&mut self, ids: impl IntoIterator<Item = NodeId>, me: &NodeId) {
        let had_none = self.sponsors.is_empty();
        let mut at = (self.current + 1).min(self.sponsors.len());
        for id in ids {
            if &id != me && !self.sponsors.contains(&id) {
                self.sponsors.insert(at, id);
                at += 1;
            }
        }
        if had_none && !self.sponsors.is_empty() {
            self.current = 0;
            self.awaiting = false;
            self.retry_at = Time::ZERO;
        }
        self.progress.sponsors = self.sponsors.len();
    }

    /// A state offered in a grant is being fetched: no request is due before `until`.
    pub fn hold(&mut self, until: Time) {
        self.retry_at = until;
        self.awaiting = false;
        self.unanswered = 0;
    }

    /// Asks the current sponsor again at `now` (a fetch failed or was given up).
    pub fn retry_now(&mut self, now: Time) {
        self.retry_at = now;
        self.awaiting = false;
    }

    /// Moves to the next sponsor; after a whole round, adds every node learned of.
    fn advance(&mut self, known: impl FnOnce() -> Vec<NodeId>) {
        self.unanswered = 0;
        self.current += 1;
        if self.current == self.sponsors.len() {
            self.current = 0;
            self.progress.rounds += 1;
            for id in known() {
                if !self.sponsors.contains(&id) {
                    self.sponsors.push(id);
                }
            }
        }
        self.progress.sponsors = self.sponsors.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn id(i: u64) -> NodeId {
        NodeId::synthetic(i)
    }

    fn config() -> GossipConfig {
        GossipConfig::default()
    }

    #[test]
    fn a_silent_single_sponsor_is_asked_again_with_a_new_incarnation() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut joiner = Joiner::new(vec![id(1)], Time::ZERO);
        let first = joiner.ask(Time::ZERO, &config, &mut rng, Vec::new).unwrap();
        assert_eq!(first.sponsor, id(1));
        assert!(!first.new_incarnation);
        let mut asks = Vec::new();
        for _ in 0..config.join_attempts_per_sponsor {
            let now = joiner.retry_at();
            asks.push(joiner.ask(now, &config, &mut rng, Vec::new).unwrap());
        }
        assert!(asks.iter().all(|a| a.sponsor == id(1)));
        assert_eq!(
            asks.iter().filter(|a| a.new_incarnation).count(),
            1,
            "after {} unanswered requests: {asks:?}",
            config.join_attempts_per_sponsor
        );
        assert!(asks.last().unwrap().new_incarnation);
        assert_eq!(joiner.progress().unanswered, 3);
    }

    #[test]
    fn a_sponsor_writing_the_offer_is_waited_for_with_the_same_incarnation() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut joiner = Joiner::new(vec![id(1), id(2)], Time::ZERO);
        let mut now = Time::ZERO;
        // a snapshot that takes twenty asks to write: each ask answered "preparing"
        for ask in 0..20 {
            let asked = joiner.ask(now, &config, &mut rng, Vec::new).unwrap();
            assert_eq!(asked.sponsor, id(1), "ask {ask}: the same sponsor");
            assert!(!asked.new_incarnation, "ask {ask}: the same incarnation");
            joiner.preparing(now, &config, &mut rng);
            assert!(joiner.progress().offer_being_written);
            let wait = joiner.retry_at().since(now);
            assert!(
                wait >= config.join_retry_max.mul_f64(0.85),
                "ask {ask}: asked again after {wait:?}, not at once"
            );
            now = joiner.retry_at();
        }
        assert_eq!(joiner.progress().unanswered, 0);
        assert_eq!(joiner.progress().rounds, 0);
        // a sponsor that falls silent afterwards is left as before: the ask after the
        // last answer, then one per unanswered request
        let mut asks = Vec::new();
        for _ in 0..=config.join_attempts_per_sponsor {
            asks.push(joiner.ask(now, &config, &mut rng, Vec::new).unwrap());
            now = joiner.retry_at();
        }
        assert!(!joiner.progress().offer_being_written);
        assert!(
            asks.last().unwrap().new_incarnation && asks.last().unwrap().sponsor == id(2),
            "{asks:?}"
        );
    }

    #[test]
    fn refusals_back_off_exponentially_with_jitter_up_to_the_maximum() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let me = id(9);
        let mut joiner = Joiner::new(vec![id(1), id(2)], Time::ZERO);
        let mut now = Time::ZERO;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            joiner.ask(now, &config, &mut rng, Vec::new);
            joiner.refused(now, "no", &[], None, 1, &me, &config, &mut rng, Vec::new);
            gaps.push(joiner.retry_at().since(now));
            now = joiner.retry_at();
        }
        let max = config.join_retry_max + config.join_retry_max / 10;
        assert!(
            gaps[0] <= config.join_retry + config.join_retry / 10,
            "{gaps:?}"
        );
        assert!(gaps.windows(2).take(2).all(|w| w[1] > w[0]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= max), "{gaps:?}");
        assert!(gaps[7] >= config.join_retry_max - config.join_retry_max / 10);
        assert_eq!(joiner.progress().refusals, 8);
        assert_eq!(joiner.progress().last_refusal.as_deref(), Some("no"));
    }

    #[test]
    fn a_whole_round_without_a_grant_adds_every_node_learned_of_and_suggestions_join_at_once() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let me = id(9);
        let mut joiner = Joiner::new(vec![id(1)], Time::ZERO);
        joiner.ask(Time::ZERO, &config, &mut rng, Vec::new);
        joiner.refused(
            Time::ZERO,
            "leaving",
            &[id(2), me.clone(), id(1)],
            None,
            1,
            &me,
            &config,
            &mut rng,
            || vec![id(3), id(4), id(2)],
        );
        assert_eq!(
            joiner.sponsors(),
            &[id(1), id(2)],
            "the suggestion, not myself"
        );
        assert_eq!(joiner.current(), Some(&id(2)));
        let now = joiner.retry_at();
        joiner.ask(now, &config, &mut rng, Vec::new);
        joiner.refused(now, "no", &[], None, 1, &me, &config, &mut rng, || {
            vec![id(3), id(4), id(2)]
        });
        assert_eq!(joiner.sponsors(), &[id(1), id(2), id(3), id(4)]);
        assert_eq!(joiner.progress().rounds, 1);
        assert_eq!(joiner.progress().sponsors, 4);
    }

    #[test]
    fn a_joiner_without_sponsors_asks_no_one_until_one_is_added_then_asks_it_at_once() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let me = id(9);
        let mut joiner = Joiner::new(Vec::new(), Time::ZERO);
        assert_eq!(joiner.ask(Time::ZERO, &config, &mut rng, Vec::new), None);
        assert_eq!(joiner.current(), None);
        let next = joiner.retry_at();
        assert!(next > Time::ZERO, "the next round is not due at once");
        assert_eq!(joiner.ask(next, &config, &mut rng, Vec::new), None);
        assert_eq!(joiner.progress().rounds, 2, "each empty round is counted");
        assert_eq!(joiner.progress().requests, 0);
        joiner.add_sponsors([id(1)], &me);
        assert_eq!(
            joiner.retry_at(),
            Time::ZERO,
            "the found sponsor is asked at once"
        );
        let ask = joiner.ask(next, &config, &mut rng, Vec::new).unwrap();
        assert_eq!(ask.sponsor, id(1));
        assert!(!ask.new_incarnation);
        assert_eq!(joiner.progress().sponsors, 1);
    }

    #[test]
    fn sponsors_found_at_known_addresses_are_asked_next_before_the_rest_of_the_round() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let me = id(9);
        let mut joiner = Joiner::new(vec![id(1), id(2), id(3)], Time::ZERO);
        let first = joiner.ask(Time::ZERO, &config, &mut rng, Vec::new).unwrap();
        assert_eq!(first.sponsor, id(1));
        joiner.add_sponsors([id(5), id(2), me.clone(), id(6)], &me);
        assert_eq!(
            joiner.sponsors(),
            &[id(1), id(5), id(6), id(2), id(3)],
            "the found ones go right after the current sponsor, once each, not myself"
        );
        // the silent current sponsor runs out of attempts: the found one is next
        let mut now = joiner.retry_at();
        let mut ask = joiner.ask(now, &config, &mut rng, Vec::new).unwrap();
        while ask.sponsor == id(1) {
            now = joiner.retry_at();
            ask = joiner.ask(now, &config, &mut rng, Vec::new).unwrap();
        }
        assert_eq!(ask.sponsor, id(5));
    }

    #[test]
    fn a_sponsor_that_knows_a_higher_incarnation_makes_the_joiner_take_the_next_one() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let me = id(9);
        let mut joiner = Joiner::new(vec![id(1)], Time::ZERO);
        joiner.ask(Time::ZERO, &config, &mut rng, Vec::new);
        let raise = joiner.refused(
            Time::ZERO,
            "already a member",
            &[],
            Some(7),
            3,
            &me,
            &config,
            &mut rng,
            Vec::new,
        );
        assert_eq!(raise, Some(8));
        let stays = joiner.refused(
            Time::ZERO,
            "x",
            &[],
            Some(2),
            3,
            &me,
            &config,
            &mut rng,
            Vec::new,
        );
        assert_eq!(stays, None, "a lower incarnation is no reason to change");
    }
}
