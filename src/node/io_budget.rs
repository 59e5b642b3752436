//! A cap on the bytes per second a node spends on snapshot files: writing them (exports,
//! scheduled snapshots, states offered to joiners) and serving their chunks to joiners. It
//! leaves disk and network to the ops while a large snapshot is written or shipped
//! (`--snapshot-io-limit`). One budget is shared by every snapshot writer and every served
//! chunk of a node; without a limit it never waits.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The node's snapshot I/O budget.
#[derive(Debug, Default)]
pub struct IoBudget {
    bytes_per_s: Option<u64>,
    /// When the bytes spent so far will have drained at the limit.
    drained_at: Mutex<Option<Instant>>,
}

impl IoBudget {
    /// A budget of `bytes_per_s` (`None`: unlimited).
    pub fn new(bytes_per_s: Option<u64>) -> Self {
        Self {
            bytes_per_s: bytes_per_s.filter(|r| *r > 0),
            drained_at: Mutex::new(None),
        }
    }

    /// Spends `bytes` and returns how long to wait before using them: until the bytes
    /// spent before have drained at the limit (zero when unlimited, or when they have).
    pub fn spend(&self, bytes: u64) -> Duration {
        let Some(rate) = self.bytes_per_s else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut drained_at = self.drained_at.lock().expect("budget lock");
        let start = drained_at.map_or(now, |at| at.max(now));
        *drained_at = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
        start - now
    }
}

/// A writer that spends the budget on every write, sleeping the calling thread as it says:
/// use it on blocking threads only.
pub struct Throttled<W> {
    inner: W,
    budget: Arc<IoBudget>,
}

impl<W> Throttled<W> {
    pub fn new(inner: W, budget: Arc<IoBudget>) -> Self {
        Self { inner, budget }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Throttled<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wait = self.budget.spend(buf.len() as u64);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads pass through unpaced: the budget is spent on the bytes written (a spooled
/// snapshot's chunks are paced as they are spooled and as they are copied to the file).
impl<R: io::Read> io::Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: io::Seek> io::Seek for Throttled<S> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlimited_budget_never_waits() {
        let budget = IoBudget::new(None);
        for _ in 0..100 {
            assert_eq!(budget.spend(1 << 30), Duration::ZERO);
        }
    }

    #[test]
    fn spending_beyond_the_limit_waits_for_what_was_spent_before() {
        let budget = IoBudget::new(Some(1_000_000));
        assert_eq!(
            budget.spend(2_000_000),
            Duration::ZERO,
            "the first bytes go at once"
        );
        let wait = budget.spend(1_000_000);
        // the 2 MB spent drain in 2 s at 1 MB/s (less the time this test took)
        assert!(
            wait > Duration::from_millis(1_500) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        let next = budget.spend(1);
        assert!(
            next > wait,
            "and the next waits for those as well: {next:?}"
        );
    }
}
