//! The simulated network: per-link latency, loss, duplication and reordering, and a
//! gossipsub-like mesh that floods published messages.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::SimConfig;

/// Link behaviour derived from the config and the seed.
#[derive(Clone, Debug)]
pub struct Links {
    seed: u64,
    min_us: u64,
    spread_us: u64,
    loss: f64,
    duplicate: f64,
    reorder: f64,
}

impl Links {
    pub fn new(config: &SimConfig) -> Self {
        let min_us = config.latency_min.as_micros() as u64;
        let max_us = (config.latency_max.as_micros() as u64).max(min_us);
        Self {
            seed: config.seed,
            min_us,
            spread_us: max_us - min_us,
            loss: config.loss,
            duplicate: config.duplicate,
            reorder: config.reorder,
        }
    }

    /// The fixed base latency of the link between `a` and `b` (symmetric).
    pub fn base_latency(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut h = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for x in [lo as u64, hi as u64] {
            h ^= x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h = h.rotate_left(31).wrapping_mul(0x94d0_49bb_1331_11eb);
        }
        let offset = if self.spread_us == 0 {
            0
        } else {
            h % (self.spread_us + 1)
        };
        Duration::from_micros(self.min_us + offset)
    }

    /// Delays of the copies of one transmission that arrive: none when lost, two when
    /// duplicated. Jitter and reordering make copies overtake each other.
    pub fn transmit(&self, rng: &mut ChaCha8Rng, a: usize, b: usize) -> Copies {
        let mut copies = Copies::default();
        if self.loss > 0.0 && rng.random_bool(self.loss) {
            return copies;
        }
        copies.len = if self.duplicate > 0.0 && rng.random_bool(self.duplicate) {
            2
        } else {
            1
        };
        let base = self.base_latency(a, b).as_micros() as u64;
        for delay in &mut copies.delays[..copies.len] {
            let mut us = base + rng.random_range(0..=base / 10);
            if self.reorder > 0.0 && rng.random_bool(self.reorder) {
                us += rng.random_range(0..=base.max(1) * 2);
            }
            *delay = Duration::from_micros(us);
        }
        copies
    }
}

/// The delays of the copies of one transmission that arrive (at most two), without an
/// allocation per message.
#[derive(Clone, Copy, Debug, Default)]
pub struct Copies {
    delays: [Duration; 2],
    len: usize,
}

impl Copies {
    pub fn delays(&self) -> &[Duration] {
        &self.delays[..self.len]
    }
}

/// A random undirected graph in which every node has at least `degree` neighbours (or all
/// others, in small networks).
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    neighbours: Vec<Vec<usize>>,
}

impl Mesh {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds node `n` (must be the next index) and links it to up to `degree` random nodes
    /// among `candidates`.
    pub fn add_node(&mut self, rng: &mut ChaCha8Rng, degree: usize, candidates: &[usize]) {
        let n = self.neighbours.len();
        self.neighbours.push(Vec::new());
        let want = degree.min(candidates.iter().filter(|&&c| c != n).count());
        while self.neighbours[n].len() < want {
            let c = candidates[rng.random_range(0..candidates.len())];
            if c != n && !self.neighbours[n].contains(&c) {
                self.link(n, c);
            }
        }
    }

    /// Builds the founding mesh of `nodes` nodes.
    pub fn founding(rng: &mut ChaCha8Rng, nodes: usize, degree: usize) -> Self {
        let mut mesh = Self::new();
        let all: Vec<usize> = (0..nodes).collect();
        for _ in 0..nodes {
            mesh.neighbours.push(Vec::new());
        }
        for n in 0..nodes {
            let want = degree.min(nodes - 1);
            while mesh.neighbours[n].len() < want {
                let c = all[rng.random_range(0..nodes)];
                if c != n && !mesh.neighbours[n].contains(&c) {
                    mesh.link(n, c);
                }
            }
        }
        mesh
    }

    fn link(&mut self, a: usize, b: usize) {
        self.neighbours[a].push(b);
        self.neighbours[b].push(a);
    }

    pub fn neighbours(&self, n: usize) -> &[usize] {
        &self.neighbours[n]
    }

    pub fn len(&self) -> usize {
        self.neighbours.len()
    }

    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty()
    }
}

/// The published-message ids a node has seen (gossipsub's duplicate cache), in two
/// generations so old ids are forgotten.
///
/// The simulator numbers published messages from one counter and nearly every node sees
/// nearly every one, so each generation is a bitmap over the ids it holds: one bit per id
/// instead of a hash-set slot (a 1,000-node run of 50,000 ops held about 0.8 GB of them),
/// and a lookup touches one word.
#[derive(Clone, Debug, Default)]
pub struct SeenCache {
    current: IdBitmap,
    previous: IdBitmap,
}

impl SeenCache {
    /// Records `id`; returns whether it was new.
    pub fn insert(&mut self, id: u64) -> bool {
        if self.previous.contains(id) {
            return false;
        }
        self.current.insert(id)
    }

    /// Whether `id` was seen (and not yet forgotten).
    pub fn contains(&self, id: u64) -> bool {
        self.current.contains(id) || self.previous.contains(id)
    }

    pub fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// A set of `u64` ids as bits over the range of words between the lowest and the highest
/// id it holds.
#[derive(Clone, Debug, Default)]
struct IdBitmap {
    /// Index of the word `words[0]` stands for (its first id is `64 * first_word`).
    first_word: u64,
    words: Vec<u64>,
}

impl IdBitmap {
    fn contains(&self, id: u64) -> bool {
        let word = id / 64;
        word.checked_sub(self.first_word)
            .and_then(|i| self.words.get(usize::try_from(i).ok()?))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Adds `id`; returns whether it was not there.
    fn insert(&mut self, id: u64) -> bool {
        let word = id / 64;
        if self.words.is_empty() {
            self.first_word = word;
        } else if word < self.first_word {
            let grow = (self.first_word - word) as usize;
            self.words.splice(0..0, std::iter::repeat_n(0, grow));
            self.first_word = word;
        }
        let i = (word - self.first_word) as usize;
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        let bit = 1 << (id % 64);
        let new = self.words[i] & bit == 0;
        self.words[i] |= bit;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once_and_forgotten_two_rotations_later() {
        let mut seen = SeenCache::default();
        assert!(seen.insert(70));
        assert!(!seen.insert(70));
        assert!(seen.contains(70));
        assert!(!seen.contains(71));
        seen.rotate();
        // still a duplicate in the previous generation, and not carried into the current
        assert!(!seen.insert(70));
        assert!(seen.contains(70));
        seen.rotate();
        assert!(!seen.contains(70));
        assert!(seen.insert(70));
    }

    #[test]
    fn ids_below_above_and_far_from_the_first_are_kept_apart() {
        let mut seen = SeenCache::default();
        let ids = [640, 5, 0, 63, 64, 1_000_000, 639, 641];
        for (i, &id) in ids.iter().enumerate() {
            assert!(seen.insert(id), "{id} is new");
            for &held in &ids[..=i] {
                assert!(seen.contains(held), "{held} held after inserting {id}");
            }
            for &not_yet in &ids[i + 1..] {
                assert!(!seen.contains(not_yet), "{not_yet} not inserted yet");
            }
        }
        for &id in &ids {
            assert!(!seen.insert(id), "{id} is a duplicate");
        }
        assert!(!seen.contains(u64::MAX));
        assert!(!seen.contains(1));
    }
}
